//! The applied resources in memory: `Service` specs by service name and
//! `AuthorizationPolicy` specs by policy name. Each change says which
//! services' views it touched, so that only their streams recompute.

use std::collections::BTreeMap;

use crate::resource::{AuthorizationPolicySpec, Kind, Name, Resource, ServiceSpec};

#[derive(Debug, Default)]
pub(super) struct Resources {
    services: BTreeMap<Name, ServiceSpec>,
    /// By policy name.
    policies: BTreeMap<Name, AuthorizationPolicySpec>,
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
            }
        }
        touched
    }

    /// Removes one resource; the service whose view changed, if any.
    pub fn remove(&mut self, kind: Kind, name: &Name) -> Option<Name> {
        match kind {
            Kind::Service => self.services.remove(name).map(|s| s.name),
            Kind::AuthorizationPolicy => self.policies.remove(name).map(|p| p.service),
        }
    }

    /// Every resource: services, then policies, each sorted by name.
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
        services.chain(policies).collect()
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
        assert_eq!(
            r.remove(Kind::AuthorizationPolicy, &p)
                .as_ref()
                .map(Name::as_str),
            Some("billing")
        );
        assert_eq!(r.remove(Kind::AuthorizationPolicy, &p), None);
        assert!(r.all().is_empty());
    }
}
