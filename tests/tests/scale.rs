//! Scale, kept from rotting: a small run of the simulator (`weft-sim`)
//! against real control-plane processes — every stream gets every measured
//! change, nothing it does not call, no address map it did not ask for,
//! and every stream resyncs after the control plane is killed and started
//! again; the same on three replicas sharing a three-member etcd. And a
//! real sidecar's memory does not grow with services it does not call.
//!
//! The 10,000-stream figures are a benchmark, not a test: see
//! docs/performance.md ("Control plane at scale").

use std::time::Duration;

use weft_tests::mesh::ControlPlane;
use weft_tests::process::{SidecarProc, free_port};
use weft_tests::sim::{self, SimConfig, rss_of};
use weft_tests::util::{http_get, init_logs, wait_for};

fn small(replicas: usize, streams: usize) -> SimConfig {
    SimConfig {
        streams,
        services: 20,
        wanted: 3,
        changes: 4,
        replicas,
        change_interval: Duration::from_millis(300),
        churn_interval: Duration::from_millis(200),
        connect_concurrency: 32,
        restart: true,
        intercept: false,
        wait: Duration::from_secs(30),
        dashboard: None,
    }
}

fn check(r: &sim::Report) {
    println!("{}", r.table());
    assert_eq!(r.missing, 0, "every stream gets every measured change");
    assert!(r.max > Duration::ZERO && r.p50 <= r.p99 && r.p99 <= r.max);
    assert_eq!(
        r.unwanted, 0,
        "no stream is sent a service it does not call"
    );
    assert_eq!(
        r.address_maps, 0,
        "no stream that does not intercept gets the address map"
    );
    let resync = r.resync.as_ref().expect("the restart was measured");
    assert_eq!(
        resync.streams,
        r.streams / r.replicas,
        "the killed replica's streams"
    );
    assert!(resync.synced >= resync.ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_simulated_sidecars_get_every_change_and_resync_after_a_restart()
-> anyhow::Result<()> {
    init_logs();
    weft_proto::identity::install_provider();
    // With every stream reporting traffic, the dashboard's graph is
    // answered and has their edges (what it costs is weft-sim's to say).
    let r = sim::run(SimConfig {
        dashboard: Some(Duration::from_secs(2)),
        ..small(1, 200)
    })
    .await?;
    check(&r);
    let d = r.dashboard.as_ref().expect("the dashboard was measured");
    assert!(d.polls >= 1 && d.bytes > 0, "{d:?}");
    // 19 services besides the hot one, each calling the hot one and others.
    assert!(
        d.edges >= 19,
        "every caller's edge to the hot service: {d:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_sidecars_spread_over_three_replicas_on_etcd_get_every_change()
-> anyhow::Result<()> {
    init_logs();
    weft_proto::identity::install_provider();
    // Without etcd (and outside CI) this says so and skips; under CI=true
    // a missing etcd fails.
    if weft_tests::etcd::binary()?.is_none() {
        return Ok(());
    }
    let r = sim::run(small(3, 90)).await?;
    check(&r);
    Ok(())
}

/// A `Service` for each of `names`, each with a virtual address of its
/// own (so that the address map holds every one).
fn services_with_addresses(names: std::ops::Range<usize>) -> String {
    names
        .map(|i| {
            format!(
                "---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: s{i}}}\n\
                 spec: {{protocol: grpc, addresses: [10.{}.{}.{}]}}\n",
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            )
        })
        .collect()
}

/// The sidecar at `admin` has `s0`'s request timeout at `want`.
async fn wait_timeout(admin: std::net::SocketAddr, want: &str) -> anyhow::Result<()> {
    let url = format!("http://{admin}/config");
    wait_for(
        &format!("s0's timeout {want} at the sidecar"),
        Duration::from_secs(60),
        || async {
            let body = http_get(&url).await.ok()?.body;
            let c: serde_json::Value = serde_json::from_str(&body).ok()?;
            (c["services"]["s0"]["policy"]["resilience"]["timeouts"]["request"] == want)
                .then_some(())
        },
    )
    .await
}

/// The most the RSS of a sidecar calling 3 services may grow when the
/// catalog grows from 3 services to 10,000 it does not call. Measured on
/// the debug build: +0 KiB; the same sidecar with `--intercept`, which is
/// sent every service's addresses (as every sidecar was before the map
/// went only to those), grew by 5.4 MiB.
const BOUND: u64 = 2 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_does_not_grow_with_ten_thousand_services_it_does_not_call() -> anyhow::Result<()>
{
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    cp.apply_yaml(&services_with_addresses(0..3)).await?;
    let upstreams: Vec<String> = (0..3)
        .map(|i| Ok(format!("s{i}=127.0.0.1:{}", free_port()?)))
        .collect::<anyhow::Result<_>>()?;
    let mut extra = Vec::new();
    for u in &upstreams {
        extra.extend(["--upstream".to_string(), u.clone()]);
    }
    let sidecar = SidecarProc::start("caller", Some(&cp.access), &extra).await?;
    let apply_s0 = |ms: u64| {
        format!(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: s0}}\n\
             spec: {{protocol: grpc, addresses: [10.0.0.0], timeouts: {{request: {ms}ms}}}}\n"
        )
    };
    cp.apply_yaml(&apply_s0(1001)).await?;
    wait_timeout(sidecar.admin, "1001ms").await?;
    let small = rss_of(sidecar.proc.pid())?;

    // 9,997 more services, none of which it calls; then a change to one it
    // does call, which it gets after everything sent before it.
    let yaml = services_with_addresses(3..10_000);
    let docs: Vec<&str> = yaml.split("---\n").filter(|d| !d.is_empty()).collect();
    for chunk in docs.chunks(1000) {
        cp.apply_yaml(&chunk.join("---\n")).await?;
    }
    cp.apply_yaml(&apply_s0(1002)).await?;
    wait_timeout(sidecar.admin, "1002ms").await?;
    let large = rss_of(sidecar.proc.pid())?;
    let grew = large.saturating_sub(small);
    println!(
        "sidecar RSS: {} KiB with 3 services, {} KiB with 10,000 (+{} KiB; bound {} KiB)",
        small / 1024,
        large / 1024,
        grew / 1024,
        BOUND / 1024
    );
    assert!(grew < BOUND, "the sidecar grew by {grew} bytes");
    Ok(())
}
