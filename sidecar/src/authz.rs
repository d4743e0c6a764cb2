//! Authorization on the inbound path: whether a request from a caller may
//! go to the app, by the [`InboundPolicy`] in force (allow rules by caller
//! identity, optionally narrowed to gRPC methods or HTTP methods and path
//! prefixes; once any policy selects the service, what no rule allows is
//! denied).
//!
//! The policy is a validated model type (`model::inbound`), built from the
//! control plane's `InboundPolicy` in `discovery::convert`; here only the
//! matching of prepared patterns.

use weft_proto::name::ServiceName;

use crate::model::inbound::{Caller, InboundPolicy};

impl InboundPolicy {
    /// Whether a request from `caller` (its verified identity; `None` for
    /// plaintext) may go to the app. `grpc` tells whether it is a gRPC call,
    /// whose method is the path.
    pub fn allows(
        &self,
        caller: Option<&ServiceName>,
        method: &http::Method,
        path: &str,
        grpc: bool,
    ) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        rules.iter().any(|r| {
            if !from_matches(&r.from, caller) {
                return false;
            }
            if r.grpc.is_empty() && r.http.is_empty() {
                return true;
            }
            if grpc {
                r.grpc.iter().any(|p| p.matches(path))
            } else {
                r.http.iter().any(|h| {
                    (h.methods.is_empty() || h.methods.contains(method))
                        && path.starts_with(&h.path_prefix)
                })
            }
        })
    }
}

impl InboundPolicy {
    /// Whether `caller` may open an opaque TCP connection to the app. Only
    /// a rule with no gRPC or HTTP narrowing allows one: a connection's
    /// bytes carry no method or path to match, so a rule that names some
    /// must not let every byte through (as Istio treats HTTP-only rules
    /// on TCP).
    pub fn allows_connection(&self, caller: Option<&ServiceName>) -> bool {
        let Some(rules) = &self.rules else {
            return true;
        };
        rules
            .iter()
            .any(|r| r.grpc.is_empty() && r.http.is_empty() && from_matches(&r.from, caller))
    }
}

/// Whether a rule's `from` names `caller` (a plaintext caller, `None`, has
/// no identity to name).
fn from_matches(from: &[Caller], caller: Option<&ServiceName>) -> bool {
    from.iter().any(|f| match (f, caller) {
        (Caller::Any(_), Some(_)) => true,
        (Caller::Service(s), Some(c)) => s == c,
        (_, None) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::convert::inbound_policy;
    use weft_proto::v1 as pb;

    fn svc(s: &str) -> ServiceName {
        ServiceName::parse(s).expect("name")
    }

    fn policy(rules: Vec<pb::AuthorizationRule>) -> InboundPolicy {
        inbound_policy(&pb::InboundPolicy {
            rate_limit: None,
            mode: pb::InboundMode::Strict as i32,
            authorization: true,
            rules,
        })
        .expect("valid")
    }

    #[test]
    fn no_policy_allows_everything_and_an_empty_policy_nothing() {
        let open = InboundPolicy::default();
        assert!(open.allows(None, &http::Method::GET, "/", false));
        let closed = policy(vec![]);
        assert!(!closed.allows(Some(&svc("a")), &http::Method::GET, "/", false));
    }

    #[test]
    fn rules_by_caller_and_method() {
        let p = policy(vec![
            pb::AuthorizationRule {
                from: vec!["orders".into()],
                grpc_methods: vec!["/users.v1.Users/Get*".into()],
                http: vec![pb::HttpMatch {
                    methods: vec!["get".into()],
                    path_prefix: "/users/".into(),
                }],
            },
            pb::AuthorizationRule {
                from: vec!["admin".into()],
                ..Default::default()
            },
        ]);
        let orders = svc("orders");
        assert!(p.allows(
            Some(&orders),
            &http::Method::POST,
            "/users.v1.Users/GetUser",
            true
        ));
        assert!(!p.allows(
            Some(&orders),
            &http::Method::POST,
            "/users.v1.Users/DeleteUser",
            true
        ));
        assert!(p.allows(Some(&orders), &http::Method::GET, "/users/7", false));
        assert!(!p.allows(Some(&orders), &http::Method::DELETE, "/users/7", false));
        assert!(!p.allows(Some(&orders), &http::Method::GET, "/admin", false));
        assert!(!p.allows(Some(&svc("web")), &http::Method::GET, "/users/7", false));
        assert!(
            !p.allows(None, &http::Method::GET, "/users/7", false),
            "plaintext callers have no identity"
        );
        assert!(p.allows(
            Some(&svc("admin")),
            &http::Method::DELETE,
            "/anything",
            false
        ));
    }

    #[test]
    fn connections_are_allowed_only_by_rules_without_methods() {
        assert!(InboundPolicy::default().allows_connection(None));
        let p = policy(vec![
            pb::AuthorizationRule {
                from: vec!["orders".into()],
                http: vec![pb::HttpMatch {
                    methods: vec![],
                    path_prefix: "/".into(),
                }],
                ..Default::default()
            },
            pb::AuthorizationRule {
                from: vec!["email".into()],
                ..Default::default()
            },
        ]);
        assert!(p.allows_connection(Some(&svc("email"))));
        assert!(
            !p.allows_connection(Some(&svc("orders"))),
            "a rule narrowed to HTTP paths allows no opaque connection"
        );
        assert!(!p.allows_connection(Some(&svc("web"))));
        assert!(!p.allows_connection(None));
    }
}
