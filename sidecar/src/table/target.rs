//! A service as the balancer sees it ([`Target`]): its endpoints, the
//! policy they are used under, what lives across config updates (retry
//! budget, request counts, latencies: [`Runtime`]), and how each attempt's
//! result reaches the endpoint's outlier detection (ejections counted,
//! capped at the service's share, and told to the control plane).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tokio::time::Instant;
use weft_proto::name::ServiceName;

use crate::endpoint::Endpoint;
use crate::model::ServicePolicy;
use crate::model::policy::RoutePolicy;
use crate::resilience::breaker::Transition;
use crate::resilience::budget::RetryBudget;
use crate::resilience::hedge::Latencies;
use crate::resilience::limit::Limit;
use crate::telemetry::metrics::Metrics;

/// What lives across config updates for one service: the retry budget and
/// the request counts the limits apply to.
pub struct Runtime {
    pub budget: RetryBudget,
    /// Requests waiting for their response's headers (`maxConcurrentRequests`).
    pub concurrent: Limit,
    /// Requests waiting for a connection or a stream (`maxPendingRequests`).
    pub pending: Limit,
    /// Recent latencies: the p95 that sets the hedge delay.
    pub latencies: Latencies,
}

/// Outlier detection ejected (`until`: `Some`) or restored an endpoint: told
/// to the control plane, so that `weftctl get instances` shows it.
#[derive(Debug, Clone)]
pub struct EjectionEvent {
    pub service: ServiceName,
    pub instance: Arc<str>,
    pub until: Option<std::time::SystemTime>,
}

/// The endpoint picked for one try.
pub struct Pick {
    pub endpoint: Arc<Endpoint>,
    /// Half-open: this try is the one probe of an ejected endpoint.
    pub probe: bool,
}

/// A service and its endpoints, ready for balancing.
pub struct Target {
    pub name: ServiceName,
    pub policy: ServicePolicy,
    /// The policy of the service's default route, built once per table.
    pub route_policy: Arc<RoutePolicy>,
    /// Every endpoint, healthy or not.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Those that may receive traffic (healthy or not checked).
    pub(super) ready: Vec<Arc<Endpoint>>,
    /// Round robin's next turn.
    pub(super) next: AtomicUsize,
    /// How many of `ready` are ejected now.
    pub(super) ejected: AtomicUsize,
    pub runtime: Arc<Runtime>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) events: Option<mpsc::UnboundedSender<EjectionEvent>>,
}

impl Target {
    /// Feeds one try's result to its endpoint's outlier detection.
    pub fn report(&self, pick: &Pick, success: bool) {
        let cfg = &self.policy.resilience.breaker;
        let now = Instant::now();
        let e = &pick.endpoint;
        match e.peer.outlier.record(success, pick.probe, now, cfg) {
            Transition::None => {}
            Transition::WouldEject => {
                // Never eject more than the allowed share of the endpoints.
                let n = self.ready.len();
                let ejected = self.ejected.load(Ordering::Relaxed);
                if (ejected + 1) * 100 <= n * cfg.max_ejected_percent as usize {
                    let until = e.peer.outlier.eject(now, cfg);
                    self.ejected.fetch_add(1, Ordering::Relaxed);
                    self.count_ejection();
                    self.publish_ejected();
                    self.tell(e, Some(until));
                    tracing::warn!(service = %self.name, endpoint = %e.spec.id, for_ms = until.saturating_duration_since(now).as_millis() as u64, "endpoint ejected");
                } else {
                    tracing::debug!(service = %self.name, endpoint = %e.spec.id, "would eject, but the service cannot spare another endpoint");
                }
            }
            Transition::Restored => {
                self.ejected.fetch_sub(1, Ordering::Relaxed);
                self.publish_ejected();
                self.tell(e, None);
                tracing::info!(service = %self.name, endpoint = %e.spec.id, "endpoint restored after a successful probe");
            }
            Transition::Reejected(until) => {
                self.count_ejection();
                self.tell(e, Some(until));
                tracing::warn!(service = %self.name, endpoint = %e.spec.id, for_ms = until.saturating_duration_since(now).as_millis() as u64, "probe failed; endpoint ejected again");
            }
        }
    }

    /// Publishes how many endpoints are ejected now.
    pub(super) fn publish_ejected(&self) {
        self.metrics
            .set_ejected_endpoints(&self.name, self.ejected.load(Ordering::Relaxed));
    }

    fn tell(&self, e: &Endpoint, until: Option<Instant>) {
        if let Some(tx) = &self.events {
            let now = Instant::now();
            let until =
                until.map(|u| std::time::SystemTime::now() + u.saturating_duration_since(now));
            let _ = tx.send(EjectionEvent {
                service: self.name.clone(),
                instance: e.spec.id.clone(),
                until,
            });
        }
    }

    fn count_ejection(&self) {
        self.metrics.count_ejection(&self.name);
    }

    pub fn ready_count(&self) -> usize {
        self.ready.len()
    }
}
