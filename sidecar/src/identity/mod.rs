//! The sidecar's identity: a private key made here and never sent anywhere,
//! a short-lived certificate for `spiffe://<trust-domain>/service/<name>`
//! obtained from the control plane with a certificate signing request (the
//! first with a join token, renewals with the current certificate), renewed
//! at about 70% of its lifetime, and swapped in place so that no connection
//! is dropped. Without a control plane, the certificate comes from files
//! ([`files`]), re-read when they change.

pub mod files;
mod renew;
pub mod tls;

pub use files::{CertFiles, FilesError};

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use weft_proto::identity::{
    JoinToken, SpiffeId, SpiffeServerVerifier, certs_from_pem, pem, provider, root_store,
};
use weft_proto::name::ServiceName;
use weft_proto::v1 as pb;
use weft_proto::v1::identity_client::IdentityClient;

use crate::error::error_chain;
use crate::failover::ControlPlanes;
use weft_proto::addresses::Candidate;

/// What the sidecar needs to join the mesh through the control plane: where
/// it is, the join token for the first certificate, and optionally the CA
/// to verify it with.
#[derive(Clone)]
pub struct IdentityConfig {
    /// The control plane's replicas, shared with the discovery stream.
    pub control_plane: Arc<ControlPlanes>,
    /// The join token (its text), for the first certificate.
    pub token: String,
    /// The CA bundle (PEM) to verify the control plane with, instead of the
    /// fingerprint pinned in the token.
    pub ca_pem: Option<String>,
}

impl std::fmt::Debug for IdentityConfig {
    /// The token's secret never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityConfig")
            .field("control_plane", &self.control_plane.text())
            .field("ca_pem", &self.ca_pem.as_ref().map(String::len))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("the join token is malformed (expected the text `weftctl token create` printed)")]
    BadToken,
    #[error("the control plane refused the certificate request: {0}")]
    Refused(String),
    #[error("cannot reach the control plane at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("the control plane's answer is not usable: {0}")]
    BadAnswer(String),
    #[error("cannot make a key or a certificate request: {0}")]
    Local(String),
    #[error(transparent)]
    Files(#[from] FilesError),
    #[error("this sidecar's certificate comes from files, not from a control plane")]
    NoControlPlane,
    #[error("roots: {0}")]
    Roots(weft_proto::identity::IdentityError),
}

impl IdentityError {
    /// Whether trying again later may help (the control plane was down),
    /// or not (the token is wrong, expired or for another service).
    pub fn is_retryable(&self) -> bool {
        matches!(self, IdentityError::Unreachable { .. })
    }
}

/// A certificate and its key, ready for TLS.
pub struct Credentials {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub roots: Arc<RootCertStore>,
    pub roots_der: Vec<CertificateDer<'static>>,
    pub issued: SystemTime,
    pub expires: SystemTime,
    pub certified: Arc<CertifiedKey>,
}

impl Credentials {
    pub fn expires_unix_ms(&self) -> u64 {
        weft_proto::time::unix_ms(self.expires)
    }

    /// The same certificate and key, verifying peers under other roots.
    fn with_roots(
        &self,
        roots: Arc<RootCertStore>,
        roots_der: Vec<CertificateDer<'static>>,
    ) -> Self {
        Credentials {
            id: self.id.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots,
            roots_der,
            issued: self.issued,
            expires: self.expires,
            certified: self.certified.clone(),
        }
    }

    /// Certificate chain and key as PEM, for tonic's client identity.
    fn pem(&self) -> (String, String) {
        let chain: String = self.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
        let label = match &self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        (chain, pem(label, self.key.secret_der()))
    }
}

/// Who issues the certificates.
enum Issuer {
    ControlPlane {
        config: IdentityConfig,
        token: JoinToken,
    },
    Files {
        files: CertFiles,
        service: ServiceName,
    },
}

/// The sidecar's identity, shared by everything that does TLS.
pub struct Identity {
    issuer: Issuer,
    id: SpiffeId,
    current: ArcSwapOption<Credentials>,
    /// The current certificate's expiry (unix ms; 0: none yet).
    expiry: watch::Sender<u64>,
}

impl Identity {
    pub fn new(config: IdentityConfig, service: &ServiceName) -> Result<Arc<Self>, IdentityError> {
        let token = JoinToken::decode(&config.token).ok_or(IdentityError::BadToken)?;
        let id = SpiffeId::service(&token.td, service.as_str());
        Ok(Arc::new(Identity {
            issuer: Issuer::ControlPlane { config, token },
            id,
            current: ArcSwapOption::empty(),
            expiry: watch::channel(0).0,
        }))
    }

    /// An identity from certificate files, loaded (and checked) now.
    pub fn from_files(files: CertFiles, service: &ServiceName) -> Result<Arc<Self>, IdentityError> {
        let creds = files.load(service)?;
        let identity = Identity {
            id: creds.id.clone(),
            issuer: Issuer::Files {
                files,
                service: service.clone(),
            },
            current: ArcSwapOption::empty(),
            expiry: watch::channel(0).0,
        };
        identity.install(creds);
        Ok(Arc::new(identity))
    }

    /// The files, when the certificate comes from files.
    pub fn files(&self) -> Option<&CertFiles> {
        match &self.issuer {
            Issuer::Files { files, .. } => Some(files),
            Issuer::ControlPlane { .. } => None,
        }
    }

    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn trust_domain(&self) -> &str {
        self.id.trust_domain()
    }

    fn control_plane(&self) -> Result<(&IdentityConfig, &JoinToken), IdentityError> {
        match &self.issuer {
            Issuer::ControlPlane { config, token } => Ok((config, token)),
            Issuer::Files { .. } => Err(IdentityError::NoControlPlane),
        }
    }

    /// Trusts `roots` (DER, from the control plane) from the next handshake
    /// on, keeping the certificate. Before the first certificate there is
    /// nothing to do: it comes with its roots.
    pub fn set_roots(&self, roots: &[Vec<u8>]) -> Result<(), IdentityError> {
        let Some(cur) = self.current() else {
            return Ok(());
        };
        let der: Vec<CertificateDer<'static>> = roots
            .iter()
            .map(|r| CertificateDer::from(r.clone()))
            .collect();
        if cur.roots_der == der {
            return Ok(());
        }
        let store = root_store(&der).map_err(IdentityError::Roots)?;
        tracing::info!(roots = der.len(), "the mesh's trust anchors changed");
        self.install(cur.with_roots(store, der));
        Ok(())
    }

    /// Makes `creds` the certificate every handshake from now on uses.
    fn install(&self, mut creds: Credentials) -> Arc<Credentials> {
        // The same roots as before keep the same `Arc`: the TLS configs
        // built on them are rebuilt only when the roots really change.
        if let Some(prev) = self.current()
            && prev.roots_der == creds.roots_der
        {
            creds.roots = prev.roots.clone();
        }
        let creds = Arc::new(creds);
        // Stored before the expiry is announced: whoever wakes on the
        // announcement reads the new certificate.
        self.current.store(Some(creds.clone()));
        self.expiry.send_replace(creds.expires_unix_ms());
        creds
    }

    pub fn current(&self) -> Option<Arc<Credentials>> {
        self.current.load_full()
    }

    /// Follows the current certificate's expiry (unix ms).
    pub fn expiry(&self) -> watch::Receiver<u64> {
        self.expiry.subscribe()
    }

    /// The control plane's replicas.
    pub fn control_planes(&self) -> Result<&Arc<ControlPlanes>, IdentityError> {
        self.control_plane().map(|(c, _)| &c.control_plane)
    }

    /// A TLS endpoint for one control-plane replica: verified as
    /// `spiffe://<td>/control-plane` under the mesh roots (or, before the
    /// first certificate, the CA file or the token's pinned fingerprint),
    /// presenting the current certificate when there is one.
    pub fn control_plane_endpoint(&self, at: &Candidate) -> Result<Endpoint, IdentityError> {
        let (config, token) = self.control_plane()?;
        let unreachable = |reason: String| IdentityError::Unreachable {
            url: at.to_string(),
            reason,
        };
        let expected = SpiffeId::control_plane(&token.td);
        let current = self.current();
        let verifier = match (&current, &config.ca_pem) {
            (Some(c), _) => SpiffeServerVerifier::new(c.roots.clone(), expected),
            (None, Some(pem)) => {
                let roots = certs_from_pem(pem)
                    .and_then(|c| root_store(&c))
                    .map_err(|e| IdentityError::Local(format!("--ca-file: {e}")))?;
                SpiffeServerVerifier::new(roots, expected)
            }
            (None, None) => SpiffeServerVerifier::pinned(&token.ca, expected),
        };
        let mut tls = ClientTlsConfig::new();
        if let Some(c) = &current {
            let (chain, key) = c.pem();
            tls = tls.identity(tonic::transport::Identity::from_pem(chain, key));
        }
        Endpoint::from_shared(at.url())
            .map_err(|e| unreachable(e.to_string()))?
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .tls_config_with_verifier(tls, Arc::new(verifier))
            .map_err(|e| unreachable(e.to_string()))
    }

    /// A channel to the first replica that answers, in this sidecar's
    /// order from the current one; those that do not are passed over.
    async fn channel(&self) -> Result<(Channel, Candidate), IdentityError> {
        let planes = self.control_planes()?;
        let order = planes
            .in_order()
            .await
            .map_err(|e| IdentityError::Unreachable {
                url: planes.text(),
                reason: e.to_string(),
            })?;
        let mut reasons = Vec::new();
        for at in order {
            match self.control_plane_endpoint(&at)?.connect().await {
                Ok(channel) => return Ok((channel, at)),
                Err(e) => {
                    reasons.push(format!("{at}: {}", error_chain(&e)));
                    planes.failed(&at);
                }
            }
        }
        Err(IdentityError::Unreachable {
            url: planes.text(),
            reason: reasons.join("; "),
        })
    }

    /// Makes a new key and asks for a certificate: with the join token the
    /// first time, with the current certificate after that. Installs it.
    /// (From files: reads and checks them again.)
    pub async fn obtain(&self) -> Result<Arc<Credentials>, IdentityError> {
        let (config, _) = match &self.issuer {
            Issuer::Files { files, service } => {
                let creds = files.load(service)?;
                if creds.id != self.id {
                    return Err(FilesError {
                        flag: "cert-file",
                        reason: format!(
                            "{}: the new certificate is for {}, this sidecar is {}",
                            files.cert.display(),
                            creds.id,
                            self.id
                        ),
                    }
                    .into());
                }
                tracing::info!(identity = %creds.id, expires_unix_ms = creds.expires_unix_ms(), "loaded the certificate files");
                return Ok(self.install(creds));
            }
            Issuer::ControlPlane { config, token } => (config, token),
        };
        let key = KeyPair::generate().map_err(|e| IdentityError::Local(e.to_string()))?;
        let mut params = CertificateParams::default();
        let uri = self
            .id
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| IdentityError::Local(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params
            .serialize_request(&key)
            .map_err(|e| IdentityError::Local(e.to_string()))?;
        let renewing = self.current().is_some();
        let (channel, at) = self.channel().await?;
        let mut client = IdentityClient::new(channel);
        let resp = client
            .issue(pb::IssueRequest {
                csr: csr.der().to_vec(),
                token: if renewing {
                    String::new()
                } else {
                    config.token.clone()
                },
            })
            .await
            .map_err(|s| match s.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown => {
                    // The next try goes to the next replica.
                    config.control_plane.failed(&at);
                    IdentityError::Unreachable {
                        url: at.to_string(),
                        reason: s.message().to_string(),
                    }
                }
                _ => IdentityError::Refused(s.message().to_string()),
            })?
            .into_inner();
        let creds = self.credentials(key, resp)?;
        tracing::info!(
            identity = %creds.id,
            expires_unix_ms = creds.expires_unix_ms(),
            renewal = renewing,
            "obtained a certificate"
        );
        let creds = self.install(creds);
        Ok(creds)
    }

    fn credentials(
        &self,
        key: KeyPair,
        resp: pb::IssueResponse,
    ) -> Result<Credentials, IdentityError> {
        let bad = |e: String| IdentityError::BadAnswer(e);
        if resp.spiffe_id != self.id.to_string() {
            return Err(bad(format!(
                "a certificate for {} instead of {}",
                resp.spiffe_id, self.id
            )));
        }
        let chain: Vec<CertificateDer<'static>> =
            resp.chain.into_iter().map(CertificateDer::from).collect();
        let roots_der: Vec<CertificateDer<'static>> =
            resp.roots.into_iter().map(CertificateDer::from).collect();
        if chain.is_empty() || roots_der.is_empty() {
            return Err(bad("no certificate or no roots".into()));
        }
        let roots = root_store(&roots_der).map_err(|e| bad(e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider())
            .map_err(|e| bad(e.to_string()))?;
        let expires = UNIX_EPOCH + Duration::from_millis(resp.expires_unix_ms);
        Ok(Credentials {
            id: self.id.clone(),
            chain,
            key,
            roots,
            roots_der,
            issued: SystemTime::now(),
            expires,
            certified: Arc::new(certified),
        })
    }
}
