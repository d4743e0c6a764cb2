//! Step 4: attempts until one answer stands. After each attempt a pure
//! decision ([`qualifies`], then [`next`]): another attempt when the failure
//! matches the route's conditions, an attempt is left, the retry budget has
//! room and the backoff still fits before the deadline; otherwise the last
//! answer stands. The first attempt of a hedgeable call races a second copy
//! after the plan's delay.
//!
//! Every attempt's endpoint is told how it went exactly once: an attempt
//! given up on, when that is decided; the attempt whose answer goes to the
//! caller, when its response ends (`proxy::response`), or at once if it
//! failed without one.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use weft_proto::grpc::GrpcCode;
use weft_proto::retry::{RetryCondition, RetryConditions};

use super::attempt::{self, Answer, Attempt, Bodies, Conditions, Template};
use super::plan::Plan;
use super::route::Route;
use crate::backoff::Backoff;
use crate::error::{ProxyError, Transport};
use crate::proxy::exchange::Exchange;
use crate::proxy::outcome::Outcome;
use crate::resilience::hedge;
use crate::telemetry::Telemetry;

/// Why an attempt is worth another: the `reason` label of retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    Status(GrpcCode),
    HttpStatus,
    Transport(Transport),
}

impl RetryReason {
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::Status(code) => {
                RetryCondition::for_grpc(code).map_or("grpc-status", RetryCondition::as_str)
            }
            RetryReason::HttpStatus => "http-status",
            RetryReason::Transport(t) => t.name(),
        }
    }
}

/// Whether the way an attempt ended matches the route's conditions.
pub fn qualifies(on: &RetryConditions, grpc: bool, attempt: &Attempt) -> Option<RetryReason> {
    match &attempt.answer {
        Answer::Failed(e) => {
            let t = e.kind().transport()?;
            let allowed = match t {
                Transport::ConnectFailure => on.contains(RetryCondition::ConnectFailure),
                Transport::RefusedStream => on.contains(RetryCondition::RefusedStream),
                Transport::Reset => on.contains(RetryCondition::Reset),
                // The user set the per-try limit to have tries retried.
                Transport::PerTryTimeout => true,
            };
            allowed.then_some(RetryReason::Transport(t))
        }
        Answer::Response { .. } => answered(on, grpc, &attempt.outcome),
    }
}

fn answered(on: &RetryConditions, grpc: bool, o: &Outcome) -> Option<RetryReason> {
    if grpc {
        let code = o.grpc?;
        return on.grpc(code).then_some(RetryReason::Status(code));
    }
    on.http(o.status.as_u16())
        .then_some(RetryReason::HttpStatus)
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Retry(RetryReason, Duration),
    Answer(Because),
}

/// Why an answer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Because {
    /// Not worth another attempt, or none is left.
    Final,
    /// Worth one, but the retry budget is spent.
    BudgetSpent,
    /// Worth one, but the backoff would end past the deadline.
    NoTimeLeft,
}

/// The decision after an attempt. `budget` withdraws a retry (asked only
/// when one is wanted); `pause` draws the backoff.
pub fn next(
    reason: Option<RetryReason>,
    more: bool,
    budget: impl FnOnce() -> bool,
    pause: impl FnOnce() -> Duration,
    now: Instant,
    deadline: Option<Instant>,
) -> Next {
    let Some(reason) = reason.filter(|_| more) else {
        return Next::Answer(Because::Final);
    };
    if !budget() {
        return Next::Answer(Because::BudgetSpent);
    }
    let pause = pause();
    if deadline.is_some_and(|d| now + pause >= d) {
        return Next::Answer(Because::NoTimeLeft);
    }
    Next::Retry(reason, pause)
}

/// One request on its way out: what every attempt needs.
pub struct Call<'a> {
    pub route: Route,
    pub plan: Plan,
    pub grpc: bool,
    pub template: Template,
    pub bodies: Bodies,
    pub telemetry: &'a Telemetry,
}

/// The attempt whose answer goes to the caller.
pub struct Settled {
    pub attempt: Attempt,
    /// Its endpoint learns how it went when the response ends (else it
    /// was told already).
    pub report_at_end: bool,
}

/// Makes attempts until an answer stands.
pub async fn run(call: &mut Call<'_>, ex: &mut Exchange) -> Result<Settled, ProxyError> {
    let policy = call.route.policy.clone();
    let retry = &policy.retry;
    let mut backoff = Backoff::new(retry.backoff_base, retry.backoff_max);
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last = None;
    for n in 1..=call.plan.attempts {
        let Some(body) = call.bodies.next() else {
            break; // outgrew the replay buffer: the last answer stands
        };
        let attempt = one(call, n, body, &mut tried, ex).await?;
        let reason = qualifies(&retry.on, call.grpc, &attempt);
        let budget = &attempt.target.runtime.budget;
        let now = Instant::now();
        let decision = next(
            reason,
            n < call.plan.attempts,
            || budget.try_withdraw(now),
            || backoff.next_delay(),
            now,
            call.plan.deadline,
        );
        let pause = match decision {
            Next::Answer(because) => return Ok(settle(call, attempt, because, ex)),
            Next::Retry(reason, pause) => {
                let addr = &attempt.pick.endpoint.spec.addr;
                if !tried.contains(addr) {
                    tried.push(addr.clone());
                }
                report(&attempt);
                let m = &call.telemetry.metrics;
                m.count_retry(&call.route.service, reason.label());
                pause
            }
        };
        last = Some(attempt);
        tokio::time::sleep(pause).await;
    }
    match last {
        Some(attempt) => Ok(Settled {
            attempt,
            report_at_end: false,
        }),
        None => Err(ProxyError::NoEndpoints(call.route.service.to_string())),
    }
}

/// Attempt `n`: an endpoint not tried yet when there is one, the time
/// left, and the race with a hedged copy when the plan says so.
async fn one(
    call: &mut Call<'_>,
    n: u32,
    body: crate::body::BoxBody,
    tried: &mut Vec<Arc<str>>,
    ex: &mut Exchange,
) -> Result<Attempt, ProxyError> {
    let service = &call.route.service;
    let Some((target, pick)) = call.route.pick(tried, &call.telemetry.metrics) else {
        return Err(ProxyError::NoEndpoints(service.to_string()));
    };
    let limit = call
        .plan
        .try_limit(Instant::now())
        .map_err(|_| ProxyError::DeadlineExceeded(service.to_string()))?;
    let last = call.plan.is_last(n);
    let first_addr = pick.endpoint.spec.addr.clone();
    ex.attempt(&first_addr, Some(&target.name));
    let grpc = call.grpc;
    let plan = &call.plan;
    // Written for each request sent (a hedge too), not cloned: a clone of
    // a header value built from bytes allocates.
    let timeout = || limit.filter(|_| grpc).map(|t| plan.timeout_header(t));
    let req = call.template.request(body, timeout(), last);
    let how = Conditions {
        grpc: call.grpc,
        limit,
        more: n < call.plan.attempts,
        replay: call.bodies.replay(),
        telemetry: call.telemetry,
    };
    let first = attempt::send(target, pick, req, &how);
    let Some(delay) = call.plan.hedge_after.filter(|_| n == 1) else {
        // Noted as tried only when a retry follows (`run`): most calls
        // end at their first attempt, and the list would allocate.
        return Ok(first.await);
    };
    // The hedge goes elsewhere.
    tried.push(first_addr.clone());
    let second = || {
        // Only a request the caller has sent whole, to another endpoint,
        // within the retry budget.
        let replay = how.replay.filter(|r| r.finished())?;
        let (target, other) = call.route.pick(tried, &call.telemetry.metrics)?;
        if other.endpoint.spec.addr == first_addr
            || !target.runtime.budget.try_withdraw(Instant::now())
        {
            return None;
        }
        let body = crate::body::boxed(replay.body()?);
        call.telemetry.metrics.count_hedge(&target.name);
        let req = call.template.request(body, timeout(), false);
        Some(attempt::send(target, other, req, &how))
    };
    // Boxed: the race holds two attempts and a timer, and would otherwise
    // triple the size of every request's future, hedged or not (7 KB).
    let (winner, _) = Box::pin(hedge::race(first, delay, second)).await;
    // The attempt that answered is the one reported (and not retried to).
    if winner.pick.endpoint.spec.addr != first_addr {
        tried.push(winner.pick.endpoint.spec.addr.clone());
        ex.attempt(&winner.pick.endpoint.spec.addr, Some(&winner.target.name));
    }
    Ok(winner)
}

/// The answer stands; whose report is due when.
fn settle(call: &Call<'_>, attempt: Attempt, because: Because, ex: &Exchange) -> Settled {
    let answered = matches!(attempt.answer, Answer::Response { .. });
    match because {
        Because::Final if answered => {
            return Settled {
                attempt,
                report_at_end: true,
            };
        }
        Because::BudgetSpent => {
            call.telemetry
                .metrics
                .count_retry_budget_spent(&call.route.service);
            if tracing::enabled!(tracing::Level::DEBUG) {
                let (trace_id, span_id) = ex.log_ids().unzip();
                tracing::debug!(service = %call.route.service, trace_id, span_id, "retry budget spent; not retrying");
            }
        }
        _ => {}
    }
    report(&attempt);
    Settled {
        attempt,
        report_at_end: false,
    }
}

/// Tells the attempt's endpoint how it went, from what is known now.
fn report(a: &Attempt) {
    a.target.report(&a.pick, !a.outcome.is_endpoint_failure());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn reasons_are_labelled_as_before() {
        assert_eq!(
            RetryReason::Status(GrpcCode::Unavailable).label(),
            "unavailable"
        );
        assert_eq!(
            RetryReason::Status(GrpcCode::Aborted).label(),
            "grpc-status"
        );
        assert_eq!(RetryReason::HttpStatus.label(), "http-status");
        assert_eq!(
            RetryReason::Transport(Transport::RefusedStream).label(),
            "refused-stream"
        );
    }

    #[test]
    fn outcomes_qualify_by_the_conditions() {
        let on = RetryConditions::defaults();
        let grpc = |code| Outcome {
            grpc: Some(code),
            ..Outcome::from_headers(http::StatusCode::OK, &http::HeaderMap::new())
        };
        assert_eq!(
            answered(&on, true, &grpc(GrpcCode::Unavailable)),
            Some(RetryReason::Status(GrpcCode::Unavailable))
        );
        assert_eq!(answered(&on, true, &grpc(GrpcCode::Internal)), None);
        let none = Outcome::from_headers(http::StatusCode::OK, &http::HeaderMap::new());
        assert_eq!(answered(&on, true, &none), None, "no status yet: committed");
        let http = |s| {
            Outcome::from_headers(
                http::StatusCode::from_u16(s).expect("s"),
                &http::HeaderMap::new(),
            )
        };
        assert_eq!(
            answered(&on, false, &http(503)),
            Some(RetryReason::HttpStatus)
        );
        assert_eq!(
            answered(&on, false, &http(500)),
            None,
            "5xx is not a default"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_only_with_a_reason_a_try_the_budget_and_the_time() {
        let now = Instant::now();
        let why = Some(RetryReason::HttpStatus);
        let yes = || true;
        let no = || false;
        let p = || t(10);
        assert_eq!(
            next(why, true, yes, p, now, None),
            Next::Retry(RetryReason::HttpStatus, t(10))
        );
        assert_eq!(
            next(None, true, yes, p, now, None),
            Next::Answer(Because::Final)
        );
        assert_eq!(
            next(why, false, yes, p, now, None),
            Next::Answer(Because::Final)
        );
        assert_eq!(
            next(why, true, no, p, now, None),
            Next::Answer(Because::BudgetSpent)
        );
        assert_eq!(
            next(why, true, yes, p, now, Some(now + t(10))),
            Next::Answer(Because::NoTimeLeft),
            "the backoff would end at the deadline"
        );
        assert_eq!(
            next(why, true, yes, p, now, Some(now + t(11))),
            Next::Retry(RetryReason::HttpStatus, t(10))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_is_asked_only_for_a_wanted_retry() {
        let now = Instant::now();
        let mut asked = false;
        let budget = || {
            asked = true;
            true
        };
        next(None, true, budget, || t(1), now, None);
        assert!(!asked);
    }
}
