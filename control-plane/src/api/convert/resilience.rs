//! A service's resilience settings and their `weft.v1` messages. On the
//! wire an unset field is 0 (or empty) and durations are whole
//! milliseconds; the messages in are checked by the same constructors as
//! YAML, and their errors name the fields as users write them in YAML
//! (`retries.on[0]`), as they always have.

use std::num::NonZeroU32;
use std::time::Duration;

use weft_proto::pattern::MethodPattern;
use weft_proto::v1 as pb;

use crate::resource::parse_each;
use crate::resource::resilience::{
    Attempts, Backoff, Budget, CircuitBreaker, FaultAbort, FaultDelay, Faults, Hedge, Percent,
    Ratio, Resilience, ResilienceError, Retry, Timeouts, parse_conditions,
};

/// Problems of one message: (field path, why).
pub(super) type Problems = Vec<(String, ResilienceError)>;

/// A duration on the wire: 0 is unset. A duration too long for 64 bits of
/// milliseconds (half a billion years) is sent as the longest there is.
pub(super) fn ms(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(super) fn from_ms(ms: u64) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms))
}

fn count(n: Option<NonZeroU32>) -> u32 {
    n.map_or(0, NonZeroU32::get)
}

impl From<&Retry> for pb::RetryPolicy {
    fn from(r: &Retry) -> Self {
        pb::RetryPolicy {
            attempts: r.attempts.map_or(0, Attempts::get),
            on: r.on.map_or_else(Vec::new, |set| {
                set.iter().map(|c| c.as_str().to_string()).collect()
            }),
            per_try_timeout_ms: ms(r.per_try_timeout),
            backoff_base_ms: ms(r.backoff.base()),
            backoff_max_ms: ms(r.backoff.max()),
            budget_ratio: r.budget.ratio.map_or(0.0, Ratio::get),
            budget_min_per_second: count(r.budget.min_per_second),
            non_idempotent: r.non_idempotent,
            max_replay_bytes: count(r.max_replay_bytes),
        }
    }
}

impl From<&Timeouts> for pb::TimeoutPolicy {
    fn from(t: &Timeouts) -> Self {
        pb::TimeoutPolicy {
            request_ms: ms(t.request),
            idle_ms: ms(t.idle),
        }
    }
}

impl From<&CircuitBreaker> for pb::CircuitBreakerPolicy {
    fn from(c: &CircuitBreaker) -> Self {
        pb::CircuitBreakerPolicy {
            consecutive_failures: count(c.consecutive_failures),
            base_ejection_ms: ms(c.ejection.base()),
            max_ejection_ms: ms(c.ejection.max()),
            max_ejected_percent: c.max_ejected_percent.map_or(0, Percent::get),
            max_concurrent_requests: count(c.max_concurrent_requests),
            max_pending_requests: count(c.max_pending_requests),
        }
    }
}

impl From<&Hedge> for pb::HedgePolicy {
    fn from(h: &Hedge) -> Self {
        pb::HedgePolicy {
            grpc_methods: h.grpc_methods().iter().map(|m| m.to_string()).collect(),
            delay_ms: ms(h.delay),
        }
    }
}

impl From<&Faults> for pb::FaultPolicy {
    fn from(f: &Faults) -> Self {
        let (delay_percent, delay_ms) = f
            .delay
            .map_or((0, 0), |d| (d.percent.get(), ms(Some(d.duration))));
        let abort = f.abort;
        pb::FaultPolicy {
            delay_percent,
            delay_ms,
            abort_percent: abort.map_or(0, |a| a.percent.get()),
            abort_grpc_status: abort
                .and_then(|a| a.grpc_status)
                .map_or(0, |c| u32::from(c.as_u16())),
            abort_http_status: abort
                .and_then(|a| a.http_status)
                .map_or(0, |s| u32::from(s.get())),
        }
    }
}

/// Checks the resilience fields of a pushed or stored `ServiceSpec`.
pub(super) fn resilience_from_proto(p: &pb::ServiceSpec) -> Result<Resilience, Problems> {
    let mut errors = Problems::new();
    let resilience = Resilience {
        retry: p
            .retry
            .as_ref()
            .and_then(|r| retry(r, "retries", &mut errors)),
        timeouts: p.timeouts.map(|t| Timeouts {
            request: from_ms(t.request_ms),
            idle: from_ms(t.idle_ms),
        }),
        circuit_breaker: p.circuit_breaker.and_then(|c| breaker(&c, &mut errors)),
        hedge: p.hedge.as_ref().and_then(|h| hedge(h, &mut errors)),
        fault: p.fault.and_then(|f| faults(&f, "faults", &mut errors)),
    };
    if errors.is_empty() {
        Ok(resilience)
    } else {
        Err(errors)
    }
}

/// Records an error at `path`.
fn report<'a>(errors: &'a mut Problems, path: &str) -> impl FnOnce(ResilienceError) + 'a {
    let path = path.to_string();
    move |e| errors.push((path, e))
}

/// A retry policy; problems are reported under `at` (`retries`, or a
/// route rule's `retry`).
pub(super) fn retry(p: &pb::RetryPolicy, at: &str, errors: &mut Problems) -> Option<Retry> {
    let before = errors.len();
    let attempts = match p.attempts {
        0 => None,
        n => Attempts::new(n)
            .map_err(report(errors, &format!("{at}.attempts")))
            .ok(),
    };
    let on = parse_conditions(&p.on)
        .map_err(|es| {
            errors.extend(es.into_iter().map(|(i, e)| (format!("{at}.on[{i}]"), e)));
        })
        .unwrap_or_default();
    let ratio = Ratio::new(p.budget_ratio)
        .map_err(report(errors, &format!("{at}.budget.ratio")))
        .unwrap_or_default();
    let backoff = Backoff::retries(from_ms(p.backoff_base_ms), from_ms(p.backoff_max_ms))
        .map_err(report(errors, &format!("{at}.backoff")))
        .unwrap_or_default();
    let retry = Retry {
        attempts,
        on,
        per_try_timeout: from_ms(p.per_try_timeout_ms),
        backoff,
        budget: Budget {
            ratio,
            min_per_second: NonZeroU32::new(p.budget_min_per_second),
        },
        non_idempotent: p.non_idempotent,
        max_replay_bytes: NonZeroU32::new(p.max_replay_bytes),
    };
    (errors.len() == before).then_some(retry)
}

fn breaker(p: &pb::CircuitBreakerPolicy, errors: &mut Problems) -> Option<CircuitBreaker> {
    let before = errors.len();
    let max_ejected_percent = Percent::max_ejected(p.max_ejected_percent)
        .map_err(report(errors, "circuitBreaker.maxEjectedPercent"))
        .unwrap_or_default();
    let ejection = Backoff::ejection(from_ms(p.base_ejection_ms), from_ms(p.max_ejection_ms))
        .map_err(report(errors, "circuitBreaker"))
        .unwrap_or_default();
    let breaker = CircuitBreaker {
        consecutive_failures: NonZeroU32::new(p.consecutive_failures),
        ejection,
        max_ejected_percent,
        max_concurrent_requests: NonZeroU32::new(p.max_concurrent_requests),
        max_pending_requests: NonZeroU32::new(p.max_pending_requests),
    };
    (errors.len() == before).then_some(breaker)
}

fn hedge(p: &pb::HedgePolicy, errors: &mut Problems) -> Option<Hedge> {
    let methods = parse_each(&p.grpc_methods, |m| MethodPattern::parse(m))
        .map_err(|es| {
            errors.extend(
                es.into_iter()
                    .map(|(i, e)| (format!("hedging.grpcMethods[{i}]"), e.into())),
            );
        })
        .ok()?;
    Hedge::new(methods, from_ms(p.delay_ms))
        .map_err(report(errors, "hedging.grpcMethods"))
        .ok()
}

/// Fault injection; problems are reported under `at` (`faults`, or a
/// route rule's `fault`).
pub(super) fn faults(p: &pb::FaultPolicy, at: &str, errors: &mut Problems) -> Option<Faults> {
    let before = errors.len();
    // A percentage without a duration was accepted before there were
    // types (a stored one must still load): it delays by nothing.
    let delay = (p.delay_percent != 0 || p.delay_ms != 0)
        .then(|| {
            Percent::new(p.delay_percent)
                .map_err(report(errors, &format!("{at}.delay.percent")))
                .ok()
        })
        .flatten()
        .map(|percent| FaultDelay {
            percent,
            duration: Duration::from_millis(p.delay_ms),
        });
    let abort = FaultAbort::from_numbers(p.abort_percent, p.abort_grpc_status, p.abort_http_status)
        .map_err(|es| {
            errors.extend(
                es.into_iter()
                    .map(|(field, e)| (format!("{at}.abort.{field}"), e)),
            );
        })
        .ok()
        .flatten();
    (errors.len() == before).then_some(Faults { delay, abort })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages only another client (or an older control plane's store)
    /// sends: `weftctl` never writes them, but they were accepted before
    /// the settings had types, so they must still load.
    #[test]
    fn messages_accepted_before_still_load() {
        let p = pb::ServiceSpec {
            name: "a".into(),
            retry: Some(pb::RetryPolicy {
                on: vec!["reset".into(), "unavailable".into(), "reset".into()],
                ..Default::default()
            }),
            fault: Some(pb::FaultPolicy {
                delay_percent: 10,
                delay_ms: 0,
                abort_percent: 100,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = resilience_from_proto(&p).expect("valid");
        let on = r.retry.and_then(|r| r.on).expect("conditions");
        assert_eq!(
            on.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            ["unavailable", "reset"]
        );
        let f = r.fault.expect("faults");
        assert_eq!(
            f.delay.map(|d| (d.percent.get(), d.duration)),
            Some((10, Duration::ZERO))
        );
        assert_eq!(f.abort.map(|a| a.percent.get()), Some(100));
        assert_eq!(pb::FaultPolicy::from(&f), p.fault.expect("set"));
    }

    #[test]
    fn bad_messages_name_the_yaml_fields() {
        let p = pb::ServiceSpec {
            retry: Some(pb::RetryPolicy {
                attempts: 11,
                on: vec!["never".into()],
                backoff_base_ms: 2,
                backoff_max_ms: 1,
                budget_ratio: f64::NAN,
                ..Default::default()
            }),
            circuit_breaker: Some(pb::CircuitBreakerPolicy {
                max_ejected_percent: 101,
                base_ejection_ms: 2,
                max_ejection_ms: 1,
                ..Default::default()
            }),
            hedge: Some(pb::HedgePolicy::default()),
            fault: Some(pb::FaultPolicy {
                delay_percent: 101,
                abort_grpc_status: 17,
                abort_http_status: 302,
                ..Default::default()
            }),
            ..Default::default()
        };
        let errors = resilience_from_proto(&p).expect_err("invalid");
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "retries.attempts",
                "retries.on[0]",
                "retries.budget.ratio",
                "retries.backoff",
                "circuitBreaker.maxEjectedPercent",
                "circuitBreaker",
                "hedging.grpcMethods",
                "faults.delay.percent",
                "faults.abort.grpcStatus",
                "faults.abort.httpStatus",
            ]
        );
        assert_eq!(errors[0].1.to_string(), "at most 10 tries");
        assert_eq!(
            errors[5].1.to_string(),
            "baseEjection must not exceed maxEjection"
        );
    }

    #[test]
    fn durations_too_long_for_the_wire_saturate() {
        let t = Timeouts {
            request: Some(Duration::from_secs(u64::MAX)),
            idle: None,
        };
        assert_eq!(pb::TimeoutPolicy::from(&t).request_ms, u64::MAX);
        assert_eq!(pb::TimeoutPolicy::from(&t).idle_ms, 0);
    }
}
