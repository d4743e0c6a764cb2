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
            let who = r.from.iter().any(|f| match (f, caller) {
                (Caller::Any(_), Some(_)) => true,
                (Caller::Service(s), Some(c)) => s == c,
                (_, None) => false,
            });
            if !who {
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
}
