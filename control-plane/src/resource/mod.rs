//! Mesh resources (`Service`, …): validated domain types, their YAML form for
//! `weftctl`, and their protobuf form for the admin API and the store.
//!
//! Every path in (YAML from a user, protobuf from a client or the store) goes
//! through validation here, so the rest of the control plane only ever holds
//! resources that are known to be good.

mod name;
mod proto;
mod yaml;

pub use name::{LabelMap, Name, validate_labels};
pub use proto::resources_from_proto;
pub use yaml::{API_VERSION, parse_documents, to_value, to_yaml_documents, value_to_yaml};

use std::collections::BTreeMap;
use std::fmt;

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

/// The application protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Grpc,
    Http,
    Tcp,
}

impl Protocol {
    pub const CHOICES: &'static str = "grpc, http, tcp";

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "grpc" => Some(Protocol::Grpc),
            "http" => Some(Protocol::Http),
            "tcp" => Some(Protocol::Tcp),
            _ => None,
        }
    }
}

/// How a caller's sidecar picks an instance for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency (the default).
    #[default]
    P2cEwma,
    RoundRobin,
}

impl LoadBalancer {
    pub const CHOICES: &'static str = "p2c-ewma, round-robin";

    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancer::P2cEwma => "p2c-ewma",
            LoadBalancer::RoundRobin => "round-robin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "p2c-ewma" => Some(LoadBalancer::P2cEwma),
            "round-robin" => Some(LoadBalancer::RoundRobin),
            _ => None,
        }
    }
}

/// A named group of instances selected by labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subset {
    pub name: Name,
    pub labels: LabelMap,
}

/// The `Service` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: Name,
    /// `None`: whatever the instances declare (gRPC when they say nothing).
    pub protocol: Option<Protocol>,
    pub load_balancer: LoadBalancer,
    pub subsets: Vec<Subset>,
}

/// Any resource kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Service(ServiceSpec),
}

/// The kinds of resource, as users write them in `kind:` and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
}

impl Kind {
    pub const CHOICES: &'static str = "Service";

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
        }
    }

    /// Accepts `Service`, `service`, `services` and `svc`, as kubectl users expect.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "service" | "services" | "svc" => Some(Kind::Service),
            _ => None,
        }
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
        }
    }

    pub fn name(&self) -> &Name {
        match self {
            Resource::Service(s) => &s.name,
        }
    }

    /// `Service/user-service`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind().as_str(), self.name())
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
