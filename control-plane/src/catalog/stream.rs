//! One sidecar's discovery stream as the catalog sees it, from its hello
//! ([`Catalog::connect`]) to its end. Everything the sidecar reports goes
//! through its [`SidecarStream`], scoped to that stream, so that no caller
//! can speak for another. Dropping it ends the stream: its instance then
//! waits out the grace period, unless it was closed after a `Leave`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::time::Instant;

use super::Catalog;
use super::instances::{Health, Registration};
use super::sidecars::{Nack, SidecarStatus};
use super::stats::TrafficReport;
use crate::resource::Name;

impl Catalog {
    /// A sidecar said hello: (re)registers its instance, which its new
    /// stream now keeps (taking it over from any older one).
    pub fn connect(
        self: &Arc<Self>,
        reg: Registration,
        wanted: BTreeSet<Name>,
        certificate_expires_unix_ms: u64,
    ) -> SidecarStream {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed);
        let status = SidecarStatus {
            service: reg.service.clone(),
            instance_id: reg.instance_id.clone(),
            address: reg.address.clone(),
            sidecar_version: reg.sidecar_version.clone(),
            connected_since: SystemTime::now(),
            subscriptions: wanted,
            sent_version: 0,
            applied_version: 0,
            unanswered_since: None,
            nack: None,
            certificate_expires_unix_ms,
            ejections: BTreeMap::new(),
        };
        let mut parts = self.lock();
        let (record, moved_from) = parts.instances.register(&reg, stream);
        parts.sidecars.connect(stream, status);
        self.persistence.put(record);
        let touched: Vec<Name> = moved_from.into_iter().chain([reg.service]).collect();
        self.changed(parts, &touched);
        SidecarStream {
            catalog: self.clone(),
            id: stream,
            left: false,
        }
    }

    /// The stream ended. A sidecar that said `Leave` takes its instance
    /// away at once, otherwise the instance waits out the grace period.
    fn disconnect(&self, stream: u64, left: bool) {
        let mut parts = self.lock();
        parts.wakers.forget(stream);
        let Some(status) = parts.sidecars.disconnect(stream) else {
            return;
        };
        let id = status.instance_id;
        if !parts.instances.owned_by(&id, stream) {
            return; // a newer stream took this instance over
        }
        if !left {
            let grace = self.config.instance_grace;
            if parts.instances.wait(&id, Instant::now() + grace) {
                tracing::info!(instance = %id,
                    "sidecar stream ended; instance kept: another replica holds it");
                return;
            }
            tracing::info!(instance = %id, grace_ms = grace.as_millis() as u64,
                "sidecar stream ended; instance kept for the grace period");
            return;
        }
        if let Some(service) = parts.instances.remove(&id) {
            tracing::info!(instance = %id, %service, "instance left");
            self.persistence.remove(id);
            self.changed(parts, std::slice::from_ref(&service));
        }
    }
}

#[must_use = "dropping the stream disconnects its sidecar"]
pub struct SidecarStream {
    catalog: Arc<Catalog>,
    id: u64,
    left: bool,
}

impl SidecarStream {
    /// The stream's number, for logs.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The version for the next update sent on any stream.
    pub fn next_version(&self) -> u64 {
        self.catalog.next_version.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ends the stream; `left`: the sidecar said `Leave`, so its instance
    /// goes at once instead of waiting out the grace period.
    pub fn close(mut self, left: bool) {
        self.left = left;
    }

    pub fn record_sent(&self, version: u64) {
        if let Some(s) = self.catalog.lock().sidecars.get_mut(self.id) {
            s.sent_version = version;
            s.unanswered_since.get_or_insert_with(Instant::now);
        }
    }

    pub fn record_ack(&self, version: u64) {
        if let Some(s) = self.catalog.lock().sidecars.get_mut(self.id) {
            s.applied_version = s.applied_version.max(version);
            if version >= s.sent_version {
                s.unanswered_since = None;
            }
        }
    }

    /// `reason` as clipped by the caller (it logs it too).
    pub fn record_nack(&self, version: u64, reason: String) {
        if let Some(s) = self.catalog.lock().sidecars.get_mut(self.id) {
            s.nack = Some(Nack { version, reason });
            if version >= s.sent_version {
                s.unanswered_since = None;
            }
        }
    }

    /// Services the sidecar subscribed to after its hello; the caller keeps
    /// the count within [`MAX_WANTED`](super::MAX_WANTED).
    pub fn add_subscriptions(&self, services: &[Name]) {
        if let Some(s) = self.catalog.lock().sidecars.get_mut(self.id) {
            s.subscriptions.extend(services.iter().cloned());
        }
    }

    pub fn record_certificate(&self, expires_unix_ms: u64) {
        if let Some(s) = self.catalog.lock().sidecars.get_mut(self.id) {
            s.certificate_expires_unix_ms = expires_unix_ms;
        }
    }

    /// The sidecar's app reported its health.
    pub fn set_health(&self, health: Health, detail: String) {
        let catalog = &self.catalog;
        let mut parts = catalog.lock();
        let Some(id) = parts.sidecars.instance_of(self.id).map(str::to_string) else {
            return;
        };
        let Some(changed) = parts.instances.set_health(&id, self.id, health, detail) else {
            return;
        };
        tracing::info!(instance = %id, ?health, "instance health changed");
        let service = changed.record.service.clone();
        catalog.persistence.put(changed.record);
        let touched = if changed.routing {
            vec![service]
        } else {
            Vec::new()
        };
        catalog.changed(parts, &touched);
    }

    /// The sidecar ejected (`until_unix_ms` > 0) or restored an endpoint.
    pub fn record_ejection(&self, service: String, instance: String, until_unix_ms: u64) {
        let mut parts = self.catalog.lock();
        let exists = parts
            .instances
            .get(&instance)
            .is_some_and(|i| i.record.service.as_str() == service);
        if let Some(s) = parts.sidecars.get_mut(self.id) {
            s.record_ejection(service, instance, until_unix_ms, exists);
        }
    }

    /// The sidecar's cumulative traffic counters, now.
    pub fn record_stats(&self, report: TrafficReport) {
        let now = Instant::now();
        self.catalog
            .lock()
            .sidecars
            .record_traffic(self.id, report, now);
    }
}

impl Drop for SidecarStream {
    fn drop(&mut self) {
        self.catalog.disconnect(self.id, self.left);
    }
}
