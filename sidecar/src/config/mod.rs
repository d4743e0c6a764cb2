//! The sidecar's configuration: command-line flags (each also a `WEFT_*`
//! environment variable) turned into a validated [`SidecarConfig`], and the
//! static mesh file for running without a control plane.

mod args;
mod file;

pub use args::Args;
pub use file::{StaticFileError, load_static_file, parse_static};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use weft_proto::labels::Labels;
use weft_proto::name::ServiceName;
use weft_proto::protocol::Protocol;

use crate::model::ServiceState;

/// Where the sidecar's view of the mesh comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Streamed from the control plane at this URL.
    ControlPlane(String),
    /// A static file, read once at start.
    Static {
        path: PathBuf,
        services: Vec<(ServiceName, ServiceState)>,
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
    pub source: Source,
    /// Where the certificate comes from; `None` with a static config and no
    /// certificate files (plaintext).
    pub identity: Option<crate::identity::IdentitySource>,
    pub timeouts: Timeouts,
    /// Where and how much to trace; `None`: no spans, headers untouched.
    pub tracing: Option<TracingConfig>,
    /// One JSON line per request on stdout.
    pub access_log: bool,
    /// The process's log filter, for `/log-level`; set by `main`.
    pub log_level: Option<std::sync::Arc<weft_process::logs::LogLevel>>,
}

/// Trace export, validated.
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// The OTLP/gRPC collector.
    pub endpoint: http::Uri,
    /// The share of new traces recorded (0..=1).
    pub sampling: f64,
    /// Finished spans waiting for export, at most.
    pub queue: usize,
    /// For an https collector: the CA certificates (PEM) its certificate
    /// must chain to.
    pub ca_pem: Option<Vec<u8>>,
    /// For a collector that asks for one: the client certificate shown.
    pub client_identity: Option<PemIdentity>,
}

/// A certificate chain and its private key, PEM, checked to belong
/// together.
#[derive(Clone)]
pub struct PemIdentity {
    pub chain: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for PemIdentity {
    /// The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemIdentity")
            .field("chain_bytes", &self.chain.len())
            .finish_non_exhaustive()
    }
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
