//! Outbound: the local app's calls to other services. Find the service (by
//! the listener's upstream binding, or by Host / :authority), then per
//! request: fault injection, the deadline, the concurrency limit, and tries
//! (each to an endpoint picked by the balancer, skipping ejected ones and,
//! for a retry, the ones already tried) over the peers' pooled HTTP/2
//! connections, retried within the service's budget when the failure allows.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;
use weft_proto::grpc::GrpcCode;
use weft_proto::name::ServiceName;
use weft_proto::retry::RetryCondition;

use super::Proxy;
use super::classify::grpc_status;
use super::exchange::Exchange;
use super::headers::{HTTP11, ORIG_PROTO, host_of, is_grpc, strip_hop_by_hop};
use crate::body::{BoxBody, BoxError, boxed};
use crate::discovery::Backoff;
use crate::error::ProxyError;
use crate::metrics::{Direction, RetryLabels, ServiceLabels};
use crate::resilience::replay::Replay;
use crate::resilience::timed::{ActiveBody, Activity, TimedBody};
use crate::resilience::{FaultPolicy, deadline};
use crate::table::{Pick, Target};

/// The authority a request was sent to: the URI's (HTTP/2, absolute form) or
/// the Host header's (HTTP/1.1).
fn authority(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
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

/// Counts one request against a limit for as long as it lives.
struct Slot(Arc<Target>, SlotKind);

enum SlotKind {
    InFlight,
}

impl Drop for Slot {
    fn drop(&mut self) {
        match self.1 {
            SlotKind::InFlight => self
                .0
                .runtime
                .in_flight
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed),
        };
    }
}

/// The parts of the request every try is built from.
struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Template {
    fn request(&self, body: BoxBody, grpc_timeout: Option<Duration>) -> Request<BoxBody> {
        let mut r = Request::new(body);
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.version_mut() = Version::HTTP_2;
        *r.headers_mut() = self.headers.clone();
        if let Some(t) = grpc_timeout {
            // The upstream gets what is left, never more.
            r.headers_mut().insert("grpc-timeout", deadline::format(t));
        }
        r
    }
}

/// How one try ended.
enum Try {
    Response(Response<BoxBody>),
    Failed(ProxyError),
}

fn roll(percent: u32) -> bool {
    percent > 0 && crate::rand::below(100) < percent as usize
}

impl Proxy {
    /// Handles one request from the local app. `fixed` is the service of an
    /// upstream port; `None` routes by authority.
    pub async fn outbound(
        &self,
        mut req: Request<Incoming>,
        fixed: Option<&ServiceName>,
    ) -> Response<BoxBody> {
        let grpc = is_grpc(req.headers());
        let authority = authority(&req);
        let name = match (fixed, &authority) {
            (Some(s), _) => s.as_str().to_string(),
            (None, Some(a)) => host_of(a).to_string(),
            (None, None) => {
                let ex = Exchange::begin(
                    &self.telemetry,
                    Direction::outbound,
                    ServiceName::unresolved(),
                    &mut req,
                    grpc,
                );
                return ex.fail(
                    ProxyError::NoRoute(
                        "the request names no service (no Host or :authority)".into(),
                    ),
                    grpc,
                );
            }
        };
        let label = fixed
            .cloned()
            .or_else(|| ServiceName::parse(&name).ok())
            .unwrap_or_else(ServiceName::unresolved);
        let ex = Exchange::begin(&self.telemetry, Direction::outbound, label, &mut req, grpc);
        let target = match self.routes.resolve(&name, self.timeouts.discovery).await {
            Ok(t) => t,
            Err(e) => return ex.fail(e, grpc),
        };
        let res = &target.policy.resilience;
        if let Some(f) = &res.fault
            && let Some(e) = inject_fault(f, &name).await
        {
            return ex.fail(e, grpc);
        }
        // The deadline: the service's timeout or the caller's grpc-timeout,
        // whichever is sooner.
        let start = Instant::now();
        let caller_timeout = if grpc {
            req.headers().get("grpc-timeout").and_then(deadline::parse)
        } else {
            None
        };
        let total = match (res.timeouts.request, caller_timeout) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let deadline = total.map(|t| start + t);
        let rt = &target.runtime;
        let _slot = match res.limits.max_concurrent {
            Some(limit) => {
                if rt
                    .in_flight
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    >= limit
                {
                    rt.in_flight
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    self.telemetry
                        .metrics
                        .overloaded
                        .get_or_create(&ServiceLabels {
                            service: target.name.clone(),
                        })
                        .inc();
                    return ex.fail(
                        ProxyError::Overloaded {
                            service: name,
                            what: "concurrent requests",
                            limit,
                        },
                        grpc,
                    );
                }
                Some(Slot(target.clone(), SlotKind::InFlight))
            }
            None => None,
        };
        rt.budget.record_request(start);
        let (template, body) = match to_mesh_request(req, authority.as_deref(), &name) {
            Ok((t, b)) => (t, b),
            Err(e) => return ex.fail(e, grpc),
        };
        let activity = Activity::new();
        let body = boxed(ActiveBody::new(body, activity.clone()));
        self.tries(ex, target.clone(), template, body, grpc, deadline, activity)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn tries(
        &self,
        mut ex: Exchange,
        target: Arc<Target>,
        template: Template,
        body: BoxBody,
        grpc: bool,
        deadline: Option<Instant>,
        activity: Activity,
    ) -> Response<BoxBody> {
        let res = &target.policy.resilience;
        let retry = &res.retry;
        let may_retry =
            retry.attempts > 1 && (grpc || idempotent(&template.method) || retry.non_idempotent);
        // Hedging: gRPC methods the service marks hedgeable (idempotent by
        // the user's word), after the configured delay or the observed p95.
        let hedge_delay = match &res.hedge {
            Some(h) if grpc && h.methods.iter().any(|m| m.matches(template.uri.path())) => Some(
                h.delay
                    .or_else(|| target.runtime.latencies.p95(Instant::now()))
                    .unwrap_or(DEFAULT_HEDGE_DELAY),
            ),
            _ => None,
        };
        let (replay, mut once) = if may_retry || hedge_delay.is_some() {
            (Some(Replay::new(body, retry.max_replay_bytes)), None)
        } else {
            (None, Some(body))
        };
        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut backoff = Backoff::new(retry.backoff_base, retry.backoff_max);
        let mut last: Option<Try> = None;
        for attempt in 1..=retry.attempts.max(1) {
            let body = match (&replay, once.take()) {
                (_, Some(b)) => b,
                (Some(r), None) => match r.body() {
                    Some(b) => boxed(b),
                    None => break, // outgrew the replay buffer: the last answer stands
                },
                (None, None) => break,
            };
            let Some(pick) = target.pick_excluding(&tried) else {
                return ex.fail(ProxyError::NoEndpoints(target.name.to_string()), grpc);
            };
            tried.push(pick.endpoint.spec.addr.clone());
            ex.attempt(&pick.endpoint.spec.addr);
            let now = Instant::now();
            let left = deadline.map(|d| d.saturating_duration_since(now));
            if left.is_some_and(|l| l.is_zero()) {
                return ex.fail(ProxyError::DeadlineExceeded(target.name.to_string()), grpc);
            }
            let per_try = match (retry.per_try_timeout, left) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let more = attempt < retry.attempts && may_retry;
            let req = template.request(body, if grpc { per_try } else { None });
            let first = async {
                (
                    self.one_try(&target, &pick, req, grpc, per_try, more, replay.as_ref())
                        .await,
                    None,
                )
            };
            let (outcome, hedged_pick) = match (attempt, hedge_delay, &replay) {
                (1, Some(delay), Some(replay)) => {
                    let second = || {
                        // Only a request the caller has sent whole, to
                        // another endpoint, within the retry budget.
                        if !replay.finished() {
                            return None;
                        }
                        let other = target.pick_excluding(&tried)?;
                        if Arc::ptr_eq(&other.endpoint, &pick.endpoint)
                            || !target.runtime.budget.try_withdraw(Instant::now())
                        {
                            return None;
                        }
                        let body = boxed(replay.body()?);
                        self.telemetry
                            .metrics
                            .hedges
                            .get_or_create(&ServiceLabels {
                                service: target.name.clone(),
                            })
                            .inc();
                        let req = template.request(body, if grpc { per_try } else { None });
                        let (target, replay) = (&target, Some(replay));
                        Some(async move {
                            let o = self
                                .one_try(target, &other, req, grpc, per_try, more, replay)
                                .await;
                            (o, Some(other))
                        })
                    };
                    crate::resilience::hedge::race(first, delay, second).await.0
                }
                _ => first.await,
            };
            // The try that answered is the one reported (and not retried to).
            let pick = match hedged_pick {
                Some(p) => {
                    tried.push(p.endpoint.spec.addr.clone());
                    ex.attempt(&p.endpoint.spec.addr);
                    p
                }
                None => pick,
            };
            let (reason, endpoint_failed) = match &outcome {
                (Try::Failed(e), _) => (
                    e.retry_kind().or(match e {
                        ProxyError::PerTryTimeout { .. } => Some("per-try-timeout"),
                        _ => None,
                    }),
                    true,
                ),
                (Try::Response(r), class) => {
                    let failed = class.as_ref().is_some_and(|c| c.is_endpoint_failure());
                    let retryable = match class.as_ref().and_then(|c| c.grpc_status) {
                        Some(code) if grpc => retry
                            .on
                            .grpc(GrpcCode::lenient(code))
                            .then_some(grpc_reason(code)),
                        _ if !grpc => retry.on.http(r.status().as_u16()).then_some("http-status"),
                        _ => None,
                    };
                    (retryable, failed)
                }
            };
            let (result, class) = outcome;
            // Retry when the failure allows it, a try is left, the budget
            // has room, and the deadline leaves time for the backoff.
            let retryable = reason.is_some_and(|r| match r {
                "connect-failure" => retry.on.contains(RetryCondition::ConnectFailure),
                "refused-stream" => retry.on.contains(RetryCondition::RefusedStream),
                "reset" => retry.on.contains(RetryCondition::Reset),
                "per-try-timeout" => true,
                _ => true, // statuses were checked against the conditions above
            });
            if !(retryable && more) {
                if class.is_none() {
                    // Not a response the caller will read: the endpoint's
                    // part is reported now.
                    target.report(&pick, !endpoint_failed);
                }
                return self.finish(
                    ex,
                    result,
                    class.is_some().then_some((target.clone(), pick)),
                    grpc,
                    deadline,
                    activity,
                    res.timeouts.idle,
                );
            }
            target.report(&pick, !endpoint_failed);
            if !target.runtime.budget.try_withdraw(Instant::now()) {
                self.telemetry
                    .metrics
                    .retries_refused
                    .get_or_create(&ServiceLabels {
                        service: target.name.clone(),
                    })
                    .inc();
                if tracing::enabled!(tracing::Level::DEBUG) {
                    let (trace_id, span_id) = ex.log_ids().unzip();
                    tracing::debug!(service = %target.name, trace_id, span_id, "retry budget spent; not retrying");
                }
                return self.finish(
                    ex,
                    result,
                    None,
                    grpc,
                    deadline,
                    activity,
                    res.timeouts.idle,
                );
            }
            let pause = backoff.next_delay();
            if deadline.is_some_and(|d| Instant::now() + pause >= d) {
                return self.finish(
                    ex,
                    result,
                    None,
                    grpc,
                    deadline,
                    activity,
                    res.timeouts.idle,
                );
            }
            self.telemetry
                .metrics
                .retries
                .get_or_create(&RetryLabels {
                    service: target.name.clone(),
                    reason: reason.unwrap_or("unknown"),
                })
                .inc();
            last = Some(result);
            tokio::time::sleep(pause).await;
        }
        match last {
            Some(result) => self.finish(
                ex,
                result,
                None,
                grpc,
                deadline,
                activity,
                res.timeouts.idle,
            ),
            None => ex.fail(ProxyError::NoEndpoints(target.name.to_string()), grpc),
        }
    }

    /// Sends one try and waits for its answer: response headers, and for a
    /// gRPC call that may be retried, the first body frame too (a status in
    /// trailers after no message is as retryable as one in the headers;
    /// once a message went to the caller, the call is committed).
    #[allow(clippy::too_many_arguments)]
    async fn one_try(
        &self,
        target: &Arc<Target>,
        pick: &Pick,
        req: Request<BoxBody>,
        grpc: bool,
        per_try: Option<Duration>,
        may_retry: bool,
        replay: Option<&Replay>,
    ) -> (Try, Option<super::Classification>) {
        let peer = &pick.endpoint.peer;
        let guard = peer.load.start();
        let rt = &target.runtime;
        let pending_limit = target.policy.resilience.limits.max_pending;
        let send = peer
            .client
            .send_limited(req, pending_limit.map(|l| (&rt.pending, l)));
        let started = Instant::now();
        let sent = match per_try {
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r,
                Err(_) => Err(ProxyError::PerTryTimeout {
                    service: target.name.to_string(),
                    per_try: t,
                }),
            },
            None => send.await,
        };
        let resp = match sent {
            Ok((resp, rtt)) => {
                let now = Instant::now();
                peer.load.observe(rtt, now);
                rt.latencies.record(rtt, now);
                resp
            }
            Err(ProxyError::Overloaded {
                service,
                what,
                limit,
            }) => {
                self.telemetry
                    .metrics
                    .overloaded
                    .get_or_create(&ServiceLabels {
                        service: target.name.clone(),
                    })
                    .inc();
                return (
                    Try::Failed(ProxyError::Overloaded {
                        service,
                        what,
                        limit,
                    }),
                    None,
                );
            }
            Err(e) => return (Try::Failed(e), None),
        };
        let (parts, body) = resp.into_parts();
        let mut class = super::Classification::from_headers(parts.status, &parts.headers);
        let mut body = boxed(body);
        // Only when the caller has sent its whole request (unary and
        // server-streaming calls): a client- or bidi-streaming caller may be
        // waiting for the headers before it sends more. And only briefly, so
        // that a stream whose first message takes long still gets its
        // headers; after that the call is committed.
        if grpc && may_retry && class.grpc_status.is_none() && replay.is_some_and(Replay::finished)
        {
            let per_try_left = per_try.map(|t| t.saturating_sub(started.elapsed()));
            let window = per_try_left.map_or(PEEK_WINDOW, |l| l.min(PEEK_WINDOW));
            let first = tokio::time::timeout(window, body.frame()).await.ok();
            match first {
                None if per_try_left.is_some_and(|l| l <= PEEK_WINDOW) => {
                    return (
                        Try::Failed(ProxyError::PerTryTimeout {
                            service: target.name.to_string(),
                            per_try: per_try.unwrap_or_default(),
                        }),
                        None,
                    );
                }
                None => {} // a slow first message: committed, headers go on
                Some(Some(Ok(frame))) => {
                    if let Some(t) = frame.trailers_ref() {
                        class.grpc_status = grpc_status(t);
                    }
                    body = prepend(frame, body);
                }
                Some(Some(Err(e))) => {
                    let reset = ProxyError::Reset {
                        addr: peer.addr.to_string(),
                        reason: crate::error::error_chain(&*e),
                    };
                    return (Try::Failed(reset), None);
                }
                Some(None) => body = crate::body::empty(),
            }
        }
        let resp = Response::from_parts(parts, body);
        // The in-flight count lasts until the response ends.
        let resp = resp.map(move |b| {
            boxed(Guarded {
                inner: b,
                _guard: guard,
            })
        });
        (Try::Response(resp), Some(class))
    }

    /// Answers the caller with the last try's result.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        mut ex: Exchange,
        result: Try,
        report: Option<(Arc<Target>, Pick)>,
        grpc: bool,
        deadline: Option<Instant>,
        activity: Activity,
        report_idle: Duration,
    ) -> Response<BoxBody> {
        match result {
            Try::Failed(e) => ex.fail(e, grpc),
            Try::Response(resp) => {
                if let Some((target, pick)) = report {
                    ex.report_to(Box::new(move |c| {
                        target.report(&pick, !c.is_endpoint_failure())
                    }));
                }
                let idle = report_idle;
                let resp = resp.map(|b| boxed(TimedBody::new(b, deadline, idle, activity, grpc)));
                ex.respond_boxed(resp)
            }
        }
    }
}

/// The hedge delay of a service without enough samples for a p95.
const DEFAULT_HEDGE_DELAY: Duration = Duration::from_millis(50);

/// How long a retryable gRPC call waits for its first body frame before
/// its headers go to the caller (and it can no longer be retried).
const PEEK_WINDOW: Duration = Duration::from_secs(1);

fn grpc_reason(code: u16) -> &'static str {
    match code {
        1 => "cancelled",
        4 => "deadline-exceeded",
        8 => "resource-exhausted",
        13 => "internal",
        14 => "unavailable",
        _ => "grpc-status",
    }
}

/// Keeps an endpoint's in-flight count while the response streams.
struct Guarded {
    inner: BoxBody,
    _guard: crate::endpoint::PendingGuard,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A body that yields `first`, then the rest of `rest`.
fn prepend(first: Frame<Bytes>, rest: BoxBody) -> BoxBody {
    boxed(Prepended {
        first: Some(first),
        rest,
    })
}

struct Prepended {
    first: Option<Frame<Bytes>>,
    rest: BoxBody,
}

impl http_body::Body for Prepended {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.first.take() {
            return std::task::Poll::Ready(Some(Ok(f)));
        }
        std::pin::Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }
}

async fn inject_fault(f: &FaultPolicy, service: &str) -> Option<ProxyError> {
    if roll(f.delay_percent) {
        tokio::time::sleep(f.delay).await;
    }
    roll(f.abort_percent).then(|| ProxyError::FaultInjected {
        service: service.to_string(),
        grpc_status: f.abort_grpc_status,
        http_status: f.abort_http_status,
    })
}

/// Rewrites an app's request for the hop between sidecars, which is always
/// HTTP/2: absolute URI with the original authority (or the service name when
/// the app sent none), no hop-by-hop headers, and a marker when the app spoke
/// HTTP/1.1.
fn to_mesh_request(
    req: Request<Incoming>,
    authority: Option<&str>,
    name: &str,
) -> Result<(Template, BoxBody), ProxyError> {
    let (mut parts, body) = req.into_parts();
    let was_h1 = parts.version < Version::HTTP_2;
    strip_hop_by_hop(&mut parts.headers);
    if was_h1 {
        parts.headers.remove(http::header::HOST);
        parts.headers.insert(ORIG_PROTO, HTTP11);
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let build = |authority: &str| {
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path.as_str())
            .build()
    };
    let uri = authority
        .and_then(|a| build(a).ok())
        .map_or_else(|| build(name), Ok)
        .map_err(|e| ProxyError::NoRoute(format!("cannot forward to {name:?}: {e}")))?;
    Ok((
        Template {
            method: parts.method,
            uri,
            headers: parts.headers,
        },
        boxed(body),
    ))
}
