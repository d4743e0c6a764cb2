//! A `Service`'s resilience settings as users write them under `spec`
//! (see `resource::resilience` for the schema), parsed into the validated
//! settings; every problem is reported under its `spec.…` path. A route
//! rule's `retry` and `fault` are the same fields, parsed here too.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::Deserialize;
use weft_proto::duration::parse_duration;
use weft_proto::pattern::MethodPattern;

use super::DocErrors;
use crate::resource::parse_each;
use crate::resource::resilience::{
    Attempts, Backoff, Budget, CircuitBreaker, FaultAbort, FaultDelay, Faults, Hedge, Percent,
    Ratio, Resilience, Retry, Timeouts, parse_conditions,
};

/// The resilience fields of a `Service`'s `spec`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawResilience {
    pub retries: Option<RawRetries>,
    pub timeouts: Option<RawTimeouts>,
    pub circuit_breaker: Option<RawBreaker>,
    pub hedging: Option<RawHedge>,
    pub faults: Option<RawFaults>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRetries {
    attempts: Option<u32>,
    #[serde(default)]
    on: Vec<String>,
    per_try_timeout: Option<String>,
    backoff: Option<RawBackoff>,
    budget: Option<RawBudget>,
    #[serde(default)]
    non_idempotent: bool,
    max_replay_bytes: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    base: Option<String>,
    max: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBudget {
    ratio: Option<f64>,
    min_per_second: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    request: Option<String>,
    idle: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBreaker {
    consecutive_failures: Option<u32>,
    base_ejection: Option<String>,
    max_ejection: Option<String>,
    max_ejected_percent: Option<u32>,
    max_concurrent_requests: Option<u32>,
    max_pending_requests: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHedge {
    grpc_methods: Vec<String>,
    delay: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFaults {
    delay: Option<RawDelay>,
    abort: Option<RawAbort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelay {
    percent: u32,
    duration: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAbort {
    percent: u32,
    grpc_status: Option<u32>,
    http_status: Option<u32>,
}

impl RawResilience {
    /// The settings, or `None` with every problem pushed to `errs`.
    pub(super) fn parse(self, errs: &mut DocErrors<'_>) -> Option<Resilience> {
        let before = errs.count();
        let resilience = Resilience {
            retry: self.retries.and_then(|r| r.parse("spec.retries", errs)),
            timeouts: self.timeouts.map(|t| t.parse(errs)),
            circuit_breaker: self.circuit_breaker.and_then(|c| c.parse(errs)),
            hedge: self.hedging.and_then(|h| h.parse(errs)),
            fault: self.faults.and_then(|f| f.parse("spec.faults", errs)),
        };
        (errs.count() == before).then_some(resilience)
    }
}

/// An optional duration: unset is `None`; zero is refused, because on the
/// wire it would mean unset.
pub(super) fn duration(
    text: Option<&str>,
    path: &str,
    errs: &mut DocErrors<'_>,
) -> Option<Duration> {
    match parse_duration(text?) {
        Ok(d) if d.is_zero() => {
            errs.push(path, "must be more than 0");
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            errs.push(path, e);
            None
        }
    }
}

impl RawRetries {
    /// The settings, each problem reported under `at` (`spec.retries`, or
    /// a route rule's `retry`).
    pub(super) fn parse(self, at: &str, errs: &mut DocErrors<'_>) -> Option<Retry> {
        let before = errs.count();
        let attempts = self.attempts.and_then(|n| {
            Attempts::new(n)
                .map_err(|e| errs.push(format!("{at}.attempts"), e))
                .ok()
        });
        let on = parse_conditions(&self.on)
            .map_err(|es| {
                for (i, e) in es {
                    errs.push(format!("{at}.on[{i}]"), e);
                }
            })
            .unwrap_or_default();
        let per_try_timeout = duration(
            self.per_try_timeout.as_deref(),
            &format!("{at}.perTryTimeout"),
            errs,
        );
        let (base, max) = match &self.backoff {
            Some(b) => (
                duration(b.base.as_deref(), &format!("{at}.backoff.base"), errs),
                duration(b.max.as_deref(), &format!("{at}.backoff.max"), errs),
            ),
            None => (None, None),
        };
        let backoff = Backoff::retries(base, max)
            .map_err(|e| errs.push(format!("{at}.backoff"), e))
            .unwrap_or_default();
        let budget = self.budget.unwrap_or(RawBudget {
            ratio: None,
            min_per_second: None,
        });
        let ratio = Ratio::new(budget.ratio.unwrap_or(0.0))
            .map_err(|e| errs.push(format!("{at}.budget.ratio"), e))
            .unwrap_or_default();
        let retry = Retry {
            attempts,
            on,
            per_try_timeout,
            backoff,
            budget: Budget {
                ratio,
                min_per_second: NonZeroU32::new(budget.min_per_second.unwrap_or(0)),
            },
            non_idempotent: self.non_idempotent,
            max_replay_bytes: NonZeroU32::new(self.max_replay_bytes.unwrap_or(0)),
        };
        (errs.count() == before).then_some(retry)
    }
}

impl RawTimeouts {
    fn parse(self, errs: &mut DocErrors<'_>) -> Timeouts {
        Timeouts {
            request: duration(self.request.as_deref(), "spec.timeouts.request", errs),
            idle: duration(self.idle.as_deref(), "spec.timeouts.idle", errs),
        }
    }
}

impl RawBreaker {
    fn parse(self, errs: &mut DocErrors<'_>) -> Option<CircuitBreaker> {
        let before = errs.count();
        let base = duration(
            self.base_ejection.as_deref(),
            "spec.circuitBreaker.baseEjection",
            errs,
        );
        let max = duration(
            self.max_ejection.as_deref(),
            "spec.circuitBreaker.maxEjection",
            errs,
        );
        let max_ejected_percent = Percent::max_ejected(self.max_ejected_percent.unwrap_or(0))
            .map_err(|e| errs.push("spec.circuitBreaker.maxEjectedPercent", e))
            .unwrap_or_default();
        let ejection = Backoff::ejection(base, max)
            .map_err(|e| errs.push("spec.circuitBreaker", e))
            .unwrap_or_default();
        let breaker = CircuitBreaker {
            consecutive_failures: NonZeroU32::new(self.consecutive_failures.unwrap_or(0)),
            ejection,
            max_ejected_percent,
            max_concurrent_requests: NonZeroU32::new(self.max_concurrent_requests.unwrap_or(0)),
            max_pending_requests: NonZeroU32::new(self.max_pending_requests.unwrap_or(0)),
        };
        (errs.count() == before).then_some(breaker)
    }
}

impl RawHedge {
    fn parse(self, errs: &mut DocErrors<'_>) -> Option<Hedge> {
        let before = errs.count();
        let delay = duration(self.delay.as_deref(), "spec.hedging.delay", errs);
        let methods = parse_each(&self.grpc_methods, |m| MethodPattern::parse(m))
            .map_err(|es| {
                for (i, e) in es {
                    errs.push(format!("spec.hedging.grpcMethods[{i}]"), e);
                }
            })
            .ok()?;
        let hedge = Hedge::new(methods, delay)
            .map_err(|e| errs.push("spec.hedging.grpcMethods", e))
            .ok()?;
        (errs.count() == before).then_some(hedge)
    }
}

impl RawFaults {
    /// The settings, each problem reported under `at` (`spec.faults`, or
    /// a route rule's `fault`).
    pub(super) fn parse(self, at: &str, errs: &mut DocErrors<'_>) -> Option<Faults> {
        let before = errs.count();
        let delay = self.delay.and_then(|d| {
            let duration = duration(Some(&d.duration), &format!("{at}.delay.duration"), errs);
            let percent = Percent::new(d.percent)
                .map_err(|e| errs.push(format!("{at}.delay.percent"), e))
                .ok();
            Some(FaultDelay {
                percent: percent?,
                duration: duration?,
            })
        });
        let abort = self.abort.and_then(|a| {
            FaultAbort::from_numbers(
                a.percent,
                a.grpc_status.unwrap_or(0),
                a.http_status.unwrap_or(0),
            )
            .map_err(|es| {
                for (field, e) in es {
                    errs.push(format!("{at}.abort.{field}"), e);
                }
            })
            .ok()
            .flatten()
        });
        (errs.count() == before).then_some(Faults { delay, abort })
    }
}
