//! The routing table: an immutable snapshot of every service the sidecar
//! knows, swapped atomically when config changes. Requests read it without a
//! lock; a request for a service not in it subscribes and waits, boundedly.
//!
//! - `target.rs`: a service as the balancer sees it, and outlier reports;
//! - `balance.rs`: which endpoint takes an attempt;
//! - `build.rs`: tables built from config, keeping peers across updates;
//! - `routes.rs`: a service's routes with their rules' backends resolved.

mod balance;
mod build;
mod routes;
mod target;

pub use build::TableBuilder;
pub use routes::{Backend, Backends, Choice, RuleRuntime, ServiceRoutes};
pub use target::{EjectionEvent, Pick, Runtime, Target};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use weft_proto::name::{MAX_WANTED, ServiceName};

use crate::error::ProxyError;
use crate::model::NameMap;

/// What the table says about a name.
#[derive(Clone)]
pub enum Entry {
    Known(Arc<Target>),
    /// The control plane said there is no such service.
    Unknown,
}

#[derive(Default)]
pub struct Table {
    /// The services the control plane sent and the names this sidecar
    /// asked it about (at most [`MAX_WANTED`]): names an app made to
    /// collide (`NameMap` hashes with FNV) cost a scan of those at worst.
    services: NameMap<Entry>,
    /// The routes of the services that have some.
    routes: NameMap<Arc<ServiceRoutes>>,
}

impl Table {
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.services.get(name)
    }

    /// The routes attached to a service; `None` when it has none.
    pub fn routes(&self, name: &str) -> Option<&Arc<ServiceRoutes>> {
        self.routes.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ServiceName, &Entry)> {
        self.services.iter()
    }
}

/// A service found in the table.
pub struct Resolved {
    pub target: Arc<Target>,
    /// Its routes, when it has some.
    pub routes: Option<Arc<ServiceRoutes>>,
}

/// The live table plus the way to learn services not in it yet.
pub struct Routes {
    table: ArcSwap<Table>,
    changed: watch::Sender<u64>,
    /// Asks the discovery client to subscribe; `None` with a static config.
    subscribe: Option<mpsc::UnboundedSender<ServiceName>>,
    /// Every name asked for, at most [`MAX_WANTED`].
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
    pub async fn resolve(&self, name: &str, wait: Duration) -> Result<Resolved, ProxyError> {
        if let Some(found) = self.lookup(name)? {
            return Ok(found);
        }
        let service =
            ServiceName::parse(name).map_err(|_| ProxyError::UnknownService(name.into()))?;
        let Some(tx) = &self.subscribe else {
            return Err(ProxyError::UnknownService(name.into()));
        };
        let mut changed = self.changed.subscribe();
        let first = match self.asked.lock() {
            // The control plane would keep no more for this sidecar: the
            // name could only wait out the timeout, and be kept here.
            Ok(asked) if asked.len() >= MAX_WANTED && !asked.contains(&service) => {
                return Err(ProxyError::NoRoute(format!(
                    "{name:?} is not known here, and this sidecar has already asked the \
                     control plane for {MAX_WANTED} services, the most one may ask for"
                )));
            }
            Ok(mut asked) => asked.insert(service.clone()),
            Err(_) => true,
        };
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

    /// The service and its routes, from one snapshot of the table.
    fn lookup(&self, name: &str) -> Result<Option<Resolved>, ProxyError> {
        let table = self.table.load();
        match table.get(name) {
            Some(Entry::Known(t)) => Ok(Some(Resolved {
                target: t.clone(),
                routes: table.routes(name).cloned(),
            })),
            Some(Entry::Unknown) => Err(ProxyError::UnknownService(name.into())),
            None => Ok(None),
        }
    }
}

/// Tables for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::endpoint::TcpConnector;
    use crate::model::{EndpointSpec, Health, ServicePolicy, ServiceState};
    use crate::telemetry::metrics::Metrics;
    use std::collections::BTreeMap;
    use weft_proto::labels::Labels;
    use weft_proto::protocol::LoadBalancer;

    /// A service balanced by `balance` over endpoints at `addrs`.
    pub fn state(balance: LoadBalancer, addrs: &[(&str, Health)]) -> ServiceState {
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
            routes: Vec::new(),
        }
    }

    /// A builder whose connector is never used by these tests.
    pub fn builder() -> TableBuilder {
        TableBuilder::new(
            Arc::new(TcpConnector {
                timeout: Duration::from_secs(1),
            }),
            Arc::new(Metrics::new()),
        )
    }

    /// The target of a known service.
    pub fn target(t: &Table, n: &str) -> Arc<Target> {
        match t.get(n) {
            Some(Entry::Known(t)) => t.clone(),
            _ => panic!("{n} not known"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{builder, state, target};
    use super::*;
    use crate::model::Health;
    use weft_proto::protocol::LoadBalancer;

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

    #[tokio::test(start_paused = true)]
    async fn at_most_max_wanted_names_are_asked_for() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let routes = Routes::new(Some(tx));
        let wait = Duration::from_millis(1);
        for i in 0..MAX_WANTED {
            let r = routes.resolve(&format!("s{i}"), wait).await;
            assert!(matches!(r, Err(ProxyError::DiscoveryTimeout(_))), "s{i}");
        }
        // One more name is refused at once, without asking or waiting.
        let before = Instant::now();
        match routes.resolve("one-more", Duration::from_secs(60)).await {
            Err(ProxyError::NoRoute(why)) => {
                assert!(
                    why.contains("\"one-more\"") && why.contains("10000"),
                    "{why}"
                )
            }
            Err(e) => panic!("refused as {e:?}"),
            Ok(_) => panic!("one-more resolved"),
        }
        assert_eq!(before.elapsed(), Duration::ZERO);
        let mut sent = 0;
        while let Ok(n) = rx.try_recv() {
            assert_eq!(n.as_str(), format!("s{sent}"));
            sent += 1;
        }
        assert_eq!(sent, MAX_WANTED);
        // A name already asked for is still waited for (not asked again),
        // and found once the control plane sends it.
        let s1 = ServiceName::parse("s1").expect("name");
        let found = routes.resolve("s1", Duration::from_secs(60));
        let answer = async {
            tokio::task::yield_now().await;
            let st = state(LoadBalancer::P2cEwma, &[("127.0.0.1:1", Health::Healthy)]);
            routes.store(builder().build([(&s1, &st)].into_iter(), std::iter::empty()));
        };
        let (found, ()) = tokio::join!(found, answer);
        assert!(found.is_ok());
        assert!(rx.try_recv().is_err());
    }
}
