//! The control plane's Prometheus metrics (served on `--admin` at `/metrics`).
//!
//! Names are stable and documented in docs/metrics.md.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::catalog::Catalog;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    pub full: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResumeLabels {
    /// unchanged | partial | full
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApplyLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssueLabels {
    pub result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub sidecars_connected: Gauge,
    pub pushes: Family<PushLabels, Counter>,
    pub nacks: Counter,
    /// Reconnected sidecars' streams resumed, by how (`resume.rs`).
    pub resumes: Family<ResumeLabels, Counter>,
    /// From an update sent to its ACK or NACK.
    pub push_duration: Histogram,
    pub applies: Family<ApplyLabels, Counter>,
    pub issued: Family<IssueLabels, Counter>,
    /// 1 while this replica is the elected one (shared store only).
    pub leader: Gauge,
    /// 1 while the store is reachable and this replica caught up with it
    /// (always 1 on the embedded store).
    pub store_connected: Gauge,
    instances: Gauge,
    services: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("weft_control_plane");
        let sidecars_connected = Gauge::default();
        registry.register(
            "sidecars_connected",
            "Sidecars with an open discovery stream",
            sidecars_connected.clone(),
        );
        let pushes = Family::<PushLabels, Counter>::default();
        registry.register(
            "pushes",
            "Discovery updates sent to sidecars (full: the first state on a stream)",
            pushes.clone(),
        );
        let nacks = Counter::default();
        registry.register("nacks", "Updates a sidecar rejected", nacks.clone());
        let resumes = Family::<ResumeLabels, Counter>::default();
        registry.register(
            "resumes",
            "Streams of reconnected sidecars resumed from what they hold (unchanged: nothing resent; partial: only what differs; full: nothing matched)",
            resumes.clone(),
        );
        // 0.5 ms .. 8 s: a push on loopback is answered in about a
        // millisecond; seconds mean a sidecar or the network is struggling.
        let push_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 15),
        );
        registry.register(
            "push_duration_seconds",
            "Time from sending an update to a sidecar to its ACK or NACK",
            push_duration.clone(),
        );
        let applies = Family::<ApplyLabels, Counter>::default();
        registry.register(
            "applies",
            "Apply requests by outcome (ok, invalid, error)",
            applies.clone(),
        );
        let issued = Family::<IssueLabels, Counter>::default();
        registry.register(
            "certificates",
            "Certificate requests by result (issued, refused, busy: told to retry while the signing slots and their line were full)",
            issued.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "leader",
            "1 on the replica elected to run the background sweeps (etcd store)",
            leader.clone(),
        );
        let store_connected = Gauge::default();
        registry.register(
            "store_connected",
            "1 while the store is reachable and this replica has caught up with it",
            store_connected.clone(),
        );
        let instances = Gauge::default();
        registry.register("instances", "Instances in the catalog", instances.clone());
        let services = Gauge::default();
        registry.register(
            "services",
            "Services with a resource or an instance",
            services.clone(),
        );
        Metrics {
            registry,
            sidecars_connected,
            pushes,
            nacks,
            resumes,
            push_duration,
            applies,
            issued,
            leader,
            store_connected,
            instances,
            services,
        }
    }

    /// Prometheus text exposition, with catalog gauges read now.
    pub fn render(&self, catalog: &Catalog) -> String {
        let counts = catalog.counts();
        self.instances.set(counts.instances as i64);
        self.services.set(counts.services as i64);
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
