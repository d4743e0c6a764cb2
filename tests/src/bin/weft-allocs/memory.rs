//! `weft-allocs --memory`: what a sidecar keeps per in-flight stream, per
//! idle connection from its app, and per idle pooled connection to a peer
//! sidecar — its live heap (bytes allocated and not freed, counted on its
//! own thread) before and after, divided by the count.
//!
//! An mTLS pair joined to a control plane: the client side on one counted
//! thread, the server side on another, so each side's share is its own.
//! The echo backend and the callers run on the main runtime (not counted).
//! Heap only: the binary's code pages and the thread stacks are not in it
//! (the whole process's RSS is, in weft-bench's peak RSS column).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use weft_tests::echo::{client, start_echo};
use weft_tests::mesh::{ControlPlane, SidecarSpec};
use weft_tests::pb::EchoRequest;
use weft_tests::util::wait_for;

use super::{LIVE, sidecar_thread, start};

/// In-flight streams held at once (under the HTTP/2 stream limits of
/// every hop).
const STREAMS: u64 = 150;
/// Idle connections from the app.
const APP_CONNECTIONS: u64 = 200;
/// Endpoints of the service whose pooled connections are counted.
const ENDPOINTS: usize = 20;

const POLICY: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo-m}\nspec:\n  retries: {attempts: 1}\n  circuitBreaker: {consecutiveFailures: 1000000000}\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo-p}\nspec:\n  retries: {attempts: 1}\n  circuitBreaker: {consecutiveFailures: 1000000000}\n";

/// One side's live heap now: the median of five looks 20 ms apart, so
/// that a health check or a traffic report caught mid-way moves it less.
async fn live(side: usize) -> i64 {
    let mut v = Vec::new();
    for _ in 0..5 {
        v.push(LIVE[side].load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    v.sort_unstable();
    v[2]
}

async fn both() -> (i64, i64) {
    (live(1).await, live(2).await)
}

async fn call(addr: SocketAddr, sleep_ms: u32) -> anyhow::Result<()> {
    let mut c = client(addr).await?;
    c.unary(EchoRequest {
        payload: vec![1; 100],
        sleep_ms,
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// The client side's peers with an open connection, from its `/config`.
async fn connected(admin: SocketAddr) -> anyhow::Result<usize> {
    let body = weft_tests::util::http_get(&format!("http://{admin}/config"))
        .await?
        .body;
    Ok(body.matches("\"connected\":true").count() + body.matches("\"connected\": true").count())
}

pub async fn run() -> anyhow::Result<()> {
    let backend = start_echo("backend").await?;
    let cp = ControlPlane::start(None, Default::default()).await?;
    cp.apply_yaml(POLICY).await?;
    let (client_t, server_t, others_t) =
        (sidecar_thread(1)?, sidecar_thread(2)?, sidecar_thread(0)?);
    // A sidecar of `service` in front of the backend, or calling `service`.
    let serving = |service: &str| {
        SidecarSpec::new(service)
            .access(&cp.access)
            .arg("--log", "warn")
            .app(backend.addr)
    };
    let calling = |caller: &str, service: &str| {
        SidecarSpec::new(caller)
            .access(&cp.access)
            .arg("--log", "warn")
            .upstream(service)
    };
    start(&server_t, serving("echo-m")).await?;
    let up = start(&client_t, calling("caller", "echo-m"))
        .await?
        .upstreams["echo-m"];
    let c = client(up).await?;
    for _ in 0..200 {
        c.clone().unary(EchoRequest::default()).await?;
    }
    let mut rows = Vec::new();

    // In-flight streams: STREAMS calls over the app's one connection, each
    // held 5 s by the backend; measured once the backend has them all.
    let before = both().await;
    let received = backend.calls();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..STREAMS {
        let mut c = c.clone();
        calls.spawn(async move {
            c.unary(EchoRequest {
                payload: vec![1; 100],
                sleep_ms: 5000,
                ..Default::default()
            })
            .await
        });
    }
    let held = || async { (backend.calls() >= received + STREAMS).then_some(()) };
    wait_for(
        "every held call at the backend",
        Duration::from_secs(20),
        held,
    )
    .await?;
    let during = both().await;
    rows.push((
        "in-flight unary stream (100 B each way, held by the backend)",
        STREAMS,
        Some(during.0 - before.0),
        Some(during.1 - before.1),
    ));
    while let Some(r) = calls.join_next().await {
        r?.context("a held call")?;
    }

    // Idle connections from the app: each its own HTTP/2 connection with
    // one call done, then left open.
    let before = both().await;
    let mut idle = Vec::new();
    for _ in 0..APP_CONNECTIONS {
        let mut c = client(up).await?;
        c.unary(EchoRequest::default()).await?;
        idle.push(c);
    }
    let after = both().await;
    rows.push((
        "idle HTTP/2 connection from the app (one call done)",
        APP_CONNECTIONS,
        Some(after.0 - before.0),
        None,
    ));
    drop(idle);

    // Idle pooled connections: a service of ENDPOINTS server-side sidecars
    // (on an uncounted thread); the client side's heap once it knows them
    // all, and again once it has a connection open to each.
    for _ in 0..ENDPOINTS {
        start(&others_t, serving("echo-p")).await?;
    }
    let pooled = start(&client_t, calling("caller-p", "echo-p")).await?;
    let pup = pooled.upstreams["echo-p"];
    call(pup, 0).await?;
    let admin = pooled.admin;
    let (open0, before) = (connected(admin).await?, live(1).await);
    let pc = client(pup).await?;
    // Calls until the balancer has picked every endpoint: a bounded count.
    let mut sent = 0;
    while connected(admin).await? < ENDPOINTS {
        anyhow::ensure!(
            sent < 2000,
            "no connection to every endpoint after {sent} calls"
        );
        for _ in 0..20 {
            pc.clone().unary(EchoRequest::default()).await?;
            sent += 1;
        }
    }
    let (open1, after) = (connected(admin).await?, live(1).await);
    let opened = (open1 - open0) as u64;
    anyhow::ensure!(
        opened > 0,
        "no pooled connection opened ({open0} → {open1})"
    );
    rows.push((
        "idle pooled mTLS connection to a peer sidecar (client end)",
        opened,
        Some(after - before),
        None,
    ));

    println!(
        "| live heap per … (weft-allocs --memory; {sent} calls to open the pool) | count | client side | server side |"
    );
    println!("|---|---:|---:|---:|");
    let each = |d: Option<i64>, n: u64| {
        d.map_or("—".to_string(), |d| {
            format!("{:.1} KiB", d as f64 / n as f64 / 1024.0)
        })
    };
    for (what, n, client, server) in rows {
        println!(
            "| {what} | {n} | {} | {} |",
            each(client, n),
            each(server, n)
        );
    }
    Ok(())
}
