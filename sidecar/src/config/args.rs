//! Command-line flags. Every flag can also be set by a `WEFT_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use weft_proto::duration::parse_duration;
use weft_proto::labels::{Labels, parse_label};
use weft_proto::name::{ServiceName, validate_address, validate_instance_id};
use weft_proto::protocol::Protocol;

use super::{
    ConfigError, SidecarConfig, Source, Timeouts, TracingConfig, Upstream, load_static_file,
};
use crate::identity::{CertFiles, IdentityConfig, IdentitySource};

/// The Weft sidecar: carries a service's gRPC, HTTP and TCP traffic to and
/// from the rest of the mesh.
#[derive(Debug, Parser)]
#[command(
    name = "weft-sidecar",
    version,
    after_help = "Example:\n  weft-sidecar --service order-service --app 127.0.0.1:8080 \\\n    \
                  --control-plane http://127.0.0.1:15012 --upstream user-service=127.0.0.1:9001"
)]
pub struct Args {
    /// The service this sidecar runs beside, e.g. order-service.
    #[arg(long, env = "WEFT_SERVICE")]
    pub service: String,

    /// The local app's address (inbound traffic goes there). Leave out for a
    /// sidecar that only makes calls.
    #[arg(long, env = "WEFT_APP")]
    pub app: Option<SocketAddr>,

    /// The control plane's gRPC URL.
    #[arg(long, env = "WEFT_CONTROL_PLANE", conflicts_with = "config")]
    pub control_plane: Option<String>,

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

    /// Where other sidecars connect.
    #[arg(long, env = "WEFT_INBOUND", default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,

    /// Where the local app sends calls, routed by Host / :authority.
    #[arg(long, env = "WEFT_OUTBOUND", default_value = "127.0.0.1:15001")]
    pub outbound: SocketAddr,

    /// Admin endpoint: /live /ready /metrics /config, gRPC health.
    #[arg(long, env = "WEFT_ADMIN", default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,

    /// The address other sidecars dial (host:port). Defaults to the inbound
    /// address; required when --inbound binds all interfaces.
    #[arg(long, env = "WEFT_ADVERTISE")]
    pub advertise: Option<String>,

    /// A local port for one dependency: NAME=ADDR, e.g.
    /// user-service=127.0.0.1:9001. Repeatable.
    #[arg(long = "upstream", env = "WEFT_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<String>,

    /// A label of this instance, k=v (e.g. version=v2). Repeatable.
    #[arg(long = "label", env = "WEFT_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,

    /// The local app's protocol: grpc, http or tcp.
    #[arg(long, env = "WEFT_PROTOCOL", default_value = "grpc")]
    pub protocol: String,

    /// This instance's id; defaults to SERVICE-<random>.
    #[arg(long, env = "WEFT_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// How long a call to a service not known yet waits to learn it.
    #[arg(long, env = "WEFT_DISCOVERY_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub discovery_timeout: Duration,

    /// TCP connect timeout (to peers and to the app).
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// How often to check the local app's health.
    #[arg(long, env = "WEFT_HEALTH_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub health_interval: Duration,

    /// How long in-flight requests get to finish on SIGTERM.
    #[arg(long, env = "WEFT_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// Threads for the data path. 1 (the default) runs everything on one
    /// thread, which gives the lowest latency; more add throughput.
    #[arg(long, env = "WEFT_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Log filter, e.g. info or weft_sidecar=debug (changeable at runtime:
    /// PUT /log-level on the admin port).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,

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

fn flag(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Flag {
        flag,
        reason: reason.into(),
    }
}

/// A short random suffix for instance ids, without a random-number crate.
fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:08x}", h.finish() as u32)
}

impl Args {
    /// Validates every flag; the first problem is named.
    pub fn into_config(self) -> Result<SidecarConfig, ConfigError> {
        let service =
            ServiceName::parse(&self.service).map_err(|e| flag("service", e.to_string()))?;
        let protocol =
            Protocol::parse(&self.protocol).map_err(|e| flag("protocol", e.to_string()))?;
        let source = match (self.control_plane, self.config) {
            (Some(url), None) => {
                if url.starts_with("http://") {
                    return Err(flag(
                        "control-plane",
                        format!("the control plane serves TLS: use https:// ({url:?})"),
                    ));
                }
                if !url.starts_with("https://") {
                    return Err(flag(
                        "control-plane",
                        format!("{url:?} must be a URL such as https://127.0.0.1:15012"),
                    ));
                }
                url.parse::<http::Uri>()
                    .map_err(|e| flag("control-plane", format!("{url:?} is not a URL: {e}")))?;
                Source::ControlPlane(url)
            }
            (None, Some(path)) => {
                let services = load_static_file(&path)?;
                Source::Static { path, services }
            }
            (None, None) => {
                return Err(flag(
                    "control-plane",
                    "give --control-plane URL, or --config FILE to run without a control plane",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(flag(
                    "config",
                    "use either --control-plane or --config, not both",
                ));
            }
        };
        let mut upstreams: Vec<Upstream> = Vec::new();
        for u in &self.upstreams {
            let (name, addr) = u.split_once('=').ok_or_else(|| {
                flag(
                    "upstream",
                    format!("{u:?} must be NAME=ADDR, e.g. user-service=127.0.0.1:9001"),
                )
            })?;
            let service = ServiceName::parse(name).map_err(|e| flag("upstream", e.to_string()))?;
            let listen: SocketAddr = addr
                .parse()
                .map_err(|_| flag("upstream", format!("{addr:?} in {u:?} is not an IP:port")))?;
            if upstreams
                .iter()
                .any(|x| x.listen == listen && listen.port() != 0)
            {
                return Err(flag("upstream", format!("{listen} is given twice")));
            }
            upstreams.push(Upstream { service, listen });
        }
        let mut labels = Labels::new();
        for l in &self.labels {
            let (k, v) = parse_label(l).map_err(|e| flag("label", e.to_string()))?;
            labels.insert(k, v);
        }
        if let Some(a) = &self.advertise {
            validate_address(a).map_err(|e| flag("advertise", e.to_string()))?;
        } else if self.inbound.ip().is_unspecified() && matches!(source, Source::ControlPlane(_)) {
            return Err(flag(
                "advertise",
                format!(
                    "--inbound {} listens on all interfaces; say which address other sidecars \
                     dial, e.g. --advertise 10.0.0.5:{}",
                    self.inbound,
                    self.inbound.port()
                ),
            ));
        }
        let identity = match &source {
            Source::ControlPlane(url) => {
                let token = match (&self.token_file, std::env::var("WEFT_TOKEN")) {
                    (Some(path), _) => std::fs::read_to_string(path).map_err(|e| {
                        flag("token-file", format!("cannot read {}: {e}", path.display()))
                    })?,
                    (None, Ok(t)) => t,
                    (None, Err(_)) => {
                        return Err(flag(
                            "token-file",
                            "a sidecar needs a join token for its first certificate: \
                             weftctl token create SERVICE > token; --token-file token (or WEFT_TOKEN)",
                        ));
                    }
                };
                let token = token.trim().to_string();
                weft_proto::identity::JoinToken::decode(&token).ok_or_else(|| {
                    flag(
                        "token-file",
                        "the join token is malformed (expected what weftctl token create printed)",
                    )
                })?;
                let ca_pem = match &self.ca_file {
                    Some(p) => {
                        let pem = std::fs::read_to_string(p).map_err(|e| {
                            flag("ca-file", format!("cannot read {}: {e}", p.display()))
                        })?;
                        weft_proto::identity::certs_from_pem(&pem)
                            .map_err(|e| flag("ca-file", format!("{}: {e}", p.display())))?;
                        Some(pem)
                    }
                    None => None,
                };
                if self.cert_file.is_some() || self.key_file.is_some() {
                    let which = if self.cert_file.is_some() {
                        "cert-file"
                    } else {
                        "key-file"
                    };
                    return Err(flag(
                        which,
                        "certificate files are for running without a control plane (--config); \
                         with --control-plane the sidecar gets its certificate from it",
                    ));
                }
                Some(IdentitySource::ControlPlane(IdentityConfig {
                    control_plane: url.clone(),
                    token,
                    ca_pem,
                }))
            }
            Source::Static { .. } => {
                match (&self.cert_file, &self.key_file, &self.ca_file) {
                    (None, None, None) => None,
                    (Some(cert), Some(key), Some(ca)) => {
                        let files = CertFiles {
                            cert: cert.clone(),
                            key: key.clone(),
                            ca: ca.clone(),
                        };
                        // Checked now, so that a wrong file stops the
                        // sidecar before it listens.
                        files.load(&service).map_err(|e| flag(e.flag, e.reason))?;
                        Some(IdentitySource::Files(files))
                    }
                    (cert, key, _) => {
                        let missing = if cert.is_none() {
                            "cert-file"
                        } else if key.is_none() {
                            "key-file"
                        } else {
                            "ca-file"
                        };
                        return Err(flag(
                            missing,
                            "mutual TLS without a control plane needs all of --cert-file, \
                             --key-file and --ca-file",
                        ));
                    }
                }
            }
        };
        let instance_id = match self.instance_id {
            Some(id) => {
                validate_instance_id(&id).map_err(|e| flag("instance-id", e.to_string()))?;
                id
            }
            None => format!("{service}-{}", random_suffix()),
        };
        // Checked with or without an endpoint: a wrong value is a mistake
        // even while tracing is off.
        if !(0.0..=1.0).contains(&self.trace_sampling) {
            return Err(flag(
                "trace-sampling",
                format!("{} must be between 0 and 1", self.trace_sampling),
            ));
        }
        if self.trace_queue == 0 {
            return Err(flag("trace-queue", "must be at least 1"));
        }
        let tracing = match &self.otlp_endpoint {
            None => None,
            Some(e) if e.trim().is_empty() => None,
            Some(e) => {
                let uri: http::Uri = e
                    .trim()
                    .parse()
                    .map_err(|err| flag("otlp-endpoint", format!("{e:?} is not a URL: {err}")))?;
                if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                    return Err(flag(
                        "otlp-endpoint",
                        format!("{e:?} must be an http(s) URL, e.g. http://127.0.0.1:4317"),
                    ));
                }
                let https = uri.scheme_str() == Some("https");
                let ca_pem = if https {
                    Some(otlp_ca(self.otlp_ca_file.as_deref())?)
                } else {
                    None
                };
                let client_identity = match (&self.otlp_cert_file, &self.otlp_key_file) {
                    (Some(cert), Some(key)) if https => Some(otlp_client_identity(cert, key)?),
                    (Some(_), _) | (_, Some(_)) => {
                        return Err(flag(
                            "otlp-cert-file",
                            format!(
                                "a client certificate is for an https --otlp-endpoint; {e:?} is not one"
                            ),
                        ));
                    }
                    (None, None) => None,
                };
                Some(TracingConfig {
                    endpoint: uri,
                    sampling: self.trace_sampling,
                    queue: self.trace_queue,
                    ca_pem,
                    client_identity,
                })
            }
        };
        Ok(SidecarConfig {
            service,
            instance_id,
            protocol,
            labels,
            app: self.app,
            inbound: self.inbound,
            outbound: self.outbound,
            admin: self.admin,
            advertise: self.advertise,
            upstreams,
            source,
            identity,
            timeouts: Timeouts {
                discovery: self.discovery_timeout,
                connect: self.connect_timeout,
                health_interval: self.health_interval,
                drain: self.drain_timeout,
            },
            tracing,
            access_log: self.access_log,
            log_level: None,
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
fn otlp_ca(file: Option<&std::path::Path>) -> Result<Vec<u8>, ConfigError> {
    let path = match file {
        Some(p) => p.to_path_buf(),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                flag(
                    "otlp-ca-file",
                    "an https collector needs CA certificates and this system has no bundle \
                     at /etc/ssl/certs/ca-certificates.crt: give the file",
                )
            })?,
    };
    let pem = std::fs::read(&path).map_err(|e| {
        flag(
            "otlp-ca-file",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(flag(
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
fn otlp_client_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<crate::config::PemIdentity, ConfigError> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let read = |name: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| flag(name, format!("cannot read {}: {e}", path.display())))
    };
    let (cert_pem, key_pem) = (read("otlp-cert-file", cert)?, read("otlp-key-file", key)?);
    let chain = weft_proto::identity::certs_from_pem(&String::from_utf8_lossy(&cert_pem))
        .map_err(|e| flag("otlp-cert-file", format!("{}: {e}", cert.display())))?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        flag(
            "otlp-key-file",
            format!("{} holds no PEM private key: {e}", key.display()),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, private, &provider).map_err(|e| {
        flag(
            "otlp-key-file",
            format!(
                "{} is not the key of the certificate in {}: {e}",
                key.display(),
                cert.display()
            ),
        )
    })?;
    Ok(crate::config::PemIdentity {
        chain: cert_pem,
        key: key_pem,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<SidecarConfig, String> {
        let mut v = vec!["weft-sidecar"];
        v.extend_from_slice(args);
        Args::try_parse_from(v)
            .map_err(|e| e.to_string())?
            .into_config()
            .map_err(|e| e.to_string())
    }

    /// A sidecar that joins a control plane with the token in `token`, and
    /// `extra` flags.
    fn parse_joined(token: &str, extra: &[&str]) -> Result<SidecarConfig, String> {
        let mut v = vec![
            "--service",
            "a",
            "--control-plane",
            "https://x:1",
            "--inbound",
            "127.0.0.1:0",
            "--token-file",
            token,
        ];
        v.extend_from_slice(extra);
        parse(&v)
    }

    /// A token file with a well-formed token.
    fn token_file(dir: &std::path::Path) -> String {
        let t = weft_proto::identity::JoinToken {
            td: "weft.local".into(),
            id: "1".into(),
            secret: "2".into(),
            ca: "ff".into(),
        };
        let path = dir.join("token");
        std::fs::write(&path, t.encode()).expect("write");
        path.display().to_string()
    }

    #[test]
    fn good_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = token_file(dir.path());
        let c = parse(&[
            "--service",
            "order-service",
            "--control-plane",
            "https://127.0.0.1:15012",
            "--token-file",
            &token,
            "--inbound",
            "127.0.0.1:0",
            "--upstream",
            "user-service=127.0.0.1:9001",
            "--label",
            "version=v2",
            "--protocol",
            "http",
        ])
        .expect("valid");
        assert_eq!(c.service.as_str(), "order-service");
        assert_eq!(c.upstreams[0].service.as_str(), "user-service");
        assert_eq!(c.labels.get("version").map(String::as_str), Some("v2"));
        assert_eq!(c.protocol, Protocol::Http);
        assert!(c.instance_id.starts_with("order-service-"));
        assert!(c.identity.is_some_and(
            |i| matches!(i, IdentitySource::ControlPlane(c) if c.token.starts_with("weft1."))
        ));
        assert!(c.tracing.is_none(), "no endpoint, no tracing");
        let c = parse_joined(
            &token,
            &[
                "--otlp-endpoint",
                "http://collector:4317",
                "--trace-sampling",
                "0.25",
                "--access-log",
            ],
        )
        .expect("valid");
        let t = c.tracing.expect("tracing configured");
        assert_eq!(t.endpoint.to_string(), "http://collector:4317/");
        assert_eq!(t.sampling, 0.25);
        assert_eq!(t.queue, 2048);
        assert!(c.access_log);
    }

    /// A self-signed certificate and its key, PEM, written to `dir`.
    fn cert_pair(dir: &std::path::Path, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["sidecar".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, weft_proto::identity::pem("CERTIFICATE", cert.der())).expect("write");
        std::fs::write(
            &k,
            weft_proto::identity::pem("PRIVATE KEY", &key.serialize_der()),
        )
        .expect("write");
        (c.display().to_string(), k.display().to_string())
    }

    #[test]
    fn a_client_certificate_for_the_collector_is_checked_at_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = token_file(dir.path());
        let (cert, key) = cert_pair(dir.path(), "a");
        let (_, other_key) = cert_pair(dir.path(), "b");
        let ca = cert.clone();
        let with = |endpoint: &str, extra: &[&str]| {
            let mut v = vec!["--otlp-endpoint", endpoint, "--otlp-ca-file", &ca];
            v.extend_from_slice(extra);
            parse_joined(&token, &v)
        };
        let c = with(
            "https://x:4317",
            &["--otlp-cert-file", &cert, "--otlp-key-file", &key],
        )
        .expect("valid pair");
        let id = c.tracing.and_then(|t| t.client_identity).expect("identity");
        assert!(String::from_utf8_lossy(&id.chain).contains("BEGIN CERTIFICATE"));
        assert!(
            !format!("{id:?}").contains("PRIVATE"),
            "the key is not printed"
        );

        let fails = |endpoint: &str, extra: &[&str], want: &[&str]| {
            let e = with(endpoint, extra).expect_err("must fail");
            for w in want {
                assert!(e.contains(w), "{extra:?}: want {w:?} in {e}");
            }
        };
        fails(
            "https://x:4317",
            &["--otlp-cert-file", &cert],
            &["--otlp-key-file"],
        );
        fails(
            "https://x:4317",
            &["--otlp-key-file", &key],
            &["--otlp-cert-file"],
        );
        fails(
            "http://x:4317",
            &["--otlp-cert-file", &cert, "--otlp-key-file", &key],
            &["--otlp-cert-file", "https"],
        );
        fails(
            "https://x:4317",
            &[
                "--otlp-cert-file",
                "/nonexistent.crt",
                "--otlp-key-file",
                &key,
            ],
            &["--otlp-cert-file", "/nonexistent.crt"],
        );
        fails(
            "https://x:4317",
            &["--otlp-cert-file", &key, "--otlp-key-file", &key],
            &["--otlp-cert-file", "CERTIFICATE"],
        );
        fails(
            "https://x:4317",
            &["--otlp-cert-file", &cert, "--otlp-key-file", &cert],
            &["--otlp-key-file", "no PEM private key"],
        );
        fails(
            "https://x:4317",
            &["--otlp-cert-file", &cert, "--otlp-key-file", &other_key],
            &["--otlp-key-file", "is not the key of the certificate"],
        );
    }

    #[test]
    fn bad_flags_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = token_file(dir.path());
        let with = |extra: &[&str]| parse_joined(&token, extra).expect_err("must fail");
        assert!(with(&["--upstream", "nope"]).contains("--upstream"));
        assert!(with(&["--upstream", "a=notaddr"]).contains("--upstream"));
        assert!(with(&["--label", "x"]).contains("--label"));
        assert!(with(&["--protocol", "udp"]).contains("--protocol"));
        assert!(with(&["--discovery-timeout", "5"]).contains("unit"));
        assert!(with(&["--ca-file", "/nonexistent.pem"]).contains("--ca-file"));
        for bad in ["127.0.0.1:4317", "ftp://x:1", "http://", "not a url"] {
            let e = with(&["--otlp-endpoint", bad]);
            assert!(e.contains("--otlp-endpoint"), "{bad}: {e}");
        }
        let e = with(&[
            "--otlp-endpoint",
            "https://x:4317",
            "--otlp-ca-file",
            "/nonexistent.pem",
        ]);
        assert!(
            e.contains("--otlp-ca-file") && e.contains("/nonexistent.pem"),
            "{e}"
        );
        let not_pem = dir.path().join("not.pem");
        std::fs::write(&not_pem, "hello").expect("write");
        let e = with(&[
            "--otlp-endpoint",
            "https://x:4317",
            "--otlp-ca-file",
            &not_pem.display().to_string(),
        ]);
        assert!(e.contains("no PEM certificate"), "{e}");
        for bad in ["1.5", "-0.1", "NaN"] {
            let e = with(&[&format!("--trace-sampling={bad}")]);
            assert!(e.contains("--trace-sampling"), "{bad}: {e}");
        }
        let e = with(&["--trace-queue", "0"]);
        assert!(e.contains("--trace-queue"), "{e}");
        let fails = |args: &[&str], flag: &str| {
            let e = parse(args).expect_err("must fail");
            assert!(e.contains(flag), "{args:?}: {e}");
        };
        fails(
            &["--service", "Bad", "--control-plane", "https://x:1"],
            "--service",
        );
        fails(&["--service", "a"], "--control-plane");
        fails(
            &[
                "--service",
                "a",
                "--control-plane",
                "x",
                "--inbound",
                "127.0.0.1:0",
            ],
            "--control-plane",
        );
        fails(
            &[
                "--service",
                "a",
                "--control-plane",
                "http://x:1",
                "--inbound",
                "127.0.0.1:0",
            ],
            "https://",
        );
        // All interfaces without --advertise.
        fails(
            &[
                "--service",
                "a",
                "--control-plane",
                "https://x:1",
                "--token-file",
                &token,
            ],
            "--advertise",
        );
        // No token, a missing token file, a malformed token.
        if std::env::var("WEFT_TOKEN").is_err() {
            fails(
                &[
                    "--service",
                    "a",
                    "--control-plane",
                    "https://x:1",
                    "--inbound",
                    "127.0.0.1:0",
                ],
                "--token-file",
            );
        }
        fails(
            &[
                "--service",
                "a",
                "--control-plane",
                "https://x:1",
                "--inbound",
                "127.0.0.1:0",
                "--token-file",
                "/nope",
            ],
            "--token-file",
        );
        let bad = dir.path().join("bad");
        std::fs::write(&bad, "not a token").expect("write");
        let bad = bad.display().to_string();
        fails(
            &[
                "--service",
                "a",
                "--control-plane",
                "https://x:1",
                "--inbound",
                "127.0.0.1:0",
                "--token-file",
                &bad,
            ],
            "malformed",
        );
    }
}
