//! The sidecar's validated domain types: what a service is and where its
//! endpoints are. Built from the control plane's updates or a static file at
//! the edge; the data path only ever sees these.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

/// A validated service name (a DNS subdomain, e.g. `user-service`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ServiceName(Arc<str>);

impl ServiceName {
    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 253
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            });
        if ok {
            Ok(ServiceName(s.into()))
        } else {
            Err(format!(
                "{s:?} is not a valid service name: use lowercase letters, digits, '-' and '.'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The metrics label for requests whose service could not be named.
    pub fn unresolved() -> Self {
        ServiceName("(unresolved)".into())
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for ServiceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Grpc,
    Http,
    Tcp,
}

impl Protocol {
    pub const CHOICES: &'static str = "grpc, http, tcp";

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "grpc" => Ok(Protocol::Grpc),
            "http" => Ok(Protocol::Http),
            "tcp" => Ok(Protocol::Tcp),
            _ => Err(format!(
                "unknown protocol {s:?}, expected one of {}",
                Self::CHOICES
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum Balance {
    #[default]
    #[serde(rename = "p2c-ewma")]
    P2cEwma,
    #[serde(rename = "round-robin")]
    RoundRobin,
}

impl Balance {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "p2c-ewma" => Ok(Balance::P2cEwma),
            "round-robin" => Ok(Balance::RoundRobin),
            _ => Err(format!(
                "unknown load balancer {s:?}, expected one of p2c-ewma, round-robin"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Not checked yet: gets traffic.
    Unknown,
    Healthy,
    /// Gets no traffic.
    Unhealthy,
}

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subset {
    pub name: String,
    pub labels: Labels,
}

/// How to reach a service.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServicePolicy {
    pub protocol: Protocol,
    pub balance: Balance,
    pub subsets: Vec<Subset>,
    pub resilience: crate::resilience::Resilience,
}

impl Default for ServicePolicy {
    fn default() -> Self {
        ServicePolicy {
            protocol: Protocol::Grpc,
            balance: Balance::P2cEwma,
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

/// Checks `host:port` with a non-zero port.
pub fn validate_addr(addr: &str) -> Result<(), String> {
    if let Ok(a) = addr.parse::<std::net::SocketAddr>() {
        return if a.port() == 0 {
            Err(format!("{addr:?} has port 0"))
        } else {
            Ok(())
        };
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            ServiceName::parse(host)
                .map(|_| ())
                .map_err(|_| format!("{addr:?} has no valid host"))
        }
        _ => Err(format!("{addr:?} is not host:port")),
    }
}

/// A service as the sidecar knows it: its policy and all its endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServiceState {
    pub policy: ServicePolicy,
    /// By endpoint id.
    pub endpoints: BTreeMap<Arc<str>, EndpointSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        assert!(ServiceName::parse("user-service").is_ok());
        assert!(ServiceName::parse("127.0.0.1").is_ok()); // digits are fine in labels
        assert!(ServiceName::parse("User").is_err());
        assert!(ServiceName::parse("").is_err());
        assert!(validate_addr("127.0.0.1:1").is_ok());
        assert!(validate_addr("user-1.mesh:15006").is_ok());
        assert!(validate_addr("127.0.0.1:0").is_err());
        assert!(validate_addr("nohost").is_err());
    }
}
