//! Resuming a reconnected sidecar's stream (on this replica or after
//! another): its Hello says what it holds as digests
//! (`weft_proto::resume`), and the first update, built as a full state,
//! is cut down to what differs. Kept apart from `discovery.rs` so that the
//! push path stays one thing: it builds the full state as for any new
//! stream and hands it here.

use weft_proto::resume::Claimed;
use weft_proto::v1 as pb;

/// How a resumed stream's first update went; the metric's `result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// The sidecar holds what this replica would send: nothing is resent.
    Unchanged,
    /// Only what differs is sent, each service complete.
    Partial,
    /// Nothing it holds matches: a full state, which also drops services
    /// the sidecar holds and no longer needs.
    Full,
}

impl Resumed {
    pub fn as_str(self) -> &'static str {
        match self {
            Resumed::Unchanged => "unchanged",
            Resumed::Partial => "partial",
            Resumed::Full => "full",
        }
    }
}

/// Cuts `full` (a complete state for the stream) down to what the
/// sidecar that `claimed` does not hold, and marks it.
pub fn resume(full: &mut pb::DiscoveryUpdate, claimed: &Claimed) -> Resumed {
    let total = full.services.len();
    full.services.retain(|s| !claimed.holds_service(s));
    let roots_held = claimed.holds_roots(&full.roots);
    let addresses_held = full
        .addresses
        .as_ref()
        .is_none_or(|a| claimed.holds_addresses(a));
    if full.services.len() == total && total > 0 && !roots_held && !addresses_held {
        // Nothing matched: the full state as it was built.
        return Resumed::Full;
    }
    full.full = false;
    if roots_held {
        full.roots.clear();
    }
    if addresses_held {
        full.addresses = None;
    }
    let result = if full.services.is_empty() && full.roots.is_empty() && full.addresses.is_none() {
        Resumed::Unchanged
    } else {
        Resumed::Partial
    };
    full.resumed = match result {
        Resumed::Unchanged => pb::ResumeResult::Unchanged,
        Resumed::Partial | Resumed::Full => pb::ResumeResult::Partial,
    } as i32;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::resume::Held;

    fn service(name: &str, port: u16) -> pb::ServiceUpdate {
        pb::ServiceUpdate {
            name: name.into(),
            known: true,
            policy: Some(pb::ServiceSpec {
                name: name.into(),
                ..Default::default()
            }),
            reset_endpoints: true,
            endpoints: vec![pb::Endpoint {
                instance_id: format!("{name}-1"),
                address: format!("127.0.0.1:{port}"),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn state(services: Vec<pb::ServiceUpdate>, root: &[u8]) -> pb::DiscoveryUpdate {
        pb::DiscoveryUpdate {
            version: 1,
            full: true,
            services,
            roots: vec![root.to_vec()],
            addresses: Some(pb::AddressMap::default()),
            resumed: 0,
        }
    }

    /// What a sidecar that applied `u` claims.
    fn claimed(u: &pb::DiscoveryUpdate) -> Claimed {
        let mut held = Held::default();
        held.apply(u);
        Claimed::from(&held.resume())
    }

    #[test]
    fn the_same_state_resumes_unchanged_with_nothing_sent() {
        let a = state(vec![service("echo", 1), service("users", 2)], b"ca");
        let mut b = a.clone();
        // Another replica: another version, its own order.
        b.version = 99;
        b.services.reverse();
        assert_eq!(resume(&mut b, &claimed(&a)), Resumed::Unchanged);
        assert!(!b.full);
        assert!(b.services.is_empty() && b.roots.is_empty() && b.addresses.is_none());
        assert_eq!(b.resumed, pb::ResumeResult::Unchanged as i32);
    }

    #[test]
    fn only_what_differs_is_sent() {
        let held = state(vec![service("echo", 1), service("users", 2)], b"ca");
        let mut now = state(vec![service("echo", 1), service("users", 3)], b"ca");
        assert_eq!(resume(&mut now, &claimed(&held)), Resumed::Partial);
        assert!(!now.full);
        assert_eq!(now.services.len(), 1);
        assert_eq!(now.services[0].name, "users");
        assert!(now.services[0].reset_endpoints, "sent complete");
        assert!(now.roots.is_empty() && now.addresses.is_none());
        assert_eq!(now.resumed, pb::ResumeResult::Partial as i32);
        // New roots alone: only the roots.
        let mut rotated = state(vec![service("echo", 1), service("users", 2)], b"new");
        assert_eq!(resume(&mut rotated, &claimed(&held)), Resumed::Partial);
        assert!(rotated.services.is_empty());
        assert_eq!(rotated.roots, vec![b"new".to_vec()]);
    }

    #[test]
    fn nothing_in_common_gets_a_full_state() {
        let held = state(vec![service("echo", 1)], b"ca");
        let mut now = state(vec![service("echo", 2)], b"other");
        now.addresses = Some(pb::AddressMap {
            services: vec![pb::ServiceAddresses {
                service: "echo".into(),
                addresses: vec!["10.1.1.1".into()],
                opaque_ports: vec![],
            }],
        });
        let before = now.clone();
        assert_eq!(resume(&mut now, &claimed(&held)), Resumed::Full);
        assert_eq!(now, before, "sent as built");
    }
}
