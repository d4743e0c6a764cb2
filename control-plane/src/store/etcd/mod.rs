//! The etcd store: several control-plane replicas share one etcd cluster.
//!
//! - Resources are keys with the resources' revision beside them (the mod
//!   revision of one meta key). An apply is one transaction that compares
//!   that revision with the one the apply was validated against: two
//!   replicas cannot interleave, the second is told to try again.
//! - Join tokens and the admin credential are stored hashed, as in the
//!   embedded store.
//! - Each replica holds a lease, kept alive while it runs; the instances of
//!   the sidecars connected to it are keys bound to that lease, so that a
//!   dead replica's instances expire on their own. A sidecar that moves
//!   re-registers under its new replica's lease, which takes the key over.
//! - `replica.rs` runs the lease, the instance writer, the watch that feeds
//!   this replica's catalog, and the election of the replica that sweeps.
//!
//! Every request has a deadline: with etcd unreachable, writes fail fast
//! with an error naming etcd while reads are served from the catalog.

mod keys;
mod replica;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, watch};

use super::{Replication, Revision, Snapshot, Store, StoreError};
use crate::auth::TokenRecord;
use crate::catalog::{InstanceRecord, InstanceStore};
use crate::resource::{Kind, Name, Resource};
use keys::{Entry, Keys};

/// The default key prefix: every key of one mesh lives under it.
pub const KEY_PREFIX: &str = "/weft/";

/// etcd's own default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;

/// Client certificates for etcd (`--etcd-ca`, `--etcd-cert`, `--etcd-key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed etcd's serving certificates.
    pub ca: PathBuf,
    /// This replica's client certificate and key, when etcd asks for one.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// How to reach etcd, and the timings of this replica's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// `host:port` of each member.
    pub endpoints: Vec<String>,
    pub tls: Option<EtcdTls>,
    pub prefix: String,
    /// The replica's lease: its instances outlive it by at most this long.
    pub lease_ttl: Duration,
    /// How long a request may take before etcd counts as unreachable.
    pub request_timeout: Duration,
    /// How often the elected replica sweeps.
    pub sweep_interval: Duration,
    /// The most operations etcd takes in one transaction (its members'
    /// `--max-txn-ops`). An apply is one transaction, so it holds at most
    /// one resource fewer (the resources' revision is the last put).
    pub max_txn_ops: usize,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            tls: None,
            prefix: KEY_PREFIX.to_string(),
            lease_ttl: Duration::from_secs(10),
            request_timeout: super::DEFAULT_REQUEST_TIMEOUT,
            sweep_interval: Duration::from_secs(5),
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
        }
    }

    fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("cannot read {path}: {reason}")]
    Tls { path: PathBuf, reason: String },
    #[error("the etcd key prefix {0:?} must start and end with '/'")]
    Prefix(String),
    #[error(
        "etcd ({endpoints}) is unavailable ({what}: {reason}); this control plane refuses changes until it is back, and keeps serving what it has"
    )]
    Unavailable {
        endpoints: String,
        what: &'static str,
        reason: String,
    },
    #[error("etcd ({endpoints}) refused {what}: {reason}")]
    Refused {
        endpoints: String,
        what: &'static str,
        reason: String,
    },
    #[error(
        "the resources changed on another control-plane replica while this request was checked against them; try again"
    )]
    Conflict,
    #[error(
        "an apply of {resources} resources is one etcd transaction of {} operations, and {limit}. Apply fewer resources at a time, or raise --max-txn-ops on every etcd member and --etcd-max-txn-ops on every replica to match. Nothing was applied",
        resources + 1
    )]
    TooManyOps { resources: usize, limit: OpsLimit },
    #[error(
        "an apply of {resources} resources ({bytes} bytes) is larger than etcd takes in one request (its --max-request-bytes, 1.5 MiB unless raised): apply fewer resources at a time, or raise --max-request-bytes on every etcd member. Nothing was applied"
    )]
    TooLarge { resources: usize, bytes: usize },
    #[error(transparent)]
    BadValue(#[from] keys::BadValue),
}

/// Which limit an apply of too many resources ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpsLimit {
    /// This replica's `--etcd-max-txn-ops`, checked before sending.
    Configured(usize),
    /// etcd's, lower than this replica was told (`--etcd-max-txn-ops`).
    Etcd { configured: usize },
}

impl std::fmt::Display for OpsLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpsLimit::Configured(max) => write!(
                f,
                "etcd takes at most {max} (--etcd-max-txn-ops, which must match the members' --max-txn-ops; etcd's default is {DEFAULT_MAX_TXN_OPS}), so at most {} resources",
                max - 1
            ),
            OpsLimit::Etcd { configured } => write!(
                f,
                "etcd refused it as too many: the members' --max-txn-ops is lower than this replica's --etcd-max-txn-ops ({configured})"
            ),
        }
    }
}

impl EtcdError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EtcdError::Unavailable { .. })
    }

    /// The request is more than etcd takes, however often it is retried:
    /// the caller has to change it.
    pub fn is_too_big(&self) -> bool {
        matches!(
            self,
            EtcdError::TooManyOps { .. } | EtcdError::TooLarge { .. }
        )
    }
}

/// An instance record on its way to etcd, in the order the catalog changed.
#[derive(Debug)]
enum InstanceWrite {
    Put(InstanceRecord),
    Remove(String),
}

pub struct EtcdStore {
    client: Client,
    config: EtcdConfig,
    keys: Keys,
    /// The resources' revision this replica's catalog reflects, moved by
    /// the watch (after it fed the catalog) and by a re-list.
    seen: watch::Sender<i64>,
    /// This replica's lease (0 before the first grant).
    lease: Arc<AtomicI64>,
    writes: mpsc::UnboundedSender<InstanceWrite>,
    /// Taken by [`Store::replicate`], whose writer drains it.
    pending: std::sync::Mutex<Option<mpsc::UnboundedReceiver<InstanceWrite>>>,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, EtcdError> {
    std::fs::read(path).map_err(|e| EtcdError::Tls {
        path: path.clone(),
        reason: e.to_string(),
    })
}

impl EtcdStore {
    /// A client of `config.endpoints`. Connects lazily: etcd being down is
    /// found by the first request (the server's first `load`).
    pub async fn connect(config: EtcdConfig) -> Result<Self, EtcdError> {
        if !config.prefix.starts_with('/') || !config.prefix.ends_with('/') {
            return Err(EtcdError::Prefix(config.prefix));
        }
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.request_timeout)
            // A member that stops answering is noticed within seconds.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            // Requests to a member cut off from the quorum fail instead of
            // serving stale reads or hanging.
            .with_require_leader(true);
        if let Some(tls) = &config.tls {
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(t);
        }
        let client = Client::connect(config.urls(), Some(options))
            .await
            .map_err(|e| EtcdError::Unavailable {
                endpoints: config.endpoints.join(","),
                what: "connecting",
                reason: e.to_string(),
            })?;
        let (writes, pending) = mpsc::unbounded_channel();
        Ok(EtcdStore {
            client,
            keys: Keys::new(&config.prefix),
            config,
            seen: watch::Sender::new(0),
            lease: Arc::new(AtomicI64::new(0)),
            writes,
            pending: std::sync::Mutex::new(Some(pending)),
        })
    }

    async fn txn(
        &self,
        what: &'static str,
        txn: Txn,
    ) -> Result<etcd_client::TxnResponse, EtcdError> {
        retrying(&self.config, what, || {
            let (mut kv, txn) = (self.client.kv_client(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
    }

    async fn get(
        &self,
        what: &'static str,
        key: String,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, EtcdError> {
        retrying(&self.config, what, || {
            let (mut kv, key, options) = (self.client.kv_client(), key.clone(), options.clone());
            async move { kv.get(key, options).await }
        })
        .await
    }

    /// Stores the operations if the resources are still at `seen`, bumping
    /// their revision; the catalog then reflects the new one.
    async fn write_resources(&self, mut ops: Vec<TxnOp>, seen: Revision) -> Result<(), EtcdError> {
        let meta = self.keys.resources_revision();
        // The write's own mark: if an attempt committed but its answer was
        // lost (a member died under it), the retry's compare fails and the
        // mark says the write is in.
        let mark = random_mark();
        ops.push(TxnOp::put(meta.clone(), mark.clone(), None));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                meta.clone(),
                CompareOp::Equal,
                seen.0,
            )])
            .and_then(ops);
        let resp = self.txn("writing resources", txn).await?;
        let revision = if resp.succeeded() {
            resp.header().map(|h| h.revision())
        } else {
            let now = self.get("writing resources", meta, None).await?;
            match now.kvs().first() {
                Some(kv) if kv.value() == mark.as_slice() => Some(kv.mod_revision()),
                _ => return Err(EtcdError::Conflict),
            }
        };
        // Answer once this replica's catalog holds the change (the watch
        // brings it, as it does to every replica), so that a read right
        // after an apply sees it. The watch being down does not undo a
        // committed write: the next re-list brings it.
        if let Some(revision) = revision {
            let mut seen = self.seen.subscribe();
            let caught_up = seen.wait_for(|s| *s >= revision);
            if tokio::time::timeout(self.config.request_timeout, caught_up)
                .await
                .is_err()
            {
                tracing::warn!(
                    revision,
                    "applied, but this replica's watch has not brought it back yet"
                );
            }
        }
        Ok(())
    }
}

/// `f` within `config.request_timeout`, its error as [`EtcdError::Unavailable`]:
/// one attempt, for what its caller repeats anyway (keep-alives, watches).
async fn timed<T>(
    config: &EtcdConfig,
    what: &'static str,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, EtcdError> {
    let reason = match tokio::time::timeout(config.request_timeout, f).await {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {:?}", config.request_timeout),
    };
    Err(EtcdError::Unavailable {
        endpoints: config.endpoints.join(","),
        what,
        reason,
    })
}

/// Attempts of `attempt` until one succeeds or `config.request_timeout`
/// is over. The client spreads requests over the members, and one to a
/// member that just died fails at once: the next attempt goes to another,
/// so that one member down is not noticed. Only transport failures are
/// retried; etcd's own refusals are returned as they are. Every request
/// retried here is idempotent, or made so (`write_resources`' mark).
async fn retrying<T, Fut>(
    config: &EtcdConfig,
    what: &'static str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, EtcdError>
where
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    const PAUSE: Duration = Duration::from_millis(100);
    let deadline = tokio::time::Instant::now() + config.request_timeout;
    let endpoints = config.endpoints.join(",");
    let reason = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // An attempt forwarded to a leader that just died waits for etcd's
        // own timeout: give it a third of ours, then ask again (a new
        // leader is elected in about a second).
        let e = match tokio::time::timeout(left.min(config.request_timeout / 3), attempt()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => e,
            Err(_) if tokio::time::Instant::now() + PAUSE < deadline => continue,
            Err(_) => break format!("no answer within {:?}", config.request_timeout),
        };
        if !transient(&e) {
            return Err(EtcdError::Refused {
                endpoints,
                what,
                reason: e.to_string(),
            });
        }
        if tokio::time::Instant::now() + PAUSE >= deadline {
            break e.to_string();
        }
        tokio::time::sleep(PAUSE).await;
    };
    Err(EtcdError::Unavailable {
        endpoints,
        what,
        reason,
    })
}

/// Whether `e` says the member could not be reached (rather than that etcd
/// refused the request).
fn transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
        ),
        _ => false,
    }
}

/// What etcd says when a transaction holds more than its `--max-txn-ops`.
const TOO_MANY_OPS: &str = "too many operations in txn request";
/// What etcd (or its gRPC server, further over the limit) says when a
/// request is over its `--max-request-bytes`.
const TOO_LARGE: [&str; 2] = ["request is too large", "larger than max"];

/// 16 random hex digits.
fn random_mark() -> Vec<u8> {
    let mut b = [0u8; 8];
    // Without randomness the mark is zeros: a lost answer then reads as a
    // conflict, which is safe.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<String>()
        .into_bytes()
}

/// Queues instance records for the writer (`replica.rs`), which puts them
/// under the current lease; the catalog's writer thread never waits on etcd.
struct Instances(mpsc::UnboundedSender<InstanceWrite>);

impl InstanceStore for Instances {
    type Error = StoreError;

    fn put_instance(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        // Closed only once the replica stopped: nothing to keep any more.
        let _ = self.0.send(InstanceWrite::Put(record.clone()));
        Ok(())
    }

    fn remove_instance(&self, instance_id: &str) -> Result<(), StoreError> {
        let _ = self.0.send(InstanceWrite::Remove(instance_id.to_string()));
        Ok(())
    }
}

#[tonic::async_trait]
impl Store for EtcdStore {
    async fn load(&self) -> Result<Snapshot, StoreError> {
        let resp = self
            .get(
                "reading the store",
                self.keys.all(),
                Some(GetOptions::new().with_prefix()),
            )
            .await?;
        let mut snapshot = Snapshot::default();
        for item in resp.kvs() {
            let key = String::from_utf8_lossy(item.key());
            match self.keys.entry(item.key()) {
                Entry::Resource(_) => snapshot
                    .resources
                    .push(keys::decode_resource(&key, item.value()).map_err(EtcdError::from)?),
                Entry::Token(id) => snapshot.tokens.push((
                    id,
                    keys::decode_token(&key, item.value()).map_err(EtcdError::from)?,
                )),
                Entry::ResourcesRevision => {
                    self.seen.send_replace(item.mod_revision());
                }
                // Instances come from the watch (`replicate`).
                Entry::Instance(_) | Entry::Other => {}
            }
        }
        Ok(snapshot)
    }

    fn revision(&self) -> Revision {
        Revision(*self.seen.borrow())
    }

    async fn apply(&self, resources: &[Resource], seen: Revision) -> Result<(), StoreError> {
        // An apply is all or nothing, so it cannot be split over several
        // transactions: one too big for etcd is refused whole, and said so
        // before etcd has to.
        let n = resources.len();
        if n + 1 > self.config.max_txn_ops {
            return Err(EtcdError::TooManyOps {
                resources: n,
                limit: OpsLimit::Configured(self.config.max_txn_ops),
            }
            .into());
        }
        let (mut ops, mut bytes) = (Vec::with_capacity(n + 1), 0);
        for r in resources {
            let (key, value) = (self.keys.resource(r), keys::encode_resource(r));
            bytes += key.len() + value.len();
            ops.push(TxnOp::put(key, value, None));
        }
        self.write_resources(ops, seen).await.map_err(|e| {
            match &e {
                EtcdError::Refused { reason, .. } if reason.contains(TOO_MANY_OPS) => {
                    EtcdError::TooManyOps {
                        resources: n,
                        limit: OpsLimit::Etcd {
                            configured: self.config.max_txn_ops,
                        },
                    }
                }
                EtcdError::Refused { reason, .. }
                    if TOO_LARGE.iter().any(|t| reason.contains(t)) =>
                {
                    EtcdError::TooLarge {
                        resources: n,
                        bytes,
                    }
                }
                _ => e,
            }
            .into()
        })
    }

    async fn delete(&self, kind: Kind, name: &Name, seen: Revision) -> Result<bool, StoreError> {
        let key = self.keys.resource_of(kind, name);
        let existed = !self
            .get("reading a resource", key.clone(), None)
            .await?
            .kvs()
            .is_empty();
        self.write_resources(vec![TxnOp::delete(key, None)], seen)
            .await?;
        Ok(existed)
    }

    async fn put_token(&self, id: &str, record: &TokenRecord) -> Result<(), StoreError> {
        let value = keys::encode_token(record).map_err(EtcdError::from)?;
        let txn = Txn::new().and_then([TxnOp::put(self.keys.token(id), value, None)]);
        self.txn("storing a join token", txn).await?;
        Ok(())
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let key = self.keys.token(id);
        let resp = self.get("reading a join token", key.clone(), None).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        Ok(Some(
            keys::decode_token(&key, kv.value()).map_err(EtcdError::from)?,
        ))
    }

    async fn delete_tokens(&self, ids: &[String]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ops: Vec<TxnOp> = ids
            .iter()
            .map(|id| TxnOp::delete(self.keys.token(id), None))
            .collect();
        self.txn("deleting join tokens", Txn::new().and_then(ops))
            .await?;
        Ok(())
    }

    async fn admin_hash(&self, proposed: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let key = self.keys.admin_hash();
        // The first replica to start publishes its credential's hash; the
        // others adopt it.
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), proposed.clone(), None)]);
        if self
            .txn("storing the admin credential", txn)
            .await?
            .succeeded()
        {
            return Ok(proposed);
        }
        let resp = self.get("reading the admin credential", key, None).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| kv.value().to_vec())
            .unwrap_or(proposed))
    }

    fn instance_store(&self) -> Box<dyn InstanceStore<Error = StoreError>> {
        Box::new(Instances(self.writes.clone()))
    }

    fn replicate(self: Arc<Self>, r: Replication) -> BoxFuture<'static, ()> {
        let pending = self.pending.lock().ok().and_then(|mut p| p.take());
        Box::pin(async move {
            let Some(pending) = pending else {
                tracing::error!("the etcd store replicates once");
                return;
            };
            replica::run(
                replica::Shared {
                    client: self.client.clone(),
                    config: self.config.clone(),
                    keys: self.keys.clone(),
                    seen: self.seen.clone(),
                    lease: self.lease.clone(),
                    writes: self.writes.clone(),
                },
                pending,
                r,
            )
            .await;
        })
    }

    fn is_shared(&self) -> bool {
        true
    }
}

/// Leases are put with every instance.
fn with_lease(lease: i64) -> Option<PutOptions> {
    Some(PutOptions::new().with_lease(lease))
}
