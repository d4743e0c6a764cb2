//! The `Gateway` resource as a validated value: the mesh's front door, in
//! the Kubernetes Gateway API's shape. Its name is also its mesh identity —
//! the service its sidecar joins as, so that `AuthorizationPolicy` can say
//! `from: [gateway]` — and its listeners say which ports, protocols and
//! host names it serves. Routes attach to it by `parentRefs` of kind
//! `Gateway` (checked in `route/check.rs`); its certificates are files
//! given to the gateway process, never Secrets.
//!
//! ```yaml
//! apiVersion: gateway.networking.k8s.io/v1
//! kind: Gateway
//! metadata: {name: gateway}
//! spec:
//!   gatewayClassName: weft
//!   listeners:
//!     - {name: http, port: 8080, protocol: HTTP}
//!     - {name: https, port: 8443, protocol: HTTPS, hostname: "*.example.com", tls: {mode: Terminate}}
//! ```

use std::fmt;
use std::num::NonZeroU16;

use weft_proto::routing::HostMatch;

use super::Name;

/// The one class of gateway Weft has (`spec.gatewayClassName`).
pub const GATEWAY_CLASS: &str = "weft";
/// The most listeners a gateway may have (the Gateway API's limit).
pub const MAX_LISTENERS: usize = 64;

/// What a listener speaks to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListenerProtocol {
    Http,
    /// TLS terminated at the gateway, then HTTP.
    Https,
}

impl ListenerProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            ListenerProtocol::Http => "HTTP",
            ListenerProtocol::Https => "HTTPS",
        }
    }

    pub fn parse(s: &str) -> Result<Self, GatewayError> {
        match s {
            "HTTP" => Ok(ListenerProtocol::Http),
            "HTTPS" => Ok(ListenerProtocol::Https),
            other => Err(GatewayError::Protocol(other.to_string())),
        }
    }
}

impl fmt::Display for ListenerProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a gateway or one of its listeners was refused; the text follows
/// the field's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("{0:?}: the only gateway class is {GATEWAY_CLASS:?} (or leave it out)")]
    Class(String),
    #[error("{0:?} is not a listener protocol: HTTP or HTTPS")]
    Protocol(String),
    #[error("a port between 1 and 65535")]
    Port,
    #[error("TLS is for HTTPS listeners; an HTTP listener takes none")]
    TlsOnHttp,
    #[error("{0:?}: the only TLS mode is Terminate")]
    TlsMode(String),
    #[error(
        "certificates are files given to the gateway process, not Secrets: leave certificateRefs out"
    )]
    CertificateRefs,
    #[error("a gateway needs at least one listener")]
    NoListeners,
    #[error("at most {MAX_LISTENERS} listeners")]
    TooManyListeners,
    #[error("listener {0} is named twice")]
    DuplicateName(Name),
    #[error("listeners[{0}] already serves port {1} for {2}")]
    DuplicatePortHost(usize, u16, String),
    #[error("listeners[{0}] serves port {1} as {2}: listeners sharing a port share a protocol")]
    MixedProtocols(usize, u16, ListenerProtocol),
}

/// One of a gateway's listeners.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// What routes' `sectionName` names.
    pub name: Name,
    pub port: NonZeroU16,
    pub protocol: ListenerProtocol,
    /// `None`: any host.
    pub hostname: Option<HostMatch>,
    /// `tls: {mode: Terminate}` was written (HTTPS terminates either way).
    pub tls_terminate: bool,
}

impl Listener {
    /// A port as written (any integer); `Err` unless 1..=65535.
    pub fn port(n: i64) -> Result<NonZeroU16, GatewayError> {
        u16::try_from(n)
            .ok()
            .and_then(NonZeroU16::new)
            .ok_or(GatewayError::Port)
    }

    /// `foo.example.com`, or "any host".
    pub fn host_text(&self) -> String {
        self.hostname
            .as_ref()
            .map_or_else(|| "any host".to_string(), ToString::to_string)
    }
}

/// Which part of a gateway a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayPart {
    Listeners,
    ListenerName(usize),
    Listener(usize),
}

/// The `Gateway` resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    /// Its mesh identity too.
    pub name: Name,
    /// Whether `gatewayClassName: weft` was written (the only class).
    pub class_named: bool,
    listeners: Vec<Listener>,
}

impl GatewaySpec {
    /// Checks what spans the listeners: names unique, (port, host name)
    /// pairs unique, one protocol per port.
    pub fn new(
        name: Name,
        class_named: bool,
        listeners: Vec<Listener>,
    ) -> Result<Self, Vec<(GatewayPart, GatewayError)>> {
        let mut errors = Vec::new();
        if listeners.is_empty() {
            errors.push((GatewayPart::Listeners, GatewayError::NoListeners));
        }
        if listeners.len() > MAX_LISTENERS {
            errors.push((GatewayPart::Listeners, GatewayError::TooManyListeners));
        }
        for (i, l) in listeners.iter().enumerate() {
            let before = &listeners[..i];
            if before.iter().any(|b| b.name == l.name) {
                errors.push((
                    GatewayPart::ListenerName(i),
                    GatewayError::DuplicateName(l.name.clone()),
                ));
            }
            if let Some(j) = before
                .iter()
                .position(|b| b.port == l.port && b.hostname == l.hostname)
            {
                errors.push((
                    GatewayPart::Listener(i),
                    GatewayError::DuplicatePortHost(j, l.port.get(), l.host_text()),
                ));
            } else if let Some(j) = before
                .iter()
                .position(|b| b.port == l.port && b.protocol != l.protocol)
            {
                errors.push((
                    GatewayPart::Listener(i),
                    GatewayError::MixedProtocols(j, l.port.get(), listeners[j].protocol),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(GatewaySpec {
            name,
            class_named,
            listeners,
        })
    }

    /// Never empty.
    pub fn listeners(&self) -> &[Listener] {
        &self.listeners
    }

    pub fn listener(&self, name: &Name) -> Option<&Listener> {
        self.listeners.iter().find(|l| &l.name == name)
    }
}

/// A route's reference to a gateway (`parentRefs` of kind `Gateway`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GatewayParent {
    pub name: Name,
    /// `sectionName`: one listener; `None`: every listener.
    pub section: Option<Name>,
}

impl fmt::Display for GatewayParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.section {
            Some(s) => write!(f, "{} (listener {s})", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).expect("name")
    }

    fn listener(n: &str, port: i64, protocol: ListenerProtocol, host: Option<&str>) -> Listener {
        Listener {
            name: name(n),
            port: Listener::port(port).expect("port"),
            protocol,
            hostname: host.map(|h| HostMatch::parse(h).expect("host")),
            tls_terminate: false,
        }
    }

    #[test]
    fn listeners_are_unique_by_name_and_by_port_and_host() {
        use ListenerProtocol::{Http, Https};
        let errors = GatewaySpec::new(
            name("gw"),
            false,
            vec![
                listener("a", 80, Http, None),
                listener("a", 81, Http, None),
                listener("b", 80, Http, None),
                listener("c", 80, Https, Some("x.example.com")),
            ],
        )
        .expect_err("invalid");
        assert_eq!(
            errors,
            [
                (
                    GatewayPart::ListenerName(1),
                    GatewayError::DuplicateName(name("a"))
                ),
                (
                    GatewayPart::Listener(2),
                    GatewayError::DuplicatePortHost(0, 80, "any host".into())
                ),
                (
                    GatewayPart::Listener(3),
                    GatewayError::MixedProtocols(0, 80, Http)
                ),
            ]
        );
        assert_eq!(
            GatewaySpec::new(name("gw"), false, vec![]),
            Err(vec![(GatewayPart::Listeners, GatewayError::NoListeners)])
        );
        let gw = GatewaySpec::new(
            name("gw"),
            true,
            vec![
                listener("a", 443, Https, Some("a.example.com")),
                listener("b", 443, Https, Some("*.example.com")),
            ],
        )
        .expect("same port, other host names");
        assert_eq!(gw.listener(&name("b")).map(|l| l.port.get()), Some(443));
        assert_eq!(Listener::port(0), Err(GatewayError::Port));
        assert_eq!(Listener::port(65_536), Err(GatewayError::Port));
    }
}
