//! Resilience on the outbound path: retries within a budget, deadlines
//! (honouring and forwarding `grpc-timeout`), outlier ejection, request
//! limits and fault injection. The settings come with a service's policy;
//! this module holds them with their defaults resolved, and the small
//! mechanisms; `proxy::outbound` drives them per request.

pub mod breaker;
pub mod budget;
pub mod deadline;
pub mod fault;
pub mod hedge;
pub mod limit;
pub mod replay;
pub mod timed;

use std::time::Duration;

use serde::Serialize;
use weft_proto::grpc::GrpcCode;
use weft_proto::pattern::{MethodPattern, PatternError};
use weft_proto::protocol::ChoiceError;
use weft_proto::retry::RetryConditions;
use weft_proto::v1 as pb;

use breaker::BreakerConfig;
use budget::BudgetConfig;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub on: RetryConditions,
    #[serde(serialize_with = "weft_proto::duration::serialize_opt")]
    pub per_try_timeout: Option<Duration>,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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

/// `/config` shows the status as its number, as the YAML takes it.
fn grpc_code_number<S: serde::Serializer>(c: &GrpcCode, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u16(c.as_u16())
}

/// Everything a caller's sidecar applies to requests to one service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Resilience {
    pub retry: RetryPolicy,
    pub timeouts: Timeouts,
    pub breaker: BreakerConfig,
    pub limits: Limits,
    pub hedge: Option<HedgePolicy>,
    pub fault: Option<FaultPolicy>,
}

impl Default for Resilience {
    fn default() -> Self {
        Resilience {
            retry: RetryPolicy::default(),
            timeouts: Timeouts::default(),
            breaker: BreakerConfig::default(),
            limits: Limits {
                max_concurrent: None,
                max_pending: None,
            },
            hedge: None,
            fault: None,
        }
    }
}

/// A service's wire policy names something this sidecar does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResilienceError {
    #[error("retry.on: {0}")]
    RetryOn(ChoiceError),
    #[error("hedge.grpc_methods: {0}")]
    HedgeMethod(PatternError),
    #[error("fault.abort_grpc_status: {0} is not a gRPC status")]
    FaultStatus(u32),
}

fn ms_or(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

fn nonzero_ms(ms: u64) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms))
}

impl Resilience {
    /// From a service's wire policy; unset fields take the defaults.
    pub fn from_proto(p: &pb::ServiceSpec) -> Result<Self, ResilienceError> {
        let d = Resilience::default();
        let retry = match &p.retry {
            None => d.retry,
            Some(r) => RetryPolicy {
                attempts: if r.attempts == 0 {
                    d.retry.attempts
                } else {
                    r.attempts.min(10)
                },
                on: RetryConditions::parse(&r.on).map_err(ResilienceError::RetryOn)?,
                per_try_timeout: nonzero_ms(r.per_try_timeout_ms),
                backoff_base: ms_or(r.backoff_base_ms, d.retry.backoff_base),
                backoff_max: ms_or(r.backoff_max_ms, d.retry.backoff_max),
                budget: BudgetConfig {
                    ratio: if r.budget_ratio > 0.0 && r.budget_ratio <= 1.0 {
                        r.budget_ratio
                    } else {
                        d.retry.budget.ratio
                    },
                    min_per_second: if r.budget_min_per_second == 0 {
                        d.retry.budget.min_per_second
                    } else {
                        r.budget_min_per_second
                    },
                },
                non_idempotent: r.non_idempotent,
                max_replay_bytes: if r.max_replay_bytes == 0 {
                    d.retry.max_replay_bytes
                } else {
                    r.max_replay_bytes as usize
                },
            },
        };
        let timeouts = p.timeouts.as_ref().map_or(d.timeouts, |t| Timeouts {
            request: nonzero_ms(t.request_ms),
            idle: ms_or(t.idle_ms, d.timeouts.idle),
        });
        let (breaker, limits) = match &p.circuit_breaker {
            None => (d.breaker, d.limits),
            Some(c) => (
                BreakerConfig {
                    consecutive_failures: if c.consecutive_failures == 0 {
                        d.breaker.consecutive_failures
                    } else {
                        c.consecutive_failures
                    },
                    base: ms_or(c.base_ejection_ms, d.breaker.base),
                    max: ms_or(c.max_ejection_ms, d.breaker.max),
                    max_ejected_percent: if c.max_ejected_percent == 0 {
                        d.breaker.max_ejected_percent
                    } else {
                        c.max_ejected_percent.min(100)
                    },
                },
                Limits {
                    max_concurrent: (c.max_concurrent_requests != 0)
                        .then_some(c.max_concurrent_requests as usize),
                    max_pending: (c.max_pending_requests != 0)
                        .then_some(c.max_pending_requests as usize),
                },
            ),
        };
        let hedge = p
            .hedge
            .as_ref()
            .map(|h| {
                let methods = h
                    .grpc_methods
                    .iter()
                    .map(|m| MethodPattern::parse(m))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(ResilienceError::HedgeMethod)?;
                Ok::<_, ResilienceError>(HedgePolicy {
                    methods,
                    delay: nonzero_ms(h.delay_ms),
                })
            })
            .transpose()?;
        let fault = p
            .fault
            .as_ref()
            .map(|f| {
                let abort_grpc_status = match f.abort_grpc_status {
                    0 => GrpcCode::Unavailable,
                    n => u16::try_from(n)
                        .ok()
                        .and_then(GrpcCode::from_u16)
                        .ok_or(ResilienceError::FaultStatus(n))?,
                };
                Ok::<_, ResilienceError>(FaultPolicy {
                    delay_percent: f.delay_percent.min(100),
                    delay: Duration::from_millis(f.delay_ms),
                    abort_percent: f.abort_percent.min(100),
                    abort_grpc_status,
                    abort_http_status: if f.abort_http_status == 0 {
                        503
                    } else {
                        f.abort_http_status as u16
                    },
                })
            })
            .transpose()?;
        Ok(Resilience {
            retry,
            timeouts,
            breaker,
            limits,
            hedge,
            fault,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::grpc::GrpcCode;

    #[test]
    fn config_shows_durations_as_text() {
        let v = serde_json::to_value(Resilience::default()).expect("serializes");
        assert_eq!(v["retry"]["backoff_base"], "25ms");
        assert_eq!(v["retry"]["per_try_timeout"], serde_json::Value::Null);
        assert_eq!(v["timeouts"]["idle"], "5m");
        assert_eq!(v["breaker"]["base"], "30s");
        assert_eq!(v["breaker"]["consecutive_failures"], 5);
    }

    #[test]
    fn defaults_and_overrides() {
        let d = Resilience::from_proto(&pb::ServiceSpec::default()).expect("valid");
        assert_eq!(d, Resilience::default());
        assert!(d.retry.on.grpc(GrpcCode::Unavailable) && !d.retry.on.grpc(GrpcCode::Internal));
        assert!(d.retry.on.http(503) && !d.retry.on.http(500));
        let p = pb::ServiceSpec {
            retry: Some(pb::RetryPolicy {
                attempts: 5,
                on: vec!["internal".into(), "5xx".into()],
                per_try_timeout_ms: 100,
                ..Default::default()
            }),
            circuit_breaker: Some(pb::CircuitBreakerPolicy {
                consecutive_failures: 2,
                max_concurrent_requests: 10,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = Resilience::from_proto(&p).expect("valid");
        assert_eq!(r.retry.attempts, 5);
        assert!(
            r.retry.on.grpc(GrpcCode::Internal)
                && !r.retry.on.grpc(GrpcCode::Unavailable)
                && r.retry.on.http(500)
        );
        assert_eq!(r.retry.per_try_timeout, Some(Duration::from_millis(100)));
        assert_eq!(r.breaker.consecutive_failures, 2);
        assert_eq!(r.breaker.base, Duration::from_secs(30));
        assert_eq!(r.limits.max_concurrent, Some(10));
        let bad = pb::ServiceSpec {
            retry: Some(pb::RetryPolicy {
                on: vec!["never".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(Resilience::from_proto(&bad).is_err());
    }
}
