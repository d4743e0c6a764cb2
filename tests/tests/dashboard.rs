//! The dashboard against a real mesh: a control plane, sidecars in front of
//! echo servers, a caller, known traffic. First its JSON endpoints, then
//! the page itself in headless Chromium (see `weft_tests::browser`): the
//! graph's nodes and edges and their numbers, a failing instance turning
//! red, a NACK on the sidecars view, an empty mesh, 200 services, and a
//! control plane that stops answering and comes back. Screenshots of each
//! view land in `target/dashboard-screenshots/`.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::Value;
use weft_proto::v1 as pb;
use weft_tests::browser::Browser;
use weft_tests::mesh::{ControlPlane, SidecarSpec, caller, echo_instances};
use weft_tests::pb::EchoRequest;
use weft_tests::process::{ControlPlaneProc, free_port};
use weft_tests::util::{http_get, http_send, init_logs, wait_for};

async fn get_json(url: &str) -> anyhow::Result<(u16, Value)> {
    let r = http_get(url).await?;
    Ok((r.status.as_u16(), serde_json::from_str(&r.body)?))
}

/// Sends `n` unary calls through `client`, every `fail_every`-th asking for
/// INTERNAL (a server fault); returns how many failed.
async fn calls(
    client: &mut weft_tests::pb::echo_client::EchoClient<tonic::transport::Channel>,
    n: u32,
    fail_every: u32,
) -> anyhow::Result<u32> {
    let mut failed = 0;
    for i in 0..n {
        let fail_code = if fail_every > 0 && i % fail_every == 0 {
            13
        } else {
            0
        };
        let r = client
            .unary(EchoRequest {
                fail_code,
                ..Default::default()
            })
            .await;
        anyhow::ensure!(r.is_ok() == (fail_code == 0), "call {i}: {r:?}");
        failed += u32::from(r.is_err());
    }
    Ok(failed)
}

fn edge<'a>(graph: &'a Value, from: &str, to: &str) -> Option<&'a Value> {
    graph["edges"]
        .as_array()?
        .iter()
        .find(|e| e["from"] == from && e["to"] == to)
}

fn node<'a>(graph: &'a Value, name: &str) -> Option<&'a Value> {
    graph["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_endpoints_describe_the_mesh() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let base = format!("http://{}", cp.dashboard);

    // An empty mesh.
    let (code, g) = get_json(&format!("{base}/api/graph")).await?;
    assert_eq!(code, 200);
    assert_eq!(g["nodes"], serde_json::json!([]), "{g}");
    assert_eq!(g["edges"], serde_json::json!([]), "{g}");
    assert_eq!(g["window_seconds"], 10);

    cp.apply_yaml(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo}\nspec: {inboundMode: permissive}\n",
    )
    .await?;
    let instances = echo_instances(&cp, "echo", &["echo-1", "echo-2"]).await?;
    let caller = caller(&cp, "echo", 2).await?;
    let mut client = weft_tests::echo::client(caller.upstream("echo")).await?;
    let failed = calls(&mut client, 130, 13).await?;
    assert_eq!(failed, 10);
    // A plaintext client straight at one instance's inbound (PERMISSIVE).
    let inbound = instances[0].1.inbound;
    let mut plain = weft_tests::echo::client(inbound).await?;
    calls(&mut plain, 5, 0).await?;

    // Each sidecar reports every second: wait for all of it.
    let g = wait_for(
        "the graph to count 130 calls from caller to echo",
        Duration::from_secs(10),
        || async {
            let (_, g) = get_json(&format!("{base}/api/graph?window=60"))
                .await
                .ok()?;
            let done = edge(&g, "caller", "echo")?["requests"] == 130
                && node(&g, "echo")?["requests"] == 135;
            done.then_some(g)
        },
    )
    .await?;
    let e = edge(&g, "caller", "echo").expect("the edge");
    assert_eq!(e["failures"], 10, "{e}");
    assert_eq!(e["mtls"], true);
    let success = e["success_rate"].as_f64().unwrap_or(0.0);
    assert!((success - 120.0 / 130.0).abs() < 1e-4, "{e}");
    assert_eq!(e["state"], "bad", "92% is under 95%: {e}");
    assert!(e["p99_ms"].as_f64().unwrap_or(0.0) > 0.0, "{e}");
    assert!(e["rps"].as_f64().unwrap_or(0.0) > 0.0, "{e}");
    assert_eq!(g["edges"].as_array().map(Vec::len), Some(1), "{g}");
    let echo = node(&g, "echo").expect("echo");
    assert_eq!(
        (&echo["endpoints"], &echo["healthy"]),
        (&2.into(), &2.into())
    );
    assert_eq!(echo["failures"], 10);
    assert_eq!(
        echo["plaintext"], 5,
        "the plaintext caller is flagged: {echo}"
    );
    assert_eq!(echo["state"], "bad", "{echo}");
    let caller_node = node(&g, "caller").expect("caller");
    assert_eq!(caller_node["endpoints"], 0, "a caller only: {caller_node}");
    assert_eq!(caller_node["state"], "idle");

    // The service's page.
    let (code, p) = get_json(&format!("{base}/api/services/echo?window=60")).await?;
    assert_eq!(code, 200, "{p}");
    let ids: Vec<&str> = p["instances"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["id"].as_str()).collect())
        .unwrap_or_default();
    let expected: Vec<&str> = instances
        .iter()
        .map(|(_, s)| s.instance_id.as_str())
        .collect();
    let mut sorted = expected.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "{p}");
    let now_ms = weft_proto::time::unix_ms(std::time::SystemTime::now());
    for i in p["instances"].as_array().into_iter().flatten() {
        assert_eq!(i["health"], "healthy", "{i}");
        assert_eq!(i["connected"], true, "{i}");
        assert!(
            i["certificate_expires_unix_ms"].as_u64().unwrap_or(0) > now_ms,
            "{i}"
        );
        assert!(!i["sidecar_version"].as_str().unwrap_or("").is_empty());
    }
    assert_eq!(
        p["routes"],
        serde_json::json!([{"route": "/weft.test.v1.Echo/Unary", "requests": 135, "failures": 10}]),
        "inbound per route, both instances: {p}"
    );
    assert_eq!(p["callers"].as_array().map(Vec::len), Some(1), "{p}");
    assert_eq!(p["callers"][0]["from"], "caller");
    assert_eq!(p["callees"], serde_json::json!([]));
    let history: u64 = p["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| h["requests"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(history, 135, "the last five minutes hold every call: {p}");
    assert_eq!(p["history"].as_array().map(Vec::len), Some(30));
    let yaml = p["resources_yaml"].as_str().unwrap_or("");
    assert!(
        yaml.contains("kind: \"Service\"") && yaml.contains("inboundMode: \"permissive\""),
        "{yaml}"
    );

    // The sidecars, none with a problem.
    let (_, s) = get_json(&format!("{base}/api/sidecars")).await?;
    let rows = s["sidecars"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 3, "{s}");
    for r in &rows {
        assert_eq!(r["problems"], serde_json::json!([]), "{r}");
        assert!(r["applied_version"].as_u64().unwrap_or(0) > 0, "{r}");
        assert!(r.get("token").is_none() && !r.to_string().contains("PRIVATE KEY"));
    }

    // Bad requests are named.
    let (code, e) = get_json(&format!("{base}/api/services/nosuch")).await?;
    assert_eq!(
        (code, e["error"].as_str()),
        (404, Some("service \"nosuch\" not found"))
    );
    let (code, e) = get_json(&format!("{base}/api/graph?window=0")).await?;
    assert_eq!(code, 400);
    assert!(
        e["error"].as_str().unwrap_or("").contains("from 1 to 60"),
        "{e}"
    );
    let (code, _) = get_json(&format!("{base}/api/nothing")).await?;
    assert_eq!(code, 404);
    let post = http::Request::post(format!("{base}/api/graph"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))?;
    assert_eq!(http_send(post).await?.status, 405);

    // The page: our own script and style only.
    let page = http_get(&format!("{base}/")).await?;
    assert_eq!(page.status, 200);
    let csp = page
        .headers
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(page.body.contains("/app.js"));
    assert_eq!(http_get(&format!("{base}/app.js")).await?.status, 200);

    // `weftctl dashboard` prints where it is.
    let (code, out, err) = cp.weftctl(&["dashboard"], None)?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("http://{}/", cp.dashboard));

    // An instance that fails every call is ejected by the caller's
    // sidecar: the page names who ejected it, until when.
    let failing = &instances[1];
    failing.0.state.fail_all.store(13, Ordering::Relaxed);
    let id = failing.1.instance_id.clone();
    // Calls go on until the page shows it: how many reach the failing
    // instance is the balancer's choice, and on a loaded machine 30 calls
    // once fell short of the five failures in a row that eject it.
    let p = wait_for(
        "the ejection on echo's page",
        Duration::from_secs(20),
        || async {
            let mut c = client.clone();
            for _ in 0..10 {
                let _ = c.unary(EchoRequest::default()).await;
            }
            let (_, p) = get_json(&format!("{base}/api/services/echo")).await.ok()?;
            let row = p["instances"]
                .as_array()?
                .iter()
                .find(|i| i["id"] == id.as_str())?
                .clone();
            (row["ejected_by"].as_array()?.len() == 1).then_some(row)
        },
    )
    .await?;
    assert_eq!(
        p["ejected_by"][0]["instance_id"],
        caller.instance_id.as_str(),
        "{p}"
    );
    assert!(
        p["ejected_by"][0]["until_unix_ms"].as_u64().unwrap_or(0) > now_ms,
        "{p}"
    );
    // An ejected instance makes its service's node red.
    let (_, g) = get_json(&format!("{base}/api/graph")).await?;
    let echo = node(&g, "echo").expect("echo");
    assert_eq!(
        (&echo["ejected"], &echo["state"]),
        (&1.into(), &"bad".into()),
        "{echo}"
    );
    drop(instances);
    Ok(())
}

/// Where the test run saves its screenshots.
fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard-screenshots")
}

const GRAPH_STATE: &str = r##"
    const q = (s) => Array.from(document.querySelectorAll(s));
    return {
      view: document.body.dataset.view || null,
      status: document.getElementById("status").dataset.state,
      banner: document.getElementById("banner").hidden ? null : document.getElementById("banner").textContent,
      nodes: q("#graph .node, #alone .node").map((n) => [n.dataset.name, n.dataset.state]),
      edges: q("#graph .edge").map((e) => ({from: e.dataset.from, to: e.dataset.to, state: e.dataset.state,
        requests: Number(e.dataset.requests), failures: Number(e.dataset.failures), mtls: e.dataset.mtls})),
      empty: document.getElementById("empty") ? document.getElementById("empty").textContent : null,
    };
"##;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_mesh_live_in_a_browser() -> anyhow::Result<()> {
    init_logs();
    let Some(browser) = Browser::start(1400, 900).await? else {
        return Ok(());
    };
    let cp = ControlPlane::start_fast().await?;
    let base = format!("http://{}", cp.dashboard);
    let shots = screenshots();

    // Empty: the page says so.
    browser.open(&format!("{base}/")).await?;
    browser
        .wait_until(
            "the empty mesh",
            Duration::from_secs(10),
            GRAPH_STATE,
            |v| v["empty"].as_str().is_some_and(|t| t.contains("empty")),
        )
        .await?;

    // No ejection for echo: a failing instance keeps getting its share
    // (with it, the callers' sidecars would take it out after five
    // failures, and the edge would only turn amber).
    cp.apply_yaml(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo}\nspec: {circuitBreaker: {consecutiveFailures: 100000}, retries: {attempts: 1}}\n",
    )
    .await?;
    let instances = echo_instances(&cp, "echo", &["echo-1", "echo-2"]).await?;
    let users = echo_instances(&cp, "users", &["users-1"]).await?;
    let frontend = SidecarSpec::new("frontend")
        .control_plane(&cp)
        .upstream("echo")
        .upstream("users")
        .start()
        .await?;
    for (service, n) in [("echo", 2), ("users", 1)] {
        frontend
            .wait_endpoints(service, &format!("{n} endpoints of {service}"), |e| {
                e.len() == n
            })
            .await?;
    }
    let mut to_echo = weft_tests::echo::client(frontend.upstream("echo")).await?;
    let mut to_users = weft_tests::echo::client(frontend.upstream("users")).await?;
    calls(&mut to_echo, 200, 0).await?;
    calls(&mut to_users, 40, 0).await?;

    // The graph: three nodes, two green edges with the numbers sent (the
    // page's window is 10 s; all of it was sent just now).
    let v = browser
        .wait_until(
            "the graph with its two edges",
            Duration::from_secs(15),
            GRAPH_STATE,
            |v| {
                let edges = v["edges"].as_array().cloned().unwrap_or_default();
                edges.len() == 2
                    && edges
                        .iter()
                        .any(|e| e["to"] == "echo" && e["requests"] == 200)
                    && edges
                        .iter()
                        .any(|e| e["to"] == "users" && e["requests"] == 40)
            },
        )
        .await?;
    assert_eq!(v["status"], "live", "{v}");
    assert_eq!(
        v["nodes"],
        serde_json::json!([["echo", "ok"], ["frontend", "idle"], ["users", "ok"]]),
        "{v}"
    );
    for e in v["edges"].as_array().into_iter().flatten() {
        assert_eq!(
            (&e["from"], &e["state"], &e["failures"], &e["mtls"]),
            (&"frontend".into(), &"ok".into(), &0.into(), &"true".into()),
            "{e}"
        );
    }
    browser.screenshot(&shots.join("graph.png")).await?;

    // One echo instance starts failing every call while traffic flows: the
    // node and the edge to it are red within 5 s.
    instances[1].0.state.fail_all.store(13, Ordering::Relaxed);
    let load = tokio::spawn(async move {
        // Bounded: at most 300 calls over at most 15 s.
        let until = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut n = 0u32;
        while n < 300 && tokio::time::Instant::now() < until {
            let _ = to_echo.unary(EchoRequest::default()).await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        n
    });
    let turned = std::time::Instant::now();
    let v = browser
        .wait_until(
            "echo and its edge to turn red",
            Duration::from_secs(5),
            GRAPH_STATE,
            |v| {
                let red_node = v["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|n| n[0] == "echo" && n[1] == "bad"));
                let red_edge = v["edges"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["to"] == "echo" && e["state"] == "bad"));
                red_node && red_edge
            },
        )
        .await?;
    tracing::info!(after = ?turned.elapsed(), "red");
    assert!(
        v["edges"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["to"] == "users" && e["state"] == "ok")),
        "{v}"
    );
    browser.screenshot(&shots.join("graph-failing.png")).await?;
    load.await?;

    // The service's page: instances, routes, charts, resources.
    browser.open(&format!("{base}/#/service/echo")).await?;
    let page = browser
        .wait_until(
            "echo's page",
            Duration::from_secs(10),
            r##"return {
                view: document.body.dataset.view || null,
                instances: Array.from(document.querySelectorAll("#instances tr")).length - 1,
                charts: Array.from(document.querySelectorAll("[data-chart]")).map((c) => c.dataset.chart),
                text: document.getElementById("main").innerText,
            };"##,
            |v| v["view"] == "service" && v["instances"] == 2,
        )
        .await?;
    let text = page["text"].as_str().unwrap_or("");
    assert!(
        text.contains("/weft.test.v1.Echo/Unary"),
        "top routes: {text}"
    );
    assert!(text.contains("frontend"), "called by frontend: {text}");
    assert_eq!(
        page["charts"],
        serde_json::json!(["requests/s", "success", "p99"])
    );
    browser.screenshot(&shots.join("service.png")).await?;

    // A sidecar that rejects an update: first on the sidecars view.
    let token = cp.token("nacker").await?;
    let (tx, mut updates) = cp.discovery_stream("nacker", &[], token).await?;
    let first = updates
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("no update"))?;
    tx.send(pb::SidecarMessage {
        kind: Some(pb::sidecar_message::Kind::Nack(pb::Nack {
            version: first.version,
            reason: "route users-canary: unknown filter".into(),
        })),
    })
    .await?;
    browser.open(&format!("{base}/#/sidecars")).await?;
    let rows = browser
        .wait_until(
            "the NACK on the sidecars view",
            Duration::from_secs(10),
            r##"return Array.from(document.querySelectorAll("#sidecars tr[data-instance]"))
                .map((r) => [r.dataset.instance, r.className, r.querySelector(".problems").textContent]);"##,
            |v| v[0][0] == "nacker-1",
        )
        .await?;
    assert_eq!(rows[0][1], "problem", "{rows}");
    let why = rows[0][2].as_str().unwrap_or("");
    assert!(why.contains("route users-canary: unknown filter"), "{rows}");
    assert_eq!(rows.as_array().map(Vec::len), Some(5), "{rows}");
    browser.screenshot(&shots.join("sidecars.png")).await?;
    drop((tx, updates, instances, users, frontend));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_survives_200_services_and_an_outage() -> anyhow::Result<()> {
    init_logs();
    let Some(browser) = Browser::start(1400, 900).await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let dashboard = free_port()?;
    let dash_flag = format!("127.0.0.1:{dashboard}");
    let cp = ControlPlaneProc::start(
        free_port()?,
        free_port()?,
        &dir.path().join("data"),
        &["--dashboard", &dash_flag],
    )
    .await?;
    let access = cp.access()?;
    let yaml: String = (0..200)
        .map(|i| {
            format!("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: svc-{i:03}}}\nspec: {{}}\n")
        })
        .collect::<Vec<_>>()
        .join("---\n");
    access.apply_yaml(&yaml).await?;

    browser.open(&format!("http://{dash_flag}/")).await?;
    let v = browser
        .wait_until(
            "200 services drawn",
            Duration::from_secs(15),
            GRAPH_STATE,
            |v| v["nodes"].as_array().map(Vec::len) == Some(200),
        )
        .await?;
    assert_eq!(v["status"], "live");
    assert!(
        v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|n| n[1] == "idle"),
        "{v}"
    );
    browser
        .screenshot(&screenshots().join("graph-200.png"))
        .await?;

    // The control plane stops answering (stopped, not gone: its port stays
    // bound, requests hang): the page says so and keeps what it showed.
    cp.proc.signal(libc::SIGSTOP);
    let v = browser
        .wait_until(
            "the outage banner",
            Duration::from_secs(15),
            GRAPH_STATE,
            |v| v["status"] == "down",
        )
        .await;
    cp.proc.signal(libc::SIGCONT);
    let v = v?;
    let banner = v["banner"].as_str().unwrap_or("");
    assert!(banner.contains("not answering"), "{v}");
    assert_eq!(
        v["nodes"].as_array().map(Vec::len),
        Some(200),
        "the last data stays"
    );
    browser
        .screenshot(&screenshots().join("outage.png"))
        .await?;
    // It answers again: the page recovers by itself.
    let v = browser
        .wait_until(
            "the page to recover",
            Duration::from_secs(15),
            GRAPH_STATE,
            |v| v["status"] == "live" && v["banner"].is_null(),
        )
        .await?;
    assert_eq!(v["nodes"].as_array().map(Vec::len), Some(200));
    Ok(())
}
