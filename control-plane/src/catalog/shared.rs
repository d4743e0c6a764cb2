//! What a shared store (etcd) feeds into the catalog: resources applied on
//! other replicas, and instances whose sidecars are connected to other
//! replicas. The store's watch calls these; after it lost the store and
//! listed everything again, the `sync_*` calls make the catalog equal to
//! the list.

use std::collections::BTreeSet;

use super::Catalog;
use super::instances::InstanceRecord;
use crate::resource::{Kind, Name, Resource};

impl Catalog {
    /// Another replica holds `record` (its sidecar registered there).
    pub fn held_elsewhere(&self, record: InstanceRecord) {
        let mut parts = self.lock();
        let touched = parts.instances.held_elsewhere(record);
        if !touched.is_empty() {
            self.changed(parts, &touched);
        }
    }

    /// The store no longer holds instance `id` for another replica.
    /// Returns this replica's own record of it, if it has one (connected
    /// here, or in its grace period): the caller keeps that in the store.
    pub fn gone_elsewhere(&self, id: &str) -> Option<InstanceRecord> {
        let mut parts = self.lock();
        match parts.instances.gone_elsewhere(id) {
            Some(service) => {
                tracing::info!(instance = %id, %service, "instance removed: the replica holding it is gone");
                self.changed(parts, std::slice::from_ref(&service));
                None
            }
            None => parts
                .instances
                .get(id)
                .filter(|i| i.stream.is_some() || i.expires_at.is_some())
                .map(|i| i.record.clone()),
        }
    }

    /// The instances this replica holds (connected here, or waiting out
    /// their grace period here): what it keeps in the store.
    pub fn own_instances(&self) -> Vec<InstanceRecord> {
        self.lock().instances.own()
    }

    /// Makes the instances held elsewhere equal to `records` (the store's
    /// list, without this replica's own).
    pub fn sync_elsewhere(&self, records: Vec<InstanceRecord>) {
        let listed: BTreeSet<String> = records.iter().map(|r| r.instance_id.clone()).collect();
        let stale: Vec<String> = self
            .lock()
            .instances
            .only_elsewhere()
            .into_iter()
            .filter(|id| !listed.contains(id))
            .collect();
        for id in stale {
            self.gone_elsewhere(&id);
        }
        for r in records {
            self.held_elsewhere(r);
        }
    }

    /// Makes the applied resources equal to `resources` (the store's list).
    pub fn sync_resources(&self, resources: &[Resource]) {
        let listed: BTreeSet<(Kind, &Name)> =
            resources.iter().map(|r| (r.kind(), r.name())).collect();
        let gone: Vec<(Kind, Name)> = self
            .resources()
            .iter()
            .filter(|r| !listed.contains(&(r.kind(), r.name())))
            .map(|r| (r.kind(), r.name().clone()))
            .collect();
        for (kind, name) in gone {
            self.remove(kind, &name);
        }
        self.apply(resources);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::catalog::{CatalogConfig, Health, Registration, SidecarStream};
    use crate::resource::parse_documents;

    fn record(id: &str, port: u16) -> InstanceRecord {
        InstanceRecord {
            service: Name::parse("users").expect("a name"),
            instance_id: id.into(),
            address: format!("127.0.0.1:{port}"),
            protocol: None,
            labels: Default::default(),
            health: Health::Healthy,
            health_detail: String::new(),
            no_app: false,
        }
    }

    fn connect(c: &Arc<Catalog>, id: &str, port: u16) -> SidecarStream {
        let reg = Registration {
            service: Name::parse("users").expect("a name"),
            instance_id: id.into(),
            address: format!("127.0.0.1:{port}"),
            protocol: None,
            labels: Default::default(),
            health: Health::Healthy,
            sidecar_version: String::new(),
            no_app: false,
        };
        c.connect(reg, BTreeSet::new(), 0)
    }

    fn catalog() -> Arc<Catalog> {
        Catalog::in_memory(CatalogConfig {
            instance_grace: Duration::from_secs(10),
            startup_grace: Duration::from_secs(30),
        })
    }

    fn ids(c: &Catalog) -> Vec<(String, bool)> {
        c.instances()
            .into_iter()
            .map(|i| (i.record.instance_id, i.connected))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_held_elsewhere_stays_until_the_store_drops_it() {
        let c = catalog();
        c.held_elsewhere(record("u-1", 1));
        assert_eq!(ids(&c), [("u-1".to_string(), true)], "connected elsewhere");
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(c.reap(Instant::now()), 0, "no grace timer here");
        assert!(c.own_instances().is_empty());
        assert!(c.gone_elsewhere("u-1").is_none());
        assert!(ids(&c).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sidecar_that_moved_away_is_neither_reaped_nor_removed_twice() {
        let c = catalog();
        let stream = connect(&c, "u-1", 1);
        // It registered on another replica while this stream lingers.
        c.held_elsewhere(record("u-1", 2));
        assert_eq!(c.own_instances().len(), 1, "this stream still holds it");
        stream.close(false);
        // Its stream here ended: held elsewhere, no grace period.
        assert!(c.own_instances().is_empty());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(c.reap(Instant::now()), 0);
        assert_eq!(ids(&c), [("u-1".to_string(), true)]);
        c.held_elsewhere(record("u-1", 2));
        assert_eq!(c.instances()[0].record.address, "127.0.0.1:2");
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_held_here_survives_the_other_replicas_delete() {
        let c = catalog();
        let _stream = connect(&c, "u-1", 1);
        c.held_elsewhere(record("u-1", 2));
        // The other replica's lease ended: this replica keeps it, and
        // must put it back in the store.
        let own = c.gone_elsewhere("u-1").expect("held here");
        assert_eq!(own.address, "127.0.0.1:1");
        assert_eq!(ids(&c), [("u-1".to_string(), true)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_re_list_removes_what_the_store_no_longer_holds() {
        let c = catalog();
        let _here = connect(&c, "u-1", 1);
        c.held_elsewhere(record("u-2", 2));
        c.held_elsewhere(record("u-3", 3));
        c.sync_elsewhere(vec![record("u-3", 4)]);
        let now: Vec<String> = ids(&c).into_iter().map(|x| x.0).collect();
        assert_eq!(now, ["u-1", "u-3"], "u-2 gone, this replica's own kept");
        assert_eq!(c.instances()[1].record.address, "127.0.0.1:4");

        let rs = parse_documents(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {protocol: http}\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: b}\nspec: {protocol: http}\n",
        )
        .expect("valid");
        c.apply(&rs);
        c.sync_resources(&rs[1..]);
        assert_eq!(c.resources(), rs[1..]);
    }
}
