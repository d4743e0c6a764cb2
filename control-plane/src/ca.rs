//! The mesh's certificate authority: created on first start (or loaded from
//! files given by flags), its key written with mode 0600 and never logged or
//! returned by any API. It signs short-lived leaf certificates from the
//! sidecars' certificate signing requests, naming only the SPIFFE ID the
//! caller is authorised for, whatever the request asks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};
use weft_proto::identity::{CertInfo, SpiffeId, fingerprint, pem};

/// File names inside `--data-dir` for a generated CA.
pub const CA_CERT_FILE: &str = "ca.crt";
pub const CA_KEY_FILE: &str = "ca.key";

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("--trust-bundle {path}: {reason}")]
    TrustBundle { path: PathBuf, reason: String },
    #[error("cannot create the CA: {0}")]
    Create(String),
    #[error("the certificate signing request is not valid: {0}")]
    BadCsr(String),
    #[error(
        "the certificate signing request asks for {asked}, but the caller may only have {allowed}"
    )]
    WrongIdentity { asked: String, allowed: String },
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// Where the CA comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// `ca.crt` / `ca.key` in this directory, created on first start.
    DataDir(PathBuf),
    /// Files given by flags; never written.
    Files { cert: PathBuf, key: PathBuf },
}

pub struct Ca {
    trust_domain: String,
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    leaf_ttl: Duration,
    /// More trust anchors than the signing CA (`--trust-bundle`): the CA
    /// being rotated in, or out.
    extra_roots: Vec<CertificateDer<'static>>,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn offset(t: SystemTime) -> Result<time::OffsetDateTime, CaError> {
    time::OffsetDateTime::from_unix_timestamp(unix(t)).map_err(|e| CaError::Create(e.to_string()))
}

fn random_serial() -> Result<SerialNumber, CaError> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| CaError::Sign("no randomness".into()))?;
    b[0] &= 0x7f; // a positive integer
    Ok(SerialNumber::from_slice(&b))
}

fn read(path: &Path) -> Result<Vec<u8>, CaError> {
    std::fs::read(path).map_err(|e| CaError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

/// Writes `data` to a new file readable by its owner only.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| CaError::File {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)
}

impl Ca {
    /// Loads the CA, or creates one in the data directory on first start.
    pub fn load_or_create(
        source: &CaSource,
        trust_domain: &str,
        leaf_ttl: Duration,
    ) -> Result<Self, CaError> {
        let (cert_path, key_path) = match source {
            CaSource::DataDir(dir) => (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE)),
            CaSource::Files { cert, key } => (cert.clone(), key.clone()),
        };
        if matches!(source, CaSource::DataDir(_)) && !cert_path.exists() && !key_path.exists() {
            let (cert, key) = Self::generate(trust_domain)?;
            write_private(
                &key_path,
                pem("PRIVATE KEY", &key.serialize_der()).as_bytes(),
            )?;
            std::fs::write(&cert_path, pem("CERTIFICATE", &cert)).map_err(|e| CaError::File {
                path: cert_path.clone(),
                reason: e.to_string(),
            })?;
            tracing::info!(cert = %cert_path.display(), fingerprint = %fingerprint(&cert), "created the mesh CA");
        }
        let cert =
            CertificateDer::from_pem_slice(&read(&cert_path)?).map_err(|e| CaError::File {
                path: cert_path.clone(),
                reason: format!("not a PEM certificate: {e}"),
            })?;
        let key_der =
            PrivateKeyDer::from_pem_slice(&read(&key_path)?).map_err(|e| CaError::File {
                path: key_path.clone(),
                reason: format!("not a PEM private key: {e}"),
            })?;
        let key = KeyPair::try_from(&key_der).map_err(|e| CaError::File {
            path: key_path.clone(),
            reason: format!("unusable private key: {e}"),
        })?;
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| CaError::File {
            path: cert_path.clone(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
        Ok(Ca {
            trust_domain: trust_domain.to_string(),
            cert,
            issuer,
            leaf_ttl,
            extra_roots: Vec::new(),
        })
    }

    /// Also trusts the CA certificates in `path` (PEM): while a CA is
    /// rotated, the old and the new one are trusted together.
    pub fn trust_bundle(mut self, path: &Path) -> Result<Self, CaError> {
        let fail = |reason: String| CaError::TrustBundle {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(fail("no CERTIFICATE in it".into()));
        }
        for c in certs {
            if c != self.cert && !self.extra_roots.contains(&c) {
                self.extra_roots.push(c);
            }
        }
        Ok(self)
    }

    /// Every trust anchor of the mesh: the signing CA first.
    pub fn roots(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(self.cert.clone())
            .chain(self.extra_roots.iter().cloned())
            .collect()
    }

    /// The same as PEM.
    pub fn roots_pem(&self) -> String {
        self.roots().iter().map(|c| pem("CERTIFICATE", c)).collect()
    }

    /// A new CA certificate and key, valid for ten years.
    fn generate(trust_domain: &str) -> Result<(CertificateDer<'static>, KeyPair), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Create(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Weft mesh CA ({trust_domain})"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(3600))?;
        params.not_after = offset(now + Duration::from_secs(10 * 365 * 24 * 3600))?;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|e| CaError::Create(e.to_string()))?;
        Ok((cert.der().clone(), key))
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn root(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn root_pem(&self) -> String {
        pem("CERTIFICATE", &self.cert)
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    pub fn leaf_ttl(&self) -> Duration {
        self.leaf_ttl
    }

    fn leaf_params(&self, id: &SpiffeId, ttl: Duration) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            id.service_name().unwrap_or("control-plane"),
        );
        params.distinguished_name = dn;
        let uri = id
            .to_string()
            .try_into()
            .map_err(|e| CaError::Sign(format!("{e}")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        // A little slack for clocks that disagree.
        params.not_before = offset(now - Duration::from_secs(300))?;
        params.not_after = offset(now + ttl)?;
        params.serial_number = Some(random_serial()?);
        Ok(params)
    }

    /// Signs a leaf for `allowed` from a CSR. The CSR must name exactly
    /// `allowed` (so a sidecar learns at once that its token is for another
    /// service); the certificate is built from our parameters, never the
    /// CSR's, with only its public key taken over.
    pub fn issue(
        &self,
        csr_der: &[u8],
        allowed: &SpiffeId,
    ) -> Result<(CertificateDer<'static>, SystemTime), CaError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|s| match s {
                SanType::URI(u) => Some(u.as_str().to_string()),
                _ => None,
            })
            .collect();
        if asked.len() != 1 || asked[0] != allowed.to_string() {
            return Err(CaError::WrongIdentity {
                asked: if asked.is_empty() {
                    "no SPIFFE ID".into()
                } else {
                    asked.join(", ")
                },
                allowed: allowed.to_string(),
            });
        }
        let leaf = CertificateSigningRequestParams {
            params: self.leaf_params(allowed, self.leaf_ttl)?,
            public_key: csr.public_key,
        };
        let cert = leaf
            .signed_by(&self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        let expires = CertInfo::parse(cert.der())
            .map(|i| UNIX_EPOCH + Duration::from_secs(i.not_after.max(0) as u64))
            .map_err(|e| CaError::Sign(e.to_string()))?;
        Ok((cert.der().clone(), expires))
    }

    /// The control plane's own serving certificate and key (PEM), valid for a year.
    pub fn serving_identity(&self) -> Result<(String, String), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Sign(e.to_string()))?;
        let id = SpiffeId::control_plane(&self.trust_domain);
        let params = self.leaf_params(&id, Duration::from_secs(365 * 24 * 3600))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| CaError::Sign(e.to_string()))?;
        // The chain carries the CA too, so that a sidecar holding only the
        // fingerprint from its join token can find and pin it.
        let chain = format!("{}{}", pem("CERTIFICATE", cert.der()), self.root_pem());
        Ok((chain, pem("PRIVATE KEY", &key.serialize_der())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(id: &str) -> (KeyPair, Vec<u8>) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().expect("uri"))];
        let csr = params.serialize_request(&key).expect("csr");
        (key, csr.der().to_vec())
    }

    #[test]
    fn creates_the_ca_with_a_private_key_file_and_signs_leaves() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(
            &CaSource::DataDir(dir.path().into()),
            "weft.local",
            Duration::from_secs(60),
        )
        .expect("ca");
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Loads the same CA again.
        let again = Ca::load_or_create(
            &CaSource::DataDir(dir.path().into()),
            "weft.local",
            Duration::from_secs(60),
        )
        .expect("reload");
        assert_eq!(ca.fingerprint(), again.fingerprint());

        let id = SpiffeId::service("weft.local", "users");
        let (_key, csr) = csr_for(&id.to_string());
        let (cert, expires) = ca.issue(&csr, &id).expect("signed");
        let info = CertInfo::parse(&cert).expect("parse");
        assert_eq!(info.spiffe_id(), Some(id.clone()));
        let left = expires.duration_since(SystemTime::now()).expect("future");
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50));

        // A CSR for another service is refused.
        let (_k, other) = csr_for("spiffe://weft.local/service/orders");
        let e = ca.issue(&other, &id).expect_err("wrong identity");
        assert!(
            e.to_string().contains("orders") && e.to_string().contains("users"),
            "{e}"
        );
        assert!(ca.issue(b"garbage", &id).is_err());
    }
}
