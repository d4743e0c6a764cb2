//! Applying discovery updates: every update is converted and validated whole
//! before anything changes, so a bad one is NACKed and the last good config
//! stays in force.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use weft_proto::labels::Labels;
use weft_proto::name::{ServiceName, validate_address};
use weft_proto::protocol::{LoadBalancer, Protocol};
use weft_proto::v1 as pb;

use crate::authz::InboundPolicy;
use crate::model::{EndpointSpec, Health, ServicePolicy, ServiceState, Subset};

/// One service's change, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// What this sidecar enforces inbound (sent with its own service).
    Inbound(InboundPolicy),
    Unknown(ServiceName),
    Known {
        name: ServiceName,
        policy: Option<Box<ServicePolicy>>,
        reset: bool,
        upsert: Vec<EndpointSpec>,
        removed: Vec<Arc<str>>,
    },
}

fn convert_policy(p: &pb::ServiceSpec) -> Result<ServicePolicy, String> {
    let protocol = Protocol::from_proto(p.protocol)
        .map_err(|e| format!("policy.protocol: {e}"))?
        .unwrap_or(Protocol::Grpc);
    let balance = LoadBalancer::from_proto(p.load_balancer)
        .map_err(|e| format!("policy.load_balancer: {e}"))?;
    let subsets = p
        .subsets
        .iter()
        .map(|s| Subset {
            name: s.name.clone(),
            labels: s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
        .collect();
    let resilience = crate::resilience::Resilience::from_proto(p).map_err(|e| e.to_string())?;
    Ok(ServicePolicy {
        protocol,
        balance,
        subsets,
        resilience,
    })
}

fn convert_endpoint(e: &pb::Endpoint) -> Result<EndpointSpec, String> {
    if e.instance_id.is_empty() {
        return Err("endpoint without instance_id".into());
    }
    validate_address(&e.address)
        .map_err(|r| format!("endpoint {}: address: {r}", e.instance_id))?;
    let health = match pb::Health::try_from(e.health) {
        Ok(pb::Health::Unknown) => Health::Unknown,
        Ok(pb::Health::Healthy) => Health::Healthy,
        Ok(pb::Health::Unhealthy) => Health::Unhealthy,
        Err(_) => {
            return Err(format!(
                "endpoint {}: unknown health {}",
                e.instance_id, e.health
            ));
        }
    };
    Ok(EndpointSpec {
        id: e.instance_id.as_str().into(),
        addr: e.address.as_str().into(),
        labels: e
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Labels>(),
        health,
        weight: e.weight.max(1),
    })
}

/// Validates a whole update; the first problem is the NACK reason.
pub fn convert_update(u: &pb::DiscoveryUpdate) -> Result<Vec<Change>, String> {
    let mut out = Vec::with_capacity(u.services.len());
    for s in &u.services {
        let name = ServiceName::parse(&s.name).map_err(|e| format!("service {:?}: {e}", s.name))?;
        if let Some(ib) = &s.inbound {
            out.push(Change::Inbound(
                InboundPolicy::from_proto(ib).map_err(|e| format!("service {name}: {e}"))?,
            ));
        }
        if !s.known {
            out.push(Change::Unknown(name));
            continue;
        }
        let policy = s
            .policy
            .as_ref()
            .map(|p| convert_policy(p).map(Box::new))
            .transpose()
            .map_err(|e| format!("service {name}: {e}"))?;
        let upsert = s
            .endpoints
            .iter()
            .map(convert_endpoint)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("service {name}: {e}"))?;
        out.push(Change::Known {
            name,
            policy,
            reset: s.reset_endpoints,
            upsert,
            removed: s.removed.iter().map(|r| r.as_str().into()).collect(),
        });
    }
    Ok(out)
}

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
                } => {
                    self.unknown.remove(&name);
                    let s = self.known.entry(name).or_insert_with(|| ServiceState {
                        policy: ServicePolicy::default(),
                        endpoints: BTreeMap::new(),
                    });
                    if let Some(p) = policy {
                        s.policy = *p;
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
                        mode: pb::InboundMode::Permissive as i32,
                        authorization: true,
                        rules: vec![pb::AuthorizationRule {
                            from: vec!["b".into()],
                            ..Default::default()
                        }],
                    }),
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
            services: vec![pb::ServiceUpdate {
                name: "a".into(),
                known: true,
                endpoints: vec![ep("a-1", "not-an-address", pb::Health::Healthy)],
                ..Default::default()
            }],
        };
        let e = convert_update(&u).expect_err("invalid");
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
                .contains("protocol")
        );
    }
}
