//! The certificates the gateway answers TLS clients with: PEM files the
//! user gives, one pair per set of host names. A client's SNI picks the
//! certificate whose DNS names match it (exact before wildcard); the first
//! pair answers clients without SNI or with a name none holds. The files are
//! checked for changes on an interval and re-read; a pair that no longer
//! reads (half-written, a key that does not match) keeps the last good one
//! in force and says why.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use weft_proto::identity::{CertInfo, certs_from_pem, provider};
use weft_proto::routing::HostMatch;

use crate::config::CertPair;
use crate::drain;

/// A certificate pair that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("{path}: {reason}")]
    Bad { path: String, reason: String },
}

/// One pair, loaded.
struct Loaded {
    names: Vec<HostMatch>,
    key: Arc<CertifiedKey>,
    /// The files' modification times when read.
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

fn stamp(pair: &CertPair) -> (Option<SystemTime>, Option<SystemTime>) {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (m(&pair.cert), m(&pair.key))
}

fn load(pair: &CertPair) -> Result<Loaded, CertError> {
    let stamp = stamp(pair);
    let read = |p: &Path| {
        std::fs::read(p).map_err(|error| CertError::Read {
            path: p.display().to_string(),
            error,
        })
    };
    let bad = |p: &Path, reason: String| CertError::Bad {
        path: p.display().to_string(),
        reason,
    };
    let (cert_pem, key_pem) = (read(&pair.cert)?, read(&pair.key)?);
    let chain = certs_from_pem(&String::from_utf8_lossy(&cert_pem))
        .map_err(|e| bad(&pair.cert, e.to_string()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| bad(&pair.cert, "holds no certificate".into()))?;
    let info = CertInfo::parse(leaf).map_err(|e| bad(&pair.cert, e.to_string()))?;
    // Names a certificate holds that are not host names (IP addresses)
    // pick nothing by SNI.
    let names = info
        .dns_sans
        .iter()
        .filter_map(|n| HostMatch::parse(n).ok())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| bad(&pair.key, format!("no private key: {e}")))?;
    let signer = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(&pair.key, e.to_string()))?;
    let key = CertifiedKey::new(chain, signer);
    key.keys_match().map_err(|e| {
        bad(
            &pair.key,
            format!("does not match {}: {e}", pair.cert.display()),
        )
    })?;
    Ok(Loaded {
        names,
        key: Arc::new(key),
        stamp,
    })
}

/// The gateway's certificates, swapped whole when a file changes.
pub struct Certificates {
    pairs: Vec<CertPair>,
    loaded: ArcSwap<Vec<Loaded>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("pairs", &self.pairs)
            .finish()
    }
}

impl Certificates {
    /// Reads every pair; the first problem is the error (the gateway does
    /// not start on a bad file).
    pub fn load(pairs: &[CertPair]) -> Result<Arc<Self>, CertError> {
        let loaded = pairs.iter().map(load).collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Certificates {
            pairs: pairs.to_vec(),
            loaded: ArcSwap::from_pointee(loaded),
        }))
    }

    /// Re-reads the pairs whose files changed; returns how many were
    /// replaced. A pair that fails keeps its last good certificate.
    pub fn reload(&self) -> usize {
        let current = self.loaded.load();
        let mut next = Vec::with_capacity(self.pairs.len());
        let mut replaced = 0;
        for (pair, old) in self.pairs.iter().zip(current.iter()) {
            if stamp(pair) == old.stamp {
                next.push(Loaded {
                    names: old.names.clone(),
                    key: old.key.clone(),
                    stamp: old.stamp,
                });
                continue;
            }
            match load(pair) {
                Ok(l) => {
                    tracing::info!(cert = %pair.cert.display(), names = ?l.names.iter().map(ToString::to_string).collect::<Vec<_>>(), "gateway certificate re-read");
                    replaced += 1;
                    next.push(l);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a changed gateway certificate does not read; the last good one stays in force");
                    next.push(Loaded {
                        names: old.names.clone(),
                        key: old.key.clone(),
                        // Not retried until the files change again.
                        stamp: stamp(pair),
                    });
                }
            }
        }
        if replaced > 0 {
            self.loaded.store(Arc::new(next));
        }
        replaced
    }

    /// Checks the files every `interval` until draining begins.
    pub async fn watch(self: Arc<Self>, interval: Duration, mut drain: drain::Watch) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = drain.signaled() => return,
            }
            self.reload();
        }
    }

    /// The certificate for `sni`.
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.load();
        let best = sni.and_then(|name| {
            let name = name.to_ascii_lowercase();
            loaded
                .iter()
                .filter_map(|l| {
                    let rank = l
                        .names
                        .iter()
                        .filter(|n| n.matches(&name))
                        .map(HostMatch::rank)
                        .max()?;
                    Some((rank, l))
                })
                // The most specific name; the first pair on a tie.
                .rev()
                .max_by_key(|(rank, _)| *rank)
                .map(|(_, l)| l.key.clone())
        });
        best.or_else(|| loaded.first().map(|l| l.key.clone()))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// The TLS server configuration of the public listener: HTTP/2 and
/// HTTP/1.1 by ALPN, certificates by SNI.
pub fn server_config(certs: Arc<Certificates>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn write(dir: &Path, stem: &str, names: &[&str]) -> CertPair {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let pair = CertPair {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        };
        std::fs::write(
            &pair.cert,
            weft_proto::identity::pem("CERTIFICATE", cert.der()),
        )
        .expect("write");
        std::fs::write(
            &pair.key,
            weft_proto::identity::pem("PRIVATE KEY", &key.serialize_der()),
        )
        .expect("write");
        pair
    }

    fn leaf(k: &CertifiedKey) -> Vec<String> {
        CertInfo::parse(&k.cert[0]).expect("cert").dns_sans
    }

    #[test]
    fn sni_picks_the_most_specific_name_and_the_first_is_the_default() {
        let dir = tempfile::tempdir().expect("dir");
        let a = write(dir.path(), "a", &["api.example.com"]);
        let w = write(dir.path(), "w", &["*.example.com"]);
        let o = write(dir.path(), "o", &["other.org"]);
        let certs = Certificates::load(&[a, w, o]).expect("load");
        let names = |sni| leaf(&certs.pick(sni).expect("a certificate"));
        assert_eq!(names(Some("api.example.com")), ["api.example.com"]);
        assert_eq!(names(Some("WWW.example.com")), ["*.example.com"]);
        assert_eq!(names(Some("other.org")), ["other.org"]);
        assert_eq!(names(Some("unknown.net")), ["api.example.com"]);
        assert_eq!(names(None), ["api.example.com"]);
    }

    #[test]
    fn a_changed_file_is_re_read_and_a_bad_one_keeps_the_last_good() {
        let dir = tempfile::tempdir().expect("dir");
        let pair = write(dir.path(), "a", &["a.example.com"]);
        let certs = Certificates::load(std::slice::from_ref(&pair)).expect("load");
        assert_eq!(certs.reload(), 0, "nothing changed");
        // Rewritten with another name (a renewal). The modification time
        // is set explicitly: two writes in one clock tick look unchanged.
        write(dir.path(), "a", &["b.example.com"]);
        let later = SystemTime::now() + Duration::from_secs(5);
        for p in [&pair.cert, &pair.key] {
            let f = std::fs::File::options().write(true).open(p).expect("open");
            f.set_modified(later).expect("mtime");
        }
        assert_eq!(certs.reload(), 1);
        assert_eq!(leaf(&certs.pick(None).expect("cert")), ["b.example.com"]);
        // A half-written key: the last good certificate stays.
        std::fs::write(&pair.key, "-----BEGIN PRIVATE KEY-----\nAAAA").expect("write");
        let f = std::fs::File::options()
            .write(true)
            .open(&pair.key)
            .expect("open");
        f.set_modified(later + Duration::from_secs(5))
            .expect("mtime");
        assert_eq!(certs.reload(), 0);
        assert_eq!(leaf(&certs.pick(None).expect("cert")), ["b.example.com"]);
    }

    #[test]
    fn a_bad_pair_is_named_at_start() {
        let dir = tempfile::tempdir().expect("dir");
        let a = write(dir.path(), "a", &["a.example.com"]);
        let b = write(dir.path(), "b", &["b.example.com"]);
        let mismatched = CertPair {
            cert: a.cert.clone(),
            key: b.key.clone(),
        };
        let e = Certificates::load(&[mismatched]).expect_err("mismatch");
        assert!(e.to_string().contains("does not match"), "{e}");
        let missing = CertPair {
            cert: dir.path().join("nope.crt"),
            key: a.key,
        };
        let e = Certificates::load(&[missing]).expect_err("missing");
        assert!(e.to_string().contains("nope.crt"), "{e}");
    }
}
