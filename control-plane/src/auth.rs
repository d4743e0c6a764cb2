//! Who may do what on the control-plane API.
//!
//! - `weftctl` presents the admin credential (`authorization: Bearer …`),
//!   created at first start in `<data-dir>/admin.credential` (mode 0600)
//!   together with the CA certificate it needs to verify the control plane.
//! - A sidecar's first certificate is authorised by a join token scoped to
//!   one service; the token also carries the CA's fingerprint, so that the
//!   sidecar can verify the control plane before it has any certificate.
//! - Everything else a sidecar does is authorised by its certificate.
//!
//! Only SHA-256 hashes of secrets are stored; comparisons are constant-time.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

use weft_proto::identity::JoinToken;
use weft_proto::time::unix_ms;

use crate::ca::{CaError, write_private};

pub use crate::api::credential::{AdminCredential, CREDENTIAL_FILE};

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Random bytes as lowercase hex.
pub fn random_hex(n: usize) -> Result<String, Status> {
    let mut b = vec![0u8; n];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| Status::internal("no randomness"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// Checks `authorization: Bearer <admin token>` on admin calls.
#[derive(Clone)]
pub struct AdminAuth {
    hash: Vec<u8>,
}

impl AdminAuth {
    /// Reads the credential file, creating it (and a new token) when missing.
    pub fn load_or_create(path: &Path, trust_domain: &str, ca_pem: &str) -> Result<Self, CaError> {
        let cred = match Self::read(path, ca_pem)? {
            Some(c) => c,
            None => {
                let c = Self::create(trust_domain, ca_pem)?;
                Self::write(path, &c)?;
                tracing::info!(file = %path.display(), "created the admin credential (weftctl --credential)");
                c
            }
        };
        Ok(Self::from_hash(Self::hash_of(&cred)))
    }

    /// The credential file, if there is one; its CA is refreshed to
    /// `ca_pem` (the CA changed, e.g. given by flags: the token stays).
    pub fn read(path: &Path, ca_pem: &str) -> Result<Option<AdminCredential>, CaError> {
        let Ok(text) = std::fs::read_to_string(path) else {
            return Ok(None);
        };
        let c: AdminCredential = serde_json::from_str(&text).map_err(|e| CaError::File {
            path: path.to_owned(),
            reason: format!("not an admin credential: {e}"),
        })?;
        if c.ca == ca_pem {
            return Ok(Some(c));
        }
        let c = AdminCredential {
            ca: ca_pem.to_string(),
            ..c
        };
        Self::write(path, &c)?;
        Ok(Some(c))
    }

    /// A new credential with a random token (not written anywhere yet).
    pub fn create(trust_domain: &str, ca_pem: &str) -> Result<AdminCredential, CaError> {
        Ok(AdminCredential {
            token: random_hex(32).map_err(|e| CaError::Create(e.message().to_string()))?,
            trust_domain: trust_domain.to_string(),
            ca: ca_pem.to_string(),
        })
    }

    /// What is stored of a credential: the SHA-256 of its token.
    pub fn hash_of(c: &AdminCredential) -> Vec<u8> {
        sha256(c.token.as_bytes())
    }

    /// Checks tokens against a stored hash.
    pub fn from_hash(hash: Vec<u8>) -> Self {
        AdminAuth { hash }
    }

    /// Writes the credential file (mode 0600).
    pub fn write(path: &Path, c: &AdminCredential) -> Result<(), CaError> {
        let text = serde_json::to_string_pretty(c).map_err(|e| CaError::Create(e.to_string()))?;
        write_private(path, text.as_bytes())
    }

    /// A tonic interceptor for the admin service.
    /// Whether `token` is the admin token.
    pub fn accepts(&self, token: &str) -> bool {
        constant_time_eq(&sha256(token.as_bytes()), &self.hash)
    }

    pub fn check<T>(&self, req: Request<T>) -> Result<Request<T>, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated(
                    "no admin credential: weftctl reads it from --credential (default weft-data/admin.credential)",
                )
            })?;
        if self.accepts(token) {
            Ok(req)
        } else {
            Err(Status::unauthenticated(
                "the admin credential is not valid for this control plane",
            ))
        }
    }
}

/// A stored token: for which service, until when.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub service: String,
    /// Hex SHA-256 of the secret.
    pub secret_hash: String,
    /// 0 in records stored before it was kept.
    #[serde(default)]
    pub created_unix_ms: u64,
    pub expires_unix_ms: u64,
}

/// Why a token was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the join token is malformed")]
    Malformed,
    #[error("the join token is not known to this control plane")]
    Unknown,
    #[error("the join token expired")]
    Expired,
}

impl TokenRecord {
    pub fn new(service: &str, secret: &str, ttl: Duration) -> Self {
        TokenRecord {
            service: service.to_string(),
            secret_hash: sha256(secret.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            created_unix_ms: unix_ms(SystemTime::now()),
            expires_unix_ms: unix_ms(SystemTime::now() + ttl),
        }
    }

    fn expired(&self, now: SystemTime) -> bool {
        unix_ms(now) >= self.expires_unix_ms
    }

    /// The service this token admits, if `token` matches it and it is in date.
    pub fn admit(&self, token: &JoinToken, now: SystemTime) -> Result<&str, TokenError> {
        let hash: String = sha256(token.secret.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if !constant_time_eq(hash.as_bytes(), self.secret_hash.as_bytes()) {
            return Err(TokenError::Unknown);
        }
        if self.expired(now) {
            return Err(TokenError::Expired);
        }
        Ok(&self.service)
    }
}

/// Tokens kept in memory; the store persists them (see `Store::put_token`).
#[derive(Default)]
pub struct TokenBook {
    tokens: Mutex<HashMap<String, TokenRecord>>,
}

impl TokenBook {
    pub fn new(records: Vec<(String, TokenRecord)>) -> Self {
        TokenBook {
            tokens: Mutex::new(records.into_iter().collect()),
        }
    }

    pub fn insert(&self, id: String, record: TokenRecord) {
        if let Ok(mut t) = self.tokens.lock() {
            t.insert(id, record);
        }
    }

    /// The tokens in date at `now`, oldest first.
    pub fn list(&self, now: SystemTime) -> Vec<(String, TokenRecord)> {
        let Ok(book) = self.tokens.lock() else {
            return Vec::new();
        };
        let mut v: Vec<_> = book
            .iter()
            .filter(|(_, r)| !r.expired(now))
            .map(|(id, r)| (id.clone(), r.clone()))
            .collect();
        v.sort_by(|a, b| (a.1.created_unix_ms, &a.0).cmp(&(b.1.created_unix_ms, &b.0)));
        v
    }

    /// One token, if it is known and in date at `now`.
    pub fn get(&self, id: &str, now: SystemTime) -> Option<TokenRecord> {
        let book = self.tokens.lock().ok()?;
        book.get(id).filter(|r| !r.expired(now)).cloned()
    }

    /// Forgets one token; what it was, if it was known.
    pub fn remove(&self, id: &str) -> Option<TokenRecord> {
        self.tokens.lock().ok()?.remove(id)
    }

    /// Replaces every token with `records` (a shared store's list).
    pub fn replace_all(&self, records: Vec<(String, TokenRecord)>) {
        if let Ok(mut t) = self.tokens.lock() {
            *t = records.into_iter().collect();
        }
    }

    /// Forgets the tokens expired at `now`, and says which they were (for
    /// the store to forget them too).
    pub fn remove_expired(&self, now: SystemTime) -> Vec<String> {
        let Ok(mut book) = self.tokens.lock() else {
            return Vec::new();
        };
        let gone: Vec<String> = book
            .iter()
            .filter(|(_, r)| r.expired(now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            book.remove(id);
        }
        gone
    }

    /// The service a token string admits now.
    pub fn admit(&self, token: &str, now: SystemTime) -> Result<String, TokenError> {
        let t = JoinToken::decode(token).ok_or(TokenError::Malformed)?;
        let book = self.tokens.lock().map_err(|_| TokenError::Unknown)?;
        let rec = book.get(&t.id).ok_or(TokenError::Unknown)?;
        rec.admit(&t, now).map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_admit_only_their_service_in_date() {
        let t = JoinToken {
            td: "weft.local".into(),
            id: "abc".into(),
            secret: "s3cret".into(),
            ca: "ff".into(),
        };
        let text = t.encode();
        assert!(text.starts_with("weft1."));
        assert_eq!(JoinToken::decode(&text), Some(t.clone()));
        assert_eq!(JoinToken::decode("weft1.!!!"), None);

        let book = TokenBook::new(vec![(
            "abc".into(),
            TokenRecord::new("users", "s3cret", Duration::from_secs(60)),
        )]);
        let now = SystemTime::now();
        assert_eq!(book.admit(&text, now).as_deref(), Ok("users"));
        assert_eq!(
            book.admit(&text, now + Duration::from_secs(61)),
            Err(TokenError::Expired)
        );
        let wrong = JoinToken {
            secret: "guess".into(),
            ..t.clone()
        }
        .encode();
        assert_eq!(book.admit(&wrong, now), Err(TokenError::Unknown));
        let other = JoinToken {
            id: "zzz".into(),
            ..t
        }
        .encode();
        assert_eq!(book.admit(&other, now), Err(TokenError::Unknown));
        assert_eq!(book.admit("nonsense", now), Err(TokenError::Malformed));
    }

    #[test]
    fn tokens_are_listed_in_date_revoked_and_expired_ones_forgotten() {
        let now = SystemTime::now();
        let rec = |service: &str, created: u64, ttl_s: u64| TokenRecord {
            service: service.into(),
            secret_hash: String::new(),
            created_unix_ms: created,
            expires_unix_ms: unix_ms(now) + ttl_s * 1000,
        };
        let book = TokenBook::new(vec![
            ("b".into(), rec("orders", 2, 60)),
            ("a".into(), rec("users", 1, 60)),
            ("old".into(), rec("users", 0, 0)),
        ]);
        let ids = |v: Vec<(String, TokenRecord)>| v.into_iter().map(|x| x.0).collect::<Vec<_>>();
        assert_eq!(ids(book.list(now)), ["a", "b"], "in date, oldest first");
        assert_eq!(book.remove_expired(now), ["old"]);
        assert!(book.remove_expired(now).is_empty());
        assert_eq!(
            book.remove("a").map(|r| r.service).as_deref(),
            Some("users")
        );
        assert!(book.remove("a").is_none());
        assert_eq!(ids(book.list(now)), ["b"]);
        let token = JoinToken {
            td: "weft.local".into(),
            id: "a".into(),
            secret: String::new(),
            ca: "ff".into(),
        };
        assert_eq!(book.admit(&token.encode(), now), Err(TokenError::Unknown));
    }

    #[test]
    fn admin_credential_is_created_private_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CREDENTIAL_FILE);
        let auth = AdminAuth::load_or_create(&path, "weft.local", "PEM").expect("created");
        assert_eq!(
            std::fs::metadata(&path).expect("file").permissions().mode() & 0o777,
            0o600
        );
        let cred: AdminCredential =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let mut ok = Request::new(());
        ok.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", cred.token).parse().expect("value"),
        );
        assert!(auth.check(ok).is_ok());
        let mut bad = Request::new(());
        bad.metadata_mut()
            .insert("authorization", "Bearer nope".parse().expect("value"));
        assert_eq!(
            auth.check(bad).expect_err("refused").code(),
            tonic::Code::Unauthenticated
        );
        assert!(auth.check(Request::new(())).is_err());
        // Loading again keeps the same token.
        let again = AdminAuth::load_or_create(&path, "weft.local", "PEM").expect("loaded");
        assert_eq!(again.hash, auth.hash);
    }
}
