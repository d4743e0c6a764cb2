//! The catalog: the applied resources, the instances registered by sidecars,
//! and the sidecars connected now. It is the one piece of shared state in the
//! control plane; every discovery stream reads its views from here and is
//! woken by a generation counter when something changes.
//!
//! Locks are held only for in-memory work (never across an await or a disk
//! write); instance records go to the store through an ordered background
//! writer so that a restarted control plane starts from the last catalog.

mod instance;
pub mod stats;
pub mod top;
mod view;

pub use instance::{Instance, MAX_REPORTED_TEXT, MAX_WANTED, Registration, clip};
pub use stats::{Recorded, StatsError, TrafficRing};
pub use top::{TopError, TopQuery};
pub use view::ServiceView;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;
use weft_proto::time::unix_ms;
use weft_proto::v1 as pb;

use crate::resource::{AuthorizationPolicySpec, Kind, Name, Resource, ServiceSpec};
use crate::store::Store;

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

/// What one connected sidecar has been sent and has said back.
#[derive(Debug, Clone)]
pub struct SidecarStatus {
    pub service: Name,
    pub instance_id: String,
    pub address: String,
    pub sidecar_version: String,
    pub connected_since: SystemTime,
    pub subscriptions: BTreeSet<String>,
    pub sent_version: u64,
    pub applied_version: u64,
    pub nack: Option<(u64, String)>,
    pub certificate_expires_unix_ms: u64,
    /// Endpoints this sidecar's outlier detection has ejected: (service,
    /// instance id) → until (unix ms).
    pub ejections: BTreeMap<(String, String), u64>,
}

/// A change to persist, in order.
enum Persist {
    Put(pb::InstanceInfo),
    Remove(String),
}

#[derive(Default)]
struct State {
    generation: u64,
    /// `Service` resources.
    resources: BTreeMap<Name, ServiceSpec>,
    /// `AuthorizationPolicy` resources, by policy name.
    policies: BTreeMap<Name, AuthorizationPolicySpec>,
    instances: HashMap<String, Instance>,
    /// The generation at which each service (policy or endpoints) last changed.
    service_generation: HashMap<Name, u64>,
    sidecars: HashMap<u64, SidecarStatus>,
    /// Per connected stream, its sidecar's recent `TrafficStats`. Apart from
    /// `SidecarStatus` so that listing sidecars does not copy them.
    traffic: HashMap<u64, TrafficRing>,
}

impl State {
    fn touch(&mut self, service: &Name) {
        self.generation += 1;
        self.service_generation
            .insert(service.clone(), self.generation);
    }
}

pub struct Catalog {
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    persist: Option<std::sync::mpsc::Sender<Persist>>,
    /// The thread that writes `persist`'s records; joined on drop.
    writer: Option<std::thread::JoinHandle<()>>,
    config: CatalogConfig,
    next_stream: std::sync::atomic::AtomicU64,
    next_version: std::sync::atomic::AtomicU64,
}

impl Drop for Catalog {
    /// Closes the channel and waits for the writer: the records still
    /// queued reach the store, and the store (and its file lock) is released
    /// by the time the catalog is gone.
    fn drop(&mut self) {
        self.persist.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl Catalog {
    /// A catalog with no store behind it (tests).
    pub fn in_memory(config: CatalogConfig) -> Arc<Self> {
        Arc::new(Self::new(config, None, Vec::new(), Vec::new()))
    }

    /// Loads resources and instances from the store; restored instances are
    /// kept for `startup_grace` waiting for their sidecars to come back.
    pub fn load(
        config: CatalogConfig,
        store: Arc<Store>,
    ) -> Result<Arc<Self>, crate::store::StoreError> {
        let resources = store.load_resources()?;
        let instances = store.load_instances()?;
        let (tx, rx) = std::sync::mpsc::channel::<Persist>();
        let writer = std::thread::Builder::new()
            .name("weft-store-writer".into())
            .spawn(move || {
                for op in rx {
                    let r = match &op {
                        Persist::Put(i) => store.put_instance(i),
                        Persist::Remove(id) => store.remove_instance(id),
                    };
                    if let Err(e) = r {
                        tracing::error!(error = %e, "could not persist an instance record");
                    }
                }
            })
            .map_err(|e| crate::store::StoreError::Corrupt {
                key: "writer thread".into(),
                reason: e.to_string(),
            })?;
        let mut catalog = Self::new(config, Some(tx), resources, instances);
        catalog.writer = Some(writer);
        Ok(Arc::new(catalog))
    }

    fn new(
        config: CatalogConfig,
        persist: Option<std::sync::mpsc::Sender<Persist>>,
        resources: Vec<Resource>,
        instances: Vec<pb::InstanceInfo>,
    ) -> Self {
        let mut state = State::default();
        for r in resources {
            match r {
                Resource::Service(s) => {
                    state.resources.insert(s.name.clone(), s);
                }
                Resource::AuthorizationPolicy(p) => {
                    state.policies.insert(p.name.clone(), p);
                }
            }
        }
        let expires = Instant::now() + config.startup_grace;
        for info in instances {
            match Instance::restore(&info, expires) {
                Ok(i) => {
                    state.instances.insert(i.id.clone(), i);
                }
                Err(e) => {
                    tracing::warn!(instance = %info.instance_id, error = %e, "dropping a stored instance")
                }
            }
        }
        if !state.instances.is_empty() {
            tracing::info!(
                instances = state.instances.len(),
                grace_ms = config.startup_grace.as_millis() as u64,
                "restored instances; they stay until their sidecars reconnect or the grace period ends"
            );
        }
        // Versions start at the wall clock so that they keep increasing across restarts.
        let first_version = unix_ms(SystemTime::now());
        Catalog {
            state: Mutex::new(state),
            changed: watch::channel(0).0,
            persist,
            writer: None,
            config,
            next_stream: 1.into(),
            next_version: first_version.into(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn persist(&self, op: Persist) {
        if let Some(tx) = &self.persist {
            let _ = tx.send(op);
        }
    }

    fn notify(&self, generation: u64) {
        self.changed.send_replace(generation);
    }

    pub fn config(&self) -> CatalogConfig {
        self.config
    }

    /// Wakes whenever the catalog changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn next_stream_id(&self) -> u64 {
        self.next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn next_version(&self) -> u64 {
        self.next_version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    // ----- resources -------------------------------------------------------

    /// Replaces resources in memory after they were stored.
    pub fn set_resources(&self, resources: &[Resource]) {
        let mut st = self.lock();
        for r in resources {
            match r {
                Resource::Service(s) => {
                    if st.resources.get(&s.name) != Some(s) {
                        st.resources.insert(s.name.clone(), s.clone());
                        st.touch(&s.name);
                    }
                }
                Resource::AuthorizationPolicy(p) => {
                    if st.policies.get(&p.name) != Some(p) {
                        // The service it protected before, and the one now.
                        if let Some(old) = st.policies.insert(p.name.clone(), p.clone()) {
                            st.touch(&old.service);
                        }
                        st.touch(&p.service);
                    }
                }
            }
        }
        let g = st.generation;
        drop(st);
        self.notify(g);
    }

    pub fn remove_resource(&self, kind: Kind, name: &Name) {
        let mut st = self.lock();
        match kind {
            Kind::Service => {
                if st.resources.remove(name).is_some() {
                    st.touch(name);
                }
            }
            Kind::AuthorizationPolicy => {
                if let Some(p) = st.policies.remove(name) {
                    st.touch(&p.service);
                }
            }
        }
        let g = st.generation;
        drop(st);
        self.notify(g);
    }

    pub fn resources(&self) -> Vec<Resource> {
        let st = self.lock();
        let services = st.resources.values().cloned().map(Resource::Service);
        let policies = st
            .policies
            .values()
            .cloned()
            .map(Resource::AuthorizationPolicy);
        services.chain(policies).collect()
    }

    // ----- instances and sidecars -----------------------------------------

    /// A sidecar said hello on stream `stream`: (re)register its instance.
    pub fn register(
        &self,
        stream: u64,
        reg: Registration,
        wanted: BTreeSet<String>,
        certificate_expires_unix_ms: u64,
    ) {
        let now = SystemTime::now();
        let mut st = self.lock();
        let service = reg.service.clone();
        let instance = Instance::from_registration(reg, stream);
        let status = SidecarStatus {
            service: instance.service.clone(),
            instance_id: instance.id.clone(),
            address: instance.address.clone(),
            sidecar_version: instance.sidecar_version.clone(),
            connected_since: now,
            subscriptions: wanted,
            sent_version: 0,
            applied_version: 0,
            nack: None,
            certificate_expires_unix_ms,
            ejections: BTreeMap::new(),
        };
        let info = instance.to_info();
        if let Some(old) = st.instances.insert(instance.id.clone(), instance)
            && old.service != service
        {
            st.touch(&old.service);
        }
        st.sidecars.insert(stream, status);
        st.touch(&service);
        let g = st.generation;
        drop(st);
        self.persist(Persist::Put(info));
        self.notify(g);
    }

    /// The stream ended. A sidecar that said `Leave` is removed at once,
    /// otherwise its instance waits out the grace period.
    pub fn disconnect(&self, stream: u64, left: bool) {
        let mut st = self.lock();
        st.traffic.remove(&stream);
        let Some(status) = st.sidecars.remove(&stream) else {
            return;
        };
        let id = status.instance_id;
        let owned = st
            .instances
            .get(&id)
            .is_some_and(|i| i.stream == Some(stream));
        if !owned {
            return; // a newer stream took this instance over
        }
        if left {
            if let Some(i) = st.instances.remove(&id) {
                st.touch(&i.service);
                let g = st.generation;
                drop(st);
                tracing::info!(instance = %id, service = %i.service, "instance left");
                self.persist(Persist::Remove(id));
                self.notify(g);
            }
        } else if let Some(i) = st.instances.get_mut(&id) {
            i.stream = None;
            i.expires_at = Some(Instant::now() + self.config.instance_grace);
            tracing::info!(instance = %id, grace_ms = self.config.instance_grace.as_millis() as u64,
                "sidecar stream ended; instance kept for the grace period");
        }
    }

    /// Removes instances whose grace period is over. Returns how many.
    pub fn reap(&self, now: Instant) -> usize {
        let mut st = self.lock();
        let expired: Vec<String> = st
            .instances
            .values()
            .filter(|i| i.expires_at.is_some_and(|t| t <= now))
            .map(|i| i.id.clone())
            .collect();
        for id in &expired {
            if let Some(i) = st.instances.remove(id) {
                tracing::info!(instance = %id, service = %i.service, "instance removed: its sidecar did not come back");
                st.touch(&i.service);
            }
        }
        let g = st.generation;
        drop(st);
        if !expired.is_empty() {
            for id in &expired {
                self.persist(Persist::Remove(id.clone()));
            }
            self.notify(g);
        }
        expired.len()
    }

    /// The sidecar on `stream` reported its app's health.
    pub fn set_health(&self, stream: u64, health: pb::Health, detail: String) {
        let mut st = self.lock();
        let Some(id) = st.sidecars.get(&stream).map(|s| s.instance_id.clone()) else {
            return;
        };
        let Some(i) = st.instances.get_mut(&id) else {
            return;
        };
        if i.stream != Some(stream) || (i.health == health && i.health_detail == detail) {
            return;
        }
        let changed_traffic = i.health != health;
        i.health = health;
        i.health_detail = detail;
        let info = i.to_info();
        let service = i.service.clone();
        tracing::info!(instance = %id, health = health.as_str_name(), "instance health changed");
        if changed_traffic {
            st.touch(&service);
        }
        let g = st.generation;
        drop(st);
        self.persist(Persist::Put(info));
        self.notify(g);
    }

    pub fn add_subscriptions(&self, stream: u64, services: &[String]) {
        if let Some(s) = self.lock().sidecars.get_mut(&stream) {
            s.subscriptions.extend(services.iter().cloned());
        }
    }

    pub fn record_sent(&self, stream: u64, version: u64) {
        if let Some(s) = self.lock().sidecars.get_mut(&stream) {
            s.sent_version = version;
        }
    }

    pub fn record_ack(&self, stream: u64, version: u64) {
        if let Some(s) = self.lock().sidecars.get_mut(&stream) {
            s.applied_version = s.applied_version.max(version);
        }
    }

    pub fn record_certificate(&self, stream: u64, expires_unix_ms: u64) {
        if let Some(s) = self.lock().sidecars.get_mut(&stream) {
            s.certificate_expires_unix_ms = expires_unix_ms;
        }
    }

    /// The sidecar on `stream` ejected (until > 0) or restored an endpoint.
    pub fn record_ejection(
        &self,
        stream: u64,
        service: String,
        instance: String,
        until_unix_ms: u64,
    ) {
        let mut st = self.lock();
        // Only instances that exist, of the service named: anything else
        // would be kept for nothing (and a peer could fill memory with it).
        let known = st
            .instances
            .get(&instance)
            .is_some_and(|i| i.service.as_str() == service);
        if let Some(s) = st.sidecars.get_mut(&stream) {
            if until_unix_ms == 0 {
                s.ejections.remove(&(service, instance));
            } else if known {
                s.ejections.insert((service, instance), until_unix_ms);
            }
        }
    }

    /// The sidecar on `stream` reported its cumulative traffic. Malformed
    /// reports are dropped: they would only make `weftctl top` lie.
    pub fn record_stats(&self, stream: u64, stats: &pb::TrafficStats) {
        let now = Instant::now();
        let mut st = self.lock();
        if !st.sidecars.contains_key(&stream) {
            return;
        }
        match st.traffic.entry(stream).or_default().record(stats, now) {
            Ok(Recorded::Added) => {}
            Ok(Recorded::Restarted) => {
                tracing::debug!(
                    stream,
                    "traffic counters went back; starting their history over"
                )
            }
            Err(e) => tracing::debug!(stream, error = %e, "ignoring malformed traffic stats"),
        }
    }

    pub fn record_nack(&self, stream: u64, version: u64, reason: String) {
        if let Some(s) = self.lock().sidecars.get_mut(&stream) {
            s.nack = Some((version, reason));
        }
    }

    // ----- views ------------------------------------------------------------

    /// The generation at which `service` last changed (0: never).
    pub fn views_since(
        &self,
        wanted: &BTreeSet<String>,
        seen: &HashMap<String, u64>,
    ) -> (u64, Vec<(String, u64, ServiceView)>) {
        let st = self.lock();
        let mut out = Vec::new();
        for name in wanted {
            let parsed = Name::parse(name).ok();
            let g = parsed
                .as_ref()
                .and_then(|n| st.service_generation.get(n).copied())
                .unwrap_or(0);
            match seen.get(name) {
                Some(&s) if s >= g => continue,
                _ => {}
            }
            let view = match &parsed {
                Some(n) => view::build(
                    n,
                    st.resources.get(n),
                    st.policies.values(),
                    st.instances.values(),
                ),
                None => ServiceView::unknown(),
            };
            out.push((name.clone(), g, view));
        }
        (st.generation, out)
    }

    /// Traffic per service (every service with an instance, or the one
    /// asked for) and per instance over the query's window.
    pub fn top(&self, query: &TopQuery) -> Result<pb::TopResponse, TopError> {
        let now = Instant::now();
        let st = self.lock();
        let mut services: BTreeMap<Name, top::ServiceInstances<'_>> = BTreeMap::new();
        for i in st.instances.values() {
            if query.service.as_ref().is_some_and(|s| s != &i.service) {
                continue;
            }
            let ring = i.stream.and_then(|s| st.traffic.get(&s));
            services
                .entry(i.service.clone())
                .or_default()
                .push((i, ring));
        }
        if let Some(name) = &query.service
            && services.is_empty()
        {
            // A service with a resource but no instance (yet) is known: it
            // has no traffic rather than no existence.
            if !st.resources.contains_key(name) {
                return Err(TopError::UnknownService(name.to_string()));
            }
            services.insert(name.clone(), Vec::new());
        }
        Ok(top::build(services, query.window, now))
    }

    pub fn sidecars(&self) -> Vec<SidecarStatus> {
        let mut v: Vec<_> = self.lock().sidecars.values().cloned().collect();
        v.sort_by(|a, b| (&a.service, &a.instance_id).cmp(&(&b.service, &b.instance_id)));
        v
    }

    pub fn instances(&self) -> Vec<pb::InstanceInfo> {
        let now = Instant::now();
        let wall = SystemTime::now();
        let wall_ms = unix_ms(wall);
        let st = self.lock();
        let mut v: Vec<_> = st
            .instances
            .values()
            .map(|i| {
                let mut info = i.to_info();
                info.connected = i.stream.is_some();
                if let Some(t) = i.expires_at {
                    info.expires_at_unix_ms = unix_ms(wall + t.saturating_duration_since(now));
                }
                info.ejected_by = st
                    .sidecars
                    .values()
                    .filter_map(|s| {
                        let until = *s.ejections.get(&(i.service.to_string(), i.id.clone()))?;
                        (until > wall_ms).then(|| pb::EjectedBy {
                            instance_id: s.instance_id.clone(),
                            until_unix_ms: until,
                        })
                    })
                    .collect();
                info
            })
            .collect();
        v.sort_by(|a, b| (&a.service, &a.instance_id).cmp(&(&b.service, &b.instance_id)));
        v
    }

    /// Every service with a resource or an instance.
    pub fn services(&self) -> Vec<pb::ServiceInfo> {
        let st = self.lock();
        let mut names: BTreeSet<Name> = st.resources.keys().cloned().collect();
        names.extend(st.instances.values().map(|i| i.service.clone()));
        names
            .into_iter()
            .map(|n| {
                let view = view::build(
                    &n,
                    st.resources.get(&n),
                    st.policies.values(),
                    st.instances.values(),
                );
                let healthy = view
                    .endpoints
                    .values()
                    .filter(|e| e.health != pb::Health::Unhealthy as i32)
                    .count();
                pb::ServiceInfo {
                    name: n.to_string(),
                    spec: view.policy.clone(),
                    has_resource: st.resources.contains_key(&n),
                    instances: view.endpoints.len() as u32,
                    healthy_instances: healthy as u32,
                }
            })
            .collect()
    }

    /// How many sidecars are connected now.
    pub fn connected(&self) -> usize {
        self.lock().sidecars.len()
    }

    /// How many instances the catalog holds.
    pub fn instance_count(&self) -> usize {
        self.lock().instances.len()
    }
}

/// Removes expired instances until `shutdown` resolves.
pub async fn run_reaper(catalog: Arc<Catalog>, shutdown: impl std::future::Future<Output = ()>) {
    let cfg = catalog.config();
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
mod tests;
