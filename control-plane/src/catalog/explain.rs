//! `weftctl explain`: which route, rule and backends a request from one
//! service to another would take, and why. The applied routes go through
//! the one matcher and precedence the sidecars route by
//! (`weft_proto::routing::RouteTable`), so the answer is what a sidecar
//! does; and each destination's authorization policies are asked whether
//! they let the caller in, by the rules the destination's sidecar is sent.
//! At a gateway, the request's host is matched against the routes' host
//! names as its sidecar gets them, and the caller is the gateway itself.

use std::fmt;

use http::{HeaderMap, Method};
use weft_proto::protocol::Protocol;
use weft_proto::routing::{BackendRef, PathMatch, Request, Route, RouteKind, RouteTable, Rule};

use super::Catalog;
use crate::resource::route::RouteRule;
use crate::resource::{AuthorizationPolicySpec, Name, RouteSpec};

/// The request to explain.
#[derive(Debug, Clone)]
pub struct ExplainQuery {
    /// The calling service.
    pub from: Name,
    /// The destination service.
    pub service: Name,
    pub method: Method,
    /// Starts with `/`; no query.
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// Lower case, without a port (`request_host`); gateway routes with
    /// host names match it.
    pub host: Option<String>,
    /// `service` is a `Gateway` (and `from` is normally the same name).
    pub gateway: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExplainError {
    #[error("unknown service {0}: no Service resource, no registered instance and no route")]
    UnknownService(Name),
    #[error("unknown gateway {0}: no Gateway resource")]
    UnknownGateway(Name),
}

/// One match the request was tried against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// `HTTPRoute/name`.
    pub route: String,
    pub rule: usize,
    /// `None`: the rule has no matches.
    pub matched: Option<usize>,
    /// Why it did not match; `None`: it matched.
    pub mismatch: Option<String>,
}

/// The rule the request takes.
#[derive(Debug, Clone, PartialEq)]
pub struct Taken {
    pub route: String,
    pub kind: RouteKind,
    pub index: usize,
    pub matched: Option<usize>,
    pub rule: RouteRule,
}

/// What a destination's authorization policies say about the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No policy selects the service: every caller gets in.
    Open,
    Allowed {
        policy: Name,
        rule: usize,
    },
    /// Policies select it and none of their rules lets the caller in.
    Denied {
        policies: Vec<Name>,
    },
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        !matches!(self, Verdict::Denied { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Open => f.write_str("allowed: no AuthorizationPolicy selects the service"),
            Verdict::Allowed { policy, rule } => {
                write!(f, "allowed by AuthorizationPolicy/{policy} rules[{rule}]")
            }
            Verdict::Denied { policies } => {
                let names: Vec<String> = policies
                    .iter()
                    .map(|p| format!("AuthorizationPolicy/{p}"))
                    .collect();
                write!(f, "denied: no rule of {} allows it", names.join(", "))
            }
        }
    }
}

/// Where the request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub backend: BackendRef,
    /// The path it receives (after a URL rewrite).
    pub path: String,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub service: Name,
    /// The routes attached to the service, by name.
    pub routes: Vec<String>,
    /// In precedence order, up to and including the one taken.
    pub candidates: Vec<Candidate>,
    /// `None`: no route matches; the service's default (all endpoints).
    pub taken: Option<Taken>,
    pub destinations: Vec<Destination>,
    /// Whether the request counts as a gRPC call.
    pub grpc: bool,
}

impl Catalog {
    /// Explains `q` by the routes and policies applied now.
    pub fn explain(&self, q: &ExplainQuery) -> Result<Explanation, ExplainError> {
        let parts = self.lock();
        if q.gateway && parts.resources.gateway(&q.service).is_none() {
            return Err(ExplainError::UnknownGateway(q.service.clone()));
        }
        let view = parts.view(&q.service);
        if !view.known {
            return Err(ExplainError::UnknownService(q.service.clone()));
        }
        let grpc_service = view
            .policy
            .as_ref()
            .is_some_and(|p| p.protocol == Some(Protocol::Grpc));
        // As its sidecars get them: with the host names that apply there.
        let routes: Vec<&RouteSpec> = view.routing.iter().collect();
        let policies: Vec<&AuthorizationPolicySpec> = parts.resources.policies().collect();
        Ok(explain(q, &routes, &policies, grpc_service))
    }
}

/// What `policies` say about `caller` sending this request to `service`.
fn verdict(
    policies: &[&AuthorizationPolicySpec],
    service: &Name,
    caller: &Name,
    method: &str,
    path: &str,
    grpc: bool,
) -> Verdict {
    let selecting: Vec<&AuthorizationPolicySpec> = policies
        .iter()
        .copied()
        .filter(|p| &p.service == service)
        .collect();
    if selecting.is_empty() {
        return Verdict::Open;
    }
    for p in &selecting {
        if let Some(rule) = p
            .rules
            .iter()
            .position(|r| r.allows(caller, method, path, grpc))
        {
            return Verdict::Allowed {
                policy: p.name.clone(),
                rule,
            };
        }
    }
    Verdict::Denied {
        policies: selecting.iter().map(|p| p.name.clone()).collect(),
    }
}

/// Explains `q` by `routes` (those attached to its service) and
/// `policies` (all of them); `grpc_service`: the service speaks gRPC.
pub(super) fn explain(
    q: &ExplainQuery,
    routes: &[&RouteSpec],
    policies: &[&AuthorizationPolicySpec],
    grpc_service: bool,
) -> Explanation {
    let table = RouteTable::new(
        routes
            .iter()
            .map(|r| Route {
                name: r.qualified_name(),
                kind: r.kind,
                hostnames: r.hostnames().to_vec(),
                rules: r
                    .rules()
                    .iter()
                    .map(|x| Rule {
                        matches: x.matches().to_vec(),
                        action: x,
                    })
                    .collect(),
            })
            .collect(),
    );
    let req = Request {
        method: &q.method,
        host: q.host.as_deref(),
        path: &q.path,
        query: q.query.as_deref(),
        headers: &q.headers,
    };
    let candidates: Vec<Candidate> = table
        .explain(&req)
        .into_iter()
        .map(|c| Candidate {
            route: c.route.to_string(),
            rule: c.rule,
            matched: c.matched,
            mismatch: c.mismatch.map(|m| m.to_string()),
        })
        .collect();
    let found = table.find(&req);
    let content_type_grpc = q
        .headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes().starts_with(b"application/grpc"));
    let grpc = content_type_grpc.unwrap_or_else(|| {
        grpc_service
            || found
                .as_ref()
                .is_some_and(|f| f.route.kind == RouteKind::Grpc)
    });
    let every = PathMatch::default();
    let (taken, targets) = match &found {
        // A gateway is nobody's endpoint: no route, nowhere to go.
        None if q.gateway => (None, Vec::new()),
        None => (None, vec![(itself(&q.service), q.path.clone())]),
        Some(f) => {
            let rule: &RouteRule = f.action;
            let path = match rule.merged_filters().rewrite {
                Some(r) => r
                    .path(&q.path, Some(f.matched.map_or(&every, |m| &m.path)))
                    .into_owned(),
                None => q.path.clone(),
            };
            let taken = Taken {
                route: f.route.name.clone(),
                kind: f.route.kind,
                index: f.rule,
                matched: candidates.last().and_then(|c| c.matched),
                rule: rule.clone(),
            };
            let targets: Vec<(BackendRef, String)> = rule
                .backends()
                .iter()
                .map(|b| (b.clone(), path.clone()))
                .collect();
            let targets = if targets.is_empty() {
                vec![(itself(&q.service), path)]
            } else {
                targets
            };
            (Some(taken), targets)
        }
    };
    let destinations = targets
        .into_iter()
        .map(|(backend, path)| {
            let verdict = verdict(
                policies,
                &backend.service,
                &q.from,
                q.method.as_str(),
                &path,
                grpc,
            );
            Destination {
                backend,
                path,
                verdict,
            }
        })
        .collect();
    Explanation {
        service: q.service.clone(),
        routes: table.routes().iter().map(|r| r.name.clone()).collect(),
        candidates,
        taken,
        destinations,
        grpc,
    }
}

/// The service itself, all its endpoints.
fn itself(service: &Name) -> BackendRef {
    BackendRef {
        service: service.clone(),
        subset: None,
        weight: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Resource, parse_documents};

    const RESOURCES: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: users-canary}
spec:
  parentRefs: [{name: users}]
  rules:
    - matches: [{headers: [{name: x-canary, value: "1"}]}]
      backendRefs: [{name: users, subset: v2}]
    - matches: [{path: {type: PathPrefix, value: /api}}]
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
      backendRefs: [{name: users, subset: v1, weight: 90}, {name: users, subset: v2, weight: 10}]
---
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: users-callers}
spec:
  service: users
  rules:
    - from: [orders]
      http: [{methods: [GET], pathPrefix: /users}]
"#;

    fn resources() -> (Vec<RouteSpec>, Vec<AuthorizationPolicySpec>) {
        let mut routes = Vec::new();
        let mut policies = Vec::new();
        for r in parse_documents(RESOURCES).expect("valid") {
            match r {
                Resource::Route(r) => routes.push(*r),
                Resource::AuthorizationPolicy(p) => policies.push(p),
                Resource::Service(_) | Resource::Gateway(_) => {}
            }
        }
        (routes, policies)
    }

    fn query(from: &str, method: Method, uri: &str, headers: &[(&str, &str)]) -> ExplainQuery {
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (uri.to_string(), None),
        };
        let mut h = HeaderMap::new();
        for (n, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        ExplainQuery {
            from: Name::parse(from).expect("name"),
            service: Name::parse("users").expect("name"),
            method,
            path,
            query,
            headers: h,
            host: None,
            gateway: false,
        }
    }

    fn run(q: &ExplainQuery) -> Explanation {
        let (routes, policies) = resources();
        let routes: Vec<&RouteSpec> = routes.iter().collect();
        let policies: Vec<&AuthorizationPolicySpec> = policies.iter().collect();
        explain(q, &routes, &policies, false)
    }

    #[test]
    fn the_rule_taken_its_backends_and_why_the_others_were_not() {
        let e = run(&query("orders", Method::GET, "/api/users/1?x=1", &[]));
        assert_eq!(e.routes, ["HTTPRoute/users-canary"]);
        let why: Vec<(usize, Option<&str>)> = e
            .candidates
            .iter()
            .map(|c| (c.rule, c.mismatch.as_deref()))
            .collect();
        // The path match is more specific than the header match: first.
        assert_eq!(why, [(1, None)]);
        let taken = e.taken.as_ref().expect("a rule");
        assert_eq!(
            (taken.route.as_str(), taken.index, taken.matched),
            ("HTTPRoute/users-canary", 1, Some(0))
        );
        let dest: Vec<(Option<&str>, u32, &str, bool)> = e
            .destinations
            .iter()
            .map(|d| {
                (
                    d.backend.subset.as_deref(),
                    d.backend.weight,
                    d.path.as_str(),
                    d.verdict.allowed(),
                )
            })
            .collect();
        assert_eq!(
            dest,
            [
                (Some("v1"), 90, "/users/1", true),
                (Some("v2"), 10, "/users/1", true)
            ],
            "the prefix rewritten, and allowed on the path the backend sees"
        );
        assert_eq!(
            e.destinations[0].verdict.to_string(),
            "allowed by AuthorizationPolicy/users-callers rules[0]"
        );
    }

    #[test]
    fn mismatches_are_named_and_no_match_is_the_default() {
        let e = run(&query("orders", Method::GET, "/health", &[]));
        let why: Vec<Option<&str>> = e.candidates.iter().map(|c| c.mismatch.as_deref()).collect();
        assert_eq!(
            why,
            [
                Some("the path differs"),
                Some("header x-canary differs or is missing")
            ]
        );
        assert!(e.taken.is_none());
        assert_eq!(e.destinations.len(), 1);
        let d = &e.destinations[0];
        assert_eq!(
            (d.backend.subset.as_deref(), d.path.as_str()),
            (None, "/health")
        );
        assert_eq!(
            d.verdict.to_string(),
            "denied: no rule of AuthorizationPolicy/users-callers allows it"
        );
        let e = run(&query("web", Method::POST, "/x", &[("x-canary", "1")]));
        let taken = e.taken.expect("the header rule");
        assert_eq!(taken.index, 0);
        assert_eq!(e.destinations[0].backend.subset.as_deref(), Some("v2"));
        assert!(!e.destinations[0].verdict.allowed());
    }

    #[test]
    fn grpc_by_content_type_or_protocol() {
        let (routes, _) = resources();
        let routes: Vec<&RouteSpec> = routes.iter().collect();
        let q = query("orders", Method::POST, "/u.Users/Get", &[]);
        assert!(explain(&q, &routes, &[], true).grpc);
        assert!(!explain(&q, &routes, &[], false).grpc);
        let q = query(
            "orders",
            Method::POST,
            "/u.Users/Get",
            &[("content-type", "application/grpc+proto")],
        );
        let e = explain(&q, &routes, &[], false);
        assert!(e.grpc);
        assert_eq!(e.destinations[0].verdict, Verdict::Open);
    }

    #[test]
    fn at_a_gateway_the_host_is_matched_and_no_route_goes_nowhere() {
        let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: api}\nspec:\n  parentRefs: [{kind: Gateway, name: gw}]\n  hostnames: [api.example.com]\n  rules: [{backendRefs: [{name: users}]}]\n";
        let Some(Resource::Route(r)) = parse_documents(text).expect("valid").pop() else {
            panic!("a route")
        };
        let routes = [r.as_ref()];
        let mut q = query("gw", Method::GET, "/api/users/1", &[]);
        q.service = Name::parse("gw").expect("name");
        q.gateway = true;
        q.host = Some("api.example.com".into());
        let e = explain(&q, &routes, &[], false);
        assert_eq!(
            e.taken.as_ref().map(|t| t.route.as_str()),
            Some("HTTPRoute/api")
        );
        assert_eq!(e.destinations[0].backend.service.as_str(), "users");
        q.host = Some("www.example.com".into());
        let e = explain(&q, &routes, &[], false);
        assert_eq!(
            e.candidates[0].mismatch.as_deref(),
            Some("the host is none of the route's")
        );
        assert!(e.taken.is_none() && e.destinations.is_empty());
    }
}
