//! Building tables from what the control plane (or a static file) says:
//! each service's endpoints become a [`Target`], keeping each peer (its
//! connection, its load history, its outlier state) and each service's
//! [`Runtime`] for as long as something still lists them, so that a config
//! update drops no connection and forgets no budget. A service's routes
//! are resolved here too: their rules' backends become targets (subsets
//! included), their policy the service's with the rule's overrides.

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};

use tokio::sync::mpsc;
use weft_proto::name::ServiceName;

use weft_proto::routing::{BackendRef, Route, RouteTable, Rule};

use super::routes::{Backend, Backends, RuleRuntime, ServiceRoutes, backend_name, rule_policy};
use super::target::{EjectionEvent, Runtime, Target};
use super::{Entry, Table};
use crate::endpoint::{Alpn, ConnectTarget, Connector, Endpoint, Peer};
use crate::model::policy::RoutePolicy;
use crate::model::{Health, NameMap, ServiceState, Subset};
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
        let known: Vec<_> = known.collect();
        let mut next = Next::default();
        let mut services = NameMap::default();
        self.metrics.clear_endpoints();
        for &(name, state) in &known {
            let target = self.target(name, state, None, &mut next);
            services.insert(name.clone(), Entry::Known(target));
        }
        // Routes last: their rules point at the targets of other services
        // (and of subsets, made here when a rule names one).
        let mut routes = NameMap::default();
        for &(name, state) in known.iter().filter(|(_, s)| !s.routes.is_empty()) {
            let table = self.routes(name, state, &known, &services, &mut next);
            routes.insert(name.clone(), Arc::new(table));
        }
        for name in unknown {
            services.entry(name.clone()).or_insert(Entry::Unknown);
        }
        // Peers no service lists any more are dropped here; their connections
        // close once the requests still using them finish.
        self.peers = next.peers;
        self.runtimes = next.runtimes;
        Table { services, routes }
    }

    /// The target of a service, or of the endpoints of one of its subsets
    /// (which share the service's peers and runtime).
    fn target(
        &self,
        name: &ServiceName,
        state: &ServiceState,
        subset: Option<&Subset>,
        next: &mut Next,
    ) -> Arc<Target> {
        let mut endpoints = Vec::with_capacity(state.endpoints.len());
        let mut ready = Vec::with_capacity(state.endpoints.len());
        let (mut healthy, mut unhealthy) = (0i64, 0i64);
        let members = state.endpoints.values().filter(|e| {
            subset.is_none_or(|s| s.labels.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
        });
        for spec in members {
            let key = ConnectTarget {
                addr: spec.addr.clone(),
                service: name.clone(),
                alpn: Alpn::H2,
            };
            let peer = self
                .peers
                .get(&key)
                .cloned()
                .unwrap_or_else(|| Arc::new(Peer::new(key.clone(), self.connector.clone())));
            next.peers.insert(key, peer.clone());
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
        if subset.is_none() {
            self.metrics.set_endpoints(name, healthy, unhealthy);
        }
        let runtime = self.runtime(name, state, next);
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
        if subset.is_none() {
            target.publish_ejected();
        }
        Arc::new(target)
    }

    /// The service's runtime: the budget and counts outlive config updates
    /// (a new budget only when its settings change).
    fn runtime(&self, name: &ServiceName, state: &ServiceState, next: &mut Next) -> Arc<Runtime> {
        if let Some(r) = next.runtimes.get(name) {
            return r.clone();
        }
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
        next.runtimes.insert(name.clone(), runtime.clone());
        runtime
    }

    /// The routes attached to `name`, their rules resolved.
    fn routes(
        &self,
        name: &ServiceName,
        state: &ServiceState,
        known: &[(&ServiceName, &ServiceState)],
        services: &NameMap<Entry>,
        next: &mut Next,
    ) -> ServiceRoutes {
        let Some(Entry::Known(parent)) = services.get(name) else {
            return RouteTable::new(Vec::new());
        };
        let mut resolve = |b: &BackendRef| -> Backend {
            let subset = b.subset.as_deref();
            let target = match subset {
                None => match services.get(&b.service) {
                    Some(Entry::Known(t)) => Some(t.clone()),
                    _ => None,
                },
                Some(sub) => known
                    .iter()
                    .find(|(n, _)| *n == &b.service)
                    .and_then(|(n, s)| {
                        let spec = s.policy.subsets.iter().find(|x| x.name == sub)?;
                        Some(self.target(n, s, Some(spec), next))
                    }),
            };
            Backend {
                name: backend_name(&b.service, subset),
                target,
                weight: b.weight,
            }
        };
        let routes = state
            .routes
            .iter()
            .map(|r| Route {
                name: r.name.clone(),
                kind: r.kind,
                hostnames: r.hostnames.clone(),
                rules: r
                    .rules
                    .iter()
                    .enumerate()
                    .map(|(i, rule)| {
                        let spec = &rule.action;
                        let backends = match spec.backends.as_slice() {
                            [] => Backends::One(parent.clone()),
                            bs => Backends::Weighted(bs.iter().map(&mut resolve).collect()),
                        };
                        let mirrors = spec
                            .filters
                            .mirrors
                            .iter()
                            .map(|m| (resolve(&m.backend), m.percent))
                            .collect();
                        let runtime = RuleRuntime {
                            route: Arc::from(r.name.as_str()),
                            rule: i,
                            backends,
                            policy: Arc::new(rule_policy(&parent.route_policy, spec)),
                            filters: spec.filters.clone(),
                            mirrors,
                            requests: OnceLock::new(),
                        };
                        Rule {
                            matches: rule.matches.clone(),
                            action: Arc::new(runtime),
                        }
                    })
                    .collect(),
            })
            .collect();
        RouteTable::new(routes)
    }
}

/// What the table being built keeps from the last: peers and runtimes.
#[derive(Default)]
struct Next {
    peers: HashMap<ConnectTarget, Arc<Peer>>,
    runtimes: HashMap<ServiceName, Arc<Runtime>>,
}
