//! One request/response exchange as the mesh observes it: counted when it
//! starts (and its trace context decided and passed on), and recorded once
//! when it ends, from its [`Outcome`] — metrics, the span, the access log
//! line. The response body (`proxy::response`) calls [`Exchange::finish`]
//! when the stream ends; a mesh error finishes it at once.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use http::{Method, Request};
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use tokio::time::Instant;
use weft_proto::grpc::GrpcCode;
use weft_proto::name::ServiceName;

use super::outcome::Outcome;
use crate::body::BoxBody;
use crate::error::ProxyError;
use crate::telemetry::access::{self, AccessLine};
use crate::telemetry::metrics::{Direction, RequestLabels};
use crate::telemetry::tracer::{SpanRecord, Started};
use crate::telemetry::traffic::Transport;
use crate::telemetry::{Route, Telemetry};

pub struct Exchange {
    tel: Arc<Telemetry>,
    labels: RequestLabels,
    start: Instant,
    /// Inbound: whether the caller came over mutual TLS.
    transport: Transport,
    /// Outbound: the service the request counts for in the traffic
    /// summary's edges.
    edge: Edge,
    /// Kept only when a span is recorded or the access log is on: the
    /// common case allocates nothing more.
    detail: Option<Box<Detail>>,
}

/// Which service an outbound request counts for in the traffic summary's
/// edges: the one its last try went to.
enum Edge {
    /// No try yet, or every try went to the service the request named (the
    /// common case: no copy of the name).
    Named,
    /// A try went to another (a route's backend).
    Tried(ServiceName),
    /// No edge: no service named yet (a gateway until a route picks a
    /// backend), or inbound.
    None,
}

struct Detail {
    trace: Option<Started>,
    wall_start: SystemTime,
    method: Method,
    path: String,
    grpc: bool,
    caller: Option<ServiceName>,
    upstream: Option<Arc<str>>,
    /// The service the last try went to (a route's backend may be another
    /// than the one the request named; at a gateway it always is).
    peer: Option<ServiceName>,
    tries: u32,
    /// The route and rule the request took.
    route: Option<(Arc<str>, usize)>,
}

impl Detail {
    /// The trace and span id as logs print them (hex, W3C widths).
    fn log_ids(&self) -> Option<(String, String)> {
        let t = self.trace.as_ref()?;
        Some((
            format!("{:032x}", t.ctx.trace_id),
            format!("{:016x}", t.ctx.span_id),
        ))
    }
}

impl Exchange {
    /// Starts observing `req`: counts it and, when tracing, writes this
    /// hop's `traceparent` into its headers.
    pub fn begin<B>(
        tel: &Arc<Telemetry>,
        direction: Direction,
        service: ServiceName,
        req: &mut Request<B>,
        grpc: bool,
    ) -> Self {
        Self::begin_at(tel, direction, service, req, grpc, Instant::now())
    }

    /// As [`Exchange::begin`], for a request that arrived at `start`: the
    /// outbound side names the service only once it is resolved (the
    /// mesh's own work before that counts in the request's time).
    pub fn begin_at<B>(
        tel: &Arc<Telemetry>,
        direction: Direction,
        service: ServiceName,
        req: &mut Request<B>,
        grpc: bool,
        start: Instant,
    ) -> Self {
        // A service the mesh does not know has no methods to tell apart.
        let route = if grpc && !service.is_unresolved() {
            tel.routes
                .grpc(direction == Direction::inbound, &service, req.uri().path())
        } else {
            Route::default()
        };
        let edge = if direction == Direction::outbound && !service.is_unresolved() {
            Edge::Named
        } else {
            Edge::None
        };
        let labels = RequestLabels {
            direction,
            service,
            route,
        };
        tel.metrics.count_request(&labels);
        let trace = tel.tracer.as_ref().map(|t| t.start(req.headers_mut()));
        let detail = (tel.access_log || trace.as_ref().is_some_and(|t| t.ctx.sampled)).then(|| {
            Box::new(Detail {
                trace,
                wall_start: since(start),
                method: req.method().clone(),
                path: req.uri().path().to_string(),
                grpc,
                caller: None,
                upstream: None,
                peer: None,
                tries: 0,
                route: None,
            })
        });
        Exchange {
            tel: tel.clone(),
            labels,
            start,
            transport: Transport::Mtls,
            edge,
            detail,
        }
    }

    /// The inbound caller came without mutual TLS.
    pub fn set_plaintext(&mut self) {
        self.transport = Transport::Plaintext;
    }

    /// No edge until a try names the service (a gateway's requests carry
    /// its own name until a route picks a backend).
    pub fn forget_edge(&mut self) {
        self.edge = Edge::None;
    }

    /// The service that called (inbound, when mTLS named it).
    pub fn set_caller(&mut self, caller: Option<&ServiceName>) {
        if let Some(d) = &mut self.detail {
            d.caller = caller.cloned();
        }
    }

    /// The request took `rule` of `route` (spans and the access log say so).
    pub fn set_route(&mut self, route: &Arc<str>, rule: usize) {
        if let Some(d) = &mut self.detail {
            d.route = Some((route.clone(), rule));
        }
    }

    /// A try went to `upstream` (an endpoint of `service`, or the local
    /// app).
    pub fn attempt(&mut self, upstream: &Arc<str>, service: Option<&ServiceName>) {
        if let Some(s) = service {
            let current = match &self.edge {
                Edge::Named => Some(&self.labels.service),
                Edge::Tried(t) => Some(t),
                Edge::None => None,
            };
            if current != Some(s) {
                self.edge = Edge::Tried(s.clone());
            }
        }
        if let Some(d) = &mut self.detail {
            d.tries += 1;
            d.upstream = Some(upstream.clone());
            if let Some(s) = service
                && d.peer.as_ref() != Some(s)
            {
                d.peer = Some(s.clone());
            }
        }
    }

    /// This hop's trace and span id as logs print them, when the exchange
    /// is recorded (so that a debug line joins its trace and access line).
    pub fn log_ids(&self) -> Option<(String, String)> {
        self.detail.as_deref().and_then(Detail::log_ids)
    }

    /// The mesh answers instead of the service.
    pub fn fail(self, err: ProxyError, grpc: bool) -> http::Response<BoxBody> {
        if tracing::enabled!(tracing::Level::DEBUG) {
            let (trace_id, span_id) = self.log_ids().unzip();
            tracing::debug!(direction = ?self.labels.direction, service = %self.labels.service, error = %err, trace_id, span_id, "request failed in the mesh");
        }
        let outcome = Outcome::from_error(&err, grpc);
        self.finish(&outcome);
        err.into_response(grpc)
    }

    /// Records how the exchange ended.
    pub fn finish(mut self, c: &Outcome) {
        let elapsed = self.start.elapsed();
        let fault = c.is_server_fault();
        let t = &self.tel.traffic;
        match (self.labels.direction, &self.edge) {
            (Direction::inbound, _) => {
                t.record_inbound(&self.labels.route, self.transport, elapsed, fault);
            }
            (Direction::outbound, Edge::Named) => {
                t.record_outbound(&self.labels.service, elapsed, fault);
            }
            (Direction::outbound, Edge::Tried(s)) => t.record_outbound(s, elapsed, fault),
            (Direction::outbound, Edge::None) => {}
        }
        let m = &self.tel.metrics;
        m.observe_duration(&self.labels, elapsed);
        m.count_response(&self.labels, c.status.as_u16(), c.grpc, c.error_label());
        let Some(d) = self.detail.take() else {
            return;
        };
        let retries = d.tries.saturating_sub(1);
        if let (Some(tracer), Some(started)) = (&self.tel.tracer, &d.trace)
            && started.ctx.sampled
        {
            let (name, attributes) = span_attributes(&self.labels, &d, c, retries);
            tracer.finish(
                started,
                SpanRecord {
                    kind: match self.labels.direction {
                        Direction::outbound => SpanKind::Client,
                        Direction::inbound => SpanKind::Server,
                    },
                    name,
                    start: d.wall_start,
                    end: d.wall_start + elapsed,
                    attributes,
                    error: span_error(self.labels.direction, c),
                },
            );
        }
        if self.tel.access_log {
            let (trace_id, span_id) = d.log_ids().unzip();
            access::write(&AccessLine {
                timestamp: access::rfc3339(d.wall_start),
                direction: match self.labels.direction {
                    Direction::outbound => "outbound",
                    Direction::inbound => "inbound",
                },
                service: self.labels.service.as_str(),
                caller: d.caller.as_ref().map(ServiceName::as_str),
                protocol: if d.grpc { "grpc" } else { "http" },
                method: d.method.as_str(),
                path: &d.path,
                status: c.status.as_u16(),
                grpc_status: c.grpc.map(|g| g.as_u16()),
                error: c.failure.map(|f| f.label()),
                upstream: d.upstream.as_deref(),
                http_route: d.route.as_ref().map(|r| &*r.0),
                rule: d.route.as_ref().map(|r| r.1),
                duration_ms: elapsed.as_secs_f64() * 1e3,
                retries,
                trace_id,
                span_id,
            });
        }
    }
}

/// The wall-clock time of `start` (its span's start), from now.
fn since(start: Instant) -> SystemTime {
    let now = SystemTime::now();
    now.checked_sub(start.elapsed()).unwrap_or(now)
}

/// OpenTelemetry semantic conventions: `rpc.*` for gRPC (named
/// `service/method`), `http.*` otherwise (named by the method, as a path
/// is no route), and the peer.
fn span_attributes(
    labels: &RequestLabels,
    d: &Detail,
    c: &Outcome,
    retries: u32,
) -> (Cow<'static, str>, Vec<KeyValue>) {
    let mut a = Vec::with_capacity(10);
    let name: Cow<'static, str>;
    if d.grpc {
        let (svc, method) = d
            .path
            .strip_prefix('/')
            .and_then(|p| p.split_once('/'))
            .unwrap_or(("", ""));
        name = Cow::Owned(format!("{svc}/{method}"));
        a.push(KeyValue::new("rpc.system", "grpc"));
        a.push(KeyValue::new("rpc.service", svc.to_string()));
        a.push(KeyValue::new("rpc.method", method.to_string()));
        if let Some(code) = c.grpc {
            a.push(KeyValue::new(
                "rpc.grpc.status_code",
                i64::from(code.as_u16()),
            ));
        }
    } else {
        name = Cow::Owned(d.method.as_str().to_string());
        a.push(KeyValue::new(
            "http.request.method",
            d.method.as_str().to_string(),
        ));
        a.push(KeyValue::new("url.path", d.path.clone()));
    }
    a.push(KeyValue::new(
        "http.response.status_code",
        i64::from(c.status.as_u16()),
    ));
    let peer = match labels.direction {
        Direction::outbound => Some(d.peer.as_ref().unwrap_or(&labels.service).to_string()),
        Direction::inbound => d.caller.as_ref().map(|s| s.as_str().to_string()),
    };
    if let Some(p) = peer {
        a.push(KeyValue::new("peer.service", p));
    }
    if let Some(u) = &d.upstream
        && let Some((host, port)) = u.rsplit_once(':')
    {
        a.push(KeyValue::new(
            "network.peer.address",
            host.trim_matches(['[', ']']).to_string(),
        ));
        if let Ok(port) = port.parse::<i64>() {
            a.push(KeyValue::new("network.peer.port", port));
        }
    }
    a.push(KeyValue::new("weft.retries", i64::from(retries)));
    if let Some((route, rule)) = &d.route {
        a.push(KeyValue::new("weft.route", route.to_string()));
        a.push(KeyValue::new("weft.route.rule", *rule as i64));
    }
    if let Some(f) = c.failure {
        a.push(KeyValue::new("weft.error", f.label()));
    }
    (name, a)
}

/// Whether the span is an error, by the conventions: on the client every
/// non-OK gRPC status and every 4xx/5xx; on the server only the statuses
/// that are the server's fault, and 5xx.
fn span_error(direction: Direction, c: &Outcome) -> Option<String> {
    if let Some(f) = c.failure {
        return Some(f.label().to_string());
    }
    match (direction, c.grpc) {
        (Direction::outbound, Some(code)) if code != GrpcCode::Ok => {
            Some(format!("grpc-status {code}"))
        }
        (Direction::inbound, Some(code)) if c.is_server_fault() => {
            Some(format!("grpc-status {code}"))
        }
        (_, Some(_)) => None,
        (Direction::outbound, None) if c.status.as_u16() >= 400 => {
            Some(format!("HTTP {}", c.status.as_u16()))
        }
        (Direction::inbound, None) if c.status.is_server_error() => {
            Some(format!("HTTP {}", c.status.as_u16()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::TracingConfig;
    use crate::telemetry::metrics::Metrics;
    use crate::telemetry::tracer::Tracer;

    fn telemetry(sampling: f64) -> Arc<Telemetry> {
        let metrics = Arc::new(Metrics::new());
        let cfg = TracingConfig {
            // Nothing listens there; no span is exported in these tests.
            endpoint: http::Uri::from_static("http://127.0.0.1:9"),
            sampling,
            queue: 16,
            ca_pem: None,
            client_identity: None,
        };
        let tracer = Tracer::new(&cfg, "echo", "echo-1", &metrics).expect("tracer");
        Arc::new(Telemetry::new(metrics, Some(tracer), false))
    }

    #[tokio::test]
    async fn debug_lines_carry_the_ids_this_hop_passes_on() {
        let tel = telemetry(1.0);
        let trace = "7bf92f3577b34da6a3ce929d0e0e4739";
        let mut req = Request::builder()
            .uri("/echo.Echo/Unary")
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
            .body(())
            .expect("request");
        let service = ServiceName::parse("echo").expect("name");
        let ex = Exchange::begin(&tel, Direction::outbound, service.clone(), &mut req, true);
        let (t, s) = ex.log_ids().expect("a recorded exchange has ids");
        assert_eq!(t, trace);
        assert_ne!(s, "00f067aa0ba902b7", "a new span id for this hop");
        assert_eq!(
            req.headers()["traceparent"],
            format!("00-{t}-{s}-01").as_str()
        );

        // Not recorded (the caller did not sample, no access log): no ids.
        let mut req = Request::builder()
            .uri("/echo.Echo/Unary")
            .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-00"))
            .body(())
            .expect("request");
        let ex = Exchange::begin(&tel, Direction::outbound, service, &mut req, true);
        assert_eq!(ex.log_ids(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_time_before_a_request_is_counted_is_in_its_duration() {
        let tel = Arc::new(Telemetry::new(Arc::new(Metrics::new()), None, false));
        let mut req = Request::builder()
            .uri("/echo.Echo/Unary")
            .body(())
            .expect("request");
        let arrived = Instant::now();
        // The outbound side resolves the service first (here 40 ms of
        // waiting for the control plane), then counts the request.
        tokio::time::advance(std::time::Duration::from_millis(40)).await;
        let service = ServiceName::parse("echo").expect("name");
        let ex = Exchange::begin_at(&tel, Direction::outbound, service, &mut req, true, arrived);
        tokio::time::advance(std::time::Duration::from_millis(2)).await;
        ex.finish(&Outcome::from_headers(
            http::StatusCode::OK,
            &http::HeaderMap::new(),
        ));
        let text = tel.metrics.render();
        let sum = text
            .lines()
            .find(|l| l.starts_with("weft_request_duration_seconds_sum{") && l.contains("echo"))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no duration recorded: {text}"));
        assert!((sum - 0.042).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn an_outbound_request_counts_for_the_service_its_last_try_went_to() {
        let tel = Arc::new(Telemetry::new(Arc::new(Metrics::new()), None, false));
        let name = |s: &str| ServiceName::parse(s).expect("name");
        let ok = Outcome::from_headers(http::StatusCode::OK, &http::HeaderMap::new());
        let addr: Arc<str> = Arc::from("127.0.0.1:1");
        let begin = |service: ServiceName| {
            let mut req = Request::builder().uri("/").body(()).expect("request");
            Exchange::begin(&tel, Direction::outbound, service, &mut req, false)
        };
        // Tried where it was sent: the name it called.
        let mut ex = begin(name("orders"));
        ex.attempt(&addr, Some(&name("orders")));
        ex.finish(&ok);
        // A route sent it to a backend, after a try at the named one.
        let mut ex = begin(name("orders"));
        ex.attempt(&addr, Some(&name("orders")));
        ex.attempt(&addr, Some(&name("orders-v2")));
        ex.finish(&ok);
        // Failed before any try: the name it called.
        begin(name("users")).fail(ProxyError::NoRoute("test".into()), false);
        // A gateway's request that no route took: no edge.
        let mut ex = begin(name("gateway"));
        ex.forget_edge();
        ex.finish(&ok);
        // Nothing named at all: no edge.
        begin(ServiceName::unresolved()).finish(&ok);
        let s = tel.traffic.snapshot();
        let edges: Vec<_> = s
            .upstreams
            .iter()
            .map(|u| (u.service.as_str(), u.requests, u.failures))
            .collect();
        assert_eq!(
            edges,
            [("orders", 1, 0), ("orders-v2", 1, 0), ("users", 1, 1)]
        );
        assert_eq!(s.requests, 0, "nothing inbound");
    }
}
