//! Where the control plane keeps what must outlive it: applied resources,
//! join tokens (hashed), instance registrations and the admin credential's
//! hash. Two stores sit behind one object-safe [`Store`] trait, boxed where
//! the server picks one, so that nothing else is generic over it:
//!
//! - `embedded` (the default): one redb file in `--data-dir`, one replica;
//! - `etcd` (`--store etcd://…`): several replicas share one etcd cluster;
//!   each watches it and feeds its own catalog ([`Store::replicate`]), holds
//!   its instances under a lease of its own, and one of them, elected
//!   through etcd, runs the background sweeps.

mod embedded;
mod etcd;
mod flags;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::auth::{TokenBook, TokenRecord};
use crate::catalog::{Catalog, InstanceRecord, InstanceStore};
use crate::resource::{Kind, Name, Resource};

pub use embedded::{EmbeddedError, EmbeddedStore, FILE_NAME};
pub use etcd::{
    DEFAULT_MAX_TXN_OPS, EtcdConfig, EtcdError, EtcdStore, EtcdTls, KEY_PREFIX, OpsLimit,
};
pub use flags::StoreArgs;

/// Which store a control plane runs on (`--store`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// redb in `--data-dir`.
    #[default]
    Embedded,
    Etcd(EtcdConfig),
}

impl StoreConfig {
    /// Parses `--store`: `embedded`, or `etcd://host:port[,host:port…]`.
    /// TLS and timings are set on the [`EtcdConfig`] afterwards.
    pub fn parse(text: &str) -> Result<Self, StoreConfigError> {
        if text == "embedded" {
            return Ok(StoreConfig::Embedded);
        }
        let Some(hosts) = text.strip_prefix("etcd://") else {
            return Err(StoreConfigError::Scheme(text.to_string()));
        };
        let endpoints: Vec<String> = hosts.split(',').map(str::trim).map(String::from).collect();
        for e in &endpoints {
            let ok = e
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(StoreConfigError::Endpoint {
                    store: text.to_string(),
                    endpoint: e.clone(),
                });
            }
        }
        Ok(StoreConfig::Etcd(EtcdConfig::new(endpoints)))
    }
}

/// A `--store` that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreConfigError {
    #[error("--store {0:?}: expected `embedded` or `etcd://host:port[,host:port…]`")]
    Scheme(String),
    #[error("--store {store:?}: {endpoint:?} is not host:port (a port from 1 to 65535)")]
    Endpoint { store: String, endpoint: String },
    #[error(
        "--store etcd needs --ca-cert and --ca-key: every replica must sign with the same CA (mount the same files, or the same Secret, on each)"
    )]
    SharedCa,
    #[error("--etcd-lease-ttl must be at least 1s (etcd counts leases in whole seconds)")]
    LeaseTtl,
    #[error("--etcd-max-txn-ops must be at least 2 (an apply is its resources and one more put)")]
    MaxTxnOps,
    #[error("--etcd-ca/--etcd-cert/--etcd-key are for --store etcd://…")]
    EtcdFlags,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("store task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("store holds a record that does not decode ({key}): {reason}")]
    Corrupt { key: String, reason: String },
}

impl StoreError {
    /// The store cannot be reached now (etcd down or without quorum):
    /// retryable, and nobody's fault in the request.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Etcd(e) if e.is_unavailable())
    }

    /// Another replica changed resources after this one validated an
    /// apply against them: retryable, the request itself was fine.
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Etcd(EtcdError::Conflict))
    }

    /// The change is more than the store takes at once: the request has
    /// to be made smaller (or the store's limit raised).
    pub fn is_too_big(&self) -> bool {
        matches!(self, StoreError::Etcd(e) if e.is_too_big())
    }
}

/// What the store holds, read at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub resources: Vec<Resource>,
    pub tokens: Vec<(String, TokenRecord)>,
    /// The embedded store's instances: restored and kept for the startup
    /// grace. Empty on etcd, where [`Store::replicate`] feeds them.
    pub instances: Vec<InstanceRecord>,
}

/// The version of the resources an apply was validated against: the
/// store refuses the apply when they changed since (another replica
/// applied in between). Always accepted by the embedded store, whose only
/// writer serializes applies itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Revision(pub i64);

/// What runs beside the server on a replicated store, and what it needs.
pub struct Replication {
    pub catalog: Arc<Catalog>,
    pub tokens: Arc<TokenBook>,
    /// 1 while this replica is the elected one (runs the sweeps).
    pub leader: prometheus_client::metrics::gauge::Gauge,
    /// 1 while the store is reachable and this replica is caught up.
    pub connected: prometheus_client::metrics::gauge::Gauge,
    /// Set once this replica has listed the store (and after each catch-up).
    pub caught_up: tokio::sync::watch::Sender<bool>,
    pub shutdown: futures_util::future::Shared<BoxFuture<'static, ()>>,
}

/// The operations the control plane needs from a store. Async (the etcd
/// store is a network client; the embedded one runs redb on the blocking
/// pool) and object-safe, so that the server holds an `Arc<dyn Store>`.
#[tonic::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Everything stored, to start from.
    async fn load(&self) -> Result<Snapshot, StoreError>;

    /// The resources' revision now: read it *before* the resources an
    /// apply is validated against, and hand it to [`apply`](Self::apply).
    fn revision(&self) -> Revision;

    /// Stores every resource, all or nothing, if the resources are still at
    /// `seen`. A shared store returns once the change reached the catalog
    /// (through the same watch as on every replica); the embedded store
    /// leaves that to the caller.
    async fn apply(&self, resources: &[Resource], seen: Revision) -> Result<(), StoreError>;

    /// Deletes one resource if the resources are still at `seen`; `false`
    /// when there was none.
    async fn delete(&self, kind: Kind, name: &Name, seen: Revision) -> Result<bool, StoreError>;

    async fn put_token(&self, id: &str, record: &TokenRecord) -> Result<(), StoreError>;

    /// One join token as the store holds it now: for a replica whose copy
    /// (fed by the watch) may not have the token another replica minted a
    /// moment ago. The embedded store's book is the record: `None`.
    async fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;

    /// Forgets tokens; unknown ids are no error.
    async fn delete_tokens(&self, ids: &[String]) -> Result<(), StoreError>;

    /// The admin credential's hash every replica checks: `proposed` (this
    /// replica's) when the store had none or holds the same, else the one
    /// the store holds (another replica created it first).
    async fn admin_hash(&self, proposed: Vec<u8>) -> Result<Vec<u8>, StoreError>;

    /// Where the catalog's writer keeps instance records.
    fn instance_store(&self) -> Box<dyn InstanceStore<Error = StoreError>>;

    /// Background work until shutdown: on etcd, the lease, the watch that
    /// feeds `r.catalog` and `r.tokens`, and the election. Nothing to do
    /// for the embedded store.
    fn replicate(self: Arc<Self>, r: Replication) -> BoxFuture<'static, ()>;

    /// Whether resources and instances come from other replicas too (the
    /// catalog then starts empty of instances and waits for no restored ones).
    fn is_shared(&self) -> bool;
}

/// Opens the store `config` names (the embedded one in `data_dir`).
pub async fn open(config: &StoreConfig, data_dir: &Path) -> Result<Arc<dyn Store>, StoreError> {
    match config {
        StoreConfig::Embedded => {
            let dir: PathBuf = data_dir.to_owned();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(&dir)).await??;
            Ok(Arc::new(store))
        }
        StoreConfig::Etcd(c) => Ok(Arc::new(EtcdStore::connect(c.clone()).await?)),
    }
}

/// How long an etcd request may take before the store counts as
/// unreachable (a write is then refused rather than left hanging).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_flags_parse_or_say_what_is_wrong() {
        assert_eq!(StoreConfig::parse("embedded"), Ok(StoreConfig::Embedded));
        let StoreConfig::Etcd(c) =
            StoreConfig::parse("etcd://127.0.0.1:2379,etcd-1:2379").expect("valid")
        else {
            panic!("not etcd");
        };
        assert_eq!(c.endpoints, ["127.0.0.1:2379", "etcd-1:2379"]);
        assert!(matches!(
            StoreConfig::parse("redis://x:1"),
            Err(StoreConfigError::Scheme(_))
        ));
        assert!(matches!(
            StoreConfig::parse("etcd://a:1,b"),
            Err(StoreConfigError::Endpoint { endpoint, .. }) if endpoint == "b"
        ));
        assert!(StoreConfig::parse("etcd://a:0").is_err());
    }
}
