//! The `Identity` gRPC service: signs sidecars' certificates. A first
//! certificate needs a join token for the service; a renewal needs the
//! current certificate as the call's client certificate. Signing is
//! bounded ([`Signing`]): a wave of joins or a flood of renewals waits its
//! turn or is told to come back, and the rest of the control plane keeps
//! its share of the CPU.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use tokio::sync::{Semaphore, SemaphorePermit};
use tonic::{Request, Response, Status};
use weft_proto::identity::{JoinToken, SpiffeId, peer_id};
use weft_proto::time::unix_ms;
use weft_proto::v1 as pb;
use weft_proto::v1::identity_server::Identity;

use crate::auth::{TokenBook, TokenError};
use crate::ca::{Ca, CaError};
use crate::metrics::{IssueLabels, Metrics};
use crate::store::Store;

/// Requests that may wait for a signing slot; beyond them a request is
/// answered `UNAVAILABLE` at once, which a sidecar retries with backoff
/// (and at another replica, if there is one). With one slot and ~80 µs a
/// certificate (`Ca::issue`, release build, the 2-core development
/// machine), the last of them waits some 20 ms.
const MAX_WAITING: usize = 256;

/// How many certificates are signed at once, and how many requests may
/// wait for that. Signing is CPU work on the blocking pool (the CSR's
/// signature checked, a certificate signed), which without a bound would
/// take every core while a few thousand sidecars join at once, or while a
/// misbehaving one asks in a loop, and starve the discovery streams.
/// Only authorised requests (a valid token or certificate) get this far.
pub struct Signing {
    slots: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl Signing {
    pub fn new(slots: usize, max_waiting: usize) -> Self {
        Signing {
            slots: Semaphore::new(slots.max(1)),
            waiting: AtomicUsize::new(0),
            max_waiting,
        }
    }

    /// Half the cores (at least one): the other half stays with the
    /// discovery streams and the API.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Signing::new(cores / 2, MAX_WAITING)
    }

    /// A slot, at once or after waiting in line; `UNAVAILABLE` when the
    /// line is full.
    async fn enter(&self) -> Result<SemaphorePermit<'_>, Status> {
        if let Ok(slot) = self.slots.try_acquire() {
            return Ok(slot);
        }
        let _in_line = InLine::join(&self.waiting, self.max_waiting).ok_or_else(|| {
            Status::unavailable(format!(
                "the certificate authority is busy: {} requests already wait to be signed; \
                 try again shortly",
                self.max_waiting
            ))
        })?;
        self.slots
            .acquire()
            .await
            .map_err(|_| Status::internal("the signing slots are closed"))
    }
}

/// One request waiting for a slot; leaves the line when dropped (signed,
/// or its caller gone).
struct InLine<'a>(&'a AtomicUsize);

impl<'a> InLine<'a> {
    fn join(waiting: &'a AtomicUsize, max: usize) -> Option<Self> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InLine(waiting))
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct IdentityService {
    ca: Arc<Ca>,
    tokens: Arc<TokenBook>,
    /// Asked when `tokens` does not know a token (see [`Self::admit`]).
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    signing: Signing,
}

impl IdentityService {
    pub fn new(
        ca: Arc<Ca>,
        tokens: Arc<TokenBook>,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        signing: Signing,
    ) -> Self {
        IdentityService {
            ca,
            tokens,
            store,
            metrics,
            signing,
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
        let _slot = self.signing.enter().await.inspect_err(|_| {
            self.count("busy");
        })?;
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
        service_signing(dir, store, Signing::new(1, MAX_WAITING))
    }

    fn service_signing(
        dir: &std::path::Path,
        store: Lagging,
        signing: Signing,
    ) -> anyhow::Result<IdentityService> {
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
            signing,
        ))
    }

    /// Polls `f` once: whether it finished.
    fn poll_once<F: std::future::Future + Unpin>(f: &mut F) -> std::task::Poll<F::Output> {
        let waker = futures_util::task::noop_waker();
        std::pin::Pin::new(f).poll(&mut std::task::Context::from_waker(&waker))
    }

    #[tokio::test]
    async fn signing_takes_its_slots_then_a_bounded_line_then_says_busy() -> anyhow::Result<()> {
        let signing = Signing::new(1, 1);
        let first = signing.enter().await?;
        // The slot is taken: the next waits in line...
        let mut second = Box::pin(signing.enter());
        assert!(poll_once(&mut second).is_pending());
        // ...and the line (one) is full: the third is told to come back,
        // at once.
        let std::task::Poll::Ready(third) = poll_once(&mut Box::pin(signing.enter())) else {
            panic!("the third request waited instead of being told the line is full");
        };
        let busy = third.expect_err("a full line");
        assert_eq!(busy.code(), tonic::Code::Unavailable, "{busy:?}");
        assert!(busy.message().contains("busy"), "{busy:?}");
        // The slot freed goes to the one waiting, which leaves the line.
        drop(first);
        let second = second.await?;
        assert_eq!(signing.waiting.load(Ordering::Acquire), 0);
        // A caller that gives up while in line leaves it too.
        let mut gives_up = Box::pin(signing.enter());
        assert!(poll_once(&mut gives_up).is_pending());
        assert_eq!(signing.waiting.load(Ordering::Acquire), 1);
        drop(gives_up);
        assert_eq!(signing.waiting.load(Ordering::Acquire), 0);
        drop(second);
        drop(signing.enter().await?);
        Ok(())
    }

    #[tokio::test]
    async fn an_authorised_request_finding_the_authority_busy_is_unavailable_and_counted()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let record = TokenRecord::new("orders", "s3cret", Duration::from_secs(60));
        let ids = service_signing(
            dir.path(),
            Lagging {
                held: Some(("t1".into(), record)),
                down: false,
            },
            Signing::new(1, 0),
        )?;
        let issue = |token: String| {
            ids.issue(Request::new(pb::IssueRequest {
                csr: b"not a CSR".to_vec(),
                token,
            }))
        };
        let held = ids.signing.enter().await?;
        let e = tokio::time::timeout(Duration::from_secs(5), issue(token("t1", "s3cret")))
            .await
            .map_err(|_| anyhow::anyhow!("the request waited instead of being told busy"))?
            .expect_err("busy");
        assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
        assert!(e.message().contains("busy"), "{e:?}");
        let busy = ids
            .metrics
            .issued
            .get_or_create(&IssueLabels { result: "busy" })
            .get();
        assert_eq!(busy, 1);
        // Refused before it would wait: a wrong token never takes a slot.
        let e = issue(token("t1", "guess")).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
        // The slot free again, the request reaches the CA (which reads the
        // CSR and refuses it).
        drop(held);
        let e = issue(token("t1", "s3cret")).await.expect_err("a bad CSR");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        Ok(())
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
