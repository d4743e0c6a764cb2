//! Outbound: the local app's calls to other services, as a short pipeline
//! of typed steps. Each step is a file:
//!
//! ```text
//! request ─► route    which service, which rule of its routes, which
//!                     backends, which policy                         (Route)
//!         ─► fault injection (a delay, or the mesh answers), request headers
//!         ─► plan     deadline, attempts, per-try limit, hedge      (Plan, pure)
//!         ─► the concurrency limit, the retry budget's count
//!         ─► mirror   copies to the rule's mirrors, answers ignored
//!         ─► attempt  pick an endpoint, send, read the answer       (Attempt, Outcome)
//!         ─► retry    another attempt, or this answer stands        (Next, pure)
//!         ─► one response (response headers), its body layered once (proxy::response)
//! ```
//!
//! The request is observed by its [`Exchange`] (metrics, span, access log)
//! from its arrival to the end of its response. It is counted once the
//! route step has resolved its service: under that service's name, or
//! under `(unresolved)` when the mesh knows no such service.

mod attempt;
mod mirror;
mod plan;
mod retry;
mod route;

pub use route::{Destination, Rewritten, Route, RoutePolicy};

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use weft_proto::grpc::GRPC_TIMEOUT;
use weft_proto::name::ServiceName;

use crate::body::{BoxBody, boxed};
use crate::endpoint::Connector;
use crate::error::ProxyError;
use crate::proxy::exchange::Exchange;
use crate::proxy::headers::is_grpc;
use crate::proxy::response::{self, Layers};
use crate::proxy::{CallerBody, HttpFuture};
use crate::resilience::fault;
use crate::resilience::limit::Permit;
use crate::resilience::timed::{ActiveBody, Activity, StreamTimer};
use crate::table::{Routes, Target};
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::Direction;
use attempt::{Answer, Bodies, Template};
use plan::{Facts, Plan};
use retry::{Call, Settled};
use weft_proto::deadline;

/// The outbound half of a sidecar: what the app's calls need.
pub struct Outbound {
    pub routes: Arc<Routes>,
    pub telemetry: Arc<Telemetry>,
    /// Connections to peer sidecars (mutual TLS), for opaque TCP.
    pub connector: Arc<dyn Connector>,
    /// How long a call to a service not known yet waits to learn it.
    pub discovery_timeout: Duration,
    /// The in-flight limit of a service whose policy sets none
    /// (`--max-concurrent-requests`): without one, requests past what the
    /// peer's HTTP/2 streams take would wait in the connection's queue
    /// without bound.
    pub default_max_concurrent: Option<usize>,
    /// Transparent interception (`--intercept`); `None`: off.
    pub intercept: Option<super::Interception>,
}

impl Outbound {
    /// Handles one request from the local app. `fixed` is the service of an
    /// upstream port; `None` routes by authority. `port` is the app port the
    /// app dialled when its connection was intercepted.
    pub async fn handle(
        &self,
        mut req: Request<CallerBody>,
        fixed: Option<&ServiceName>,
        port: Option<u16>,
    ) -> Response<BoxBody> {
        let start = Instant::now();
        let grpc = is_grpc(req.headers());
        let dest = Destination::of(&req, fixed).map(|d| d.with_port(port));
        // The service is resolved before the request is counted: a name the
        // mesh does not know counts as `(unresolved)`, so that an app (or a
        // scanner behind it) naming a new service per request cannot grow
        // the metrics' label sets, and the sidecar's memory, without bound.
        let resolved = match &dest {
            Some(d) => d
                .route(&self.routes, self.discovery_timeout, Some(&req))
                .await
                .map(|route| (d, route)),
            None => Err(ProxyError::NoRoute(
                "the request names no service (no Host or :authority)".into(),
            )),
        };
        let label = match &resolved {
            Ok((d, _)) => d.service.clone(),
            Err(_) => ServiceName::unresolved(),
        };
        let tel = &self.telemetry;
        let ex = Exchange::begin_at(tel, Direction::outbound, label, &mut req, grpc, start);
        let (dest, route) = match resolved {
            Ok(r) => r,
            Err(e) => return ex.fail(e, grpc),
        };
        // The body is watched for activity (the idle limit).
        let activity = Activity::new();
        let req = req.map(|b| boxed(ActiveBody::new(b, activity.clone())));
        self.send(req, dest, route, ex, grpc, activity).await
    }

    /// From the rule's filters on: the request goes to `route`. The
    /// gateway enters the pipeline here, with the route it found.
    pub async fn send(
        &self,
        mut req: Request<BoxBody>,
        dest: &Destination,
        route: Route,
        mut ex: Exchange,
        grpc: bool,
        activity: Activity,
    ) -> Response<BoxBody> {
        self.took(&route, &mut ex);
        // Injected delays come first: the request's time starts after them.
        if let Some(f) = &route.policy.fault
            && let Some(e) = fault::inject(f, &route.service).await
        {
            return ex.fail(e, grpc);
        }
        if let Some(m) = route
            .rule
            .as_ref()
            .and_then(|r| r.filters.request_headers.as_ref())
        {
            m.apply(req.headers_mut());
        }
        let start = Instant::now();
        let Some(primary) = route.backends.primary().cloned() else {
            return ex.fail(ProxyError::NoEndpoints(route.service.to_string()), grpc);
        };
        let facts = Facts {
            grpc,
            method: req.method(),
            path: req.uri().path(),
            caller_timeout: grpc
                .then(|| req.headers().get(GRPC_TIMEOUT).and_then(deadline::parse))
                .flatten(),
            mirrored: route.rule.as_ref().is_some_and(|r| !r.mirrors.is_empty()),
        };
        let plan = Plan::new(&route.policy, &facts, start, || {
            primary.runtime.latencies.p95(start)
        });
        // Counted until the response's headers are back (the limit is on
        // requests waiting for the service, not on long streams).
        let _permit = match self.admit(&route, &primary) {
            Ok(p) => p,
            Err(e) => return ex.fail(e, grpc),
        };
        primary.runtime.budget.record_request(start);
        let rewrite = route.rewrite.as_ref();
        let (template, body) = match Template::for_mesh(req, dest, rewrite) {
            Ok(t) => t,
            Err(e) => return ex.fail(e, grpc),
        };
        let mut call = Call {
            bodies: Bodies::new(body, &plan),
            route,
            plan,
            grpc,
            template,
            telemetry: &self.telemetry,
        };
        mirror::copies(&mut call);
        match retry::run(&mut call, &mut ex).await {
            Ok(settled) => respond(ex, settled, &call, activity),
            Err(e) => ex.fail(e, grpc),
        }
    }

    /// Which rule of the service's routes the request took, for metrics,
    /// its span and its access log line.
    fn took(&self, route: &Route, ex: &mut Exchange) {
        if !route.routed {
            return;
        }
        let metrics = &self.telemetry.metrics;
        match &route.rule {
            Some(r) => {
                let rule = Some((&r.route, r.rule));
                let counter = r
                    .requests
                    .get_or_init(|| metrics.route_counter(&route.service, rule));
                counter.inc();
                ex.set_route(&r.route, r.rule);
            }
            None => metrics.count_route(&route.service, None),
        }
    }

    /// A place under the service's concurrency limit, or the refusal.
    fn admit(&self, route: &Route, primary: &Target) -> Result<Option<Permit>, ProxyError> {
        let limits = &primary.policy.resilience.limits;
        let limit = limits.max_concurrent.or(self.default_max_concurrent);
        primary.runtime.concurrent.acquire(limit).map_err(|over| {
            self.telemetry.metrics.count_overloaded(&route.service);
            ProxyError::Overloaded {
                service: route.service.to_string(),
                what: "concurrent requests",
                limit: over.limit,
            }
        })
    }
}

/// The outbound half as the tower service one listener serves: the app's
/// requests to `fixed` (an upstream port's service) or by authority, and
/// for an intercepted connection the app port it dialled.
#[derive(Clone)]
pub struct OutboundService {
    outbound: Arc<Outbound>,
    fixed: Option<ServiceName>,
    port: Option<u16>,
}

impl Outbound {
    pub fn service(self: &Arc<Self>, fixed: Option<ServiceName>) -> OutboundService {
        self.service_to(fixed, None)
    }

    /// As [`Outbound::service`], for a connection intercepted on its way
    /// to `port` of the service.
    pub fn service_to(
        self: &Arc<Self>,
        fixed: Option<ServiceName>,
        port: Option<u16>,
    ) -> OutboundService {
        OutboundService {
            outbound: self.clone(),
            fixed,
            port,
        }
    }
}

impl tower::Service<Request<CallerBody>> for OutboundService {
    type Response = Response<BoxBody>;
    type Error = Infallible;
    type Future = HttpFuture;

    /// Always ready: limits refuse a request at once rather than hold
    /// the connection back.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<CallerBody>) -> HttpFuture {
        let this = self.clone();
        Box::pin(async move {
            let resp = this.outbound.handle(req, this.fixed.as_ref(), this.port);
            Ok(resp.await)
        })
    }
}

/// The caller's answer: the settled attempt's response with its body
/// layered once, or the mesh's error.
fn respond(ex: Exchange, s: Settled, call: &Call<'_>, activity: Activity) -> Response<BoxBody> {
    let a = s.attempt;
    match a.answer {
        Answer::Failed(e) => ex.fail(e, call.grpc),
        Answer::Response {
            mut resp,
            first,
            ended,
            load,
        } => {
            let rule = call.route.rule.as_ref();
            if let Some(m) = rule.and_then(|r| r.filters.response_headers.as_ref()) {
                m.apply(resp.headers_mut());
            }
            let idle = call.route.policy.timeouts.idle;
            let layers = Layers {
                first,
                ended,
                timer: Some(StreamTimer::new(call.plan.deadline, idle, activity)),
                load: Some(load),
                endpoint: s.report_at_end.then_some((a.target, a.pick)),
            };
            response::layer(resp, a.outcome, layers, ex, call.grpc)
        }
    }
}
