//! Mesh resources (`Service`, …): validated domain types and their YAML form
//! for `weftctl` (the user-facing schema). Their protobuf form, for the
//! admin API and the store, is converted in `api::convert`.
//!
//! Every path in (YAML from a user here, protobuf from a client or the
//! store there) goes through the same rules, so the rest of the control
//! plane only ever holds resources that are known to be good.

mod render;
pub mod resilience;
mod yaml;

pub use render::{to_value, to_yaml_documents, value_to_yaml};
/// The name of a resource of any kind: the one service-name rule (a DNS
/// subdomain), so that a `Service` and its policies are named alike.
pub use weft_proto::name::ServiceName as Name;
pub use yaml::{API_VERSION, parse_documents};

use std::collections::BTreeMap;
use std::fmt;

use weft_proto::labels::Labels;
use weft_proto::pattern::MethodPattern;
use weft_proto::protocol::{InboundMode, LoadBalancer, Protocol};

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
}

/// HTTP requests an authorization rule allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMatch {
    /// Upper-case methods; empty: any.
    pub methods: Vec<String>,
    /// Empty: any path.
    pub path_prefix: String,
}

/// Who may call, and optionally what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRule {
    /// Service names, or `*` for any caller with a mesh identity.
    pub from: Vec<String>,
    /// `/pkg.Service/Method` patterns with `*` wildcards.
    pub grpc_methods: Vec<String>,
    pub http: Vec<HttpMatch>,
}

/// The `AuthorizationPolicy` resource: allow rules for one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationPolicySpec {
    pub name: Name,
    pub service: Name,
    pub rules: Vec<AuthorizationRule>,
}

/// Any resource kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    Service(ServiceSpec),
    AuthorizationPolicy(AuthorizationPolicySpec),
}

/// The kinds of resource, as users write them in `kind:` and on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    AuthorizationPolicy,
}

impl Kind {
    pub const CHOICES: &'static str = "Service, AuthorizationPolicy";

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }

    /// Accepts `Service`, `service`, `services`, `svc`, and likewise
    /// `authorizationpolicy`, `authorizationpolicies`, `authz`, as kubectl
    /// users expect.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "service" | "services" | "svc" => Some(Kind::Service),
            "authorizationpolicy" | "authorizationpolicies" | "authz" | "policy" | "policies" => {
                Some(Kind::AuthorizationPolicy)
            }
            _ => None,
        }
    }
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
        }
    }

    pub fn name(&self) -> &Name {
        match self {
            Resource::Service(s) => &s.name,
            Resource::AuthorizationPolicy(p) => &p.name,
        }
    }

    /// `Service/user-service`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.kind().as_str(), self.name())
    }
}

/// Checks one authorization rule; errors are (field under the rule, reason).
pub fn validate_rule(r: &AuthorizationRule) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    if r.from.is_empty() {
        errors.push((
            "from".into(),
            "name at least one caller service, or \"*\" for any".into(),
        ));
    }
    for (i, f) in r.from.iter().enumerate() {
        if f != "*"
            && let Err(e) = Name::parse(f)
        {
            errors.push((format!("from[{i}]"), e.to_string()));
        }
    }
    for (i, m) in r.grpc_methods.iter().enumerate() {
        if let Err(e) = MethodPattern::parse(m) {
            errors.push((format!("grpcMethods[{i}]"), e.to_string()));
        }
    }
    for (i, h) in r.http.iter().enumerate() {
        for (j, m) in h.methods.iter().enumerate() {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                errors.push((
                    format!("http[{i}].methods[{j}]"),
                    format!("{m:?} is not an HTTP method such as GET"),
                ));
            }
        }
        if !h.path_prefix.is_empty() && !h.path_prefix.starts_with('/') {
            errors.push((
                format!("http[{i}].pathPrefix"),
                format!("{:?} must start with /", h.path_prefix),
            ));
        }
    }
    errors
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
