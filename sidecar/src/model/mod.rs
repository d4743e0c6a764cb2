//! The sidecar's validated domain types: what a service is, where its
//! endpoints are, the policy requests to it are held to ([`policy`]) and
//! what its own sidecar enforces inbound ([`inbound`]), and the routes
//! its callers take ([`route`]). Built from the
//! control plane's updates (`discovery::convert`) or a static file
//! (`config`) at the edge; the data path only ever sees these. A leaf:
//! nothing here depends on the rest of the sidecar.

pub mod inbound;
pub mod policy;
pub mod route;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use weft_proto::labels::Labels;
use weft_proto::name::ServiceName;
use weft_proto::protocol::{LoadBalancer, Protocol};

/// A map by service name, looked up on every request. FNV rather than
/// std's SipHash, which cost about 1% of a request's instructions in the
/// maps read by name (docs/performance.md). FNV has no secret key, so
/// every user bounds its keys: names made to collide then cost a scan of
/// that many at worst.
pub type NameMap<V> = HashMap<ServiceName, V, fnv::FnvBuildHasher>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet: gets traffic.
    Unknown,
    Healthy,
    /// Gets no traffic.
    Unhealthy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subset {
    pub name: String,
    pub labels: Labels,
}

/// How to reach a service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePolicy {
    pub protocol: Protocol,
    pub balance: LoadBalancer,
    pub subsets: Vec<Subset>,
    pub resilience: policy::Resilience,
}

impl Default for ServicePolicy {
    fn default() -> Self {
        ServicePolicy {
            protocol: Protocol::Grpc,
            balance: LoadBalancer::P2cEwma,
            subsets: Vec::new(),
            resilience: Default::default(),
        }
    }
}

/// One instance of a service: where its sidecar listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointSpec {
    pub id: Arc<str>,
    pub addr: Arc<str>,
    pub labels: Labels,
    pub health: Health,
    pub weight: u32,
}

/// A service as the sidecar knows it: its policy, all its endpoints, and
/// the routes attached to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceState {
    pub policy: ServicePolicy,
    /// By endpoint id.
    pub endpoints: BTreeMap<Arc<str>, EndpointSpec>,
    #[serde(serialize_with = "route::serialize_routes")]
    pub routes: Vec<route::RouteSpec>,
}
