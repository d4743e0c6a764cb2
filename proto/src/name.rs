//! The names of things in the mesh, and the one rule for each: service (and
//! resource) names, instance ids, and the `host:port` addresses sidecars
//! advertise. The sidecar checks its flags and files with these and the
//! control plane its YAML and each `Hello`, so neither accepts what the
//! other would refuse.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The most services one sidecar may want on its discovery stream (its
/// declared upstreams and the services it subscribed to since). Far more
/// than any app calls: it bounds what one sidecar's app, naming a new
/// service per request, can make the sidecar ask for and keep, and what one
/// stream can make the control plane keep.
pub const MAX_WANTED: usize = 10_000;

/// Why a text is not a service name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("{0:?} is longer than 253 characters")]
    TooLong(String),
    #[error(
        "{0:?} is not a valid name: use lowercase letters, digits, '-' and '.', \
         starting and ending with a letter or digit (e.g. user-service)"
    )]
    Invalid(String),
}

/// A validated name of a service, or of a resource: a DNS subdomain
/// (RFC 1123: dot-separated labels of at most 63 lowercase letters, digits
/// and `-`, each starting and ending alphanumeric; at most 253 characters in
/// all), so that it can also be used as an HTTP authority and a DNS name.
/// Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct ServiceName(Arc<str>);

impl ServiceName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > 253 {
            return Err(NameError::TooLong(s.to_string()));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !s.split('.').all(label_ok) {
            return Err(NameError::Invalid(s.to_string()));
        }
        Ok(ServiceName(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The metrics label for requests whose service could not be named.
    /// A placeholder only: it is no valid name, so no parsed name equals
    /// it.
    pub fn unresolved() -> Self {
        ServiceName("(unresolved)".into())
    }

    /// Whether this is [`ServiceName::unresolved`].
    pub fn is_unresolved(&self) -> bool {
        self.as_str() == "(unresolved)"
    }
}

impl FromStr for ServiceName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, NameError> {
        ServiceName::parse(s)
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Borrow<str> for ServiceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ServiceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Metrics are labelled by service (`service="user-service"`).
#[cfg(feature = "prometheus")]
impl prometheus_client::encoding::EncodeLabelValue for ServiceName {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), fmt::Error> {
        prometheus_client::encoding::EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// An instance id that is not 1 to 253 printable characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("instance id {0:?} must be 1 to 253 printable characters without spaces")]
pub struct InstanceIdError(pub String);

/// Checks an instance id: 1 to 253 printable ASCII characters, no spaces.
/// Looser than a name, since ids often come from elsewhere (a pod name, a
/// host and port); bounded, since the control plane stores and prints them.
pub fn validate_instance_id(id: &str) -> Result<(), InstanceIdError> {
    if id.is_empty() || id.len() > 253 || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(InstanceIdError(id.to_string()));
    }
    Ok(())
}

/// Why a text is not an address other sidecars can dial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("{0:?} is not host:port")]
    NotHostPort(String),
    #[error("{0:?} has no valid port")]
    Port(String),
    #[error("{0:?} has no valid host")]
    Host(String),
}

/// Checks `host:port`: an IP address (`[..]` around IPv6) or a DNS name
/// (the [`ServiceName`] rule), and a port other than 0.
pub fn validate_address(addr: &str) -> Result<(), AddressError> {
    if let Ok(a) = addr.parse::<std::net::SocketAddr>() {
        return match a.port() {
            0 => Err(AddressError::Port(addr.to_string())),
            _ => Ok(()),
        };
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(AddressError::NotHostPort(addr.to_string()));
    };
    match port.parse::<u16>() {
        Ok(p) if p != 0 => {}
        _ => return Err(AddressError::Port(addr.to_string())),
    }
    ServiceName::parse(host)
        .map(|_| ())
        .map_err(|_| AddressError::Host(addr.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_subdomains() {
        let long_ok = format!("{}.{}", "a".repeat(63), "b".repeat(63));
        for ok in [
            "a",
            "user-service",
            "user-service.prod",
            "a1",
            "0abc",
            "127.0.0.1",
            long_ok.as_str(),
        ] {
            assert_eq!(ServiceName::parse(ok).map(|n| n.to_string()), Ok(ok.into()));
        }
        let too_long = ["a"; 128].join(".");
        for bad in [
            "User",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "a_b",
            "a b",
            "a/b",
            "é",
            &"x".repeat(64),
        ] {
            assert_eq!(
                ServiceName::parse(bad),
                Err(NameError::Invalid(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(ServiceName::parse(""), Err(NameError::Empty));
        assert_eq!(
            ServiceName::parse(&too_long),
            Err(NameError::TooLong(too_long.clone()))
        );
        let e = ServiceName::parse("Not A Name").expect_err("invalid");
        assert!(e.to_string().contains("\"Not A Name\""), "{e}");
    }

    #[test]
    fn the_placeholder_never_validates() {
        let u = ServiceName::unresolved();
        assert!(ServiceName::parse(u.as_str()).is_err());
        assert_eq!(u.to_string(), "(unresolved)");
    }

    #[test]
    fn names_serialize_as_text_and_look_up_as_str() {
        let n: ServiceName = "users".parse().expect("valid");
        assert_eq!(serde_json::to_string(&n).expect("serializes"), "\"users\"");
        let set: std::collections::BTreeSet<ServiceName> = [n.clone()].into();
        assert!(set.contains("users"));
    }

    #[test]
    fn instance_ids() {
        for ok in ["u-1", "10.0.0.5:15006", "pod/abc_1", &"x".repeat(253)] {
            assert!(validate_instance_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "tab\t", "é", &"x".repeat(254)] {
            assert_eq!(validate_instance_id(bad), Err(InstanceIdError(bad.into())));
        }
    }

    #[test]
    fn addresses() {
        for ok in [
            "127.0.0.1:15006",
            "127.0.0.1:1",
            "[::1]:80",
            "user-1.mesh:15006",
            "a:1",
        ] {
            assert!(validate_address(ok).is_ok(), "{ok}");
        }
        for (bad, want) in [
            ("127.0.0.1", AddressError::NotHostPort("127.0.0.1".into())),
            ("nohost", AddressError::NotHostPort("nohost".into())),
            ("127.0.0.1:0", AddressError::Port("127.0.0.1:0".into())),
            ("host:x", AddressError::Port("host:x".into())),
            ("host:70000", AddressError::Port("host:70000".into())),
            (":80", AddressError::Host(":80".into())),
            ("Bad_Host:80", AddressError::Host("Bad_Host:80".into())),
        ] {
            assert_eq!(validate_address(bad), Err(want), "{bad}");
        }
    }
}
