//! `weft-bench`: gRPC unary load, directly and through two Weft sidecars
//! (real `weft-sidecar` processes from the same build; a plaintext pair from
//! static configs, mTLS pairs joined to a control plane: with resilience,
//! 1% tracing and authorization (as production runs), bare, and bare with 100% and 1% of traces exported over OTLP to a receiver
//! in this process, bare with 100 route rules to walk), and through a
//! gateway in front of one sidecar, at a fixed rate and at the maximum rate. Prints latency percentiles, achieved RPS,
//! the added latency of each pair, and each sidecar's peak RSS and CPU time.
//!
//! Also through the floor (two bare TCP relays, `peers.rs`) and, with
//! `--envoy`, an Envoy pair; `--pin` puts the load generator alone on one
//! core and everything it measures on the other (`tests/bench/peers.sh`
//! does both). Ends with the side-by-side table and issue 13's targets
//! (`versus.rs`). The warm-up, not measured, also makes streaming calls on
//! every gRPC path and TCP round trips through an opaque TCP pair
//! (`opaque.rs`), so that a build trained on this benchmark has them in
//! its profile.
//!
//! Build and run (release):
//!   cargo build --release --workspace --bins && target/release/weft-bench
//!
//! Runs are interleaved (direct, mesh, direct, mesh, …) so that a noisy
//! machine affects both alike; compare the ratios within one run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::sync::Mutex;
use weft_tests::echo::{client, start_echo};
use weft_tests::mesh::{ControlPlane, write_temp};
use weft_tests::otlp::Collector;
use weft_tests::pb::EchoRequest;
use weft_tests::process::{Proc, free_port};

mod opaque;
mod peers;
mod versus;

#[derive(Debug, Parser)]
#[command(
    name = "weft-bench",
    about = "gRPC latency and throughput, direct vs through two Weft sidecars"
)]
struct Args {
    /// Seconds each path runs per round: at the fixed rate in turns of
    /// `--turn` seconds (the paths take turns), at the maximum rate in one
    /// run per count in flight.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Seconds of each path's turn at the fixed rate; `--seconds` or more
    /// runs each path's round in one go (`tests/bench/critical-path.sh`
    /// records one path at a time).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    turn: u64,
    /// The fixed rate, requests per second.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Requests in flight in the maximum-rate runs, split over two load
    /// threads; with several (`64,96`), each path runs at each count and
    /// its maximum is the best of them. A closed loop finds a proxy's
    /// maximum only at the count where that proxy peaks, and proxies peak
    /// at different counts: on the 2-core machine Envoy's pair at 64–96,
    /// Weft's at 96 (docs/performance.md); fewer than 32 leave the
    /// proxies' core idle between batches.
    #[arg(long, value_delimiter = ',', default_values_t = [64, 96])]
    concurrency: Vec<usize>,
    /// Request and response payload, bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// How many times each fixed-rate pair (direct, mesh) runs.
    #[arg(long, default_value_t = 2)]
    rounds: u32,
    /// Run only these paths, by name, separated by `|` (e.g. `mTLS
    /// bare|gateway + sidecar` to profile one); the ratio table needs them
    /// all.
    #[arg(long)]
    only: Option<String>,
    /// An Envoy binary: adds a pair of Envoy proxies (mutual TLS between
    /// them) to compare with (`tests/bench/peers.sh` installs one).
    #[arg(long)]
    envoy: Option<std::path::PathBuf>,
    /// The load generator alone on CPU 0; the backend and every proxy on
    /// CPU 1, so that the maximum rate measures CPU per request.
    #[arg(long)]
    pin: bool,
    /// Runs as one bare TCP relay, `LISTEN=TARGET` (the floor's pair is two).
    #[arg(long, hide = true)]
    relay: Option<String>,
}

struct Result {
    name: String,
    sent: u64,
    failed: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Result {
    /// Pools another turn of the same path into this one (latencies
    /// unsorted until the last).
    fn absorb(&mut self, other: Result) {
        self.sent += other.sent;
        self.failed += other.failed;
        self.elapsed += other.elapsed;
        self.latencies.extend(other.latencies);
    }

    fn pct(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i =
            ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len()) - 1;
        self.latencies[i]
    }
    fn rps(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
}

/// What a load loop calls: the echo service over gRPC, or an HTTP/1.1 app
/// by `GET /bench` with a `Host` (what a gateway routes by).
#[derive(Clone)]
enum Caller {
    Grpc(weft_tests::pb::echo_client::EchoClient<tonic::transport::Channel>),
    Http(Box<HttpCaller>),
}

#[derive(Clone)]
struct HttpCaller {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<bytes::Bytes>,
    >,
    uri: http::Uri,
    host: &'static str,
}

impl Caller {
    async fn new(addr: SocketAddr, host: Option<&'static str>) -> anyhow::Result<Self> {
        Ok(match host {
            None => Caller::Grpc(client(addr).await?),
            Some(host) => {
                let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
                http.set_nodelay(true);
                Caller::Http(Box::new(HttpCaller {
                    client: hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .build(http),
                    uri: format!("http://{addr}/bench").parse()?,
                    host,
                }))
            }
        })
    }

    /// One call; `Ok` only for a success read whole.
    async fn call(&mut self, payload: usize) -> anyhow::Result<()> {
        match self {
            Caller::Grpc(c) => {
                let req = EchoRequest {
                    payload: vec![1; payload],
                    ..Default::default()
                };
                c.unary(req).await?;
            }
            Caller::Http(h) => {
                use http_body_util::BodyExt;
                let req = http::Request::get(h.uri.clone())
                    .header("host", h.host)
                    .body(http_body_util::Empty::new())?;
                let resp = h.client.request(req).await?;
                anyhow::ensure!(resp.status().is_success(), "HTTP {}", resp.status());
                resp.into_body().collect().await?;
            }
        }
        Ok(())
    }
}

fn us(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1e6)
}

/// Open loop at `rate`: one request per tick, each in its own task, so a
/// slow response never delays the next send. Latency is measured from the
/// moment the request is handed to the client: the timer wheel's
/// millisecond granularity would otherwise add up to 1 ms to every sample.
async fn fixed_rate(
    name: &str,
    c: &Caller,
    rate: u32,
    seconds: u64,
    payload: usize,
) -> anyhow::Result<Result> {
    let lat = Arc::new(Mutex::new(Vec::with_capacity(
        rate as usize * seconds as usize,
    )));
    let failed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let total = u64::from(rate) * seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..total {
        tick.tick().await;
        let (mut c, lat, failed) = (c.clone(), lat.clone(), failed.clone());
        tasks.spawn(async move {
            let sent = Instant::now();
            match tokio::time::timeout(Duration::from_secs(5), c.call(payload)).await {
                Ok(Ok(_)) => lat.lock().await.push(sent.elapsed()),
                _ => {
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let mut latencies = std::mem::take(&mut *lat.lock().await);
    latencies.sort();
    Ok(Result {
        name: name.into(),
        sent: total,
        failed: failed.load(std::sync::atomic::Ordering::Relaxed),
        elapsed,
        latencies,
    })
}

/// The CPU time each of a path's sidecars used during a run, by label.
type Used = Vec<(&'static str, Duration)>;

/// Runs one measurement and returns it with the CPU time each of the
/// path's sidecars used meanwhile.
async fn measured(
    p: &Path,
    run: impl std::future::Future<Output = anyhow::Result<Result>>,
) -> anyhow::Result<(Result, Used)> {
    let before: Vec<Duration> = p
        .sidecars
        .iter()
        .map(|(_, pid)| usage(*pid).map(|u| u.1))
        .collect::<anyhow::Result<_>>()?;
    let r = run.await?;
    let mut used = Vec::with_capacity(before.len());
    for ((label, pid), b) in p.sidecars.iter().zip(before) {
        used.push((*label, usage(*pid)?.1 - b));
    }
    Ok((r, used))
}

/// Threads the maximum-rate load is split over, each with its own
/// runtime and connection.
///
/// With one, the calls in flight move as one batch: the load generator
/// reads every answer, then writes every next call in one flush, and the
/// proxies' core sits idle while it does (`perf sched` saw that core 25%
/// idle at Weft's maximum). The maximum rate then measured the load
/// generator's time per call added to the proxies', not the proxies' alone.
/// With two, one thread's batch is at the proxies while the other's
/// answers are read.
const LOAD_THREADS: usize = 2;

/// Closed loop: `concurrency` callers, split over [`LOAD_THREADS`]
/// threads, send back to back for `seconds`.
async fn max_rate(
    name: &str,
    target: (SocketAddr, Option<&'static str>),
    concurrency: usize,
    seconds: u64,
    payload: usize,
) -> anyhow::Result<Result> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut threads = Vec::with_capacity(LOAD_THREADS);
    for k in 0..LOAD_THREADS {
        let callers = concurrency / LOAD_THREADS + usize::from(k < concurrency % LOAD_THREADS);
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("load-{k}"))
            .spawn(move || {
                let run = || -> anyhow::Result<(Vec<Duration>, u64)> {
                    tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?
                        .block_on(closed_loop(target, callers, deadline, payload))
                };
                let _ = tx.send(run());
            })?;
        threads.push(rx);
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for rx in threads {
        let (l, f) = rx
            .await
            .context("a load thread ended without its results")??;
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Result {
        name: name.into(),
        sent: latencies.len() as u64 + failed,
        failed,
        elapsed,
        latencies,
    })
}

/// `callers` workers on one connection, each sending its next call as the
/// last one ends, until `deadline`: their latencies and failures.
async fn closed_loop(
    (addr, host): (SocketAddr, Option<&'static str>),
    callers: usize,
    deadline: Instant,
    payload: usize,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    let c = Caller::new(addr, host).await?;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let mut c = c.clone();
        workers.spawn(async move {
            let (mut lat, mut failed) = (Vec::new(), 0u64);
            while Instant::now() < deadline {
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(5), c.call(payload)).await {
                    Ok(Ok(_)) => lat.push(t.elapsed()),
                    _ => failed += 1,
                }
            }
            (lat, failed)
        });
    }
    let (mut latencies, mut failed) = (Vec::new(), 0);
    while let Some(r) = workers.join_next().await {
        let (l, f) = r?;
        latencies.extend(l);
        failed += f;
    }
    Ok((latencies, failed))
}

/// A process's resident memory now (kB), from /proc: anonymous (heap,
/// stacks) and file-backed (mostly the binary's code, shared by every
/// process of that binary, which RSS counts whole in each).
fn resident(pid: i32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok((
        status_kb(&status, "RssAnon:")?,
        status_kb(&status, "RssFile:")?,
    ))
}

/// A `kB` field of `/proc/PID/status`.
fn status_kb(status: &str, name: &str) -> anyhow::Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {name} in /proc/PID/status"))
}

/// Peak RSS (kB) and CPU time (user + system) of a process, from /proc.
fn usage(pid: i32) -> anyhow::Result<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status_kb(&status, "VmHWM:")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|x| x.1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    Ok((hwm, Duration::from_millis(ticks * 10)))
}

/// Streaming calls of each kind through one gRPC path, in the warm-up
/// only: they are not measured, but a profile-guided build trained on
/// this benchmark (deploy/pgo.sh) then has the streaming code in its
/// profile too.
async fn stream_calls(path: &str, addr: SocketAddr, payload: usize) -> anyhow::Result<()> {
    const MESSAGES: u32 = 20;
    let mut c = client(addr).await?;
    let req = move |i: u32| EchoRequest {
        message: format!("m{i}"),
        payload: vec![0; payload],
        count: MESSAGES,
        ..Default::default()
    };
    for i in 0..50 {
        let s = c.server_stream(req(i)).await?.into_inner();
        expect_replies(s, MESSAGES, path, "server").await?;
        let r = c
            .client_stream(futures_util::stream::iter((0..MESSAGES).map(req)))
            .await?
            .into_inner();
        anyhow::ensure!(
            r.seq as usize == MESSAGES as usize * payload,
            "{path}: client stream's server saw {} payload bytes",
            r.seq
        );
        let s = c
            .bidi(futures_util::stream::iter((0..MESSAGES).map(req)))
            .await?
            .into_inner();
        expect_replies(s, MESSAGES, path, "bidi").await?;
    }
    Ok(())
}

/// Reads a reply stream to its end and checks how many replies it had.
async fn expect_replies(
    mut s: tonic::Streaming<weft_tests::pb::EchoReply>,
    want: u32,
    path: &str,
    kind: &str,
) -> anyhow::Result<()> {
    let mut n = 0;
    while s.message().await?.is_some() {
        n += 1;
    }
    anyhow::ensure!(
        n == want,
        "{path}: {kind} stream gave {n} of {want} replies"
    );
    Ok(())
}

async fn start_sidecar(args: &[String], admin: SocketAddr) -> anyhow::Result<Proc> {
    let mut p = Proc::spawn("weft-sidecar", args)?;
    p.wait_ready("a sidecar", admin).await?;
    Ok(p)
}

/// One way to reach the backend, and the sidecars on it.
struct Path {
    name: &'static str,
    addr: SocketAddr,
    /// HTTP/1.1 with this `Host`; `None`: gRPC.
    http: Option<&'static str>,
    /// (label, pid) of each sidecar on the path.
    sidecars: Vec<(&'static str, i32)>,
}

fn port() -> anyhow::Result<SocketAddr> {
    Ok(format!("127.0.0.1:{}", free_port()?).parse()?)
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

/// Writes a join token for `service` from `cp` into `dir`; returns its path.
async fn token_file(
    dir: &std::path::Path,
    cp: &ControlPlane,
    service: &str,
) -> anyhow::Result<String> {
    let token = cp.token(service).await?;
    Ok(write_temp(dir, service, &token)?.display().to_string())
}

/// A pair joined to `cp`: a server side in front of `app` and a client
/// side with an upstream port for it, each with its extra flags; returns
/// the client side, the server side and that port.
async fn joined_pair(
    dir: &std::path::Path,
    cp: &ControlPlane,
    (server_service, client_service): (&str, &str),
    app: SocketAddr,
    server_extra: &[String],
    client_extra: &[String],
) -> anyhow::Result<(Proc, Proc, SocketAddr)> {
    let token = token_file(dir, cp, server_service).await?;
    let mut server_args = strings(&[
        "--service",
        server_service,
        "--app",
        &app.to_string(),
        "--control-plane",
        &cp.url(),
        "--token-file",
        &token,
    ]);
    server_args.extend_from_slice(server_extra);
    let (server, _) = sidecar(server_args).await?;
    let up = port()?;
    let token = token_file(dir, cp, client_service).await?;
    let mut client_args = strings(&[
        "--service",
        client_service,
        "--control-plane",
        &cp.url(),
        "--token-file",
        &token,
        "--upstream",
        &format!("{server_service}={up}"),
    ]);
    client_args.extend_from_slice(client_extra);
    let (client, _) = sidecar(client_args).await?;
    Ok((client, server, up))
}

/// A sidecar process on fresh ports; returns it and its inbound address.
async fn sidecar(args: Vec<String>) -> anyhow::Result<(Proc, SocketAddr)> {
    let (inbound, admin, outbound) = (port()?, port()?, port()?);
    let mut all = args;
    all.extend(strings(&[
        "--inbound",
        &inbound.to_string(),
        "--admin",
        &admin.to_string(),
        "--outbound",
        &outbound.to_string(),
        "--log",
        "warn",
    ]));
    Ok((start_sidecar(&all, admin).await?, inbound))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(spec) = &args.relay {
        // One thread, as each proxy of a pair has: two workers sharing
        // one pinned core would only take turns.
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(peers::relay(spec));
    }
    // Pinned, the load generator has one core: a second worker there only
    // takes turns with the first, and their wake-ups of each other cost
    // more than the calls (perf sched saw the two trade the core every
    // 5 µs for a millisecond while the proxies' core sat idle, so that the
    // maximum rate measured the load generator, not the proxies).
    let mut runtime = if args.pin {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    runtime.enable_all().build()?.block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    weft_proto::identity::install_provider();
    anyhow::ensure!(
        !args.concurrency.is_empty() && !args.concurrency.contains(&0),
        "--concurrency {:?}: give one or more counts of calls in flight, each at least 1 (e.g. 64,96)",
        args.concurrency
    );
    if args.pin {
        anyhow::ensure!(
            peers::cores() >= 2,
            "--pin needs two cores, this process may use {}",
            peers::cores()
        );
        peers::pin_process(std::process::id() as i32, peers::LOAD_CPU)?;
    }
    // Every proxy's code starts out of the page cache, so that RSS is
    // compared from the same start (peers::evict_from_page_cache).
    peers::evict_from_page_cache(&weft_tests::process::bin("weft-sidecar")?)?;
    if let Some(envoy) = &args.envoy {
        peers::evict_from_page_cache(envoy)?;
    }
    let backend = backend(args.pin).await?;
    let dir = tempfile::tempdir()?;

    // Plaintext pair: static configs, no control plane.
    let empty = write_temp(dir.path(), "empty.yaml", "services: []\n")?
        .display()
        .to_string();
    let (plain_server, plain_in) = sidecar(strings(&[
        "--service",
        "echo",
        "--app",
        &backend.addr.to_string(),
        "--config",
        &empty,
    ]))
    .await?;
    let mesh = write_temp(
        dir.path(),
        "mesh.yaml",
        &format!("services:\n  - name: echo\n    endpoints:\n      - address: {plain_in}\n"),
    )?;
    let plain_up = port()?;
    let (plain_client, _) = sidecar(strings(&[
        "--service",
        "bench",
        "--config",
        &mesh.display().to_string(),
        "--upstream",
        &format!("echo={plain_up}"),
    ]))
    .await?;

    // mTLS pairs: joined to a control plane (in this process), certificates
    // from its CA, TLS 1.3 between the sidecars. One as production runs
    // (issue 13's targets are for it): the resilience defaults (retries
    // with a budget, outlier detection) plus a request timeout and limits
    // configured, 1% of traces exported, and an AuthorizationPolicy
    // admitting only the caller's identity to the echo methods; one bare (a single try, ejection out of
    // reach), to see what resilience costs when nothing fails.
    let cp = ControlPlane::start(None, Default::default()).await?;
    cp.apply_yaml(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo-tls}\nspec:\n  retries: {attempts: 3, perTryTimeout: 1s}\n  timeouts: {request: 5s}\n  circuitBreaker: {consecutiveFailures: 5, maxConcurrentRequests: 10000, maxPendingRequests: 10000}\n---\n\
         apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: echo-tls-callers}\nspec:\n  service: echo-tls\n  rules:\n    - from: [bench-tls]\n      grpcMethods: [\"/weft.test.v1.Echo/*\"]\n---\n\
         apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo-bare}\nspec:\n  retries: {attempts: 1}\n  circuitBreaker: {consecutiveFailures: 1000000000}\n---\n\
         apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo-t100}\nspec:\n  retries: {attempts: 1}\n  circuitBreaker: {consecutiveFailures: 1000000000}\n---\n\
         apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo-t1}\nspec:\n  retries: {attempts: 1}\n  circuitBreaker: {consecutiveFailures: 1000000000}\n",
    )
    .await?;
    // Tracing's cost: bare pairs again, exporting every trace or 1% of them
    // to an OTLP receiver in this process (it counts the spans, keeps none).
    // What routing costs: a service whose calls walk 100 rules (each
    // matching a header the calls do not carry) before the catch-all.
    cp.apply_yaml(&hundred_rules("echo-r100")).await?;
    // The gateway's hop: a gateway in front of one sidecar, routing every
    // call to it (compared with a pair of sidecars: two hops each). Its
    // rules take the Gateway's policy, not the backend's: without retries,
    // as the bare pair, so that the two do the same work.
    cp.apply_yaml(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo-gw}\nspec:\n  retries: {attempts: 1}\n  circuitBreaker: {consecutiveFailures: 1000000000}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gateway}\nspec:\n  listeners: [{name: web, port: 8080, protocol: HTTP}]\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: to-echo}\nspec:\n  parentRefs: [{kind: Gateway, name: gateway}]\n  rules: [{backendRefs: [{name: echo-gw}], retry: {attempts: 1}}]\n---\n\
         apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: web-gw}\nspec:\n  protocol: http\n  retries: {attempts: 1}\n  circuitBreaker: {consecutiveFailures: 1000000000}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: to-web}\nspec:\n  parentRefs: [{kind: Gateway, name: gateway}]\n  hostnames: [web.bench]\n  rules: [{backendRefs: [{name: web-gw}], retry: {attempts: 1}}]\n",
    )
    .await?;
    let collector = Collector::start_on_thread()?;
    collector.discard();
    let endpoint = collector.endpoint();
    let traced = |ratio: &str| strings(&["--otlp-endpoint", &endpoint, "--trace-sampling", ratio]);
    let mut pairs = Vec::new();
    for (server_service, client_service, extra) in [
        ("echo-tls", "bench-tls", traced("0.01")),
        ("echo-bare", "bench-bare", vec![]),
        ("echo-t100", "bench-t100", traced("1")),
        ("echo-t1", "bench-t1", traced("0.01")),
        ("echo-r100", "bench-r100", vec![]),
    ] {
        let pair = joined_pair(
            dir.path(),
            &cp,
            (server_service, client_service),
            backend.addr,
            &extra,
            &extra,
        )
        .await?;
        pairs.push(pair);
    }
    let (tls_client, tls_server, tls_up) = pairs.remove(0);
    let (bare_client, bare_server, bare_up) = pairs.remove(0);
    let (t100_client, t100_server, t100_up) = pairs.remove(0);
    let (t1_client, t1_server, t1_up) = pairs.remove(0);
    let (r100_client, r100_server, r100_up) = pairs.remove(0);
    // Opaque TCP over mTLS, for the warm-up only (opaque.rs).
    let tcp_app = opaque::echo_backend().await?;
    let tcp = strings(&["--protocol", "tcp"]);
    let (tcp_client, tcp_server, tcp_up) = joined_pair(
        dir.path(),
        &cp,
        ("echo-tcp", "bench-tcp"),
        tcp_app,
        &tcp,
        &[],
    )
    .await?;
    // The same calls over opaque TCP through a pair: mTLS between the
    // sidecars, no HTTP/2 in either (the caller's connection reaches the
    // backend end to end). What Weft's transport costs alone; the mTLS bare
    // pair's cost above it is the four HTTP/2 ends and the routing.
    let (opaque_client, opaque_server, opaque_up) = joined_pair(
        dir.path(),
        &cp,
        ("echo-grpc-tcp", "bench-grpc-tcp"),
        backend.addr,
        &tcp,
        &[],
    )
    .await?;
    let web = weft_tests::http_app::start_http_app("web").await?;
    let (gw, gw_server, gw_addr) = gateway_path(&cp, dir.path(), backend.addr).await?;
    let (relay_client, relay_server, relay_addr) = peers::relay_pair(backend.addr).await?;
    let envoy = match &args.envoy {
        Some(bin) => Some(peers::envoy_pair(bin, dir.path(), backend.addr).await?),
        None => None,
    };
    probe(
        "the bare TCP relays",
        relay_addr,
        [&relay_client, &relay_server],
    )
    .await?;
    if let Some((c, s, addr)) = &envoy {
        probe("Envoy's pair", *addr, [c, s]).await?;
    }
    let web_server = web_sidecar(&cp, dir.path(), web.addr).await?;

    let paths = [
        Path {
            name: "direct",
            addr: backend.addr,
            http: None,
            sidecars: vec![],
        },
        Path {
            name: "plaintext pair",
            addr: plain_up,
            http: None,
            sidecars: vec![
                ("plaintext client-side", plain_client.pid()),
                ("plaintext server-side", plain_server.pid()),
            ],
        },
        Path {
            name: "mTLS pair",
            addr: tls_up,
            http: None,
            sidecars: vec![
                ("mTLS client-side", tls_client.pid()),
                ("mTLS server-side", tls_server.pid()),
            ],
        },
        Path {
            name: "mTLS bare",
            addr: bare_up,
            http: None,
            sidecars: vec![
                ("bare client-side", bare_client.pid()),
                ("bare server-side", bare_server.pid()),
            ],
        },
        Path {
            name: versus::OPAQUE,
            addr: opaque_up,
            http: None,
            sidecars: vec![
                ("opaque client-side", opaque_client.pid()),
                ("opaque server-side", opaque_server.pid()),
            ],
        },
        Path {
            name: "mTLS bare, traced 100%",
            addr: t100_up,
            http: None,
            sidecars: vec![
                ("traced 100% client-side", t100_client.pid()),
                ("traced 100% server-side", t100_server.pid()),
            ],
        },
        Path {
            name: "mTLS bare, traced 1%",
            addr: t1_up,
            http: None,
            sidecars: vec![
                ("traced 1% client-side", t1_client.pid()),
                ("traced 1% server-side", t1_server.pid()),
            ],
        },
        Path {
            name: "mTLS bare, 100 rules",
            addr: r100_up,
            http: None,
            sidecars: vec![
                ("100 rules client-side", r100_client.pid()),
                ("100 rules server-side", r100_server.pid()),
            ],
        },
        Path {
            name: "gateway + sidecar",
            addr: gw_addr,
            http: None,
            sidecars: vec![
                ("gateway", gw.pid()),
                ("behind the gateway", gw_server.pid()),
            ],
        },
        Path {
            name: "HTTP/1.1 direct",
            addr: web.addr,
            http: Some("web.bench"),
            sidecars: vec![],
        },
        Path {
            name: "HTTP/1.1 gateway + sidecar",
            addr: gw_addr,
            http: Some("web.bench"),
            sidecars: vec![
                ("gateway (HTTP/1.1)", gw.pid()),
                ("behind the gateway (HTTP/1.1)", web_server.pid()),
            ],
        },
        Path {
            name: FLOOR,
            addr: relay_addr,
            http: None,
            sidecars: vec![
                ("relay client-side", relay_client.pid()),
                ("relay server-side", relay_server.pid()),
            ],
        },
    ];
    let mut paths = Vec::from(paths);
    if let Some((client, server, addr)) = &envoy {
        paths.push(Path {
            name: ENVOY,
            addr: *addr,
            http: None,
            sidecars: vec![
                ("Envoy client-side", client.pid()),
                ("Envoy server-side", server.pid()),
            ],
        });
    }
    if args.pin {
        for p in &paths {
            for (label, pid) in &p.sidecars {
                peers::pin_process(*pid, peers::PROXY_CPU)
                    .with_context(|| format!("pinning the {label} proxy"))?;
            }
        }
    }

    let paths: Vec<Path> = paths
        .into_iter()
        .filter(|p| {
            args.only
                .as_deref()
                .is_none_or(|o| o.split('|').any(|o| p.name == o))
        })
        .collect();
    // One connection per path for the fixed-rate turns, kept for the whole
    // run as an app keeps its channel.
    let mut callers = Vec::with_capacity(paths.len());
    for p in &paths {
        callers.push(Caller::new(p.addr, p.http).await?);
    }
    eprintln!("warming up…");
    for (p, caller) in paths.iter().zip(&callers) {
        fixed_rate("warmup", caller, args.rate, 2, args.payload).await?;
        if p.http.is_none() {
            stream_calls(p.name, p.addr, args.payload).await?;
        }
    }
    opaque::warm_up(tcp_up, args.payload).await?;

    // Runs alternate between the paths, and each round starts with a
    // different one, so a noisy machine (or a warming cache) hits all alike.
    // Each round ends with every path at its maximum rate, in the same
    // rotated order, so that the maximum too is a median of rounds rather
    // than one run's luck.
    let mut rows: Vec<(String, usize, Result)> = Vec::new();
    let mut maxes: Vec<(String, usize, Result)> = Vec::new();
    let mut cpu: Vec<(String, &'static str, Duration, u64)> = Vec::new();
    // Pinned: how busy the proxies' core was in each maximum-rate run. Far
    // under 100%, the maximum measured the load generator or the calls in
    // flight, not the proxies' CPU per request.
    let mut core: Vec<(u32, &'static str, f64)> = Vec::new();
    // Every maximum-rate run: round, path, calls in flight, rps, core busy.
    let mut sweep: Vec<(u32, &'static str, usize, f64, f64)> = Vec::new();
    for round in 1..=args.rounds {
        // At the fixed rate the paths take turns a second at a time, each
        // slice in a rotated order, and each path's seconds of the round
        // are pooled. A path's added latency is its p50 less direct's, two
        // figures a few tens of µs apart on a shared machine whose speed
        // drifts over seconds; run back to back for the whole round, the
        // floor's could come out below direct's (a negative floor, seen).
        let label = format!("round {round}");
        let run = format!("@{} round {round}", args.rate);
        let mut pooled: Vec<Option<(Result, Used)>> = paths.iter().map(|_| None).collect();
        let turns = args.seconds.div_ceil(args.turn);
        for slice in 0..turns {
            let seconds = args.turn.min(args.seconds - slice * args.turn);
            for k in 0..paths.len() {
                let i = (k + slice as usize + round as usize - 1) % paths.len();
                let p = &paths[i];
                eprintln!(
                    "round {round}: {} at {} rps for {seconds} s (turn {} of {turns})…",
                    p.name,
                    args.rate,
                    slice + 1
                );
                let name = format!("{} @{}", p.name, args.rate);
                let turn = fixed_rate(&name, &callers[i], args.rate, seconds, args.payload);
                let (r, used) = measured(p, turn).await?;
                match &mut pooled[i] {
                    None => pooled[i] = Some((r, used)),
                    Some((all, all_used)) => {
                        all.absorb(r);
                        for ((_, t), (_, more)) in all_used.iter_mut().zip(used) {
                            *t += more;
                        }
                    }
                }
            }
        }
        for (i, p) in pooled.into_iter().enumerate() {
            let (mut r, used) = p.context("every path runs in every slice")?;
            r.latencies.sort();
            for (sidecar, t) in used {
                cpu.push((run.clone(), sidecar, t, args.seconds));
            }
            rows.push((label.clone(), i, r));
        }

        let label = format!("max round {round}");
        let run = format!("max rate round {round}");
        let first = maxes.len();
        for k in 0..paths.len() {
            let i = (k + round as usize - 1) % paths.len();
            let p = &paths[i];
            // The best of the counts in flight: the path's maximum, and
            // its CPU and core at that count.
            let mut best: Option<((Result, Used), f64)> = None;
            for &n in &args.concurrency {
                eprintln!(
                    "round {round}: {} at the maximum rate, {n} in flight…",
                    p.name
                );
                let name = format!("{} max, {n} in flight", p.name);
                let target = (p.addr, p.http);
                let at_max = max_rate(&name, target, n, args.seconds, args.payload);
                let before = peers::core_time(peers::PROXY_CPU)?;
                let measured = measured(p, at_max).await?;
                let after = peers::core_time(peers::PROXY_CPU)?;
                let (busy, total) = (after.0 - before.0, after.1 - before.1);
                let busy = busy as f64 / total.max(1) as f64;
                sweep.push((round, p.name, n, measured.0.rps(), busy));
                if best
                    .as_ref()
                    .is_none_or(|((b, _), _)| measured.0.rps() > b.rps())
                {
                    best = Some((measured, busy));
                }
            }
            let ((r, used), busy) = best.context("--concurrency: no count")?;
            core.push((round, p.name, busy));
            for (sidecar, t) in used {
                cpu.push((run.clone(), sidecar, t, args.seconds));
            }
            maxes.push((label.clone(), i, r));
        }
        maxes[first..].sort_by_key(|(_, i, _)| *i);
    }
    rows.append(&mut maxes);

    println!(
        "\ngRPC unary, {} B payload, one HTTP/2 connection from the client; {} s per run\n",
        args.payload, args.seconds
    );
    println!("| run | sent | failed | achieved rps | p50 µs | p90 µs | p99 µs | p99.9 µs |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (_, _, r) in &rows {
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {} |",
            r.name,
            r.sent,
            r.failed,
            r.rps(),
            us(r.pct(0.5)),
            us(r.pct(0.9)),
            us(r.pct(0.99)),
            us(r.pct(0.999))
        );
    }
    println!("\nAdded by two sidecars (pair − direct, same round):\n");
    println!(
        "| round | plaintext p50 | plaintext p99 | mTLS p50 | mTLS p99 | mTLS bare p50 | mTLS/plaintext p50 | mTLS/bare p50 (cost of resilience) | traced 100%/bare p50 | traced 1%/bare p50 | 100 rules/bare p50 | gateway+sidecar/bare pair p50 | HTTP/1.1 gateway+sidecar added p50 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let added = |a: Duration, b: Duration| b.as_secs_f64() - a.as_secs_f64();
    let (mut tls_ratios, mut resilience_ratios) = (Vec::new(), Vec::new());
    let (mut t100_ratios, mut t1_ratios) = (Vec::new(), Vec::new());
    let (mut r100_ratios, mut gw_ratios) = (Vec::new(), Vec::new());
    for chunk in rows.chunks(paths.len()) {
        if let [
            (label, _, d),
            (_, _, p),
            (_, _, t),
            (_, _, b),
            (_, _, t100),
            (_, _, t1),
            (_, _, r100),
            (_, _, g),
            (_, _, hd),
            (_, _, hg),
            ..,
        ] = chunk
        {
            let p50 = |r: &Result| added(d.pct(0.5), r.pct(0.5));
            let (pl50, t50, b50) = (p50(p), p50(t), p50(b));
            println!(
                "| {label} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} µs |",
                pl50 * 1e6,
                added(d.pct(0.99), p.pct(0.99)) * 1e6,
                t50 * 1e6,
                added(d.pct(0.99), t.pct(0.99)) * 1e6,
                b50 * 1e6,
                t50 / pl50,
                t50 / b50,
                p50(t100) / b50,
                p50(t1) / b50,
                p50(r100) / b50,
                p50(g) / b50,
                added(hd.pct(0.5), hg.pct(0.5)) * 1e6,
            );
            if label.starts_with("round") {
                tls_ratios.push(t50 / pl50);
                resilience_ratios.push(t50 / b50);
                t100_ratios.push(p50(t100) / b50);
                t1_ratios.push(p50(t1) / b50);
                r100_ratios.push(p50(r100) / b50);
                gw_ratios.push(p50(g) / b50);
            }
        }
    }
    println!(
        "| median of {} rounds | | | | | | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | |",
        args.rounds,
        median(&mut tls_ratios),
        median(&mut resilience_ratios),
        median(&mut t100_ratios),
        median(&mut t1_ratios),
        median(&mut r100_ratios),
        median(&mut gw_ratios)
    );
    gateway_hop(&rows, args.rounds, args.rate);
    versus::print(&rows, &cpu, &paths, args.rounds)?;
    println!(
        "\nSpans received by the OTLP receiver: {}",
        collector.received()
    );
    println!("\nSidecars:\n");
    println!(
        "| sidecar | peak RSS | at the end: anonymous (heap, stacks) | at the end: file-backed (code; shared by all sidecars of one binary) |"
    );
    println!("|---|---:|---:|---:|");
    let mb = |kb: u64| kb as f64 / 1024.0;
    for p in &paths {
        for (label, pid) in &p.sidecars {
            let (anon, file) = resident(*pid)?;
            println!(
                "| {label} | {:.1} MB | {:.1} MB | {:.1} MB |",
                mb(usage(*pid)?.0),
                mb(anon),
                mb(file)
            );
        }
    }
    if args.pin {
        println!(
            "\nThe proxies' core (CPU {}) at the maximum rate, every process on it (backend, proxies, kernel):\n",
            peers::PROXY_CPU
        );
        println!("| round | path | busy |");
        println!("|---|---|---:|");
        for (round, path, busy) in &core {
            println!("| {round} | {path} | {:.0}% |", busy * 100.0);
        }
    }
    if args.concurrency.len() > 1 {
        println!(
            "\nEvery maximum-rate run (a path's maximum in a round is the best of its counts in flight):\n"
        );
        println!("| round | path | in flight | rps | proxies' core busy |");
        println!("|---|---|---:|---:|---:|");
        for (round, path, n, rps, busy) in &sweep {
            println!(
                "| {round} | {path} | {n} | {rps:.0} | {:.0}% |",
                busy * 100.0
            );
        }
    }
    println!("\n| run | sidecar | CPU | of a core |");
    println!("|---|---|---:|---:|");
    for (run, label, t, secs) in &cpu {
        println!(
            "| {run} | {label} | {:.2} s | {:.0}% |",
            t.as_secs_f64(),
            100.0 * t.as_secs_f64() / *secs as f64
        );
    }
    // The sidecars stop the way an orchestrator stops them, with SIGTERM
    // and a wait, all at once: a build instrumented for profile-guided
    // optimisation (deploy/pgo.sh) writes its profile only on a clean exit.
    drop(envoy);
    let mut sidecars = [
        plain_client,
        plain_server,
        tls_client,
        tls_server,
        bare_client,
        bare_server,
        t100_client,
        t100_server,
        t1_client,
        t1_server,
        r100_client,
        r100_server,
        gw,
        gw_server,
        web_server,
        tcp_client,
        tcp_server,
        opaque_client,
        opaque_server,
    ];
    for s in &sidecars {
        s.signal(libc::SIGTERM);
    }
    for s in &mut sidecars {
        s.wait(Duration::from_secs(30))?;
    }
    drop((relay_client, relay_server));
    Ok(())
}

/// A Service (bare policy) and 100 rules on it, in GRPCRoutes of at most
/// 16 rules (the Gateway API's bound): 99 matching a header the
/// benchmark's calls do not carry, then a catch-all. Every call is checked
/// against all of them.
fn hundred_rules(service: &str) -> String {
    let mut y = format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: {service}}}\nspec:\n  retries: {{attempts: 1}}\n  circuitBreaker: {{consecutiveFailures: 1000000000}}\n"
    );
    let route = |name: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{{kind: Service, name: {service}}}]\n  rules:\n"
        )
    };
    for i in 0..99 {
        if i % 16 == 0 {
            y.push_str(&route(&format!("hundred-{:02}", i / 16)));
        }
        y.push_str(&format!(
            "    - matches: [{{headers: [{{name: x-rule, value: r{i}}}]}}]\n      backendRefs: [{{name: {service}}}]\n"
        ));
    }
    y.push_str(&route("hundred-last"));
    y.push_str(&format!("    - backendRefs: [{{name: {service}}}]\n"));
    y
}

/// A sidecar for `web-gw` beside the HTTP/1.1 app.
async fn web_sidecar(
    cp: &ControlPlane,
    dir: &std::path::Path,
    app: SocketAddr,
) -> anyhow::Result<Proc> {
    let token = token_file(dir, cp, "web-gw").await?;
    let (server, _) = sidecar(strings(&[
        "--service",
        "web-gw",
        "--app",
        &app.to_string(),
        "--protocol",
        "http",
        "--control-plane",
        &cp.url(),
        "--token-file",
        &token,
    ]))
    .await?;
    Ok(server)
}

/// A sidecar for `echo-gw` beside the backend, and a gateway in front of
/// it; returns both and the gateway's public address.
async fn gateway_path(
    cp: &ControlPlane,
    dir: &std::path::Path,
    backend: SocketAddr,
) -> anyhow::Result<(Proc, Proc, SocketAddr)> {
    let token = token_file(dir, cp, "echo-gw").await?;
    let (server, _) = sidecar(strings(&[
        "--service",
        "echo-gw",
        "--app",
        &backend.to_string(),
        "--control-plane",
        &cp.url(),
        "--token-file",
        &token,
    ]))
    .await?;
    let token = token_file(dir, cp, "gateway").await?;
    let public = port()?;
    let (gateway, _) = sidecar(strings(&[
        "--service",
        "gateway",
        "--control-plane",
        &cp.url(),
        "--token-file",
        &token,
        "--gateway-http",
        &public.to_string(),
    ]))
    .await?;
    Ok((gateway, server, public))
}

/// One call through a peer's pair before it is measured: a pair that
/// cannot carry one fails the run with its proxies' logs.
async fn probe(what: &str, addr: SocketAddr, procs: [&Proc; 2]) -> anyhow::Result<()> {
    let call = async {
        let mut c = client(addr).await?;
        c.unary(EchoRequest::default()).await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => anyhow::bail!(
            "a call through {what} failed: {e:#}; logs:\n{}\n{}",
            procs[0].log_text(),
            procs[1].log_text()
        ),
        Err(_) => anyhow::bail!("a call through {what} took over 10 s"),
    }
}

/// The floor's path: two bare TCP relays.
const FLOOR: &str = "bare TCP relays";
/// Envoy's pair (with `--envoy`).
const ENVOY: &str = "Envoy mTLS pair";

/// The echo backend: on this runtime, or with `--pin` on a thread of its
/// own pinned beside the proxies.
async fn backend(pin: bool) -> anyhow::Result<weft_tests::echo::EchoServerHandle> {
    if !pin {
        return start_echo("backend").await;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("backend".into())
        .spawn(move || {
            let run = || -> anyhow::Result<()> {
                peers::pin_thread(peers::PROXY_CPU)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let handle = start_echo("backend").await;
                    let _ = tx.send(handle);
                    // The server's tasks live on this runtime: it runs
                    // until the process ends.
                    std::future::pending::<()>().await;
                });
                Ok(())
            };
            if let Err(e) = run() {
                eprintln!("the backend thread failed: {e:#}");
            }
        })?;
    rx.await
        .context("the backend thread ended before it started")?
}

/// The gateway's hop against a client sidecar's, round by round: the
/// added p50 of gateway + sidecar over that of the bare pair (each minus
/// direct in the same round). Printed whenever the three ran, so that
/// `--only 'direct|mTLS bare|gateway + sidecar'` measures it alone.
fn gateway_hop(rows: &[(String, usize, Result)], rounds: u32, rate: u32) {
    let p50 = |label: &str, path: &str| {
        let name = format!("{path} @{rate}");
        rows.iter()
            .find(|(l, _, r)| l == label && r.name == name)
            .map(|(_, _, r)| r.pct(0.5).as_secs_f64())
    };
    let mut ratios: Vec<f64> = (1..=rounds)
        .filter_map(|round| {
            let label = format!("round {round}");
            let direct = p50(&label, "direct")?;
            let pair = p50(&label, "mTLS bare")? - direct;
            let gateway = p50(&label, "gateway + sidecar")? - direct;
            Some(gateway / pair)
        })
        .collect();
    if ratios.is_empty() {
        return;
    }
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    println!(
        "\nThe gateway's hop against a client sidecar's (added p50 of gateway + sidecar / of the bare pair), by round: {}; median {:.2}",
        each.join(", "),
        median(&mut ratios)
    );
}

/// The middle value (the mean of the two middle ones for an even count): one
/// noisy round moves it less than it moves the mean.
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
