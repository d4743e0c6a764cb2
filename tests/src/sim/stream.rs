//! One simulated sidecar: a real discovery stream over mutual TLS with a
//! certificate the control plane's CA issued for its service, a hello like
//! a sidecar's, an ACK for every update, and the sidecar's own reconnect
//! backoff (`weft_sidecar::backoff`) when the stream is lost. It notes when
//! each measured change reaches it and what it was sent that it does not
//! call.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{ClientTlsConfig, Endpoint, Identity};
use weft_proto::identity::SpiffeServerVerifier;
use weft_proto::v1 as pb;
use weft_sidecar::backoff::Backoff;

/// The service every simulated sidecar calls: its changes are the measured
/// ones, since they must reach all of them.
pub const HOT: &str = "svc-0";

/// A measured apply of [`HOT`] carries `timeouts.request` = this + the
/// change's number (ms), so that a stream can tell which change it got.
pub const MARK_BASE_MS: u64 = 10_000;

/// The instance id of the measured join number `k`.
pub fn join_id(k: usize) -> String {
    format!("join-{k}")
}

/// One measured change: when it was made, and when it reached each stream.
#[derive(Default)]
pub struct Change {
    pub t0: OnceLock<Instant>,
    pub received: AtomicUsize,
    pub latencies: Mutex<Vec<Duration>>,
}

/// Counters over every stream.
#[derive(Default)]
pub struct Counters {
    pub connects: AtomicU64,
    pub failed_connects: AtomicU64,
    /// Streams the control plane answered with an error status.
    pub refused: AtomicU64,
    pub updates: AtomicU64,
    pub bytes: AtomicU64,
    /// Service updates for a service the stream neither calls nor is.
    pub unwanted: AtomicU64,
    /// Updates that carried the address map.
    pub address_maps: AtomicU64,
    pub acks: AtomicU64,
}

/// What every stream shares.
pub struct Shared {
    /// Each replica's URL.
    pub urls: Vec<String>,
    pub verifier: Arc<SpiffeServerVerifier>,
    /// A certificate and key per service (PEM), issued through `Identity`.
    pub identities: std::collections::HashMap<String, Identity>,
    pub changes: Vec<Change>,
    pub counters: Counters,
    /// Restarts so far: a stream is synced when its last full state came on
    /// a session started after the latest.
    pub epoch: AtomicU64,
    /// Source addresses to spread connections over (ephemeral ports are per
    /// source address).
    pub sources: Vec<IpAddr>,
    /// Every stream says it intercepts.
    pub intercept: bool,
    /// Streams send a traffic report every second (as sidecars carrying
    /// traffic do): the dashboard phase.
    pub reporting: std::sync::atomic::AtomicBool,
}

/// Who one stream is.
#[derive(Clone)]
pub struct StreamSpec {
    pub index: usize,
    pub service: String,
    pub instance: String,
    pub wanted: Vec<String>,
    pub replica: usize,
    /// Counted in the measured changes.
    pub measured: bool,
}

/// A running stream; dropping it stops it without a `Leave`.
pub struct StreamHandle {
    pub spec: StreamSpec,
    /// 1 + the epoch of the session that brought the last full state (0: none yet).
    pub synced: Arc<AtomicU64>,
    leave: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl StreamHandle {
    pub fn start(
        shared: Arc<Shared>,
        spec: StreamSpec,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        let synced = Arc::new(AtomicU64::new(0));
        let (leave, left) = oneshot::channel();
        let task = tokio::spawn(run(shared, spec.clone(), synced.clone(), left, permit));
        StreamHandle {
            spec,
            synced,
            leave: Some(leave),
            task,
        }
    }

    /// Says `Leave` (the instance goes at once) and ends the stream.
    pub async fn leave(mut self) {
        if let Some(l) = self.leave.take() {
            let _ = l.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
    }

    pub fn synced_in(&self, epoch: u64) -> bool {
        self.synced.load(Ordering::Relaxed) == epoch + 1
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum End {
    Lost,
    Left,
}

async fn run(
    shared: Arc<Shared>,
    spec: StreamSpec,
    synced: Arc<AtomicU64>,
    mut leave: oneshot::Receiver<()>,
    mut permit: Option<OwnedSemaphorePermit>,
) {
    // The sidecar's own reconnect policy (discovery/client.rs).
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut got = vec![false; shared.changes.len()];
    loop {
        let mut session = Session {
            shared: &shared,
            spec: &spec,
            got: &mut got,
            synced: &synced,
            permit: &mut permit,
        };
        if let End::Left = session.run(&mut leave, &mut backoff).await {
            return;
        }
        // The first connect is over either way: let the next stream start.
        permit = None;
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = &mut leave => return,
        }
    }
}

struct Session<'a> {
    shared: &'a Shared,
    spec: &'a StreamSpec,
    got: &'a mut Vec<bool>,
    synced: &'a AtomicU64,
    permit: &'a mut Option<OwnedSemaphorePermit>,
}

impl Session<'_> {
    async fn run(&mut self, leave: &mut oneshot::Receiver<()>, backoff: &mut Backoff) -> End {
        let shared = self.shared;
        let epoch = shared.epoch.load(Ordering::Relaxed);
        shared.counters.connects.fetch_add(1, Ordering::Relaxed);
        let Some(channel) = self.connect().await else {
            shared
                .counters
                .failed_connects
                .fetch_add(1, Ordering::Relaxed);
            return End::Lost;
        };
        let (tx, rx) = mpsc::channel(4);
        if tx.send(self.hello()).await.is_err() {
            return End::Lost;
        }
        let mut updates = match pb::discovery_client::DiscoveryClient::new(channel)
            .stream(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(_) => {
                shared.counters.refused.fetch_add(1, Ordering::Relaxed);
                return End::Lost;
            }
        };
        let mut report = tokio::time::interval(Duration::from_secs(1));
        report.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seconds = 0u64;
        loop {
            tokio::select! {
                // Ticks always (a branch disabled by the flag would not
                // wake when it changes); reports only while it is set.
                _ = report.tick() => {
                    if !shared.reporting.load(Ordering::Relaxed) {
                        continue;
                    }
                    seconds += 1;
                    let stats = self.traffic(seconds);
                    if tx.send(pb::SidecarMessage { kind: Some(pb::sidecar_message::Kind::Stats(stats)) }).await.is_err() {
                        return End::Lost;
                    }
                }
                m = updates.message() => {
                    let Ok(Some(u)) = m else { return End::Lost };
                    self.observe(&u);
                    if u.full {
                        self.synced.store(epoch + 1, Ordering::Relaxed);
                        backoff.reset();
                        *self.permit = None;
                    }
                    let ack = pb::sidecar_message::Kind::Ack(pb::Ack { version: u.version });
                    if tx.send(pb::SidecarMessage { kind: Some(ack) }).await.is_err() {
                        return End::Lost;
                    }
                    shared.counters.acks.fetch_add(1, Ordering::Relaxed);
                }
                _ = &mut *leave => {
                    let bye = pb::sidecar_message::Kind::Leave(pb::Leave {});
                    let _ = tx.send(pb::SidecarMessage { kind: Some(bye) }).await;
                    drop(tx);
                    // The control plane ends the stream once it took the Leave.
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while let Ok(Some(_)) = updates.message().await {}
                    })
                    .await;
                    return End::Left;
                }
            }
        }
    }

    async fn connect(&self) -> Option<tonic::transport::Channel> {
        let shared = self.shared;
        let url = shared.urls.get(self.spec.replica)?;
        let identity = shared.identities.get(&self.spec.service)?.clone();
        let source = shared.sources[self.spec.index % shared.sources.len()];
        Endpoint::from_shared(url.clone())
            .ok()?
            .connect_timeout(Duration::from_secs(10))
            .local_address(Some(source))
            .tls_config_with_verifier(
                ClientTlsConfig::new().identity(identity),
                shared.verifier.clone(),
            )
            .ok()?
            .connect()
            .await
            .ok()
    }

    /// Cumulative counts after `seconds` of 10 requests a second in, and
    /// 10 a second to each service it calls, 1 in 100 failing, over two
    /// gRPC methods: the size of a busy sidecar's report.
    fn traffic(&self, seconds: u64) -> pb::TrafficStats {
        let n = 10 * seconds;
        let buckets = |n: u64| -> Vec<u64> {
            (0..weft_proto::stats::BUCKETS)
                .map(|i| if i < 2 { n / 2 } else { n })
                .collect()
        };
        pb::TrafficStats {
            requests: n,
            failures: n / 100,
            latency_buckets: buckets(n),
            plaintext_requests: 0,
            upstreams: self
                .spec
                .wanted
                .iter()
                .map(|w| pb::UpstreamTraffic {
                    service: w.clone(),
                    requests: n,
                    failures: n / 100,
                    latency_buckets: buckets(n),
                })
                .collect(),
            routes: ["/sim.Service/Get", "/sim.Service/Put"]
                .iter()
                .map(|r| pb::RouteTraffic {
                    route: r.to_string(),
                    requests: n / 2,
                    failures: n / 200,
                })
                .collect(),
        }
    }

    fn hello(&self) -> pb::SidecarMessage {
        let i = self.spec.index as u32 + 1;
        let address = format!(
            "10.{}.{}.{}:15006",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        );
        pb::SidecarMessage {
            kind: Some(pb::sidecar_message::Kind::Hello(pb::Hello {
                service: self.spec.service.clone(),
                instance_id: self.spec.instance.clone(),
                address,
                protocol: pb::Protocol::Grpc as i32,
                upstreams: self.spec.wanted.clone(),
                health: pb::Health::Healthy as i32,
                sidecar_version: "weft-sim".into(),
                intercept: self.shared.intercept,
                ..Default::default()
            })),
        }
    }

    /// Counts the update, and notes the measured changes it brings.
    fn observe(&mut self, u: &pb::DiscoveryUpdate) {
        let c = &self.shared.counters;
        c.updates.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(u.encoded_len() as u64, Ordering::Relaxed);
        if u.addresses.is_some() {
            c.address_maps.fetch_add(1, Ordering::Relaxed);
        }
        for s in &u.services {
            if s.name != self.spec.service && !self.spec.wanted.contains(&s.name) {
                c.unwanted.fetch_add(1, Ordering::Relaxed);
            }
            if s.name != HOT {
                continue;
            }
            let mark = s
                .policy
                .as_ref()
                .and_then(|p| p.timeouts.as_ref())
                .and_then(|t| t.request_ms.checked_sub(MARK_BASE_MS));
            if let Some(k) = mark {
                self.note(k as usize);
            }
            for e in &s.endpoints {
                if let Some(k) = e
                    .instance_id
                    .strip_prefix("join-")
                    .and_then(|k| k.parse().ok())
                {
                    self.note(k);
                }
            }
        }
    }

    fn note(&mut self, k: usize) {
        if !self.spec.measured || self.got.get(k) != Some(&false) {
            return;
        }
        let change = &self.shared.changes[k];
        let Some(t0) = change.t0.get() else {
            return;
        };
        let latency = t0.elapsed();
        self.got[k] = true;
        if let Ok(mut l) = change.latencies.lock() {
            l.push(latency);
        }
        change.received.fetch_add(1, Ordering::Relaxed);
    }
}
