//! Where the sidecar's view of the mesh and its certificate come from:
//! `--control-plane` with a join token (and `--ca-file` to verify it with
//! instead of the token's pinned fingerprint), or `--config` with
//! certificate files for mutual TLS (`--cert-file`, `--key-file`,
//! `--ca-file`) or none (plaintext). The flags are checked first; the
//! token, the CA, the mesh file and the certificates are read after.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use weft_proto::addresses::ControlPlaneList;
use weft_proto::duration::parse_duration;
use weft_proto::identity::{JoinToken, certs_from_pem};
use weft_proto::name::ServiceName;

use crate::config::{ConfigError, Source, load_static_file};
use crate::failover::ControlPlanes;
use crate::identity::{CertFiles, IdentityConfig};

#[derive(Debug, Args)]
pub struct SourceArgs {
    /// The control plane's gRPC URL (https://HOST:PORT; port 15012 when
    /// none is given). Replicas on etcd: a comma-separated list, and a host
    /// name that resolves to several addresses counts as each of them. The
    /// sidecar tries them in an order of its own (so that a fleet spreads
    /// over the replicas), moves to the next when one cannot be reached or
    /// its stream ends, with jittered backoff, and serves traffic with what
    /// it holds meanwhile.
    #[arg(long, env = "WEFT_CONTROL_PLANE", conflicts_with = "config")]
    pub control_plane: Option<String>,

    /// With several control-plane replicas: after moving away from its
    /// first choice, how often (jittered in [½, 1½] of this) the sidecar
    /// checks whether a replica it prefers answers again, and returns to
    /// it (so a restarted replica gets its share back). 0s: stay.
    #[arg(long, env = "WEFT_CONTROL_PLANE_REBALANCE", default_value = "60s", value_parser = parse_duration)]
    pub control_plane_rebalance: Duration,

    /// A file holding the join token for the sidecar's first certificate
    /// (`weftctl token create SERVICE`). The token itself can be given in
    /// WEFT_TOKEN instead.
    #[arg(long, env = "WEFT_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// The mesh CA (PEM). With a control plane: to verify it with (by
    /// default the CA fingerprint carried in the join token is trusted).
    /// Without one (--config, with --cert-file): the CAs peers' certificates
    /// must chain to.
    #[arg(long, env = "WEFT_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Without a control plane (--config): this sidecar's certificate chain
    /// (PEM, leaf first) for mutual TLS with other sidecars. Its one URI SAN
    /// must be spiffe://<trust-domain>/service/<--service>. Needs --key-file
    /// and --ca-file; the files are re-read when they change.
    #[arg(long, env = "WEFT_CERT_FILE")]
    pub cert_file: Option<PathBuf>,

    /// The private key (PEM) of --cert-file.
    #[arg(long, env = "WEFT_KEY_FILE")]
    pub key_file: Option<PathBuf>,

    /// Run from a static mesh file instead of a control plane (plaintext,
    /// or mutual TLS with --cert-file, --key-file and --ca-file).
    #[arg(long, env = "WEFT_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The source the flags chose, well formed; its files not read yet.
pub(super) enum SourceFlags {
    ControlPlane {
        list: ControlPlaneList,
        rebalance: Option<Duration>,
        token_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    },
    Static {
        path: PathBuf,
        certificates: Option<CertFiles>,
    },
}

impl SourceArgs {
    pub(super) fn validate(self) -> Result<SourceFlags, ConfigError> {
        match (self.control_plane, self.config) {
            (Some(url), None) => {
                let list = ControlPlaneList::parse(&url)
                    .map_err(|e| ConfigError::flag_says("control-plane", e.to_string()))?;
                if let Some(which) = match (&self.cert_file, &self.key_file) {
                    (Some(_), _) => Some("cert-file"),
                    (None, Some(_)) => Some("key-file"),
                    (None, None) => None,
                } {
                    return Err(ConfigError::flag_says(
                        which,
                        "certificate files are for running without a control plane (--config); \
                         with --control-plane the sidecar gets its certificate from it",
                    ));
                }
                Ok(SourceFlags::ControlPlane {
                    list,
                    rebalance: Some(self.control_plane_rebalance).filter(|d| !d.is_zero()),
                    token_file: self.token_file,
                    ca_file: self.ca_file,
                })
            }
            (None, Some(path)) => Ok(SourceFlags::Static {
                path,
                certificates: certificate_files(self.cert_file, self.key_file, self.ca_file)?,
            }),
            (None, None) => Err(ConfigError::flag_says(
                "control-plane",
                "give --control-plane URL, or --config FILE to run without a control plane",
            )),
            (Some(_), Some(_)) => Err(ConfigError::flag_says(
                "config",
                "use either --control-plane or --config, not both",
            )),
        }
    }
}

/// All three certificate files, or none.
fn certificate_files(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
) -> Result<Option<CertFiles>, ConfigError> {
    match (cert, key, ca) {
        (None, None, None) => Ok(None),
        (Some(cert), Some(key), Some(ca)) => Ok(Some(CertFiles { cert, key, ca })),
        (cert, key, _) => {
            let missing = if cert.is_none() {
                "cert-file"
            } else if key.is_none() {
                "key-file"
            } else {
                "ca-file"
            };
            Err(ConfigError::flag_says(
                missing,
                "mutual TLS without a control plane needs all of --cert-file, \
                 --key-file and --ca-file",
            ))
        }
    }
}

impl SourceFlags {
    pub(super) fn joins_control_plane(&self) -> bool {
        matches!(self, SourceFlags::ControlPlane { .. })
    }

    /// Reads and checks the files: the token and CA for a control plane;
    /// the mesh file and the certificates (which must name `service`)
    /// without one, so that a wrong file stops the sidecar before it
    /// listens.
    pub(super) fn read(self, service: &ServiceName) -> Result<Source, ConfigError> {
        match self {
            SourceFlags::ControlPlane {
                list,
                rebalance,
                token_file,
                ca_file,
            } => Ok(Source::ControlPlane(IdentityConfig {
                control_plane: ControlPlanes::new(list, rebalance),
                token: read_token(token_file.as_deref())?,
                ca_pem: ca_file.as_deref().map(read_ca).transpose()?,
            })),
            SourceFlags::Static { path, certificates } => {
                let services = load_static_file(&path)?;
                if let Some(files) = &certificates {
                    files
                        .load(service)
                        .map_err(|e| ConfigError::flag_says(e.flag, e.reason))?;
                }
                Ok(Source::Static {
                    path,
                    services,
                    certificates,
                })
            }
        }
    }
}

/// The join token, from its file or `WEFT_TOKEN`, checked to be one.
fn read_token(file: Option<&Path>) -> Result<String, ConfigError> {
    let text = match (file, std::env::var("WEFT_TOKEN")) {
        (Some(path), _) => std::fs::read_to_string(path).map_err(|e| {
            ConfigError::flag_says("token-file", format!("cannot read {}: {e}", path.display()))
        })?,
        (None, Ok(t)) => t,
        (None, Err(_)) => {
            return Err(ConfigError::flag_says(
                "token-file",
                "a sidecar needs a join token for its first certificate: \
                 weftctl token create SERVICE > token; --token-file token (or WEFT_TOKEN)",
            ));
        }
    };
    let token = text.trim().to_string();
    JoinToken::decode(&token).ok_or_else(|| {
        ConfigError::flag_says(
            "token-file",
            "the join token is malformed (expected what weftctl token create printed)",
        )
    })?;
    Ok(token)
}

/// The CA bundle to verify the control plane with: PEM certificates.
fn read_ca(path: &Path) -> Result<String, ConfigError> {
    let pem = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::flag_says("ca-file", format!("cannot read {}: {e}", path.display()))
    })?;
    certs_from_pem(&pem)
        .map_err(|e| ConfigError::flag_says("ca-file", format!("{}: {e}", path.display())))?;
    Ok(pem)
}
