//! Applying discovery updates: the changes of an update, converted and
//! validated whole first (`convert`), so that a bad one is NACKed and the
//! last good config stays in force, are applied to what the sidecar knows.

use std::collections::{BTreeMap, BTreeSet};

use weft_proto::name::ServiceName;

use super::convert::Change;
use crate::model::inbound::InboundPolicy;
use crate::model::{ServicePolicy, ServiceState};

/// Everything the sidecar knows about the services it wants.
#[derive(Debug, Default, Clone)]
pub struct ConfigState {
    pub known: BTreeMap<ServiceName, ServiceState>,
    pub unknown: BTreeSet<ServiceName>,
    /// `None` until the control plane sends one: the default (STRICT, no
    /// authorization) is in force.
    pub inbound: Option<InboundPolicy>,
}

impl ConfigState {
    /// Applies validated changes. A full update replaces everything.
    pub fn apply(&mut self, full: bool, changes: Vec<Change>) {
        if full {
            self.known.clear();
            self.unknown.clear();
            self.inbound = None;
        }
        for c in changes {
            match c {
                Change::Inbound(p) => self.inbound = Some(p),
                Change::Unknown(name) => {
                    self.known.remove(&name);
                    self.unknown.insert(name);
                }
                Change::Known {
                    name,
                    policy,
                    reset,
                    upsert,
                    removed,
                    routes,
                } => {
                    self.unknown.remove(&name);
                    let s = self.known.entry(name).or_insert_with(|| ServiceState {
                        policy: ServicePolicy::default(),
                        endpoints: BTreeMap::new(),
                        routes: Vec::new(),
                    });
                    if let Some(p) = policy {
                        s.policy = *p;
                    }
                    if let Some(r) = routes {
                        s.routes = r;
                    }
                    if reset {
                        s.endpoints.clear();
                    }
                    for id in removed {
                        s.endpoints.remove(&id);
                    }
                    for e in upsert {
                        s.endpoints.insert(e.id.clone(), e);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::convert::convert_update;
    use crate::model::Health;
    use weft_proto::protocol::Protocol;
    use weft_proto::v1 as pb;

    fn ep(id: &str, addr: &str, health: pb::Health) -> pb::Endpoint {
        pb::Endpoint {
            instance_id: id.into(),
            address: addr.into(),
            health: health as i32,
            ..Default::default()
        }
    }

    #[test]
    fn full_then_deltas() {
        let mut st = ConfigState::default();
        let full = pb::DiscoveryUpdate {
            version: 1,
            full: true,
            roots: vec![],
            addresses: None,
            resumed: 0,
            services: vec![
                pb::ServiceUpdate {
                    name: "a".into(),
                    known: true,
                    policy: Some(pb::ServiceSpec {
                        name: "a".into(),
                        protocol: pb::Protocol::Http as i32,
                        ..Default::default()
                    }),
                    reset_endpoints: true,
                    endpoints: vec![
                        ep("a-1", "127.0.0.1:1", pb::Health::Healthy),
                        ep("a-2", "127.0.0.1:2", pb::Health::Healthy),
                    ],
                    removed: vec![],
                    inbound: Some(pb::InboundPolicy {
                        rate_limit: None,
                        mode: pb::InboundMode::Permissive as i32,
                        authorization: true,
                        rules: vec![pb::AuthorizationRule {
                            from: vec!["b".into()],
                            ..Default::default()
                        }],
                    }),
                    routing: None,
                },
                pb::ServiceUpdate {
                    name: "nope".into(),
                    known: false,
                    ..Default::default()
                },
            ],
        };
        st.apply(true, convert_update(&full).expect("valid"));
        let a = ServiceName::parse("a").expect("name");
        assert_eq!(st.known[&a].endpoints.len(), 2);
        assert_eq!(st.known[&a].policy.protocol, Protocol::Http);
        assert!(
            st.unknown
                .contains(&ServiceName::parse("nope").expect("name"))
        );

        let delta = pb::DiscoveryUpdate {
            version: 2,
            full: false,
            roots: vec![],
            addresses: None,
            resumed: 0,
            services: vec![pb::ServiceUpdate {
                name: "a".into(),
                known: true,
                endpoints: vec![ep("a-2", "127.0.0.1:2", pb::Health::Unhealthy)],
                removed: vec!["a-1".into()],
                ..Default::default()
            }],
        };
        st.apply(false, convert_update(&delta).expect("valid"));
        let s = &st.known[&a];
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!(
            s.endpoints.values().next().map(|e| e.health),
            Some(Health::Unhealthy)
        );
        assert_eq!(
            s.policy.protocol,
            Protocol::Http,
            "policy kept when not resent"
        );
    }

    #[test]
    fn bad_updates_are_rejected_whole() {
        let u = pb::DiscoveryUpdate {
            version: 3,
            full: false,
            roots: vec![],
            addresses: None,
            resumed: 0,
            services: vec![pb::ServiceUpdate {
                name: "a".into(),
                known: true,
                endpoints: vec![ep("a-1", "not-an-address", pb::Health::Healthy)],
                ..Default::default()
            }],
        };
        let e = convert_update(&u).expect_err("invalid").to_string();
        assert!(e.contains("a-1") && e.contains("address"), "{e}");
        let u = pb::DiscoveryUpdate {
            services: vec![pb::ServiceUpdate {
                name: "a".into(),
                known: true,
                policy: Some(pb::ServiceSpec {
                    protocol: 42,
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(
            convert_update(&u)
                .expect_err("invalid")
                .to_string()
                .contains("protocol")
        );
    }
}
