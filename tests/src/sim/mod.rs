//! A simulator of many sidecars against real control-plane processes
//! (`weft-sim`, and a small run in `tests/tests/scale.rs`).
//!
//! From one process it opens N real discovery streams over mutual TLS, each
//! with a certificate the control plane's CA issued for its service
//! (`Identity.Issue` with a join token, as a sidecar joins: one per
//! service, each stream a distinct instance), each calling M of the S
//! services in the catalog — [`HOT`] and M − 1 others — and ACKing every
//! update. While instances join and leave and other services are applied
//! in the background (`churn`), it makes measured changes that every stream
//! must get (an apply of [`HOT`], an instance of it joining) and times
//! each from the change to each stream's receipt. Then it kills a
//! control-plane replica and times until every stream it had is synced
//! again, the streams reconnecting with the sidecar's own jittered backoff.
//! Everything is bounded in count and time.

mod plane;
mod report;
mod stream;

pub use plane::{Plane, Usage, rss_of, usage_of};
pub use report::Report;
pub use stream::{HOT, MARK_BASE_MS};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use stream::{Change, Counters, Shared, StreamHandle, StreamSpec, join_id};
use tokio::sync::Semaphore;
use weft_proto::v1 as pb;

use crate::mesh::CpAccess;
use crate::util::wait_for;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Sidecars (N).
    pub streams: usize,
    /// Services in the catalog (S).
    pub services: usize,
    /// Services each sidecar calls (M), [`HOT`] included.
    pub wanted: usize,
    /// Measured changes: applies of [`HOT`] and instances of it joining, in turn.
    pub changes: usize,
    /// Control-plane replicas: 1 (embedded store) or 3 (on etcd).
    pub replicas: usize,
    /// Between measured changes.
    pub change_interval: Duration,
    /// Between background churn events (an instance joins, an older one
    /// leaves; every third, an apply of another service).
    pub churn_interval: Duration,
    /// Streams opening at once at the start.
    pub connect_concurrency: usize,
    /// Kill a replica at the end and time the resync.
    pub restart: bool,
    /// The simulated sidecars say they intercept (and so get the address
    /// map of every service).
    pub intercept: bool,
    /// How long one change may take to reach every stream, and the resync.
    pub wait: Duration,
    /// Measure the dashboard: with every stream reporting traffic, this
    /// long without a dashboard open, then this long with one polling the
    /// service graph as the page does. `None`: skipped.
    pub dashboard: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            streams: 200,
            services: 50,
            wanted: 3,
            changes: 6,
            replicas: 1,
            change_interval: Duration::from_secs(2),
            churn_interval: Duration::from_millis(500),
            connect_concurrency: 64,
            restart: true,
            intercept: false,
            wait: Duration::from_secs(60),
            dashboard: None,
        }
    }
}

impl SimConfig {
    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.streams >= 1, "--streams must be at least 1");
        anyhow::ensure!(
            self.services >= 2,
            "--services must be at least 2 ({HOT} and one more)"
        );
        anyhow::ensure!(
            (1..=self.services).contains(&self.wanted),
            "--wanted must be between 1 and --services ({})",
            self.services
        );
        anyhow::ensure!(
            self.replicas == 1 || self.replicas == 3,
            "--replicas must be 1 (embedded store) or 3 (three replicas on a three-member etcd)"
        );
        anyhow::ensure!(
            self.connect_concurrency >= 1,
            "--connect-concurrency must be at least 1"
        );
        Ok(())
    }
}

/// Service number `i`'s name.
fn svc(i: usize) -> String {
    format!("svc-{i}")
}

/// A small deterministic generator (splitmix64): the same run every time.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A service other than [`HOT`].
    fn other(&mut self, services: usize) -> usize {
        1 + (self.next() % (services as u64 - 1)) as usize
    }
}

/// Runs one simulation and reports what it measured.
pub async fn run(cfg: SimConfig) -> anyhow::Result<Report> {
    cfg.check()?;
    let started = Instant::now();
    let mut plane = Plane::start(cfg.replicas).await?;
    let access = plane.access(0)?;
    apply_services(&access, cfg.services, None).await?;
    let shared = Arc::new(shared(&plane, &access, &cfg).await?);
    let mut rng = Rng(42);

    // Every stream connected and synced once.
    let base = plane.usage()?;
    let t = Instant::now();
    let mut streams = Vec::with_capacity(cfg.streams);
    let gate = Arc::new(Semaphore::new(cfg.connect_concurrency));
    for i in 0..cfg.streams {
        let spec = StreamSpec {
            index: i,
            service: svc(1 + i % (cfg.services - 1)),
            instance: format!("sim-{i}"),
            wanted: wanted(&mut rng, &cfg),
            replica: i % cfg.replicas,
            measured: true,
        };
        let permit = gate.clone().acquire_owned().await?;
        streams.push(StreamHandle::start(shared.clone(), spec, Some(permit)));
    }
    let within = cfg.wait + Duration::from_millis(5 * cfg.streams as u64);
    wait_for("every stream's first full state", within, || async {
        streams.iter().all(|s| s.synced_in(0)).then_some(())
    })
    .await?;
    let connect_time = t.elapsed();
    let connected = plane.usage()?;

    // Measured changes, with churn in the background.
    let churn = tokio::spawn(churn(shared.clone(), access.clone(), cfg.clone()));
    let before = (
        plane.usage()?,
        shared.counters.updates.load(Ordering::Relaxed),
        Instant::now(),
    );
    let mut joined = Vec::new();
    let mut missing = 0;
    let mut admin = access.admin_client().await?;
    for k in 0..cfg.changes {
        tokio::time::sleep(cfg.change_interval).await;
        let change = &shared.changes[k];
        let _ = change.t0.set(Instant::now());
        if k % 2 == 0 {
            let yaml = service_yaml(HOT, Some(MARK_BASE_MS + k as u64));
            apply(&mut admin, &yaml).await?;
        } else {
            let spec = StreamSpec {
                index: cfg.streams + k,
                service: HOT.into(),
                instance: join_id(k),
                wanted: Vec::new(),
                replica: k % cfg.replicas,
                measured: false,
            };
            joined.push(StreamHandle::start(shared.clone(), spec, None));
        }
        let all = wait_for("a change to reach every stream", cfg.wait, || async {
            (change.received.load(Ordering::Relaxed) >= cfg.streams).then_some(())
        })
        .await;
        if all.is_err() {
            missing += cfg.streams - change.received.load(Ordering::Relaxed);
        }
    }
    let after = (
        plane.usage()?,
        shared.counters.updates.load(Ordering::Relaxed),
        Instant::now(),
    );
    churn.abort();

    let dashboard = match cfg.dashboard {
        Some(phase) => Some(measure_dashboard(&plane, &access, &shared, phase).await?),
        None => None,
    };

    // A replica restarts; its streams come back with the sidecar's backoff.
    let mut resync = None;
    if cfg.restart {
        let failed_before = shared.counters.failed_connects.load(Ordering::Relaxed)
            + shared.counters.refused.load(Ordering::Relaxed);
        let epoch = shared.epoch.fetch_add(1, Ordering::Relaxed) + 1;
        let t = Instant::now();
        plane.kill(0)?;
        plane.start_again(0).await?;
        let ready = t.elapsed();
        let on_it: Vec<&StreamHandle> = streams.iter().filter(|s| s.spec.replica == 0).collect();
        let within = cfg.wait + Duration::from_millis(5 * cfg.streams as u64);
        wait_for(
            "every stream of the restarted replica to resync",
            within,
            || async { on_it.iter().all(|s| s.synced_in(epoch)).then_some(()) },
        )
        .await?;
        let failed = shared.counters.failed_connects.load(Ordering::Relaxed)
            + shared.counters.refused.load(Ordering::Relaxed)
            - failed_before;
        resync = Some(report::Resync {
            streams: on_it.len(),
            ready,
            synced: t.elapsed(),
            failed,
        });
    }
    let report = Report::new(report::Inputs {
        cfg: &cfg,
        shared: &shared,
        connect_time,
        base,
        connected,
        changes: (before, after),
        missing,
        resync,
        dashboard,
        total: started.elapsed(),
    });
    drop(joined);
    drop(streams);
    Ok(report)
}

/// Every stream reports traffic each second; the control plane's CPU over
/// `phase` without a dashboard, then over `phase` with `/api/graph` asked
/// back to back: the CPU above the first rate, per answer, is what each
/// of an open page's answers (one every 2 s) costs. Asking back to back
/// makes it the bulk of the second phase, so the background's noise
/// hardly moves it.
async fn measure_dashboard(
    plane: &Plane,
    access: &CpAccess,
    shared: &Shared,
    phase: Duration,
) -> anyhow::Result<report::DashboardCost> {
    let answer = access
        .admin_client()
        .await?
        .dashboard(pb::DashboardRequest {})
        .await?
        .into_inner();
    anyhow::ensure!(
        !answer.address.is_empty(),
        "the control plane serves no dashboard"
    );
    let url = format!("http://{}/api/graph", answer.address);
    shared.reporting.store(true, Ordering::Relaxed);
    // Every stream's ring has a few samples before anything is measured.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let u0 = plane.usage()?;
    let t0 = Instant::now();
    tokio::time::sleep(phase).await;
    let reports_only = plane.usage()?.since(&u0).cpu.as_secs_f64() / t0.elapsed().as_secs_f64();

    let u1 = plane.usage()?;
    let t1 = Instant::now();
    let mut times = Vec::new();
    let mut bytes = 0;
    let mut edges = 0;
    while t1.elapsed() < phase {
        let t = Instant::now();
        let r = crate::util::http_get(&url).await?;
        times.push(t.elapsed());
        anyhow::ensure!(r.status.is_success(), "{url}: {}", r.status);
        if bytes == 0 {
            bytes = r.body.len();
            let g: serde_json::Value = serde_json::from_str(&r.body)?;
            edges = g["edges"].as_array().map_or(0, Vec::len);
        }
    }
    let end = plane.usage()?;
    let wall = t1.elapsed().as_secs_f64();
    let above = end.since(&u1).cpu.as_secs_f64() - reports_only * wall;
    shared.reporting.store(false, Ordering::Relaxed);
    let polls = times.len();
    times.sort();
    Ok(report::DashboardCost {
        reports_only,
        cpu_per_answer: Duration::from_secs_f64(above.max(0.0) / polls.max(1) as f64),
        polls,
        answer_p50: times.get(polls / 2).copied().unwrap_or_default(),
        answer_max: times.last().copied().unwrap_or_default(),
        bytes,
        edges,
        rss_before: u0.rss_bytes,
        rss_reporting: end.rss_bytes,
    })
}

/// What each stream calls: [`HOT`], then others at random.
fn wanted(rng: &mut Rng, cfg: &SimConfig) -> Vec<String> {
    let mut w = vec![HOT.to_string()];
    while w.len() < cfg.wanted {
        let s = svc(rng.other(cfg.services));
        if !w.contains(&s) {
            w.push(s);
        }
    }
    w
}

/// The certificates, the verifier and the counters the streams share.
async fn shared(plane: &Plane, access: &CpAccess, cfg: &SimConfig) -> anyhow::Result<Shared> {
    let (identities, roots) = issue(access, cfg.services).await?;
    let roots = weft_proto::identity::root_store(&roots)?;
    let verifier = weft_proto::identity::SpiffeServerVerifier::new(
        roots,
        weft_proto::identity::SpiffeId::control_plane("weft.local"),
    );
    Ok(Shared {
        urls: plane.urls(),
        verifier: Arc::new(verifier),
        identities,
        changes: (0..cfg.changes).map(|_| Change::default()).collect(),
        counters: Counters::default(),
        epoch: 0.into(),
        intercept: cfg.intercept,
        reporting: false.into(),
        // 127.0.0.0/8 is all loopback: four source addresses, four times
        // the ephemeral ports.
        sources: (1..=4).map(|i| IpAddr::from([127, 0, 0, i])).collect(),
    })
}

/// A certificate per service, as a sidecar gets its first one: a join
/// token for the service, a CSR for its SPIFFE ID, `Identity.Issue`.
async fn issue(
    access: &CpAccess,
    services: usize,
) -> anyhow::Result<(
    HashMap<String, tonic::transport::Identity>,
    Vec<rustls_pki_types::CertificateDer<'static>>,
)> {
    use rcgen::{CertificateParams, KeyPair, SanType};
    let mut admin = access.admin_client().await?;
    let channel = weft_control_plane::cli::connect_tls(
        &access.url,
        &access.credential,
        Duration::from_secs(30),
    )
    .await?;
    let mut identity = pb::identity_client::IdentityClient::new(channel);
    let mut out = HashMap::new();
    let mut roots = Vec::new();
    for i in 0..services {
        let service = svc(i);
        let token = admin
            .create_token(pb::CreateTokenRequest {
                service: service.clone(),
                ttl_seconds: 3600,
            })
            .await?
            .into_inner()
            .token;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://weft.local/service/{service}").try_into()?,
        )];
        let csr = params.serialize_request(&key)?;
        let issued = identity
            .issue(pb::IssueRequest {
                csr: csr.der().to_vec(),
                token,
            })
            .await?
            .into_inner();
        if roots.is_empty() {
            roots = issued.roots.iter().map(|r| r.clone().into()).collect();
        }
        let chain: String = issued
            .chain
            .iter()
            .map(|c| weft_proto::identity::pem("CERTIFICATE", c))
            .collect();
        let key = weft_proto::identity::pem("PRIVATE KEY", &key.serialize_der());
        out.insert(service, tonic::transport::Identity::from_pem(chain, key));
    }
    Ok((out, roots))
}

/// Applies a `Service` for each of `count` services, 100 to an apply (etcd
/// takes at most 128 operations in a transaction by default, and an apply
/// is one); with `timeout_ms`, every one with that request timeout.
async fn apply_services(
    access: &CpAccess,
    count: usize,
    timeout_ms: Option<u64>,
) -> anyhow::Result<()> {
    let mut admin = access.admin_client().await?;
    let ids: Vec<usize> = (0..count).collect();
    for chunk in ids.chunks(100) {
        let yaml: String = chunk
            .iter()
            .map(|&i| service_yaml(&svc(i), timeout_ms))
            .collect();
        apply(&mut admin, &yaml).await?;
    }
    Ok(())
}

fn service_yaml(name: &str, timeout_ms: Option<u64>) -> String {
    let timeouts = timeout_ms
        .map(|t| format!(", timeouts: {{request: {t}ms}}"))
        .unwrap_or_default();
    format!(
        "---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{protocol: grpc{timeouts}}}\n"
    )
}

type Admin = pb::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        weft_control_plane::cli::Bearer,
    >,
>;

async fn apply(admin: &mut Admin, yaml: &str) -> anyhow::Result<()> {
    let resources = weft_control_plane::resource::parse_documents(yaml)?;
    admin
        .apply(pb::ApplyRequest {
            resources: resources.iter().map(pb::Resource::from).collect(),
            dry_run: false,
        })
        .await?;
    Ok(())
}

/// Background churn until aborted: every tick an instance of another
/// service joins and the one from three ticks before leaves; every third
/// tick another service is applied with a new timeout.
async fn churn(shared: Arc<Shared>, access: CpAccess, cfg: SimConfig) -> anyhow::Result<()> {
    let mut rng = Rng(7);
    let mut admin = access.admin_client().await?;
    let mut alive: std::collections::VecDeque<StreamHandle> = Default::default();
    let mut tick = tokio::time::interval(cfg.churn_interval);
    for j in 0.. {
        tick.tick().await;
        let spec = StreamSpec {
            index: cfg.streams + cfg.changes + j,
            service: svc(rng.other(cfg.services)),
            instance: format!("churn-{j}"),
            wanted: vec![svc(rng.other(cfg.services))],
            replica: j % cfg.replicas,
            measured: false,
        };
        alive.push_back(StreamHandle::start(shared.clone(), spec, None));
        if alive.len() > 3
            && let Some(old) = alive.pop_front()
        {
            old.leave().await;
        }
        if j % 3 == 2 {
            let name = svc(rng.other(cfg.services));
            apply(&mut admin, &service_yaml(&name, Some(1000 + j as u64))).await?;
        }
    }
    Ok(())
}
