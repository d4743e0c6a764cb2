//! The `AuthorizationPolicy` resource as validated values: who may call a
//! service, and optionally which gRPC methods and HTTP requests. Its rules
//! are checked here once for both ways in (YAML, and the admin API or the
//! store), which hand over the text they were given.

use std::fmt;

use weft_proto::name::NameError;
use weft_proto::pattern::{MethodPattern, PatternError};

use super::{Name, parse_each};

/// Why part of a rule was refused; the text follows the field's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("name at least one caller service, or \"*\" for any")]
    NoCallers,
    #[error(transparent)]
    Caller(#[from] NameError),
    #[error(transparent)]
    Method(#[from] PatternError),
    #[error("{0:?} is not an HTTP method such as GET")]
    HttpMethod(String),
    #[error("{0:?} must start with /")]
    PathPrefix(String),
}

/// The `AuthorizationPolicy` resource: allow rules for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicySpec {
    pub name: Name,
    pub service: Name,
    pub rules: Vec<AuthorizationRule>,
}

/// Who a rule lets in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Caller {
    /// `*`: any caller with a mesh identity.
    Any,
    Service(Name),
}

impl Caller {
    pub fn parse(s: &str) -> Result<Self, RuleError> {
        if s == "*" {
            return Ok(Caller::Any);
        }
        Ok(Caller::Service(Name::parse(s)?))
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Any => f.write_str("*"),
            Caller::Service(name) => write!(f, "{name}"),
        }
    }
}

/// Who may call, and optionally what: no method and no HTTP match allows
/// every request of the callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRule {
    from: Vec<Caller>,
    grpc_methods: Vec<MethodPattern>,
    http: Vec<HttpMatch>,
}

/// One rule as given: its callers, methods and HTTP matches as text.
#[derive(Debug, Clone, Copy)]
pub struct RawRule<'a> {
    pub from: &'a [String],
    pub grpc_methods: &'a [String],
    pub http: &'a [RawHttpMatch<'a>],
}

/// One HTTP match as given.
#[derive(Debug, Clone, Copy)]
pub struct RawHttpMatch<'a> {
    pub methods: &'a [String],
    pub path_prefix: &'a str,
}

impl AuthorizationRule {
    /// Checks every part of a rule; `Err` lists (field path under the rule
    /// as users write it, e.g. `http[0].methods[1]`, reason) for each.
    pub fn parse(raw: RawRule<'_>) -> Result<Self, Vec<(String, RuleError)>> {
        let mut errors = Vec::new();
        if raw.from.is_empty() {
            errors.push(("from".to_string(), RuleError::NoCallers));
        }
        let from = parse_each(raw.from, |c| Caller::parse(c)).map_err(|es| {
            errors.extend(es.into_iter().map(|(i, e)| (format!("from[{i}]"), e)));
        });
        let grpc_methods =
            parse_each(raw.grpc_methods, |m| MethodPattern::parse(m)).map_err(|es| {
                errors.extend(
                    es.into_iter()
                        .map(|(i, e)| (format!("grpcMethods[{i}]"), e.into())),
                );
            });
        let mut http = Vec::with_capacity(raw.http.len());
        for (i, h) in raw.http.iter().enumerate() {
            match HttpMatch::parse(*h) {
                Ok(m) => http.push(m),
                Err(es) => errors.extend(
                    es.into_iter()
                        .map(|(path, e)| (format!("http[{i}].{path}"), e)),
                ),
            }
        }
        match (from, grpc_methods) {
            (Ok(from), Ok(grpc_methods)) if errors.is_empty() => Ok(AuthorizationRule {
                from,
                grpc_methods,
                http,
            }),
            _ => Err(errors),
        }
    }

    /// Never empty.
    pub fn from(&self) -> &[Caller] {
        &self.from
    }

    /// Empty: any method (as far as this list goes).
    pub fn grpc_methods(&self) -> &[MethodPattern] {
        &self.grpc_methods
    }

    pub fn http(&self) -> &[HttpMatch] {
        &self.http
    }

    /// Whether the rule lets `caller` (a mesh identity) send this request:
    /// the decision a service's sidecar takes on the rules it is sent,
    /// here for `weftctl explain`. `grpc`: a gRPC call, whose method is
    /// the path.
    pub fn allows(&self, caller: &Name, method: &str, path: &str, grpc: bool) -> bool {
        let who = self.from.iter().any(|c| match c {
            Caller::Any => true,
            Caller::Service(s) => s == caller,
        });
        if !who {
            return false;
        }
        if self.grpc_methods.is_empty() && self.http.is_empty() {
            return true;
        }
        if grpc {
            self.grpc_methods.iter().any(|p| p.matches(path))
        } else {
            self.http.iter().any(|h| {
                (h.methods.is_empty() || h.methods.iter().any(|m| m.as_str() == method))
                    && path.starts_with(&h.path_prefix)
            })
        }
    }
}

/// HTTP requests a rule allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMatch {
    methods: Vec<HttpMethod>,
    path_prefix: String,
}

impl HttpMatch {
    fn parse(raw: RawHttpMatch<'_>) -> Result<Self, Vec<(String, RuleError)>> {
        let methods = parse_each(raw.methods, |m| HttpMethod::parse(m));
        let prefix_ok = raw.path_prefix.is_empty() || raw.path_prefix.starts_with('/');
        match methods {
            Ok(methods) if prefix_ok => Ok(HttpMatch {
                methods,
                path_prefix: raw.path_prefix.to_string(),
            }),
            methods => {
                let mut errors: Vec<(String, RuleError)> = methods
                    .err()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(j, e)| (format!("methods[{j}]"), e))
                    .collect();
                if !prefix_ok {
                    errors.push((
                        "pathPrefix".into(),
                        RuleError::PathPrefix(raw.path_prefix.to_string()),
                    ));
                }
                Err(errors)
            }
        }
    }

    /// Empty: any method.
    pub fn methods(&self) -> &[HttpMethod] {
        &self.methods
    }

    /// Empty: any path; otherwise starts with `/`.
    pub fn path_prefix(&self) -> &str {
        &self.path_prefix
    }
}

/// An HTTP method as written on the request line: upper-case letters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpMethod(String);

impl HttpMethod {
    pub fn parse(s: &str) -> Result<Self, RuleError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(RuleError::HttpMethod(s.to_string()));
        }
        Ok(HttpMethod(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_good_rule_holds_its_parts() {
        let (from, methods) = (strings(&["orders", "*"]), strings(&["/u.Users/*"]));
        let http_methods = strings(&["GET"]);
        let rule = AuthorizationRule::parse(RawRule {
            from: &from,
            grpc_methods: &methods,
            http: &[RawHttpMatch {
                methods: &http_methods,
                path_prefix: "/users/",
            }],
        })
        .expect("valid");
        assert_eq!(
            rule.from(),
            [
                Caller::Service(Name::parse("orders").expect("a name")),
                Caller::Any
            ]
        );
        assert_eq!(rule.from()[1].to_string(), "*");
        assert_eq!(rule.grpc_methods()[0].as_str(), "/u.Users/*");
        assert_eq!(rule.http()[0].methods()[0].as_str(), "GET");
        assert_eq!(rule.http()[0].path_prefix(), "/users/");
    }

    #[test]
    fn a_rule_allows_its_callers_what_it_names() {
        let (from, methods) = (strings(&["orders"]), strings(&["/u.Users/Get*"]));
        let http_methods = strings(&["GET"]);
        let rule = AuthorizationRule::parse(RawRule {
            from: &from,
            grpc_methods: &methods,
            http: &[RawHttpMatch {
                methods: &http_methods,
                path_prefix: "/users/",
            }],
        })
        .expect("valid");
        let orders = Name::parse("orders").expect("name");
        let web = Name::parse("web").expect("name");
        assert!(rule.allows(&orders, "POST", "/u.Users/GetUser", true));
        assert!(!rule.allows(&orders, "POST", "/u.Users/DeleteUser", true));
        assert!(rule.allows(&orders, "GET", "/users/7", false));
        assert!(!rule.allows(&orders, "DELETE", "/users/7", false));
        assert!(!rule.allows(&orders, "GET", "/admin", false));
        assert!(!rule.allows(&web, "GET", "/users/7", false));
        let any = strings(&["*"]);
        let open = AuthorizationRule::parse(RawRule {
            from: &any,
            grpc_methods: &[],
            http: &[],
        })
        .expect("valid");
        assert!(open.allows(&web, "DELETE", "/anything", false));
    }

    #[test]
    fn every_bad_part_is_named() {
        let (methods, http_methods) = (strings(&["GetUser"]), strings(&["GET", "get"]));
        let errors = AuthorizationRule::parse(RawRule {
            from: &[],
            grpc_methods: &methods,
            http: &[
                RawHttpMatch {
                    methods: &[],
                    path_prefix: "",
                },
                RawHttpMatch {
                    methods: &http_methods,
                    path_prefix: "users",
                },
            ],
        })
        .expect_err("invalid");
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "from",
                "grpcMethods[0]",
                "http[1].methods[1]",
                "http[1].pathPrefix"
            ]
        );
        assert_eq!(
            errors[2].1.to_string(),
            "\"get\" is not an HTTP method such as GET"
        );
        assert_eq!(errors[3].1.to_string(), "\"users\" must start with /");
        let bad_caller = strings(&["Bad Name"]);
        let errors = AuthorizationRule::parse(RawRule {
            from: &bad_caller,
            grpc_methods: &[],
            http: &[],
        })
        .expect_err("invalid");
        assert_eq!(errors[0].0, "from[0]");
    }
}
