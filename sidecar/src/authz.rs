//! What a service's sidecar enforces on inbound requests: the inbound mode
//! (STRICT: mutual TLS only; PERMISSIVE: mutual TLS or plaintext) and
//! authorization (allow rules by caller identity, optionally narrowed to gRPC
//! methods or HTTP methods and path prefixes; once any policy selects the
//! service, what no rule allows is denied).
//!
//! Validated from the control plane's `InboundPolicy` at the edge; the data
//! path only matches prepared patterns.

use weft_proto::name::ServiceName;
use weft_proto::pattern::MethodPattern;
use weft_proto::protocol::InboundMode;
use weft_proto::v1 as pb;

/// Who a rule admits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Caller {
    /// Any caller with a mesh identity (`*`).
    Any(AnyCaller),
    Service(ServiceName),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum AnyCaller {
    #[serde(rename = "*")]
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HttpRule {
    /// Upper-case methods; empty: any.
    #[serde(serialize_with = "methods_as_text")]
    pub methods: Vec<http::Method>,
    pub path_prefix: String,
}

fn methods_as_text<S: serde::Serializer>(m: &[http::Method], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(m.iter().map(http::Method::as_str))
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rule {
    pub from: Vec<Caller>,
    pub grpc: Vec<MethodPattern>,
    pub http: Vec<HttpRule>,
}

/// The inbound policy in force.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InboundPolicy {
    pub mode: InboundMode,
    /// `None`: no policy selects the service, every request is allowed.
    pub rules: Option<Vec<Rule>>,
}

impl Default for InboundPolicy {
    fn default() -> Self {
        InboundPolicy {
            mode: InboundMode::Strict,
            rules: None,
        }
    }
}

impl InboundPolicy {
    /// Validates the control plane's policy; errors name the rule and field.
    pub fn from_proto(p: &pb::InboundPolicy) -> Result<Self, String> {
        let mode = InboundMode::from_proto(p.mode).map_err(|e| format!("inbound.mode: {e}"))?;
        if !p.authorization {
            return Ok(InboundPolicy { mode, rules: None });
        }
        let mut rules = Vec::with_capacity(p.rules.len());
        for (i, r) in p.rules.iter().enumerate() {
            let at = |f: &str| format!("inbound.rules[{i}].{f}");
            let from = r
                .from
                .iter()
                .map(|f| {
                    if f == "*" {
                        Ok(Caller::Any(AnyCaller::Any))
                    } else {
                        ServiceName::parse(f).map(Caller::Service)
                    }
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", at("from")))?;
            let grpc = r
                .grpc_methods
                .iter()
                .map(|m| MethodPattern::parse(m))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", at("grpc_methods")))?;
            let http = r
                .http
                .iter()
                .map(|h| {
                    let methods = h
                        .methods
                        .iter()
                        .map(|m| {
                            http::Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                                .map_err(|e| e.to_string())
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    Ok::<_, String>(HttpRule {
                        methods,
                        path_prefix: h.path_prefix.clone(),
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", at("http")))?;
            rules.push(Rule { from, grpc, http });
        }
        Ok(InboundPolicy {
            mode,
            rules: Some(rules),
        })
    }

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

    fn svc(s: &str) -> ServiceName {
        ServiceName::parse(s).expect("name")
    }

    fn policy(rules: Vec<pb::AuthorizationRule>) -> InboundPolicy {
        InboundPolicy::from_proto(&pb::InboundPolicy {
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
    fn bad_rules_are_named() {
        let e = InboundPolicy::from_proto(&pb::InboundPolicy {
            mode: 0,
            authorization: true,
            rules: vec![pb::AuthorizationRule {
                from: vec!["Bad Name".into()],
                ..Default::default()
            }],
        })
        .expect_err("invalid");
        assert!(e.starts_with("inbound.rules[0].from"), "{e}");
    }
}
