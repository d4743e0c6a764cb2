//! Routes on a real control plane: `weftctl` applies them (a bad file is
//! rejected whole, each problem named), prints them back in the Gateway
//! API's YAML, explains a request with the control plane's own matcher, and
//! deletes them; and a caller's discovery stream receives a service's
//! routes, the services they send to, and every change.

use std::time::Duration;

use weft_control_plane::resource::parse_documents;
use weft_proto::v1 as pb;
use weft_tests::mesh::ControlPlane;
use weft_tests::util::init_logs;

const SERVICES: &str = "apiVersion: weft.dev/v1
kind: Service
metadata: {name: users}
spec:
  protocol: http
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: orders}
---
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: users-callers}
spec:
  service: users
  rules:
    - from: [orders]
      http: [{methods: [GET], pathPrefix: /users}]
";

const ROUTES: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: users-canary
spec:
  parentRefs:
    - {group: "", kind: Service, name: users}
  rules:
    - matches:
        - headers: [{name: x-canary, value: "1"}]
      backendRefs: [{name: users, subset: v2}]
    - matches:
        - path: {type: PathPrefix, value: /api}
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
      backendRefs:
        - {name: users, subset: v1, weight: 90}
        - {name: users, subset: v2, weight: 10}
      timeouts: {request: 2s}
      retry: {attempts: 2, on: [unavailable]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: orders-get
spec:
  parentRefs: [{name: orders}]
  rules:
    - matches: [{method: {service: orders.v1.Orders, method: Get}}]
      backendRefs: [{name: orders}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_applied_whole_printed_explained_and_deleted() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let (code, _, err) = cp.weftctl(&["apply", "-f", "-"], Some(SERVICES))?;
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = cp.weftctl(&["apply", "-f", "-"], Some(ROUTES))?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "httproute/users-canary created\ngrpcroute/orders-get created\n"
    );

    // A file with problems only the control plane can see (what exists,
    // what other routes take): refused whole, each problem named.
    let bad = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: users-more}
spec:
  parentRefs: [{name: users}, {name: billing}]
  rules:
    - matches: [{headers: [{name: x-canary, value: "1"}]}]
      backendRefs: [{name: users, subset: v3}]
    - matches: [{path: {value: /admin}}]
      filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: shadow}}
---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: audit}
"#;
    let (_, before, _) = cp.weftctl(&["get", "routes", "-o", "yaml"], None)?;
    let (code, _, err) = cp.weftctl(&["apply", "-f", "-"], Some(bad))?;
    assert_eq!(code, 1);
    for problem in [
        "document 1 (HTTPRoute/users-more): spec.parentRefs[1].name: unknown service billing",
        "document 1 (HTTPRoute/users-more): spec.rules[0].backendRefs[0].subset: service users has no subset \"v3\" (it defines v1, v2)",
        "document 1 (HTTPRoute/users-more): spec.rules[1].filters[0].requestMirror.backendRef.name: unknown service shadow",
        "document 1 (HTTPRoute/users-more): spec.rules[0].matches[0]: matches exactly what HTTPRoute/users-canary spec.rules[0].matches[0] matches on service users, which comes first: this one could never be taken",
    ] {
        assert!(err.contains(problem), "{problem}\nnot in:\n{err}");
    }
    // And one with problems in the file itself, refused by weftctl.
    let bad = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: broken}\nspec:\n  parentRefs: [{name: users}]\n  rules:\n    - matches: [{path: {type: RegularExpression, value: \"/users/(\"}}]\n      backendRefs: [{name: users, weight: 0}]\n    - matches: [{path: {type: Exact, value: /a}}]\n      filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]\n";
    let (code, _, err) = cp.weftctl(&["apply", "-f", "-"], Some(bad))?;
    assert_eq!(code, 1);
    for problem in [
        "document 1 (HTTPRoute/broken): spec.rules[0].matches[0].path.value: \"/users/(\" is not a regular expression",
        "document 1 (HTTPRoute/broken): spec.rules[1].filters[0]: a prefix can only be replaced when the rule matches by path prefix",
    ] {
        assert!(err.contains(problem), "{problem}\nnot in:\n{err}");
    }
    let (_, after, _) = cp.weftctl(&["get", "routes", "-o", "yaml"], None)?;
    assert_eq!(before, after, "nothing of a rejected file is applied");
    let (_, services, _) = cp.weftctl(&["get", "services", "audit"], None)?;
    assert!(!services.contains("audit"), "{services}");

    // Printed back as applied: the Gateway API's YAML, and a table.
    let back = parse_documents(&after)?;
    let sent = parse_documents(ROUTES)?;
    assert_eq!(back, sent, "HTTPRoutes, then GRPCRoutes:\n{after}");
    let (_, yaml, _) = cp.weftctl(&["get", "httproute", "users-canary", "-o", "yaml"], None)?;
    assert!(
        yaml.starts_with("apiVersion: \"gateway.networking.k8s.io/v1\"\nkind: \"HTTPRoute\""),
        "{yaml}"
    );
    assert_eq!(parse_documents(&yaml)?, sent[..1]);
    let (code, table, err) = cp.weftctl(&["get", "routes"], None)?;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("BACKENDS"),
        "{table}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("users-canary")
            && l.contains("HTTPRoute")
            && l.contains("users:v2,users:v1")),
        "{table}"
    );
    let (code, _, err) = cp.weftctl(&["get", "grpcroutes", "users-canary"], None)?;
    assert_eq!(code, 1, "{err}");

    // Explained by the control plane: the rule, its backends and why.
    let (code, out, err) = cp.weftctl(
        &[
            "explain",
            "--from",
            "orders",
            "GET",
            "http://users/api/users/7?page=2",
        ],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rule taken: HTTPRoute/users-canary rules[1].matches[0]"),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.contains("users")
            && l.contains("v1")
            && l.contains("90.0%")
            && l.contains("/users/7")
            && l.contains("allowed by AuthorizationPolicy/users-callers rules[0]")),
        "{out}"
    );
    assert!(out.contains("attempts: 2"), "{out}");
    let (code, out, err) = cp.weftctl(
        &[
            "explain",
            "--from",
            "web",
            "POST",
            "http://users/x",
            "-H",
            "x-canary: 1",
            "-o",
            "json",
        ],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["taken"]["route"], "HTTPRoute/users-canary");
    assert_eq!(v["taken"]["rule"], 0);
    assert_eq!(v["backends"][0]["subset"], "v2");
    assert_eq!(v["backends"][0]["allowed"], false);
    let (_, out, _) = cp.weftctl(
        &[
            "explain",
            "--from",
            "orders",
            "GET",
            "/health",
            "--service",
            "users",
        ],
        None,
    )?;
    assert!(
        out.contains("no route matches: the service's default (all endpoints)"),
        "{out}"
    );
    for why in [
        "rules[1].matches[0]   no: the path differs",
        "rules[0].matches[0]   no: header x-canary differs or is missing",
    ] {
        assert!(out.contains(why), "{why}\nnot in:\n{out}");
    }
    let (code, _, err) = cp.weftctl(
        &["explain", "--from", "orders", "GET", "http://nobody/"],
        None,
    )?;
    assert_eq!(code, 1);
    assert!(err.contains("unknown service nobody"), "{err}");

    // A service its routes use cannot go; the routes can.
    let (code, _, err) = cp.weftctl(&["delete", "service", "users"], None)?;
    assert_eq!(code, 1);
    assert!(err.contains("Service/users is in use"), "{err}");
    let (code, out, err) = cp.weftctl(&["delete", "httproute", "users-canary"], None)?;
    assert_eq!(
        (code, out.as_str()),
        (0, "httproute/users-canary deleted\n"),
        "{err}"
    );
    let (code, out, err) = cp.weftctl(&["delete", "grpcroute", "orders-get"], None)?;
    assert_eq!(
        (code, out.as_str()),
        (0, "grpcroute/orders-get deleted\n"),
        "{err}"
    );
    let (_, out, _) = cp.weftctl(&["get", "routes"], None)?;
    assert_eq!(out, "no routes\n");
    let (code, _, err) = cp.weftctl(&["delete", "service", "users"], None)?;
    assert_eq!(code, 0, "{err}");
    Ok(())
}

/// The discovery stream of a sidecar of `service` calling `upstreams`.
async fn discovery_stream(
    cp: &ControlPlane,
    service: &str,
    upstreams: &[&str],
) -> anyhow::Result<weft_tests::mesh::RawStream> {
    cp.discovery_stream(service, upstreams, cp.token(service).await?)
        .await
}

/// The next update, ACKed as a sidecar does.
async fn next(
    tx: &tokio::sync::mpsc::Sender<pb::SidecarMessage>,
    updates: &mut tonic::Streaming<pb::DiscoveryUpdate>,
) -> anyhow::Result<pb::DiscoveryUpdate> {
    let u = tokio::time::timeout(Duration::from_secs(10), updates.message())
        .await??
        .ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
    tx.send(pb::SidecarMessage {
        kind: Some(pb::sidecar_message::Kind::Ack(pb::Ack {
            version: u.version,
        })),
    })
    .await?;
    Ok(u)
}

/// The next update that says something about `service`.
async fn next_about(
    tx: &tokio::sync::mpsc::Sender<pb::SidecarMessage>,
    updates: &mut tonic::Streaming<pb::DiscoveryUpdate>,
    service: &str,
) -> anyhow::Result<(pb::DiscoveryUpdate, pb::ServiceUpdate)> {
    loop {
        let u = next(tx, updates).await?;
        if let Some(s) = u.services.iter().find(|s| s.name == service).cloned() {
            return Ok((u, s));
        }
    }
}

fn route_names(u: &pb::ServiceUpdate) -> Vec<String> {
    u.routing
        .as_ref()
        .map(|r| r.routes.iter().map(|x| x.name.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_receives_the_routes_of_what_it_calls_and_every_change() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let split = |v1: u32, v2: u32| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: users-split}}\nspec:\n  parentRefs: [{{name: users}}]\n  rules:\n    - backendRefs: [{{name: users, subset: v1, weight: {v1}}}, {{name: users, subset: v2, weight: {v2}}}]\n      filters: [{{type: RequestMirror, requestMirror: {{backendRef: {{name: ledger}}, percent: 5}}}}]\n"
        )
    };
    cp.apply_yaml(&format!(
        "{SERVICES}---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: ledger}}\n---\n{}",
        split(90, 10)
    ))
    .await?;

    let (tx, mut updates) = discovery_stream(&cp, "orders", &["users"]).await?;
    let first = next(&tx, &mut updates).await?;
    assert!(first.full);
    let users = first
        .services
        .iter()
        .find(|s| s.name == "users")
        .ok_or_else(|| anyhow::anyhow!("no users in {first:?}"))?;
    assert_eq!(route_names(users), ["HTTPRoute/users-split"]);
    let rule = &users.routing.as_ref().expect("routing").routes[0].rules[0];
    let weights: Vec<(String, Option<u32>)> = rule
        .backends
        .iter()
        .map(|b| (b.subset.clone(), b.weight))
        .collect();
    assert_eq!(
        weights,
        [("v1".to_string(), Some(90)), ("v2".to_string(), Some(10))]
    );
    // The mirror's service comes too, as if subscribed; its own routing
    // (none) is whole as well.
    let ledger = first
        .services
        .iter()
        .find(|s| s.name == "ledger")
        .ok_or_else(|| anyhow::anyhow!("the mirror's service was not sent: {first:?}"))?;
    assert!(ledger.known);
    assert_eq!(ledger.routing, Some(pb::Routing::default()));

    // A change of the route: the service is sent again, routing whole.
    cp.apply_yaml(&split(50, 50)).await?;
    let (update, users) = next_about(&tx, &mut updates, "users").await?;
    assert!(!update.full);
    let rule = &users.routing.as_ref().expect("routing").routes[0].rules[0];
    assert_eq!(
        rule.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [Some(50), Some(50)]
    );
    assert!(
        users.endpoints.is_empty() && users.policy.is_none(),
        "only what changed"
    );

    // Deleted: an empty routing, which tells the sidecar there are none.
    let mut admin = cp.admin_client().await?;
    admin
        .delete(pb::DeleteRequest {
            kind: "httproute".into(),
            name: "users-split".into(),
        })
        .await?;
    let (_, users) = next_about(&tx, &mut updates, "users").await?;
    assert_eq!(users.routing, Some(pb::Routing::default()));

    // The sidecar shows the services it was sent as subscriptions.
    let sidecars = admin
        .list_sidecars(pb::ListSidecarsRequest {})
        .await?
        .into_inner()
        .sidecars;
    let orders = sidecars
        .iter()
        .find(|s| s.service == "orders")
        .ok_or_else(|| anyhow::anyhow!("orders is not connected"))?;
    assert!(
        orders.subscriptions.iter().any(|s| s == "ledger"),
        "{:?}",
        orders.subscriptions
    );
    Ok(())
}

/// One unary call through `addr` with `headers`; the instance that served it.
async fn served_by(addr: std::net::SocketAddr, headers: &[(&'static str, &str)]) -> Option<String> {
    let mut c = weft_tests::echo::client(addr).await.ok()?;
    let mut req = tonic::Request::new(weft_tests::pb::EchoRequest::default());
    for (k, v) in headers {
        req.metadata_mut().insert(*k, v.parse().ok()?);
    }
    c.unary(req).await.ok().map(|r| r.into_inner().instance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_applied_to_the_control_plane_steers_a_real_caller() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    cp.apply_yaml(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec:\n  protocol: grpc\n  subsets:\n    - {name: v1, labels: {version: v1}}\n    - {name: v2, labels: {version: v2}}\n",
    )
    .await?;
    let mut apps = Vec::new();
    for (service, instance, version) in [
        ("users", "u1", "v1"),
        ("users", "u2", "v2"),
        ("beta", "b1", "v1"),
    ] {
        let app = weft_tests::echo::start_echo(instance).await?;
        let sidecar = weft_tests::mesh::SidecarSpec::new(service)
            .control_plane(&cp)
            .app(app.addr)
            .arg("--label", format!("version={version}"))
            .start()
            .await?;
        apps.push((app, sidecar));
    }
    // The caller declares users only: beta reaches it because a route of
    // users sends there.
    let caller = weft_tests::mesh::caller(&cp, "users", 2).await?;
    let (code, _, err) = cp.weftctl(
        &["apply", "-f", "-"],
        Some(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: users}\nspec:\n  parentRefs: [{name: users}]\n  rules:\n    - matches: [{headers: [{name: x-canary, value: \"1\"}]}]\n      backendRefs: [{name: users, subset: v2}]\n    - matches: [{headers: [{name: x-beta, value: \"1\"}]}]\n      backendRefs: [{name: beta}]\n    - backendRefs: [{name: users, subset: v1}]\n",
        ),
    )?;
    assert_eq!(code, 0, "{err}");
    let upstream = caller.upstream("users");
    weft_tests::util::wait_for(
        "the caller to route to beta",
        Duration::from_secs(10),
        || async {
            (served_by(upstream, &[("x-beta", "1")]).await.as_deref() == Some("b1")).then_some(())
        },
    )
    .await?;
    for _ in 0..10 {
        assert_eq!(served_by(upstream, &[]).await.as_deref(), Some("u1"));
        assert_eq!(
            served_by(upstream, &[("x-canary", "1")]).await.as_deref(),
            Some("u2")
        );
    }
    Ok(())
}
