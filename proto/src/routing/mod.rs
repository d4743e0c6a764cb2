//! Routing: which rule of a service's routes a request takes, and what the
//! rule does. The shapes are the Kubernetes Gateway API's (`HTTPRoute`,
//! `GRPCRoute`, attached to a service as in its GAMMA mesh profile). Both
//! programs use this one matcher and this one precedence — the sidecar to
//! route requests, the control plane to check routes and to `explain` them
//! — so what `weftctl explain` prints is what a sidecar does.
//!
//! - `matching.rs`: what a rule matches ([`RouteMatch`]);
//! - `table.rs`: the precedence between rules ([`RouteTable`]);
//! - `filter.rs`: header modifiers, URL rewrites, mirrors, backends;
//! - `edge.rs`: what a gateway adds: host names, rate limits, CORS;
//! - `wire.rs`: the same as `weft.v1` messages, both ways.

mod edge;
mod filter;
mod matching;
mod table;
mod wire;

pub use edge::{Cors, EdgeError, HostMatch, OriginMatch, RateKey, RateLimit, request_host};
pub use filter::{
    BackendRef, FilterError, Filters, HeaderModifier, Mirror, PathRewrite, UrlRewrite,
};
pub use matching::{
    Expression, GrpcMethodMatch, HeaderMatch, MAX_VALUE, MatchError, Mismatch, PathMatch,
    QueryMatch, Request, RouteMatch, ValueMatch, parse_method,
};
pub use table::{Candidate, Found, Route, RouteTable, Rule};
pub use wire::{
    Problem, WireError, backend_from_wire, backend_to_wire, filters_from_wire, filters_to_wire,
    hostnames_from_wire, match_from_wire, match_to_wire, rate_limit_from_wire, rate_limit_to_wire,
};

use std::fmt;

/// Which resource a route is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    Http,
    Grpc,
}

impl RouteKind {
    /// The resource's kind, as YAML and route names spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }

    /// `HTTPRoute/name`: how metrics, spans and logs name a route.
    pub fn qualified(self, name: &str) -> String {
        format!("{}/{name}", self.as_str())
    }
}

impl fmt::Display for RouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
