//! Building tables from what the control plane (or a static file) says:
//! each service's endpoints become a [`Target`], keeping each peer (its
//! connection, its load history, its outlier state) and each service's
//! [`Runtime`] for as long as something still lists them, so that a config
//! update drops no connection and forgets no budget.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::sync::mpsc;
use weft_proto::name::ServiceName;

use super::target::{EjectionEvent, Runtime, Target};
use super::{Entry, Table};
use crate::endpoint::{Alpn, ConnectTarget, Connector, Endpoint, Peer};
use crate::model::policy::RoutePolicy;
use crate::model::{Health, ServiceState};
use crate::resilience::budget::RetryBudget;
use crate::resilience::limit::Limit;
use crate::telemetry::metrics::Metrics;

/// Builds tables, keeping each peer (its connection and its load) for as
/// long as some service still lists it.
pub struct TableBuilder {
    connector: Arc<dyn Connector>,
    peers: HashMap<ConnectTarget, Arc<Peer>>,
    runtimes: HashMap<ServiceName, Arc<Runtime>>,
    metrics: Arc<Metrics>,
    events: Option<mpsc::UnboundedSender<EjectionEvent>>,
}

impl TableBuilder {
    pub fn new(connector: Arc<dyn Connector>, metrics: Arc<Metrics>) -> Self {
        TableBuilder {
            connector,
            peers: HashMap::new(),
            runtimes: HashMap::new(),
            metrics,
            events: None,
        }
    }

    /// Tells ejections and restorations to `tx`.
    pub fn with_events(mut self, tx: mpsc::UnboundedSender<EjectionEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// A table of `known` services plus the names known not to exist.
    pub fn build<'a>(
        &mut self,
        known: impl Iterator<Item = (&'a ServiceName, &'a ServiceState)>,
        unknown: impl Iterator<Item = &'a ServiceName>,
    ) -> Table {
        let mut peers = HashMap::new();
        let mut runtimes = HashMap::new();
        let mut services = HashMap::new();
        self.metrics.clear_endpoints();
        for (name, state) in known {
            let mut endpoints = Vec::with_capacity(state.endpoints.len());
            let mut ready = Vec::with_capacity(state.endpoints.len());
            let (mut healthy, mut unhealthy) = (0i64, 0i64);
            for spec in state.endpoints.values() {
                let key = ConnectTarget {
                    addr: spec.addr.clone(),
                    service: name.clone(),
                    alpn: Alpn::H2,
                };
                let peer =
                    self.peers.get(&key).cloned().unwrap_or_else(|| {
                        Arc::new(Peer::new(key.clone(), self.connector.clone()))
                    });
                peers.insert(key, peer.clone());
                let e = Arc::new(Endpoint {
                    spec: spec.clone(),
                    peer,
                });
                if spec.health == Health::Unhealthy {
                    unhealthy += 1;
                } else {
                    healthy += 1;
                    ready.push(e.clone());
                }
                endpoints.push(e);
            }
            self.metrics.set_endpoints(name, healthy, unhealthy);
            // The budget and counts outlive config updates (a new budget
            // only when its settings change).
            let budget_cfg = state.policy.resilience.retry.budget;
            let runtime = match self.runtimes.get(name) {
                Some(r) if r.budget.config() == budget_cfg => r.clone(),
                _ => Arc::new(Runtime {
                    budget: RetryBudget::new(budget_cfg),
                    concurrent: Limit::default(),
                    pending: Limit::default(),
                    latencies: Default::default(),
                }),
            };
            runtimes.insert(name.clone(), runtime.clone());
            let ejected = ready.iter().filter(|e| e.peer.outlier.is_ejected()).count();
            let target = Target {
                name: name.clone(),
                route_policy: Arc::new(RoutePolicy::of_service(&state.policy.resilience)),
                policy: state.policy.clone(),
                endpoints,
                ready,
                next: AtomicUsize::new(0),
                ejected: AtomicUsize::new(ejected),
                runtime,
                metrics: self.metrics.clone(),
                events: self.events.clone(),
            };
            target.publish_ejected();
            services.insert(name.clone(), Entry::Known(Arc::new(target)));
        }
        for name in unknown {
            services.entry(name.clone()).or_insert(Entry::Unknown);
        }
        // Peers no service lists any more are dropped here; their connections
        // close once the requests still using them finish.
        self.peers = peers;
        self.runtimes = runtimes;
        Table { services }
    }
}
