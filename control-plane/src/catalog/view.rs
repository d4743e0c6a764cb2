//! What a sidecar is told about one service: its policy and its endpoints,
//! built from the applied resource and the registered instances.

use std::collections::BTreeMap;

use weft_proto::v1 as pb;

use super::Instance;
use crate::resource::{Name, Protocol, ServiceSpec};

/// A service as pushed to sidecars.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceView {
    pub known: bool,
    pub policy: Option<pb::ServiceSpec>,
    /// By instance id.
    pub endpoints: BTreeMap<String, pb::Endpoint>,
}

impl ServiceView {
    pub fn unknown() -> Self {
        ServiceView::default()
    }

    /// The update that turns what a sidecar has (`old`) into `self`; `None`
    /// when nothing changed.
    pub fn diff(&self, name: &str, old: Option<&ServiceView>) -> Option<pb::ServiceUpdate> {
        let Some(old) = old else {
            return Some(self.full(name));
        };
        if old == self {
            return None;
        }
        let mut u = pb::ServiceUpdate {
            name: name.to_string(),
            known: self.known,
            policy: (old.policy != self.policy)
                .then(|| self.policy.clone())
                .flatten(),
            ..Default::default()
        };
        for (id, e) in &self.endpoints {
            if old.endpoints.get(id) != Some(e) {
                u.endpoints.push(e.clone());
            }
        }
        for id in old.endpoints.keys() {
            if !self.endpoints.contains_key(id) {
                u.removed.push(id.clone());
            }
        }
        Some(u)
    }

    /// The whole service, replacing whatever the sidecar had.
    pub fn full(&self, name: &str) -> pb::ServiceUpdate {
        pb::ServiceUpdate {
            name: name.to_string(),
            known: self.known,
            policy: self.policy.clone(),
            reset_endpoints: true,
            endpoints: self.endpoints.values().cloned().collect(),
            removed: Vec::new(),
        }
    }
}

/// Builds the view of `name` from its resource (if any) and its instances.
pub fn build<'a>(
    name: &Name,
    resource: Option<&ServiceSpec>,
    instances: impl Iterator<Item = &'a Instance>,
) -> ServiceView {
    let mut endpoints = BTreeMap::new();
    let mut declared: Option<Protocol> = None;
    for i in instances.filter(|i| &i.service == name) {
        declared = declared.or(i.protocol);
        endpoints.insert(i.id.clone(), i.to_endpoint());
    }
    if resource.is_none() && endpoints.is_empty() {
        return ServiceView::unknown();
    }
    // The resource decides; otherwise what the instances declare; otherwise gRPC.
    let mut policy = match resource {
        Some(r) => r.to_proto(),
        None => ServiceSpec {
            name: name.clone(),
            protocol: None,
            load_balancer: Default::default(),
            subsets: Vec::new(),
        }
        .to_proto(),
    };
    if policy.protocol == pb::Protocol::Unspecified as i32 {
        policy.protocol = declared.unwrap_or(Protocol::Grpc).to_proto() as i32;
    }
    ServiceView {
        known: true,
        policy: Some(policy),
        endpoints,
    }
}
