//! What a sidecar is told about one service: its policy and its endpoints,
//! built from the applied resource and the registered instances.

use std::collections::BTreeMap;

use weft_proto::protocol::{InboundMode, Protocol};
use weft_proto::v1 as pb;

use super::Instance;
use crate::resource::{AuthorizationPolicySpec, Name, ServiceSpec};

/// A service as pushed to sidecars.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceView {
    pub known: bool,
    pub policy: Option<pb::ServiceSpec>,
    /// By instance id.
    pub endpoints: BTreeMap<String, pb::Endpoint>,
    /// What the service's own sidecars enforce inbound; sent only to them.
    pub inbound: pb::InboundPolicy,
}

impl ServiceView {
    pub fn unknown() -> Self {
        ServiceView::default()
    }

    /// The update that turns what a sidecar has (`old`) into `self`; `None`
    /// when nothing changed. `own`: the sidecar's own service, whose inbound
    /// policy it enforces.
    pub fn diff(
        &self,
        name: &str,
        old: Option<&ServiceView>,
        own: bool,
    ) -> Option<pb::ServiceUpdate> {
        let Some(old) = old else {
            return Some(self.full(name, own));
        };
        let inbound_changed = own && old.inbound != self.inbound;
        if old.known == self.known
            && old.policy == self.policy
            && old.endpoints == self.endpoints
            && !inbound_changed
        {
            return None;
        }
        let mut u = pb::ServiceUpdate {
            name: name.to_string(),
            known: self.known,
            policy: (old.policy != self.policy)
                .then(|| self.policy.clone())
                .flatten(),
            inbound: inbound_changed.then(|| self.inbound.clone()),
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
    pub fn full(&self, name: &str, own: bool) -> pb::ServiceUpdate {
        pb::ServiceUpdate {
            name: name.to_string(),
            known: self.known,
            policy: self.policy.clone(),
            reset_endpoints: true,
            endpoints: self.endpoints.values().cloned().collect(),
            removed: Vec::new(),
            inbound: own.then(|| self.inbound.clone()),
        }
    }
}

/// Builds the view of `name` from its resource (if any), the authorization
/// policies (those selecting it count), and its instances.
pub fn build<'a>(
    name: &Name,
    resource: Option<&ServiceSpec>,
    policies: impl Iterator<Item = &'a AuthorizationPolicySpec>,
    instances: impl Iterator<Item = &'a Instance>,
) -> ServiceView {
    let mut inbound = pb::InboundPolicy {
        mode: resource
            .map_or(InboundMode::Strict, |r| r.inbound_mode)
            .to_proto() as i32,
        ..Default::default()
    };
    for p in policies.filter(|p| &p.service == name) {
        inbound.authorization = true;
        inbound.rules.extend(p.rules.iter().map(|r| r.to_proto()));
    }
    let mut endpoints = BTreeMap::new();
    let mut declared: Option<Protocol> = None;
    for i in instances.filter(|i| &i.service == name) {
        declared = declared.or(i.protocol);
        endpoints.insert(i.id.clone(), i.to_endpoint());
    }
    if resource.is_none() && endpoints.is_empty() {
        // Unknown to callers, but its own sidecars still get the policy.
        return ServiceView {
            inbound,
            ..ServiceView::unknown()
        };
    }
    // The resource decides; otherwise what the instances declare; otherwise gRPC.
    let mut policy = match resource {
        Some(r) => r.to_proto(),
        None => ServiceSpec {
            name: name.clone(),
            protocol: None,
            load_balancer: Default::default(),
            subsets: Vec::new(),
            inbound_mode: InboundMode::Strict,
            resilience: Default::default(),
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
        inbound,
    }
}
