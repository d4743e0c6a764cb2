//! The sidecar's Prometheus metrics, served at `/metrics` on the admin port.
//! Names and labels are stable and documented in docs/metrics.md.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use weft_proto::name::ServiceName;

use crate::telemetry::Route;

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
pub struct ResponseLabels {
    pub direction: Direction,
    pub service: ServiceName,
    pub route: Route,
    /// HTTP status code.
    pub status: u16,
    /// gRPC status code, from headers or trailers; empty for non-gRPC.
    pub grpc_status: String,
    /// What went wrong: empty when the exchange completed; otherwise the
    /// mesh's error code (`x-weft-error`) or `stream-error`.
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub service: ServiceName,
    pub health: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpdateLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
    pub service: ServiceName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    pub direction: &'static str,
    pub result: &'static str,
    /// Why it failed; empty when it succeeded.
    pub reason: &'static str,
}

impl HandshakeLabels {
    pub fn ok(direction: &'static str) -> Self {
        HandshakeLabels {
            direction,
            result: "ok",
            reason: "",
        }
    }

    pub fn failed(direction: &'static str, reason: &'static str) -> Self {
        HandshakeLabels {
            direction,
            result: "failed",
            reason,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub service: ServiceName,
    /// The caller's service; `(unresolved)` without a mesh identity.
    pub caller: ServiceName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: ServiceName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub service: ServiceName,
    /// Why the try before failed (unavailable, connect-failure, …).
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointStateLabels {
    pub service: ServiceName,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RenewalLabels {
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub responses: Family<ResponseLabels, Counter>,
    pub latency: Family<RequestLabels, Histogram>,
    pub endpoints: Family<EndpointLabels, Gauge>,
    pub stream_state: Family<StateLabels, Gauge>,
    pub updates: Family<UpdateLabels, Counter>,
    pub app_healthy: Gauge,
    pub tcp_connections: Family<TcpLabels, Counter>,
    pub tcp_bytes_sent: Family<TcpLabels, Counter>,
    pub tcp_bytes_received: Family<TcpLabels, Counter>,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub renewals: Family<RenewalLabels, Counter>,
    pub cert_expiry: Gauge,
    pub authz_denied: Family<AuthzLabels, Counter>,
    pub retries: Family<RetryLabels, Counter>,
    pub retries_refused: Family<ServiceLabels, Counter>,
    pub ejections: Family<ServiceLabels, Counter>,
    pub overloaded: Family<ServiceLabels, Counter>,
    pub ejected_endpoints: Family<ServiceLabels, Gauge>,
    pub hedges: Family<ServiceLabels, Counter>,
    pub spans_exported: Counter,
    pub spans_dropped: Family<ReasonLabels, Counter>,
}

fn service_labels(service: &ServiceName) -> ServiceLabels {
    ServiceLabels {
        service: service.clone(),
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

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("weft");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "Requests received, by direction, service and route",
            requests.clone(),
        );
        let responses = Family::<ResponseLabels, Counter>::default();
        r.register(
            "responses",
            "Responses completed, by direction, service, route, HTTP status, gRPC status and error",
            responses.clone(),
        );
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        r.register(
            "request_duration_seconds",
            "Time from a request's headers to the end of its response",
            latency.clone(),
        );
        let endpoints = Family::<EndpointLabels, Gauge>::default();
        r.register(
            "endpoints",
            "Endpoints known per service, by health",
            endpoints.clone(),
        );
        let stream_state = Family::<StateLabels, Gauge>::default();
        r.register(
            "control_plane_stream",
            "1 for the current state of the control-plane stream (connecting, synced, stale, static)",
            stream_state.clone(),
        );
        let updates = Family::<UpdateLabels, Counter>::default();
        r.register(
            "control_plane_updates",
            "Updates from the control plane, by result (ack, nack)",
            updates.clone(),
        );
        let app_healthy = Gauge::default();
        r.register(
            "app_healthy",
            "1 when the local app passed its last health check",
            app_healthy.clone(),
        );
        let tcp_connections = Family::<TcpLabels, Counter>::default();
        r.register(
            "tcp_connections",
            "Opaque TCP connections proxied",
            tcp_connections.clone(),
        );
        let tcp_bytes_sent = Family::<TcpLabels, Counter>::default();
        r.register(
            "tcp_sent_bytes",
            "Bytes sent to the upstream of opaque TCP connections",
            tcp_bytes_sent.clone(),
        );
        let tcp_bytes_received = Family::<TcpLabels, Counter>::default();
        r.register(
            "tcp_received_bytes",
            "Bytes received from the upstream of opaque TCP connections",
            tcp_bytes_received.clone(),
        );
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        r.register(
            "tls_handshakes",
            "Mutual TLS handshakes with peers, by direction, result and reason",
            handshakes.clone(),
        );
        let renewals = Family::<RenewalLabels, Counter>::default();
        r.register(
            "certificate_renewals",
            "Certificate renewals by result",
            renewals.clone(),
        );
        let cert_expiry = Gauge::default();
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When this sidecar's certificate expires (unix seconds; 0: no certificate)",
            cert_expiry.clone(),
        );
        let authz_denied = Family::<AuthzLabels, Counter>::default();
        r.register(
            "authorization_denied",
            "Inbound requests denied by authorization, by service and caller",
            authz_denied.clone(),
        );
        let retries = Family::<RetryLabels, Counter>::default();
        r.register(
            "retries",
            "Retries sent, by service and the reason for the retry",
            retries.clone(),
        );
        let retries_refused = Family::<ServiceLabels, Counter>::default();
        r.register(
            "retries_budget_exhausted",
            "Retries not sent because the service's retry budget was spent",
            retries_refused.clone(),
        );
        let ejections = Family::<ServiceLabels, Counter>::default();
        r.register(
            "ejections",
            "Endpoints ejected by outlier detection",
            ejections.clone(),
        );
        let overloaded = Family::<ServiceLabels, Counter>::default();
        r.register(
            "overloaded",
            "Requests answered at once because a concurrency or pending limit was reached",
            overloaded.clone(),
        );
        let ejected_endpoints = Family::<ServiceLabels, Gauge>::default();
        r.register(
            "ejected_endpoints",
            "Endpoints of a service ejected now (read at scrape time)",
            ejected_endpoints.clone(),
        );
        let hedges = Family::<ServiceLabels, Counter>::default();
        r.register(
            "hedges",
            "Second copies of hedgeable calls sent after the hedge delay",
            hedges.clone(),
        );
        let spans_exported = Counter::default();
        r.register(
            "spans_exported",
            "Spans the OTLP collector accepted",
            spans_exported.clone(),
        );
        let spans_dropped = Family::<ReasonLabels, Counter>::default();
        r.register(
            "spans_dropped",
            "Spans not exported, by reason (queue-full, export-failed)",
            spans_dropped.clone(),
        );
        Metrics {
            registry: r,
            requests,
            responses,
            latency,
            endpoints,
            stream_state,
            updates,
            app_healthy,
            tcp_connections,
            tcp_bytes_sent,
            tcp_bytes_received,
            handshakes,
            renewals,
            cert_expiry,
            authz_denied,
            retries,
            retries_refused,
            ejections,
            overloaded,
            ejected_endpoints,
            hedges,
            spans_exported,
            spans_dropped,
        }
    }

    /// A request refused at once by a concurrency or pending limit.
    pub fn count_overloaded(&self, service: &ServiceName) {
        self.overloaded
            .get_or_create(&service_labels(service))
            .inc();
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

    /// A second copy of a hedgeable call sent.
    pub fn count_hedge(&self, service: &ServiceName) {
        self.hedges.get_or_create(&service_labels(service)).inc();
    }

    /// An inbound request authorization denied.
    pub fn count_denied(&self, service: &ServiceName, caller: &ServiceName) {
        let labels = AuthzLabels {
            service: service.clone(),
            caller: caller.clone(),
        };
        self.authz_denied.get_or_create(&labels).inc();
    }

    /// An opaque TCP connection proxied.
    pub fn count_tcp_connection(&self, direction: Direction, service: &ServiceName) {
        self.tcp_connections
            .get_or_create(&tcp_labels(direction, service))
            .inc();
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
    pub fn count_handshake_failed(&self, direction: &'static str, reason: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels::failed(direction, reason))
            .inc();
    }

    /// Marks `state` as the control-plane stream's current state.
    pub fn set_stream_state(&self, state: &'static str) {
        for s in ["connecting", "synced", "stale", "static"] {
            self.stream_state
                .get_or_create(&StateLabels { state: s })
                .set(i64::from(s == state));
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
