//! The catalog: the one piece of shared state in the control plane. It
//! composes parts that each change for their own reasons — the applied
//! resources (`resources.rs`), the instances with their grace periods
//! (`instances.rs`), the sidecars connected now with their status and
//! traffic (`sidecars.rs`), and the ordered writer that stores instance
//! records (`persistence.rs`) — under one lock, and wakes the discovery
//! streams through a generation counter when a service's view changes
//! (`view.rs`). `explain.rs` answers `weftctl explain` from the applied
//! routes and policies.
//!
//! Locks are held only for in-memory work, never across an await or a disk
//! write. Everything in and out is a domain type; the API layer converts.

mod bounds;
mod explain;
mod graph;
mod instances;
mod persistence;
mod push;
mod resources;
mod shared;
mod sidecars;
mod stats;
mod stream;
mod top;
mod view;
mod wake;

pub use bounds::{MAX_REPORTED_TEXT, MAX_VERSION_TEXT, MAX_WANTED, clip};
pub use explain::{
    Candidate, Destination, ExplainError, ExplainQuery, Explanation, Taken, Verdict,
};
pub use graph::{
    EXPIRY_WARNING, GraphEdge, GraphNode, HISTORY, HISTORY_SLOT, HistoryPoint, MeshGraph,
    PageInstance, STALE_AFTER, ServicePage, SidecarRow,
};
pub use instances::{EjectedBy, Health, InstanceRecord, InstanceView, Registration};
pub use persistence::InstanceStore;
pub use push::{Pending, PushState};
pub use sidecars::{Nack, SidecarStatus};
pub use stats::{Counters, EDGE_HORIZON, RouteCounts, Traffic, TrafficReport};
pub use stream::SidecarStream;
pub use top::{DEFAULT_WINDOW, InstanceTop, ServiceTop, TopError, TopQuery, TopReport};
pub use view::{Endpoint, InboundPolicy, ServiceUpdate, ServiceView};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use weft_proto::time::unix_ms;

use crate::resource::{Kind, Name, Resource, ServiceSpec};
use instances::Instances;
use persistence::Persistence;
use resources::Resources;
use sidecars::Sidecars;
use view::{Generations, ViewCache};
use wake::Wakers;

/// Timing rules of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct CatalogConfig {
    /// How long an instance whose stream ended stays in the catalog, so that
    /// a sidecar reconnecting after a blip keeps its place.
    pub instance_grace: Duration,
    /// How long instances restored from the store after a control-plane
    /// restart wait for their sidecar to reconnect before they are removed.
    pub startup_grace: Duration,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            instance_grace: Duration::from_secs(10),
            startup_grace: Duration::from_secs(30),
        }
    }
}

/// A service as `ListServices` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSummary {
    pub name: Name,
    /// What its callers are sent (`None`: no resource and no instance).
    pub policy: Option<ServiceSpec>,
    pub has_resource: bool,
    pub instances: usize,
    pub healthy_instances: usize,
}

/// How much the catalog holds now (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub services: usize,
    pub instances: usize,
    pub sidecars: usize,
}

/// What interception maps to one service (see [`Catalog::address_map`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAddresses {
    pub service: Name,
    pub addresses: Vec<std::net::IpAddr>,
    pub opaque_ports: Vec<u16>,
}

impl ServiceAddresses {
    fn new(service: &Name) -> Self {
        ServiceAddresses {
            service: service.clone(),
            addresses: Vec::new(),
            opaque_ports: Vec::new(),
        }
    }
}

/// A service's view as built for its generation, shared by the streams.
pub type SharedView = (Name, u64, Arc<ServiceView>);

/// The parts, under the catalog's one lock.
#[derive(Default)]
struct Parts {
    resources: Resources,
    instances: Instances,
    sidecars: Sidecars,
    generations: Generations,
    /// Views as last built, by generation (see [`ViewCache`]).
    views: ViewCache,
    /// The address map as of a catalog generation, shared by every stream
    /// that is sent it: rebuilt at most once per change, and kept (the same
    /// `Arc`) while equal, so that a stream can tell it unchanged by pointer.
    addresses: Option<(u64, Arc<Vec<ServiceAddresses>>)>,
    /// The streams to wake per service.
    wakers: Wakers,
}

impl Parts {
    /// `name`'s view, built once per change of its generation.
    fn shared_view(&mut self, name: &Name) -> Arc<ServiceView> {
        let g = self.generations.of(name);
        if let Some(v) = self.views.get(name, g) {
            return v;
        }
        let v = Arc::new(self.view(name));
        self.views.put(name, g, v.clone());
        v
    }

    fn view(&self, name: &Name) -> ServiceView {
        let gateway = self.resources.gateway(name);
        let routing = view::routing(
            gateway,
            self.resources.routes_at(name),
            self.resources.routes_of(name),
        );
        view::build(
            name,
            self.resources.service(name),
            self.resources.policies(),
            self.instances.iter(),
            routing,
            gateway.is_some(),
        )
    }
}

pub struct Catalog {
    parts: Mutex<Parts>,
    changed: watch::Sender<u64>,
    /// Dropped with the catalog: that joins the writer thread.
    persistence: Persistence,
    config: CatalogConfig,
    next_stream: AtomicU64,
    next_version: AtomicU64,
}

impl Catalog {
    /// A catalog with no store behind it (tests).
    pub fn in_memory(config: CatalogConfig) -> Arc<Self> {
        Arc::new(Self::new(
            config,
            Vec::new(),
            Vec::new(),
            Persistence::none(),
        ))
    }

    /// The catalog a control plane had, read back from `store`: restored
    /// instances are kept for `startup_grace` waiting for their sidecars
    /// to come back, and instance changes are written back to `store`.
    pub fn restore<S: InstanceStore>(
        config: CatalogConfig,
        resources: Vec<Resource>,
        instances: Vec<InstanceRecord>,
        store: S,
    ) -> std::io::Result<Arc<Self>> {
        let persistence = Persistence::spawn(store)?;
        Ok(Arc::new(Self::new(
            config,
            resources,
            instances,
            persistence,
        )))
    }

    fn new(
        config: CatalogConfig,
        resources: Vec<Resource>,
        instances: Vec<InstanceRecord>,
        persistence: Persistence,
    ) -> Self {
        let parts = Parts {
            resources: Resources::new(resources),
            instances: Instances::restored(instances, Instant::now() + config.startup_grace),
            ..Parts::default()
        };
        if !parts.instances.is_empty() {
            tracing::info!(
                instances = parts.instances.len(),
                grace_ms = config.startup_grace.as_millis() as u64,
                "restored instances; they stay until their sidecars reconnect or the grace period ends"
            );
        }
        // Versions start at the wall clock so that they keep increasing across restarts.
        let first_version = unix_ms(SystemTime::now());
        Catalog {
            parts: Mutex::new(parts),
            changed: watch::channel(0).0,
            persistence,
            config,
            next_stream: 1.into(),
            next_version: first_version.into(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Parts> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Touches `services`, releases the lock, and wakes the streams. Writes
    /// for the store are queued before this, under the lock, so that they
    /// reach it in the order the catalog changed.
    fn changed(&self, mut parts: MutexGuard<'_, Parts>, services: &[Name]) {
        for s in services {
            parts.generations.touch(s);
        }
        parts.wakers.wake(services);
        let generation = parts.generations.current();
        drop(parts);
        self.changed.send_replace(generation);
    }

    /// Wakes whenever the catalog changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Removes instances whose grace period is over. Returns how many.
    pub fn reap(&self, now: Instant) -> usize {
        let mut parts = self.lock();
        let expired = parts.instances.reap(now);
        if expired.is_empty() {
            return 0;
        }
        for (id, service) in &expired {
            tracing::info!(instance = %id, %service, "instance removed: its sidecar did not come back");
            self.persistence.remove(id.clone());
        }
        let services: Vec<Name> = expired.iter().map(|(_, s)| s.clone()).collect();
        self.changed(parts, &services);
        expired.len()
    }

    // ----- resources -------------------------------------------------------

    /// Replaces resources in memory after they were stored.
    pub fn apply(&self, resources: &[Resource]) {
        let mut parts = self.lock();
        let touched = parts.resources.apply(resources);
        self.changed(parts, &touched);
    }

    /// Removes a resource from memory after it was deleted from the store.
    pub fn remove(&self, kind: Kind, name: &Name) {
        let mut parts = self.lock();
        let touched = parts.resources.remove(kind, name);
        self.changed(parts, &touched);
    }

    /// Every applied resource: services, then policies, then routes, each
    /// by name.
    pub fn resources(&self) -> Vec<Resource> {
        self.lock().resources.all()
    }

    // ----- reads -----------------------------------------------------------

    /// The views of the `wanted` services that changed since the
    /// generations in `seen` (all of them for an empty `seen`), each with
    /// its generation; and the catalog's generation.
    pub fn views_since(
        &self,
        wanted: &BTreeSet<Name>,
        seen: &HashMap<Name, u64>,
    ) -> (u64, Vec<(Name, u64, ServiceView)>) {
        let parts = self.lock();
        let views = wanted
            .iter()
            .filter_map(|name| {
                let g = parts.generations.of(name);
                if seen.get(name).is_some_and(|&s| s >= g) {
                    return None;
                }
                Some((name.clone(), g, parts.view(name)))
            })
            .collect();
        (parts.generations.current(), views)
    }

    /// Like [`views_since`](Self::views_since), and with them the services
    /// the views' routes send to (their backends and mirrors, and theirs in
    /// turn), added to `wanted` as if the sidecar had subscribed to them, so
    /// that it knows their endpoints when a rule picks them. `wanted` grows
    /// to at most `max` names; returns the views, by name, and the names
    /// added. A service a route no longer names stays wanted (it costs an
    /// update now and then, and breaks nothing).
    pub fn views_with_backends(
        &self,
        wanted: &mut BTreeSet<Name>,
        seen: &HashMap<Name, u64>,
        max: usize,
    ) -> (Vec<SharedView>, Vec<Name>) {
        views_with_backends(&mut self.lock(), wanted, seen, max)
    }

    /// The services with registered instances (which routes may name).
    pub fn discovered(&self) -> BTreeSet<Name> {
        let parts = self.lock();
        parts
            .instances
            .iter()
            .map(|i| i.record.service.clone())
            .collect()
    }

    /// Every service with a resource or an instance.
    pub fn services(&self) -> Vec<ServiceSummary> {
        let parts = self.lock();
        let mut names: BTreeSet<&Name> = parts.resources.service_names().collect();
        names.extend(parts.instances.iter().map(|i| &i.record.service));
        names
            .into_iter()
            .map(|n| {
                let view = parts.view(n);
                let healthy = view
                    .endpoints
                    .values()
                    .filter(|e| e.health != Health::Unhealthy)
                    .count();
                ServiceSummary {
                    name: n.clone(),
                    has_resource: parts.resources.service(n).is_some(),
                    instances: view.endpoints.len(),
                    healthy_instances: healthy,
                    policy: view.policy,
                }
            })
            .collect()
    }

    /// Every service's addresses, by service: its virtual IPs
    /// (`spec.addresses`) and its instances' IPs (callers-only instances
    /// and host names left out), for interception. Sorted, so that two
    /// equal maps compare equal.
    pub fn address_map(&self) -> Vec<ServiceAddresses> {
        address_map_of(&self.lock())
    }

    /// [`address_map`](Self::address_map), shared: built at most once per
    /// catalog change however many streams ask, and the same `Arc` while
    /// it stays equal.
    pub fn shared_address_map(&self) -> Arc<Vec<ServiceAddresses>> {
        let mut parts = self.lock();
        let g = parts.generations.current();
        if let Some((at, map)) = &parts.addresses
            && *at == g
        {
            return map.clone();
        }
        let fresh = address_map_of(&parts);
        let map = match parts.addresses.take() {
            Some((_, old)) if *old == fresh => old,
            _ => Arc::new(fresh),
        };
        parts.addresses = Some((g, map.clone()));
        map
    }

    /// Every instance, by service and id.
    pub fn instances(&self) -> Vec<InstanceView> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let wall_ms = unix_ms(wall);
        let parts = self.lock();
        let mut v: Vec<InstanceView> = parts
            .instances
            .iter()
            .map(|i| {
                let ejected_by =
                    parts
                        .sidecars
                        .ejections_of(&i.record.service, &i.record.instance_id, wall_ms);
                i.view(now, wall, ejected_by)
            })
            .collect();
        v.sort_by(|a, b| {
            (&a.record.service, &a.record.instance_id)
                .cmp(&(&b.record.service, &b.record.instance_id))
        });
        v
    }

    /// Every connected sidecar, by service and instance.
    pub fn sidecars(&self) -> Vec<SidecarStatus> {
        self.lock().sidecars.list()
    }

    /// Traffic per service (every service with an instance, or the one
    /// asked for) and per instance over the query's window.
    pub fn top(&self, query: &TopQuery) -> Result<TopReport, TopError> {
        let now = Instant::now();
        let parts = self.lock();
        if let Some(name) = &query.service
            && parts.resources.service(name).is_none()
            && !parts.instances.iter().any(|i| &i.record.service == name)
        {
            return Err(TopError::UnknownService(name.to_string()));
        }
        Ok(self.top_locked(&parts, query, now))
    }

    /// [`Catalog::top`] under a lock already held; a service asked for
    /// with neither instance nor resource comes back with no traffic.
    fn top_locked(&self, parts: &Parts, query: &TopQuery, now: Instant) -> TopReport {
        let mut services: BTreeMap<Name, top::ServiceInstances<'_>> = BTreeMap::new();
        for i in parts.instances.iter() {
            if query
                .service
                .as_ref()
                .is_some_and(|s| s != &i.record.service)
            {
                continue;
            }
            let ring = i
                .stream
                .and_then(|s| parts.sidecars.traffic(s))
                .map(|t| &t.inbound);
            services
                .entry(i.record.service.clone())
                .or_default()
                .push((i, ring));
        }
        if let Some(name) = &query.service
            && services.is_empty()
        {
            // A service with a resource but no instance (yet) is known: it
            // has no traffic rather than no existence.
            services.insert(name.clone(), Vec::new());
        }
        top::build(services, query.window, now)
    }

    /// How much the catalog holds now.
    pub fn counts(&self) -> Counts {
        let parts = self.lock();
        let mut services: BTreeSet<&Name> = parts.resources.service_names().collect();
        services.extend(parts.instances.iter().map(|i| &i.record.service));
        Counts {
            services: services.len(),
            instances: parts.instances.len(),
            sidecars: parts.sidecars.len(),
        }
    }
}

/// See [`Catalog::views_with_backends`].
fn views_with_backends(
    parts: &mut Parts,
    wanted: &mut BTreeSet<Name>,
    seen: &HashMap<Name, u64>,
    max: usize,
) -> (Vec<SharedView>, Vec<Name>) {
    let mut views = Vec::new();
    let mut added = Vec::new();
    let mut queue: Vec<Name> = wanted.iter().cloned().collect();
    while let Some(name) = queue.pop() {
        let g = parts.generations.of(&name);
        if seen.get(&name).is_some_and(|&s| s >= g) {
            continue;
        }
        let view = parts.shared_view(&name);
        for b in view.route_backends() {
            if wanted.len() < max && wanted.insert(b.clone()) {
                added.push(b.clone());
                queue.push(b.clone());
            }
        }
        views.push((name, g, view));
    }
    views.sort_by(|a, b| a.0.cmp(&b.0));
    (views, added)
}

/// Every service's addresses (see [`Catalog::address_map`]).
fn address_map_of(parts: &Parts) -> Vec<ServiceAddresses> {
    let mut map: BTreeMap<&Name, ServiceAddresses> = BTreeMap::new();
    for name in parts.resources.service_names() {
        if let Some(spec) = parts.resources.service(name) {
            let e = map
                .entry(name)
                .or_insert_with(|| ServiceAddresses::new(name));
            e.addresses.extend(&spec.addresses);
            e.opaque_ports.extend(&spec.opaque_ports);
        }
    }
    for i in parts.instances.iter().filter(|i| !i.record.no_app) {
        if let Ok(addr) = i.record.address.parse::<std::net::SocketAddr>() {
            let name = &i.record.service;
            map.entry(name)
                .or_insert_with(|| ServiceAddresses::new(name))
                .addresses
                .push(addr.ip());
        }
    }
    map.into_values()
        .filter(|s| !s.addresses.is_empty())
        .map(|mut s| {
            s.addresses.sort();
            s.addresses.dedup();
            s.opaque_ports.sort_unstable();
            s
        })
        .collect()
}

/// Removes expired instances until `shutdown` resolves.
pub async fn run_reaper(catalog: Arc<Catalog>, shutdown: impl std::future::Future<Output = ()>) {
    let cfg = catalog.config;
    let period = (cfg.instance_grace.min(cfg.startup_grace) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => { catalog.reap(Instant::now()); }
        }
    }
}

#[cfg(test)]
mod routing_tests;
#[cfg(test)]
mod tests;
