//! Step 3: one attempt. The request rewritten once for the hop between
//! sidecars ([`Template`]), its body kept for another attempt when the plan
//! says so ([`Bodies`]); then per attempt: sent to the picked endpoint
//! within the attempt's time limit and the service's pending limit, and
//! its answer read into an [`Outcome`] — the headers, and for a gRPC call
//! that may still be retried, its first frame too (a status in trailers
//! before any message is as retryable as one in the headers; once a
//! message went to the caller, the call is committed).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Uri, Version};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::time::Instant;
use weft_proto::grpc::{GRPC_TIMEOUT, GrpcCode};

use super::plan::Plan;
use super::route::{Destination, Rewritten};
use crate::body::{BoxBody, boxed};
use crate::endpoint::{H2Body, PendingGuard};
use crate::error::{ErrorKind, ProxyError, error_chain};
use crate::proxy::headers::{HTTP11, ORIG_PROTO, TARGET_PORT, strip_hop_by_hop};
use crate::proxy::outcome::Outcome;
use crate::resilience::replay::Replay;

use crate::table::{Pick, Target};
use crate::telemetry::Telemetry;

/// How long a retryable gRPC call waits for its first body frame before
/// its headers go to the caller (and it can no longer be retried). Only
/// briefly, so that a stream whose first message takes long still gets its
/// headers.
const PEEK_WINDOW: Duration = Duration::from_secs(1);

/// The parts of the request every attempt is built from: rewritten for the
/// hop between sidecars, which is always HTTP/2.
#[derive(Clone)]
pub struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
}

impl Template {
    /// An absolute URI with the app's authority (or the service's name when
    /// it sent none; or what the route's rule rewrites them to), no
    /// hop-by-hop headers, a marker when the app spoke HTTP/1.1, and the
    /// app port it dialled when it was intercepted (never one it set).
    pub fn for_mesh(
        req: Request<BoxBody>,
        dest: &Destination,
        rewrite: Option<&Rewritten>,
    ) -> Result<(Self, BoxBody), ProxyError> {
        let (mut parts, body) = req.into_parts();
        if parts.version < Version::HTTP_2 {
            parts.headers.remove(http::header::HOST);
            parts.headers.insert(ORIG_PROTO, HTTP11);
        }
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(TARGET_PORT);
        if let Some(port) = dest.port {
            parts.headers.insert(TARGET_PORT, HeaderValue::from(port));
        }
        let cannot = |e: &dyn std::fmt::Display| {
            ProxyError::NoRoute(format!("cannot forward to {:?}: {e}", dest.name()))
        };
        // The rule's host, the app's authority, or the service's name.
        let authority = match (rewrite.and_then(|r| r.authority.as_ref()), &dest.authority) {
            (Some(a), _) | (None, Some(a)) => a.clone(),
            (None, None) => Authority::try_from(dest.name()).map_err(|e| cannot(&e))?,
        };
        let path_and_query = match rewrite.and_then(|r| r.path.as_deref()) {
            // The rule's path, with the caller's query.
            Some(path) => {
                let query = parts
                    .uri
                    .query()
                    .map(|q| format!("?{q}"))
                    .unwrap_or_default();
                PathAndQuery::try_from(format!("{path}{query}")).map_err(|e| cannot(&e))?
            }
            None => parts
                .uri
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(path_and_query);
        let uri = Uri::from_parts(uri).map_err(|e| cannot(&e))?;
        let template = Template {
            method: parts.method,
            uri,
            headers: parts.headers,
        };
        Ok((template, body))
    }

    /// The request of one attempt, with `grpc-timeout` set to the time it
    /// has (`Plan::timeout_header`: the upstream gets what is left, never
    /// more). The `last` attempt takes the parts instead of copying them.
    pub fn request(
        &mut self,
        body: BoxBody,
        timeout: Option<HeaderValue>,
        last: bool,
    ) -> Request<BoxBody> {
        let mut r = Request::new(body);
        *r.version_mut() = Version::HTTP_2;
        if last {
            *r.method_mut() = std::mem::take(&mut self.method);
            *r.uri_mut() = std::mem::take(&mut self.uri);
            *r.headers_mut() = std::mem::take(&mut self.headers);
        } else {
            *r.method_mut() = self.method.clone();
            *r.uri_mut() = self.uri.clone();
            *r.headers_mut() = self.headers.clone();
        }
        if let Some(t) = timeout {
            r.headers_mut().insert(GRPC_TIMEOUT, t);
        }
        r
    }
}

/// The request body for each attempt: the caller's once, or replayed.
pub enum Bodies {
    Once(Option<BoxBody>),
    Replay(Replay),
}

impl Bodies {
    pub fn new(body: BoxBody, plan: &Plan) -> Self {
        match plan.replay_limit {
            Some(max) => Bodies::Replay(Replay::new(body, max)),
            None => Bodies::Once(Some(body)),
        }
    }

    /// The body of the next attempt; `None` once there is none to give
    /// (sent once, or outgrown the replay buffer).
    pub fn next(&mut self) -> Option<BoxBody> {
        match self {
            Bodies::Once(b) => b.take(),
            Bodies::Replay(r) => r.body().map(boxed),
        }
    }

    pub fn replay(&self) -> Option<&Replay> {
        match self {
            Bodies::Once(_) => None,
            Bodies::Replay(r) => Some(r),
        }
    }
}

/// How one attempt ended.
pub struct Attempt {
    pub target: Arc<Target>,
    pub pick: Pick,
    pub outcome: Outcome,
    pub answer: Answer,
}

pub enum Answer {
    /// The endpoint answered.
    Response {
        resp: Response<H2Body>,
        /// A frame read before the headers went to the caller.
        first: Option<Frame<Bytes>>,
        /// That read found the end of the stream.
        ended: bool,
        /// The endpoint's in-flight count, until the response ends.
        load: PendingGuard,
    },
    /// It could not be reached, or failed before answering.
    Failed(ProxyError),
}

/// What an attempt is sent with.
pub struct Conditions<'a> {
    pub grpc: bool,
    /// The attempt's time limit.
    pub limit: Option<Duration>,
    /// Another attempt may follow (so a gRPC answer is read a little further).
    pub more: bool,
    pub replay: Option<&'a Replay>,
    pub telemetry: &'a Telemetry,
}

/// Sends one attempt to `pick` and reads its answer.
pub async fn send(
    target: Arc<Target>,
    pick: Pick,
    req: Request<BoxBody>,
    how: &Conditions<'_>,
) -> Attempt {
    let peer = &pick.endpoint.peer;
    let load = peer.load.start();
    let started = Instant::now();
    let max_pending = target.policy.resilience.limits.max_pending;
    let send = peer
        .client
        .send(req, max_pending.map(|max| (&target.runtime.pending, max)));
    let sent = match how.limit {
        Some(t) => tokio::time::timeout(t, send)
            .await
            .unwrap_or_else(|_| Err(per_try_timeout(&target, t))),
        None => send.await,
    };
    let mut resp = match sent {
        Ok((resp, rtt)) => {
            let now = Instant::now();
            peer.load.observe(rtt, now);
            target.runtime.latencies.record(rtt, now);
            resp
        }
        Err(e) => {
            if e.kind() == ErrorKind::Overloaded {
                how.telemetry.metrics.count_overloaded(&target.name);
            }
            return failed(target, pick, e, how.grpc);
        }
    };
    let mut outcome = Outcome::from_headers(resp.status(), resp.headers());
    if let Some(t) = answered_late(&outcome, how, started) {
        let e = per_try_timeout(&target, t);
        return failed(target, pick, e, how.grpc);
    }
    let (mut first, mut ended) = (None, false);
    let complete = how.replay.is_some_and(Replay::finished);
    if how.grpc && how.more && outcome.grpc.is_none() && complete {
        let left = how.limit.map(|t| t.saturating_sub(started.elapsed()));
        match peek(resp.body_mut(), left).await {
            Peeked::Frame(f) => {
                if let Some(t) = f.trailers_ref() {
                    outcome.read_trailers(t);
                }
                first = Some(f);
            }
            Peeked::End => ended = true,
            Peeked::Nothing => {} // a slow first message: committed
            Peeked::TimedOut => {
                let e = per_try_timeout(&target, how.limit.unwrap_or_default());
                return failed(target, pick, e, how.grpc);
            }
            Peeked::Broke(reason) => {
                let addr = peer.addr.to_string();
                return failed(target, pick, ProxyError::Reset { addr, reason }, how.grpc);
            }
        }
    }
    let answer = Answer::Response {
        resp,
        first,
        ended,
        load,
    };
    Attempt {
        target,
        pick,
        outcome,
        answer,
    }
}

/// The attempt's limit, when a gRPC error came once it had passed: that
/// answer is the limit's. The upstream was given no more time than this
/// attempt (`grpc-timeout`), so its answer then is its own timeout
/// (tonic's is CANCELLED), which beat our timer only by the timer's
/// millisecond granularity.
fn answered_late(outcome: &Outcome, how: &Conditions<'_>, started: Instant) -> Option<Duration> {
    let t = how.limit?;
    let failed = outcome.grpc.is_some_and(|code| code != GrpcCode::Ok);
    (how.grpc && failed && started.elapsed() >= t).then_some(t)
}

fn failed(target: Arc<Target>, pick: Pick, e: ProxyError, grpc: bool) -> Attempt {
    Attempt {
        outcome: Outcome::from_error(&e, grpc),
        answer: Answer::Failed(e),
        target,
        pick,
    }
}

fn per_try_timeout(target: &Target, per_try: Duration) -> ProxyError {
    ProxyError::PerTryTimeout {
        service: target.name.to_string(),
        per_try,
    }
}

/// What reading ahead found.
enum Peeked {
    Frame(Frame<Bytes>),
    End,
    /// Nothing within the window; the attempt's own limit is further off.
    Nothing,
    /// The attempt's limit passed while waiting.
    TimedOut,
    Broke(String),
}

/// Reads the first frame, waiting at most the peek window or what is left
/// of the attempt's limit.
async fn peek(body: &mut H2Body, left: Option<Duration>) -> Peeked {
    let window = left.map_or(PEEK_WINDOW, |l| l.min(PEEK_WINDOW));
    match tokio::time::timeout(window, body.frame()).await {
        Err(_) if left.is_some_and(|l| l <= PEEK_WINDOW) => Peeked::TimedOut,
        Err(_) => Peeked::Nothing,
        Ok(Some(Ok(frame))) => Peeked::Frame(frame),
        Ok(Some(Err(e))) => Peeked::Broke(error_chain(&e)),
        Ok(None) => Peeked::End,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::name::ServiceName;

    fn template() -> Template {
        let req = Request::builder()
            .version(Version::HTTP_2)
            .uri("http://users/u.Users/Get")
            .header("content-type", "application/grpc")
            .header(GRPC_TIMEOUT, "5S")
            .body(crate::body::empty())
            .expect("request");
        let dest = Destination::service(ServiceName::parse("users").expect("name"));
        Template::for_mesh(req, &dest, None).expect("template").0
    }

    #[test]
    fn each_attempt_carries_its_own_grpc_timeout_and_only_that() {
        let mut t = template();
        let first = t.request(
            crate::body::empty(),
            Some(HeaderValue::from_static("1000m")),
            false,
        );
        let second = t.request(
            crate::body::empty(),
            Some(HeaderValue::from_static("400m")),
            false,
        );
        let last = t.request(
            crate::body::empty(),
            Some(HeaderValue::from_static("90m")),
            true,
        );
        for (req, want) in [(first, "1000m"), (second, "400m"), (last, "90m")] {
            let got: Vec<_> = req.headers().get_all(GRPC_TIMEOUT).iter().collect();
            assert_eq!(got, [want], "one value, the attempt's");
            assert_eq!(req.headers()["content-type"], "application/grpc");
            assert_eq!(req.uri().path(), "/u.Users/Get");
        }
    }

    #[test]
    fn an_attempt_without_a_limit_leaves_the_callers_value() {
        let mut t = template();
        let req = t.request(crate::body::empty(), None, true);
        assert_eq!(req.headers()[GRPC_TIMEOUT], "5S");
    }
}
