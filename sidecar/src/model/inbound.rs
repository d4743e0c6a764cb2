//! What a service's sidecar enforces on inbound requests, validated: the
//! inbound mode (STRICT: mutual TLS only; PERMISSIVE: mutual TLS or
//! plaintext) and the authorization rules. `authz` matches requests
//! against them; `discovery::convert` builds them from the wire.

use weft_proto::name::ServiceName;
use weft_proto::pattern::MethodPattern;
use weft_proto::protocol::InboundMode;

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

/// One allow rule: callers, optionally narrowed to gRPC methods or HTTP
/// methods and path prefixes.
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
    /// `Some`: once any policy selects it, what no rule allows is denied.
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
