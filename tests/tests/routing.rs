//! Routes between sidecars, end to end: a real control plane, real sidecars
//! and real gRPC/HTTP apps; `HTTPRoute` and `GRPCRoute` applied as a user
//! writes them. Splits, matches, filters, mirrors, per-rule policy, and a
//! route changed under load.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tonic::Code;
use weft_tests::echo::{EchoServerHandle, SteadyLoad, client, start_echo};
use weft_tests::http_app::start_http_app;
use weft_tests::mesh::{ControlPlane, Sidecar, SidecarSpec};
use weft_tests::pb::EchoRequest;
use weft_tests::util::{init_logs, metric, wait_for};

const SERVICE: &str = "apiVersion: weft.dev/v1
kind: Service
metadata: {name: echo}
spec:
  protocol: grpc
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
";

/// Two versions of `echo` (instances `v1` and `v2`, labelled so) and a
/// caller with an upstream port for it, which knows both.
struct Mesh {
    cp: ControlPlane,
    v1: EchoServerHandle,
    v2: EchoServerHandle,
    _sidecars: Vec<Sidecar>,
    caller: Sidecar,
}

async fn echo_version(
    cp: &ControlPlane,
    version: &str,
) -> anyhow::Result<(EchoServerHandle, Sidecar)> {
    let app = start_echo(version).await?;
    let sidecar = SidecarSpec::new("echo")
        .control_plane(cp)
        .app(app.addr)
        .arg("--label", format!("version={version}"))
        .start()
        .await?;
    Ok((app, sidecar))
}

async fn mesh(extra: &str) -> anyhow::Result<Mesh> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    cp.apply_yaml(&format!("{SERVICE}{extra}")).await?;
    let (v1, s1) = echo_version(&cp, "v1").await?;
    let (v2, s2) = echo_version(&cp, "v2").await?;
    let caller = SidecarSpec::new("caller")
        .control_plane(&cp)
        .upstream("echo")
        .start()
        .await?;
    caller
        .wait_endpoints("echo", "both versions", |e| e.len() == 2)
        .await?;
    Ok(Mesh {
        cp,
        v1,
        v2,
        _sidecars: vec![s1, s2],
        caller,
    })
}

/// Applies `yaml` and waits until the caller routes by `routes` routes.
async fn routes(m: &Mesh, yaml: &str, routes: usize) -> anyhow::Result<()> {
    m.cp.apply_yaml(yaml).await?;
    wait_for(
        "the routes at the caller",
        Duration::from_secs(10),
        || async {
            let c = m.caller.config().await.ok()?;
            let n = c["services"]["echo"]["routes"].as_array()?.len();
            (n == routes).then_some(())
        },
    )
    .await
}

/// Sends `n` unary calls, `k` at a time; returns how many each instance got.
async fn spread(
    m: &Mesh,
    n: usize,
    k: usize,
    req: EchoRequest,
) -> anyhow::Result<HashMap<String, usize>> {
    let c = client(m.caller.upstream("echo")).await?;
    let counts = Arc::new(std::sync::Mutex::new(HashMap::new()));
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..k {
        let (mut c, counts, req) = (c.clone(), counts.clone(), req.clone());
        let share = n / k + usize::from(w < n % k);
        tasks.spawn(async move {
            for _ in 0..share {
                let r = c.unary(req.clone()).await?;
                let inst = r.get_ref().instance.clone();
                *counts
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .entry(inst)
                    .or_insert(0) += 1;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let out = counts
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_90_10_split_holds_within_two_points_over_10000_calls() -> anyhow::Result<()> {
    let m = mesh("").await?;
    routes(
        &m,
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: canary}
spec:
  parentRefs: [{kind: Service, name: echo}]
  rules:
    - backendRefs:
        - {name: echo, subset: v1, weight: 90}
        - {name: echo, subset: v2, weight: 10}
",
        1,
    )
    .await?;
    let got = spread(&m, 10_000, 8, EchoRequest::default()).await?;
    let v2 = got.get("v2").copied().unwrap_or(0) as f64 / 100.0;
    assert!(
        (8.0..=12.0).contains(&v2),
        "v2 took {v2}% of 10 000: {got:?}"
    );
    assert_eq!(got.values().sum::<usize>(), 10_000);
    let text = m.caller.metrics().await?;
    assert_eq!(
        metric(
            &text,
            "weft_route_requests_total",
            &[("http_route", "GRPCRoute/canary"), ("rule", "0")]
        ),
        Some(10_000.0),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_sends_to_v2_only_and_a_method_picks_its_rule() -> anyhow::Result<()> {
    let m = mesh("").await?;
    routes(
        &m,
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: by-header}
spec:
  parentRefs: [{kind: Service, name: echo}]
  rules:
    - matches:
        - headers: [{name: x-canary, value: \"yes\"}]
      backendRefs: [{name: echo, subset: v2}]
    - matches:
        - method: {service: weft.test.v1.Echo, method: ServerStream}
      backendRefs: [{name: echo, subset: v2}]
    - backendRefs: [{name: echo, subset: v1}]
",
        1,
    )
    .await?;
    let plain = spread(&m, 50, 2, EchoRequest::default()).await?;
    assert_eq!(plain.get("v1"), Some(&50), "{plain:?}");
    let mut c = client(m.caller.upstream("echo")).await?;
    for _ in 0..20 {
        let mut req = tonic::Request::new(EchoRequest::default());
        req.metadata_mut().insert("x-canary", "yes".parse()?);
        assert_eq!(c.unary(req).await?.get_ref().instance, "v2");
    }
    // The method rule: a server stream goes to v2, a unary call does not.
    let mut s = c
        .server_stream(EchoRequest {
            count: 2,
            ..Default::default()
        })
        .await?
        .into_inner();
    while let Some(r) = s.message().await? {
        assert_eq!(r.instance, "v2");
    }
    assert_eq!((m.v1.calls(), m.v2.calls()), (50, 21));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers_reach_the_app_and_the_caller() -> anyhow::Result<()> {
    let m = mesh("").await?;
    routes(
        &m,
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: headers}
spec:
  parentRefs: [{kind: Service, name: echo}]
  rules:
    - filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-test-env, value: canary}]
            remove: [x-test-secret]
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            add: [{name: x-route, value: headers}]
",
        1,
    )
    .await?;
    let mut c = client(m.caller.upstream("echo")).await?;
    let mut req = tonic::Request::new(EchoRequest::default());
    req.metadata_mut().insert("x-test-env", "prod".parse()?);
    req.metadata_mut()
        .insert("x-test-secret", "s3cret".parse()?);
    let resp = c.unary(req).await?;
    // The echo app sends `x-test-*` request headers back: what it saw.
    let md = resp.metadata();
    assert_eq!(
        md.get("x-test-env").and_then(|v| v.to_str().ok()),
        Some("canary")
    );
    assert!(md.get("x-test-secret").is_none(), "removed before the app");
    assert_eq!(
        md.get("x-route").and_then(|v| v.to_str().ok()),
        Some("headers")
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_s_timeout_and_retries_override_the_service_s() -> anyhow::Result<()> {
    // The service retries UNAVAILABLE three times (its default); one rule
    // says no retries and a 200 ms request timeout.
    let m = mesh("").await?;
    routes(
        &m,
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: strict}
spec:
  parentRefs: [{kind: Service, name: echo}]
  rules:
    - matches: [{method: {service: weft.test.v1.Echo, method: Unary}}]
      backendRefs: [{name: echo, subset: v1}]
      timeouts: {request: 200ms}
      retry: {attempts: 1}
    - backendRefs: [{name: echo, subset: v1}]
",
        1,
    )
    .await?;
    let mut c = client(m.caller.upstream("echo")).await?;
    // Slow: the rule's timeout answers at 200 ms, not the app's 2 s.
    m.v1.state.delay_ms.store(2_000, Ordering::Relaxed);
    let started = Instant::now();
    let e = c.unary(EchoRequest::default()).await.expect_err("deadline");
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "{:?}",
        started.elapsed()
    );
    m.v1.state.delay_ms.store(0, Ordering::Relaxed);
    // Failing: the rule's calls are tried once; the default rule's thrice.
    m.v1.state.fail_all.store(14, Ordering::Relaxed);
    let before = m.v1.calls();
    assert!(c.unary(EchoRequest::default()).await.is_err());
    assert_eq!(m.v1.calls() - before, 1, "no retry under the rule");
    let before = m.v1.calls();
    let stream = c
        .server_stream(EchoRequest {
            count: 1,
            ..Default::default()
        })
        .await;
    let failed = match stream {
        Err(_) => true,
        Ok(s) => s.into_inner().message().await.is_err(),
    };
    assert!(failed);
    assert!(
        m.v1.calls() - before >= 2,
        "the service's retries under the default rule"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_gets_copies_and_a_slow_one_slows_nobody() -> anyhow::Result<()> {
    let m = mesh(
        "---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: shadow}
spec: {protocol: grpc}
",
    )
    .await?;
    let shadow_app = start_echo("shadow").await?;
    shadow_app.state.delay_ms.store(2_000, Ordering::Relaxed);
    let _shadow = SidecarSpec::new("shadow")
        .control_plane(&m.cp)
        .app(shadow_app.addr)
        .start()
        .await?;
    routes(
        &m,
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: mirrored}
spec:
  parentRefs: [{kind: Service, name: echo}]
  rules:
    - filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: shadow}}
      backendRefs: [{name: echo, subset: v1}]
",
        1,
    )
    .await?;
    m.caller
        .wait_endpoints("shadow", "the shadow's endpoint", |e| e.len() == 1)
        .await?;
    let mut c = client(m.caller.upstream("echo")).await?;
    let slowest = Arc::new(AtomicU64::new(0));
    for _ in 0..20 {
        let t = Instant::now();
        assert_eq!(
            c.unary(EchoRequest::default()).await?.get_ref().instance,
            "v1"
        );
        slowest.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    // Each copy takes 2 s at the shadow; no real call waited for one.
    let slowest = slowest.load(Ordering::Relaxed);
    assert!(slowest < 1_000, "a call took {slowest} ms");
    wait_for(
        "every copy at the shadow",
        Duration::from_secs(10),
        || async { (shadow_app.calls() == 20).then_some(()) },
    )
    .await?;
    let text = m.caller.metrics().await?;
    assert_eq!(
        metric(&text, "weft_mirrors_total", &[("backend", "shadow")]),
        Some(20.0),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_changed_under_load_fails_no_call() -> anyhow::Result<()> {
    let m = mesh("").await?;
    let to = |subset: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: switch}}
spec:
  parentRefs: [{{kind: Service, name: echo}}]
  rules:
    - backendRefs: [{{name: echo, subset: {subset}}}]
"
        )
    };
    routes(&m, &to("v1"), 1).await?;
    let load = SteadyLoad::start(m.caller.upstream("echo"), Duration::from_millis(2), 20_000);
    wait_for("calls on v1", Duration::from_secs(10), || async {
        (m.v1.calls() > 50).then_some(())
    })
    .await?;
    // Blue to green and back, under load.
    for subset in ["v2", "v1", "v2"] {
        m.cp.apply_yaml(&to(subset)).await?;
        let app = if subset == "v2" { &m.v2 } else { &m.v1 };
        let before = app.calls();
        wait_for("the switch", Duration::from_secs(10), || async {
            (app.calls() > before + 50).then_some(())
        })
        .await?;
    }
    let (ok, failed) = load.stop().await?;
    assert_eq!(failed, 0, "{ok} calls succeeded");
    assert!(ok > 200, "{ok}");
    // Every sidecar (the caller and both versions) applied the last change.
    wait_for("every sidecar synced", Duration::from_secs(10), || async {
        let (code, out, _) = m.cp.weftctl(&["status"], None).ok()?;
        let rows: Vec<&str> = out.lines().skip(1).collect();
        let synced = rows.iter().filter(|l| l.contains("(synced)")).count();
        (code == 0 && rows.len() == 3 && synced == 3).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_rewrite_the_path_for_the_app() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    cp.apply_yaml(
        "apiVersion: weft.dev/v1
kind: Service
metadata: {name: users}
spec: {protocol: http}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: users-api}
spec:
  parentRefs: [{kind: Service, name: users}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api/users}}]
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
",
    )
    .await?;
    let app = start_http_app("u1").await?;
    let _server = SidecarSpec::new("users")
        .control_plane(&cp)
        .app(app.addr)
        .arg("--protocol", "http")
        .start()
        .await?;
    let caller = SidecarSpec::new("caller")
        .control_plane(&cp)
        .upstream("users")
        .start()
        .await?;
    caller
        .wait_endpoints("users", "the users endpoint", |e| e.len() == 1)
        .await?;
    wait_for("the route", Duration::from_secs(10), || async {
        let c = caller.config().await.ok()?;
        (c["services"]["users"]["routes"].as_array()?.len() == 1).then_some(())
    })
    .await?;
    let url = format!("http://{}/api/users/7?full=1", caller.upstream("users"));
    let r = weft_tests::util::http_get(&url).await?;
    assert_eq!(r.status, 200, "{}", r.body);
    let seen: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(
        seen["path"], "/7?full=1",
        "the query is the caller's: {seen}"
    );
    // Outside the prefix: untouched.
    let r =
        weft_tests::util::http_get(&format!("http://{}/other", caller.upstream("users"))).await?;
    let seen: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(seen["path"], "/other", "{seen}");
    Ok(())
}
