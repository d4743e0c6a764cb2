//! Inbound: requests from other sidecars (and, in permissive mode, plain
//! clients) forwarded to the local app, in the protocol the app speaks.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::time::Instant;
use weft_proto::name::ServiceName;
use weft_proto::protocol::Protocol;

use arc_swap::ArcSwap;
use weft_proto::identity::SpiffeId;

use super::app::{App, AppPorts};
use super::exchange::Exchange;
use super::headers::{ORIG_PROTO, PEER_IDENTITY, TARGET_PORT, is_grpc, strip_hop_by_hop};
use super::outcome::Outcome;
use super::response::{self, Layers};
use super::{CallerBody, HttpFuture};
use crate::body::{BoxBody, boxed};
use crate::edge::ratelimit::{self, SharedLimiter};
use crate::endpoint::{H2Body, TcpConnector};
use crate::error::{AppPortRefusal, ProxyError, error_chain};
use crate::identity::tls::LazyAcceptor;
use crate::model::inbound::InboundPolicy;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::Direction;

/// The inbound half of a sidecar: what calls from other sidecars need.
pub struct Inbound {
    /// The local service.
    pub service: ServiceName,
    /// The local app's protocol.
    pub protocol: Protocol,
    pub telemetry: Arc<Telemetry>,
    /// The app's ports: `--app` (`None` for a sidecar that only makes
    /// calls) and those callers name.
    pub apps: AppPorts,
    /// Opaque TCP to the app (always plain, on loopback).
    pub app_connector: Arc<TcpConnector>,
    /// Mutual TLS on the inbound listener; `None` with a static config and
    /// no certificate files (plaintext).
    pub tls: Option<Arc<LazyAcceptor>>,
    /// What the inbound side enforces: mode, authorization, rate limit.
    pub policy: Arc<ArcSwap<InboundPolicy>>,
    /// The rate limit's buckets, kept across policy pushes that leave the
    /// limit as it was.
    pub limiter: SharedLimiter,
    /// Transparent interception: a connection redirected from an app port
    /// goes to that port on loopback.
    pub intercept: bool,
}

/// The inbound half as the tower service of one connection, whose caller
/// mutual TLS proved (or not, for a plaintext connection).
#[derive(Clone)]
pub struct InboundService {
    inbound: Arc<Inbound>,
    peer: Option<Arc<Peer>>,
}

impl Inbound {
    pub fn service(self: &Arc<Self>, peer: Option<Arc<Peer>>) -> InboundService {
        InboundService {
            inbound: self.clone(),
            peer,
        }
    }
}

impl tower::Service<Request<CallerBody>> for InboundService {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = HttpFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<CallerBody>) -> HttpFuture {
        let this = self.clone();
        Box::pin(async move { Ok(this.inbound.handle(req, this.peer.as_deref()).await) })
    }
}

/// The caller as mutual TLS proved it, read once per connection.
pub struct Peer {
    pub id: SpiffeId,
    /// Its service, when it is one of ours.
    pub service: Option<ServiceName>,
    /// The `x-weft-peer-identity` value the app gets.
    header: Option<HeaderValue>,
}

impl Peer {
    pub fn new(id: SpiffeId) -> Self {
        let service = id.service_name().and_then(|n| ServiceName::parse(n).ok());
        let header = HeaderValue::from_str(&id.to_string()).ok();
        Peer {
            id,
            service,
            header,
        }
    }
}

impl Inbound {
    /// Forwards one request to the app. `peer` is the caller's verified
    /// identity; `None` for plaintext callers.
    pub async fn handle(
        &self,
        mut req: Request<CallerBody>,
        peer: Option<&Peer>,
    ) -> Response<BoxBody> {
        let grpc = is_grpc(req.headers());
        let mut ex = Exchange::begin(
            &self.telemetry,
            Direction::inbound,
            self.service.clone(),
            &mut req,
            grpc,
        );
        let caller = peer.and_then(|p| p.service.as_ref());
        ex.set_caller(caller);
        if peer.is_none() {
            ex.set_plaintext();
        }
        let policy = self.policy.load();
        // Authorization first: a denied caller spends no one's tokens.
        if let Err(e) = self
            .authorize(&policy, &req, peer, grpc)
            .and_then(|()| self.rate_limit(&policy, &req, caller, Instant::now()))
        {
            return ex.fail(e, grpc);
        }
        drop(policy);
        let app = match target_port(&mut req, peer).and_then(|p| self.apps.get(p)) {
            Ok(app) => app,
            Err(e) => return ex.fail(self.count_refused(e), grpc),
        };
        ex.attempt(&app.name, None);
        match self.forward(&app, req, peer, grpc).await {
            Ok(resp) => {
                let outcome = Outcome::from_headers(resp.status(), resp.headers());
                response::layer(resp, outcome, Layers::default(), ex, grpc)
            }
            Err(e) => ex.fail(self.count_refused(e), grpc),
        }
    }

    /// Counts a refused app port (`weft_app_port_refused_total`), and
    /// hands the error on.
    pub(super) fn count_refused(&self, e: ProxyError) -> ProxyError {
        if let ProxyError::NoAppPort { reason, .. } = &e {
            self.telemetry
                .metrics
                .count_app_port_refused(&self.service, reason.label());
        }
        e
    }

    /// The inbound policy's word on this caller and request.
    fn authorize(
        &self,
        policy: &InboundPolicy,
        req: &Request<CallerBody>,
        peer: Option<&Peer>,
        grpc: bool,
    ) -> Result<(), ProxyError> {
        let caller = peer.and_then(|p| p.service.as_ref());
        if policy.allows(caller, req.method(), req.uri().path(), grpc) {
            return Ok(());
        }
        let unresolved = ServiceName::unresolved();
        self.telemetry
            .metrics
            .count_denied(&self.service, caller.unwrap_or(&unresolved));
        let who = peer.map_or_else(
            || "an unauthenticated caller".to_string(),
            |p| p.id.to_string(),
        );
        let what = if grpc {
            req.uri().path().to_string()
        } else {
            format!("{} {}", req.method(), req.uri().path())
        };
        Err(ProxyError::Forbidden {
            caller: who,
            service: self.service.to_string(),
            what,
        })
    }

    /// The inbound policy's word on an opaque TCP connection from `peer`.
    pub(super) fn authorize_connection(&self, peer: Option<&Peer>) -> Result<(), ProxyError> {
        let caller = peer.and_then(|p| p.service.as_ref());
        if self.policy.load().allows_connection(caller) {
            return Ok(());
        }
        let unresolved = ServiceName::unresolved();
        self.telemetry
            .metrics
            .count_denied(&self.service, caller.unwrap_or(&unresolved));
        let caller = peer.map_or_else(
            || "an unauthenticated caller".to_string(),
            |p| p.id.to_string(),
        );
        tracing::info!(%caller, service = %self.service, "TCP connection denied by the authorization policy");
        Err(ProxyError::Forbidden {
            caller,
            service: self.service.to_string(),
            what: "a TCP connection".to_string(),
        })
    }

    /// The service's local rate limit: one bucket for all callers, or one
    /// per caller identity (or header value).
    fn rate_limit<B>(
        &self,
        policy: &InboundPolicy,
        req: &Request<B>,
        caller: Option<&ServiceName>,
        now: Instant,
    ) -> Result<(), ProxyError> {
        let Some(limiter) = self.limiter.get(policy.rate_limit.as_ref()) else {
            return Ok(());
        };
        // Inbound limits have no client-address key (conversion refuses
        // one); the address given is never read.
        let key = ratelimit::key_of(
            limiter.limit(),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            req.headers(),
            caller,
        );
        limiter.check(key, now).map_err(|retry| {
            let unresolved = ServiceName::unresolved();
            self.telemetry
                .metrics
                .count_rate_limited(&self.service, caller.unwrap_or(&unresolved));
            ratelimit::rejection_error(self.service.as_str(), retry)
        })
    }

    /// Sends the request to the app in the protocol it speaks, with the
    /// caller's identity in `x-weft-peer-identity` (and nothing a caller
    /// claimed there itself).
    async fn forward(
        &self,
        app: &App,
        req: Request<CallerBody>,
        peer: Option<&Peer>,
        grpc: bool,
    ) -> Result<Response<AppBody>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        parts.headers.remove(PEER_IDENTITY);
        if let Some(v) = peer.and_then(|p| p.header.clone()) {
            parts.headers.insert(PEER_IDENTITY, v);
        }
        let orig_h1 = parts
            .headers
            .remove(ORIG_PROTO)
            .is_some_and(|v| v == "HTTP/1.1");
        strip_hop_by_hop(&mut parts.headers);
        let h1 = !grpc
            && (orig_h1 || parts.version < Version::HTTP_2 || self.protocol == Protocol::Http);
        if h1 {
            // The authority goes back into Host; the URI names the app.
            if let Some(a) = parts.uri.authority()
                && !parts.headers.contains_key(http::header::HOST)
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                parts.headers.insert(http::header::HOST, v);
            }
            parts.uri = app.uri(&parts.uri)?;
            parts.version = Version::HTTP_11;
            return app
                .h1
                .request(Request::from_parts(parts, boxed(body)))
                .await
                .map(|r| r.map(Either::Left))
                .map_err(|e| {
                    if e.is_connect() {
                        app.connect_error(error_chain(&e))
                    } else {
                        app.error(error_chain(&e))
                    }
                });
        }
        if parts.uri.authority().is_none() {
            parts.uri = app.uri(&parts.uri)?;
        }
        parts.version = Version::HTTP_2;
        app.h2
            .send(Request::from_parts(parts, boxed(body)), None)
            .await
            .map(|(r, _)| r.map(Either::Right))
            .map_err(|e| match e {
                ProxyError::Connect { source, .. } => app.connect_error(source.to_string()),
                other => other,
            })
    }
}

/// An app's answer: over HTTP/1.1 (hyper's pooled client) or HTTP/2.
type AppBody = Either<Incoming, H2Body>;

/// The app port the caller named (`x-weft-target-port`), removed from the
/// request either way: believed only from a caller mutual TLS proved (a
/// peer sidecar); `None` means `--app`.
fn target_port<B>(req: &mut Request<B>, peer: Option<&Peer>) -> Result<Option<u16>, ProxyError> {
    let Some(v) = req.headers_mut().remove(TARGET_PORT) else {
        return Ok(None);
    };
    if peer.is_none() {
        return Ok(None);
    }
    match v.to_str().ok().and_then(|t| t.parse::<u16>().ok()) {
        Some(p) if p != 0 => Ok(Some(p)),
        _ => Err(ProxyError::NoAppPort {
            port: 0,
            reason: AppPortRefusal::Invalid,
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;

    use weft_proto::routing::{RateKey, RateLimit};

    use super::*;
    use crate::endpoint::TcpConnector;
    use crate::error::ErrorKind;
    use crate::telemetry::Metrics;

    fn inbound(policy: InboundPolicy) -> Inbound {
        inbound_to(policy, None)
    }

    fn inbound_to(policy: InboundPolicy, app: Option<SocketAddr>) -> Inbound {
        let app_connector = Arc::new(TcpConnector {
            timeout: Duration::from_secs(1),
        });
        let service = ServiceName::parse("users").expect("name");
        Inbound {
            apps: AppPorts::new(app, service.clone(), app_connector.clone(), Vec::new()),
            service,
            protocol: Protocol::Http,
            telemetry: Arc::new(Telemetry::new(Arc::new(Metrics::new()), None, false)),
            app_connector,
            tls: None,
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            limiter: SharedLimiter::default(),
            intercept: false,
        }
    }

    fn limited(requests: u32, key: RateKey) -> InboundPolicy {
        InboundPolicy {
            rate_limit: Some(
                RateLimit::new(requests, Duration::from_secs(60), 0, key).expect("limit"),
            ),
            ..Default::default()
        }
    }

    /// What the inbound side says to one request at `now`.
    fn check(ib: &Inbound, caller: Option<&ServiceName>, now: Instant) -> Result<(), ErrorKind> {
        let req = Request::new(());
        ib.rate_limit(&ib.policy.load(), &req, caller, now)
            .map_err(|e| e.kind())
    }

    #[test]
    fn each_caller_has_its_own_bucket_and_refusals_are_counted() {
        let ib = inbound(limited(2, RateKey::Caller));
        let orders = ServiceName::parse("orders").expect("name");
        let web = ServiceName::parse("web").expect("name");
        let t = Instant::now();
        assert_eq!(check(&ib, Some(&orders), t), Ok(()));
        assert_eq!(check(&ib, Some(&orders), t), Ok(()));
        assert_eq!(check(&ib, Some(&orders), t), Err(ErrorKind::RateLimited));
        assert_eq!(check(&ib, Some(&web), t), Ok(()), "another caller");
        assert_eq!(check(&ib, None, t), Ok(()), "no identity: a shared bucket");
        assert_eq!(
            check(&ib, Some(&orders), t + Duration::from_secs(30)),
            Ok(()),
            "two a minute: one more after 30 s"
        );
        let text = ib.telemetry.metrics.render();
        assert!(
            text.contains(r#"weft_rate_limited_total{service="users",caller="orders"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn one_bucket_for_all_that_survives_pushes_of_the_same_limit() {
        let ib = inbound(limited(1, RateKey::All));
        let (a, b) = (
            ServiceName::parse("a").expect("name"),
            ServiceName::parse("b").expect("name"),
        );
        let t = Instant::now();
        assert_eq!(check(&ib, Some(&a), t), Ok(()));
        assert_eq!(check(&ib, Some(&b), t), Err(ErrorKind::RateLimited));
        // A push that changes the rules but not the limit keeps the bucket.
        ib.policy.store(Arc::new(InboundPolicy {
            rules: Some(Vec::new()),
            ..limited(1, RateKey::All)
        }));
        assert_eq!(check(&ib, Some(&a), t), Err(ErrorKind::RateLimited));
        // A new limit starts full.
        ib.policy.store(Arc::new(limited(2, RateKey::All)));
        assert_eq!(check(&ib, Some(&a), t), Ok(()));
        // No limit: nothing refused.
        ib.policy.store(Arc::new(InboundPolicy::default()));
        for _ in 0..10 {
            assert_eq!(check(&ib, Some(&a), t), Ok(()));
        }
    }

    /// An app that answers every request with 200 and `hi`.
    async fn app() -> SocketAddr {
        app_saying("hi").await
    }

    /// An app that answers every request with 200 and `body`.
    async fn app_saying(body: &'static str) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, Infallible>(Response::new(crate::body::full(body.into())))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc),
                );
            }
        });
        addr
    }

    /// `ib` served on a listener of its own: its address, and the drain
    /// signal that keeps it serving while held.
    async fn serve_inbound(ib: &Arc<Inbound>) -> (std::net::SocketAddr, crate::drain::Signal) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let (signal, watch) = crate::drain::channel();
        tokio::spawn(super::super::serve(
            l,
            super::super::Listener::Inbound(ib.clone()),
            watch,
        ));
        (addr, signal)
    }

    #[tokio::test]
    async fn over_the_wire_the_limit_answers_429_with_retry_after() {
        use http_body_util::BodyExt;
        let policy = InboundPolicy {
            mode: weft_proto::protocol::InboundMode::Permissive,
            ..limited(2, RateKey::All)
        };
        let ib = Arc::new(inbound_to(policy, Some(app().await)));
        let (addr, _signal) = serve_inbound(&ib).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<BoxBody>();
        let mut answers = Vec::new();
        for _ in 0..3 {
            let req = Request::get(format!("http://{addr}/users/1"))
                .body(crate::body::empty())
                .expect("request");
            let resp = client.request(req).await.expect("response");
            let retry = resp.headers().get(http::header::RETRY_AFTER).cloned();
            let status = resp.status();
            let _ = resp.into_body().collect().await;
            answers.push((status.as_u16(), retry));
        }
        assert_eq!(
            answers,
            [
                (200, None),
                (200, None),
                (429, Some(HeaderValue::from_static("30")))
            ],
            "two a minute: the third waits 30 s"
        );
        let text = ib.telemetry.metrics.render();
        assert!(
            text.contains(r#"weft_rate_limited_total{service="users",caller="(unresolved)"} 1"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_plaintext_caller_cannot_choose_the_app_port() {
        use http_body_util::BodyExt;
        let (main, other) = (app_saying("main").await, app_saying("other").await);
        let policy = InboundPolicy {
            mode: weft_proto::protocol::InboundMode::Permissive,
            ..Default::default()
        };
        let ib = Arc::new(inbound_to(policy, Some(main)));
        let (addr, _signal) = serve_inbound(&ib).await;
        let client = Client::builder(TokioExecutor::new()).build_http::<BoxBody>();
        let req = Request::get(format!("http://{addr}/"))
            .header(TARGET_PORT, other.port())
            .body(crate::body::empty())
            .expect("request");
        let resp = client.request(req).await.expect("response");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(
            &body[..],
            b"main",
            "only a caller mutual TLS proved names a port"
        );
        // A proved caller names it; a bad value is refused, never guessed.
        let id = SpiffeId::service("weft.test", "orders");
        let peer = Peer::new(id);
        let mut req = Request::new(());
        req.headers_mut().insert(TARGET_PORT, other.port().into());
        assert_eq!(
            target_port(&mut req, Some(&peer)).ok(),
            Some(Some(other.port()))
        );
        assert!(req.headers().get(TARGET_PORT).is_none(), "removed");
        req.headers_mut()
            .insert(TARGET_PORT, HeaderValue::from_static("http"));
        assert!(matches!(
            target_port(&mut req, Some(&peer)),
            Err(ProxyError::NoAppPort { .. })
        ));
        req.headers_mut().insert(TARGET_PORT, other.port().into());
        assert_eq!(target_port(&mut req, None).ok(), Some(None));
    }
}
