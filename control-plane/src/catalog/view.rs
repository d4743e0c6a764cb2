//! What a sidecar is told about one service — its policy, its endpoints,
//! the routes attached to it, and (for the service's own sidecars) its
//! inbound policy — built from the applied resources and the registered
//! instances; the update that turns one view into the next; and the
//! generations that say which views may have changed since a stream last
//! looked.
//!
//! A `Gateway`'s name is a service name too (its sidecar joins as it), and
//! its view carries the routes attached to the gateway, each with the host
//! names it answers for there: the gateway's sidecar wants its own name
//! like any service, and so gets them, and their backends with them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use weft_proto::labels::Labels;
use weft_proto::protocol::{InboundMode, Protocol};
use weft_proto::routing::{HostMatch, RateLimit};

use super::instances::{Health, Instance};
use crate::resource::{
    AuthorizationPolicySpec, AuthorizationRule, GatewaySpec, Name, RouteSpec, ServiceSpec,
};

/// One instance as callers' sidecars see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub instance_id: String,
    pub address: String,
    pub labels: Labels,
    pub health: Health,
    pub weight: u32,
}

/// What a service's own sidecars enforce on inbound connections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InboundPolicy {
    pub mode: InboundMode,
    /// Whether any `AuthorizationPolicy` selects the service: then only
    /// what `rules` allow gets in.
    pub authorization: bool,
    pub rules: Vec<AuthorizationRule>,
    /// The `Service`'s `rateLimit`.
    pub rate_limit: Option<RateLimit>,
}

/// A service as pushed to sidecars.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ServiceView {
    pub known: bool,
    /// The resource's spec (or the defaults), its protocol always decided.
    pub policy: Option<ServiceSpec>,
    /// By instance id.
    pub endpoints: BTreeMap<String, Endpoint>,
    /// What the service's own sidecars enforce inbound; sent only to them.
    pub inbound: InboundPolicy,
    /// The routes attached to it, by qualified name (`HTTPRoute/x`), each
    /// with the host names its sidecars match: none for a service (GAMMA
    /// ignores them), the effective ones at a gateway.
    pub routing: Vec<RouteSpec>,
}

/// What a sidecar is sent about one service: everything (`reset_endpoints`)
/// or only what changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceUpdate {
    pub name: Name,
    pub known: bool,
    /// Set when it changed (always in a full update).
    pub policy: Option<ServiceSpec>,
    /// The endpoints are the complete list, not a change.
    pub reset_endpoints: bool,
    /// Added or changed endpoints (all of them when `reset_endpoints`).
    pub endpoints: Vec<Endpoint>,
    /// Ids of endpoints gone.
    pub removed: Vec<String>,
    /// Only to the service's own sidecars, and only when it changed.
    pub inbound: Option<InboundPolicy>,
    /// Every route attached to it, when they changed (always in a full
    /// update of a known service).
    pub routing: Option<Vec<RouteSpec>>,
}

impl ServiceView {
    pub fn unknown() -> Self {
        ServiceView::default()
    }

    /// The update that turns what a sidecar has (`old`) into `self`; `None`
    /// when nothing changed. `own`: the sidecar's own service, whose inbound
    /// policy it enforces.
    pub fn diff(&self, name: &Name, old: Option<&ServiceView>, own: bool) -> Option<ServiceUpdate> {
        let Some(old) = old else {
            return Some(self.full(name, own));
        };
        let inbound_changed = own && old.inbound != self.inbound;
        // Unknown services carry no routing; one that becomes known gets
        // its whole routing, like a full update.
        let routing_changed = self.known && (old.routing != self.routing || !old.known);
        if old.known == self.known
            && old.policy == self.policy
            && old.endpoints == self.endpoints
            && !inbound_changed
            && !routing_changed
        {
            return None;
        }
        let mut u = ServiceUpdate {
            name: name.clone(),
            known: self.known,
            policy: (old.policy != self.policy)
                .then(|| self.policy.clone())
                .flatten(),
            reset_endpoints: false,
            endpoints: Vec::new(),
            removed: Vec::new(),
            inbound: inbound_changed.then(|| self.inbound.clone()),
            routing: routing_changed.then(|| self.routing.clone()),
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
    pub fn full(&self, name: &Name, own: bool) -> ServiceUpdate {
        ServiceUpdate {
            name: name.clone(),
            known: self.known,
            policy: self.policy.clone(),
            reset_endpoints: true,
            endpoints: self.endpoints.values().cloned().collect(),
            removed: Vec::new(),
            inbound: own.then(|| self.inbound.clone()),
            routing: self.known.then(|| self.routing.clone()),
        }
    }

    /// Every service the view's routes send requests to (backends and
    /// mirrors): a caller must know them too.
    pub fn route_backends(&self) -> impl Iterator<Item = &Name> {
        self.routing.iter().flat_map(RouteSpec::backend_services)
    }
}

/// The host names a route answers for at `gateway`: its own; without
/// any, those of the listeners it attaches to when every one of them names
/// one (a listener without a host name takes any host, and so does the
/// route there).
pub(super) fn gateway_hostnames(gateway: &GatewaySpec, route: &RouteSpec) -> Vec<HostMatch> {
    if !route.hostnames().is_empty() {
        return route.hostnames().to_vec();
    }
    let mut out: Vec<HostMatch> = Vec::new();
    let refs = route.gateways().iter().filter(|g| g.name == gateway.name);
    let every = refs.clone().any(|g| g.section.is_none());
    let listeners = gateway
        .listeners()
        .iter()
        .filter(|l| every || refs.clone().any(|g| g.section.as_ref() == Some(&l.name)));
    for l in listeners {
        let Some(h) = &l.hostname else {
            return Vec::new();
        };
        if !out.contains(h) {
            out.push(h.clone());
        }
    }
    out
}

/// The routes of `name` as its sidecars get them: at a gateway, those
/// attached to it with their effective host names; otherwise those
/// attached to the service, without host names.
pub(super) fn routing<'a>(
    gateway: Option<&GatewaySpec>,
    at_gateway: impl Iterator<Item = &'a RouteSpec>,
    at_service: impl Iterator<Item = &'a RouteSpec>,
) -> Vec<RouteSpec> {
    match gateway {
        Some(g) => at_gateway
            .map(|r| r.with_hostnames(gateway_hostnames(g, r)))
            .collect(),
        None => at_service.map(|r| r.with_hostnames(Vec::new())).collect(),
    }
}

/// Builds the view of `name` from its resource (if any), the authorization
/// policies (those selecting it count), its instances, the routes its
/// sidecars get ([`routing`]) and whether it is a gateway. A service with
/// any of a resource, an instance, a route or a `Gateway` is known to
/// callers: a route may send its requests elsewhere.
pub(super) fn build<'a>(
    name: &Name,
    resource: Option<&ServiceSpec>,
    policies: impl Iterator<Item = &'a AuthorizationPolicySpec>,
    instances: impl Iterator<Item = &'a Instance>,
    routing: Vec<RouteSpec>,
    gateway: bool,
) -> ServiceView {
    let mut inbound = InboundPolicy {
        mode: resource.map_or(InboundMode::Strict, |r| r.inbound_mode),
        rate_limit: resource.and_then(|r| r.rate_limit.clone()),
        ..Default::default()
    };
    for p in policies.filter(|p| &p.service == name) {
        inbound.authorization = true;
        inbound.rules.extend(p.rules.iter().cloned());
    }
    let mut endpoints = BTreeMap::new();
    let mut declared: Option<Protocol> = None;
    for i in instances.filter(|i| &i.record.service == name) {
        let r = &i.record;
        declared = declared.or(r.protocol);
        let endpoint = Endpoint {
            instance_id: r.instance_id.clone(),
            address: r.address.clone(),
            labels: r.labels.clone(),
            health: r.health,
            weight: 1,
        };
        endpoints.insert(r.instance_id.clone(), endpoint);
    }
    if resource.is_none() && endpoints.is_empty() && routing.is_empty() && !gateway {
        // Unknown to callers, but its own sidecars still get the policy.
        return ServiceView {
            inbound,
            ..ServiceView::unknown()
        };
    }
    // The resource decides; otherwise what the instances declare; otherwise gRPC.
    let mut policy = resource.cloned().unwrap_or_else(|| ServiceSpec {
        name: name.clone(),
        protocol: None,
        load_balancer: Default::default(),
        subsets: Vec::new(),
        inbound_mode: InboundMode::Strict,
        resilience: Default::default(),
        rate_limit: None,
        addresses: Vec::new(),
        opaque_ports: Vec::new(),
    });
    policy.protocol = policy.protocol.or(declared).or(Some(Protocol::Grpc));
    ServiceView {
        known: true,
        policy: Some(policy),
        endpoints,
        inbound,
        routing,
    }
}

/// A counter that moves with every change, and the value it had when each
/// service's view last changed (its policy or its endpoints).
#[derive(Debug, Default)]
pub(super) struct Generations {
    current: u64,
    by_service: HashMap<Name, u64>,
}

impl Generations {
    pub fn current(&self) -> u64 {
        self.current
    }

    /// The view of `service` changed.
    pub fn touch(&mut self, service: &Name) {
        self.current += 1;
        self.by_service.insert(service.clone(), self.current);
    }

    /// When `service`'s view last changed (0: never).
    pub fn of(&self, service: &Name) -> u64 {
        self.by_service.get(service).copied().unwrap_or(0)
    }
}

/// Views built once per change and shared (behind an `Arc`) by every
/// stream that wants them: a change to a service every sidecar calls
/// costs one build, not one per stream, and a stream keeps what it was
/// sent as a pointer, not a copy. A view is good while its service's
/// generation has not moved.
#[derive(Debug, Default)]
pub(super) struct ViewCache {
    by_service: HashMap<Name, (u64, Arc<ServiceView>)>,
}

impl ViewCache {
    /// Names subscribed to but never known are cached too; sidecars may
    /// subscribe to many (each within its bound), so the cache is emptied
    /// when it holds this many, and refills with what is asked for.
    const MAX: usize = 65_536;

    pub fn get(&self, name: &Name, generation: u64) -> Option<Arc<ServiceView>> {
        match self.by_service.get(name) {
            Some((g, v)) if *g == generation => Some(v.clone()),
            _ => None,
        }
    }

    pub fn put(&mut self, name: &Name, generation: u64, view: Arc<ServiceView>) {
        if self.by_service.len() >= Self::MAX && !self.by_service.contains_key(name) {
            self.by_service.clear();
        }
        self.by_service.insert(name.clone(), (generation, view));
    }
}
