//! The `Discovery` gRPC service: one bidirectional stream per sidecar.
//!
//! The sidecar opens with a `Hello`; the control plane registers its instance
//! and answers with a full state of every service it wants. After that it
//! sends only what changed, each update with a new version that the sidecar
//! ACKs or NACKs.

use std::collections::{BTreeSet, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use weft_proto::v1 as pb;
use weft_proto::v1::discovery_server::Discovery;

use crate::api::convert::{health_from_proto, registration_from_hello};
use crate::catalog::{
    Catalog, MAX_REPORTED_TEXT, MAX_WANTED, PushState, Registration, ServiceAddresses,
    SidecarStream, TrafficReport, clip,
};
use crate::metrics::Metrics;
use crate::resource::Name;
use weft_proto::resume::Claimed;

pub struct DiscoveryService {
    catalog: Arc<Catalog>,
    metrics: Arc<Metrics>,
    /// Streams must come with a certificate of this trust domain naming the
    /// service they register; `None` accepts any (tests of the catalog alone).
    trust_domain: Option<String>,
    /// The mesh's trust anchors (DER), sent in every full state.
    roots: Arc<Vec<Vec<u8>>>,
}

impl DiscoveryService {
    pub fn new(catalog: Arc<Catalog>, metrics: Arc<Metrics>, trust_domain: Option<String>) -> Self {
        DiscoveryService {
            catalog,
            metrics,
            trust_domain,
            roots: Arc::new(Vec::new()),
        }
    }

    /// Sends `roots` to every sidecar in each full state.
    pub fn with_roots(mut self, roots: Vec<Vec<u8>>) -> Self {
        self.roots = Arc::new(roots);
        self
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::DiscoveryUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl Discovery for DiscoveryService {
    type StreamStream = UpdateStream;

    async fn stream(
        &self,
        request: Request<Streaming<pb::SidecarMessage>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let caller = self
            .trust_domain
            .as_deref()
            .map(|td| crate::identity::caller_id(&request, td));
        let mut inbound = request.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::SidecarMessage {
                kind: Some(pb::sidecar_message::Kind::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message on a discovery stream must be a Hello",
                ));
            }
        };
        let (reg, mut wanted) =
            registration_from_hello(&hello).map_err(|e| Status::invalid_argument(e.to_string()))?;
        match caller {
            None => {}
            Some(Some(id)) if id.service_name() == Some(reg.service.as_str()) => {}
            Some(Some(id)) => {
                return Err(Status::permission_denied(format!(
                    "{id} may not register as service {}",
                    reg.service
                )));
            }
            Some(None) => {
                return Err(Status::unauthenticated(
                    "a discovery stream needs the sidecar's mesh certificate",
                ));
            }
        }
        // A sidecar always learns its own service: its inbound policy travels there.
        wanted.insert(reg.service.clone());
        let certificate_expires = hello.certificate_expires_unix_ms;
        // Few updates are ever queued: the session waits for room before it
        // builds the next, and each carries everything that changed.
        let (tx, rx) = mpsc::channel(2);
        let mut session =
            Session::open(self, reg, wanted, hello.intercept, certificate_expires, tx);
        session.resume = hello.resume.as_ref().map(Claimed::from);
        tokio::spawn(session.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// One sidecar's stream: what it wants and what it has been sent.
struct Session {
    /// The stream as the catalog knows it; dropping it disconnects.
    stream: SidecarStream,
    /// The sidecar's own service: only its updates carry the inbound policy.
    own_service: Name,
    instance: String,
    catalog: Arc<Catalog>,
    /// Wakes when the catalog changed (read only by a sidecar that is
    /// sent the address map; others wait for what they want, see `push`).
    changed: watch::Receiver<u64>,
    metrics: Arc<Metrics>,
    /// What the sidecar wants and was sent.
    push: PushState,
    /// Updates sent and not yet ACKed or NACKed, oldest first (bounded).
    unanswered: VecDeque<(u64, Instant)>,
    tx: mpsc::Sender<Result<pb::DiscoveryUpdate, Status>>,
    roots: Arc<Vec<Vec<u8>>>,
    /// What a reconnected sidecar holds: its first update is cut down to
    /// what differs (`resume.rs`).
    resume: Option<Claimed>,
}

impl Session {
    /// Registers the sidecar: from here on the catalog counts it connected.
    fn open(
        service: &DiscoveryService,
        reg: Registration,
        wanted: BTreeSet<Name>,
        intercept: bool,
        certificate_expires: u64,
        tx: mpsc::Sender<Result<pb::DiscoveryUpdate, Status>>,
    ) -> Self {
        let catalog = service.catalog.clone();
        // Subscribed before registering, so no change after it is missed.
        let mut changed = catalog.subscribe();
        let (own_service, instance) = (reg.service.clone(), reg.instance_id.clone());
        let stream = catalog.connect(reg, wanted.clone(), certificate_expires);
        let push = PushState::new(stream.id(), own_service.clone(), wanted, intercept);
        tracing::info!(stream = stream.id(), service = %own_service, %instance, "sidecar connected");
        changed.borrow_and_update();
        Session {
            stream,
            own_service,
            instance,
            catalog,
            changed,
            metrics: service.metrics.clone(),
            push,
            unanswered: VecDeque::new(),
            tx,
            roots: service.roots.clone(),
            resume: None,
        }
    }

    async fn run(mut self, mut inbound: Streaming<pb::SidecarMessage>) {
        self.metrics.sidecars_connected.inc();
        let mut left = false;
        let mut ok = self.push(true).await;
        // Woken by the services it wants; a sidecar sent the address map
        // (every service's) by every change too.
        let wanted_changed = self.push.changed();
        let every = self.push.needs_every_change();
        while ok {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(m)) => match self.handle(m).await {
                        Handled::Continue => {}
                        Handled::Leave => { left = true; break; }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(stream = self.stream.id(), error = %e, "discovery stream error");
                        break;
                    }
                },
                r = self.changed.changed(), if every => {
                    if r.is_err() { break; }
                    ok = self.push(false).await;
                }
                _ = wanted_changed.notified() => {
                    ok = self.push(false).await;
                }
            }
        }
        let (id, service, instance) = (self.stream.id(), self.own_service, self.instance);
        self.stream.close(left);
        self.metrics.sidecars_connected.dec();
        tracing::info!(stream = id, %service, %instance, left, "sidecar disconnected");
    }

    async fn handle(&mut self, m: pb::SidecarMessage) -> Handled {
        use pb::sidecar_message::Kind;
        match m.kind {
            Some(Kind::Ack(a)) => {
                self.answered(a.version);
                self.stream.record_ack(a.version)
            }
            Some(Kind::Nack(n)) => {
                self.answered(n.version);
                let reason = clip(n.reason, MAX_REPORTED_TEXT);
                tracing::warn!(stream = self.stream.id(), version = n.version, %reason, "sidecar rejected an update");
                self.metrics.nacks.inc();
                self.stream.record_nack(n.version, reason);
            }
            Some(Kind::Subscribe(s)) => {
                // Names that cannot be services are dropped (no such service
                // can ever exist), and so is anything past MAX_WANTED.
                let room = MAX_WANTED.saturating_sub(self.push.wanted().len());
                let asked = s.services.len();
                let new: Vec<Name> = s
                    .services
                    .iter()
                    .filter_map(|x| Name::parse(x).ok())
                    .filter(|n| !self.push.wanted().contains(n))
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .take(room)
                    .collect();
                if new.len() < asked && asked > 0 {
                    tracing::debug!(
                        stream = self.stream.id(),
                        asked,
                        kept = new.len(),
                        "subscription names dropped (invalid, repeated, or over the limit)"
                    );
                }
                if !new.is_empty() {
                    self.stream.add_subscriptions(&new);
                    self.push.want(new);
                    if !self.push(false).await {
                        return Handled::Leave;
                    }
                }
            }
            Some(Kind::Health(h)) => {
                let health = health_from_proto(h.health);
                self.stream
                    .set_health(health, clip(h.detail, MAX_REPORTED_TEXT));
            }
            Some(Kind::Leave(_)) => return Handled::Leave,
            Some(Kind::Certificate(c)) => self.stream.record_certificate(c.expires_unix_ms),
            Some(Kind::Ejection(e)) => {
                self.stream
                    .record_ejection(e.service, e.instance_id, e.until_unix_ms)
            }
            // Malformed reports are dropped: they would only make `weftctl top` lie.
            Some(Kind::Stats(s)) => match TrafficReport::try_from(&s) {
                Ok(report) => self.stream.record_stats(report),
                Err(e) => {
                    tracing::debug!(stream = self.stream.id(), error = %e, "ignoring malformed traffic stats")
                }
            },
            Some(Kind::Hello(_)) | None => {
                tracing::debug!(stream = self.stream.id(), "ignoring an unexpected message");
            }
        }
        Handled::Continue
    }

    /// Observes the push latency of `version` (and of older updates still
    /// unanswered: a sidecar answers each, but one it skipped is settled by
    /// a later answer).
    fn answered(&mut self, version: u64) {
        while let Some(&(v, sent)) = self.unanswered.front() {
            if v > version {
                break;
            }
            self.unanswered.pop_front();
            self.metrics
                .push_duration
                .observe(sent.elapsed().as_secs_f64());
        }
    }

    /// Sends what changed (everything when `full`). Returns false once the
    /// sidecar is gone.
    async fn push(&mut self, full: bool) -> bool {
        // Room in the stream first: a sidecar that reads slowly gets one
        // update with everything that changed meanwhile, not a queue of them.
        let Ok(permit) = self.tx.reserve().await else {
            return false;
        };
        let pending = self.catalog.pending(&mut self.push, full);
        if !pending.added.is_empty() {
            self.stream.add_subscriptions(&pending.added);
        }
        if !full && pending.is_empty() {
            return true;
        }
        let mut update = pb::DiscoveryUpdate {
            version: 0,
            full,
            services: pending
                .services
                .iter()
                .map(pb::ServiceUpdate::from)
                .collect(),
            roots: if full {
                self.roots.as_ref().clone()
            } else {
                Vec::new()
            },
            addresses: pending.addresses.map(|a| address_map_to_proto(&a)),
            resumed: pb::ResumeResult::None as i32,
        };
        // A resumed stream's first update is sent even when it is empty:
        // the sidecar ACKs it like any, and `weftctl status` shows it.
        if let Some(claimed) = self.resume.take().filter(|_| full) {
            let result = crate::resume::resume(&mut update, &claimed);
            self.metrics
                .resumes
                .get_or_create(&crate::metrics::ResumeLabels {
                    result: result.as_str(),
                })
                .inc();
            tracing::info!(
                stream = self.stream.id(),
                result = result.as_str(),
                services = update.services.len(),
                "resumed a sidecar's stream"
            );
        }
        update.version = self.stream.next_version();
        let version = update.version;
        let update_full = update.full;
        let n = update.services.len();
        let sent = Instant::now();
        permit.send(Ok(update));
        // A sidecar that never answers must not grow this without bound.
        if self.unanswered.len() >= 64 {
            self.unanswered.pop_front();
        }
        self.unanswered.push_back((version, sent));
        self.stream.record_sent(version);
        self.metrics
            .pushes
            .get_or_create(&crate::metrics::PushLabels { full: update_full })
            .inc();
        tracing::debug!(
            stream = self.stream.id(),
            version,
            services = n,
            full = update_full,
            "pushed update"
        );
        true
    }
}

fn address_map_to_proto(map: &[ServiceAddresses]) -> pb::AddressMap {
    pb::AddressMap {
        services: map
            .iter()
            .map(|s| pb::ServiceAddresses {
                service: s.service.to_string(),
                addresses: s.addresses.iter().map(|a| a.to_string()).collect(),
                opaque_ports: s.opaque_ports.iter().map(|&p| u32::from(p)).collect(),
            })
            .collect(),
    }
}

enum Handled {
    Continue,
    Leave,
}
