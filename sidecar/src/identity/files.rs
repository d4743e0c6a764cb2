//! An identity from files, for sidecars without a control plane (`--config`):
//! a certificate chain, its key and the mesh's CA bundle, written by
//! whatever issues certificates there (cert-manager, Vault, a script). Each
//! load checks everything the control plane would have guaranteed — one
//! SPIFFE ID naming this service, the key belonging to the certificate, the
//! chain leading to the CA — so a wrong file fails at start, naming the flag,
//! and a wrong replacement is refused while the current certificate stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivateKeyDer, UnixTime};
use weft_proto::identity::{CertInfo, SpiffeId, certs_from_pem, provider, root_store};
use weft_proto::name::ServiceName;

use super::Credentials;

/// Where the certificate, its key and the CA bundle are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// What is wrong with the files, and which flag gave the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {reason}")]
pub struct FilesError {
    pub flag: &'static str,
    pub reason: String,
}

/// A stamp that changes when any of the three files does.
pub type Stamp = [Option<(SystemTime, u64)>; 3];

impl CertFiles {
    /// Reads and checks the files: the certificate must name `service`
    /// (any trust domain; the CA decides which one is trusted).
    pub fn load(&self, service: &ServiceName) -> Result<Credentials, FilesError> {
        let fail = |flag: &'static str, path: &Path, reason: String| FilesError {
            flag,
            reason: format!("{}: {reason}", path.display()),
        };
        let read = |flag: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| fail(flag, path, format!("cannot read it: {e}")))
        };
        let (cert_pem, key_pem, ca_pem) = (
            read("cert-file", &self.cert)?,
            read("key-file", &self.key)?,
            read("ca-file", &self.ca)?,
        );
        let chain = certs_from_pem(&String::from_utf8_lossy(&cert_pem))
            .map_err(|e| fail("cert-file", &self.cert, e.to_string()))?;
        let roots_der = certs_from_pem(&String::from_utf8_lossy(&ca_pem))
            .map_err(|e| fail("ca-file", &self.ca, e.to_string()))?;
        let roots = root_store(&roots_der).map_err(|e| fail("ca-file", &self.ca, e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| fail("key-file", &self.key, format!("no PEM private key: {e}")))?;

        let info =
            CertInfo::parse(&chain[0]).map_err(|e| fail("cert-file", &self.cert, e.to_string()))?;
        let id = info.spiffe_id().ok_or_else(|| {
            fail(
                "cert-file",
                &self.cert,
                format!(
                    "the certificate must carry exactly one SPIFFE ID (URI SAN \
                     spiffe://<trust-domain>/service/{service}); it has {:?}",
                    info.uri_sans
                ),
            )
        })?;
        let wanted = SpiffeId::service(id.trust_domain(), service.as_str());
        if id != wanted {
            return Err(fail(
                "cert-file",
                &self.cert,
                format!("the certificate is for {id}, this sidecar is {wanted} (--service)"),
            ));
        }
        let certified = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider())
            .map_err(|e| {
                fail(
                    "key-file",
                    &self.key,
                    format!("not the key of {}: {e}", self.cert.display()),
                )
            })?;
        // Peers check our certificate as a client certificate under the same
        // roots: do the same now, so that a wrong CA file fails here.
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| fail("ca-file", &self.ca, e.to_string()))?;
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|e| {
                fail(
                    "ca-file",
                    &self.ca,
                    format!(
                        "the certificate in {} does not chain to these CAs: {e}",
                        self.cert.display()
                    ),
                )
            })?;
        let expires = UNIX_EPOCH + Duration::from_secs(info.not_after.max(0) as u64);
        Ok(Credentials {
            id,
            chain,
            key,
            roots,
            roots_der,
            issued: SystemTime::now(),
            expires,
            certified: Arc::new(certified),
        })
    }

    /// Modification time and length of each file (`None` if unreadable).
    pub fn stamp(&self) -> Stamp {
        let one = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().unwrap_or(UNIX_EPOCH), m.len()))
        };
        [one(&self.cert), one(&self.key), one(&self.ca)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    use weft_proto::identity::pem;

    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).expect("ca");
        Ca {
            pem: pem("CERTIFICATE", cert.der()),
            issuer: Issuer::new(p, key),
        }
    }

    /// Files for a leaf naming `uris`, signed by `ca`, with `ca_of_file`'s
    /// certificate as the bundle.
    fn files(dir: &Path, ca: &Ca, bundle: &Ca, uris: &[&str]) -> CertFiles {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().expect("uri")))
            .collect();
        let cert = p.signed_by(&key, &ca.issuer).expect("leaf");
        let f = CertFiles {
            cert: dir.join("c.pem"),
            key: dir.join("k.pem"),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&f.cert, pem("CERTIFICATE", cert.der())).expect("write");
        std::fs::write(&f.key, pem("PRIVATE KEY", &key.serialize_der())).expect("write");
        std::fs::write(&f.ca, &bundle.pem).expect("write");
        f
    }

    fn echo() -> ServiceName {
        ServiceName::parse("echo").expect("name")
    }

    #[test]
    fn good_files_load_and_name_the_service() {
        let dir = tempfile::tempdir().expect("dir");
        let ca = ca();
        let f = files(
            dir.path(),
            &ca,
            &ca,
            &["spiffe://corp.example/service/echo"],
        );
        let c = f.load(&echo()).expect("loads");
        assert_eq!(c.id.to_string(), "spiffe://corp.example/service/echo");
        assert!(c.expires > SystemTime::now());
        let before = f.stamp();
        std::fs::write(&f.ca, format!("{}\n", ca.pem)).expect("write");
        assert_ne!(f.stamp(), before, "a changed file changes the stamp");
    }

    #[test]
    fn every_problem_names_its_flag_and_file() {
        let dir = tempfile::tempdir().expect("dir");
        let (ca, other) = (ca(), ca());
        let err = |f: &CertFiles| match f.load(&echo()) {
            Ok(c) => panic!("loaded {}", c.id),
            Err(e) => e,
        };

        let f = files(dir.path(), &ca, &ca, &["spiffe://weft.local/service/other"]);
        let e = err(&f);
        assert_eq!(e.flag, "cert-file");
        assert!(
            e.reason.contains("spiffe://weft.local/service/other")
                && e.reason.contains("spiffe://weft.local/service/echo"),
            "{e}"
        );

        let f = files(
            dir.path(),
            &ca,
            &ca,
            &[
                "spiffe://weft.local/service/echo",
                "spiffe://weft.local/service/x",
            ],
        );
        assert_eq!(err(&f).flag, "cert-file");

        let f = files(
            dir.path(),
            &ca,
            &other,
            &["spiffe://weft.local/service/echo"],
        );
        let e = err(&f);
        assert_eq!(e.flag, "ca-file", "{e}");
        assert!(e.reason.contains("does not chain"), "{e}");

        let f = files(dir.path(), &ca, &ca, &["spiffe://weft.local/service/echo"]);
        let key = std::fs::read(&f.key).expect("key");
        let _ = files(dir.path(), &ca, &ca, &["spiffe://weft.local/service/echo"]);
        std::fs::write(&f.key, key).expect("an old key");
        let e = err(&f);
        assert_eq!(e.flag, "key-file", "{e}");
        assert!(e.reason.contains("not the key"), "{e}");

        std::fs::write(&f.key, "junk").expect("write");
        assert_eq!(err(&f).flag, "key-file");
        std::fs::write(&f.cert, "junk").expect("write");
        assert_eq!(err(&f).flag, "cert-file");
        let missing = CertFiles {
            cert: dir.path().join("nope.pem"),
            ..f
        };
        let e = err(&missing);
        assert!(
            e.flag == "cert-file" && e.reason.contains("nope.pem"),
            "{e}"
        );
    }
}
