//! Instances coming and going: an unhealthy app, a sidecar killed, a sidecar
//! stopped with SIGTERM (drain and leave), and the control plane killed and
//! restarted under load. Sidecars and the control plane run as real
//! processes where a process boundary is what is being tested.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use weft_control_plane::catalog::CatalogConfig;
use weft_tests::echo::{EchoServerHandle, SteadyLoad, client, start_echo};
use weft_tests::mesh::{ControlPlane, Sidecar, SidecarSpec, caller, echo_instances};
use weft_tests::pb::EchoRequest;
use weft_tests::process::{ControlPlaneProc, SidecarProc, free_port, run};
use weft_tests::util::{init_logs, wait_for};

async fn calls(caller: &Sidecar, n: usize) -> anyhow::Result<()> {
    let mut c = client(caller.upstream("echo")).await?;
    for _ in 0..n {
        c.unary(EchoRequest::default()).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_instance_gets_no_requests_after_the_push() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let instances = echo_instances(&cp, "echo", &["a", "b"]).await?;
    let (a, b) = (&instances[0].0, &instances[1].0);
    let caller = caller(&cp, "echo", 2).await?;
    caller
        .wait_endpoints("echo", "two healthy endpoints", |e| {
            e.iter().all(|x| x.1 == "healthy")
        })
        .await?;

    b.set_serving(false).await;
    caller
        .wait_endpoints("echo", "b reported unhealthy", |e| {
            e.iter().filter(|x| x.1 == "unhealthy").count() == 1
        })
        .await?;
    let before = b.calls();
    calls(&caller, 200).await?;
    assert_eq!(b.calls(), before, "the unhealthy instance got requests");
    assert_eq!(a.calls(), 200);

    // Healthy again: it gets traffic again.
    b.set_serving(true).await;
    caller
        .wait_endpoints("echo", "b healthy again", |e| {
            e.iter().all(|x| x.1 == "healthy")
        })
        .await?;
    calls(&caller, 200).await?;
    assert!(
        b.calls() > before,
        "a recovered instance gets traffic again"
    );
    Ok(())
}

async fn echo_pair() -> anyhow::Result<(EchoServerHandle, EchoServerHandle)> {
    Ok((start_echo("a").await?, start_echo("b").await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_sidecar_is_removed_after_the_grace_period() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?; // 300 ms instance grace
    let (a, b) = echo_pair().await?;
    let _sa = SidecarSpec::new("echo")
        .control_plane(&cp)
        .app(a.addr)
        .start()
        .await?;
    let sb = SidecarProc::start(
        "echo",
        Some(&cp.access),
        &["--app".into(), b.addr.to_string()],
    )
    .await?;
    let caller = SidecarSpec::new("caller")
        .control_plane(&cp)
        .upstream("echo")
        .start()
        .await?;
    caller
        .wait_endpoints("echo", "two endpoints", |e| e.len() == 2)
        .await?;
    calls(&caller, 100).await?;
    assert!(b.calls() > 0, "b took part before it went away");

    sb.proc.signal(libc::SIGKILL);
    caller
        .wait_endpoints("echo", "the push removing b", |e| e.len() == 1)
        .await?;
    let before = b.calls();
    calls(&caller, 200).await?;
    assert_eq!(b.calls(), before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_leaves_at_once_and_exits_0() -> anyhow::Result<()> {
    init_logs();
    // A long grace period: removal within it proves the sidecar said Leave.
    let cp = ControlPlane::start(
        None,
        CatalogConfig {
            instance_grace: Duration::from_secs(60),
            startup_grace: Duration::from_secs(60),
        },
    )
    .await?;
    let b = start_echo("b").await?;
    let mut sb = SidecarProc::start(
        "echo",
        Some(&cp.access),
        &[
            "--app".into(),
            b.addr.to_string(),
            "--drain-timeout".into(),
            "5s".into(),
        ],
    )
    .await?;
    let caller = SidecarSpec::new("caller")
        .control_plane(&cp)
        .upstream("echo")
        .start()
        .await?;
    caller
        .wait_endpoints("echo", "the endpoint", |e| e.len() == 1)
        .await?;

    let mut c = client(caller.upstream("echo")).await?;
    let slow = tokio::spawn(async move {
        c.unary(EchoRequest {
            sleep_ms: 800,
            message: "slow".into(),
            ..Default::default()
        })
        .await
    });
    wait_for(
        "the slow call to reach the app",
        Duration::from_secs(5),
        || async { (b.calls() == 1).then_some(()) },
    )
    .await?;

    sb.proc.signal(libc::SIGTERM);
    let reply = slow.await??;
    assert_eq!(
        reply.into_inner().message,
        "slow",
        "the in-flight call completed"
    );
    let code =
        tokio::task::spawn_blocking(move || sb.proc.wait(Duration::from_secs(10)).map(|c| (c, sb)))
            .await??;
    assert_eq!(code.0, 0, "exit code; log:\n{}", code.1.proc.log_text());
    caller
        .wait_endpoints("echo", "the instance gone at once", |e| e.is_empty())
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_killed_then_restarted_under_load() -> anyhow::Result<()> {
    init_logs();
    let data = tempfile::tempdir()?;
    let (gport, aport) = (free_port()?, free_port()?);
    let mut cp = ControlPlaneProc::start(gport, aport, data.path(), &[]).await?;
    let url = cp.url();
    let credential = cp.data_dir.join("admin.credential").display().to_string();
    let weftctl = |args: &[&str], stdin: Option<&str>| {
        let mut all = vec![
            "--control-plane",
            url.as_str(),
            "--credential",
            credential.as_str(),
        ];
        all.extend_from_slice(args);
        run("weftctl", &all, stdin)
    };
    let (code, out, err) = weftctl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo}\nspec: {protocol: grpc}\n",
        ),
    )?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "service/echo created");

    let (a, b) = echo_pair().await?;
    let access = cp.access()?;
    let _sa = SidecarSpec::new("echo")
        .access(&access)
        .app(a.addr)
        .start()
        .await?;
    let _sb = SidecarSpec::new("echo")
        .access(&access)
        .app(b.addr)
        .start()
        .await?;
    let caller = Arc::new(
        SidecarSpec::new("caller")
            .access(&access)
            .upstream("echo")
            .start()
            .await?,
    );
    caller
        .wait_endpoints("echo", "two endpoints", |e| e.len() == 2)
        .await?;

    // Steady traffic, and a watch on the caller's endpoints, for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let min_endpoints = Arc::new(AtomicU64::new(u64::MAX));
    let traffic = SteadyLoad::start(caller.upstream("echo"), Duration::from_millis(2), 200_000);
    let watch = {
        let (stop, min, caller) = (stop.clone(), min_endpoints.clone(), caller.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(e) = caller.endpoints("echo").await {
                    min.fetch_min(e.len() as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let state = |c: Arc<Sidecar>| async move {
        c.config()
            .await
            .ok()
            .and_then(|v| v["controlPlane"]["state"].as_str().map(str::to_string))
    };

    cp.proc.signal(libc::SIGKILL);
    let _ = cp.proc.wait(Duration::from_secs(5))?;
    wait_for("the caller to notice", Duration::from_secs(10), || async {
        (state(caller.clone()).await.as_deref() == Some("stale")).then_some(())
    })
    .await?;
    let during = traffic.ok();
    wait_for(
        "traffic to keep flowing without a control plane",
        Duration::from_secs(10),
        || async { (traffic.ok() >= during + 200).then_some(()) },
    )
    .await?;

    let cp = ControlPlaneProc::start(gport, aport, data.path(), &[]).await?;
    wait_for("the caller to resync", Duration::from_secs(15), || async {
        let c = caller.config().await.ok()?;
        (c["controlPlane"]["state"] == "synced" && c["controlPlane"]["reconnects"].as_u64()? > 0)
            .then_some(())
    })
    .await?;
    // What was applied before the restart is still there.
    let (code, out, _) = weftctl(&["get", "services", "echo", "-o", "json"], None)?;
    assert_eq!(code, 0);
    assert!(out.contains("\"protocol\": \"grpc\""), "{out}");
    // A change applied after the restart reaches the sidecars.
    let (code, _, err) = weftctl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo}\nspec: {protocol: grpc, loadBalancer: round-robin}\n",
        ),
    )?;
    assert_eq!(code, 0, "{err}");
    wait_for(
        "the new policy on the caller",
        Duration::from_secs(10),
        || async {
            let c = caller.config().await.ok()?;
            (c["services"]["echo"]["policy"]["balance"] == "round-robin").then_some(())
        },
    )
    .await?;

    stop.store(true, Ordering::Relaxed);
    let (_, failed) = traffic.stop().await?;
    watch.await?;
    assert_eq!(failed, 0, "calls failed while the control plane restarted");
    assert_eq!(
        min_endpoints.load(Ordering::Relaxed),
        2,
        "the caller lost endpoints while the control plane restarted"
    );
    drop(cp);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_apps_are_checked_with_get_health() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let app = weft_tests::http_app::start_http_app("h").await?;
    let _s = SidecarSpec::new("web")
        .arg("--protocol", "http")
        .control_plane(&cp)
        .app(app.addr)
        .start()
        .await?;
    let caller = SidecarSpec::new("caller")
        .control_plane(&cp)
        .upstream("web")
        .start()
        .await?;
    caller
        .wait_endpoints("web", "healthy", |e| e.len() == 1 && e[0].1 == "healthy")
        .await?;
    app.healthy.store(false, Ordering::Relaxed);
    caller
        .wait_endpoints("web", "unhealthy after GET /health fails", |e| {
            e[0].1 == "unhealthy"
        })
        .await?;
    let r = weft_tests::util::http_get(&format!("http://{}/x", caller.upstream("web"))).await?;
    assert_eq!(r.status, 503);
    assert_eq!(r.headers["x-weft-error"], "no-healthy-endpoints");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_updates_do_not_drop_a_long_lived_stream() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let a = start_echo("a").await?;
    let _sa = SidecarSpec::new("echo")
        .control_plane(&cp)
        .app(a.addr)
        .start()
        .await?;
    let caller = SidecarSpec::new("caller")
        .control_plane(&cp)
        .upstream("echo")
        .start()
        .await?;
    caller
        .wait_endpoints("echo", "one endpoint", |e| e.len() == 1)
        .await?;
    let mut c = client(caller.upstream("echo")).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = c
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    tx.send(EchoRequest {
        message: "before".into(),
        ..Default::default()
    })
    .await?;
    assert_eq!(
        replies.message().await?.map(|r| r.message).as_deref(),
        Some("before")
    );

    // Several updates while the stream is open: a new instance, a health
    // change, a policy change.
    let b = start_echo("b").await?;
    let _sb = SidecarSpec::new("echo")
        .control_plane(&cp)
        .app(b.addr)
        .start()
        .await?;
    caller
        .wait_endpoints("echo", "two endpoints", |e| e.len() == 2)
        .await?;
    cp.apply_yaml("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo}\nspec: {loadBalancer: round-robin}\n").await?;
    wait_for("the policy change", Duration::from_secs(10), || async {
        (caller.config().await.ok()?["services"]["echo"]["policy"]["balance"] == "round-robin")
            .then_some(())
    })
    .await?;

    tx.send(EchoRequest {
        message: "after".into(),
        ..Default::default()
    })
    .await?;
    let r = replies.message().await?.expect("the stream is still open");
    assert_eq!(
        (r.message.as_str(), r.instance.as_str(), r.seq),
        ("after", "a", 1)
    );
    drop(tx);
    assert!(replies.message().await?.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_on_the_control_plane_and_the_sidecar_admin_port() -> anyhow::Result<()> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let channel = |url: String| async move {
        tonic::transport::Endpoint::from_shared(url)?
            .connect()
            .await
    };
    // The control plane serves TLS: a client verifying it as the mesh's control plane.
    let tls = weft_control_plane::cli::connect_tls(
        &cp.url(),
        &cp.access.credential,
        Duration::from_secs(5),
    )
    .await?;
    let mut h = HealthClient::new(tls);
    let r = h
        .check(HealthCheckRequest {
            service: "weft.v1.Discovery".into(),
        })
        .await?;
    assert_eq!(r.get_ref().status, ServingStatus::Serving as i32);
    let s = SidecarSpec::new("caller")
        .control_plane(&cp)
        .start()
        .await?;
    let h = HealthClient::new(channel(format!("http://{}", s.admin)).await?);
    let status = wait_for("SERVING", Duration::from_secs(5), || {
        let mut h = h.clone();
        async move {
            let r = h
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()?;
            (r.get_ref().status == ServingStatus::Serving as i32).then_some(r.get_ref().status)
        }
    })
    .await?;
    assert_eq!(status, ServingStatus::Serving as i32);
    let live = weft_tests::util::http_get(&format!("http://{}/live", s.admin)).await?;
    assert_eq!(live.status, 200);
    Ok(())
}
