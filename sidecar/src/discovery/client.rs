//! The discovery stream loop: connect, hello, apply updates with ACK/NACK,
//! forward subscriptions and app health; on loss keep the last config and
//! reconnect with jittered backoff, to the next control-plane replica in
//! this sidecar's order (`failover.rs`), saying in the hello what it holds
//! (`weft_proto::resume`) so that the replica sends only what differs;
//! move back to a preferred replica once it answers again; on shutdown
//! say `Leave`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use weft_proto::labels::Labels;
use weft_proto::name::ServiceName;
use weft_proto::protocol::Protocol;
use weft_proto::v1 as pb;
use weft_proto::v1::discovery_client::DiscoveryClient as GrpcClient;

use super::convert::{ConvertError, convert_update, health_to_proto};
use super::{ConfigState, StatusCell, StreamState};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use weft_proto::addresses::Candidate;

use crate::backoff::Backoff;
use crate::drain;
use crate::failover::ControlPlanes;
use crate::identity::{Identity, IdentityError};
use crate::intercept::AddressMap;
use crate::intercept::map::MapError;
use crate::model::Health;
use crate::model::inbound::InboundPolicy;
use crate::table::{EjectionEvent, Routes, TableBuilder};
use crate::telemetry::Telemetry;

/// Who this sidecar is, as it says in its hello.
#[derive(Debug, Clone)]
pub struct Member {
    pub service: ServiceName,
    pub instance_id: String,
    pub address: String,
    pub protocol: Protocol,
    pub labels: Labels,
    /// No app behind this sidecar: it only makes calls.
    pub no_app: bool,
    /// It intercepts its app's connections, and so needs every service's
    /// addresses (the control plane sends them only then).
    pub intercepts: bool,
}

/// One sidecar's discovery stream, with what it keeps current (the routing
/// table, the inbound policy, the status) and what it reports.
pub struct DiscoveryClient {
    /// The control plane's URL, for logs (the identity connects to it).
    pub url: String,
    pub member: Member,
    /// Declared upstreams plus every service asked for since.
    pub wanted: BTreeSet<ServiceName>,
    pub state: ConfigState,
    pub builder: TableBuilder,
    pub routes: Arc<Routes>,
    pub subscriptions: mpsc::UnboundedReceiver<ServiceName>,
    pub health: watch::Receiver<Health>,
    pub status: Arc<StatusCell>,
    pub connect_timeout: Duration,
    /// The sidecar's identity: the stream runs over TLS with its certificate.
    pub identity: Arc<Identity>,
    /// Where the inbound policy for the proxy is published.
    pub inbound: Arc<ArcSwap<InboundPolicy>>,
    /// Where the address map for interception is published.
    pub addresses: Arc<ArcSwap<AddressMap>>,
    /// Ejections by this sidecar's outlier detection, to report.
    pub ejections: mpsc::UnboundedReceiver<EjectionEvent>,
    /// Those in force: (service, instance) → until (unix ms). Reported again
    /// on every new stream.
    pub ejected: std::collections::BTreeMap<(String, String), u64>,
    /// Its metrics, and its inbound traffic totals, reported every second
    /// for `weftctl top`.
    pub telemetry: Arc<Telemetry>,
    /// What it was sent and applied, merged: the digests of its next hello.
    pub held: weft_proto::resume::Held,
}

/// How often traffic totals are reported (when they changed).
const STATS_INTERVAL: Duration = Duration::from_secs(1);

fn ejection_msg(service: &str, instance: &str, until_unix_ms: u64) -> pb::SidecarMessage {
    msg(pb::sidecar_message::Kind::Ejection(pb::Ejection {
        service: service.to_string(),
        instance_id: instance.to_string(),
        until_unix_ms,
    }))
}

/// Why a session ended.
enum End {
    Shutdown,
    /// A replica this sidecar prefers answers again: the stream moves
    /// there (not a loss: no backoff, the config stays current).
    Moved {
        to: Candidate,
    },
    /// The stream was lost; `synced` says whether it had delivered a config
    /// (then the backoff starts over).
    Lost {
        reason: String,
        synced: bool,
    },
}

/// Why an update is refused; its text is the NACK reason.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error(transparent)]
    Convert(#[from] ConvertError),
    #[error(transparent)]
    Roots(#[from] IdentityError),
    #[error(transparent)]
    Addresses(#[from] MapError),
}

/// Whether the replica at `at` serves discovery now: a TLS connection as
/// the stream's, and its health for `weft.v1.Discovery`, each within a
/// few seconds.
async fn answers(identity: Arc<Identity>, at: Candidate) -> bool {
    const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
    let Ok(endpoint) = identity.control_plane_endpoint(&at) else {
        return false;
    };
    let check = async {
        let channel = endpoint
            .connect_timeout(PROBE_TIMEOUT)
            .connect()
            .await
            .ok()?;
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: DISCOVERY_SERVICE.into(),
            })
            .await
            .ok()?;
        Some(reply.get_ref().status == ServingStatus::Serving as i32)
    };
    let serving = tokio::time::timeout(PROBE_TIMEOUT, check)
        .await
        .ok()
        .flatten()
        .unwrap_or(false);
    tracing::debug!(replica = %at, serving, "probed a preferred control-plane replica");
    serving
}

/// The gRPC service a sidecar needs a replica to serve.
const DISCOVERY_SERVICE: &str = "weft.v1.Discovery";

fn msg(kind: pb::sidecar_message::Kind) -> pb::SidecarMessage {
    pb::SidecarMessage { kind: Some(kind) }
}

impl DiscoveryClient {
    fn set_state(&self, state: StreamState) {
        self.telemetry.metrics.set_stream_state(state.as_str());
        self.status.update(|s| s.state = state);
    }

    /// Runs until draining begins.
    pub async fn run(mut self, mut drain: drain::Watch) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        self.set_state(StreamState::Connecting);
        loop {
            match self.session(&mut drain).await {
                End::Shutdown => return,
                End::Moved { to } => {
                    tracing::info!(%to, "returning to a preferred control-plane replica");
                    self.telemetry.metrics.count_rebalance();
                }
                End::Lost { reason, synced } => {
                    if synced {
                        backoff.reset();
                    }
                    let has_config = self.status.get().has_config;
                    self.set_state(if has_config {
                        StreamState::Stale
                    } else {
                        StreamState::Connecting
                    });
                    self.status.update(|s| s.reconnects += 1);
                    let delay = backoff.next_delay();
                    tracing::warn!(url = %self.url, %reason, retry_in_ms = delay.as_millis() as u64,
                        "control-plane stream lost; keeping the last config");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = drain.signaled() => return,
                    }
                }
            }
        }
    }

    fn hello(&self) -> pb::SidecarMessage {
        msg(pb::sidecar_message::Kind::Hello(pb::Hello {
            service: self.member.service.to_string(),
            instance_id: self.member.instance_id.clone(),
            address: self.member.address.clone(),
            protocol: self.member.protocol.to_proto() as i32,
            labels: self
                .member
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            upstreams: self.wanted.iter().map(ToString::to_string).collect(),
            health: health_to_proto(*self.health.borrow()) as i32,
            sidecar_version: env!("CARGO_PKG_VERSION").into(),
            certificate_expires_unix_ms: *self.identity.expiry().borrow(),
            no_app: self.member.no_app,
            // Only a sidecar that holds a config can resume: a first
            // connect gets a full state.
            resume: (!self.held.is_empty()).then(|| self.held.resume()),
            intercept: self.member.intercepts,
        }))
    }

    /// One stream, to the current replica; a lost one passes the turn to
    /// the next replica.
    async fn session(&mut self, drain: &mut drain::Watch) -> End {
        let planes = match self.identity.control_planes() {
            Ok(p) => p.clone(),
            Err(e) => {
                return End::Lost {
                    reason: e.to_string(),
                    synced: false,
                };
            }
        };
        let at = tokio::select! {
            r = planes.current() => match r {
                Ok(at) => at,
                Err(e) => return End::Lost { reason: e.to_string(), synced: false },
            },
            _ = drain.signaled() => return End::Shutdown,
        };
        let end = self.session_at(&planes, &at, drain).await;
        match &end {
            End::Lost { reason, .. } => {
                tracing::debug!(replica = %at, %reason, "stream to this replica ended");
                planes.failed(&at);
            }
            End::Moved { to } => planes.move_to(to),
            End::Shutdown => {}
        }
        end
    }

    async fn session_at(
        &mut self,
        planes: &ControlPlanes,
        at: &Candidate,
        drain: &mut drain::Watch,
    ) -> End {
        let lost = |reason: String| End::Lost {
            reason: format!("{at}: {reason}"),
            synced: false,
        };
        let mut expiry = self.identity.expiry();
        // The stream needs the sidecar's certificate: wait for the first one.
        if *expiry.borrow() == 0 {
            tokio::select! {
                r = expiry.wait_for(|e| *e != 0) => if r.is_err() { return End::Shutdown },
                _ = drain.signaled() => return End::Shutdown,
            }
        }
        // Over TLS with the current certificate: the control plane's API
        // is not open.
        let endpoint = match self.identity.control_plane_endpoint(at) {
            Ok(e) => e
                .connect_timeout(self.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5)),
            Err(e) => return lost(e.to_string()),
        };
        let channel = tokio::select! {
            r = endpoint.connect() => match r {
                Ok(c) => c,
                Err(e) => return lost(format!("connect: {}", crate::error::error_chain(&e))),
            },
            _ = drain.signaled() => return End::Shutdown,
        };
        let (tx, rx) = mpsc::channel::<pb::SidecarMessage>(16);
        let _ = tx.send(self.hello()).await;
        let now_ms = weft_proto::time::unix_ms(std::time::SystemTime::now());
        self.ejected.retain(|_, until| *until > now_ms);
        for ((service, instance), until) in &self.ejected {
            let _ = tx.send(ejection_msg(service, instance, *until)).await;
        }
        self.health.borrow_and_update();
        let mut client = GrpcClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        let mut inbound = match client.stream(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(s) => return lost(format!("open stream: {}", s.message())),
        };
        let mut synced = false;
        let mut app_checked = true;
        // Totals last reported on this stream: the first report follows the
        // first update applied, then one per interval while they change.
        let mut reported: Option<pb::TrafficStats> = None;
        let mut stats_tick = tokio::time::interval(STATS_INTERVAL);
        stats_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Polled beside the stream: it probes preferred replicas without
        // holding up updates, and only once this stream has synced (the
        // move's resume then has something to resume from).
        let identity = self.identity.clone();
        let preferred = planes.preferred_again(at, |c| answers(identity.clone(), c));
        tokio::pin!(preferred);
        loop {
            tokio::select! {
                to = &mut preferred, if synced => {
                    // Ending the request stream closes ours on the replica;
                    // the instance stays (its grace, then the new replica's
                    // registration, covers the move).
                    return End::Moved { to };
                },
                m = inbound.message() => match m {
                    Ok(Some(update)) => {
                        let reply = self.apply(&update);
                        let acked = matches!(reply.kind, Some(pb::sidecar_message::Kind::Ack(_)));
                        if acked && !synced {
                            let resumed = pb::ResumeResult::try_from(update.resumed).unwrap_or_default();
                            tracing::info!(replica = %at, version = update.version, resumed = resumed.as_str_name(), "synced with the control plane");
                            let replica = at.to_string();
                            self.status.update(|s| s.replica = Some(replica));
                        }
                        synced |= acked;
                        if tx.send(reply).await.is_err() {
                            return End::Lost { reason: "request stream closed".into(), synced };
                        }
                        if synced && reported.is_none() {
                            stats_tick.reset_immediately();
                        }
                    }
                    Ok(None) => return End::Lost { reason: format!("{at}: closed by the control plane"), synced },
                    Err(s) => return End::Lost { reason: format!("{at}: {}: {}", s.code(), s.message()), synced },
                },
                Some(name) = self.subscriptions.recv() => {
                    if self.wanted.insert(name.clone()) {
                        tracing::debug!(service = %name, "subscribing");
                        let m = msg(pb::sidecar_message::Kind::Subscribe(pb::Subscribe { services: vec![name.to_string()] }));
                        if tx.send(m).await.is_err() {
                            return End::Lost { reason: "request stream closed".into(), synced };
                        }
                    }
                },
                Some(e) = self.ejections.recv() => {
                    let key = (e.service.to_string(), e.instance.to_string());
                    let until = e.until.map_or(0, weft_proto::time::unix_ms);
                    if until == 0 {
                        self.ejected.remove(&key);
                    } else {
                        self.ejected.insert(key.clone(), until);
                    }
                    let _ = tx.send(ejection_msg(&key.0, &key.1, until)).await;
                },
                _ = stats_tick.tick(), if synced => {
                    let s = self.telemetry.traffic.snapshot();
                    if reported.as_ref() != Some(&s) {
                        let _ = tx.send(msg(pb::sidecar_message::Kind::Stats(s.clone()))).await;
                        reported = Some(s);
                    }
                },
                r = expiry.changed() => {
                    if r.is_ok() {
                        let expires_unix_ms = *expiry.borrow_and_update();
                        let m = msg(pb::sidecar_message::Kind::Certificate(pb::CertificateStatus { expires_unix_ms }));
                        let _ = tx.send(m).await;
                    }
                },
                r = self.health.changed(), if app_checked => match r {
                    Ok(()) => {
                        let h = *self.health.borrow_and_update();
                        let m = msg(pb::sidecar_message::Kind::Health(pb::AppHealth { health: health_to_proto(h) as i32, detail: String::new() }));
                        let _ = tx.send(m).await;
                    }
                    // Nothing checks an app (there is none): its health
                    // stays what the hello said.
                    Err(_) => app_checked = false,
                },
                _ = drain.signaled() => {
                    // Tell the control plane to remove this instance now, then
                    // wait (briefly) for it to close the stream, so the message
                    // is not lost to a cancelled call.
                    let _ = tx.send(msg(pb::sidecar_message::Kind::Leave(pb::Leave {}))).await;
                    drop(tx);
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        while let Ok(Some(_)) = inbound.message().await {}
                    }).await;
                    tracing::info!("left the mesh");
                    return End::Shutdown;
                }
            }
        }
    }

    /// Validates and applies one update; returns the ACK or NACK to send.
    fn apply(&mut self, update: &pb::DiscoveryUpdate) -> pb::SidecarMessage {
        let version = update.version;
        // New trust anchors first: a rotation's new CA is trusted before
        // anything signed by it arrives.
        let converted = convert_update(update)
            .map_err(Refused::from)
            .and_then(|changes| {
                let addresses = update
                    .addresses
                    .as_ref()
                    .map(AddressMap::from_proto)
                    .transpose()?;
                if !update.roots.is_empty() {
                    self.identity.set_roots(&update.roots)?;
                }
                Ok((changes, addresses))
            });
        match converted {
            Ok((changes, addresses)) => {
                if let Some(map) = addresses {
                    tracing::debug!(addresses = map.len(), "address map updated");
                    self.addresses.store(Arc::new(map));
                }
                self.state.apply(update.full, changes);
                self.held.apply(update);
                let table = self
                    .builder
                    .build(self.state.known.iter(), self.state.unknown.iter());
                self.routes.store(table);
                let inbound = self.state.inbound.clone().unwrap_or_default();
                if **self.inbound.load() != inbound {
                    tracing::info!(policy = ?inbound, "inbound policy changed");
                    self.inbound.store(Arc::new(inbound));
                }
                self.telemetry.metrics.count_update_acked();
                self.status.update(|s| {
                    s.version = version;
                    s.has_config = true;
                });
                self.set_state(StreamState::Synced);
                tracing::debug!(
                    version,
                    full = update.full,
                    services = update.services.len(),
                    "applied update"
                );
                msg(pb::sidecar_message::Kind::Ack(pb::Ack { version }))
            }
            Err(refused) => {
                let reason = refused.to_string();
                tracing::warn!(version, %reason, "rejected an update; keeping the last good config");
                self.telemetry.metrics.count_update_rejected();
                let r = reason.clone();
                self.status
                    .update(|s| s.last_nack = Some(format!("{version}: {r}")));
                msg(pb::sidecar_message::Kind::Nack(pb::Nack {
                    version,
                    reason,
                }))
            }
        }
    }
}
