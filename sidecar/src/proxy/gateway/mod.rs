//! The gateway: the sidecar as the mesh's front door. Public clients'
//! requests (HTTP/1.1 or HTTP/2, cleartext or TLS: `listen.rs`, with the
//! certificates of `certs.rs`) are routed by the routes attached to the
//! `Gateway` this sidecar is — matched by host name first, then as any
//! route — and go into the mesh through the outbound pipeline, over mutual
//! TLS with the gateway's own identity. A request no route takes is
//! answered 404 (a gateway has no endpoints of its own to fall back to).
//!
//! ```text
//! client ─► listen (connection cap, TLS by SNI, header timeout, idle cut)
//!        ─► Gateway::handle: X-Forwarded-For/-Proto, x-request-id;
//!           gRPC-Web → gRPC; the size limit; route by host and path;
//!           the rule's CORS (a preflight answered here) and rate limit
//!        ─► Outbound::send (the same pipeline a sidecar's app calls take)
//! ```

mod certs;
mod listen;

pub use certs::{CertError, Certificates, server_config};
pub use listen::{Public, serve};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use weft_proto::grpc::GrpcCode;
use weft_proto::name::ServiceName;
use weft_proto::routing::{self, RateLimit, request_host};

use super::exchange::Exchange;
use super::headers::{authority_of, is_grpc};
use super::outbound::{Destination, Outbound, Route};
use super::outcome::Outcome;
use crate::body::{BoxBody, boxed, full};
use crate::config::EdgeLimits;
use crate::edge::forwarded::{self, Forwarding, Origin};
use crate::edge::ratelimit::{self, SharedLimiter};
use crate::edge::transcode::Transcoder;
use crate::edge::{cors, grpc_web};
use crate::error::ProxyError;
use crate::resilience::timed::{ActiveBody, Activity};
use crate::table::RuleRuntime;
use crate::telemetry::metrics::Direction;

/// The header that carries a request's id, to the services and back to
/// the client.
const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// The gateway's half of the sidecar.
pub struct Gateway {
    /// The `Gateway` resource this sidecar is (its mesh identity too).
    pub name: ServiceName,
    pub outbound: Arc<Outbound>,
    pub limits: EdgeLimits,
    /// Which forwarding headers are written, and whether a client's are
    /// kept.
    pub forwarding: Forwarding,
    /// The rate limits of the rules that have one, by (route, rule): kept
    /// across pushes while a rule's limit stays the same.
    pub limiters: Mutex<HashMap<RuleKey, Arc<SharedLimiter>>>,
    /// REST calls turned into gRPC (`--transcode`).
    pub transcoder: Option<Arc<Transcoder>>,
}

/// A rule of a route: `(HTTPRoute/name, rule index)`.
type RuleKey = (Arc<str>, usize);

/// Who sent a request, as the public listener saw the connection.
#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    /// The same, as the forwarding headers write it.
    pub origin: Origin,
}

impl Client {
    pub fn new(addr: SocketAddr, tls: bool) -> Self {
        Client {
            addr,
            origin: Origin::new(addr.ip(), tls),
        }
    }
}

/// At most this many rules' limiters are kept; past it, those of rules no
/// longer pushed go first (the map is rebuilt from the live ones).
const MAX_LIMITERS: usize = 4096;

impl Gateway {
    pub fn new(name: ServiceName, outbound: Arc<Outbound>, limits: EdgeLimits) -> Self {
        Gateway {
            name,
            outbound,
            limits,
            forwarding: Forwarding::default(),
            limiters: Mutex::default(),
            transcoder: None,
        }
    }

    /// Handles one public request: the forwarding headers and request id,
    /// a REST call turned into gRPC or gRPC-Web into gRPC, the size limit,
    /// the route, the rule's CORS and rate limit, then the outbound
    /// pipeline.
    pub async fn handle(&self, mut req: Request<Incoming>, client: &Client) -> Response<BoxBody> {
        let request_id = forwarded::apply(&mut req, &client.origin, self.forwarding);
        let transcoder = self.transcoder.as_deref();
        let mut resp = match transcoder.filter(|t| t.matches(req.method(), req.uri().path())) {
            // Boxed: its state (a whole body read, a whole answer written)
            // would otherwise make every request's future, proxied ones
            // too, that much larger to build and move.
            Some(t) => Box::pin(self.transcode(t, req, client)).await,
            None => self.forward(req, client).await,
        };
        resp.headers_mut().insert(X_REQUEST_ID, request_id);
        resp
    }

    /// A request as the client sent it (gRPC-Web made gRPC).
    async fn forward(&self, mut req: Request<Incoming>, client: &Client) -> Response<BoxBody> {
        let web = grpc_web::detect(req.headers());
        let grpc = web.is_some() || is_grpc(req.headers());
        let ex = self.exchange(&mut req, grpc);
        match web {
            Some(enc) => {
                let req = grpc_web::into_grpc_request(req, enc).map(boxed);
                let resp = self.route_and_send(req, client, ex, grpc).await;
                grpc_web::into_web_response(resp, enc).map(boxed)
            }
            None => self.route_and_send(req.map(boxed), client, ex, grpc).await,
        }
    }

    /// A REST call one of the transcoder's bindings takes: its body read
    /// (within the limit), sent as the gRPC call, the answer read whole and
    /// written back as JSON.
    async fn transcode(
        &self,
        t: &Transcoder,
        req: Request<Incoming>,
        client: &Client,
    ) -> Response<BoxBody> {
        let limit = self.limits.max_request_bytes;
        let (parts, body) = req.into_parts();
        let cap = usize::try_from(limit).unwrap_or(usize::MAX);
        let Ok(body) = Limited::new(body, cap).collect().await else {
            let e = ProxyError::TooLarge { limit };
            return json_error(e.http_status(false), GrpcCode::ResourceExhausted, &e);
        };
        let rest = Request::from_parts(parts, body.to_bytes());
        let call = match t.grpc_request(&rest) {
            Ok(Some(call)) => call,
            Ok(None) => return self.forward_buffered(rest, client).await,
            Err(e) => return e.to_http_response().map(full),
        };
        let mut grpc_req = call.request.map(full);
        let ex = self.exchange(&mut grpc_req, true);
        let resp = self.route_and_send(grpc_req, client, ex, true).await;
        let (head, body) = resp.into_parts();
        match limited(body, MAX_TRANSCODED_REPLY).collect().await {
            Ok(c) => {
                let trailers = c.trailers().cloned();
                let bytes = c.to_bytes();
                t.http_response(&call.binding, &head, &bytes, trailers.as_ref())
                    .map(full)
            }
            Err(e) => {
                let e = ProxyError::Reset {
                    addr: call.binding.grpc_path().to_string(),
                    reason: e.to_string(),
                };
                json_error(e.http_status(false), GrpcCode::Unavailable, &e)
            }
        }
    }

    /// A request the transcoder matched by path but not as a call (it
    /// never happens for a binding's own method and path): routed as sent.
    async fn forward_buffered(
        &self,
        mut req: Request<Bytes>,
        client: &Client,
    ) -> Response<BoxBody> {
        let grpc = is_grpc(req.headers());
        let ex = self.exchange(&mut req, grpc);
        self.route_and_send(req.map(full), client, ex, grpc).await
    }

    /// The observation of one request (metrics, span, access log): a
    /// gateway's requests are outbound ones of the service it is.
    fn exchange<B>(&self, req: &mut Request<B>, grpc: bool) -> Exchange {
        let tel = &self.outbound.telemetry;
        let mut ex = Exchange::begin(tel, Direction::outbound, self.name.clone(), req, grpc);
        // The edge is to the backend a route picks, not to the gateway.
        ex.forget_edge();
        ex
    }

    /// From the size limit on.
    async fn route_and_send(
        &self,
        req: Request<BoxBody>,
        client: &Client,
        ex: Exchange,
        grpc: bool,
    ) -> Response<BoxBody> {
        let limit = self.limits.max_request_bytes;
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return ex.fail(ProxyError::TooLarge { limit }, grpc);
        }
        let dest = Destination::gateway(self.name.clone(), authority_of(&req));
        // Only the head is held while the route is looked up (a body need
        // not be `Sync`).
        let (head, body) = req.into_parts();
        let route = match self.route(&dest, &head).await {
            Ok(r) => r,
            Err(e) => return ex.fail(e, grpc),
        };
        let req = Request::from_parts(head, body);
        // The rule's own handle: the route moves into the pipeline.
        let rule = route.rule.clone();
        let cors = rule.as_ref().and_then(|r| r.filters.cors.as_ref());
        if let Some(resp) = cors.and_then(|c| cors::preflight(c, &req)) {
            ex.finish(&Outcome::from_headers(resp.status(), resp.headers()));
            return resp;
        }
        if let Some(rule) = &rule
            && let Some(limit) = &rule.filters.rate_limit
            && let Err(e) = self.admit(rule, limit, client, req.headers())
        {
            return ex.fail(e, grpc);
        }
        let origin = req.headers().get(http::header::ORIGIN).cloned();
        // A body without a length (or one that lies) is cut at the limit.
        let activity = Activity::new();
        let cap = usize::try_from(limit).unwrap_or(usize::MAX);
        let req = req.map(|b| boxed(ActiveBody::new(Limited::new(b, cap), activity.clone())));
        let mut resp = self
            .outbound
            .send(req, &dest, route, ex, grpc, activity)
            .await;
        if let Some(c) = cors {
            cors::decorate(c, origin.as_ref(), resp.headers_mut());
        }
        resp
    }

    /// The rule the request takes among the gateway's routes, by its host
    /// and then as any route; none is a 404 (`UNIMPLEMENTED` for gRPC).
    async fn route(
        &self,
        dest: &Destination,
        head: &http::request::Parts,
    ) -> Result<Route, ProxyError> {
        let host = dest
            .authority
            .as_ref()
            .map(|a| request_host(a.as_str()))
            .unwrap_or_default();
        let rreq = routing::Request {
            method: &head.method,
            host: Some(&host),
            path: head.uri.path(),
            query: head.uri.query(),
            headers: &head.headers,
        };
        let wait = self.outbound.discovery_timeout;
        dest.gateway_route(&self.outbound.routes, wait, &rreq)
            .await?
            .ok_or_else(|| ProxyError::NotFound {
                gateway: self.name.to_string(),
                host,
                path: head.uri.path().to_string(),
            })
    }

    /// A token from the rule's bucket for this client, or the refusal.
    fn admit(
        &self,
        rule: &RuleRuntime,
        limit: &RateLimit,
        client: &Client,
        headers: &http::HeaderMap,
    ) -> Result<(), ProxyError> {
        let shared = {
            let mut map = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_LIMITERS {
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            map.entry((rule.route.clone(), rule.rule))
                .or_default()
                .clone()
        };
        let Some(limiter) = shared.get(Some(limit)) else {
            return Ok(());
        };
        let key = ratelimit::key_of(limit, client.addr.ip(), headers, None);
        limiter
            .check(key, tokio::time::Instant::now())
            .map_err(|retry| {
                let what = format!("{} rules[{}]", rule.route, rule.rule);
                ratelimit::rejection_error(&what, retry)
            })
    }
}

/// `body`, failing once more than `cap` bytes came. A plain function: the
/// limited body's type stays out of the futures that hold it (rustc cannot
/// prove them `Send` through its error conversion).
fn limited(body: BoxBody, cap: usize) -> BoxBody {
    boxed(Limited::new(body, cap))
}

/// The most a transcoded call's answer may hold: it is read whole to be
/// written as JSON.
const MAX_TRANSCODED_REPLY: usize = 64 << 20;

/// A REST client's error as transcoded calls answer them:
/// `{"code": <gRPC code>, "message": ...}`.
fn json_error(status: http::StatusCode, code: GrpcCode, e: &ProxyError) -> Response<BoxBody> {
    let body = serde_json::json!({"code": code as i32, "message": e.to_string()});
    let mut r = Response::new(full(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        crate::error::ERROR_HEADER,
        http::HeaderValue::from_static(e.code()),
    );
    r
}
