//! The sidecar's Prometheus metrics, served at `/metrics` on the admin port.
//! Names and labels are stable and documented in docs/metrics.md.
//!
//! Callers say what happened (`count_*` for counters, `set_*` for gauges,
//! `observe_*` for histograms); the families and their label sets stay in
//! here, so a label is spelled in one place.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};
use std::sync::Arc;
use std::time::Duration;

use weft_proto::grpc::GrpcCode;
use weft_proto::name::ServiceName;

use super::routes::Route;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Direction {
    inbound,
    outbound,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub service: ServiceName,
    /// The gRPC method (`/pkg.Service/Method`); empty for HTTP.
    pub route: Route,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResponseLabels {
    direction: Direction,
    service: ServiceName,
    route: Route,
    /// HTTP status code.
    status: u16,
    /// gRPC status code, from headers or trailers; empty for non-gRPC.
    grpc_status: &'static str,
    /// What went wrong: empty when the exchange completed; otherwise the
    /// mesh's error code (`x-weft-error`) or `stream-error`.
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    service: ServiceName,
    health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpdateLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TcpLabels {
    direction: Direction,
    service: ServiceName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    direction: &'static str,
    result: &'static str,
    /// Why it failed; empty when it succeeded.
    reason: &'static str,
}

impl HandshakeLabels {
    fn ok(direction: &'static str) -> Self {
        HandshakeLabels {
            direction,
            result: "ok",
            reason: "",
        }
    }

    fn failed(direction: &'static str, reason: &'static str) -> Self {
        HandshakeLabels {
            direction,
            result: "failed",
            reason,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallerLabels {
    service: ServiceName,
    /// The caller's service; `(unresolved)` without a mesh identity.
    caller: ServiceName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: ServiceName,
}

/// A route's rule: bounded by the routes pushed, not by requests.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabels {
    service: ServiceName,
    /// `HTTPRoute/name` or `GRPCRoute/name`; `(default)` when the service
    /// has routes but none matched.
    http_route: Arc<str>,
    /// The rule's index in its route; empty for `(default)`.
    rule: RuleIndex,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    service: ServiceName,
    http_route: Arc<str>,
    rule: RuleIndex,
    /// `service` or `service/subset`.
    backend: Arc<str>,
}

/// A rule's index as a label value (empty when there is none).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct RuleIndex(Option<usize>);

impl EncodeLabelValue for RuleIndex {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        match self.0 {
            Some(i) => EncodeLabelValue::encode(&(i as u64), encoder),
            None => EncodeLabelValue::encode(&"", encoder),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    service: ServiceName,
    /// Why the try before failed (unavailable, connect-failure, …).
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// A redirected connection: which way, and what became of it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterceptLabels {
    direction: &'static str,
    /// `service` (mapped to a mesh service), `passthrough` or `denied`
    /// (unknown destinations), `app` (inbound, to the app's port).
    outcome: &'static str,
}

/// A port a caller named that reached no app, and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AppPortLabels {
    service: ServiceName,
    /// `not-listening`, `sidecar-port` or `invalid`.
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RenewalLabels {
    result: &'static str,
}

/// Every metric of one sidecar, registered once.
pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<RequestLabels, Histogram>,
    endpoints: Family<EndpointLabels, Gauge>,
    stream_state: Family<StateLabels, Gauge>,
    updates: Family<UpdateLabels, Counter>,
    rebalances: Counter,
    app_healthy: Gauge,
    tcp_connections: Family<TcpLabels, Counter>,
    tcp_open: Family<TcpLabels, Gauge>,
    intercepted: Family<InterceptLabels, Counter>,
    app_port_refused: Family<AppPortLabels, Counter>,
    tcp_bytes_sent: Family<TcpLabels, Counter>,
    tcp_bytes_received: Family<TcpLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    renewals: Family<RenewalLabels, Counter>,
    cert_expiry: Gauge,
    tasks: Gauge,
    authz_denied: Family<CallerLabels, Counter>,
    rate_limited: Family<CallerLabels, Counter>,
    retries: Family<RetryLabels, Counter>,
    retries_refused: Family<ServiceLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    overloaded: Family<ServiceLabels, Counter>,
    ejected_endpoints: Family<ServiceLabels, Gauge>,
    hedges: Family<ServiceLabels, Counter>,
    route_requests: Family<RuleLabels, Counter>,
    route_fallbacks: Family<BackendLabels, Counter>,
    mirrors: Family<BackendLabels, Counter>,
    spans_exported: Counter,
    spans_dropped: Family<ReasonLabels, Counter>,
    gateway_refused: Family<ReasonLabels, Counter>,
    registry: Registry,
}

/// The span counters, for the exporter's own thread and the tracer's
/// queue: held as handles, so that counting a span is one atomic add.
#[derive(Clone)]
pub struct SpanCounters {
    pub exported: Counter,
    pub export_failed: Counter,
    pub queue_full: Counter,
}

fn rule_labels(service: &ServiceName, route: Option<(&Arc<str>, usize)>) -> RuleLabels {
    RuleLabels {
        service: service.clone(),
        http_route: route.map_or_else(|| Arc::from("(default)"), |(r, _)| r.clone()),
        rule: RuleIndex(route.map(|(_, i)| i)),
    }
}

fn backend_labels(
    service: &ServiceName,
    route: (&Arc<str>, usize),
    backend: &Arc<str>,
) -> BackendLabels {
    BackendLabels {
        service: service.clone(),
        http_route: route.0.clone(),
        rule: RuleIndex(Some(route.1)),
        backend: backend.clone(),
    }
}

fn service_labels(service: &ServiceName) -> ServiceLabels {
    ServiceLabels {
        service: service.clone(),
    }
}

/// One open TCP connection in `weft_tcp_open_connections`; dropping it
/// closes it there.
#[must_use = "the connection counts as open only while this is held"]
pub struct OpenTcp(Gauge);

impl Drop for OpenTcp {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn tcp_labels(direction: Direction, service: &ServiceName) -> TcpLabels {
    TcpLabels {
        direction,
        service: service.clone(),
    }
}

/// Latency buckets in seconds: fine below a millisecond, where a sidecar's
/// own cost lives, and up to ten seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Registers `metric` as `weft_<name>` and hands it back.
fn registered<M: Metric + Clone>(r: &mut Registry, name: &str, help: &str, metric: M) -> M {
    r.register(name, help, metric.clone());
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("weft");
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        // Registered (and shown) in the order written; the registry is moved
        // in last, once every metric is in it.
        Metrics {
            requests: registered(
                &mut r,
                "requests",
                "Requests received, by direction, service and route",
                Family::default(),
            ),
            responses: registered(
                &mut r,
                "responses",
                "Responses completed, by direction, service, route, HTTP status, gRPC status and error",
                Family::default(),
            ),
            latency: registered(
                &mut r,
                "request_duration_seconds",
                "Time from a request's headers to the end of its response",
                latency,
            ),
            endpoints: registered(
                &mut r,
                "endpoints",
                "Endpoints known per service, by health",
                Family::default(),
            ),
            stream_state: registered(
                &mut r,
                "control_plane_stream",
                "1 for the current state of the control-plane stream (connecting, synced, stale, static)",
                Family::default(),
            ),
            updates: registered(
                &mut r,
                "control_plane_updates",
                "Updates from the control plane, by result (ack, nack)",
                Family::default(),
            ),
            rebalances: registered(
                &mut r,
                "control_plane_rebalances",
                "Returns to a control-plane replica this sidecar prefers, once it answered again",
                Counter::default(),
            ),
            app_healthy: registered(
                &mut r,
                "app_healthy",
                "1 when the local app passed its last health check",
                Gauge::default(),
            ),
            tcp_connections: registered(
                &mut r,
                "tcp_connections",
                "Opaque TCP connections proxied",
                Family::default(),
            ),
            tcp_open: registered(
                &mut r,
                "tcp_open_connections",
                "Opaque TCP connections open now",
                Family::default(),
            ),
            intercepted: registered(
                &mut r,
                "intercepted_connections",
                "Connections redirected to the sidecar by the init rules, by outcome",
                Family::default(),
            ),
            app_port_refused: registered(
                &mut r,
                "app_port_refused",
                "Inbound requests and connections to an app port a caller named that reached no app, by reason",
                Family::default(),
            ),
            tcp_bytes_sent: registered(
                &mut r,
                "tcp_sent_bytes",
                "Bytes sent to the upstream of opaque TCP connections",
                Family::default(),
            ),
            tcp_bytes_received: registered(
                &mut r,
                "tcp_received_bytes",
                "Bytes received from the upstream of opaque TCP connections",
                Family::default(),
            ),
            gateway_refused: registered(
                &mut r,
                "gateway_refused_connections",
                "Client connections a gateway closed before serving a request, by reason",
                Family::default(),
            ),
            handshakes: registered(
                &mut r,
                "tls_handshakes",
                "Mutual TLS handshakes with peers, by direction, result and reason",
                Family::default(),
            ),
            renewals: registered(
                &mut r,
                "certificate_renewals",
                "Certificate renewals by result",
                Family::default(),
            ),
            cert_expiry: registered(
                &mut r,
                "certificate_expiry_timestamp_seconds",
                "When this sidecar's certificate expires (unix seconds; 0: no certificate)",
                Gauge::default(),
            ),
            tasks: registered(
                &mut r,
                "tasks",
                "Tasks alive on the sidecar's runtime when scraped",
                Gauge::default(),
            ),
            authz_denied: registered(
                &mut r,
                "authorization_denied",
                "Inbound requests denied by authorization, by service and caller",
                Family::default(),
            ),
            rate_limited: registered(
                &mut r,
                "rate_limited",
                "Requests refused by a local rate limit, by service and caller",
                Family::default(),
            ),
            retries: registered(
                &mut r,
                "retries",
                "Retries sent, by service and the reason for the retry",
                Family::default(),
            ),
            retries_refused: registered(
                &mut r,
                "retries_budget_exhausted",
                "Retries not sent because the service's retry budget was spent",
                Family::default(),
            ),
            ejections: registered(
                &mut r,
                "ejections",
                "Endpoints ejected by outlier detection",
                Family::default(),
            ),
            overloaded: registered(
                &mut r,
                "overloaded",
                "Requests answered at once because a concurrency or pending limit was reached",
                Family::default(),
            ),
            ejected_endpoints: registered(
                &mut r,
                "ejected_endpoints",
                "Endpoints of a service ejected now (read at scrape time)",
                Family::default(),
            ),
            hedges: registered(
                &mut r,
                "hedges",
                "Second copies of hedgeable calls sent after the hedge delay",
                Family::default(),
            ),
            route_requests: registered(
                &mut r,
                "route_requests",
                "Requests to a service with routes, by the route and rule they took",
                Family::default(),
            ),
            route_fallbacks: registered(
                &mut r,
                "route_fallbacks",
                "Requests a rule's weights gave to a backend with no endpoint ready, sent to another of its backends",
                Family::default(),
            ),
            mirrors: registered(
                &mut r,
                "mirrors",
                "Copies of requests sent to a rule's mirror backend",
                Family::default(),
            ),
            spans_exported: registered(
                &mut r,
                "spans_exported",
                "Spans the OTLP collector accepted",
                Counter::default(),
            ),
            spans_dropped: registered(
                &mut r,
                "spans_dropped",
                "Spans not exported, by reason (queue-full, export-failed)",
                Family::default(),
            ),
            registry: r,
        }
    }

    /// A request received.
    pub fn count_request(&self, request: &RequestLabels) {
        match request.route.stats() {
            Some(s) => s
                .requests
                .get_or_init(|| self.requests.get_or_create(request).clone())
                .inc(),
            None => self.requests.get_or_create(request).inc(),
        };
    }

    /// How long a request took, from its headers to the end of its response.
    pub fn observe_duration(&self, request: &RequestLabels, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        match request.route.stats() {
            Some(s) => s
                .latency
                .get_or_init(|| self.latency.get_or_create(request).clone())
                .observe(secs),
            None => self.latency.get_or_create(request).observe(secs),
        }
    }

    /// How a request's exchange ended: its HTTP status, gRPC status and,
    /// when it did not complete, the error's code.
    pub fn count_response(
        &self,
        request: &RequestLabels,
        status: u16,
        grpc: Option<GrpcCode>,
        error: &'static str,
    ) {
        let labels = || ResponseLabels {
            direction: request.direction,
            service: request.service.clone(),
            route: request.route.clone(),
            status,
            grpc_status: grpc.map_or("", GrpcCode::number),
            error,
        };
        // The usual ending of a call on an interned route: its own counter.
        if (status, grpc, error) == (200, Some(GrpcCode::Ok), "")
            && let Some(s) = request.route.stats()
        {
            let c = s
                .completed
                .get_or_init(|| self.responses.get_or_create(&labels()).clone());
            c.inc();
            return;
        }
        self.responses.get_or_create(&labels()).inc();
    }

    /// Forgets every service's endpoint counts (before a new table sets
    /// those of the services it has).
    pub fn clear_endpoints(&self) {
        self.endpoints.clear();
    }

    /// The endpoints known for `service`, by health.
    pub fn set_endpoints(&self, service: &ServiceName, healthy: i64, unhealthy: i64) {
        for (health, n) in [("healthy", healthy), ("unhealthy", unhealthy)] {
            let labels = EndpointLabels {
                service: service.clone(),
                health,
            };
            self.endpoints.get_or_create(&labels).set(n);
        }
    }

    /// Marks `state` as the control-plane stream's current state.
    pub fn set_stream_state(&self, state: &'static str) {
        for s in ["connecting", "synced", "stale", "static"] {
            self.stream_state
                .get_or_create(&StateLabels { state: s })
                .set(i64::from(s == state));
        }
    }

    /// The stream moved back to a preferred control-plane replica.
    pub fn count_rebalance(&self) {
        self.rebalances.inc();
    }

    /// An update from the control plane applied (ACK).
    pub fn count_update_acked(&self) {
        self.updates
            .get_or_create(&UpdateLabels { result: "ack" })
            .inc();
    }

    /// An update from the control plane rejected (NACK).
    pub fn count_update_rejected(&self) {
        self.updates
            .get_or_create(&UpdateLabels { result: "nack" })
            .inc();
    }

    /// Whether the local app passed its last health check.
    pub fn set_app_healthy(&self, healthy: bool) {
        self.app_healthy.set(i64::from(healthy));
    }

    /// A redirected connection; `outcome` is `service`, `passthrough`,
    /// `denied` or `app`.
    pub fn count_intercepted(&self, direction: &'static str, outcome: &'static str) {
        self.intercepted
            .get_or_create(&InterceptLabels { direction, outcome })
            .inc();
    }

    /// An inbound request or connection to a port its caller named that
    /// reached no app; `reason` is an `AppPortRefusal` label.
    pub fn count_app_port_refused(&self, service: &ServiceName, reason: &'static str) {
        let labels = AppPortLabels {
            service: service.clone(),
            reason,
        };
        self.app_port_refused.get_or_create(&labels).inc();
    }

    /// An opaque TCP connection proxied.
    pub fn count_tcp_connection(&self, direction: Direction, service: &ServiceName) {
        self.tcp_connections
            .get_or_create(&tcp_labels(direction, service))
            .inc();
    }

    /// An opaque TCP connection proxied and open until the guard drops
    /// (also when the copy is cancelled: draining, a panic).
    pub fn open_tcp_connection(&self, direction: Direction, service: &ServiceName) -> OpenTcp {
        self.count_tcp_connection(direction, service);
        let gauge = self
            .tcp_open
            .get_or_create(&tcp_labels(direction, service))
            .clone();
        gauge.inc();
        OpenTcp(gauge)
    }

    /// The bytes an opaque TCP connection carried each way.
    pub fn count_tcp_bytes(
        &self,
        direction: Direction,
        service: &ServiceName,
        sent: u64,
        received: u64,
    ) {
        let labels = tcp_labels(direction, service);
        self.tcp_bytes_sent.get_or_create(&labels).inc_by(sent);
        self.tcp_bytes_received
            .get_or_create(&labels)
            .inc_by(received);
    }

    /// A mutual TLS handshake with a peer that succeeded.
    pub fn count_handshake_ok(&self, direction: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels::ok(direction))
            .inc();
    }

    /// A mutual TLS handshake with a peer that failed, and why.
    /// A gateway closed a client connection unserved.
    pub fn count_gateway_refused(&self, reason: &'static str) {
        self.gateway_refused
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn count_handshake_failed(&self, direction: &'static str, reason: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels::failed(direction, reason))
            .inc();
    }

    /// A certificate renewed (or, from files, a changed set loaded).
    pub fn count_renewal_ok(&self) {
        self.renewals
            .get_or_create(&RenewalLabels { result: "ok" })
            .inc();
    }

    /// A renewal that failed (or changed files that could not be used).
    pub fn count_renewal_failed(&self) {
        self.renewals
            .get_or_create(&RenewalLabels { result: "failed" })
            .inc();
    }

    /// When the current certificate expires (unix ms; 0: none yet).
    pub fn set_certificate_expiry(&self, unix_ms: u64) {
        self.cert_expiry.set((unix_ms / 1000) as i64);
    }

    /// An inbound request authorization denied.
    pub fn count_denied(&self, service: &ServiceName, caller: &ServiceName) {
        let labels = CallerLabels {
            service: service.clone(),
            caller: caller.clone(),
        };
        self.authz_denied.get_or_create(&labels).inc();
    }

    /// A request refused by `service`'s local rate limit; `caller` is
    /// `(unresolved)` without a mesh identity, so the labels stay bounded
    /// by the mesh's services whatever the limit's key.
    pub fn count_rate_limited(&self, service: &ServiceName, caller: &ServiceName) {
        let labels = CallerLabels {
            service: service.clone(),
            caller: caller.clone(),
        };
        self.rate_limited.get_or_create(&labels).inc();
    }

    /// A retry sent, and why the attempt before failed.
    pub fn count_retry(&self, service: &ServiceName, reason: &'static str) {
        let labels = RetryLabels {
            service: service.clone(),
            reason,
        };
        self.retries.get_or_create(&labels).inc();
    }

    /// A retry not sent because the service's budget was spent.
    pub fn count_retry_budget_spent(&self, service: &ServiceName) {
        self.retries_refused
            .get_or_create(&service_labels(service))
            .inc();
    }

    /// An endpoint of `service` ejected by outlier detection.
    pub fn count_ejection(&self, service: &ServiceName) {
        self.ejections.get_or_create(&service_labels(service)).inc();
    }

    /// A request refused at once by a concurrency or pending limit.
    pub fn count_overloaded(&self, service: &ServiceName) {
        self.overloaded
            .get_or_create(&service_labels(service))
            .inc();
    }

    /// How many endpoints of `service` are ejected now.
    pub fn set_ejected_endpoints(&self, service: &ServiceName, ejected: usize) {
        self.ejected_endpoints
            .get_or_create(&service_labels(service))
            .set(ejected as i64);
    }

    /// A second copy of a hedgeable call sent.
    pub fn count_hedge(&self, service: &ServiceName) {
        self.hedges.get_or_create(&service_labels(service)).inc();
    }

    /// A request to a service with routes took `rule` of `route` (`None`:
    /// no rule matched; the service's default).
    pub fn count_route(&self, service: &ServiceName, route: Option<(&Arc<str>, usize)>) {
        self.route_counter(service, route).inc();
    }

    /// The counter `count_route` adds to, as a handle a rule keeps (so a
    /// routed request does not look its labels up).
    pub fn route_counter(
        &self,
        service: &ServiceName,
        route: Option<(&Arc<str>, usize)>,
    ) -> Counter {
        self.route_requests
            .get_or_create(&rule_labels(service, route))
            .clone()
    }

    /// A rule's weights drew `from`, which had no endpoint ready.
    pub fn count_route_fallback(
        &self,
        service: &ServiceName,
        route: (&Arc<str>, usize),
        from: &Arc<str>,
    ) {
        let labels = backend_labels(service, route, from);
        self.route_fallbacks.get_or_create(&labels).inc();
    }

    /// A copy of a request went to a mirror backend.
    pub fn count_mirror(&self, service: &ServiceName, route: (&Arc<str>, usize), to: &Arc<str>) {
        self.mirrors
            .get_or_create(&backend_labels(service, route, to))
            .inc();
    }

    /// The counters of spans exported and dropped, as handles.
    pub fn span_counters(&self) -> SpanCounters {
        let dropped = |reason| {
            self.spans_dropped
                .get_or_create(&ReasonLabels { reason })
                .clone()
        };
        SpanCounters {
            exported: self.spans_exported.clone(),
            export_failed: dropped("export-failed"),
            queue_full: dropped("queue-full"),
        }
    }

    pub fn render(&self) -> String {
        // Read at scrape time from tokio's own count (one atomic load): a
        // leak of connections or requests shows as tasks that never end.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.tasks.set(rt.metrics().num_alive_tasks() as i64);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric, recorded once through the methods callers use.
    fn recorded() -> String {
        let m = Metrics::new();
        let svc = ServiceName::parse("users").expect("name");
        let req = RequestLabels {
            direction: Direction::outbound,
            service: svc.clone(),
            route: Route::default(),
        };
        m.count_request(&req);
        m.observe_duration(&req, Duration::from_millis(3));
        m.count_response(&req, 200, Some(GrpcCode::Unavailable), "");
        m.set_endpoints(&svc, 2, 1);
        m.set_stream_state("synced");
        m.count_update_acked();
        m.count_update_rejected();
        m.count_rebalance();
        m.set_app_healthy(true);
        // Held until rendered: the connection is open.
        let _open = m.open_tcp_connection(Direction::inbound, &svc);
        m.count_intercepted("outbound", "service");
        m.count_tcp_bytes(Direction::inbound, &svc, 10, 20);
        m.count_handshake_ok("outbound");
        m.count_handshake_failed("inbound", "untrusted");
        m.count_renewal_ok();
        m.count_renewal_failed();
        m.set_certificate_expiry(5_000);
        m.count_denied(&svc, &ServiceName::unresolved());
        m.count_retry(&svc, "unavailable");
        m.count_retry_budget_spent(&svc);
        m.count_ejection(&svc);
        m.count_overloaded(&svc);
        m.set_ejected_endpoints(&svc, 1);
        m.count_hedge(&svc);
        let route: Arc<str> = Arc::from("HTTPRoute/canary");
        let v2: Arc<str> = Arc::from("users/v2");
        m.count_route(&svc, Some((&route, 1)));
        m.count_route(&svc, None);
        m.count_route_fallback(&svc, (&route, 1), &v2);
        m.count_mirror(&svc, (&route, 1), &v2);
        m.count_intercepted("outbound", "passthrough");
        m.count_app_port_refused(&svc, "not-listening");
        let spans = m.span_counters();
        spans.exported.inc();
        spans.export_failed.inc();
        spans.queue_full.inc();
        m.render()
    }

    #[test]
    fn each_method_records_under_its_documented_name_and_labels() {
        let text = recorded();
        for line in [
            r#"weft_requests_total{direction="outbound",service="users",route=""} 1"#,
            r#"weft_responses_total{direction="outbound",service="users",route="",status="200",grpc_status="14",error=""} 1"#,
            r#"weft_request_duration_seconds_count{direction="outbound",service="users",route=""} 1"#,
            r#"weft_endpoints{service="users",health="healthy"} 2"#,
            r#"weft_endpoints{service="users",health="unhealthy"} 1"#,
            r#"weft_control_plane_stream{state="synced"} 1"#,
            r#"weft_control_plane_stream{state="stale"} 0"#,
            r#"weft_control_plane_updates_total{result="ack"} 1"#,
            r#"weft_control_plane_updates_total{result="nack"} 1"#,
            "weft_control_plane_rebalances_total 1",
            "weft_app_healthy 1",
            r#"weft_tcp_connections_total{direction="inbound",service="users"} 1"#,
            r#"weft_tcp_sent_bytes_total{direction="inbound",service="users"} 10"#,
            r#"weft_tcp_received_bytes_total{direction="inbound",service="users"} 20"#,
            r#"weft_tcp_open_connections{direction="inbound",service="users"} 1"#,
            r#"weft_intercepted_connections_total{direction="outbound",outcome="service"} 1"#,
            r#"weft_tls_handshakes_total{direction="outbound",result="ok",reason=""} 1"#,
            r#"weft_tls_handshakes_total{direction="inbound",result="failed",reason="untrusted"} 1"#,
            r#"weft_certificate_renewals_total{result="ok"} 1"#,
            r#"weft_certificate_renewals_total{result="failed"} 1"#,
            "weft_certificate_expiry_timestamp_seconds 5",
            r#"weft_authorization_denied_total{service="users",caller="(unresolved)"} 1"#,
            r#"weft_retries_total{service="users",reason="unavailable"} 1"#,
            r#"weft_retries_budget_exhausted_total{service="users"} 1"#,
            r#"weft_ejections_total{service="users"} 1"#,
            r#"weft_overloaded_total{service="users"} 1"#,
            r#"weft_ejected_endpoints{service="users"} 1"#,
            r#"weft_hedges_total{service="users"} 1"#,
            r#"weft_route_requests_total{service="users",http_route="HTTPRoute/canary",rule="1"} 1"#,
            r#"weft_route_requests_total{service="users",http_route="(default)",rule=""} 1"#,
            r#"weft_route_fallbacks_total{service="users",http_route="HTTPRoute/canary",rule="1",backend="users/v2"} 1"#,
            r#"weft_mirrors_total{service="users",http_route="HTTPRoute/canary",rule="1",backend="users/v2"} 1"#,
            "weft_spans_exported_total 1",
            r#"weft_spans_dropped_total{reason="export-failed"} 1"#,
            r#"weft_spans_dropped_total{reason="queue-full"} 1"#,
            r#"weft_intercepted_connections_total{direction="outbound",outcome="passthrough"} 1"#,
            r#"weft_app_port_refused_total{service="users",reason="not-listening"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }

    #[tokio::test]
    async fn live_tasks_are_read_at_scrape_time() {
        let m = Metrics::new();
        let count = |m: &Metrics| -> i64 {
            let text = m.render();
            let line = text.lines().find(|l| l.starts_with("weft_tasks "));
            line.and_then(|l| l.split(' ').nth(1)?.parse().ok())
                .expect("weft_tasks is rendered")
        };
        let before = count(&m);
        let parked: Vec<_> = (0..5)
            .map(|_| tokio::spawn(std::future::pending::<()>()))
            .collect();
        assert_eq!(count(&m), before + 5, "five more tasks alive");
        for t in &parked {
            t.abort();
        }
        for t in parked {
            let _ = t.await;
        }
        assert_eq!(count(&m), before, "and gone again");
    }

    #[test]
    fn every_metric_is_in_the_docs() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
        let docs = std::fs::read_to_string(path).expect("docs/metrics.md");
        let text = recorded();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .collect();
        assert_eq!(names.len(), 30, "{names:?}");
        for name in names {
            let shown = if text.contains(&format!("{name}_total")) {
                format!("`{name}_total`")
            } else {
                format!("`{name}`")
            };
            assert!(docs.contains(&shown), "{shown} is not in docs/metrics.md");
        }
    }

    #[test]
    fn a_tcp_connection_is_open_until_its_guard_drops() {
        let m = Metrics::new();
        let svc = ServiceName::parse("mail").expect("name");
        let line = |n: u32| {
            format!(r#"weft_tcp_open_connections{{direction="outbound",service="mail"}} {n}"#)
        };
        let a = m.open_tcp_connection(Direction::outbound, &svc);
        let b = m.open_tcp_connection(Direction::outbound, &svc);
        assert!(m.render().lines().any(|l| l == line(2)), "{}", m.render());
        drop(a);
        drop(b);
        let text = m.render();
        assert!(text.lines().any(|l| l == line(0)), "{text}");
        assert!(
            text.contains(r#"weft_tcp_connections_total{direction="outbound",service="mail"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn clearing_endpoints_forgets_services_gone() {
        let m = Metrics::new();
        let svc = ServiceName::parse("users").expect("name");
        m.set_endpoints(&svc, 1, 0);
        m.clear_endpoints();
        assert!(!m.render().contains("weft_endpoints{"), "{}", m.render());
    }

    #[test]
    fn an_interned_route_counts_into_the_same_series_as_a_lookup() {
        let m = Metrics::new();
        let names = super::super::RouteNames::new();
        let svc = ServiceName::parse("users").expect("name");
        let labels = |route| RequestLabels {
            direction: Direction::inbound,
            service: svc.clone(),
            route,
        };
        // Twice through the route's own instruments, and once through an
        // equal route interned elsewhere (its own instruments, taken from
        // the same families): one series each.
        let interned = labels(names.grpc(true, &svc, "/u.Users/Get"));
        for _ in 0..2 {
            m.count_request(&interned);
            m.observe_duration(&interned, Duration::from_millis(1));
            m.count_response(&interned, 200, Some(GrpcCode::Ok), "");
        }
        m.count_response(&interned, 200, Some(GrpcCode::Unavailable), "");
        let elsewhere = super::super::RouteNames::new();
        let other = labels(elsewhere.grpc(true, &svc, "/u.Users/Get"));
        m.count_request(&other);
        let text = m.render();
        let series = r#"direction="inbound",service="users",route="/u.Users/Get""#;
        for line in [
            format!("weft_requests_total{{{series}}} 3"),
            format!("weft_request_duration_seconds_count{{{series}}} 2"),
            format!(r#"weft_responses_total{{{series},status="200",grpc_status="0",error=""}} 2"#),
            format!(r#"weft_responses_total{{{series},status="200",grpc_status="14",error=""}} 1"#),
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }
}
