//! A service's routes as its callers' sidecars keep them: the Gateway
//! API's rules (what they match is `weft_proto::routing`'s, shared with the
//! control plane), each with what it does here — its backends, filters,
//! and the timeouts, retries and faults that override the service's.

use std::time::Duration;

use serde::Serialize;
use weft_proto::routing::{BackendRef, Filters, Route};

use super::policy::{FaultPolicy, RetryPolicy};

/// What one rule does, as pushed.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    /// Empty: the service the route is attached to.
    pub backends: Vec<BackendRef>,
    pub filters: Filters,
    /// The whole request; `None`: the service's.
    pub request_timeout: Option<Duration>,
    /// Each try; `None`: the service's per-try timeout.
    pub backend_request_timeout: Option<Duration>,
    /// Replaces the service's retry settings (unset fields take the
    /// defaults, as for a service).
    pub retry: Option<RetryPolicy>,
    /// Replaces the service's fault injection.
    pub fault: Option<FaultPolicy>,
}

/// One route attached to a service.
pub type RouteSpec = Route<RuleSpec>;

/// How `/config` shows a service's routes: their names and rule counts.
pub fn serialize_routes<S: serde::Serializer>(
    routes: &[RouteSpec],
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Shown<'a> {
        name: &'a str,
        rules: usize,
    }
    s.collect_seq(routes.iter().map(|r| Shown {
        name: &r.name,
        rules: r.rules.len(),
    }))
}
