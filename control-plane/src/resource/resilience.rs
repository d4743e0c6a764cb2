//! A `Service`'s resilience settings, as validated values: retries,
//! timeouts, circuit breaking, hedging and fault injection. The control
//! plane checks and pushes them; callers' sidecars apply them.
//!
//! Each setting is optional because the wire (`mesh.proto`) and `weftctl
//! get` tell "unset, take the sidecar's default" apart from any value; the
//! defaults themselves live in the sidecar. A zero on the wire means unset,
//! so a zero that YAML accepts (`maxEjectedPercent: 0`) reads as unset too,
//! and a zero duration is refused in YAML: `Some(duration)` is never zero.
//!
//! ```yaml
//! spec:
//!   retries:
//!     attempts: 3
//!     on: [unavailable, gateway-error, connect-failure, refused-stream]
//!     perTryTimeout: 500ms
//!     backoff: {base: 25ms, max: 250ms}
//!     budget: {ratio: 0.2, minPerSecond: 10}
//!     nonIdempotent: false
//!     maxReplayBytes: 65536
//!   timeouts: {request: 5s, idle: 5m}
//!   circuitBreaker:
//!     consecutiveFailures: 5
//!     baseEjection: 30s
//!     maxEjection: 5m
//!     maxEjectedPercent: 50
//!     maxConcurrentRequests: 1000
//!     maxPendingRequests: 100
//!   hedging: {grpcMethods: ["/pkg.Service/Get*"], delay: 20ms}
//!   faults:
//!     delay: {percent: 10, duration: 100ms}
//!     abort: {percent: 5, grpcStatus: 14, httpStatus: 503}
//! ```

use std::num::NonZeroU32;
use std::time::Duration;

use weft_proto::grpc::GrpcCode;
use weft_proto::pattern::{MethodPattern, PatternError};
use weft_proto::protocol::ChoiceError;
use weft_proto::retry::{RetryCondition, RetryConditions};

use super::parse_each;

/// Why a resilience setting was refused. The text is the reason users read
/// after the field's path, from YAML and from the admin API alike.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResilienceError {
    #[error("at least 1 (1: no retries)")]
    NoTries,
    #[error("at most {} tries", Attempts::MAX)]
    TooManyTries,
    #[error(transparent)]
    Condition(#[from] ChoiceError),
    #[error("must be between 0 and 1")]
    Ratio,
    #[error("base must not exceed max")]
    BackoffOrder,
    #[error("baseEjection must not exceed maxEjection")]
    EjectionOrder,
    #[error("at most 100")]
    EjectedPercent,
    #[error("a percentage, at most 100")]
    Percent,
    #[error(transparent)]
    Method(#[from] PatternError),
    #[error("name the idempotent methods to hedge")]
    NoHedgedMethods,
    #[error("a gRPC status code, 1 to 16")]
    GrpcStatus,
    #[error("an HTTP error status, 400 to 599")]
    HttpStatus,
}

/// The settings of one service; `None`: that part takes every default.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resilience {
    pub retry: Option<Retry>,
    pub timeouts: Option<Timeouts>,
    pub circuit_breaker: Option<CircuitBreaker>,
    pub hedge: Option<Hedge>,
    pub fault: Option<Faults>,
}

/// When and how a caller tries a failed request again.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Retry {
    pub attempts: Option<Attempts>,
    /// `None`: the default conditions. Kept apart from naming them because
    /// the wire and `weftctl get` carry an `on` only when one was written;
    /// a written one is a set, shown in the order of `RetryCondition::ALL`.
    pub on: Option<RetryConditions>,
    pub per_try_timeout: Option<Duration>,
    pub backoff: Backoff,
    pub budget: Budget,
    pub non_idempotent: bool,
    pub max_replay_bytes: Option<NonZeroU32>,
}

/// Tries in all, the first included: 1 (no retries) to [`Attempts::MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempts(u32);

impl Attempts {
    pub const MAX: u32 = 10;

    pub fn new(n: u32) -> Result<Self, ResilienceError> {
        match n {
            0 => Err(ResilienceError::NoTries),
            n if n > Self::MAX => Err(ResilienceError::TooManyTries),
            n => Ok(Attempts(n)),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// The conditions named in `retries.on`, each checked; none named is
/// `None` (the defaults). `Err` lists (index, reason) for every bad name.
pub fn parse_conditions<S: AsRef<str>>(
    names: &[S],
) -> Result<Option<RetryConditions>, Vec<(usize, ResilienceError)>> {
    let set = parse_each(names, |n| RetryCondition::parse(n.as_ref())).map_err(|es| {
        es.into_iter()
            .map(|(i, e)| (i, e.into()))
            .collect::<Vec<_>>()
    })?;
    Ok((!set.is_empty()).then(|| set.into_iter().collect()))
}

/// Waits that double from `base` up to `max` (between retries, and between
/// ejections of one endpoint): `base` never exceeds `max` when both are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backoff {
    base: Option<Duration>,
    max: Option<Duration>,
}

impl Backoff {
    /// A retry backoff.
    pub fn retries(base: Option<Duration>, max: Option<Duration>) -> Result<Self, ResilienceError> {
        Self::ordered(base, max, ResilienceError::BackoffOrder)
    }

    /// The circuit breaker's ejection times.
    pub fn ejection(
        base: Option<Duration>,
        max: Option<Duration>,
    ) -> Result<Self, ResilienceError> {
        Self::ordered(base, max, ResilienceError::EjectionOrder)
    }

    fn ordered(
        base: Option<Duration>,
        max: Option<Duration>,
        error: ResilienceError,
    ) -> Result<Self, ResilienceError> {
        match (base, max) {
            (Some(b), Some(m)) if b > m => Err(error),
            _ => Ok(Backoff { base, max }),
        }
    }

    pub fn base(&self) -> Option<Duration> {
        self.base
    }

    pub fn max(&self) -> Option<Duration> {
        self.max
    }
}

/// Retries stay within `ratio` × requests + `min_per_second` per second.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Budget {
    pub ratio: Option<Ratio>,
    pub min_per_second: Option<NonZeroU32>,
}

/// A share of requests, more than 0 and at most 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ratio(f64);

impl Ratio {
    /// 0 is unset (the sidecar's default), as on the wire.
    pub fn new(r: f64) -> Result<Option<Self>, ResilienceError> {
        if !(0.0..=1.0).contains(&r) {
            // NaN too: it is in no range.
            return Err(ResilienceError::Ratio);
        }
        Ok((r != 0.0).then_some(Ratio(r)))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

/// Limits in time; `None`: no request limit, and the default idle limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timeouts {
    pub request: Option<Duration>,
    pub idle: Option<Duration>,
}

/// Outlier ejection and limits on requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CircuitBreaker {
    pub consecutive_failures: Option<NonZeroU32>,
    pub ejection: Backoff,
    /// Never 0: 0 is unset (the sidecar's default).
    pub max_ejected_percent: Option<Percent>,
    pub max_concurrent_requests: Option<NonZeroU32>,
    pub max_pending_requests: Option<NonZeroU32>,
}

/// A whole percentage, 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Percent(u8);

impl Percent {
    pub fn new(n: u32) -> Result<Self, ResilienceError> {
        u8::try_from(n)
            .ok()
            .filter(|&n| n <= 100)
            .map(Percent)
            .ok_or(ResilienceError::Percent)
    }

    /// `maxEjectedPercent`: 0 is unset, as on the wire.
    pub fn max_ejected(n: u32) -> Result<Option<Self>, ResilienceError> {
        match Percent::new(n) {
            Ok(Percent(0)) => Ok(None),
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(ResilienceError::EjectedPercent),
        }
    }

    pub fn get(self) -> u32 {
        u32::from(self.0)
    }
}

/// A second copy of a slow idempotent call, to a different endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hedge {
    grpc_methods: Vec<MethodPattern>,
    /// `None`: the observed p95 latency.
    pub delay: Option<Duration>,
}

impl Hedge {
    /// Hedging needs at least one method: the mesh cannot know on its own
    /// which calls are safe to send twice.
    pub fn new(
        grpc_methods: Vec<MethodPattern>,
        delay: Option<Duration>,
    ) -> Result<Self, ResilienceError> {
        if grpc_methods.is_empty() {
            return Err(ResilienceError::NoHedgedMethods);
        }
        Ok(Hedge {
            grpc_methods,
            delay,
        })
    }

    /// Never empty.
    pub fn grpc_methods(&self) -> &[MethodPattern] {
        &self.grpc_methods
    }
}

/// Injected failures, for testing callers' resilience.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

/// Delays `percent` of requests by `duration`. YAML refuses a zero
/// duration; the wire could always carry one (a percentage without a
/// delay), which delays by nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultDelay {
    pub percent: Percent,
    pub duration: Duration,
}

/// Fails `percent` of requests at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultAbort {
    pub percent: Percent,
    /// For gRPC calls; `None`: UNAVAILABLE. Never `Ok`.
    pub grpc_status: Option<GrpcCode>,
    /// For other requests; `None`: 503.
    pub http_status: Option<ErrorStatus>,
}

impl FaultAbort {
    /// An abort from its three numbers, where a 0 status is unset (as on
    /// the wire). All three 0 is no abort at all: the wire cannot tell it
    /// from none, so neither do we. `Err` lists (field, reason).
    pub fn from_numbers(
        percent: u32,
        grpc_status: u32,
        http_status: u32,
    ) -> Result<Option<Self>, Vec<(&'static str, ResilienceError)>> {
        let mut errors = Vec::new();
        let percent = Percent::new(percent)
            .map_err(|e| errors.push(("percent", e)))
            .unwrap_or_default();
        let grpc_status = match grpc_status {
            0 => None,
            n => u16::try_from(n)
                .ok()
                .and_then(GrpcCode::from_u16)
                .or_else(|| {
                    errors.push(("grpcStatus", ResilienceError::GrpcStatus));
                    None
                }),
        };
        let http_status = match http_status {
            0 => None,
            n => ErrorStatus::new(n)
                .map_err(|e| errors.push(("httpStatus", e)))
                .ok(),
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let abort = FaultAbort {
            percent,
            grpc_status,
            http_status,
        };
        Ok(
            (abort.percent.get() != 0 || grpc_status.is_some() || http_status.is_some())
                .then_some(abort),
        )
    }
}

/// An HTTP error status, 400 to 599.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorStatus(u16);

impl ErrorStatus {
    pub fn new(n: u32) -> Result<Self, ResilienceError> {
        u16::try_from(n)
            .ok()
            .filter(|n| (400..600).contains(n))
            .map(ErrorStatus)
            .ok_or(ResilienceError::HttpStatus)
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_run_from_one_to_ten() {
        assert_eq!(Attempts::new(0), Err(ResilienceError::NoTries));
        assert_eq!(Attempts::new(1).map(Attempts::get), Ok(1));
        assert_eq!(Attempts::new(10).map(Attempts::get), Ok(10));
        assert_eq!(Attempts::new(11), Err(ResilienceError::TooManyTries));
        assert_eq!(
            ResilienceError::TooManyTries.to_string(),
            "at most 10 tries"
        );
    }

    #[test]
    fn conditions_are_a_set_and_none_named_is_unset() {
        assert_eq!(parse_conditions::<&str>(&[]), Ok(None));
        let set = parse_conditions(&["reset", "unavailable", "reset"]).expect("valid");
        assert_eq!(
            set.map(|s| s.iter().map(RetryCondition::as_str).collect::<Vec<_>>()),
            Some(vec!["unavailable", "reset"])
        );
        let e = parse_conditions(&["reset", "never", "sometimes"]).expect_err("unknown");
        assert_eq!(e.iter().map(|(i, _)| *i).collect::<Vec<_>>(), [1, 2]);
        assert!(e[0].1.to_string().contains("unknown condition \"never\""));
    }

    #[test]
    fn backoff_base_may_not_exceed_max() {
        let ms = |n| Some(Duration::from_millis(n));
        assert!(Backoff::retries(ms(10), ms(10)).is_ok());
        assert!(Backoff::retries(ms(10), None).is_ok());
        assert!(Backoff::retries(None, ms(1)).is_ok());
        assert_eq!(
            Backoff::retries(ms(11), ms(10)),
            Err(ResilienceError::BackoffOrder)
        );
        assert_eq!(
            Backoff::ejection(ms(11), ms(10)),
            Err(ResilienceError::EjectionOrder)
        );
        let b = Backoff::ejection(ms(1), ms(2)).expect("ordered");
        assert_eq!((b.base(), b.max()), (ms(1), ms(2)));
    }

    #[test]
    fn ratios_and_percentages() {
        assert_eq!(Ratio::new(0.0), Ok(None));
        assert_eq!(Ratio::new(-0.0), Ok(None));
        assert_eq!(Ratio::new(0.5).map(|r| r.map(Ratio::get)), Ok(Some(0.5)));
        assert_eq!(Ratio::new(1.0).map(|r| r.map(Ratio::get)), Ok(Some(1.0)));
        for bad in [1.01, -0.1, f64::NAN, f64::INFINITY] {
            assert_eq!(Ratio::new(bad), Err(ResilienceError::Ratio), "{bad}");
        }
        assert_eq!(Percent::new(0).map(Percent::get), Ok(0));
        assert_eq!(Percent::new(100).map(Percent::get), Ok(100));
        assert_eq!(Percent::new(101), Err(ResilienceError::Percent));
        assert_eq!(Percent::new(256), Err(ResilienceError::Percent));
        assert_eq!(Percent::max_ejected(0), Ok(None));
        assert_eq!(
            Percent::max_ejected(30).map(|p| p.map(Percent::get)),
            Ok(Some(30))
        );
        assert_eq!(
            Percent::max_ejected(101),
            Err(ResilienceError::EjectedPercent)
        );
    }

    #[test]
    fn hedging_names_its_methods() {
        assert_eq!(
            Hedge::new(vec![], None),
            Err(ResilienceError::NoHedgedMethods)
        );
        let m = MethodPattern::parse("/u.Users/Get*").expect("valid");
        let h = Hedge::new(vec![m.clone()], None).expect("valid");
        assert_eq!(h.grpc_methods(), [m]);
    }

    #[test]
    fn aborts_read_zero_statuses_as_unset() {
        assert_eq!(FaultAbort::from_numbers(0, 0, 0), Ok(None));
        let a = FaultAbort::from_numbers(0, 0, 503)
            .expect("valid")
            .expect("an abort");
        assert_eq!(a.http_status.map(ErrorStatus::get), Some(503));
        assert_eq!(a.grpc_status, None);
        let a = FaultAbort::from_numbers(5, 8, 0)
            .expect("valid")
            .expect("an abort");
        assert_eq!(
            (a.percent.get(), a.grpc_status),
            (5, Some(GrpcCode::ResourceExhausted))
        );
        let e = FaultAbort::from_numbers(120, 17, 200).expect_err("invalid");
        assert_eq!(
            e,
            [
                ("percent", ResilienceError::Percent),
                ("grpcStatus", ResilienceError::GrpcStatus),
                ("httpStatus", ResilienceError::HttpStatus),
            ]
        );
        assert_eq!(ErrorStatus::new(599).map(ErrorStatus::get), Ok(599));
        assert!(ErrorStatus::new(600).is_err() && ErrorStatus::new(399).is_err());
    }
}
