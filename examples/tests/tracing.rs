//! One request through the restaurant is one trace: the quick start runs
//! the real binaries with their traces sent to an OTLP/gRPC receiver in this
//! test process, and the spans of one request must form the chain
//! client app → the gateway → order-service's sidecar → order-service →
//! its sidecar → a user-service sidecar → user-service, each the parent of
//! the next. With RabbitMQ installed (required under `CI=true`), an order
//! is one trace too, across the queue: order-service's publish span is the
//! parent of email-service's span for the email.

use std::time::Duration;

use weft_tests::otlp::{Collector, Span, SpanKind};

/// One hop of the expected chain: (service, app or sidecar, kind, name).
const CHAIN: [(&str, &str, SpanKind, &str); 8] = [
    (
        "quickstart-client",
        "app",
        SpanKind::Client,
        "GET /api/orders",
    ),
    ("gateway", "sidecar", SpanKind::Client, "GET"),
    ("order-service", "sidecar", SpanKind::Server, "GET"),
    ("order-service", "app", SpanKind::Server, "GET /orders"),
    (
        "order-service",
        "app",
        SpanKind::Client,
        "restaurant.v1.UserService/GetUser",
    ),
    (
        "order-service",
        "sidecar",
        SpanKind::Client,
        "restaurant.v1.UserService/GetUser",
    ),
    (
        "user-service",
        "sidecar",
        SpanKind::Server,
        "restaurant.v1.UserService/GetUser",
    ),
    (
        "user-service",
        "app",
        SpanKind::Server,
        "restaurant.v1.UserService/GetUser",
    ),
];

/// The spans of `trace`, ordered root first along the parent links; an
/// error names what is missing or branched.
fn chain(spans: &[Span], trace: &str) -> anyhow::Result<Vec<Span>> {
    let of: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace).collect();
    let mut out = Vec::new();
    let mut parent = String::new();
    loop {
        let children: Vec<&&Span> = of.iter().filter(|s| s.parent_span_id == parent).collect();
        match children.as_slice() {
            [] => break,
            [one] => {
                parent = one.span_id.clone();
                out.push((**one).clone());
            }
            many => anyhow::bail!("span {parent:?} has {} children: {many:#?}", many.len()),
        }
    }
    anyhow::ensure!(
        out.len() == of.len(),
        "{} of the trace's {} spans are not on one chain from the root: {of:#?}",
        of.len() - out.len(),
        of.len()
    );
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_is_one_trace_through_the_restaurant() -> anyhow::Result<()> {
    let rabbitmq = weft_examples::broker::find_server().is_some();
    assert!(
        rabbitmq || std::env::var("CI").as_deref() != Ok("true"),
        "rabbitmq-server is not installed, and CI=true requires it (.ci/run installs it)"
    );
    let collector = Collector::start().await?;
    let dir = tempfile::tempdir()?;
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_quickstart"));
    cmd.args([
        "--once",
        "--free-ports",
        "--requests",
        "3",
        "--rate",
        "50",
        "--orders",
        "1",
        "--otlp-endpoint",
    ])
    .arg(collector.endpoint())
    .arg("--workdir")
    .arg(dir.path());
    // The quick start bounds its own waits and stops every process it started.
    let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "quickstart failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("http://127.0.0.1:16686/search?service=quickstart-client"),
        "the quick start prints where to see the traces:\n{stdout}"
    );

    // Every process flushed its spans when it stopped; three requests, three
    // traces of eight spans each; and the REST call the quick start makes
    // without a trace of its own, a trace the gateway started (3 spans);
    // with RabbitMQ, one order (10 spans).
    let want = if rabbitmq { 37 } else { 27 };
    let spans = collector
        .wait_for(&format!("{want} spans"), Duration::from_secs(10), |s| {
            s.len() >= want
        })
        .await?;
    let (roots, started): (Vec<&Span>, Vec<&Span>) = spans
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .partition(|s| s.service == "quickstart-client");
    let (roots, orders): (Vec<&Span>, Vec<&Span>) =
        roots.into_iter().partition(|s| s.name == "GET /api/orders");
    if rabbitmq {
        let [order] = orders.as_slice() else {
            panic!("one trace per order: {orders:#?}")
        };
        one_order_is_one_trace_across_the_queue(&spans, order);
    } else {
        println!("RabbitMQ is not installed: the trace across the queue was not checked");
        assert!(orders.is_empty(), "{orders:#?}");
    }
    assert_eq!(roots.len(), 3, "one root per request: {roots:#?}");
    let [by_gateway] = started.as_slice() else {
        panic!("one trace started by the gateway: {started:#?}")
    };
    let hops: Vec<_> = chain(&spans, &by_gateway.trace_id)?
        .iter()
        .map(|s| (s.service.clone(), s.kind, s.name.clone()))
        .collect();
    let get_user = "restaurant.v1.UserService/GetUser".to_string();
    assert_eq!(
        hops,
        [
            ("gateway".to_string(), SpanKind::Client, get_user.clone()),
            (
                "user-service".to_string(),
                SpanKind::Server,
                get_user.clone()
            ),
            ("user-service".to_string(), SpanKind::Server, get_user),
        ]
    );
    for root in roots {
        let hops = chain(&spans, &root.trace_id)?;
        let got: Vec<_> = hops
            .iter()
            .map(|s| {
                (
                    s.service.as_str(),
                    s.resource.get("weft.component").map_or("", String::as_str),
                    s.kind,
                    s.name.as_str(),
                )
            })
            .collect();
        assert_eq!(got, CHAIN.to_vec(), "trace {}", root.trace_id);
        for s in &hops {
            assert_eq!(s.status_code, 0, "no errors: {s:#?}");
            assert!(s.start_unix_nano <= s.end_unix_nano);
        }
        // Semantic-convention attributes on the sidecars' spans.
        let [_, client_sc, order_in, _, _, order_out, user_in, _] = hops.as_slice() else {
            unreachable!("the chain has 8 hops")
        };
        assert_eq!(client_sc.attr("http.request.method"), Some("GET"));
        assert_eq!(client_sc.attr("url.path"), Some("/api/orders"));
        assert_eq!(client_sc.attr("http.response.status_code"), Some("200"));
        assert_eq!(client_sc.attr("peer.service"), Some("order-service"));
        assert_eq!(order_in.attr("peer.service"), Some("gateway"));
        assert_eq!(order_out.attr("rpc.system"), Some("grpc"));
        assert_eq!(
            order_out.attr("rpc.service"),
            Some("restaurant.v1.UserService")
        );
        assert_eq!(order_out.attr("rpc.method"), Some("GetUser"));
        assert_eq!(order_out.attr("rpc.grpc.status_code"), Some("0"));
        assert_eq!(order_out.attr("peer.service"), Some("user-service"));
        assert_eq!(order_out.attr("weft.retries"), Some("0"));
        assert_eq!(user_in.attr("peer.service"), Some("order-service"));
        let instance = user_in
            .resource
            .get("service.instance.id")
            .cloned()
            .unwrap_or_default();
        assert!(
            ["user-1", "user-2"].contains(&instance.as_str()),
            "{instance}"
        );
    }
    Ok(())
}

/// The order's trace: the client's POST through the gateway to
/// order-service, which asks user-service (4 spans) and publishes
/// `order.created` (a producer span under its server span); email-service's
/// consumer span is the publish span's child, in the same trace.
fn one_order_is_one_trace_across_the_queue(spans: &[Span], root: &Span) {
    let of: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == root.trace_id)
        .collect();
    assert_eq!(of.len(), 10, "the order's trace: {of:#?}");
    let find = |service: &str, kind: SpanKind| -> &Span {
        let found: Vec<_> = of
            .iter()
            .filter(|s| s.service == service && s.kind == kind)
            .collect();
        match found.as_slice() {
            [one] => one,
            _ => panic!("one {kind:?} span of {service}: {of:#?}"),
        }
    };
    let publish = find("order-service", SpanKind::Producer);
    let email = find("email-service", SpanKind::Consumer);
    let order_app = of
        .iter()
        .find(|s| {
            s.service == "order-service"
                && s.kind == SpanKind::Server
                && s.resource.get("weft.component").map(String::as_str) == Some("app")
        })
        .unwrap_or_else(|| panic!("order-service's server span: {of:#?}"));
    assert_eq!(order_app.name, "POST /orders");
    assert_eq!(publish.name, "publish order.created");
    assert_eq!(
        publish.parent_span_id, order_app.span_id,
        "the publish is part of the order's request"
    );
    assert_eq!(
        email.parent_span_id, publish.span_id,
        "the email continues the publish"
    );
    assert_eq!(email.name, "process order.created");
    assert_eq!(publish.attr("messaging.system"), Some("rabbitmq"));
    assert_eq!(
        email.attr("messaging.message.id"),
        publish.attr("messaging.message.id")
    );
    for s in &of {
        assert_eq!(s.status_code, 0, "no errors: {s:#?}");
    }
    // The request's path up to order-service is the chain the GETs take.
    let mut up = vec![order_app.service.as_str()];
    let mut at = *order_app;
    while !at.parent_span_id.is_empty() {
        let Some(parent) = of.iter().find(|s| s.span_id == at.parent_span_id) else {
            panic!("a broken parent link at {at:#?}")
        };
        up.push(parent.service.as_str());
        at = parent;
    }
    assert_eq!(at.span_id, root.span_id);
    assert_eq!(
        up,
        [
            "order-service",
            "order-service",
            "gateway",
            "quickstart-client"
        ]
    );
}
