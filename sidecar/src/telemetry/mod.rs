//! What the sidecar tells about the traffic it carries: the Prometheus
//! metrics ([`metrics`]), OpenTelemetry spans (W3C trace context read and
//! propagated), the access log, the `route` label's bounded names, and the
//! traffic summary sent to the control plane for `weftctl top` and the
//! dashboard.
//! Everything is decided once per request, in the exchange
//! (`proxy::exchange`), and recorded once, when the response ends.

pub mod access;
pub mod context;
pub mod metrics;
pub mod routes;
pub mod tracer;
pub mod traffic;

use std::sync::Arc;

pub use metrics::Metrics;
pub use routes::{Route, RouteNames};
pub use tracer::{PemIdentity, Tracer, TracerError, TracingConfig};
pub use traffic::Traffic;

/// Shared by every listener of one sidecar.
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    /// `None` without `--otlp-endpoint`: no spans, trace headers untouched.
    pub tracer: Option<Tracer>,
    /// `--access-log`.
    pub access_log: bool,
    pub routes: RouteNames,
    /// Totals for `weftctl top` and the dashboard.
    pub traffic: Traffic,
}

impl Telemetry {
    pub fn new(metrics: Arc<Metrics>, tracer: Option<Tracer>, access_log: bool) -> Self {
        Telemetry {
            metrics,
            tracer,
            access_log,
            routes: RouteNames::new(),
            traffic: Traffic::default(),
        }
    }

    /// Exports the spans still queued (at shutdown).
    pub async fn flush(&self) {
        if let Some(t) = &self.tracer {
            t.shutdown().await;
        }
    }
}
