//! `weft-allocs`: heap allocations per request in two sidecars, counted by
//! a counting global allocator.
//!
//! The sidecars run in this process on a thread of their own (a
//! current-thread runtime); only allocations made on that thread are
//! counted, so the client, the echo backend and the control plane (on the
//! main runtime) do not blur the figure. Each path carries a fixed number
//! of unary calls after a warm-up, a few in flight at a time, and the table
//! shows allocations and bytes per call for the pair (both sidecars
//! together): a plaintext pair from static files, untraced and traced with
//! nothing sampled, and mTLS pairs joined to a control plane: with
//! resilience configured, bare, and bare but traced with nothing sampled.
//!
//! Build and run (release):
//!   cargo build --release -p weft-tests --bin weft-allocs && target/release/weft-allocs
//!
//! Also the CPU time of the sidecars' thread per call (both sidecars, from
//! the kernel's per-thread schedstat): not exact, but time stolen by the
//! hypervisor or spent waiting for a CPU is not in it, so it compares
//! builds on a shared machine far better than latency does.
//!
//! The count is exact for a given build and input, so unlike latency it can
//! be compared between builds; background work (health checks, traffic
//! reports each second) adds a little, spread over the calls.

// A global allocator is an `unsafe impl`; this file is the only place.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use weft_tests::echo::{client, start_echo};
use weft_tests::mesh::{ControlPlane, CpAccess, Sidecar, SidecarSpec, write_temp};
use weft_tests::pb::EchoRequest;
use weft_tests::pb::echo_client::EchoClient;

mod memory;

thread_local! {
    /// Which sidecars' thread this is (0: none): only their allocations
    /// count. `--memory` runs two, the client side (1) and the server side
    /// (2), and keeps each one's live heap apart.
    static SIDE: Cell<usize> = const { Cell::new(0) };
}

/// Live heap bytes allocated and not yet freed, by side (`SIDE`). Only
/// meaningful as a difference, and only because each sidecar allocates
/// and frees on its own thread (a current-thread runtime).
static LIVE: [AtomicI64; 3] = [const { AtomicI64::new(0) }; 3];

static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// The sidecars' thread, whose CPU time is read from
/// `/proc/self/task/TID/schedstat` (nanoseconds on a CPU; time stolen by
/// the hypervisor or spent waiting to run is not in it, so on a shared
/// machine it moves far less than latency does).
static SIDECARS_TID: AtomicI32 = AtomicI32::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; the
// counters are atomics and the thread-local is const-initialised (reading
// it allocates nothing).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), layout.size() as i64);
        // SAFETY: the caller's contract is System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size(), layout.size() as i64);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size, new_size as i64 - layout.size() as i64);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        live(-(layout.size() as i64));
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn count(bytes: usize, change: i64) {
    if SIDE.try_with(Cell::get).unwrap_or(0) != 0 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(bytes as u64, Ordering::Relaxed);
    }
    live(change);
}

fn live(change: i64) {
    let side = SIDE.try_with(Cell::get).unwrap_or(0);
    if side != 0 {
        LIVE[side].fetch_add(change, Ordering::Relaxed);
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Debug, Parser)]
#[command(
    name = "weft-allocs",
    about = "Heap allocations and CPU per request in a pair of Weft sidecars; with --memory, the live heap per stream and per connection"
)]
struct Args {
    /// Measured calls per path.
    #[arg(long, default_value_t = 20_000)]
    calls: u32,
    /// Calls in flight at a time.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// Request and response payload, bytes.
    #[arg(long, default_value_t = 100)]
    payload: usize,
    /// Instead: the live heap of a sidecar per in-flight stream, per idle
    /// connection from its app, and per idle pooled connection to a peer.
    #[arg(long)]
    memory: bool,
    /// Only the paths whose names contain this (e.g. `bare`), so that
    /// tests/bench/instructions.sh can count one path alone.
    #[arg(long)]
    only: Option<String>,
}

/// What the caller learns of a sidecar started on the sidecars' thread.
struct Ports {
    inbound: SocketAddr,
    admin: SocketAddr,
    upstreams: HashMap<String, SocketAddr>,
}

/// Something for the sidecars' thread to start: a spec, answered with the
/// running sidecar's ports.
type Job = (SidecarSpec, oneshot::Sender<anyhow::Result<Ports>>);

/// Starts a thread for sidecars, counted as `side` (1 or 2; 0: not
/// counted); send it specs to start.
fn sidecar_thread(side: usize) -> anyhow::Result<mpsc::UnboundedSender<Job>> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("sidecars".into())
        .spawn(move || {
            SIDE.with(|c| c.set(side));
            if side == 1 {
                // SAFETY: gettid has no preconditions.
                SIDECARS_TID.store(unsafe { libc::gettid() }, Ordering::Relaxed);
            }
            rt.block_on(async move {
                // The sidecars keep running here until the process ends.
                let mut running: Vec<Sidecar> = Vec::new();
                while let Some((spec, reply)) = rx.recv().await {
                    let ports = spec.start().await.map(|s| {
                        let ports = Ports {
                            inbound: s.inbound,
                            admin: s.admin,
                            upstreams: s.upstreams.clone(),
                        };
                        running.push(s);
                        ports
                    });
                    let _ = reply.send(ports);
                }
            });
        })?;
    Ok(tx)
}

/// A plaintext pair from static config, both sidecars given `with`;
/// returns the client side's ports.
async fn plaintext_pair(
    thread: &mpsc::UnboundedSender<Job>,
    dir: &std::path::Path,
    empty: &std::path::Path,
    app: SocketAddr,
    name: &str,
    with: impl Fn(SidecarSpec) -> SidecarSpec,
) -> anyhow::Result<Ports> {
    let inbound = start(
        thread,
        with(SidecarSpec::new("echo"))
            .static_config(empty)
            .app(app)
            .arg("--log", "warn"),
    )
    .await?
    .inbound;
    let mesh = write_temp(
        dir,
        &format!("{name}.yaml"),
        &format!("services:\n  - name: echo\n    endpoints:\n      - address: {inbound}\n"),
    )?;
    start(
        thread,
        with(SidecarSpec::new("bench"))
            .static_config(&mesh)
            .upstream("echo")
            .arg("--log", "warn"),
    )
    .await
}

async fn start(thread: &mpsc::UnboundedSender<Job>, spec: SidecarSpec) -> anyhow::Result<Ports> {
    let (tx, rx) = oneshot::channel();
    thread
        .send((spec, tx))
        .map_err(|_| anyhow::anyhow!("the sidecars' thread stopped"))?;
    rx.await?
}

/// CPU time the sidecars' thread has run, in nanoseconds.
fn sidecars_cpu_ns() -> anyhow::Result<u64> {
    let tid = SIDECARS_TID.load(Ordering::Relaxed);
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))?;
    stat.split_whitespace()
        .next()
        .and_then(|ns| ns.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("/proc/self/task/{tid}/schedstat: {stat:?}"))
}

/// What one path cost on the sidecars' thread.
struct Cost {
    allocs: u64,
    bytes: u64,
    cpu_ns: u64,
    failed: u32,
}

/// `calls` unary calls to `addr`, `concurrency` at a time; the allocations
/// counted and the CPU time used on the sidecars' thread meanwhile.
async fn measure(addr: SocketAddr, args: &Args) -> anyhow::Result<Cost> {
    let c = client(addr).await?;
    let call = |mut c: EchoClient<Channel>, payload: usize| async move {
        let req = EchoRequest {
            payload: vec![1; payload],
            ..Default::default()
        };
        tokio::time::timeout(Duration::from_secs(5), c.unary(req))
            .await
            .ok()
            .and_then(Result::ok)
            .is_some()
    };
    // Warm up: connections open, buffers grown, routes interned.
    for _ in 0..500 {
        call(c.clone(), args.payload).await;
    }
    let (a0, b0, t0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
        sidecars_cpu_ns()?,
    );
    let mut failed = 0;
    let per_worker = args.calls / args.concurrency;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (c, payload) = (c.clone(), args.payload);
        workers.spawn(async move {
            let mut failed = 0u32;
            for _ in 0..per_worker {
                if !call(c.clone(), payload).await {
                    failed += 1;
                }
            }
            failed
        });
    }
    while let Some(f) = workers.join_next().await {
        failed += f?;
    }
    let (a1, b1, t1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
        sidecars_cpu_ns()?,
    );
    Ok(Cost {
        allocs: a1 - a0,
        bytes: b1 - b0,
        cpu_ns: t1 - t0,
        failed,
    })
}

/// A server-side and a client-side sidecar joined to `cp` for `service`;
/// returns the client side's local port for it.
async fn joined_pair(
    thread: &mpsc::UnboundedSender<Job>,
    cp: &CpAccess,
    service: &str,
    backend: SocketAddr,
    extra: fn(SidecarSpec) -> SidecarSpec,
) -> anyhow::Result<SocketAddr> {
    start(
        thread,
        extra(
            SidecarSpec::new(service)
                .access(cp)
                .app(backend)
                .arg("--log", "warn"),
        ),
    )
    .await?;
    let client = start(
        thread,
        extra(
            SidecarSpec::new(&format!("{service}-caller"))
                .access(cp)
                .upstream(service)
                .arg("--log", "warn"),
        ),
    )
    .await?;
    Ok(client.upstreams[service])
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    weft_proto::identity::install_provider();
    if args.memory {
        return memory::run().await;
    }
    let backend = start_echo("backend").await?;
    let dir = tempfile::tempdir()?;
    let thread = sidecar_thread(1)?;

    let empty = write_temp(dir.path(), "empty.yaml", "services: []\n")?;
    let plain_client =
        plaintext_pair(&thread, dir.path(), &empty, backend.addr, "plain", |s| s).await?;
    // The same pair with tracing on and nothing sampled: what every
    // request pays for its trace context (ids, `traceparent` read and
    // written), apart from exporting. The collector's address is never
    // dialled: no span is sampled.
    let traced_client = plaintext_pair(&thread, dir.path(), &empty, backend.addr, "traced", |s| {
        s.arg("--otlp-endpoint", "http://127.0.0.1:9")
            .arg("--trace-sampling", "0")
    })
    .await?;

    let cp = ControlPlane::start(None, Default::default()).await?;
    cp.apply_yaml(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo-tls}\nspec:\n  retries: {attempts: 3, perTryTimeout: 1s}\n  timeouts: {request: 5s}\n  circuitBreaker: {consecutiveFailures: 5, maxConcurrentRequests: 10000, maxPendingRequests: 10000}\n---\n\
         apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo-bare}\nspec:\n  retries: {attempts: 1}\n  circuitBreaker: {consecutiveFailures: 1000000000}\n---\n\
         apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo-bare-t}\nspec:\n  retries: {attempts: 1}\n  circuitBreaker: {consecutiveFailures: 1000000000}\n",
    )
    .await?;
    let tls_up = joined_pair(&thread, &cp.access, "echo-tls", backend.addr, |s| s).await?;
    let bare_up = joined_pair(&thread, &cp.access, "echo-bare", backend.addr, |s| s).await?;
    // The bare pair again with tracing on and nothing sampled, as the
    // plaintext one above.
    let traced_up = joined_pair(&thread, &cp.access, "echo-bare-t", backend.addr, |s| {
        s.arg("--otlp-endpoint", "http://127.0.0.1:9")
            .arg("--trace-sampling", "0")
    })
    .await?;

    let paths = [
        ("plaintext pair", plain_client.upstreams["echo"]),
        (
            "plaintext pair, traced (0% sampled)",
            traced_client.upstreams["echo"],
        ),
        ("mTLS pair, resilience", tls_up),
        ("mTLS pair, bare", bare_up),
        ("mTLS pair, one try, traced (0% sampled)", traced_up),
    ];
    println!(
        "| path ({} calls, {} in flight, {}-byte messages) | allocations per call | bytes per call | CPU µs per call | failed |",
        args.calls, args.concurrency, args.payload
    );
    println!("|---|---:|---:|---:|---:|");
    let only = args.only.as_deref().unwrap_or("");
    anyhow::ensure!(
        paths.iter().any(|(name, _)| name.contains(only)),
        "--only {only:?}: no path's name contains it (the paths: {})",
        paths.map(|(name, _)| name).join("; ")
    );
    for (name, addr) in paths.into_iter().filter(|(name, _)| name.contains(only)) {
        let c = measure(addr, &args).await?;
        let n = f64::from(args.calls / args.concurrency * args.concurrency);
        println!(
            "| {name} | {:.1} | {:.0} | {:.1} | {} |",
            c.allocs as f64 / n,
            c.bytes as f64 / n,
            c.cpu_ns as f64 / n / 1e3,
            c.failed
        );
    }
    Ok(())
}
