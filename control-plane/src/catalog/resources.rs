//! The applied resources in memory: `Service` specs by service name,
//! `AuthorizationPolicy` specs by policy name, routes by their qualified
//! name (`HTTPRoute/x`, the order sidecars rank them in), and `Gateway`s by
//! name (which is also the gateway's service name). Each change says which
//! services' views it touched — a gateway's view is its name's — so that
//! only their streams recompute.

use std::collections::BTreeMap;

use crate::resource::{
    AuthorizationPolicySpec, GatewaySpec, Kind, Name, Resource, RouteSpec, ServiceSpec,
};

#[derive(Debug, Default)]
pub(super) struct Resources {
    services: BTreeMap<Name, ServiceSpec>,
    /// By policy name.
    policies: BTreeMap<Name, AuthorizationPolicySpec>,
    /// By qualified name.
    routes: BTreeMap<String, RouteSpec>,
    gateways: BTreeMap<Name, GatewaySpec>,
}

/// Every name whose view a route is part of: its services and gateways.
fn parents(r: &RouteSpec) -> impl Iterator<Item = Name> + '_ {
    r.services()
        .iter()
        .cloned()
        .chain(r.gateways().iter().map(|g| g.name.clone()))
}

impl Resources {
    pub fn new(resources: Vec<Resource>) -> Self {
        let mut r = Resources::default();
        r.apply(&resources);
        r
    }

    /// Replaces resources; returns the services whose view changed.
    pub fn apply(&mut self, resources: &[Resource]) -> Vec<Name> {
        let mut touched = Vec::new();
        for r in resources {
            match r {
                Resource::Service(s) => {
                    if self.services.get(&s.name) != Some(s) {
                        self.services.insert(s.name.clone(), ServiceSpec::clone(s));
                        touched.push(s.name.clone());
                    }
                }
                Resource::AuthorizationPolicy(p) => {
                    if self.policies.get(&p.name) != Some(p) {
                        // The service it protected before, and the one now.
                        if let Some(old) = self.policies.insert(p.name.clone(), p.clone()) {
                            touched.push(old.service);
                        }
                        touched.push(p.service.clone());
                    }
                }
                Resource::Route(r) => {
                    let key = r.qualified_name();
                    if self.routes.get(&key) != Some(r) {
                        // The services it was attached to, and those now.
                        if let Some(old) = self.routes.insert(key, RouteSpec::clone(r)) {
                            touched.extend(parents(&old));
                        }
                        touched.extend(parents(r));
                    }
                }
                Resource::Gateway(g) => {
                    if self.gateways.get(&g.name) != Some(g) {
                        self.gateways.insert(g.name.clone(), g.clone());
                        touched.push(g.name.clone());
                    }
                }
            }
        }
        touched
    }

    /// Removes one resource; the services whose view changed.
    pub fn remove(&mut self, kind: Kind, name: &Name) -> Vec<Name> {
        match kind {
            Kind::Service => self
                .services
                .remove(name)
                .map(|s| s.name)
                .into_iter()
                .collect(),
            Kind::AuthorizationPolicy => self
                .policies
                .remove(name)
                .map(|p| p.service)
                .into_iter()
                .collect(),
            Kind::HttpRoute | Kind::GrpcRoute => self
                .routes
                .remove(&format!("{}/{name}", kind.as_str()))
                .map(|r| parents(&r).collect())
                .unwrap_or_default(),
            Kind::Gateway => self
                .gateways
                .remove(name)
                .map(|g| g.name)
                .into_iter()
                .collect(),
        }
    }

    /// Every resource: services, then policies, then routes, then
    /// gateways, each sorted by name.
    pub fn all(&self) -> Vec<Resource> {
        let services = self
            .services
            .values()
            .cloned()
            .map(|s| Resource::Service(Box::new(s)));
        let policies = self
            .policies
            .values()
            .cloned()
            .map(Resource::AuthorizationPolicy);
        let routes = self
            .routes
            .values()
            .cloned()
            .map(|r| Resource::Route(Box::new(r)));
        let gateways = self.gateways.values().cloned().map(Resource::Gateway);
        services
            .chain(policies)
            .chain(routes)
            .chain(gateways)
            .collect()
    }

    pub fn gateway(&self, name: &Name) -> Option<&GatewaySpec> {
        self.gateways.get(name)
    }

    pub fn service(&self, name: &Name) -> Option<&ServiceSpec> {
        self.services.get(name)
    }

    pub fn service_names(&self) -> impl Iterator<Item = &Name> {
        self.services.keys()
    }

    pub fn policies(&self) -> impl Iterator<Item = &AuthorizationPolicySpec> {
        self.policies.values()
    }

    /// The routes attached to `service`, by qualified name.
    pub fn routes_of<'a>(&'a self, service: &'a Name) -> impl Iterator<Item = &'a RouteSpec> {
        self.routes
            .values()
            .filter(move |r| r.services().contains(service))
    }

    /// The routes attached to `gateway`, by qualified name.
    pub fn routes_at<'a>(&'a self, gateway: &'a Name) -> impl Iterator<Item = &'a RouteSpec> {
        self.routes.values().filter(move |r| r.at_gateway(gateway))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::parse_documents;

    fn policy_for(service: &str) -> Vec<Resource> {
        parse_documents(&format!(
            "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\nspec:\n  service: {service}\n  rules: [{{from: [orders]}}]\n"
        ))
        .expect("valid")
    }

    fn names(v: &[Name]) -> Vec<&str> {
        v.iter().map(Name::as_str).collect()
    }

    #[test]
    fn a_change_touches_the_services_whose_view_it_changes() {
        let mut r = Resources::default();
        assert_eq!(names(&r.apply(&policy_for("users"))), ["users"]);
        assert!(r.apply(&policy_for("users")).is_empty(), "unchanged");
        // A policy moved to another service changes what both enforce.
        assert_eq!(
            names(&r.apply(&policy_for("billing"))),
            ["users", "billing"]
        );
        let p = Name::parse("p").expect("name");
        assert_eq!(names(&r.remove(Kind::AuthorizationPolicy, &p)), ["billing"]);
        assert!(r.remove(Kind::AuthorizationPolicy, &p).is_empty());
        assert!(r.all().is_empty());
    }
}
