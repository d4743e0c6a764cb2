//! Gateway mode: the sidecar as the mesh's front door. Its public
//! listeners, the certificates it answers TLS clients with, and the limits
//! a public edge needs. Given at least one public listener, the sidecar is
//! a gateway: it has no app, and routes by the routes attached to the
//! `Gateway` named by `--service`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use weft_proto::duration::parse_duration;

use crate::config::{CertPair, ConfigError, EdgeLimits, GatewayConfig};

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Gateway mode: a public listener for HTTP/1.1 and HTTP/2 in
    /// cleartext, e.g. 0.0.0.0:8080.
    #[arg(long, env = "WEFT_GATEWAY_HTTP", help_heading = "Gateway mode")]
    pub gateway_http: Option<SocketAddr>,

    /// Gateway mode: a public listener for HTTP/1.1 and HTTP/2 over TLS,
    /// e.g. 0.0.0.0:8443 (needs --tls-cert).
    #[arg(long, env = "WEFT_GATEWAY_HTTPS", help_heading = "Gateway mode")]
    pub gateway_https: Option<SocketAddr>,

    /// A certificate for the TLS listener: CERT_PEM,KEY_PEM (the chain,
    /// then its private key). Repeat for several host names: a client's
    /// SNI picks the certificate whose names match it; the first one
    /// answers clients that send no SNI or one none matches. Re-read when
    /// the files change.
    #[arg(
        long = "tls-cert",
        env = "WEFT_TLS_CERTS",
        value_delimiter = ';',
        help_heading = "Gateway mode"
    )]
    pub tls_certs: Vec<String>,

    /// How often the certificate files are checked for changes.
    #[arg(long, env = "WEFT_TLS_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration, help_heading = "Gateway mode")]
    pub tls_reload_interval: Duration,

    /// A descriptor set (`protoc --include_imports --descriptor_set_out`)
    /// whose `google.api.http` annotations turn REST calls into gRPC.
    #[arg(long, env = "WEFT_TRANSCODE", help_heading = "Gateway mode")]
    pub transcode: Option<PathBuf>,

    /// The largest request body taken (bytes); more: 413.
    #[arg(long, env = "WEFT_MAX_REQUEST_BYTES", default_value_t = 4 << 20, help_heading = "Gateway mode")]
    pub max_request_bytes: u64,

    /// The largest request head (request line and headers, bytes); more:
    /// 431 (HTTP/1.1) or a refused stream (HTTP/2).
    #[arg(long, env = "WEFT_MAX_HEADER_BYTES", default_value_t = 64 << 10, help_heading = "Gateway mode")]
    pub max_header_bytes: u32,

    /// How long a client has to send a request's headers (slow clients are
    /// cut: 408 on HTTP/1.1).
    #[arg(long, env = "WEFT_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration, help_heading = "Gateway mode")]
    pub header_timeout: Duration,

    /// How long a client connection may stay idle before it is closed.
    #[arg(long, env = "WEFT_CLIENT_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration, help_heading = "Gateway mode")]
    pub client_idle_timeout: Duration,

    /// The most client connections open at once; more are closed at once.
    #[arg(
        long,
        env = "WEFT_MAX_CONNECTIONS",
        default_value_t = 10_000,
        help_heading = "Gateway mode"
    )]
    pub max_connections: usize,

    /// Keep the X-Forwarded-For a client sends (only behind a trusted load
    /// balancer); otherwise it is replaced by the client's address.
    #[arg(long, env = "WEFT_TRUST_FORWARDED", help_heading = "Gateway mode")]
    pub trust_forwarded: bool,

    /// Also write X-Forwarded-Host and an RFC 7239 Forwarded element. Off
    /// by default, as in Envoy: X-Forwarded-For and -Proto are what most
    /// apps read, and each added header costs every hop after the gateway.
    #[arg(long, env = "WEFT_FORWARDED_FULL", help_heading = "Gateway mode")]
    pub forwarded_full: bool,
}

impl GatewayArgs {
    /// `None`: not a gateway. `has_app`: a gateway has no app of its own.
    pub(super) fn validate(self, has_app: bool) -> Result<Option<GatewayConfig>, ConfigError> {
        if self.gateway_http.is_none() && self.gateway_https.is_none() {
            if !self.tls_certs.is_empty() {
                return Err(ConfigError::flag_says(
                    "tls-cert",
                    "only a gateway serves TLS to clients: add --gateway-https",
                ));
            }
            return Ok(None);
        }
        if has_app {
            return Err(ConfigError::flag_says(
                "app",
                "a gateway has no app of its own: leave out --app, or run a separate sidecar",
            ));
        }
        let certs = self
            .tls_certs
            .iter()
            .map(|c| parse_pair(c))
            .collect::<Result<Vec<_>, _>>()?;
        match (self.gateway_https.is_some(), certs.is_empty()) {
            (true, true) => {
                return Err(ConfigError::flag_says(
                    "gateway-https",
                    "needs a certificate: --tls-cert CERT_PEM,KEY_PEM",
                ));
            }
            (false, false) => {
                return Err(ConfigError::flag_says(
                    "tls-cert",
                    "is for the TLS listener: add --gateway-https",
                ));
            }
            _ => {}
        }
        if self.max_connections == 0 || self.max_request_bytes == 0 || self.max_header_bytes < 1024
        {
            return Err(ConfigError::flag_says(
                "max-connections",
                "the limits must be positive (--max-header-bytes at least 1024)",
            ));
        }
        Ok(Some(GatewayConfig {
            http: self.gateway_http,
            https: self.gateway_https,
            certs,
            reload_interval: self.tls_reload_interval,
            transcode: self.transcode,
            limits: EdgeLimits {
                max_request_bytes: self.max_request_bytes,
                max_header_bytes: self.max_header_bytes,
                header_timeout: self.header_timeout,
                idle_timeout: self.client_idle_timeout,
                max_connections: self.max_connections,
            },
            trust_forwarded: self.trust_forwarded,
            forwarded_full: self.forwarded_full,
        }))
    }
}

/// `CERT_PEM,KEY_PEM`.
fn parse_pair(text: &str) -> Result<CertPair, ConfigError> {
    let (cert, key) = text
        .split_once(',')
        .filter(|(c, k)| !c.is_empty() && !k.is_empty())
        .ok_or_else(|| {
            ConfigError::flag_says(
                "tls-cert",
                format!("{text:?} must be CERT_PEM,KEY_PEM, e.g. api.crt,api.key"),
            )
        })?;
    Ok(CertPair {
        cert: cert.into(),
        key: key.into(),
    })
}
