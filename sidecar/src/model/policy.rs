//! What a caller's sidecar holds requests to one service to: retries,
//! timeouts, outlier ejection, limits, hedging and fault injection, with
//! their defaults resolved. Plain validated data: the mechanisms that apply
//! it live in `resilience/`, the decisions of when in `proxy::outbound`, and
//! the conversion from the wire in `discovery::convert`.

use std::time::Duration;

use http::HeaderValue;
use serde::Serialize;
use weft_proto::grpc::GrpcCode;
use weft_proto::pattern::MethodPattern;
use weft_proto::retry::RetryConditions;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub on: RetryConditions,
    pub per_try_timeout: Option<TryTimeout>,
    #[serde(serialize_with = "weft_proto::duration::serialize")]
    pub backoff_base: Duration,
    #[serde(serialize_with = "weft_proto::duration::serialize")]
    pub backoff_max: Duration,
    #[serde(skip)]
    pub budget: BudgetConfig,
    pub non_idempotent: bool,
    pub max_replay_bytes: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            on: RetryConditions::defaults(),
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            budget: BudgetConfig::default(),
            non_idempotent: false,
            max_replay_bytes: 64 * 1024,
        }
    }
}

/// An attempt's own time limit, with the `grpc-timeout` that tells the
/// upstream of it: formatted once, when the policy is built, rather than
/// on every call that has the whole limit left (`outbound::plan`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TryTimeout {
    limit: Duration,
    header: HeaderValue,
}

impl TryTimeout {
    pub fn new(limit: Duration) -> Self {
        TryTimeout {
            limit,
            header: weft_proto::deadline::format(limit),
        }
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// `grpc-timeout: <limit>`; a clone shares its bytes.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
}

/// `/config` shows the limit as the YAML takes it (`300ms`).
impl Serialize for TryTimeout {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        weft_proto::duration::serialize(&self.limit, s)
    }
}

/// The retry budget's size: retries may be at most `ratio` × requests plus
/// `min_per_second` per second (`resilience::budget` counts them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    pub ratio: f64,
    pub min_per_second: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// A whole request; `None`: only the caller's `grpc-timeout`.
    #[serde(serialize_with = "weft_proto::duration::serialize_opt")]
    pub request: Option<Duration>,
    /// A stream with nothing moving for this long is cancelled.
    #[serde(serialize_with = "weft_proto::duration::serialize")]
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            request: None,
            idle: Duration::from_secs(300),
        }
    }
}

/// Outlier ejection (`resilience::breaker`): after `consecutive_failures`
/// an endpoint is ejected for `base`, doubling per ejection in a row up to
/// `max`; at most `max_ejected_percent` of a service's endpoints at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    #[serde(serialize_with = "weft_proto::duration::serialize")]
    pub base: Duration,
    #[serde(serialize_with = "weft_proto::duration::serialize")]
    pub max: Duration,
    pub max_ejected_percent: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Limits {
    pub max_concurrent: Option<usize>,
    pub max_pending: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HedgePolicy {
    pub methods: Vec<MethodPattern>,
    /// `None`: the observed p95.
    #[serde(serialize_with = "weft_proto::duration::serialize_opt")]
    pub delay: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FaultPolicy {
    pub delay_percent: u32,
    #[serde(serialize_with = "weft_proto::duration::serialize")]
    pub delay: Duration,
    pub abort_percent: u32,
    #[serde(serialize_with = "grpc_code_number")]
    pub abort_grpc_status: GrpcCode,
    pub abort_http_status: u16,
}

/// `/config` shows the status as its number, as the YAML takes it.
fn grpc_code_number<S: serde::Serializer>(c: &GrpcCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(c.as_u16())
}

/// What a request to a route is held to: the service's own settings for
/// its default route; a route's rule may override them.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
    pub hedge: Option<HedgePolicy>,
    pub fault: Option<FaultPolicy>,
}

impl RoutePolicy {
    /// A service's default route follows the service's own policy.
    pub fn of_service(r: &Resilience) -> Self {
        RoutePolicy {
            timeouts: r.timeouts,
            retry: r.retry.clone(),
            hedge: r.hedge.clone(),
            fault: r.fault,
        }
    }
}

/// Everything a caller's sidecar applies to requests to one service.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Resilience {
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    pub breaker: BreakerConfig,
    pub limits: Limits,
    pub hedge: Option<HedgePolicy>,
    pub fault: Option<FaultPolicy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_shows_durations_as_text() {
        let v = serde_json::to_value(Resilience::default()).expect("serializes");
        assert_eq!(v["retry"]["backoff_base"], "25ms");
        assert_eq!(v["retry"]["per_try_timeout"], serde_json::Value::Null);
        assert_eq!(v["timeouts"]["idle"], "5m");
        assert_eq!(v["breaker"]["base"], "30s");
        assert_eq!(v["breaker"]["consecutive_failures"], 5);
    }
}
