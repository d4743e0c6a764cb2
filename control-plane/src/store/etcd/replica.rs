//! What one replica runs beside its server on etcd, until shutdown:
//!
//! - the **lease**, granted at start and kept alive (a third of its TTL
//!   apart); when etcd says it expired (etcd was out of reach for longer
//!   than the TTL), a new one is granted and this replica's instances are
//!   put again under it;
//! - the **instance writer**, which puts the catalog's records under the
//!   lease in the order the catalog changed, and removes one only while the
//!   key is still bound to this lease (a sidecar that moved to another
//!   replica belongs to that replica's lease);
//! - the **watch**: list everything, feed the catalog and the token book,
//!   then follow the prefix from the listed revision; on any error list
//!   again (catching up on what was missed) and follow again;
//! - the **election** (etcd's election API, campaigning with the lease):
//!   the elected replica runs the sweeps. When it dies its lease expires,
//!   its campaign key goes with it, and the next replica in line is
//!   elected.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime};

use etcd_client::{Client, Compare, CompareOp, EventType, GetOptions, Txn, TxnOp, WatchOptions};
use futures_util::future::{BoxFuture, Shared as SharedFuture};
use tokio::sync::{mpsc, watch};

use super::keys::{self, Entry, Keys};
use super::{EtcdConfig, EtcdError, InstanceWrite, retrying, timed, with_lease};
use crate::resource::Resource;
use crate::store::Replication;

type Shutdown = SharedFuture<BoxFuture<'static, ()>>;

/// What the store shares with its background work.
pub(super) struct Shared {
    pub client: Client,
    pub config: EtcdConfig,
    pub keys: Keys,
    pub seen: watch::Sender<i64>,
    pub lease: Arc<AtomicI64>,
    pub writes: mpsc::UnboundedSender<InstanceWrite>,
}

pub(super) async fn run(
    s: Shared,
    pending: mpsc::UnboundedReceiver<InstanceWrite>,
    r: Replication,
) {
    let (lease_tx, lease_rx) = watch::channel(0i64);
    let (listed_tx, listed_rx) = mpsc::unbounded_channel();
    tokio::join!(
        keep_lease(&s, lease_tx, r.shutdown.clone()),
        write_instances(&s, pending, lease_rx.clone(), listed_rx, &r),
        follow_store(&s, &r, listed_tx),
        elect(&s, &r, lease_rx),
    );
    r.connected.set(0);
    r.leader.set(0);
}

/// Sleeps `d`; `true` when shutdown came first.
async fn pause(d: Duration, shutdown: &Shutdown) -> bool {
    tokio::select! {
        _ = shutdown.clone() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// 100 ms doubling up to 2 s: etcd coming back is noticed quickly, and a
/// replica cut off from it does not hammer it.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(100))
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
        d
    }
}

// ----- the lease --------------------------------------------------------

async fn keep_lease(s: &Shared, tx: watch::Sender<i64>, shutdown: Shutdown) {
    let ttl = s.config.lease_ttl.as_secs().max(1) as i64;
    let mut backoff = Backoff::new();
    loop {
        let mut leases = s.client.lease_client();
        let id = match timed(&s.config, "granting a lease", leases.grant(ttl, None)).await {
            Ok(g) => g.id(),
            Err(e) => {
                tracing::warn!(error = %e, "no lease yet");
                if pause(backoff.next(), &shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff = Backoff::new();
        s.lease.store(id, Ordering::Release);
        tx.send_replace(id);
        tracing::info!(
            lease = format!("{id:x}"),
            ttl_s = ttl,
            "holding an etcd lease"
        );
        if !keep_alive(s, id, &shutdown).await {
            // Not revoked: the sidecars connected here get the lease's TTL
            // to move to another replica before their instances expire.
            return;
        }
        tracing::warn!(
            lease = format!("{id:x}"),
            "the etcd lease expired; granting a new one"
        );
    }
}

/// Keeps lease `id` alive; `true` when it expired, `false` on shutdown.
async fn keep_alive(s: &Shared, id: i64, shutdown: &Shutdown) -> bool {
    let period = (s.config.lease_ttl / 3).max(Duration::from_millis(100));
    loop {
        let mut leases = s.client.lease_client();
        match timed(&s.config, "keeping the lease alive", leases.keep_alive(id)).await {
            Ok((mut keeper, mut answers)) => loop {
                let once = async {
                    keeper.keep_alive().await?;
                    answers.message().await
                };
                match timed(&s.config, "keeping the lease alive", once).await {
                    Ok(Some(a)) if a.ttl() > 0 => {}
                    Ok(Some(_)) => return true,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "lease keep-alive failed");
                        break;
                    }
                }
                if pause(period, shutdown).await {
                    return false;
                }
            },
            Err(e) => tracing::warn!(error = %e, "lease keep-alive failed"),
        }
        if pause(period, shutdown).await {
            return false;
        }
    }
}

// ----- the instance writer ----------------------------------------------

async fn write_instances(
    s: &Shared,
    mut pending: mpsc::UnboundedReceiver<InstanceWrite>,
    mut lease: watch::Receiver<i64>,
    mut listed: mpsc::UnboundedReceiver<Vec<(String, i64)>>,
    r: &Replication,
) {
    loop {
        tokio::select! {
            _ = r.shutdown.clone() => return,
            w = pending.recv() => match w {
                Some(w) => {
                    // What queued meanwhile goes with it: 10,000 sidecars
                    // connecting are 100 transactions, not 10,000 puts in a
                    // row (an instance joining after them waited 18 s).
                    let mut batch = vec![w];
                    while batch.len() < MAX_BATCH {
                        match pending.try_recv() {
                            Ok(w) => batch.push(w),
                            Err(_) => break,
                        }
                    }
                    write_batch(s, batch).await;
                }
                None => return,
            },
            changed = lease.changed() => {
                if changed.is_err() {
                    return;
                }
                // A new lease: every instance held here goes under it.
                for record in r.catalog.own_instances() {
                    write_one(s, InstanceWrite::Put(record)).await;
                }
            }
            Some(keys) = listed.recv() => reconcile(s, r, keys).await,
        }
    }
}

/// After a fresh list: puts every instance held here (writes may have
/// failed while etcd was away), and removes the keys under this lease
/// whose instances are no longer held here.
async fn reconcile(s: &Shared, r: &Replication, listed: Vec<(String, i64)>) {
    let lease = s.lease.load(Ordering::Acquire);
    let own = r.catalog.own_instances();
    let ids: BTreeSet<&str> = own.iter().map(|r| r.instance_id.as_str()).collect();
    for (id, l) in listed {
        if l == lease && !ids.contains(id.as_str()) {
            write_one(s, InstanceWrite::Remove(id)).await;
        }
    }
    for record in own {
        write_one(s, InstanceWrite::Put(record)).await;
    }
}

/// Puts per transaction: under etcd's default `--max-txn-ops` (128).
const MAX_BATCH: usize = 100;

/// Writes in their order: runs of puts of distinct keys as one transaction
/// each, removes one at a time (each compares its key's lease).
async fn write_batch(s: &Shared, batch: Vec<InstanceWrite>) {
    let lease = s.lease.load(Ordering::Acquire);
    if lease == 0 {
        return; // written when the first lease is granted
    }
    let mut puts: Vec<TxnOp> = Vec::new();
    let mut keys_in: BTreeSet<String> = BTreeSet::new();
    for w in batch {
        let key = match &w {
            InstanceWrite::Put(record) => s.keys.instance(&record.instance_id),
            InstanceWrite::Remove(_) => String::new(),
        };
        let flush = matches!(w, InstanceWrite::Remove(_)) || keys_in.contains(&key);
        if flush && !puts.is_empty() {
            put_all(s, std::mem::take(&mut puts)).await;
            keys_in.clear();
        }
        match w {
            InstanceWrite::Put(record) => {
                let value = keys::encode_instance(&record);
                puts.push(TxnOp::put(key.clone(), value, with_lease(lease)));
                keys_in.insert(key);
            }
            remove => write_one(s, remove).await,
        }
    }
    if !puts.is_empty() {
        put_all(s, puts).await;
    }
}

async fn put_all(s: &Shared, ops: Vec<TxnOp>) {
    let n = ops.len();
    let txn = Txn::new().and_then(ops);
    let r = retrying(&s.config, "registering instances", || {
        let (mut kv, txn) = (s.client.kv_client(), txn.clone());
        async move { kv.txn(txn).await }
    })
    .await;
    if let Err(e) = r {
        // Put again after the next list, once etcd is back.
        tracing::warn!(error = %e, instances = n, "could not write instances to etcd");
    }
}

async fn write_one(s: &Shared, w: InstanceWrite) {
    let lease = s.lease.load(Ordering::Acquire);
    if lease == 0 {
        // Written when the first lease is granted.
        return;
    }
    let r = match &w {
        InstanceWrite::Put(record) => {
            let (key, value) = (
                s.keys.instance(&record.instance_id),
                keys::encode_instance(record),
            );
            retrying(&s.config, "registering an instance", || {
                let (mut kv, key, value) = (s.client.kv_client(), key.clone(), value.clone());
                async move { kv.put(key, value, with_lease(lease)).await }
            })
            .await
            .map(drop)
        }
        InstanceWrite::Remove(id) => {
            let key = s.keys.instance(id);
            let txn = Txn::new()
                .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
                .and_then([TxnOp::delete(key, None)]);
            retrying(&s.config, "removing an instance", || {
                let (mut kv, txn) = (s.client.kv_client(), txn.clone());
                async move { kv.txn(txn).await }
            })
            .await
            .map(drop)
        }
    };
    if let Err(e) = r {
        // Put again after the next list, once etcd is back.
        tracing::warn!(error = %e, "could not write an instance to etcd");
    }
}

// ----- the watch ----------------------------------------------------------

async fn follow_store(
    s: &Shared,
    r: &Replication,
    listed: mpsc::UnboundedSender<Vec<(String, i64)>>,
) {
    let mut backoff = Backoff::new();
    loop {
        let result = match list(s, r, &listed).await {
            Ok(revision) => {
                r.connected.set(1);
                backoff = Backoff::new();
                follow(s, r, revision + 1).await
            }
            Err(e) => Err(e),
        };
        r.connected.set(0);
        match result {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "lost etcd; serving what this replica has, and catching up when it is back")
            }
        }
        if pause(backoff.next(), &r.shutdown).await {
            return;
        }
    }
}

/// Lists everything and makes the catalog and the token book equal to it;
/// the revision listed.
async fn list(
    s: &Shared,
    r: &Replication,
    listed: &mpsc::UnboundedSender<Vec<(String, i64)>>,
) -> Result<i64, EtcdError> {
    let resp = retrying(&s.config, "listing the store", || {
        let mut kv = s.client.kv_client();
        let key = s.keys.all();
        async move { kv.get(key, Some(GetOptions::new().with_prefix())).await }
    })
    .await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let lease = s.lease.load(Ordering::Acquire);
    let (mut resources, mut tokens, mut elsewhere, mut instances) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut resources_revision = 0;
    for item in resp.kvs() {
        let key = String::from_utf8_lossy(item.key());
        let decoded = match s.keys.entry(item.key()) {
            Entry::Resource(_) => {
                keys::decode_resource(&key, item.value()).map(|x| resources.push(x))
            }
            Entry::Token(id) => {
                keys::decode_token(&key, item.value()).map(|t| tokens.push((id, t)))
            }
            Entry::ResourcesRevision => {
                resources_revision = item.mod_revision();
                Ok(())
            }
            Entry::Instance(id) => {
                instances.push((id, item.lease()));
                if item.lease() == lease {
                    Ok(())
                } else {
                    keys::decode_instance(&key, item.value()).map(|x| elsewhere.push(x))
                }
            }
            Entry::Other => Ok(()),
        };
        if let Err(e) = decoded {
            tracing::warn!(error = %e, "skipping a record written by something else");
        }
    }
    r.catalog.sync_resources(&resources);
    // The catalog holds the listed resources now: later applies compare with their revision.
    s.seen.send_replace(resources_revision);
    r.tokens.replace_all(tokens);
    r.catalog.sync_elsewhere(elsewhere);
    let _ = listed.send(instances);
    r.caught_up.send_replace(true);
    tracing::info!(revision, "caught up with etcd");
    Ok(revision)
}

/// Feeds every change from `from` on; `Ok` at shutdown.
async fn follow(s: &Shared, r: &Replication, from: i64) -> Result<(), EtcdError> {
    let mut watches = s.client.watch_client();
    let options = WatchOptions::new().with_prefix().with_start_revision(from);
    let mut stream = timed(
        &s.config,
        "watching",
        watches.watch(s.keys.all(), Some(options)),
    )
    .await?;
    loop {
        let message = tokio::select! {
            _ = r.shutdown.clone() => return Ok(()),
            m = stream.message() => m,
        };
        let unavailable = |reason: String| EtcdError::Unavailable {
            endpoints: s.config.endpoints.join(","),
            what: "watching",
            reason,
        };
        match message {
            Ok(Some(resp)) if resp.canceled() => {
                return Err(unavailable(format!(
                    "watch canceled: {} (compacted at {})",
                    resp.cancel_reason(),
                    resp.compact_revision()
                )));
            }
            Ok(Some(resp)) => changes(s, r, resp.events()),
            Ok(None) => return Err(unavailable("the watch ended".into())),
            Err(e) => return Err(unavailable(e.to_string())),
        }
    }
}

/// One watch response's events, in order (a transaction's arrive together).
fn changes(s: &Shared, r: &Replication, events: &[etcd_client::Event]) {
    let lease = s.lease.load(Ordering::Acquire);
    let mut applied: Vec<Resource> = Vec::new();
    let mut resources_revision = 0;
    for event in events {
        let Some(item) = event.kv() else { continue };
        let key = String::from_utf8_lossy(item.key());
        let put = matches!(event.event_type(), EventType::Put);
        let done: Result<(), keys::BadValue> = match s.keys.entry(item.key()) {
            Entry::Resource(_) if put => {
                keys::decode_resource(&key, item.value()).map(|x| applied.push(x))
            }
            Entry::Resource(kind_name) => {
                keys::resource_id(&key, &kind_name).map(|(kind, name)| {
                    r.catalog.apply(&std::mem::take(&mut applied));
                    r.catalog.remove(kind, &name);
                })
            }
            Entry::ResourcesRevision => {
                resources_revision = item.mod_revision();
                Ok(())
            }
            Entry::Token(id) if put => {
                keys::decode_token(&key, item.value()).map(|t| r.tokens.insert(id, t))
            }
            Entry::Token(id) => {
                r.tokens.remove(&id);
                Ok(())
            }
            // Our own write coming back.
            Entry::Instance(_) if put && item.lease() == lease => Ok(()),
            Entry::Instance(_) if put => {
                keys::decode_instance(&key, item.value()).map(|x| r.catalog.held_elsewhere(x))
            }
            Entry::Instance(id) => {
                // Still held here (the other replica's lease ended while
                // the sidecar is connected here): keep it in etcd.
                if let Some(own) = r.catalog.gone_elsewhere(&id) {
                    let _ = s.writes.send(InstanceWrite::Put(own));
                }
                Ok(())
            }
            Entry::Other => Ok(()),
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "skipping a record written by something else");
        }
    }
    r.catalog.apply(&applied);
    if resources_revision > 0 {
        s.seen.send_if_modified(|seen| {
            let newer = resources_revision > *seen;
            *seen = (*seen).max(resources_revision);
            newer
        });
    }
}

// ----- the election -------------------------------------------------------

async fn elect(s: &Shared, r: &Replication, mut lease: watch::Receiver<i64>) {
    let mut backoff = Backoff::new();
    loop {
        let id = *lease.borrow_and_update();
        if id == 0 {
            tokio::select! {
                _ = r.shutdown.clone() => return,
                c = lease.changed() => if c.is_err() { return },
            }
            continue;
        }
        let mut elections = s.client.election_client();
        // Waits in line behind the elected replica.
        let won = tokio::select! {
            _ = r.shutdown.clone() => return,
            _ = lease.changed() => continue,
            w = elections.campaign(s.keys.election(), format!("{id:x}"), id) => w,
        };
        let leader = match won {
            Ok(mut w) => w.take_leader(),
            Err(e) => {
                tracing::warn!(error = %e, "campaign for the sweeps failed");
                if pause(backoff.next(), &r.shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff = Backoff::new();
        r.leader.set(1);
        tracing::info!(
            lease = format!("{id:x}"),
            "elected: this replica runs the sweeps"
        );
        let mut tick = tokio::time::interval(s.config.sweep_interval);
        let stopping = loop {
            tokio::select! {
                _ = r.shutdown.clone() => break true,
                _ = lease.changed() => break false,
                _ = tick.tick() => sweep(s, r).await,
            }
        };
        r.leader.set(0);
        if stopping {
            // Hand over now rather than after the lease's TTL.
            if let Some(leader) = leader {
                let options = etcd_client::ResignOptions::new().with_leader(leader);
                let _ = timed(&s.config, "resigning", elections.resign(Some(options))).await;
            }
            return;
        }
        tracing::warn!("the lease changed: no longer the elected replica");
    }
}

/// What one replica does for all: forgets expired join tokens, and
/// instance keys that no lease keeps (no replica holds them).
async fn sweep(s: &Shared, r: &Replication) {
    let mut ops: Vec<TxnOp> = r
        .tokens
        .remove_expired(SystemTime::now())
        .iter()
        .map(|id| TxnOp::delete(s.keys.token(id), None))
        .collect();
    let mut kv = s.client.kv_client();
    let get = kv.get(
        s.keys.instances(),
        Some(GetOptions::new().with_prefix().with_keys_only()),
    );
    if let Ok(resp) = timed(&s.config, "sweeping", get).await {
        ops.extend(
            resp.kvs()
                .iter()
                .filter(|i| i.lease() == 0)
                .map(|i| TxnOp::delete(i.key().to_vec(), None)),
        );
    }
    if ops.is_empty() {
        return;
    }
    let n = ops.len();
    match timed(&s.config, "sweeping", kv.txn(Txn::new().and_then(ops))).await {
        Ok(_) => tracing::info!(
            removed = n,
            "swept expired join tokens and unheld instances"
        ),
        Err(e) => tracing::warn!(error = %e, "sweep failed; next time"),
    }
}
