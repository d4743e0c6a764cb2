//! Step 2: the plan of one request, decided before its first attempt from
//! the route's policy and what the request is — a pure function of both.
//! When it must be answered by, how many attempts it may take, each
//! attempt's time limit, whether a second copy is hedged and when, and
//! whether its body is kept for another attempt.

use std::time::Duration;

use http::{HeaderValue, Method};
use tokio::time::Instant;

use super::route::RoutePolicy;
use crate::model::policy::TryTimeout;
use weft_proto::deadline;

/// The hedge delay of a service without enough samples for a p95.
pub const DEFAULT_HEDGE_DELAY: Duration = Duration::from_millis(50);

/// What the plan reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub grpc: bool,
    pub method: &'a Method,
    pub path: &'a str,
    /// The caller's `grpc-timeout`.
    pub caller_timeout: Option<Duration>,
    /// The route copies the request to a mirror (so its body is kept).
    pub mirrored: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// When the whole request must be answered: the route's timeout or the
    /// caller's deadline, whichever is sooner.
    pub deadline: Option<Instant>,
    /// Attempts in all, the first included (1: never retried).
    pub attempts: u32,
    /// Each attempt's own limit.
    pub per_try: Option<TryTimeout>,
    /// Send a second copy to another endpoint after this long.
    pub hedge_after: Option<Duration>,
    /// Keep up to this many bytes of the body for another attempt.
    pub replay_limit: Option<usize>,
}

/// The deadline has passed: no attempt can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlinePassed;

impl Plan {
    /// `p95` is asked only when hedging needs it (it reads the service's
    /// latency histogram).
    pub fn new(
        policy: &RoutePolicy,
        req: &Facts<'_>,
        now: Instant,
        p95: impl FnOnce() -> Option<Duration>,
    ) -> Self {
        let total = earliest(policy.timeouts.request, req.caller_timeout);
        let retry = &policy.retry;
        let may_retry =
            retry.attempts > 1 && (req.grpc || idempotent(req.method) || retry.non_idempotent);
        // Hedging: gRPC methods the route marks hedgeable (idempotent by
        // the user's word), after the configured delay or the observed p95.
        let hedge_after = policy
            .hedge
            .as_ref()
            .filter(|h| req.grpc && h.methods.iter().any(|m| m.matches(req.path)))
            .map(|h| h.delay.or_else(p95).unwrap_or(DEFAULT_HEDGE_DELAY));
        Plan {
            deadline: total.map(|t| now + t),
            attempts: if may_retry { retry.attempts } else { 1 },
            per_try: retry.per_try_timeout.clone(),
            hedge_after,
            replay_limit: (may_retry || hedge_after.is_some() || req.mirrored)
                .then_some(retry.max_replay_bytes),
        }
    }

    /// The time limit of an attempt starting `now`: its own limit or what
    /// is left of the deadline, whichever is sooner.
    pub fn try_limit(&self, now: Instant) -> Result<Option<Duration>, DeadlinePassed> {
        let left = self.deadline.map(|d| d.saturating_duration_since(now));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(DeadlinePassed);
        }
        Ok(earliest(self.per_try.as_ref().map(TryTimeout::limit), left))
    }

    /// The `grpc-timeout` of an attempt with `limit` (from
    /// [`Plan::try_limit`]). What is left of a deadline differs on every
    /// call, so it is marked for HPACK never to index: in the connection's
    /// dynamic tables each value would be searched, inserted, and push out
    /// the headers that do repeat. A per-try limit alone is the same value
    /// every time, which HPACK sends as one byte once indexed, and is
    /// formatted once, with the policy.
    pub fn timeout_header(&self, limit: Duration) -> HeaderValue {
        if let Some(t) = self.per_try.as_ref().filter(|t| t.limit() == limit) {
            return t.header().clone();
        }
        let mut v = deadline::format(limit);
        v.set_sensitive(true);
        v
    }

    /// Whether attempt `n` (from 1) is the last one that can be made, so
    /// that its request need not be kept.
    pub fn is_last(&self, n: u32) -> bool {
        n >= self.attempts && !(n == 1 && self.hedge_after.is_some())
    }
}

fn earliest(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// RFC 9110 §9.2.2: methods whose repetition has the same effect. gRPC
/// calls are POSTs but are retried only on conditions that mean the server
/// did not process them (or when the user says so).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::policy::{HedgePolicy, Resilience, RetryPolicy, Timeouts};
    use weft_proto::pattern::MethodPattern;

    fn policy() -> RoutePolicy {
        RoutePolicy::of_service(&Resilience::default())
    }

    fn facts<'a>(grpc: bool, method: &'a Method) -> Facts<'a> {
        Facts {
            grpc,
            method,
            path: "/echo.Echo/Unary",
            caller_timeout: None,
            mirrored: false,
        }
    }

    fn no_p95() -> Option<Duration> {
        None
    }

    #[tokio::test(start_paused = true)]
    async fn the_sooner_deadline_wins_and_limits_each_try() {
        let now = Instant::now();
        let mut p = policy();
        p.timeouts = Timeouts {
            request: Some(Duration::from_secs(5)),
            ..Timeouts::default()
        };
        p.retry.per_try_timeout = Some(TryTimeout::new(Duration::from_secs(1)));
        let mut f = facts(true, &Method::POST);
        f.caller_timeout = Some(Duration::from_secs(2));
        let plan = Plan::new(&p, &f, now, no_p95);
        assert_eq!(plan.deadline, Some(now + Duration::from_secs(2)));
        assert_eq!(plan.try_limit(now), Ok(Some(Duration::from_secs(1))));
        let late = now + Duration::from_millis(1500);
        assert_eq!(plan.try_limit(late), Ok(Some(Duration::from_millis(500))));
        assert_eq!(
            plan.try_limit(now + Duration::from_secs(2)),
            Err(DeadlinePassed)
        );
        // No limits at all: none per try either.
        let plan = Plan::new(&policy(), &facts(true, &Method::POST), now, no_p95);
        assert_eq!((plan.deadline, plan.try_limit(now)), (None, Ok(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn only_what_is_left_of_a_deadline_is_kept_out_of_hpack_tables() {
        let now = Instant::now();
        let mut p = policy();
        p.retry.per_try_timeout = Some(TryTimeout::new(Duration::from_secs(1)));
        let mut f = facts(true, &Method::POST);
        f.caller_timeout = Some(Duration::from_secs(2));
        let plan = Plan::new(&p, &f, now, no_p95);
        let per_try = plan.try_limit(now).expect("time").expect("limit");
        let v = plan.timeout_header(per_try);
        assert_eq!(
            (v.to_str().ok(), v.is_sensitive()),
            (Some("1000000u"), false)
        );
        let late = now + Duration::from_millis(1500);
        let left = plan.try_limit(late).expect("time").expect("limit");
        let v = plan.timeout_header(left);
        assert_eq!((v.to_str().ok(), v.is_sensitive()), (Some("500000u"), true));
    }

    #[tokio::test(start_paused = true)]
    async fn only_what_may_be_repeated_is_retried() {
        let now = Instant::now();
        let p = policy();
        let grpc = Plan::new(&p, &facts(true, &Method::POST), now, no_p95);
        assert_eq!((grpc.attempts, grpc.replay_limit), (3, Some(64 * 1024)));
        let get = Plan::new(&p, &facts(false, &Method::GET), now, no_p95);
        assert_eq!(get.attempts, 3);
        let post = Plan::new(&p, &facts(false, &Method::POST), now, no_p95);
        assert_eq!((post.attempts, post.replay_limit), (1, None));
        assert!(post.is_last(1));
        let mut p = policy();
        p.retry.non_idempotent = true;
        let post = Plan::new(&p, &facts(false, &Method::POST), now, no_p95);
        assert_eq!(post.attempts, 3);
        assert!(!post.is_last(2) && post.is_last(3));
        p.retry = RetryPolicy {
            attempts: 1,
            ..RetryPolicy::default()
        };
        let one = Plan::new(&p, &facts(true, &Method::POST), now, no_p95);
        assert_eq!((one.attempts, one.replay_limit), (1, None));
    }

    #[tokio::test(start_paused = true)]
    async fn hedging_only_for_listed_grpc_methods_after_the_delay_or_p95() {
        let now = Instant::now();
        let mut p = policy();
        p.retry.attempts = 1;
        p.hedge = Some(HedgePolicy {
            methods: vec![MethodPattern::parse("/echo.Echo/*").expect("pattern")],
            delay: None,
        });
        let p95 = || Some(Duration::from_millis(7));
        let plan = Plan::new(&p, &facts(true, &Method::POST), now, p95);
        assert_eq!(plan.hedge_after, Some(Duration::from_millis(7)));
        assert_eq!(
            plan.replay_limit,
            Some(64 * 1024),
            "the copy needs the body"
        );
        assert!(!plan.is_last(1), "a hedge needs the request again");
        let plan = Plan::new(&p, &facts(true, &Method::POST), now, no_p95);
        assert_eq!(plan.hedge_after, Some(DEFAULT_HEDGE_DELAY));
        let mut f = facts(true, &Method::POST);
        f.path = "/other.Other/Call";
        assert_eq!(Plan::new(&p, &f, now, p95).hedge_after, None);
        let http = Plan::new(&p, &facts(false, &Method::GET), now, p95);
        assert_eq!(http.hedge_after, None, "HTTP is not hedged");
    }
}
