//! Instances: one per sidecar, registered over its discovery stream. When
//! the stream ends, an instance waits out a grace period for its sidecar to
//! come back (after a control-plane restart, every restored instance waits
//! out the startup grace) and is reaped after it; a sidecar that says
//! `Leave` takes its instance away at once.
//!
//! On a shared store (etcd) an instance may also be held *elsewhere*: its
//! sidecar is connected to another replica, whose lease keeps it. Such an
//! instance is never reaped here; the store's watch removes it when that
//! replica's lease ends or the sidecar leaves.

use std::collections::HashMap;
use std::time::SystemTime;

use tokio::time::Instant;

use weft_proto::labels::Labels;
use weft_proto::protocol::Protocol;

use crate::resource::Name;

/// An app's health, as its sidecar reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Health {
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

/// A validated `Hello`: who a sidecar is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub service: Name,
    pub instance_id: String,
    pub address: String,
    pub protocol: Option<Protocol>,
    pub labels: Labels,
    pub health: Health,
    pub sidecar_version: String,
    /// No app behind the sidecar: a caller only.
    pub no_app: bool,
}

/// What the catalog knows of an instance apart from its stream; also what
/// the store keeps, so that a restarted control plane serves it until its
/// sidecar is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRecord {
    pub service: Name,
    pub instance_id: String,
    pub address: String,
    pub protocol: Option<Protocol>,
    pub labels: Labels,
    pub health: Health,
    pub health_detail: String,
    /// No app behind the sidecar: a caller only.
    pub no_app: bool,
}

impl From<&Registration> for InstanceRecord {
    fn from(r: &Registration) -> Self {
        InstanceRecord {
            service: r.service.clone(),
            instance_id: r.instance_id.clone(),
            address: r.address.clone(),
            protocol: r.protocol,
            labels: r.labels.clone(),
            health: r.health,
            health_detail: String::new(),
            no_app: r.no_app,
        }
    }
}

/// A sidecar that has ejected an instance (outlier detection), until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EjectedBy {
    /// The ejecting sidecar's instance.
    pub instance_id: String,
    pub until_unix_ms: u64,
}

/// An instance as `ListInstances` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceView {
    pub record: InstanceRecord,
    pub connected: bool,
    /// When a disconnected instance will be removed.
    pub expires_at: Option<SystemTime>,
    pub ejected_by: Vec<EjectedBy>,
}

/// An instance in the catalog: its record, and what keeps it there.
#[derive(Debug, Clone)]
pub(super) struct Instance {
    pub record: InstanceRecord,
    /// The stream that keeps it alive; `None` while it waits out a grace period.
    pub stream: Option<u64>,
    /// When a disconnected instance is removed.
    pub expires_at: Option<Instant>,
    /// Another replica holds it too (its sidecar registered there): when
    /// this replica's stream ends, it stays, held elsewhere, without a
    /// grace period.
    pub elsewhere: bool,
}

/// A health report that changed an instance.
pub(super) struct HealthChanged {
    /// The record to store.
    pub record: InstanceRecord,
    /// Whether callers route differently now (the health itself changed,
    /// not only its detail).
    pub routing: bool,
}

/// Every instance, by id.
#[derive(Debug, Default)]
pub(super) struct Instances {
    by_id: HashMap<String, Instance>,
}

impl Instances {
    /// Instances read back from the store: disconnected until their
    /// sidecars say hello again, removed at `expires_at` otherwise.
    pub fn restored(records: Vec<InstanceRecord>, expires_at: Instant) -> Self {
        let by_id = records
            .into_iter()
            .map(|record| {
                let instance = Instance {
                    record,
                    stream: None,
                    expires_at: Some(expires_at),
                    elsewhere: false,
                };
                (instance.record.instance_id.clone(), instance)
            })
            .collect();
        Instances { by_id }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn get(&self, id: &str) -> Option<&Instance> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Instance> {
        self.by_id.values()
    }

    /// (Re)registers the instance of the sidecar on `stream`, which takes
    /// it over from any older stream. Returns its record, and the service
    /// it belonged to before when that was another one.
    pub fn register(&mut self, reg: &Registration, stream: u64) -> (InstanceRecord, Option<Name>) {
        let record = InstanceRecord::from(reg);
        let instance = Instance {
            record: record.clone(),
            stream: Some(stream),
            expires_at: None,
            elsewhere: false,
        };
        let moved = self
            .by_id
            .insert(reg.instance_id.clone(), instance)
            .map(|old| old.record.service)
            .filter(|old| old != &reg.service);
        (record, moved)
    }

    /// Whether `stream` is the one keeping instance `id` (a newer stream
    /// may have taken it over).
    pub fn owned_by(&self, id: &str, stream: u64) -> bool {
        self.by_id.get(id).is_some_and(|i| i.stream == Some(stream))
    }

    /// The stream of instance `id` ended without `Leave`: it stays until
    /// `until`, or for as long as another replica holds it. Returns
    /// whether another replica does.
    pub fn wait(&mut self, id: &str, until: Instant) -> bool {
        let Some(i) = self.by_id.get_mut(id) else {
            return false;
        };
        i.stream = None;
        i.expires_at = (!i.elsewhere).then_some(until);
        i.elsewhere
    }

    /// Another replica holds `record` (the store says so). Returns the
    /// services whose view changed; none while a stream of this replica
    /// holds the instance, whose record is the one it reports.
    pub fn held_elsewhere(&mut self, record: InstanceRecord) -> Vec<Name> {
        if let Some(i) = self.by_id.get_mut(&record.instance_id) {
            i.elsewhere = true;
            if i.stream.is_some() {
                return Vec::new();
            }
            i.expires_at = None;
            if i.record == record {
                return Vec::new();
            }
            let old = std::mem::replace(&mut i.record, record);
            let mut touched = vec![old.service];
            if touched[0] != i.record.service {
                touched.push(i.record.service.clone());
            }
            return touched;
        }
        let service = record.service.clone();
        let instance = Instance {
            record,
            stream: None,
            expires_at: None,
            elsewhere: true,
        };
        self.by_id
            .insert(instance.record.instance_id.clone(), instance);
        vec![service]
    }

    /// The store no longer holds instance `id` for another replica (that
    /// replica's lease ended, or its sidecar left). Removes it unless this
    /// replica has it (connected, or in its grace period); its service
    /// when it was removed.
    pub fn gone_elsewhere(&mut self, id: &str) -> Option<Name> {
        let i = self.by_id.get_mut(id)?;
        i.elsewhere = false;
        if i.stream.is_some() || i.expires_at.is_some() {
            return None;
        }
        self.remove(id)
    }

    /// The records this replica holds: connected here, or waiting out a
    /// grace period here (what it keeps in the store under its lease).
    pub fn own(&self) -> Vec<InstanceRecord> {
        self.by_id
            .values()
            .filter(|i| i.stream.is_some() || i.expires_at.is_some())
            .map(|i| i.record.clone())
            .collect()
    }

    /// The ids held only elsewhere.
    pub fn only_elsewhere(&self) -> Vec<String> {
        self.by_id
            .values()
            .filter(|i| i.stream.is_none() && i.expires_at.is_none())
            .map(|i| i.record.instance_id.clone())
            .collect()
    }

    /// Removes instance `id` (its sidecar left); its service, if it was there.
    pub fn remove(&mut self, id: &str) -> Option<Name> {
        self.by_id.remove(id).map(|i| i.record.service)
    }

    /// Removes the instances whose grace period is over at `now`: (id, service).
    pub fn reap(&mut self, now: Instant) -> Vec<(String, Name)> {
        let expired: Vec<String> = self
            .by_id
            .values()
            .filter(|i| i.expires_at.is_some_and(|t| t <= now))
            .map(|i| i.record.instance_id.clone())
            .collect();
        expired
            .into_iter()
            .filter_map(|id| {
                let service = self.by_id.remove(&id)?.record.service;
                Some((id, service))
            })
            .collect()
    }

    /// The sidecar on `stream` reported its app's health; `None` when that
    /// changed nothing (or the stream no longer keeps the instance).
    pub fn set_health(
        &mut self,
        id: &str,
        stream: u64,
        health: Health,
        detail: String,
    ) -> Option<HealthChanged> {
        let i = self.by_id.get_mut(id)?;
        if i.stream != Some(stream)
            || (i.record.health == health && i.record.health_detail == detail)
        {
            return None;
        }
        let routing = i.record.health != health;
        i.record.health = health;
        i.record.health_detail = detail;
        Some(HealthChanged {
            record: i.record.clone(),
            routing,
        })
    }
}

impl Instance {
    /// How `ListInstances` shows it at `now` (`wall` on the clock).
    pub fn view(&self, now: Instant, wall: SystemTime, ejected_by: Vec<EjectedBy>) -> InstanceView {
        InstanceView {
            record: self.record.clone(),
            // Held elsewhere: connected to another replica.
            connected: self.stream.is_some() || self.expires_at.is_none(),
            expires_at: self
                .expires_at
                .map(|t| wall + t.saturating_duration_since(now)),
            ejected_by,
        }
    }
}
