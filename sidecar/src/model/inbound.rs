//! What a service's sidecar enforces on inbound requests, validated: the
//! inbound mode (STRICT: mutual TLS only; PERMISSIVE: mutual TLS or
//! plaintext), the authorization rules and the service's local rate limit.
//! `authz` matches requests against the rules, `edge::ratelimit` keeps the
//! limit's buckets; `discovery::convert` builds them from the wire.

use serde::Serialize;
use weft_proto::name::ServiceName;
use weft_proto::pattern::MethodPattern;
use weft_proto::protocol::InboundMode;
use weft_proto::routing::{RateKey, RateLimit};

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
    /// Requests the service takes, for all callers or per caller; `None`:
    /// no limit.
    #[serde(serialize_with = "rate_limit_as_json")]
    pub rate_limit: Option<RateLimit>,
}

/// The limit as `/config` shows it: `{"requests": 10, "period_ms": 1000,
/// "burst": 10, "key": "caller"}`.
fn rate_limit_as_json<S: serde::Serializer>(
    r: &Option<RateLimit>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    struct Shown {
        requests: u32,
        period_ms: u128,
        burst: u32,
        key: String,
    }
    r.as_ref()
        .map(|r| Shown {
            requests: r.requests,
            period_ms: r.period.as_millis(),
            burst: r.burst,
            key: match &r.key {
                RateKey::All => "all".to_string(),
                RateKey::ClientIp => "client-ip".to_string(),
                RateKey::Caller => "caller".to_string(),
                RateKey::Header(h) => format!("header:{h}"),
            },
        })
        .serialize(s)
}

impl Default for InboundPolicy {
    fn default() -> Self {
        InboundPolicy {
            mode: InboundMode::Strict,
            rules: None,
            rate_limit: None,
        }
    }
}
