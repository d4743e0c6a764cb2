//! Resuming a discovery stream without a full resend. A sidecar that
//! reconnects (to the same control-plane replica or another) says what it
//! holds as digests; the replica compares them with what it would send and
//! sends only what differs. Version counters are per replica, so they
//! cannot be compared; the content can: a SHA-256 over a canonical encoding
//! of each service as a full state carries it (endpoints sorted by id,
//! label maps sorted, the transport-only `reset_endpoints`/`removed`
//! cleared), of the roots, and of the address map. Both programs call the
//! same functions here, so the two sides cannot drift apart.
//!
//! [`Held`] is the sidecar's copy of what it was sent, merged from full
//! states and incremental updates by the same rules the sidecar applies
//! them (`discovery/state.rs`), so that its digest equals the digest of
//! the full state a replica would send for the same content.

use std::collections::BTreeMap;

use prost::Message;
use ring::digest::{Context, SHA256};

use crate::v1 as pb;

/// A digest: SHA-256, 32 bytes.
pub type Digest = Vec<u8>;

/// The digest of one service as a full state carries it.
pub fn service_digest(update: &pb::ServiceUpdate) -> Digest {
    let mut canonical = update.clone();
    canonical.reset_endpoints = false;
    canonical.removed.clear();
    canonical
        .endpoints
        .sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    // Proto maps encode in hash order: take them out and hash them sorted.
    let mut maps: Vec<BTreeMap<String, String>> = Vec::new();
    for e in &mut canonical.endpoints {
        maps.push(std::mem::take(&mut e.labels).into_iter().collect());
    }
    if let Some(policy) = &mut canonical.policy {
        for s in &mut policy.subsets {
            maps.push(std::mem::take(&mut s.labels).into_iter().collect());
        }
    }
    let mut ctx = Context::new(&SHA256);
    ctx.update(&canonical.encode_to_vec());
    for map in maps {
        ctx.update(&(map.len() as u64).to_be_bytes());
        for (k, v) in map {
            for part in [k, v] {
                ctx.update(&(part.len() as u64).to_be_bytes());
                ctx.update(part.as_bytes());
            }
        }
    }
    ctx.finish().as_ref().to_vec()
}

/// The digest of the trust anchors (DER, in order).
pub fn roots_digest(roots: &[Vec<u8>]) -> Digest {
    let mut ctx = Context::new(&SHA256);
    for r in roots {
        ctx.update(&(r.len() as u64).to_be_bytes());
        ctx.update(r);
    }
    ctx.finish().as_ref().to_vec()
}

/// The digest of the address map (services sorted by name).
pub fn addresses_digest(map: &pb::AddressMap) -> Digest {
    let mut canonical = map.clone();
    canonical.services.sort_by(|a, b| a.service.cmp(&b.service));
    ring::digest::digest(&SHA256, &canonical.encode_to_vec())
        .as_ref()
        .to_vec()
}

/// What a sidecar was sent, merged: the source of its [`pb::Resume`].
#[derive(Debug, Default, Clone)]
pub struct Held {
    services: BTreeMap<String, pb::ServiceUpdate>,
    roots: Vec<Vec<u8>>,
    addresses: Option<pb::AddressMap>,
}

impl Held {
    /// Merges an update the sidecar applied (call it only for ACKed ones).
    pub fn apply(&mut self, update: &pb::DiscoveryUpdate) {
        if update.full {
            self.services.clear();
        }
        if !update.roots.is_empty() {
            self.roots = update.roots.clone();
        }
        if let Some(a) = &update.addresses {
            self.addresses = Some(a.clone());
        }
        for s in &update.services {
            match self.services.get_mut(&s.name) {
                Some(held) if s.known && held.known => merge(held, s),
                _ => {
                    let mut whole = s.clone();
                    whole.removed.clear();
                    whole.reset_endpoints = false;
                    // An update for an unknown service may leave the own
                    // service's inbound policy out: it stays what it was.
                    if whole.inbound.is_none()
                        && let Some(prev) = self.services.get(&s.name)
                    {
                        whole.inbound = prev.inbound.clone();
                    }
                    self.services.insert(s.name.clone(), whole);
                }
            }
        }
    }

    /// Whether anything was ever applied.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.roots.is_empty() && self.addresses.is_none()
    }

    /// The digests to put in the next Hello.
    pub fn resume(&self) -> pb::Resume {
        pb::Resume {
            services: self
                .services
                .values()
                .map(|s| pb::ServiceDigest {
                    name: s.name.clone(),
                    digest: service_digest(s),
                })
                .collect(),
            roots: roots_digest(&self.roots),
            addresses: self
                .addresses
                .as_ref()
                .map(addresses_digest)
                .unwrap_or_default(),
        }
    }
}

/// An update of a known service onto what is held: set fields replace,
/// endpoints are replaced (`reset_endpoints`) or upserted by id, and
/// `removed` ones dropped.
fn merge(held: &mut pb::ServiceUpdate, update: &pb::ServiceUpdate) {
    if update.policy.is_some() {
        held.policy = update.policy.clone();
    }
    if update.inbound.is_some() {
        held.inbound = update.inbound.clone();
    }
    if update.routing.is_some() {
        held.routing = update.routing.clone();
    }
    if update.reset_endpoints {
        held.endpoints.clear();
    }
    held.endpoints
        .retain(|e| !update.removed.contains(&e.instance_id));
    for e in &update.endpoints {
        match held
            .endpoints
            .iter_mut()
            .find(|h| h.instance_id == e.instance_id)
        {
            Some(h) => *h = e.clone(),
            None => held.endpoints.push(e.clone()),
        }
    }
}

/// What a reconnecting sidecar said it holds, ready to compare.
#[derive(Debug, Clone)]
pub struct Claimed {
    services: BTreeMap<String, Digest>,
    roots: Digest,
    addresses: Digest,
}

impl From<&pb::Resume> for Claimed {
    fn from(r: &pb::Resume) -> Self {
        Claimed {
            services: r
                .services
                .iter()
                .map(|s| (s.name.clone(), s.digest.clone()))
                .collect(),
            roots: r.roots.clone(),
            addresses: r.addresses.clone(),
        }
    }
}

impl Claimed {
    /// Whether the sidecar holds exactly `full` (a service's full state).
    pub fn holds_service(&self, full: &pb::ServiceUpdate) -> bool {
        self.services
            .get(&full.name)
            .is_some_and(|d| *d == service_digest(full))
    }

    pub fn holds_roots(&self, roots: &[Vec<u8>]) -> bool {
        self.roots == roots_digest(roots)
    }

    pub fn holds_addresses(&self, map: &pb::AddressMap) -> bool {
        self.addresses == addresses_digest(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(id: &str, port: u16, version: &str) -> pb::Endpoint {
        pb::Endpoint {
            instance_id: id.into(),
            address: format!("127.0.0.1:{port}"),
            labels: [("version".to_string(), version.to_string())]
                .into_iter()
                .collect(),
            health: pb::Health::Healthy as i32,
            weight: 0,
        }
    }

    fn full_service(endpoints: Vec<pb::Endpoint>, balancer: pb::LoadBalancer) -> pb::ServiceUpdate {
        pb::ServiceUpdate {
            name: "echo".into(),
            known: true,
            policy: Some(pb::ServiceSpec {
                name: "echo".into(),
                load_balancer: balancer as i32,
                subsets: vec![pb::Subset {
                    name: "v1".into(),
                    labels: [("version", "v1"), ("zone", "a")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                }],
                ..Default::default()
            }),
            reset_endpoints: true,
            endpoints,
            ..Default::default()
        }
    }

    fn update(full: bool, services: Vec<pb::ServiceUpdate>) -> pb::DiscoveryUpdate {
        pb::DiscoveryUpdate {
            version: 7,
            full,
            services,
            roots: if full { vec![b"root".to_vec()] } else { vec![] },
            addresses: Some(pb::AddressMap::default()),
            resumed: 0,
        }
    }

    #[test]
    fn the_digest_ignores_endpoint_order_and_transport_fields() {
        let a = full_service(
            vec![endpoint("e1", 1, "v1"), endpoint("e2", 2, "v2")],
            pb::LoadBalancer::RoundRobin,
        );
        let mut b = a.clone();
        b.endpoints.reverse();
        b.reset_endpoints = false;
        assert_eq!(service_digest(&a), service_digest(&b));
        // Maps compare by content (many insertions make hash order differ).
        let mut many = a.clone();
        let labels: std::collections::HashMap<String, String> = (0..50)
            .map(|i| (format!("k{i}"), format!("v{i}")))
            .collect();
        many.endpoints[0].labels = labels.clone();
        let mut again = many.clone();
        // A map built in another order, with another hasher's seed.
        let mut pairs: Vec<(String, String)> = labels.into_iter().collect();
        pairs.reverse();
        again.endpoints[0].labels = pairs.into_iter().collect();
        assert_eq!(service_digest(&many), service_digest(&again));
        // Any real difference shows.
        let mut c = a.clone();
        c.endpoints[1].health = pb::Health::Unhealthy as i32;
        assert_ne!(service_digest(&a), service_digest(&c));
        let mut d = a.clone();
        d.policy.as_mut().expect("policy").subsets[0]
            .labels
            .insert("zone".into(), "b".into());
        assert_ne!(service_digest(&a), service_digest(&d));
    }

    #[test]
    fn a_full_state_then_increments_digest_like_the_full_state_of_the_result() {
        let mut held = Held::default();
        assert!(held.is_empty());
        held.apply(&update(
            true,
            vec![full_service(
                vec![endpoint("e1", 1, "v1"), endpoint("e2", 2, "v1")],
                pb::LoadBalancer::P2cEwma,
            )],
        ));
        // e2 changed, e1 removed, e3 added, the policy changed: an increment.
        held.apply(&update(
            false,
            vec![pb::ServiceUpdate {
                name: "echo".into(),
                known: true,
                policy: full_service(vec![], pb::LoadBalancer::RoundRobin).policy,
                endpoints: vec![endpoint("e3", 3, "v2"), endpoint("e2", 2, "v2")],
                removed: vec!["e1".into()],
                ..Default::default()
            }],
        ));
        // What a replica would send now, in its own order.
        let now = full_service(
            vec![endpoint("e2", 2, "v2"), endpoint("e3", 3, "v2")],
            pb::LoadBalancer::RoundRobin,
        );
        let claimed = Claimed::from(&held.resume());
        assert!(claimed.holds_service(&now));
        assert!(claimed.holds_roots(&[b"root".to_vec()]));
        assert!(claimed.holds_addresses(&pb::AddressMap::default()));
        // Not: another endpoint list, other roots, another address map, or
        // a service it never held.
        let stale = full_service(vec![endpoint("e2", 2, "v2")], pb::LoadBalancer::RoundRobin);
        assert!(!claimed.holds_service(&stale));
        assert!(!claimed.holds_roots(&[b"other".to_vec()]));
        let map = pb::AddressMap {
            services: vec![pb::ServiceAddresses {
                service: "echo".into(),
                addresses: vec!["10.0.0.1".into()],
                opaque_ports: vec![],
            }],
        };
        assert!(!claimed.holds_addresses(&map));
        let mut other = now.clone();
        other.name = "other".into();
        assert!(!claimed.holds_service(&other));
    }

    #[test]
    fn a_service_turning_unknown_and_back_is_held_as_sent() {
        let mut held = Held::default();
        let known = full_service(vec![endpoint("e1", 1, "v1")], pb::LoadBalancer::RoundRobin);
        held.apply(&update(true, vec![known.clone()]));
        let unknown = pb::ServiceUpdate {
            name: "echo".into(),
            known: false,
            ..Default::default()
        };
        held.apply(&update(false, vec![unknown.clone()]));
        assert!(Claimed::from(&held.resume()).holds_service(&unknown));
        // Back, complete (reset): replaces what was held.
        held.apply(&update(false, vec![known.clone()]));
        assert!(Claimed::from(&held.resume()).holds_service(&known));
        // A new full state forgets services it does not carry.
        held.apply(&update(true, vec![]));
        assert!(!Claimed::from(&held.resume()).holds_service(&known));
    }
}
