//! The sidecar's configuration: command-line flags (each also a `WEFT_*`
//! environment variable) turned into a validated [`SidecarConfig`], and the
//! static mesh file for running without a control plane.

mod args;
mod file;

pub use args::Args;
pub use file::{FileProblem, StaticFileError, load_static_file, parse_static};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_proto::labels::Labels;
use weft_proto::name::ServiceName;
use weft_proto::protocol::Protocol;

use crate::identity::{CertFiles, IdentityConfig};
use crate::model::ServiceState;
use crate::telemetry::TracingConfig;

/// Where the sidecar's view of the mesh, and its certificate, come from:
/// each variant carries exactly what it needs.
#[derive(Debug, Clone)]
pub enum Source {
    /// The control plane: the mesh streamed over mutual TLS, with a
    /// certificate it signs (the first for the join token).
    ControlPlane(IdentityConfig),
    /// A static file, read once at start: mutual TLS with certificate
    /// files, plaintext without.
    Static {
        path: PathBuf,
        services: Vec<(ServiceName, ServiceState)>,
        certificates: Option<CertFiles>,
    },
}

/// A local port bound to one upstream service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub service: ServiceName,
    pub listen: SocketAddr,
}

/// Everything the sidecar needs, validated.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub service: ServiceName,
    pub instance_id: String,
    pub protocol: Protocol,
    pub labels: Labels,
    /// The local app; `None` for a sidecar that only makes calls.
    pub app: Option<SocketAddr>,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// What other sidecars dial; `None`: the bound inbound address.
    pub advertise: Option<String>,
    pub upstreams: Vec<Upstream>,
    /// Transparent interception (`--intercept`), with what becomes of
    /// unknown destinations; `None`: off.
    pub intercept: Option<crate::intercept::UnknownDestinations>,
    pub source: Source,
    pub timeouts: Timeouts,
    /// The in-flight limit of each called service whose policy sets none
    /// (`--max-concurrent-requests`); `None`: unlimited.
    pub max_concurrent_requests: Option<usize>,
    /// Where and how much to trace; `None`: no spans, headers untouched.
    pub tracing: Option<TracingConfig>,
    /// One JSON line per request on stdout.
    pub access_log: bool,
    /// The process's log filter, for `/log-level`; set by `main`.
    pub log_level: Option<std::sync::Arc<weft_process::logs::LogLevel>>,
    /// Gateway mode: the public listeners and their limits; `None`: a
    /// sidecar beside an app.
    pub gateway: Option<GatewayConfig>,
}

/// The sidecar as the mesh's front door.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Public cleartext listener (HTTP/1.1 and HTTP/2).
    pub http: Option<SocketAddr>,
    /// Public TLS listener; with at least one certificate.
    pub https: Option<SocketAddr>,
    /// The first answers clients whose SNI no certificate names.
    pub certs: Vec<CertPair>,
    /// How often the certificate files are checked for changes.
    pub reload_interval: Duration,
    /// A descriptor set with `google.api.http` annotations.
    pub transcode: Option<PathBuf>,
    pub limits: EdgeLimits,
    /// Keep a client's X-Forwarded-For (behind a trusted load balancer).
    pub trust_forwarded: bool,
    /// Also write X-Forwarded-Host and Forwarded.
    pub forwarded_full: bool,
}

/// A certificate chain and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a public edge protects itself with.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    pub max_request_bytes: u64,
    pub max_header_bytes: u32,
    /// For a request's headers to arrive.
    pub header_timeout: Duration,
    /// A client connection with nothing moving.
    pub idle_timeout: Duration,
    pub max_connections: usize,
}

/// Time limits of the sidecar.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long a call to a service not known yet waits to learn it.
    pub discovery: Duration,
    /// TCP connect to a peer or to the app.
    pub connect: Duration,
    /// How often the local app's health is checked.
    pub health_interval: Duration,
    /// How long in-flight requests get to finish at shutdown.
    pub drain: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            discovery: Duration::from_secs(2),
            connect: Duration::from_secs(1),
            health_interval: Duration::from_secs(2),
            drain: Duration::from_secs(10),
        }
    }
}

/// A flag or file the sidecar cannot start with.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--{flag}: {reason}")]
    Flag { flag: &'static str, reason: String },
    #[error(transparent)]
    File(#[from] StaticFileError),
}

impl ConfigError {
    /// `--flag: reason`.
    pub fn flag_says(flag: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Flag {
            flag,
            reason: reason.into(),
        }
    }

    /// For `map_err`: a validation error's text as the reason `flag` is
    /// refused.
    pub fn flag<E: std::fmt::Display>(flag: &'static str) -> impl FnOnce(E) -> Self {
        move |e| Self::flag_says(flag, e.to_string())
    }
}
