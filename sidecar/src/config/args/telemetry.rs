//! What the sidecar tells about the traffic it carries: spans exported over
//! OTLP (the collector, sampling, the export queue, and for an https
//! collector its CA and an optional client certificate), and the access
//! log. The flags are checked first; the certificate files are read after.

use std::path::{Path, PathBuf};

use clap::Args;

use crate::config::ConfigError;
use crate::telemetry::{PemIdentity, TracingConfig};

#[derive(Debug, Args)]
pub struct TelemetryArgs {
    /// Export a span per request (client on outbound, server on inbound)
    /// over OTLP/gRPC to this collector, e.g. http://127.0.0.1:4317 (Jaeger
    /// takes OTLP). Unset: no traces, and trace headers pass untouched.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The share of new traces recorded, 0 to 1. A request that arrives
    /// with a traceparent follows its caller's decision (parent-based).
    #[arg(long, env = "WEFT_TRACE_SAMPLING", default_value_t = 1.0)]
    pub trace_sampling: f64,

    /// Finished spans waiting for export, at most; beyond, spans are
    /// dropped (and counted), never the requests slowed.
    #[arg(long, env = "WEFT_TRACE_QUEUE", default_value_t = 2048)]
    pub trace_queue: usize,

    /// For an https --otlp-endpoint: the CA certificates (PEM) the
    /// collector's certificate must chain to. Default: the system's bundle
    /// (/etc/ssl/certs/ca-certificates.crt or /etc/pki/tls/certs/ca-bundle.crt).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_CERTIFICATE")]
    pub otlp_ca_file: Option<PathBuf>,

    /// For an https --otlp-endpoint that asks for a client certificate
    /// (mutual TLS to the collector): the certificate chain (PEM) the
    /// sidecar presents. Needs --otlp-key-file.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        requires = "otlp_key_file"
    )]
    pub otlp_cert_file: Option<PathBuf>,

    /// The private key (PEM) of --otlp-cert-file.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        requires = "otlp_cert_file"
    )]
    pub otlp_key_file: Option<PathBuf>,

    /// Write one JSON line per request to stdout (trace and span id,
    /// service, upstream endpoint, status, duration, retries).
    #[arg(long, env = "WEFT_ACCESS_LOG")]
    pub access_log: bool,
}

/// The telemetry flags, well formed.
pub(super) struct Telemetry {
    /// `None` without an endpoint.
    pub tracing: Option<TracingFlags>,
    pub access_log: bool,
}

/// Trace export, well formed; its certificate files not read yet.
pub(super) struct TracingFlags {
    endpoint: http::Uri,
    sampling: f64,
    queue: usize,
    /// For an https collector: `--otlp-ca-file`, or `None` for the system's
    /// bundle. `None` for plain http.
    tls: Option<CollectorTls>,
}

struct CollectorTls {
    ca_file: Option<PathBuf>,
    /// `--otlp-cert-file` and `--otlp-key-file`.
    client: Option<(PathBuf, PathBuf)>,
}

impl TelemetryArgs {
    pub(super) fn validate(self) -> Result<Telemetry, ConfigError> {
        // Checked with or without an endpoint: a wrong value is a mistake
        // even while tracing is off.
        if !(0.0..=1.0).contains(&self.trace_sampling) {
            return Err(ConfigError::flag_says(
                "trace-sampling",
                format!("{} must be between 0 and 1", self.trace_sampling),
            ));
        }
        if self.trace_queue == 0 {
            return Err(ConfigError::flag_says("trace-queue", "must be at least 1"));
        }
        let tracing = match &self.otlp_endpoint {
            None => None,
            Some(e) if e.trim().is_empty() => None,
            Some(e) => {
                let endpoint = collector(e)?;
                let https = endpoint.scheme_str() == Some("https");
                let (ca, cert, key) = (self.otlp_ca_file, self.otlp_cert_file, self.otlp_key_file);
                Some(TracingFlags {
                    endpoint,
                    sampling: self.trace_sampling,
                    queue: self.trace_queue,
                    tls: collector_tls(e, https, ca, cert, key)?,
                })
            }
        };
        Ok(Telemetry {
            tracing,
            access_log: self.access_log,
        })
    }
}

/// The collector's URL: http(s) with a host.
fn collector(e: &str) -> Result<http::Uri, ConfigError> {
    let uri: http::Uri = e.trim().parse().map_err(|err| {
        ConfigError::flag_says("otlp-endpoint", format!("{e:?} is not a URL: {err}"))
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(ConfigError::flag_says(
            "otlp-endpoint",
            format!("{e:?} must be an http(s) URL, e.g. http://127.0.0.1:4317"),
        ));
    }
    Ok(uri)
}

/// The TLS files of collector `e`, which only an https collector takes.
fn collector_tls(
    e: &str,
    https: bool,
    ca_file: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<CollectorTls>, ConfigError> {
    let client = match (cert, key) {
        (Some(cert), Some(key)) if https => Some((cert, key)),
        (Some(_), _) | (_, Some(_)) => {
            return Err(ConfigError::flag_says(
                "otlp-cert-file",
                format!("a client certificate is for an https --otlp-endpoint; {e:?} is not one"),
            ));
        }
        (None, None) => None,
    };
    Ok(https.then_some(CollectorTls { ca_file, client }))
}

impl TracingFlags {
    /// Reads the CA bundle and the client certificate of an https
    /// collector.
    pub(super) fn read(self) -> Result<TracingConfig, ConfigError> {
        let (ca_pem, client_identity) = match self.tls {
            None => (None, None),
            Some(tls) => {
                let ca = otlp_ca(tls.ca_file.as_deref())?;
                let client = tls
                    .client
                    .map(|(cert, key)| otlp_client_identity(&cert, &key))
                    .transpose()?;
                (Some(ca), client)
            }
        };
        Ok(TracingConfig {
            endpoint: self.endpoint,
            sampling: self.sampling,
            queue: self.queue,
            ca_pem,
            client_identity,
        })
    }
}

/// Where distributions keep their CA bundle.
const SYSTEM_CA_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The CA certificates for an https collector: `--otlp-ca-file`, or the
/// system's bundle; refused unless it holds at least one PEM certificate.
fn otlp_ca(file: Option<&Path>) -> Result<Vec<u8>, ConfigError> {
    let path = match file {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                ConfigError::flag_says(
                    "otlp-ca-file",
                    "an https collector needs CA certificates and this system has no bundle \
                     at /etc/ssl/certs/ca-certificates.crt: give the file",
                )
            })?,
    };
    let pem = std::fs::read(&path).map_err(|e| {
        ConfigError::flag_says(
            "otlp-ca-file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(ConfigError::flag_says(
            "otlp-ca-file",
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(pem)
}

/// The certificate chain and key the sidecar shows a collector that asks
/// for one: both read and parsed, and the key checked to be the
/// certificate's, so that a wrong pair fails at start and not at the first
/// export.
fn otlp_client_identity(cert: &Path, key: &Path) -> Result<PemIdentity, ConfigError> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let read = |name: &'static str, path: &Path| {
        std::fs::read(path).map_err(|e| {
            ConfigError::flag_says(name, format!("cannot read {}: {e}", path.display()))
        })
    };
    let (cert_pem, key_pem) = (read("otlp-cert-file", cert)?, read("otlp-key-file", key)?);
    let chain =
        weft_proto::identity::certs_from_pem(&String::from_utf8_lossy(&cert_pem)).map_err(|e| {
            ConfigError::flag_says("otlp-cert-file", format!("{}: {e}", cert.display()))
        })?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        ConfigError::flag_says(
            "otlp-key-file",
            format!("{} holds no PEM private key: {e}", key.display()),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, private, &provider).map_err(|e| {
        ConfigError::flag_says(
            "otlp-key-file",
            format!(
                "{} is not the key of the certificate in {}: {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok(PemIdentity {
        chain: cert_pem,
        key: key_pem,
    })
}
