//! The identity contract both ends of the mesh must agree on: SPIFFE IDs,
//! certificate fingerprints, and how a peer's certificate is checked (chain
//! to the mesh's trust anchors, then the URI SAN, never a DNS name).
//!
//! `spiffe://<trust-domain>/service/<name>` names a service;
//! `spiffe://<trust-domain>/control-plane` the control plane.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::name::ServiceName;

/// A failure to read or check a certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("not a valid SPIFFE ID {0:?}: expected spiffe://<trust-domain>/service/<name>")]
    BadId(String),
    #[error("cannot parse certificate: {0}")]
    BadCertificate(String),
    #[error("no trust anchor: {0}")]
    BadRoot(String),
}

/// Who a workload is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    trust_domain: String,
    /// `service/<name>` or `control-plane`.
    path: String,
}

impl SpiffeId {
    pub fn service(trust_domain: &str, name: &str) -> Self {
        SpiffeId {
            trust_domain: trust_domain.to_string(),
            path: format!("service/{name}"),
        }
    }

    pub fn control_plane(trust_domain: &str) -> Self {
        SpiffeId {
            trust_domain: trust_domain.to_string(),
            path: "control-plane".into(),
        }
    }

    pub fn parse(s: &str) -> Result<Self, IdentityError> {
        let bad = || IdentityError::BadId(s.to_string());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let (td, path) = rest.split_once('/').ok_or_else(bad)?;
        let td_ok = !td.is_empty()
            && td.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
            });
        // The service part follows the one service-name rule, so every
        // identity names a service the control plane could have registered.
        let path_ok = path == "control-plane"
            || path
                .strip_prefix("service/")
                .is_some_and(|n| ServiceName::parse(n).is_ok());
        if !td_ok || !path_ok {
            return Err(bad());
        }
        Ok(SpiffeId {
            trust_domain: td.to_string(),
            path: path.to_string(),
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The service name, for service identities.
    pub fn service_name(&self) -> Option<&str> {
        self.path.strip_prefix("service/")
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/{}", self.trust_domain, self.path)
    }
}

/// Checks that a trust domain is usable in SPIFFE IDs.
pub fn validate_trust_domain(td: &str) -> Result<(), IdentityError> {
    SpiffeId::parse(&format!("spiffe://{td}/control-plane")).map(|_| ())
}

/// SHA-256 of a DER certificate, lowercase hex: what a join token pins.
pub fn fingerprint(der: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// PEM text of one DER object (`CERTIFICATE`, `PRIVATE KEY`, …).
pub fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Reads every certificate in PEM text.
pub fn certs_from_pem(text: &str) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(IdentityError::BadCertificate("no CERTIFICATE block".into()));
    }
    Ok(certs)
}

/// What a join token says, as the sidecar reads it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct JoinToken {
    /// Trust domain.
    pub td: String,
    pub id: String,
    pub secret: String,
    /// SHA-256 fingerprint of the CA certificate.
    pub ca: String,
}

const TOKEN_PREFIX: &str = "weft1.";

impl JoinToken {
    pub fn encode(&self) -> String {
        use base64::Engine;
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
        )
    }

    pub fn decode(s: &str) -> Option<Self> {
        use base64::Engine;
        let b64 = s.trim().strip_prefix(TOKEN_PREFIX)?;
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .ok()?;
        serde_json::from_slice(&json).ok()
    }
}

/// What the mesh reads from a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub uri_sans: Vec<String>,
    /// The host names (a gateway picks its certificate by them).
    pub dns_sans: Vec<String>,
    /// Expiry, unix seconds.
    pub not_after: i64,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, IdentityError> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
        let (mut uri_sans, mut dns_sans) = (Vec::new(), Vec::new());
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) => uri_sans.push(u.to_string()),
                    GeneralName::DNSName(d) => dns_sans.push(d.to_string()),
                    _ => {}
                }
            }
        }
        Ok(CertInfo {
            uri_sans,
            dns_sans,
            not_after: cert.validity().not_after.timestamp(),
        })
    }

    /// The one SPIFFE ID a mesh certificate carries.
    pub fn spiffe_id(&self) -> Option<SpiffeId> {
        match self.uri_sans.as_slice() {
            [one] => SpiffeId::parse(one).ok(),
            _ => None,
        }
    }
}

/// The SPIFFE ID of a verified peer (the first certificate of its chain).
pub fn peer_id(chain: &[CertificateDer<'_>]) -> Option<SpiffeId> {
    CertInfo::parse(chain.first()?).ok()?.spiffe_id()
}

/// The crypto provider of the whole mesh: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Installs ring as the process's default provider (harmless when one is set).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A root store holding `roots`.
pub fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, IdentityError> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone())
            .map_err(|e| IdentityError::BadRoot(e.to_string()))?;
    }
    Ok(Arc::new(store))
}

/// What a server must prove it is.
#[derive(Debug, Clone)]
enum Anchors {
    /// Chains to one of these roots.
    Roots(Arc<RootCertStore>),
    /// Chains to the certificate with this SHA-256 fingerprint, which the
    /// server presents in its chain (first contact with a join token).
    Pinned(String),
}

/// Verifies a server by the mesh's rules: the chain ends at a mesh trust
/// anchor, and the URI SAN is exactly the expected SPIFFE ID. The DNS name
/// the client dialled plays no part (SPIFFE certificates carry none).
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    anchors: Anchors,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn new(roots: Arc<RootCertStore>, expected: SpiffeId) -> Self {
        SpiffeServerVerifier {
            anchors: Anchors::Roots(roots),
            expected,
            provider: provider(),
        }
    }

    /// Trusts the root whose fingerprint is `fingerprint`, as presented by the server.
    pub fn pinned(fingerprint: &str, expected: SpiffeId) -> Self {
        SpiffeServerVerifier {
            anchors: Anchors::Pinned(fingerprint.to_ascii_lowercase()),
            expected,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned;
        let roots = match &self.anchors {
            Anchors::Roots(r) => r.as_ref(),
            Anchors::Pinned(fp) => {
                let root = intermediates
                    .iter()
                    .find(|c| &fingerprint(c) == fp)
                    .ok_or_else(|| {
                        rustls::Error::General(format!(
                            "the server presented no certificate with the pinned fingerprint {fp}"
                        ))
                    })?;
                pinned = root_store(&[root.clone().into_owned()])
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                pinned.as_ref()
            }
        };
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let info =
            CertInfo::parse(end_entity).map_err(|e| rustls::Error::General(e.to_string()))?;
        match info.spiffe_id() {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            Some(id) => Err(rustls::Error::General(format!(
                "the server is {id}, not the expected {}",
                self.expected
            ))),
            None => Err(rustls::Error::General(format!(
                "the server's certificate carries no single SPIFFE ID (expected {})",
                self.expected
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids() {
        let id = SpiffeId::service("weft.local", "user-service");
        assert_eq!(id.to_string(), "spiffe://weft.local/service/user-service");
        assert_eq!(SpiffeId::parse(&id.to_string()).ok(), Some(id.clone()));
        assert_eq!(id.service_name(), Some("user-service"));
        assert_eq!(SpiffeId::control_plane("weft.local").service_name(), None);
        for bad in [
            "spiffe://weft.local/service/",
            "spiffe://weft.local/other/x",
            "https://weft.local/service/x",
            "spiffe:///service/x",
            "spiffe://Weft/service/x",
            "spiffe://weft.local/service/a/b",
            // The service-name rule, as everywhere in the mesh.
            "spiffe://weft.local/service/-a",
            "spiffe://weft.local/service/a..b",
            "spiffe://weft.local/service/a-",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
        assert!(validate_trust_domain("example.org").is_ok());
        assert!(validate_trust_domain("bad domain").is_err());
    }

    #[test]
    fn pem_round_trip() {
        let der = vec![1u8; 100];
        let text = pem("CERTIFICATE", &der);
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"));
        let back = certs_from_pem(&text).expect("parses");
        assert_eq!(back[0].as_ref(), der.as_slice());
        assert!(certs_from_pem("nothing").is_err());
    }

    #[test]
    fn fingerprints_are_sha256_hex() {
        assert_eq!(
            fingerprint(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
