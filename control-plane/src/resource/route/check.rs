//! The rules of routes that span resources, checked on the resources as
//! they would be after an apply (or a delete): every service a route names
//! exists, every subset it names is defined by that service's `Service`,
//! every gateway it attaches to exists with the listener it names and a
//! listener that serves one of its host names, and no match of a rule is
//! one another rule attached to the same service (or gateway, for the same
//! host names) already takes (the second could never be taken).
//!
//! A service exists when it has a `Service` resource (applied before, or in
//! the same apply) or registered instances: a route may attach to a service
//! that is only discovered, as callers may call one. Subsets are defined
//! only by a `Service` resource. A gateway exists when its `Gateway` does;
//! its name is its mesh identity, so no `Service` may have it too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use weft_proto::routing::{BackendRef, PathMatch, RouteMatch, ValueMatch};

use super::RouteSpec;
use crate::resource::{
    FieldError, GatewaySpec, InvalidResources, Kind, Name, Resource, ServiceSpec,
};

/// Why routes do not fit the other resources.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("unknown service {0}: no Service resource and no registered instance")]
    UnknownService(Name),
    #[error("service {service} has no subset {subset:?} ({defined})")]
    UnknownSubset {
        service: Name,
        subset: String,
        defined: String,
    },
    #[error(
        "service {service} has no Service resource, so no subsets (a subset is defined in its spec.subsets)"
    )]
    NoSubsets { service: Name },
    #[error("{by} sends to subset {subset:?} of this service, which would no longer be defined")]
    SubsetInUse { by: String, subset: String },
    #[error(
        "matches exactly what {first} matches on {parent}, which comes first: this one could never be taken"
    )]
    Unreachable { first: String, parent: String },
    #[error(
        "matches exactly what {second} (already applied) matches on {parent}, and comes first: that one could never be taken"
    )]
    MakesUnreachable { second: String, parent: String },
    #[error("unknown gateway {0}: no Gateway resource")]
    UnknownGateway(Name),
    #[error("gateway {gateway} has no listener {section:?} (it has {defined})")]
    UnknownListener {
        gateway: Name,
        section: String,
        defined: String,
    },
    #[error(
        "none of the route's host names is served by gateway {gateway}'s listeners ({served}): \
         its requests could never arrive"
    )]
    NoServedHostname { gateway: Name, served: String },
    #[error("{by} attaches to listener {section:?} of this gateway, which would no longer exist")]
    ListenerInUse { by: String, section: String },
    #[error("{by} answers for host names none of this gateway's listeners would serve")]
    HostnamesInUse { by: String },
    #[error(
        "a Gateway is named {0} too: a gateway's name is its mesh identity, which no Service may share"
    )]
    NameIsGateway(Name),
    #[error(
        "a Service is named {0} too: a gateway's name is its mesh identity, which no Service may share"
    )]
    NameIsService(Name),
}

/// The services and gateways routes may name, as they would be.
#[derive(Debug)]
struct Known<'a> {
    /// By name: those with a `Service` resource.
    resources: BTreeMap<&'a Name, &'a ServiceSpec>,
    /// Those with registered instances.
    discovered: &'a BTreeSet<Name>,
    gateways: BTreeMap<&'a Name, &'a GatewaySpec>,
}

impl Known<'_> {
    /// The problems of the route's `i`th gateway parent, with the field
    /// under `spec.parentRefs[n]` they are in.
    fn gateway(&self, route: &RouteSpec, i: usize) -> Vec<(&'static str, ReferenceError)> {
        let parent = &route.gateways()[i];
        let Some(g) = self.gateways.get(&parent.name) else {
            return vec![("name", ReferenceError::UnknownGateway(parent.name.clone()))];
        };
        let listeners: Vec<_> = match &parent.section {
            None => g.listeners().iter().collect(),
            Some(s) => match g.listener(s) {
                Some(l) => vec![l],
                None => {
                    let names: Vec<&str> = g.listeners().iter().map(|l| l.name.as_str()).collect();
                    return vec![(
                        "sectionName",
                        ReferenceError::UnknownListener {
                            gateway: g.name.clone(),
                            section: s.to_string(),
                            defined: names.join(", "),
                        },
                    )];
                }
            },
        };
        // A listener without a host name takes any host.
        let served = route.hostnames().is_empty()
            || listeners.iter().any(|l| {
                l.hostname
                    .as_ref()
                    .is_none_or(|lh| route.hostnames().iter().any(|h| h.intersects(lh)))
            });
        if served {
            return Vec::new();
        }
        let hosts: Vec<String> = listeners
            .iter()
            .filter_map(|l| l.hostname.as_ref().map(ToString::to_string))
            .collect();
        vec![(
            "hostnames",
            ReferenceError::NoServedHostname {
                gateway: g.name.clone(),
                served: hosts.join(", "),
            },
        )]
    }

    fn exists(&self, s: &Name) -> bool {
        self.resources.contains_key(s) || self.discovered.contains(s)
    }

    /// The problem with `b`, if any (the field it is in: `name` or `subset`).
    fn backend(&self, b: &BackendRef) -> Option<(&'static str, ReferenceError)> {
        if !self.exists(&b.service) {
            return Some(("name", ReferenceError::UnknownService(b.service.clone())));
        }
        let subset = b.subset.as_deref()?;
        let Some(spec) = self.resources.get(&b.service) else {
            return Some((
                "subset",
                ReferenceError::NoSubsets {
                    service: b.service.clone(),
                },
            ));
        };
        if spec.subsets.iter().any(|s| s.name.as_str() == subset) {
            return None;
        }
        let defined: Vec<&str> = spec.subsets.iter().map(|s| s.name.as_str()).collect();
        let defined = if defined.is_empty() {
            "it defines none".to_string()
        } else {
            format!("it defines {}", defined.join(", "))
        };
        Some((
            "subset",
            ReferenceError::UnknownSubset {
                service: b.service.clone(),
                subset: subset.to_string(),
                defined,
            },
        ))
    }
}

/// A problem with one route: the field's path (as YAML writes it) and why.
type Problem = (String, ReferenceError);

/// Every service, subset, gateway and listener `route` names that
/// `known` lacks.
fn references(route: &RouteSpec, known: &Known<'_>) -> Vec<Problem> {
    let mut out = Vec::new();
    for (i, s) in route.services().iter().enumerate() {
        if !known.exists(s) {
            out.push((
                format!("spec.parentRefs[{i}].name"),
                ReferenceError::UnknownService(s.clone()),
            ));
        }
    }
    for i in 0..route.gateways().len() {
        for (field, e) in known.gateway(route, i) {
            let at = match field {
                "hostnames" => "spec.hostnames".to_string(),
                _ => format!("spec.parentRefs[{}].{field}", route.gateway_ref_index(i)),
            };
            out.push((at, e));
        }
    }
    for (r, rule) in route.rules().iter().enumerate() {
        for (b, backend) in rule.backends().iter().enumerate() {
            if let Some((field, e)) = known.backend(backend) {
                out.push((format!("spec.rules[{r}].backendRefs[{b}].{field}"), e));
            }
        }
        for (f, mirror) in rule.mirrors() {
            if let Some((field, e)) = known.backend(&mirror.backend) {
                let at = format!("spec.rules[{r}].filters[{f}].requestMirror.backendRef.{field}");
                out.push((at, e));
            }
        }
    }
    out
}

/// Where a route comes from: a document of this request, or the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// 0-based place in the request.
    Applied(usize),
    Existing,
}

/// The resources as they would be after `applied`, each with its origin.
fn overlay<'a>(applied: &'a [Resource], existing: &'a [Resource]) -> Vec<(Origin, &'a Resource)> {
    let mut by_key: BTreeMap<String, (Origin, &Resource)> = existing
        .iter()
        .map(|r| (r.key(), (Origin::Existing, r)))
        .collect();
    for (i, r) in applied.iter().enumerate() {
        by_key.insert(r.key(), (Origin::Applied(i), r));
    }
    by_key.into_values().collect()
}

fn known<'a>(all: &[(Origin, &'a Resource)], discovered: &'a BTreeSet<Name>) -> Known<'a> {
    let resources = all
        .iter()
        .filter_map(|(_, r)| match r {
            Resource::Service(s) => Some((&s.name, s.as_ref())),
            _ => None,
        })
        .collect();
    let gateways = all
        .iter()
        .filter_map(|(_, r)| match r {
            Resource::Gateway(g) => Some((&g.name, g)),
            _ => None,
        })
        .collect();
    Known {
        resources,
        discovered,
        gateways,
    }
}

/// A `Service` and a `Gateway` of one name, either in `applied`: reported
/// on the applied one(s).
fn shared_names(all: &[(Origin, &Resource)], known: &Known<'_>) -> Vec<(usize, ReferenceError)> {
    let mut out = Vec::new();
    for &(origin, r) in all {
        let Origin::Applied(i) = origin else { continue };
        match r {
            Resource::Service(s) if known.gateways.contains_key(&s.name) => {
                out.push((i, ReferenceError::NameIsGateway(s.name.clone())));
            }
            Resource::Gateway(g) if known.resources.contains_key(&g.name) => {
                out.push((i, ReferenceError::NameIsService(g.name.clone())));
            }
            _ => {}
        }
    }
    out
}

/// The document of `applied` that is `kind`/`name`, if any.
fn applied_at(applied: &[Resource], kind: Kind, name: &Name) -> Option<usize> {
    applied
        .iter()
        .position(|a| a.kind() == kind && a.name() == name)
}

/// Checks the routes of the resources as they would be after `applied`
/// (over `existing`; `discovered`: the services with registered
/// instances). Problems of a route in `applied` are reported on its
/// document; a route already applied that a `Service` in `applied` would
/// break (a subset it uses gone) is reported on that `Service`.
pub fn check_routes(
    applied: &[Resource],
    existing: &[Resource],
    discovered: &BTreeSet<Name>,
) -> Result<(), InvalidResources> {
    let all = overlay(applied, existing);
    let known = known(&all, discovered);
    let mut errors = Vec::new();
    let error = |i: usize, r: &Resource, path: String, e: &ReferenceError| FieldError {
        document: i + 1,
        resource: Some(r.key()),
        path,
        reason: e.to_string(),
    };
    for (i, e) in shared_names(&all, &known) {
        errors.push(error(i, &applied[i], "metadata.name".into(), &e));
    }
    let mut routes = Vec::new();
    for &(origin, r) in &all {
        let Resource::Route(route) = r else { continue };
        routes.push((origin, route.as_ref()));
        for (path, e) in references(route, &known) {
            match (origin, &e) {
                (Origin::Applied(i), _) => errors.push(error(i, r, path, &e)),
                (
                    Origin::Existing,
                    ReferenceError::UnknownSubset {
                        service, subset, ..
                    },
                ) => {
                    // Only a Service of this request can have taken it away.
                    if let Some(i) = applied_at(applied, Kind::Service, service) {
                        let e = ReferenceError::SubsetInUse {
                            by: format!("{} {path}", r.key()),
                            subset: subset.clone(),
                        };
                        errors.push(error(i, &applied[i], "spec.subsets".into(), &e));
                    }
                }
                // Only a Gateway of this request can have changed its
                // listeners under a route already applied.
                (
                    Origin::Existing,
                    ReferenceError::UnknownListener {
                        gateway, section, ..
                    },
                ) => {
                    if let Some(i) = applied_at(applied, Kind::Gateway, gateway) {
                        let e = ReferenceError::ListenerInUse {
                            by: format!("{} {path}", r.key()),
                            section: section.clone(),
                        };
                        errors.push(error(i, &applied[i], "spec.listeners".into(), &e));
                    }
                }
                (Origin::Existing, ReferenceError::NoServedHostname { gateway, .. }) => {
                    if let Some(i) = applied_at(applied, Kind::Gateway, gateway) {
                        let e = ReferenceError::HostnamesInUse { by: r.key() };
                        errors.push(error(i, &applied[i], "spec.listeners".into(), &e));
                    }
                }
                (Origin::Existing, _) => {}
            }
        }
    }
    for (origin, path, e) in conflicts(&routes) {
        if let Origin::Applied(i) = origin {
            errors.push(error(i, &applied[i], path, &e));
        }
    }
    errors.sort_by_key(|e| e.document);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidResources(errors))
    }
}

/// What deleting `kind`/`name` would break: each route it would leave
/// naming a service, a subset or a gateway that no longer exists, as
/// `HTTPRoute/x spec.rules[0].backendRefs[1].subset: reason`.
pub fn check_delete(
    kind: Kind,
    name: &Name,
    existing: &[Resource],
    discovered: &BTreeSet<Name>,
) -> Vec<String> {
    let rest: Vec<Resource> = existing
        .iter()
        .filter(|r| !(r.kind() == kind && r.name() == name))
        .cloned()
        .collect();
    let all = overlay(&[], &rest);
    let known = known(&all, discovered);
    let mut out = Vec::new();
    for (_, r) in &all {
        if let Resource::Route(route) = r {
            for (path, e) in references(route, &known) {
                out.push(format!("{} {path}: {e}", r.key()));
            }
        }
    }
    out
}

/// A value condition: (a regular expression, the text).
type Value = (bool, String);

/// A match reduced to what it matches: header and query conditions are a
/// set, a rule without matches is the match of every request.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Conditions {
    path: (u8, String),
    method: Option<String>,
    grpc: Option<(Option<Value>, Option<Value>)>,
    headers: Vec<(String, bool, String)>,
    query: Vec<(String, bool, String)>,
}

fn value(v: &ValueMatch) -> Value {
    (matches!(v, ValueMatch::Regex(_)), v.value().to_string())
}

impl Conditions {
    fn of(m: &RouteMatch) -> Self {
        let kind = match m.path {
            PathMatch::Exact(_) => 0,
            PathMatch::Prefix(_) => 1,
            PathMatch::Regex(_) => 2,
        };
        let set = |mut v: Vec<(String, bool, String)>| {
            v.sort();
            v.dedup();
            v
        };
        Conditions {
            path: (kind, m.path.value().to_string()),
            method: m.method.as_ref().map(ToString::to_string),
            grpc: m
                .grpc
                .as_ref()
                .map(|g| (g.service.as_ref().map(value), g.method.as_ref().map(value))),
            headers: set(m
                .headers
                .iter()
                .map(|h| {
                    let (re, v) = value(&h.value);
                    (h.name.to_string(), re, v)
                })
                .collect()),
            query: set(m
                .query
                .iter()
                .map(|q| {
                    let (re, v) = value(&q.value);
                    (q.name.clone(), re, v)
                })
                .collect()),
        }
    }
}

/// One match of one rule, named as users write it.
struct Place<'a> {
    origin: Origin,
    route: &'a RouteSpec,
    rule: usize,
    /// `spec.rules[1].matches[0]`, or `spec.rules[1]` for a rule without.
    path: String,
}

impl Place<'_> {
    fn describe(&self) -> String {
        format!("{} {}", self.route.qualified_name(), self.path)
    }
}

/// What routes attach to: rules compete only within one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Parent<'a> {
    Service(&'a Name),
    Gateway(&'a Name),
}

impl fmt::Display for Parent<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Parent::Service(n) => write!(f, "service {n}"),
            Parent::Gateway(n) => write!(f, "gateway {n}"),
        }
    }
}

/// Every match that another rule attached to the same service (or to the
/// same gateway, for the same host names) takes first: (where to report
/// it, the path, why). Ties between equal matches go by route name, then
/// rule, then match, as `RouteTable` orders them.
fn conflicts(routes: &[(Origin, &RouteSpec)]) -> Vec<(Origin, String, ReferenceError)> {
    let mut by_parent: BTreeMap<Parent<'_>, Vec<(Origin, &RouteSpec)>> = BTreeMap::new();
    for &(origin, route) in routes {
        for s in route.services() {
            by_parent
                .entry(Parent::Service(s))
                .or_default()
                .push((origin, route));
        }
        let mut gateways: Vec<&Name> = route.gateways().iter().map(|g| &g.name).collect();
        gateways.dedup();
        for g in gateways {
            by_parent
                .entry(Parent::Gateway(g))
                .or_default()
                .push((origin, route));
        }
    }
    let every = RouteMatch::default();
    let mut out = Vec::new();
    let mut reported = BTreeSet::new();
    for (parent, mut attached) in by_parent {
        attached.sort_by_key(|(_, r)| r.qualified_name());
        // At a gateway only routes for the same host names hide each
        // other (a route with other names is still taken for those).
        let hosts = |r: &RouteSpec| -> Vec<String> {
            if matches!(parent, Parent::Service(_)) {
                return Vec::new();
            }
            let mut h: Vec<String> = r.hostnames().iter().map(ToString::to_string).collect();
            h.sort();
            h
        };
        let mut first: HashMap<(Vec<String>, Conditions), Place<'_>> = HashMap::new();
        for (origin, route) in attached {
            for (r, rule) in route.rules().iter().enumerate() {
                let matches: Vec<(String, &RouteMatch)> = if rule.matches().is_empty() {
                    vec![(format!("spec.rules[{r}]"), &every)]
                } else {
                    rule.matches()
                        .iter()
                        .enumerate()
                        .map(|(m, x)| (format!("spec.rules[{r}].matches[{m}]"), x))
                        .collect()
                };
                for (path, m) in matches {
                    let here = Place {
                        origin,
                        route,
                        rule: r,
                        path,
                    };
                    let key = (hosts(route), Conditions::of(m));
                    let Some(before) = first.get(&key) else {
                        first.insert(key, here);
                        continue;
                    };
                    // Two matches of one rule overlap harmlessly.
                    if std::ptr::eq(before.route, route) && before.rule == r {
                        continue;
                    }
                    let (at, other, e) = match (here.origin, before.origin) {
                        (Origin::Applied(_), _) => (
                            &here,
                            before,
                            ReferenceError::Unreachable {
                                first: before.describe(),
                                parent: parent.to_string(),
                            },
                        ),
                        (Origin::Existing, Origin::Applied(_)) => (
                            before,
                            &here,
                            ReferenceError::MakesUnreachable {
                                second: here.describe(),
                                parent: parent.to_string(),
                            },
                        ),
                        (Origin::Existing, Origin::Existing) => continue,
                    };
                    // A pair of routes sharing several services is one problem.
                    if reported.insert((at.describe(), other.describe())) {
                        out.push((at.origin, at.path.clone(), e));
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::parse_documents;

    const SERVICES: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec:\n  subsets:\n    - {name: v1, labels: {version: v1}}\n    - {name: v2, labels: {version: v2}}\n";

    fn docs(text: &str) -> Vec<Resource> {
        parse_documents(text).expect("valid documents")
    }

    fn route(name: &str, rules: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{{name: users}}]\n  rules:\n{rules}"
        )
    }

    fn errors(applied: &str, existing: &str, discovered: &[&str]) -> Vec<String> {
        let discovered: BTreeSet<Name> = discovered
            .iter()
            .map(|s| Name::parse(s).expect("name"))
            .collect();
        let existing = if existing.is_empty() {
            Vec::new()
        } else {
            docs(existing)
        };
        match check_routes(&docs(applied), &existing, &discovered) {
            Ok(()) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn services_and_subsets_must_exist() {
        let applied = format!(
            "{}---\n{SERVICES}",
            route(
                "r",
                "    - backendRefs: [{name: users, subset: v3}, {name: orders}, {name: billing, subset: v1}]\n      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}]\n"
            )
        );
        assert_eq!(
            errors(&applied, "", &["billing"]),
            [
                "document 1 (HTTPRoute/r): spec.rules[0].backendRefs[0].subset: service users has no subset \"v3\" (it defines v1, v2)",
                "document 1 (HTTPRoute/r): spec.rules[0].backendRefs[1].name: unknown service orders: no Service resource and no registered instance",
                "document 1 (HTTPRoute/r): spec.rules[0].backendRefs[2].subset: service billing has no Service resource, so no subsets (a subset is defined in its spec.subsets)",
                "document 1 (HTTPRoute/r): spec.rules[0].filters[0].requestMirror.backendRef.name: unknown service shadow: no Service resource and no registered instance",
            ]
        );
        // The parent: a Service applied before, or one with instances.
        let alone = route("r", "    - backendRefs: [{name: users}]\n");
        assert_eq!(
            errors(&alone, "", &[]),
            [
                "document 1 (HTTPRoute/r): spec.parentRefs[0].name: unknown service users: no Service resource and no registered instance",
                "document 1 (HTTPRoute/r): spec.rules[0].backendRefs[0].name: unknown service users: no Service resource and no registered instance",
            ]
        );
        assert!(errors(&alone, SERVICES, &[]).is_empty());
        assert!(errors(&alone, "", &["users"]).is_empty());
    }

    #[test]
    fn a_service_may_not_take_away_a_subset_a_route_uses() {
        let existing = format!(
            "{SERVICES}---\n{}",
            route("r", "    - backendRefs: [{name: users, subset: v2}]\n")
        );
        let shrunk = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec:\n  subsets: [{name: v1, labels: {version: v1}}]\n";
        assert_eq!(
            errors(shrunk, &existing, &[]),
            [
                "document 1 (Service/users): spec.subsets: HTTPRoute/r spec.rules[0].backendRefs[0].subset sends to subset \"v2\" of this service, which would no longer be defined"
            ]
        );
        let users = Name::parse("users").expect("name");
        let existing = docs(&existing);
        let broken = check_delete(Kind::Service, &users, &existing, &BTreeSet::new());
        assert_eq!(broken.len(), 2, "{broken:?}");
        assert!(
            broken[0].starts_with("HTTPRoute/r spec.parentRefs[0].name: unknown service users")
        );
        // With instances it stays known, but its subsets go with the resource.
        let broken = check_delete(Kind::Service, &users, &existing, &[users.clone()].into());
        assert_eq!(
            broken,
            [
                "HTTPRoute/r spec.rules[0].backendRefs[0].subset: service users has no Service resource, so no subsets (a subset is defined in its spec.subsets)"
            ]
        );
        let r = Name::parse("r").expect("name");
        assert!(check_delete(Kind::HttpRoute, &r, &existing, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_match_another_rule_takes_first_is_a_conflict_naming_both() {
        let header = "      - headers: [{name: x-canary, value: \"1\"}]\n";
        let a = route(
            "a",
            &format!(
                "    - matches:\n{header}      backendRefs: [{{name: users, subset: v2}}]\n    - backendRefs: [{{name: users}}]\n    - matches: [{{path: {{type: PathPrefix, value: /}}}}]\n"
            ),
        );
        // Rule 2 takes every request, as rule 1 (no matches) does.
        assert_eq!(
            errors(&a, SERVICES, &[]),
            [
                "document 1 (HTTPRoute/a): spec.rules[2].matches[0]: matches exactly what HTTPRoute/a spec.rules[1] matches on service users, which comes first: this one could never be taken"
            ]
        );
        let b = route(
            "b",
            "    - matches:\n      - headers: [{type: Exact, value: \"1\", name: X-Canary}]\n        path: {value: /}\n      backendRefs: [{name: users, subset: v1}]\n",
        );
        let a = route(
            "a",
            &format!("    - matches:\n{header}      backendRefs: [{{name: users, subset: v2}}]\n"),
        );
        // Across routes in one apply: the second by name is reported.
        let both = format!("{b}---\n{a}");
        assert_eq!(
            errors(&both, SERVICES, &[]),
            [
                "document 1 (HTTPRoute/b): spec.rules[0].matches[0]: matches exactly what HTTPRoute/a spec.rules[0].matches[0] matches on service users, which comes first: this one could never be taken"
            ]
        );
        // Against a route applied before, whichever comes first.
        let existing = format!("{SERVICES}---\n{a}");
        assert_eq!(
            errors(&b, &existing, &[]),
            [
                "document 1 (HTTPRoute/b): spec.rules[0].matches[0]: matches exactly what HTTPRoute/a spec.rules[0].matches[0] matches on service users, which comes first: this one could never be taken"
            ]
        );
        let existing = format!("{SERVICES}---\n{b}");
        assert_eq!(
            errors(&a, &existing, &[]),
            [
                "document 1 (HTTPRoute/a): spec.rules[0].matches[0]: matches exactly what HTTPRoute/b spec.rules[0].matches[0] (already applied) matches on service users, and comes first: that one could never be taken"
            ]
        );
        // A route re-applied replaces itself; it does not conflict with its old self.
        assert!(errors(&a, &format!("{SERVICES}---\n{a}"), &[]).is_empty());
        // A different value, or two equal matches in one rule, are no conflict.
        let c = route(
            "c",
            "    - matches:\n      - headers: [{name: x-canary, value: \"2\"}]\n      - headers: [{name: x-canary, value: \"2\"}]\n",
        );
        assert!(errors(&c, &existing, &[]).is_empty());
    }

    #[test]
    fn a_conflict_on_several_shared_services_is_one_problem() {
        let two = |name: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{{name: users}}, {{name: orders}}]\n  rules: [{{backendRefs: [{{name: users}}]}}]\n"
            )
        };
        let applied = format!("{}---\n{}", two("a"), two("b"));
        let e = errors(&applied, "", &["users", "orders"]);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("document 2 (HTTPRoute/b): spec.rules[0]: matches exactly what HTTPRoute/a spec.rules[0]"), "{e:?}");
    }

    const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  listeners:\n    - {name: http, port: 80, protocol: HTTP, hostname: \"*.example.com\"}\n    - {name: admin, port: 81, protocol: HTTP, hostname: admin.internal}\n";

    fn at_gateway(name: &str, parent: &str, extra: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{parent}]\n{extra}  rules: [{{backendRefs: [{{name: users}}]}}]\n"
        )
    }

    #[test]
    fn a_gateway_route_needs_its_gateway_listener_and_a_served_host() {
        let unknown = at_gateway("r", "{name: users}, {kind: Gateway, name: gw}", "");
        assert_eq!(
            errors(&unknown, SERVICES, &[]),
            [
                "document 1 (HTTPRoute/r): spec.parentRefs[1].name: unknown gateway gw: no Gateway resource"
            ]
        );
        // The Gateway in the same apply, or before.
        assert!(errors(&format!("{GATEWAY}---\n{unknown}"), SERVICES, &[]).is_empty());
        assert!(errors(&unknown, &format!("{SERVICES}---\n{GATEWAY}"), &[]).is_empty());
        let existing = format!("{SERVICES}---\n{GATEWAY}");
        let section = at_gateway("r", "{kind: Gateway, name: gw, sectionName: https}", "");
        assert_eq!(
            errors(&section, &existing, &[]),
            [
                "document 1 (HTTPRoute/r): spec.parentRefs[0].sectionName: gateway gw has no listener \"https\" (it has http, admin)"
            ]
        );
        let elsewhere = at_gateway(
            "r",
            "{kind: Gateway, name: gw}",
            "  hostnames: [api.other.com, example.com]\n",
        );
        assert_eq!(
            errors(&elsewhere, &existing, &[]),
            [
                "document 1 (HTTPRoute/r): spec.hostnames: none of the route's host names is served by gateway gw's listeners (*.example.com, admin.internal): its requests could never arrive"
            ]
        );
        // One listener serving one name is enough; the section narrows.
        let api = at_gateway(
            "r",
            "{kind: Gateway, name: gw}",
            "  hostnames: [api.example.com, x.com]\n",
        );
        assert!(errors(&api, &existing, &[]).is_empty());
        let narrowed = at_gateway(
            "r",
            "{kind: Gateway, name: gw, sectionName: admin}",
            "  hostnames: [api.example.com]\n",
        );
        assert_eq!(errors(&narrowed, &existing, &[]).len(), 1);
    }

    #[test]
    fn a_gateway_may_not_take_away_what_its_routes_use_nor_be_deleted_under_them() {
        let routed = at_gateway(
            "r",
            "{kind: Gateway, name: gw, sectionName: admin}",
            "  hostnames: [admin.internal]\n",
        );
        let existing = format!("{SERVICES}---\n{GATEWAY}---\n{routed}");
        let shrunk = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  listeners: [{name: http, port: 80, protocol: HTTP, hostname: \"*.example.com\"}]\n";
        assert_eq!(
            errors(shrunk, &existing, &[]),
            [
                "document 1 (Gateway/gw): spec.listeners: HTTPRoute/r spec.parentRefs[0].sectionName attaches to listener \"admin\" of this gateway, which would no longer exist"
            ]
        );
        let renamed = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  listeners: [{name: admin, port: 81, protocol: HTTP, hostname: admin.example.com}]\n";
        assert_eq!(
            errors(renamed, &existing, &[]),
            [
                "document 1 (Gateway/gw): spec.listeners: HTTPRoute/r answers for host names none of this gateway's listeners would serve"
            ]
        );
        let gw = Name::parse("gw").expect("name");
        let existing = docs(&existing);
        assert_eq!(
            check_delete(Kind::Gateway, &gw, &existing, &BTreeSet::new()),
            ["HTTPRoute/r spec.parentRefs[0].name: unknown gateway gw: no Gateway resource"]
        );
        let r = Name::parse("r").expect("name");
        let rest: Vec<Resource> = existing
            .into_iter()
            .filter(|x| !(x.kind() == Kind::HttpRoute && x.name() == &r))
            .collect();
        assert!(check_delete(Kind::Gateway, &gw, &rest, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn at_a_gateway_only_routes_for_the_same_host_names_hide_each_other() {
        let existing = format!("{SERVICES}---\n{GATEWAY}");
        let host = |name: &str, hosts: &str| {
            at_gateway(
                name,
                "{kind: Gateway, name: gw}",
                &format!("  hostnames: [{hosts}]\n"),
            )
        };
        let same = format!(
            "{}---\n{}",
            host("a", "a.example.com"),
            host("b", "a.example.com")
        );
        assert_eq!(
            errors(&same, &existing, &[]),
            [
                "document 2 (HTTPRoute/b): spec.rules[0]: matches exactly what HTTPRoute/a spec.rules[0] matches on gateway gw, which comes first: this one could never be taken"
            ]
        );
        let other = format!(
            "{}---\n{}",
            host("a", "a.example.com"),
            host("b", "b.example.com")
        );
        assert!(errors(&other, &existing, &[]).is_empty());
        // A service and a gateway are separate parents.
        let both = format!(
            "{}---\n{}",
            at_gateway("a", "{kind: Gateway, name: gw}", ""),
            at_gateway("b", "{name: users}", "")
        );
        assert!(errors(&both, &existing, &[]).is_empty());
    }

    #[test]
    fn a_gateway_and_a_service_never_share_a_name() {
        let named_like = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: users}\nspec:\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n";
        assert_eq!(
            errors(named_like, SERVICES, &[]),
            [
                "document 1 (Gateway/users): metadata.name: a Service is named users too: a gateway's name is its mesh identity, which no Service may share"
            ]
        );
        assert_eq!(
            errors(SERVICES, named_like, &[]),
            [
                "document 1 (Service/users): metadata.name: a Gateway is named users too: a gateway's name is its mesh identity, which no Service may share"
            ]
        );
        // Its own instances (the gateway's sidecar) are no Service.
        assert!(errors(named_like, "", &["users"]).is_empty());
    }
}
