//! How a service is spoken to, picked from and protected: its application
//! protocol, the load balancer callers use, and how its sidecar accepts
//! inbound connections. Each is spelled one way in flags, YAML, `/config`
//! and `weftctl` output, and maps to one wire enum.

use std::fmt;
use std::str::FromStr;

use crate::v1 as pb;

/// A word that is not one of the choices, or a wire number this build does
/// not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChoiceError {
    #[error("unknown {what} {value:?}, expected one of {choices}")]
    Unknown {
        /// What was asked for (`protocol`, `load balancer`, …).
        what: &'static str,
        value: String,
        /// The choices, comma-separated.
        choices: &'static str,
    },
    #[error("unknown {what} number {number}")]
    Number { what: &'static str, number: i32 },
}

/// The application protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Grpc,
    Http,
    Tcp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Grpc, Protocol::Http, Protocol::Tcp];
    pub const CHOICES: &'static str = "grpc, http, tcp";

    pub fn parse(s: &str) -> Result<Self, ChoiceError> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| ChoiceError::Unknown {
                what: "protocol",
                value: s.to_string(),
                choices: Self::CHOICES,
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }

    pub fn to_proto(self) -> pb::Protocol {
        match self {
            Protocol::Grpc => pb::Protocol::Grpc,
            Protocol::Http => pb::Protocol::Http,
            Protocol::Tcp => pb::Protocol::Tcp,
        }
    }

    /// `None` for `PROTOCOL_UNSPECIFIED` (the reader picks its default).
    pub fn from_proto(number: i32) -> Result<Option<Self>, ChoiceError> {
        match pb::Protocol::try_from(number) {
            Ok(pb::Protocol::Unspecified) => Ok(None),
            Ok(pb::Protocol::Grpc) => Ok(Some(Protocol::Grpc)),
            Ok(pb::Protocol::Http) => Ok(Some(Protocol::Http)),
            Ok(pb::Protocol::Tcp) => Ok(Some(Protocol::Tcp)),
            Err(_) => Err(ChoiceError::Number {
                what: "protocol",
                number,
            }),
        }
    }
}

/// How a caller's sidecar picks an instance for each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency (the default).
    #[default]
    #[serde(rename = "p2c-ewma")]
    P2cEwma,
    #[serde(rename = "round-robin")]
    RoundRobin,
}

impl LoadBalancer {
    pub const ALL: [LoadBalancer; 2] = [LoadBalancer::P2cEwma, LoadBalancer::RoundRobin];
    pub const CHOICES: &'static str = "p2c-ewma, round-robin";

    pub fn parse(s: &str) -> Result<Self, ChoiceError> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| ChoiceError::Unknown {
                what: "load balancer",
                value: s.to_string(),
                choices: Self::CHOICES,
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LoadBalancer::P2cEwma => "p2c-ewma",
            LoadBalancer::RoundRobin => "round-robin",
        }
    }

    pub fn to_proto(self) -> pb::LoadBalancer {
        match self {
            LoadBalancer::P2cEwma => pb::LoadBalancer::P2cEwma,
            LoadBalancer::RoundRobin => pb::LoadBalancer::RoundRobin,
        }
    }

    /// Unspecified is the default, P2C.
    pub fn from_proto(number: i32) -> Result<Self, ChoiceError> {
        match pb::LoadBalancer::try_from(number) {
            Ok(pb::LoadBalancer::Unspecified | pb::LoadBalancer::P2cEwma) => {
                Ok(LoadBalancer::P2cEwma)
            }
            Ok(pb::LoadBalancer::RoundRobin) => Ok(LoadBalancer::RoundRobin),
            Err(_) => Err(ChoiceError::Number {
                what: "load balancer",
                number,
            }),
        }
    }
}

/// How a service's sidecar accepts inbound connections. `/config` shows it
/// in capitals (`STRICT`), as the wire enum names it; YAML takes any case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum InboundMode {
    /// Mutual TLS only (the default).
    #[default]
    Strict,
    /// Mutual TLS or plaintext: for migrating a service into the mesh.
    Permissive,
}

impl InboundMode {
    pub const ALL: [InboundMode; 2] = [InboundMode::Strict, InboundMode::Permissive];
    pub const CHOICES: &'static str = "strict, permissive";

    /// Any case: `strict`, `STRICT`.
    pub fn parse(s: &str) -> Result<Self, ChoiceError> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| ChoiceError::Unknown {
                what: "inbound mode",
                value: s.to_string(),
                choices: Self::CHOICES,
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InboundMode::Strict => "strict",
            InboundMode::Permissive => "permissive",
        }
    }

    pub fn to_proto(self) -> pb::InboundMode {
        match self {
            InboundMode::Strict => pb::InboundMode::Strict,
            InboundMode::Permissive => pb::InboundMode::Permissive,
        }
    }

    /// Unspecified is the default, STRICT.
    pub fn from_proto(number: i32) -> Result<Self, ChoiceError> {
        match pb::InboundMode::try_from(number) {
            Ok(pb::InboundMode::Unspecified | pb::InboundMode::Strict) => Ok(InboundMode::Strict),
            Ok(pb::InboundMode::Permissive) => Ok(InboundMode::Permissive),
            Err(_) => Err(ChoiceError::Number {
                what: "inbound mode",
                number,
            }),
        }
    }
}

macro_rules! text_forms {
    ($($t:ty),*) => {$(
        impl FromStr for $t {
            type Err = ChoiceError;

            fn from_str(s: &str) -> Result<Self, ChoiceError> {
                <$t>::parse(s)
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

text_forms!(Protocol, LoadBalancer, InboundMode);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_choice_parses_from_its_text_and_is_listed() {
        for p in Protocol::ALL {
            assert_eq!(p.as_str().parse::<Protocol>(), Ok(p));
            assert!(Protocol::CHOICES.contains(p.as_str()));
            assert_eq!(Protocol::from_proto(p.to_proto() as i32), Ok(Some(p)));
        }
        for b in LoadBalancer::ALL {
            assert_eq!(b.as_str().parse::<LoadBalancer>(), Ok(b));
            assert!(LoadBalancer::CHOICES.contains(b.as_str()));
            assert_eq!(LoadBalancer::from_proto(b.to_proto() as i32), Ok(b));
        }
        for m in InboundMode::ALL {
            assert_eq!(m.as_str().parse::<InboundMode>(), Ok(m));
            assert!(InboundMode::CHOICES.contains(m.as_str()));
            assert_eq!(InboundMode::from_proto(m.to_proto() as i32), Ok(m));
        }
    }

    #[test]
    fn errors_name_the_value_and_the_choices() {
        let e = Protocol::parse("quic").expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown protocol \"quic\", expected one of grpc, http, tcp"
        );
        assert!(Protocol::parse("GRPC").is_err(), "protocols are lower case");
        let e = LoadBalancer::parse("random").expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown load balancer \"random\", expected one of p2c-ewma, round-robin"
        );
        assert_eq!(
            InboundMode::parse("PERMISSIVE"),
            Ok(InboundMode::Permissive)
        );
        assert!(InboundMode::parse("lax").is_err());
        assert_eq!(
            LoadBalancer::from_proto(99).map_err(|e| e.to_string()),
            Err("unknown load balancer number 99".into())
        );
    }

    #[test]
    fn unspecified_on_the_wire_reads_as_the_default() {
        assert_eq!(Protocol::from_proto(0), Ok(None));
        assert_eq!(LoadBalancer::from_proto(0), Ok(LoadBalancer::default()));
        assert_eq!(InboundMode::from_proto(0), Ok(InboundMode::default()));
    }

    #[test]
    fn config_spellings() {
        let v = serde_json::to_value((
            Protocol::Grpc,
            LoadBalancer::RoundRobin,
            LoadBalancer::P2cEwma,
            InboundMode::Permissive,
        ))
        .expect("serializes");
        assert_eq!(
            v,
            serde_json::json!(["grpc", "round-robin", "p2c-ewma", "PERMISSIVE"])
        );
    }
}
