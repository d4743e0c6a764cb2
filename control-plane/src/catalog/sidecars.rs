//! Sidecars connected now, one per discovery stream: what each has been
//! sent and has said back (versions, NACKs, its certificate's expiry, the
//! endpoints it ejected), and its recent traffic for `Top`. All of it ends
//! with the stream; nothing here is stored.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::SystemTime;

use tokio::time::Instant;

use super::instances::EjectedBy;
use super::stats::{Recorded, StreamTraffic, TrafficReport};
use crate::resource::Name;

/// An update a sidecar rejected, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub version: u64,
    pub reason: String,
}

/// What one connected sidecar has been sent and has said back.
#[derive(Debug, Clone)]
pub struct SidecarStatus {
    pub service: Name,
    pub instance_id: String,
    pub address: String,
    pub sidecar_version: String,
    pub connected_since: SystemTime,
    pub subscriptions: BTreeSet<Name>,
    pub sent_version: u64,
    pub applied_version: u64,
    pub nack: Option<Nack>,
    pub certificate_expires_unix_ms: u64,
    /// Endpoints this sidecar's outlier detection has ejected: (service,
    /// instance id) → until (unix ms).
    pub ejections: BTreeMap<(String, String), u64>,
    /// Since when an update sent has had no answer (ACK or NACK); `None`
    /// while the sidecar is caught up.
    pub unanswered_since: Option<Instant>,
}

/// The connected sidecars, by stream.
#[derive(Debug, Default)]
pub(super) struct Sidecars {
    streams: HashMap<u64, SidecarStatus>,
    /// Per stream, its sidecar's recent traffic. Apart from
    /// `SidecarStatus` so that listing sidecars does not copy it.
    traffic: HashMap<u64, StreamTraffic>,
}

impl Sidecars {
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn connect(&mut self, stream: u64, status: SidecarStatus) {
        self.streams.insert(stream, status);
    }

    /// Forgets `stream` and its traffic; what it was, if it was known.
    pub fn disconnect(&mut self, stream: u64) -> Option<SidecarStatus> {
        self.traffic.remove(&stream);
        self.streams.remove(&stream)
    }

    pub fn get_mut(&mut self, stream: u64) -> Option<&mut SidecarStatus> {
        self.streams.get_mut(&stream)
    }

    /// The instance the sidecar on `stream` registered.
    pub fn instance_of(&self, stream: u64) -> Option<&str> {
        self.streams.get(&stream).map(|s| s.instance_id.as_str())
    }

    /// Adds a traffic sample of the sidecar on `stream`, taken at `now`.
    pub fn record_traffic(&mut self, stream: u64, report: TrafficReport, now: Instant) {
        if !self.streams.contains_key(&stream) {
            return;
        }
        let traffic = self.traffic.entry(stream).or_default();
        if traffic.record(report, now) == Recorded::Restarted {
            tracing::debug!(
                stream,
                "traffic counters went back; starting their history over"
            );
        }
    }

    pub fn status(&self, stream: u64) -> Option<&SidecarStatus> {
        self.streams.get(&stream)
    }

    pub fn traffic(&self, stream: u64) -> Option<&StreamTraffic> {
        self.traffic.get(&stream)
    }

    /// Every stream's status and traffic (streams that reported none yet
    /// included, with `None`).
    pub fn each_with_traffic(
        &self,
    ) -> impl Iterator<Item = (&SidecarStatus, Option<&StreamTraffic>)> {
        self.streams.iter().map(|(id, s)| (s, self.traffic.get(id)))
    }

    /// Which sidecars have ejected instance `id` of `service`, and until
    /// when, leaving out ejections over at `wall_ms`.
    pub fn ejections_of(&self, service: &Name, id: &str, wall_ms: u64) -> Vec<EjectedBy> {
        let key = (service.to_string(), id.to_string());
        self.streams
            .values()
            .filter_map(|s| {
                let until = *s.ejections.get(&key)?;
                (until > wall_ms).then(|| EjectedBy {
                    instance_id: s.instance_id.clone(),
                    until_unix_ms: until,
                })
            })
            .collect()
    }

    /// Every sidecar, by service and instance.
    pub fn list(&self) -> Vec<SidecarStatus> {
        let mut v: Vec<_> = self.streams.values().cloned().collect();
        v.sort_by(|a, b| (&a.service, &a.instance_id).cmp(&(&b.service, &b.instance_id)));
        v
    }
}

impl SidecarStatus {
    /// The sidecar ejected (`until_unix_ms` > 0) or restored an endpoint.
    /// `exists`: the instance is in the catalog under that service; only
    /// those are kept, or a peer could fill memory with made-up ones.
    pub fn record_ejection(
        &mut self,
        service: String,
        instance: String,
        until_unix_ms: u64,
        exists: bool,
    ) {
        if until_unix_ms == 0 {
            self.ejections.remove(&(service, instance));
        } else if exists {
            self.ejections.insert((service, instance), until_unix_ms);
        }
    }
}
