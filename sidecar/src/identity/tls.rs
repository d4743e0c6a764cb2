//! Mutual TLS between sidecars: TLS 1.3 only; ALPN `h2` for HTTP and
//! `weft-tcp` for opaque TCP (the server name may name an app port); both ends present the current certificate
//! (read at every handshake, so a renewal needs no restart and drops no
//! connection) and verify the peer under the current roots (the TLS
//! configs are rebuilt when those change: a new CA bundle applies to the
//! next handshake); the client checks that the server is the service it
//! meant to reach, the server learns who the client is.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};
use rustls_pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use weft_proto::identity::{SpiffeId, SpiffeServerVerifier, provider};

use super::Identity;
use crate::endpoint::{Alpn, BoxedIo, ConnectFuture, ConnectTarget, Connector, TcpConnector};
use crate::error::ProxyError;
use crate::telemetry::metrics::Metrics;

pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_TCP: &[u8] = b"weft-tcp";

/// The TLS server name of a connection to the peer's `--app`. Any valid
/// name: the verifier checks the SPIFFE ID, not a DNS name.
const PEER_NAME: &str = "peer.weft.mesh";
/// The suffix of the server name that carries an app port for opaque TCP
/// (`9000.port.weft.mesh`), as Istio's `outbound_.9000_._.…` names carry
/// one through its gateways: no byte is added to the stream, and a peer
/// that does not know the form serves its `--app` as before.
const PORT_SUFFIX: &str = ".port.weft.mesh";

/// The server name that asks the peer for `port` of its app.
pub fn port_server_name(port: u16) -> String {
    format!("{port}{PORT_SUFFIX}")
}

/// The app port a client named in its server name; `None`: `--app`.
pub fn port_of_server_name(name: Option<&str>) -> Option<u16> {
    name?.strip_suffix(PORT_SUFFIX)?.parse().ok()
}

/// Serves whatever certificate is current.
struct CurrentCert(Arc<Identity>);

impl fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CurrentCert({})", self.0.id())
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified.clone())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.certified.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.current().is_some()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("TLS configuration: {0}")]
pub struct TlsConfigError(String);

/// The inbound listener's TLS: client certificates required and checked
/// against the mesh `roots`.
pub fn acceptor(
    identity: &Arc<Identity>,
    roots: Arc<RootCertStore>,
) -> Result<TlsAcceptor, TlsConfigError> {
    let err = |e: &dyn fmt::Display| TlsConfigError(e.to_string());
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| err(&e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(CurrentCert(identity.clone())));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_TCP.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// The inbound acceptor, built once the first certificate (and with it the
/// mesh roots) is there, and again when the roots change (a new CA bundle);
/// until the first one TLS clients are turned away.
pub struct LazyAcceptor {
    identity: Arc<Identity>,
    /// The acceptor and the roots it checks clients against.
    built: Mutex<Option<(Arc<RootCertStore>, TlsAcceptor)>>,
}

impl LazyAcceptor {
    pub fn new(identity: Arc<Identity>) -> Self {
        LazyAcceptor {
            identity,
            built: Mutex::new(None),
        }
    }

    /// Called once per accepted connection: a pointer comparison, and a
    /// rebuild only after the roots changed.
    pub fn get(&self) -> Option<TlsAcceptor> {
        let Some(current) = self.identity.current() else {
            tracing::debug!("inbound TLS is not ready: no certificate yet");
            return None;
        };
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((roots, a)) = &*built
            && Arc::ptr_eq(roots, &current.roots)
        {
            return Some(a.clone());
        }
        match acceptor(&self.identity, current.roots.clone()) {
            Ok(a) => {
                *built = Some((current.roots.clone(), a.clone()));
                Some(a)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot set up inbound TLS");
                None
            }
        }
    }
}

/// A client config and the roots it was built with.
type BuiltFor = (Arc<RootCertStore>, Arc<ClientConfig>);

/// Connects to peers over mutual TLS, verifying each as the service the
/// caller meant to reach.
pub struct MtlsConnector {
    identity: Arc<Identity>,
    tcp: Arc<TcpConnector>,
    metrics: Arc<Metrics>,
    /// One client config per (service, ALPN), with the roots it verifies
    /// servers against; built at the first connection, and again when the
    /// roots change.
    configs: Mutex<HashMap<(SpiffeId, Alpn), BuiltFor>>,
}

impl MtlsConnector {
    pub fn new(identity: Arc<Identity>, tcp: Arc<TcpConnector>, metrics: Arc<Metrics>) -> Self {
        MtlsConnector {
            identity,
            tcp,
            metrics,
            configs: Mutex::new(HashMap::new()),
        }
    }

    fn config(&self, expected: &SpiffeId, alpn: Alpn) -> Result<Arc<ClientConfig>, ProxyError> {
        // The port goes in the server name, not the config: one per ALPN.
        let alpn = match alpn {
            Alpn::TcpTo(_) => Alpn::Tcp,
            other => other,
        };
        let key = (expected.clone(), alpn);
        let roots = self
            .identity
            .current()
            .ok_or(ProxyError::NoCertificate)?
            .roots
            .clone();
        if let Some((built_for, c)) = self.configs.lock().ok().and_then(|m| m.get(&key).cloned())
            && Arc::ptr_eq(&built_for, &roots)
        {
            return Ok(c);
        }
        let verifier = SpiffeServerVerifier::new(roots.clone(), expected.clone());
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ProxyError::Tls {
                addr: String::new(),
                reason: e.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(CurrentCert(self.identity.clone())));
        cfg.alpn_protocols = vec![match alpn {
            Alpn::H2 => ALPN_H2.to_vec(),
            Alpn::Tcp | Alpn::TcpTo(_) => ALPN_TCP.to_vec(),
        }];
        let cfg = Arc::new(cfg);
        if let Ok(mut m) = self.configs.lock() {
            m.insert(key, (roots, cfg.clone()));
        }
        Ok(cfg)
    }
}

/// A short reason for a failed handshake, for metrics labels.
pub fn handshake_reason(e: &std::io::Error) -> &'static str {
    let text = e.to_string();
    if text.contains("not the expected") {
        "wrong-identity"
    } else if text.contains("UnknownIssuer")
        || text.contains("unknown issuer")
        || text.contains("BadSignature")
    {
        "untrusted"
    } else if text.contains("Expired") || text.contains("expired") {
        "expired"
    } else if text.contains("certificate") || text.contains("Certificate") {
        "bad-certificate"
    } else if e.kind() == std::io::ErrorKind::UnexpectedEof {
        "closed"
    } else {
        "protocol"
    }
}

impl Connector for MtlsConnector {
    fn connect<'a>(&'a self, target: &'a ConnectTarget) -> ConnectFuture<'a> {
        Box::pin(async move {
            let expected = SpiffeId::service(self.identity.trust_domain(), target.service.as_str());
            let cfg = self.config(&expected, target.alpn)?;
            let tcp = self.tcp.connect_tcp(&target.addr).await?;
            let name = match target.alpn {
                Alpn::TcpTo(port) => port_server_name(port),
                Alpn::H2 | Alpn::Tcp => PEER_NAME.to_string(),
            };
            let name = ServerName::try_from(name).map_err(|e| ProxyError::Tls {
                addr: target.addr.to_string(),
                reason: e.to_string(),
            })?;
            match TlsConnector::from(cfg).connect(name, tcp).await {
                Ok(tls) => {
                    self.metrics.count_handshake_ok("outbound");
                    Ok(Box::new(tls) as BoxedIo)
                }
                Err(e) => {
                    self.metrics
                        .count_handshake_failed("outbound", handshake_reason(&e));
                    Err(ProxyError::Tls {
                        addr: target.addr.to_string(),
                        reason: e.to_string(),
                    })
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_port_round_trips_through_a_valid_server_name() {
        for port in [1, 8080, 9000, 65535] {
            let name = port_server_name(port);
            assert!(ServerName::try_from(name.clone()).is_ok(), "{name}");
            assert_eq!(port_of_server_name(Some(&name)), Some(port));
        }
        // Older clients, and anything else: `--app`.
        for other in [
            Some(PEER_NAME),
            Some("0x1f.port.weft.mesh"),
            Some("70000.port.weft.mesh"),
            Some("9000.port.weft.mesh.evil"),
            None,
        ] {
            assert_eq!(port_of_server_name(other), None, "{other:?}");
        }
    }
}
