//! The embedded store (redb, one file in `--data-dir`): applied resources,
//! join tokens and the instance catalog. Resources must survive a restart; instances are kept
//! too, so that a restarted control plane serves the catalog it had instead of
//! an empty one while sidecars reconnect.
//!
//! Records are the API's protobuf messages (`Resource`, `InstanceInfo`),
//! converted to and from domain types by `api::convert` right here at the
//! store's boundary. redb calls block (a commit fsyncs), so callers run them
//! on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use weft_proto::v1 as pb;

use crate::api::convert::{record_from_proto, resources_from_proto};
use crate::auth::TokenRecord;
use crate::catalog::{InstanceRecord, InstanceStore};
use crate::resource::{Kind, Name, Resource};

use super::{Replication, Revision, Snapshot, Store, StoreError};

const RESOURCES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("resources");
const INSTANCES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("instances");
const TOKENS: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("tokens");

/// The file name inside `--data-dir`.
pub const FILE_NAME: &str = "weft.redb";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("cannot create data directory {path}: {error}")]
    CreateDir {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot open store {path}: {error}")]
    Open {
        path: PathBuf,
        error: redb::DatabaseError,
    },
    #[error("store: {0}")]
    Db(#[from] redb::Error),
    #[error("store holds a record that does not decode ({key}): {reason}")]
    Corrupt { key: String, reason: String },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for EmbeddedError {
            fn from(e: $t) -> Self {
                EmbeddedError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, EmbeddedError> {
        std::fs::create_dir_all(dir).map_err(|error| EmbeddedError::CreateDir {
            path: dir.to_owned(),
            error,
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|error| EmbeddedError::Open { path, error })?;
        let tx = db.begin_write()?;
        tx.open_table(RESOURCES)?;
        tx.open_table(INSTANCES)?;
        tx.open_table(TOKENS)?;
        tx.commit()?;
        Ok(EmbeddedStore { db: Arc::new(db) })
    }

    pub fn load_resources(&self) -> Result<Vec<Resource>, EmbeddedError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(RESOURCES)?;
        let mut protos = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let p = pb::Resource::decode(v.value()).map_err(|e| EmbeddedError::Corrupt {
                key: k.value().to_string(),
                reason: e.to_string(),
            })?;
            protos.push(p);
        }
        resources_from_proto(&protos).map_err(|e| EmbeddedError::Corrupt {
            key: "resources".into(),
            reason: e.to_string(),
        })
    }

    /// Stores every resource in one transaction: all or nothing.
    pub fn apply(&self, resources: &[Resource]) -> Result<(), EmbeddedError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(RESOURCES)?;
            for r in resources {
                let bytes = pb::Resource::from(r).encode_to_vec();
                table.insert(r.key().as_str(), bytes.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Deletes one resource; `false` when there was none.
    pub fn delete(&self, kind: Kind, name: &Name) -> Result<bool, EmbeddedError> {
        let tx = self.db.begin_write()?;
        let existed = {
            let mut table = tx.open_table(RESOURCES)?;
            let key = format!("{}/{}", kind.as_str(), name);
            table.remove(key.as_str())?.is_some()
        };
        tx.commit()?;
        Ok(existed)
    }

    /// The stored instance records. One that decodes but no longer
    /// validates (written by another version, say) is dropped with a
    /// warning rather than failing the start.
    pub fn load_instances(&self) -> Result<Vec<InstanceRecord>, EmbeddedError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(INSTANCES)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let info = pb::InstanceInfo::decode(v.value()).map_err(|e| EmbeddedError::Corrupt {
                key: k.value().to_string(),
                reason: e.to_string(),
            })?;
            match record_from_proto(&info) {
                Ok(record) => out.push(record),
                Err(e) => {
                    tracing::warn!(instance = %info.instance_id, error = %e, "dropping a stored instance")
                }
            }
        }
        Ok(out)
    }

    pub fn put_instance(&self, record: &InstanceRecord) -> Result<(), EmbeddedError> {
        let bytes = pb::InstanceInfo::from(record).encode_to_vec();
        let tx = self.db.begin_write()?;
        tx.open_table(INSTANCES)?
            .insert(record.instance_id.as_str(), bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    pub fn remove_instance(&self, instance_id: &str) -> Result<(), EmbeddedError> {
        let tx = self.db.begin_write()?;
        tx.open_table(INSTANCES)?.remove(instance_id)?;
        tx.commit()?;
        Ok(())
    }
}

/// The catalog's writer thread keeps instance records here.
struct Instances(EmbeddedStore);

impl InstanceStore for Instances {
    type Error = StoreError;

    fn put_instance(&self, record: &InstanceRecord) -> Result<(), StoreError> {
        Ok(self.0.put_instance(record)?)
    }

    fn remove_instance(&self, instance_id: &str) -> Result<(), StoreError> {
        Ok(self.0.remove_instance(instance_id)?)
    }
}

impl EmbeddedStore {
    /// Runs a redb call (a commit fsyncs) on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&EmbeddedStore) -> Result<T, EmbeddedError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let me = self.clone();
        Ok(tokio::task::spawn_blocking(move || f(&me)).await??)
    }
}

/// One replica, one writer: the admin service serializes applies, so the
/// revision an apply was validated against cannot have moved.
#[tonic::async_trait]
impl Store for EmbeddedStore {
    async fn load(&self) -> Result<Snapshot, StoreError> {
        self.blocking(|s| {
            Ok(Snapshot {
                resources: s.load_resources()?,
                tokens: s.load_tokens()?,
                instances: s.load_instances()?,
            })
        })
        .await
    }

    fn revision(&self) -> Revision {
        Revision::default()
    }

    async fn apply(&self, resources: &[Resource], _seen: Revision) -> Result<(), StoreError> {
        let resources = resources.to_vec();
        self.blocking(move |s| s.apply(&resources)).await
    }

    async fn delete(&self, kind: Kind, name: &Name, _seen: Revision) -> Result<bool, StoreError> {
        let name = name.clone();
        self.blocking(move |s| s.delete(kind, &name)).await
    }

    async fn put_token(&self, id: &str, record: &TokenRecord) -> Result<(), StoreError> {
        let (id, record) = (id.to_string(), record.clone());
        self.blocking(move |s| s.put_token(&id, &record)).await
    }

    async fn token(&self, _id: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(None)
    }

    async fn delete_tokens(&self, ids: &[String]) -> Result<(), StoreError> {
        let ids = ids.to_vec();
        self.blocking(move |s| s.delete_tokens(&ids)).await
    }

    async fn admin_hash(&self, proposed: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        // The credential file in the data directory is the record.
        Ok(proposed)
    }

    fn instance_store(&self) -> Box<dyn InstanceStore<Error = StoreError>> {
        Box::new(Instances(self.clone()))
    }

    fn replicate(self: Arc<Self>, _r: Replication) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }

    fn is_shared(&self) -> bool {
        false
    }
}

impl EmbeddedStore {
    pub fn put_token(&self, id: &str, record: &TokenRecord) -> Result<(), EmbeddedError> {
        let bytes = serde_json::to_vec(record).map_err(|e| EmbeddedError::Corrupt {
            key: id.to_string(),
            reason: e.to_string(),
        })?;
        let tx = self.db.begin_write()?;
        tx.open_table(TOKENS)?.insert(id, bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    /// Forgets tokens; unknown ids are no error.
    pub fn delete_tokens(&self, ids: &[String]) -> Result<(), EmbeddedError> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(TOKENS)?;
            for id in ids {
                table.remove(id.as_str())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn load_tokens(&self) -> Result<Vec<(String, TokenRecord)>, EmbeddedError> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(TOKENS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let rec = serde_json::from_slice(v.value()).map_err(|e| EmbeddedError::Corrupt {
                key: k.value().to_string(),
                reason: e.to_string(),
            })?;
            out.push((k.value().to_string(), rec));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::parse_documents;

    #[test]
    fn deleted_tokens_stay_deleted_after_reopen() -> anyhow::Result<()> {
        use crate::auth::TokenRecord;
        let dir = tempfile::tempdir()?;
        {
            let store = EmbeddedStore::open(dir.path())?;
            let rec = TokenRecord::new("users", "s", std::time::Duration::from_secs(60));
            store.put_token("a", &rec)?;
            store.put_token("b", &rec)?;
            store.delete_tokens(&["a".into(), "unknown".into()])?;
        }
        let store = EmbeddedStore::open(dir.path())?;
        let ids: Vec<String> = store.load_tokens()?.into_iter().map(|t| t.0).collect();
        assert_eq!(ids, ["b"]);
        Ok(())
    }

    #[test]
    fn resources_survive_reopen() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let rs = parse_documents(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {protocol: http}\n",
        )?;
        {
            let store = EmbeddedStore::open(dir.path())?;
            store.apply(&rs)?;
            store.apply(&rs)?;
            store.put_instance(&InstanceRecord {
                service: Name::parse("a").map_err(anyhow::Error::msg)?,
                instance_id: "a-1".into(),
                address: "127.0.0.1:1".into(),
                protocol: None,
                labels: Default::default(),
                health: crate::catalog::Health::Healthy,
                health_detail: "ok".into(),
                no_app: false,
            })?;
        }
        let store = EmbeddedStore::open(dir.path())?;
        assert_eq!(store.load_resources()?, rs);
        let instances = store.load_instances()?;
        assert_eq!(instances.len(), 1);
        assert_eq!(instances[0].health_detail, "ok");
        store.remove_instance("a-1")?;
        assert!(store.load_instances()?.is_empty());
        assert!(store.delete(
            Kind::Service,
            &Name::parse("a").map_err(anyhow::Error::msg)?
        )?);
        assert!(store.load_resources()?.is_empty());
        Ok(())
    }

    #[test]
    fn routes_survive_reopen_and_are_deleted_by_kind() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let route = |kind: &str| {
            format!(
                "apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: r}}\nspec:\n  parentRefs: [{{name: a}}]\n  rules:\n    - filters:\n        - {{type: RequestMirror, requestMirror: {{backendRef: {{name: b}}}}}}\n        - {{type: RequestHeaderModifier, requestHeaderModifier: {{add: [{{name: x-a, value: \"1\"}}]}}}}\n      backendRefs: [{{name: a, weight: 2}}, {{name: b}}]\n"
            )
        };
        let rs = parse_documents(&format!(
            "{}---\n{}",
            route("HTTPRoute"),
            route("GRPCRoute")
        ))?;
        {
            let store = EmbeddedStore::open(dir.path())?;
            store.apply(&rs)?;
        }
        let store = EmbeddedStore::open(dir.path())?;
        let mut back = store.load_resources()?;
        back.sort_by_key(|r| std::cmp::Reverse(r.key()));
        assert_eq!(back, rs, "both kinds, filters in their written order");
        let name = Name::parse("r").map_err(anyhow::Error::msg)?;
        assert!(store.delete(Kind::GrpcRoute, &name)?);
        assert_eq!(store.load_resources()?, rs[..1]);
        Ok(())
    }
}
