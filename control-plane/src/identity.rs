//! The `Identity` gRPC service: signs sidecars' certificates. A first
//! certificate needs a join token for the service; a renewal needs the
//! current certificate as the call's client certificate.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};
use weft_proto::identity::{JoinToken, SpiffeId, peer_id};
use weft_proto::time::unix_ms;
use weft_proto::v1 as pb;
use weft_proto::v1::identity_server::Identity;

use crate::auth::{TokenBook, TokenError};
use crate::ca::{Ca, CaError};
use crate::metrics::{IssueLabels, Metrics};
use crate::store::Store;

pub struct IdentityService {
    ca: Arc<Ca>,
    tokens: Arc<TokenBook>,
    /// Asked when `tokens` does not know a token (see [`Self::admit`]).
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl IdentityService {
    pub fn new(
        ca: Arc<Ca>,
        tokens: Arc<TokenBook>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> Self {
        IdentityService {
            ca,
            tokens,
            store,
            metrics,
        }
    }

    /// The service `token` admits. On a shared store a token this replica
    /// has not heard of is looked up in the store before it is refused:
    /// `weftctl token create` on one replica and a sidecar joining through
    /// another a moment later must not race the watch that carries it.
    /// The record read is used once and not kept: the watch stays the one
    /// writer of the book, so a deletion it carries cannot be undone here.
    async fn admit(&self, token: &str) -> Result<String, Status> {
        let now = SystemTime::now();
        let refused = |e: TokenError| Status::unauthenticated(e.to_string());
        match self.tokens.admit(token, now) {
            Err(TokenError::Unknown) if self.store.is_shared() => {
                let parsed = JoinToken::decode(token).ok_or(refused(TokenError::Malformed))?;
                match self.store.token(&parsed.id).await {
                    Ok(Some(record)) => record
                        .admit(&parsed, now)
                        .map(str::to_string)
                        .map_err(refused),
                    Ok(None) => Err(refused(TokenError::Unknown)),
                    Err(e) => Err(Status::unavailable(format!(
                        "the join token is not known to this replica yet and the store cannot be asked: {e}"
                    ))),
                }
            }
            other => other.map_err(refused),
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .issued
            .get_or_create(&IssueLabels { result })
            .inc();
    }
}

/// The service identity of a verified client certificate of this trust domain.
pub fn caller_id<T>(req: &Request<T>, trust_domain: &str) -> Option<SpiffeId> {
    let certs = req.peer_certs()?;
    let id = peer_id(&certs)?;
    (id.trust_domain() == trust_domain && id.service_name().is_some()).then_some(id)
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn issue(
        &self,
        request: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        let td = self.ca.trust_domain().to_string();
        let renewing = caller_id(&request, &td);
        let req = request.into_inner();
        let (allowed, how) = match renewing {
            Some(id) => (id, "renewal"),
            None if !req.token.is_empty() => {
                let service = self.admit(&req.token).await.inspect_err(|_| {
                    self.count("refused");
                })?;
                (SpiffeId::service(&td, &service), "join token")
            }
            None => {
                self.count("refused");
                return Err(Status::unauthenticated(
                    "a first certificate needs a join token (weftctl token create SERVICE)",
                ));
            }
        };
        let ca = self.ca.clone();
        let csr = req.csr;
        let id = allowed.clone();
        let (cert, expires) = tokio::task::spawn_blocking(move || ca.issue(&csr, &id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| {
                self.count("refused");
                match e {
                    CaError::WrongIdentity { .. } => Status::permission_denied(e.to_string()),
                    CaError::BadCsr(_) => Status::invalid_argument(e.to_string()),
                    other => Status::internal(other.to_string()),
                }
            })?;
        self.count("issued");
        tracing::info!(identity = %allowed, authorised_by = how, expires_unix_ms = unix_ms(expires), "issued a certificate");
        Ok(Response::new(pb::IssueResponse {
            chain: vec![cert.to_vec()],
            roots: self.ca.roots().iter().map(|c| c.to_vec()).collect(),
            expires_unix_ms: unix_ms(expires),
            spiffe_id: allowed.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::future::BoxFuture;

    use super::*;
    use crate::auth::TokenRecord;
    use crate::ca::CaSource;
    use crate::catalog::InstanceStore;
    use crate::resource::{Kind, Name, Resource};
    use crate::store::{Replication, Revision, Snapshot, StoreError};

    /// A shared store that another replica wrote `held` into and whose
    /// watch has not reached this replica's book; `down` when it cannot be
    /// asked. Only what the identity service uses is answered.
    struct Lagging {
        held: Option<(String, TokenRecord)>,
        down: bool,
    }

    #[tonic::async_trait]
    impl Store for Lagging {
        async fn load(&self) -> Result<Snapshot, StoreError> {
            unreachable!("not used by the identity service")
        }
        fn revision(&self) -> Revision {
            unreachable!("not used by the identity service")
        }
        async fn apply(&self, _: &[Resource], _: Revision) -> Result<(), StoreError> {
            unreachable!("not used by the identity service")
        }
        async fn delete(&self, _: Kind, _: &Name, _: Revision) -> Result<bool, StoreError> {
            unreachable!("not used by the identity service")
        }
        async fn put_token(&self, _: &str, _: &TokenRecord) -> Result<(), StoreError> {
            unreachable!("not used by the identity service")
        }
        async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
            if self.down {
                return Err(StoreError::Corrupt {
                    key: id.into(),
                    reason: "standing in for an unreachable store".into(),
                });
            }
            Ok(self
                .held
                .as_ref()
                .filter(|(held, _)| held == id)
                .map(|(_, r)| r.clone()))
        }
        async fn delete_tokens(&self, _: &[String]) -> Result<(), StoreError> {
            unreachable!("not used by the identity service")
        }
        async fn admin_hash(&self, _: Vec<u8>) -> Result<Vec<u8>, StoreError> {
            unreachable!("not used by the identity service")
        }
        fn instance_store(&self) -> Box<dyn InstanceStore<Error = StoreError>> {
            unreachable!("not used by the identity service")
        }
        fn replicate(self: Arc<Self>, _: Replication) -> BoxFuture<'static, ()> {
            unreachable!("not used by the identity service")
        }
        fn is_shared(&self) -> bool {
            true
        }
    }

    fn token(id: &str, secret: &str) -> String {
        JoinToken {
            td: "weft.local".into(),
            id: id.into(),
            secret: secret.into(),
            ca: "ff".into(),
        }
        .encode()
    }

    fn service(dir: &std::path::Path, store: Lagging) -> anyhow::Result<IdentityService> {
        let ca = Ca::load_or_create(
            &CaSource::DataDir(dir.to_owned()),
            "weft.local",
            Duration::from_secs(3600),
        )?;
        Ok(IdentityService::new(
            Arc::new(ca),
            Arc::new(TokenBook::default()),
            Arc::new(store),
            Arc::new(Metrics::new()),
        ))
    }

    #[tokio::test]
    async fn a_token_another_replica_just_minted_is_read_from_the_store() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let record = TokenRecord::new("orders", "s3cret", Duration::from_secs(60));
        let ids = service(
            dir.path(),
            Lagging {
                held: Some(("t1".into(), record)),
                down: false,
            },
        )?;
        assert_eq!(ids.admit(&token("t1", "s3cret")).await?, "orders");
        // Read, not kept: the watch stays the book's one writer.
        assert!(ids.tokens.get("t1", SystemTime::now()).is_none());
        // The store's record is checked like the book's.
        let wrong = ids
            .admit(&token("t1", "guess"))
            .await
            .expect_err("a wrong secret");
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let unknown = ids
            .admit(&token("t2", "s3cret"))
            .await
            .expect_err("a token nobody made");
        assert_eq!(unknown.code(), tonic::Code::Unauthenticated);
        assert!(unknown.message().contains("not known"), "{unknown:?}");
        Ok(())
    }

    #[tokio::test]
    async fn an_unknown_token_with_the_store_unreachable_is_unavailable_not_refused()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let ids = service(
            dir.path(),
            Lagging {
                held: None,
                down: true,
            },
        )?;
        let e = ids
            .admit(&token("t1", "s3cret"))
            .await
            .expect_err("no store to ask");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(e.message().contains("cannot be asked"), "{e:?}");
        Ok(())
    }
}
