//! The routing table: an immutable snapshot of every service the sidecar
//! knows, swapped atomically when config changes. Requests read it without a
//! lock; a request for a service not in it subscribes and waits, boundedly.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use weft_proto::name::ServiceName;
use weft_proto::protocol::LoadBalancer;

use crate::endpoint::{ConnectTarget, Connector, Endpoint, Peer, prefer_second};
use crate::error::ProxyError;
use crate::metrics::{EndpointLabels, Metrics};
use crate::model::{Health, ServicePolicy, ServiceState};
use crate::resilience::RoutePolicy;
use crate::resilience::breaker::{Admit, Transition};
use crate::resilience::budget::RetryBudget;
use crate::resilience::limit::Limit;

/// What lives across config updates for one service: the retry budget and
/// the request counts the limits apply to.
pub struct Runtime {
    pub budget: RetryBudget,
    /// Requests waiting for their response's headers (`maxConcurrentRequests`).
    pub concurrent: Limit,
    /// Requests waiting for a connection or a stream (`maxPendingRequests`).
    pub pending: Limit,
    /// Recent latencies: the p95 that sets the hedge delay.
    pub latencies: crate::resilience::hedge::Latencies,
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
    ready: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
    /// How many of `ready` are ejected now.
    ejected: AtomicUsize,
    pub runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    events: Option<mpsc::UnboundedSender<EjectionEvent>>,
}

impl Target {
    /// Picks the endpoint for one request.
    pub fn pick(&self) -> Option<Pick> {
        self.pick_excluding(&[])
    }

    /// Whether so many endpoints are ejected that ejection is ignored (panic
    /// mode: better to spread over all than to overload the few left).
    fn panic(&self) -> bool {
        let n = self.ready.len();
        let ejected = self.ejected.load(Ordering::Relaxed).min(n);
        ejected == n
            || ejected * 100 > n * self.policy.resilience.breaker.max_ejected_percent as usize
    }

    /// Picks an endpoint, avoiding `tried` (a retry goes elsewhere when it
    /// can) and ejected ones (unless in panic mode).
    pub fn pick_excluding(&self, tried: &[Arc<str>]) -> Option<Pick> {
        let n = self.ready.len();
        if n == 0 {
            return None;
        }
        let panic = self.panic();
        let now = Instant::now();
        // May this endpoint take the request? (Marks a due probe as taken.)
        let admit = |e: &Arc<Endpoint>| -> Admit {
            if tried.contains(&e.spec.addr) && tried.len() < n {
                return Admit::No;
            }
            if panic {
                Admit::Yes
            } else {
                e.peer.outlier.admit(now)
            }
        };
        let probe = |e: &Arc<Endpoint>| Pick {
            endpoint: e.clone(),
            probe: true,
        };
        let yes = |e: &Arc<Endpoint>| Pick {
            endpoint: e.clone(),
            probe: false,
        };
        match self.policy.balance {
            LoadBalancer::RoundRobin => {
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                for k in 0..n {
                    let e = &self.ready[(start + k) % n];
                    match admit(e) {
                        Admit::Yes => return Some(yes(e)),
                        Admit::Probe => return Some(probe(e)),
                        Admit::No => {}
                    }
                }
                Some(yes(&self.ready[start % n]))
            }
            LoadBalancer::P2cEwma => {
                // Power of two choices among admissible endpoints: two drawn at
                // random, the lower peak-EWMA cost (per unit of weight) wins.
                let mut found: Vec<&Arc<Endpoint>> = Vec::with_capacity(2);
                let mut draws = 0;
                while found.len() < 2 && draws < 8 {
                    draws += 1;
                    let e = &self.ready[crate::rand::below(n)];
                    if found.iter().any(|f| Arc::ptr_eq(f, e)) {
                        continue;
                    }
                    match admit(e) {
                        Admit::Yes => found.push(e),
                        Admit::Probe => return Some(probe(e)),
                        Admit::No => {}
                    }
                }
                if found.len() < 2 {
                    // Few admissible: look at every endpoint once.
                    for e in &self.ready {
                        if found.len() == 2 {
                            break;
                        }
                        if found.iter().any(|f| Arc::ptr_eq(f, e)) {
                            continue;
                        }
                        match admit(e) {
                            Admit::Yes => found.push(e),
                            Admit::Probe => return Some(probe(e)),
                            Admit::No => {}
                        }
                    }
                }
                match found.as_slice() {
                    [] => Some(yes(&self.ready[crate::rand::below(n)])),
                    [one] => Some(yes(one)),
                    [a, b, ..] => {
                        let second = prefer_second(
                            (&a.peer.load, a.spec.weight),
                            (&b.peer.load, b.spec.weight),
                        );
                        Some(yes(if second { b } else { a }))
                    }
                }
            }
        }
    }

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
    fn publish_ejected(&self) {
        self.metrics
            .ejected_endpoints
            .get_or_create(&crate::metrics::ServiceLabels {
                service: self.name.clone(),
            })
            .set(self.ejected.load(Ordering::Relaxed) as i64);
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
        self.metrics
            .ejections
            .get_or_create(&crate::metrics::ServiceLabels {
                service: self.name.clone(),
            })
            .inc();
    }

    pub fn ready_count(&self) -> usize {
        self.ready.len()
    }

    /// How many of the ready endpoints are ejected now.
    pub fn ejected_count(&self) -> usize {
        self.ejected.load(Ordering::Relaxed)
    }
}

/// What the table says about a name.
#[derive(Clone)]
pub enum Entry {
    Known(Arc<Target>),
    /// The control plane said there is no such service.
    Unknown,
}

#[derive(Default)]
pub struct Table {
    services: HashMap<ServiceName, Entry>,
}

impl Table {
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.services.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ServiceName, &Entry)> {
        self.services.iter()
    }
}

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
        self.metrics.endpoints.clear();
        for (name, state) in known {
            let mut endpoints = Vec::with_capacity(state.endpoints.len());
            let mut ready = Vec::with_capacity(state.endpoints.len());
            let (mut healthy, mut unhealthy) = (0i64, 0i64);
            for spec in state.endpoints.values() {
                let key = ConnectTarget {
                    addr: spec.addr.clone(),
                    service: name.clone(),
                    alpn: crate::endpoint::Alpn::H2,
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
            for (health, n) in [("healthy", healthy), ("unhealthy", unhealthy)] {
                self.metrics
                    .endpoints
                    .get_or_create(&EndpointLabels {
                        service: name.clone(),
                        health,
                    })
                    .set(n);
            }
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

/// The live table plus the way to learn services not in it yet.
pub struct Routes {
    table: ArcSwap<Table>,
    changed: watch::Sender<u64>,
    /// Asks the discovery client to subscribe; `None` with a static config.
    subscribe: Option<mpsc::UnboundedSender<ServiceName>>,
    asked: Mutex<HashSet<ServiceName>>,
}

impl Routes {
    pub fn new(subscribe: Option<mpsc::UnboundedSender<ServiceName>>) -> Self {
        Routes {
            table: ArcSwap::from_pointee(Table::default()),
            changed: watch::channel(0).0,
            subscribe,
            asked: Mutex::new(HashSet::new()),
        }
    }

    pub fn load(&self) -> Arc<Table> {
        self.table.load_full()
    }

    /// Installs a new table; requests already routed keep the old one.
    pub fn store(&self, table: Table) {
        self.table.store(Arc::new(table));
        self.changed.send_modify(|v| *v += 1);
    }

    /// Finds `name`, learning it from the control plane if needed, for at
    /// most `wait`. Fails fast when the control plane says it does not exist.
    pub async fn resolve(&self, name: &str, wait: Duration) -> Result<Arc<Target>, ProxyError> {
        if let Some(found) = self.lookup(name)? {
            return Ok(found);
        }
        let service =
            ServiceName::parse(name).map_err(|_| ProxyError::UnknownService(name.into()))?;
        let Some(tx) = &self.subscribe else {
            return Err(ProxyError::UnknownService(name.into()));
        };
        let mut changed = self.changed.subscribe();
        let first = self
            .asked
            .lock()
            .map(|mut a| a.insert(service.clone()))
            .unwrap_or(true);
        if first {
            let _ = tx.send(service);
        }
        let deadline = Instant::now() + wait;
        loop {
            if let Some(found) = self.lookup(name)? {
                return Ok(found);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => continue,
                _ => return Err(ProxyError::DiscoveryTimeout(name.into())),
            }
        }
    }

    fn lookup(&self, name: &str) -> Result<Option<Arc<Target>>, ProxyError> {
        match self.table.load().get(name) {
            Some(Entry::Known(t)) => Ok(Some(t.clone())),
            Some(Entry::Unknown) => Err(ProxyError::UnknownService(name.into())),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::TcpConnector;
    use crate::model::EndpointSpec;
    use std::collections::BTreeMap;
    use weft_proto::labels::Labels;

    fn state(balance: LoadBalancer, addrs: &[(&str, Health)]) -> ServiceState {
        let mut endpoints = BTreeMap::new();
        for (a, h) in addrs {
            let id: Arc<str> = (*a).into();
            endpoints.insert(
                id.clone(),
                EndpointSpec {
                    id,
                    addr: (*a).into(),
                    labels: Labels::new(),
                    health: *h,
                    weight: 1,
                },
            );
        }
        ServiceState {
            policy: ServicePolicy {
                balance,
                ..Default::default()
            },
            endpoints,
        }
    }

    fn builder() -> TableBuilder {
        TableBuilder::new(
            Arc::new(TcpConnector {
                timeout: Duration::from_secs(1),
            }),
            Arc::new(Metrics::new()),
        )
    }

    fn target(t: &Table, n: &str) -> Arc<Target> {
        match t.get(n) {
            Some(Entry::Known(t)) => t.clone(),
            _ => panic!("{n} not known"),
        }
    }

    #[tokio::test]
    async fn unhealthy_endpoints_get_no_traffic_and_rr_alternates() {
        let name = ServiceName::parse("a").expect("name");
        let s = state(
            LoadBalancer::RoundRobin,
            &[
                ("127.0.0.1:1", Health::Healthy),
                ("127.0.0.1:2", Health::Unhealthy),
                ("127.0.0.1:3", Health::Unknown),
            ],
        );
        let t = builder().build([(&name, &s)].into_iter(), std::iter::empty());
        let t = target(&t, "a");
        let picks: Vec<_> = (0..4)
            .map(|_| t.pick().map(|e| e.endpoint.spec.addr.to_string()))
            .collect();
        assert!(picks.iter().all(|p| p.as_deref() != Some("127.0.0.1:2")));
        assert_ne!(picks[0], picks[1]);
        assert_eq!(picks[0], picks[2]);
    }

    #[tokio::test]
    async fn p2c_prefers_the_less_loaded_endpoint() {
        let name = ServiceName::parse("a").expect("name");
        let s = state(
            LoadBalancer::P2cEwma,
            &[
                ("127.0.0.1:1", Health::Healthy),
                ("127.0.0.1:2", Health::Healthy),
            ],
        );
        let t = builder().build([(&name, &s)].into_iter(), std::iter::empty());
        let t = target(&t, "a");
        let busy = t.endpoints[0].peer.load.clone();
        let _guards: Vec<_> = (0..5).map(|_| busy.start()).collect();
        for _ in 0..50 {
            assert_eq!(
                t.pick()
                    .map(|e| e.endpoint.spec.addr.to_string())
                    .as_deref(),
                Some("127.0.0.1:2")
            );
        }
    }

    #[tokio::test]
    async fn peers_survive_rebuilds() {
        let name = ServiceName::parse("a").expect("name");
        let mut b = builder();
        let s1 = state(LoadBalancer::P2cEwma, &[("127.0.0.1:1", Health::Healthy)]);
        let t1 = b.build([(&name, &s1)].into_iter(), std::iter::empty());
        let s2 = state(
            LoadBalancer::P2cEwma,
            &[
                ("127.0.0.1:1", Health::Unhealthy),
                ("127.0.0.1:2", Health::Healthy),
            ],
        );
        let t2 = b.build([(&name, &s2)].into_iter(), std::iter::empty());
        let p1 = &target(&t1, "a").endpoints[0].peer;
        let p2 = &target(&t2, "a").endpoints[0].peer;
        assert!(Arc::ptr_eq(p1, p2));
    }

    #[tokio::test(start_paused = true)]
    async fn resolve_waits_boundedly_and_fails_fast_on_unknown() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let routes = Arc::new(Routes::new(Some(tx)));
        // Not known and never answered: times out after the wait.
        let r = routes.resolve("b", Duration::from_millis(500)).await;
        assert!(matches!(r, Err(ProxyError::DiscoveryTimeout(_))));
        assert_eq!(rx.recv().await.map(|n| n.to_string()).as_deref(), Some("b"));
        // Answered "unknown" while waiting: fails at once.
        let r2 = routes.clone();
        let waiting = tokio::spawn(async move { r2.resolve("c", Duration::from_secs(60)).await });
        let c = ServiceName::parse("c").expect("name");
        tokio::task::yield_now().await;
        routes.store(builder().build(std::iter::empty(), [&c].into_iter()));
        assert!(matches!(
            waiting.await,
            Ok(Err(ProxyError::UnknownService(_)))
        ));
        // Names that cannot be services are never asked for.
        assert!(matches!(
            routes.resolve("127.0.0.1:9", Duration::from_secs(1)).await,
            Err(ProxyError::UnknownService(_))
        ));
    }
}
