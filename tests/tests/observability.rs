//! Observability end to end: spans received by a real OTLP/gRPC receiver
//! (parenting, attributes, propagation, sampling), export trouble that must
//! not touch requests, metric names and values after known traffic, the
//! access log parsed as JSON, and the log level changed at runtime.

use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tonic::Request;
use weft_tests::echo::{EchoServerHandle, client, start_echo};
use weft_tests::mesh::{ControlPlane, Sidecar, SidecarSpec};
use weft_tests::otlp::{Collector, Span};
use weft_tests::pb::EchoRequest;
use weft_tests::process::{Proc, SidecarProc};
use weft_tests::util::{http_get, http_send, init_logs, metric, wait_for};

const UNARY: &str = "/weft.test.v1.Echo/Unary";

/// An echo instance behind a sidecar and a caller sidecar, both with
/// `extra` flags (e.g. `--otlp-endpoint`), the caller knowing the instance.
async fn pair(
    cp: &ControlPlane,
    extra: &[(&str, String)],
) -> anyhow::Result<(EchoServerHandle, Sidecar, Sidecar)> {
    let app = start_echo("echo-1").await?;
    let mut server = SidecarSpec::new("echo").control_plane(cp).app(app.addr);
    let mut caller = SidecarSpec::new("caller")
        .control_plane(cp)
        .upstream("echo");
    for (k, v) in extra {
        server = server.arg(k, v);
        caller = caller.arg(k, v);
    }
    let server = server.start().await?;
    let caller = caller.start().await?;
    caller
        .wait_endpoints("echo", "the echo instance", |e| e.len() == 1)
        .await?;
    Ok((app, server, caller))
}

fn with_headers(
    msg: EchoRequest,
    headers: &[(&'static str, &str)],
) -> anyhow::Result<Request<EchoRequest>> {
    let mut req = Request::new(msg);
    for (k, v) in headers {
        req.metadata_mut().insert(*k, v.parse()?);
    }
    Ok(req)
}

fn of_trace<'a>(spans: &'a [Span], trace: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.trace_id == trace).collect()
}

fn one<'a>(spans: &[&'a Span], kind: SpanKind) -> anyhow::Result<&'a Span> {
    let found: Vec<_> = spans.iter().filter(|s| s.kind == kind).collect();
    anyhow::ensure!(
        found.len() == 1,
        "expected one {kind:?} span, got {found:#?}"
    );
    Ok(found[0])
}

#[tokio::test]
async fn a_call_is_one_trace_of_a_client_and_a_server_span() -> anyhow::Result<()> {
    init_logs();
    let collector = Collector::start().await?;
    let cp = ControlPlane::start_fast().await?;
    let (app, server, caller) = pair(&cp, &[("--otlp-endpoint", collector.endpoint())]).await?;
    let mut c = client(caller.upstream("echo")).await?;

    // The calling app's own span, as its OpenTelemetry SDK would send it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let app_span = "00f067aa0ba902b7";
    let req = with_headers(
        EchoRequest {
            message: "traced".into(),
            ..Default::default()
        },
        &[
            ("traceparent", &format!("00-{trace}-{app_span}-01")),
            ("tracestate", "vendor=abc"),
        ],
    )?;
    c.unary(req).await?;
    // A call that fails in the app: an error on the client span only
    // (NOT_FOUND is the caller's problem, not the server's).
    let failing_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    let req = with_headers(
        EchoRequest {
            fail_code: 5,
            ..Default::default()
        },
        &[("traceparent", &format!("00-{failing_trace}-{app_span}-01"))],
    )?;
    assert_eq!(
        c.unary(req)
            .await
            .map(|_| ())
            .expect_err("the call should fail")
            .code(),
        tonic::Code::NotFound
    );
    // No traceparent: the caller's sidecar starts the trace.
    c.unary(EchoRequest::default()).await?;

    let spans = collector
        .wait_for(
            "2 spans for each of 3 calls",
            Duration::from_secs(10),
            |s| s.len() >= 6,
        )
        .await?;
    assert_eq!(spans.len(), 6, "{spans:#?}");

    let t = of_trace(&spans, trace);
    let client_span = one(&t, SpanKind::Client)?;
    let server_span = one(&t, SpanKind::Server)?;
    // Parenting: app span → caller sidecar (client) → echo sidecar (server).
    assert_eq!(client_span.parent_span_id, app_span);
    assert_eq!(server_span.parent_span_id, client_span.span_id);
    assert_ne!(client_span.span_id, app_span);
    assert_eq!(client_span.trace_state, "vendor=abc");
    // The app got the trace with the server span as its parent.
    let seen = app
        .state
        .traceparents
        .lock()
        .map(|t| t.clone())
        .unwrap_or_default();
    assert_eq!(
        seen[0],
        format!("00-{trace}-{}-01", server_span.span_id),
        "{seen:?}"
    );

    // Resources and attributes (OpenTelemetry semantic conventions).
    assert_eq!(client_span.service, "caller");
    assert_eq!(server_span.service, "echo");
    assert_eq!(
        client_span.resource.get("service.instance.id"),
        Some(&caller.instance_id)
    );
    assert_eq!(
        server_span.resource.get("service.instance.id"),
        Some(&server.instance_id)
    );
    for s in [client_span, server_span] {
        assert_eq!(s.name, "weft.test.v1.Echo/Unary");
        assert_eq!(s.attr("rpc.system"), Some("grpc"));
        assert_eq!(s.attr("rpc.service"), Some("weft.test.v1.Echo"));
        assert_eq!(s.attr("rpc.method"), Some("Unary"));
        assert_eq!(s.attr("rpc.grpc.status_code"), Some("0"));
        assert_eq!(s.attr("http.response.status_code"), Some("200"));
        assert_eq!(s.attr("weft.retries"), Some("0"));
        assert_eq!(s.status_code, 0, "{s:#?}");
        assert!(s.end_unix_nano >= s.start_unix_nano);
    }
    assert_eq!(client_span.attr("peer.service"), Some("echo"));
    assert_eq!(
        server_span.attr("peer.service"),
        Some("caller"),
        "the caller's mesh identity"
    );
    assert_eq!(client_span.attr("network.peer.address"), Some("127.0.0.1"));
    assert_eq!(
        client_span.attr("network.peer.port"),
        Some(server.inbound.port().to_string().as_str())
    );
    // The server span lies within the client span.
    assert!(server_span.start_unix_nano >= client_span.start_unix_nano);
    assert!(server_span.end_unix_nano <= client_span.end_unix_nano);

    let f = of_trace(&spans, failing_trace);
    let (fc, fs) = (one(&f, SpanKind::Client)?, one(&f, SpanKind::Server)?);
    assert_eq!(fc.attr("rpc.grpc.status_code"), Some("5"));
    assert_eq!(fc.status_code, 2, "the client span is an error: {fc:#?}");
    assert_eq!(fs.status_code, 0, "NOT_FOUND is no server error: {fs:#?}");

    // The third trace was started by the caller's sidecar: its client span
    // is the root.
    let started: Vec<_> = spans
        .iter()
        .filter(|s| s.trace_id != trace && s.trace_id != failing_trace)
        .collect();
    let root = one(&started, SpanKind::Client)?;
    assert_eq!(root.parent_span_id, "");
    assert_eq!(
        one(&started, SpanKind::Server)?.parent_span_id,
        root.span_id
    );
    assert_eq!(started.len(), 2);

    let m = caller.metrics().await?;
    wait_for(
        "the caller's 3 exported spans counted",
        Duration::from_secs(5),
        || async {
            let m = caller.metrics().await.ok()?;
            (metric(&m, "weft_spans_exported_total", &[]) == Some(3.0)).then_some(())
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{m}"))?;
    Ok(())
}

#[tokio::test]
async fn unsampled_traces_are_propagated_and_not_recorded() -> anyhow::Result<()> {
    init_logs();
    let collector = Collector::start().await?;
    let cp = ControlPlane::start_fast().await?;
    let (app, _server, caller) = pair(
        &cp,
        &[
            ("--otlp-endpoint", collector.endpoint()),
            ("--trace-sampling", "0".into()),
        ],
    )
    .await?;
    let mut c = client(caller.upstream("echo")).await?;
    // New traces at ratio 0: not recorded, and the decision travels on.
    for _ in 0..20 {
        c.unary(EchoRequest::default()).await?;
    }
    // A caller that sampled: its decision stands (parent-based).
    let trace = "6bf92f3577b34da6a3ce929d0e0e4738";
    let req = with_headers(
        EchoRequest::default(),
        &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
    )?;
    c.unary(req).await?;
    // Spans are exported in the order they end, so once the sampled call's
    // two arrived, any span of the 20 before would have too.
    let spans = collector
        .wait_for("the sampled call's spans", Duration::from_secs(10), |s| {
            s.iter().filter(|s| s.trace_id == trace).count() == 2
        })
        .await?;
    assert_eq!(
        spans.len(),
        2,
        "only the sampled trace is recorded: {spans:#?}"
    );

    let seen = app
        .state
        .traceparents
        .lock()
        .map(|t| t.clone())
        .unwrap_or_default();
    assert_eq!(seen.len(), 21);
    for tp in &seen[..20] {
        assert!(
            tp.starts_with("00-") && tp.ends_with("-00"),
            "not sampled, still propagated: {tp:?}"
        );
    }
    assert!(seen[20].starts_with(&format!("00-{trace}-")) && seen[20].ends_with("-01"));
    Ok(())
}

#[tokio::test]
async fn a_stalled_collector_drops_spans_and_never_requests() -> anyhow::Result<()> {
    init_logs();
    let collector = Collector::start().await?;
    collector.stall();
    let cp = ControlPlane::start_fast().await?;
    let (_app, _server, caller) = pair(
        &cp,
        &[
            ("--otlp-endpoint", collector.endpoint()),
            ("--trace-queue", "16".into()),
        ],
    )
    .await?;
    let mut c = client(caller.upstream("echo")).await?;
    for i in 0..300 {
        c.unary(EchoRequest::default())
            .await
            .map_err(|e| anyhow::anyhow!("call {i} failed with the collector stalled: {e}"))?;
    }
    let m = caller.metrics().await?;
    let dropped =
        metric(&m, "weft_spans_dropped_total", &[("reason", "queue-full")]).unwrap_or(0.0);
    // 16 queued, at most one batch of 16 stuck in the export: the rest dropped.
    assert!(dropped >= 300.0 - 32.0, "dropped {dropped}:\n{m}");
    assert!(collector.exports() >= 1, "the sidecar did try to export");
    Ok(())
}

/// Makes `calls` calls through `caller`, which succeed, and waits until
/// their client spans are counted as failed exports.
async fn calls_with_failed_exports(caller: &Sidecar, calls: u32) -> anyhow::Result<()> {
    let mut c = client(caller.upstream("echo")).await?;
    for _ in 0..calls {
        c.unary(EchoRequest::default()).await?;
    }
    wait_for(
        "failed exports counted",
        Duration::from_secs(15),
        || async {
            let m = caller.metrics().await.ok()?;
            let failed = metric(
                &m,
                "weft_spans_dropped_total",
                &[("reason", "export-failed")],
            )?;
            (failed >= f64::from(calls)).then_some(())
        },
    )
    .await
}

#[tokio::test]
async fn an_absent_collector_counts_failed_exports() -> anyhow::Result<()> {
    init_logs();
    // A port with nothing listening: every export is refused.
    let port = weft_tests::process::free_port()?;
    let cp = ControlPlane::start_fast().await?;
    let (_app, _server, caller) = pair(
        &cp,
        &[("--otlp-endpoint", format!("http://127.0.0.1:{port}"))],
    )
    .await?;
    calls_with_failed_exports(&caller, 20).await?;
    Ok(())
}

#[tokio::test]
async fn metrics_count_known_traffic_by_route_and_status() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let (_app, server, caller) = pair(&cp, &[]).await?;
    let mut c = client(caller.upstream("echo")).await?;
    for _ in 0..10 {
        c.unary(EchoRequest::default()).await?;
    }
    for _ in 0..3 {
        let r = c
            .unary(EchoRequest {
                fail_code: 5,
                ..Default::default()
            })
            .await;
        assert_eq!(
            r.map(|_| ()).expect_err("the call should fail").code(),
            tonic::Code::NotFound
        );
    }
    let mut s = c
        .server_stream(EchoRequest {
            count: 2,
            ..Default::default()
        })
        .await?
        .into_inner();
    while s.message().await?.is_some() {}

    // Both sides have recorded every exchange once its response ended.
    let (cm, sm) = wait_for(
        "14 responses on both sides",
        Duration::from_secs(5),
        || async {
            let cm = caller.metrics().await.ok()?;
            let sm = server.metrics().await.ok()?;
            let done =
                |m: &str, d| metric(m, "weft_responses_total", &[("direction", d)]) == Some(14.0);
            (done(&cm, "outbound") && done(&sm, "inbound")).then_some((cm, sm))
        },
    )
    .await?;
    for (m, direction) in [(&cm, "outbound"), (&sm, "inbound")] {
        let l = |extra: &[(&'static str, &'static str)]| {
            let mut v = vec![
                ("direction", direction),
                ("service", "echo"),
                ("route", UNARY),
            ];
            v.extend_from_slice(extra);
            v
        };
        assert_eq!(
            metric(m, "weft_requests_total", &l(&[])),
            Some(13.0),
            "{direction}:\n{m}"
        );
        assert_eq!(
            metric(
                m,
                "weft_requests_total",
                &[
                    ("direction", direction),
                    ("route", "/weft.test.v1.Echo/ServerStream")
                ]
            ),
            Some(1.0)
        );
        assert_eq!(
            metric(
                m,
                "weft_responses_total",
                &l(&[("status", "200"), ("grpc_status", "0"), ("error", "")])
            ),
            Some(10.0),
            "{direction}:\n{m}"
        );
        assert_eq!(
            metric(m, "weft_responses_total", &l(&[("grpc_status", "5")])),
            Some(3.0)
        );
        assert_eq!(
            metric(m, "weft_request_duration_seconds_count", &l(&[])),
            Some(13.0)
        );
        assert!(metric(m, "weft_request_duration_seconds_sum", &l(&[])).unwrap_or(0.0) > 0.0);
        assert_eq!(
            metric(
                m,
                "weft_request_duration_seconds_bucket",
                &l(&[("le", "+Inf")])
            ),
            Some(13.0)
        );
        assert!(metric(m, "weft_certificate_expiry_timestamp_seconds", &[]).unwrap_or(0.0) > 1e9);
        assert_eq!(
            metric(m, "weft_control_plane_stream", &[("state", "synced")]),
            Some(1.0)
        );
    }
    // One connection between the pair: one handshake on each side.
    assert_eq!(
        metric(
            &cm,
            "weft_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &sm,
            "weft_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &cm,
            "weft_endpoints",
            &[("service", "echo"), ("health", "healthy")]
        ),
        Some(1.0)
    );
    assert_eq!(metric(&cm, "weft_retries_total", &[]).unwrap_or(0.0), 0.0);

    // The control plane: two streams, pushes answered (push latency seen).
    let url = format!("http://{}/metrics", cp.admin);
    let m = http_get(&url).await?.body;
    assert_eq!(
        metric(&m, "weft_control_plane_sidecars_connected", &[]),
        Some(2.0),
        "{m}"
    );
    let pushes = metric(&m, "weft_control_plane_pushes_total", &[]).unwrap_or(0.0);
    assert!(pushes >= 2.0, "{m}");
    let answered = metric(&m, "weft_control_plane_push_duration_seconds_count", &[]).unwrap_or(0.0);
    assert!(
        answered >= 2.0 && answered <= pushes,
        "{answered} answered of {pushes}:\n{m}"
    );
    assert_eq!(metric(&m, "weft_control_plane_instances", &[]), Some(2.0));
    Ok(())
}

/// A sidecar process (for its stdout and stderr) in front of an echo app.
async fn sidecar_proc(
    cp: &weft_tests::process::ControlPlaneProc,
    app: &EchoServerHandle,
    extra: &[&str],
) -> anyhow::Result<SidecarProc> {
    let mut args = vec!["--app".to_string(), app.addr.to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    SidecarProc::start("echo", Some(&cp.access()?), &args).await
}

fn json_lines(p: &Proc) -> Vec<serde_json::Value> {
    p.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .collect()
}

#[tokio::test]
async fn the_access_log_is_one_json_line_per_request() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let cp = weft_tests::process::ControlPlaneProc::start(
        weft_tests::process::free_port()?,
        weft_tests::process::free_port()?,
        dir.path(),
        &[],
    )
    .await?;
    let app = start_echo("echo-1").await?;
    let collector = Collector::start().await?;
    let endpoint = collector.endpoint();
    let sc = sidecar_proc(&cp, &app, &["--access-log", "--otlp-endpoint", &endpoint]).await?;
    let caller = SidecarSpec::new("caller")
        .access(&cp.access()?)
        .upstream("echo")
        .start()
        .await?;
    caller
        .wait_endpoints("echo", "the echo instance", |e| e.len() == 1)
        .await?;
    let mut c = client(caller.upstream("echo")).await?;
    let trace = "7bf92f3577b34da6a3ce929d0e0e4739";
    let req = with_headers(
        EchoRequest {
            message: "logged".into(),
            ..Default::default()
        },
        &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
    )?;
    c.unary(req).await?;

    let line = wait_for("the access log line", Duration::from_secs(5), || async {
        json_lines(&sc.proc)
            .into_iter()
            .find(|v| v["trace_id"] == trace)
    })
    .await?;
    assert_eq!(line["direction"], "inbound", "{line}");
    assert_eq!(line["service"], "echo");
    assert_eq!(line["caller"], "caller");
    assert_eq!(line["protocol"], "grpc");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], UNARY);
    assert_eq!(line["status"], 200);
    assert_eq!(line["grpc_status"], 0);
    assert_eq!(line["upstream"], app.addr.to_string());
    assert_eq!(line["retries"], 0);
    assert!(
        line["duration_ms"].as_f64().is_some_and(|d| d >= 0.0),
        "{line}"
    );
    assert!(
        line["timestamp"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "{line}"
    );
    // The span id logged is the span the collector gets: logs and traces join.
    let spans = collector
        .wait_for("the server span", Duration::from_secs(10), |s| {
            s.iter().any(|s| s.trace_id == trace)
        })
        .await?;
    assert_eq!(line["span_id"], spans[0].span_id.as_str());
    // The process's own logs are JSON lines too.
    let logs: Vec<_> = json_lines(&sc.proc)
        .into_iter()
        .filter(|v| v.get("level").is_some())
        .collect();
    assert!(
        !logs.is_empty(),
        "no JSON log lines:\n{}",
        sc.proc.log_text()
    );
    let text = sc.proc.log_text();
    for l in text.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(l).is_ok(),
            "not a JSON line: {l}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_log_level_changes_at_runtime() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let cp = weft_tests::process::ControlPlaneProc::start(
        weft_tests::process::free_port()?,
        weft_tests::process::free_port()?,
        dir.path(),
        &["--log", "warn"],
    )
    .await?;
    let app = start_echo("echo-1").await?;
    let sc = sidecar_proc(&cp, &app, &["--log", "warn"]).await?;
    for (admin, proc) in [(sc.admin, &sc.proc), (cp.admin, &cp.proc)] {
        let url = format!("http://{admin}/log-level");
        assert_eq!(http_get(&url).await?.body.trim(), "warn");
        let put = |body: &'static str| {
            http::Request::put(&url).body(http_body_util::Full::new(bytes::Bytes::from(body)))
        };
        // A bad filter is refused, naming it, and changes nothing.
        let r = http_send(put("weft_sidecar=loud")?).await?;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("weft_sidecar=loud"), "{}", r.body);
        assert_eq!(http_get(&url).await?.body.trim(), "warn");
        // Debug from now on: the next debug event shows up.
        let before = json_lines(proc)
            .iter()
            .filter(|v| v["level"] == "DEBUG")
            .count();
        assert_eq!(before, 0, "nothing below warn before the change");
        let r = http_send(put("debug")?).await?;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(http_get(&url).await?.body.trim(), "debug");
        wait_for("a debug line", Duration::from_secs(10), || async {
            // Admin requests are logged at debug.
            let _ = http_get(&format!("http://{admin}/metrics")).await;
            json_lines(proc)
                .iter()
                .any(|v| v["level"] == "DEBUG")
                .then_some(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", proc.log_text()))?;
    }
    Ok(())
}

#[tokio::test]
async fn a_collector_that_asks_for_a_client_certificate_gets_spans_from_sidecars_that_have_one()
-> anyhow::Result<()> {
    init_logs();
    let (ca, chain, key) = collector_cert()?;
    let (client_ca, client_chain, client_key) = collector_cert()?;
    let collector = Collector::start_mtls(&chain, &key, &client_ca).await?;
    let dir = tempfile::tempdir()?;
    let file = |name: &str, text: &str| {
        weft_tests::mesh::write_temp(dir.path(), name, text).map(|p| p.display().to_string())
    };
    let (ca_file, cert_file, key_file) = (
        file("ca.pem", &ca)?,
        file("client.pem", &client_chain)?,
        file("client.key", &client_key)?,
    );
    let endpoint = format!("https://{}", collector.addr);
    let cp = ControlPlane::start_fast().await?;
    let (_app, _server, caller) = pair(
        &cp,
        &[
            ("--otlp-endpoint", endpoint.clone()),
            ("--otlp-ca-file", ca_file.clone()),
            ("--otlp-cert-file", cert_file),
            ("--otlp-key-file", key_file),
        ],
    )
    .await?;
    let mut c = client(caller.upstream("echo")).await?;
    c.unary(EchoRequest::default()).await?;
    let spans = collector
        .wait_for("both spans over mutual TLS", Duration::from_secs(10), |s| {
            s.len() >= 2
        })
        .await?;
    assert_eq!(spans.len(), 2);

    // Without a client certificate the collector refuses the connection.
    let caller = SidecarSpec::new("caller")
        .arg("--otlp-endpoint", &endpoint)
        .arg("--otlp-ca-file", &ca_file);
    a_refused_caller_sends_nothing(&cp, caller, &collector).await
}

/// A second caller that the collector's TLS refuses (or that refuses the
/// collector): its spans are counted as failed, its calls succeed, and the
/// collector still has only the first caller's span.
async fn a_refused_caller_sends_nothing(
    cp: &ControlPlane,
    spec: SidecarSpec,
    collector: &Collector,
) -> anyhow::Result<()> {
    let caller = spec.control_plane(cp).upstream("echo").start().await?;
    caller
        .wait_endpoints("echo", "the echo instance", |e| e.len() == 1)
        .await?;
    calls_with_failed_exports(&caller, 5).await?;
    assert_eq!(
        collector
            .spans()
            .iter()
            .filter(|s| s.service == "caller")
            .count(),
        1,
        "only the first caller's span arrived"
    );
    Ok(())
}

/// A CA and a server certificate from it for 127.0.0.1: (CA PEM, chain PEM,
/// key PEM).
fn collector_cert() -> anyhow::Result<(String, String, String)> {
    use rcgen::{CertificateParams, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.subject_alt_names = vec![SanType::IpAddress("127.0.0.1".parse()?)];
    let cert = leaf.signed_by(&key, &issuer)?;
    let pem = weft_proto::identity::pem;
    Ok((
        pem("CERTIFICATE", ca_cert.der()),
        pem("CERTIFICATE", cert.der()),
        pem("PRIVATE KEY", &key.serialize_der()),
    ))
}

#[tokio::test]
async fn spans_go_to_an_https_collector_that_the_given_ca_vouches_for() -> anyhow::Result<()> {
    init_logs();
    let (ca, chain, key) = collector_cert()?;
    let collector = Collector::start_tls(&chain, &key).await?;
    let dir = tempfile::tempdir()?;
    let ca_file = weft_tests::mesh::write_temp(dir.path(), "ca.pem", &ca)?;
    let endpoint = format!("https://{}", collector.addr);
    let cp = ControlPlane::start_fast().await?;
    let (_app, _server, caller) = pair(
        &cp,
        &[
            ("--otlp-endpoint", endpoint.clone()),
            ("--otlp-ca-file", ca_file.display().to_string()),
        ],
    )
    .await?;
    let mut c = client(caller.upstream("echo")).await?;
    c.unary(EchoRequest::default()).await?;
    let spans = collector
        .wait_for("both spans over TLS", Duration::from_secs(10), |s| {
            s.len() >= 2
        })
        .await?;
    assert_eq!(spans.len(), 2);

    // A CA that did not sign the collector's certificate: nothing is sent,
    // the spans are counted as failed, the requests are untouched.
    let (other_ca, _, _) = collector_cert()?;
    let other = weft_tests::mesh::write_temp(dir.path(), "other.pem", &other_ca)?;
    let caller = SidecarSpec::new("caller")
        .arg("--otlp-endpoint", &endpoint)
        .arg("--otlp-ca-file", other.display());
    a_refused_caller_sends_nothing(&cp, caller, &collector).await
}
