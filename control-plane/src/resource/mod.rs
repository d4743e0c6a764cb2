//! Mesh resources (`Service`, `AuthorizationPolicy`, `HTTPRoute`,
//! `GRPCRoute`, `Gateway`): validated domain types and their YAML form
//! for `weftctl` (the user-facing schema). Their protobuf form, for the
//! admin API and the store, is converted in `api::convert`.
//!
//! Every path in (YAML from a user here, protobuf from a client or the
//! store there) parses into the same types, whose constructors hold the
//! rules, so the rest of the control plane only ever holds resources that
//! are known to be good: nothing invalid can be represented.

mod addresses;
pub mod gateway;
mod policy;
mod render;
pub mod resilience;
pub mod route;
mod yaml;

pub use addresses::check_unique_addresses;
pub use gateway::{GatewayParent, GatewaySpec, Listener, ListenerProtocol};
pub use policy::{
    AuthorizationPolicySpec, AuthorizationRule, Caller, HttpMatch, HttpMethod, RawHttpMatch,
    RawRule, RuleError,
};
pub use render::{rule_to_value, to_value, to_yaml_documents, value_to_yaml};
pub use route::RouteSpec;
/// The name of a resource of any kind: the one service-name rule (a DNS
/// subdomain), so that a `Service` and its policies are named alike.
pub use weft_proto::name::ServiceName as Name;
pub use yaml::{API_VERSION, GATEWAY_API_VERSION, parse_documents};

use std::collections::BTreeMap;
use std::fmt;

use weft_proto::labels::Labels;
use weft_proto::protocol::{InboundMode, LoadBalancer, Protocol};
use weft_proto::routing::{RateLimit, RouteKind};

/// One reason a resource was rejected: which document (or request entry),
/// which field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// 1-based document number in a YAML file, or 0-based entry in an API request.
    pub document: usize,
    /// `Service/user-service` when the document got that far.
    pub resource: Option<String>,
    /// Dotted field path, e.g. `spec.loadBalancer`; empty for the whole document.
    pub path: String,
    pub reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(r) = &self.resource {
            write!(f, " ({r})")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// A set of resources was rejected; nothing of it was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidResources(pub Vec<FieldError>);

impl fmt::Display for InvalidResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} error{} (nothing was applied):",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// A named group of instances selected by labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subset {
    pub name: Name,
    pub labels: Labels,
}

/// The `Service` resource.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSpec {
    pub name: Name,
    /// `None`: whatever the instances declare (gRPC when they say nothing).
    pub protocol: Option<Protocol>,
    pub load_balancer: LoadBalancer,
    pub subsets: Vec<Subset>,
    pub inbound_mode: InboundMode,
    pub resilience: resilience::Resilience,
    /// `spec.rateLimit`: what the service's own sidecars let in, in all
    /// (key `All`) or per caller identity (key `Caller`); `None`: no limit.
    pub rate_limit: Option<RateLimit>,
    /// `spec.addresses`: virtual IPs intercepted connections are mapped to
    /// this service by (any port), like a Kubernetes ClusterIP.
    pub addresses: Vec<std::net::IpAddr>,
    /// `spec.opaquePorts`: server-first protocols; intercepted connections
    /// to these ports skip protocol detection.
    pub opaque_ports: Vec<u16>,
}

/// Checks `spec.addresses`: IPs a client could dial (not loopback,
/// unspecified or multicast), each once. Errors name the entry.
pub fn check_addresses<S: AsRef<str>>(
    raw: &[S],
    path: &str,
    errs: &mut Vec<(String, String)>,
) -> Vec<std::net::IpAddr> {
    let mut out: Vec<std::net::IpAddr> = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let a = a.as_ref();
        let at = format!("{path}[{i}]");
        match a.parse::<std::net::IpAddr>() {
            Err(_) => errs.push((at, format!("{a:?} is not an IP address"))),
            Ok(ip) if ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() => errs.push((
                at,
                format!("{ip} cannot be a service address (loopback, unspecified or multicast)"),
            )),
            Ok(ip) if out.contains(&ip) => errs.push((at, format!("{ip} is listed twice"))),
            Ok(ip) => out.push(ip),
        }
    }
    out
}

/// Checks `spec.opaquePorts`: real ports, each once.
pub fn check_ports(raw: &[u32], path: &str, errs: &mut Vec<(String, String)>) -> Vec<u16> {
    let mut out: Vec<u16> = Vec::new();
    for (i, &p) in raw.iter().enumerate() {
        let at = format!("{path}[{i}]");
        match u16::try_from(p) {
            Ok(0) | Err(_) => errs.push((at, format!("{p} is not a port (1 to 65535)"))),
            Ok(p) if out.contains(&p) => errs.push((at, format!("{p} is listed twice"))),
            Ok(p) => out.push(p),
        }
    }
    out
}

/// Any resource kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// Boxed: a service's settings are several times a policy's size.
    Service(Box<ServiceSpec>),
    AuthorizationPolicy(AuthorizationPolicySpec),
    /// An `HTTPRoute` or a `GRPCRoute`.
    Route(Box<RouteSpec>),
    Gateway(GatewaySpec),
}

/// The kinds of resource, as users write them in `kind:` and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    AuthorizationPolicy,
    HttpRoute,
    GrpcRoute,
    Gateway,
}

impl Kind {
    pub const CHOICES: &'static str = "Service, AuthorizationPolicy, HTTPRoute, GRPCRoute, Gateway";

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::HttpRoute => RouteKind::Http.as_str(),
            Kind::GrpcRoute => RouteKind::Grpc.as_str(),
            Kind::Gateway => "Gateway",
        }
    }

    /// Accepts `Service`, `service`, `services`, `svc`, and likewise
    /// `authorizationpolicy`, `authorizationpolicies`, `authz`,
    /// `httproute(s)`, `grpcroute(s)`, `gateway(s)`, as kubectl users expect.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "service" | "services" | "svc" => Some(Kind::Service),
            "authorizationpolicy" | "authorizationpolicies" | "authz" | "policy" | "policies" => {
                Some(Kind::AuthorizationPolicy)
            }
            "httproute" | "httproutes" => Some(Kind::HttpRoute),
            "grpcroute" | "grpcroutes" => Some(Kind::GrpcRoute),
            "gateway" | "gateways" | "gtw" => Some(Kind::Gateway),
            _ => None,
        }
    }

    /// The kind of a route.
    pub fn of_route(kind: RouteKind) -> Self {
        match kind {
            RouteKind::Http => Kind::HttpRoute,
            RouteKind::Grpc => Kind::GrpcRoute,
        }
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::Route(r) => Kind::of_route(r.kind),
            Resource::Gateway(_) => Kind::Gateway,
        }
    }

    pub fn name(&self) -> &Name {
        match self {
            Resource::Service(s) => &s.name,
            Resource::AuthorizationPolicy(p) => &p.name,
            Resource::Route(r) => &r.name,
            Resource::Gateway(g) => &g.name,
        }
    }

    /// `Service/user-service`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind().as_str(), self.name())
    }
}

/// Parses every item, reporting every failure with its index.
pub(crate) fn parse_each<S, T, E>(
    items: &[S],
    parse: impl Fn(&S) -> Result<T, E>,
) -> Result<Vec<T>, Vec<(usize, E)>> {
    let mut ok = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match parse(item) {
            Ok(v) => ok.push(v),
            Err(e) => errors.push((i, e)),
        }
    }
    if errors.is_empty() {
        Ok(ok)
    } else {
        Err(errors)
    }
}

/// Checks the rules that span several resources of one request: one resource
/// per kind and name.
pub fn check_unique(resources: &[Resource]) -> Result<(), InvalidResources> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors = Vec::new();
    for (i, r) in resources.iter().enumerate() {
        if let Some(first) = seen.insert(r.key(), i) {
            errors.push(FieldError {
                document: i + 1,
                resource: Some(r.key()),
                path: "metadata.name".into(),
                reason: format!("duplicate of document {}", first + 1),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(InvalidResources(errors))
    }
}
