//! The gateway on a real control plane: `weftctl` applies a `Gateway` and
//! the routes attached to it, prints them back, rejects a bad gateway file
//! whole with each problem's field path, explains a request at the
//! gateway, and refuses to delete a gateway routes attach to; and a
//! sidecar joining as the gateway (a join token for its name, a
//! certificate, a hello without an app) is pushed its routes with their
//! host names, their backends, and every change.

use std::time::Duration;

use weft_control_plane::resource::parse_documents;
use weft_proto::v1 as pb;
use weft_tests::mesh::ControlPlane;
use weft_tests::util::init_logs;

const SERVICES: &str = "apiVersion: weft.dev/v1
kind: Service
metadata: {name: users}
spec: {protocol: http}
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
  rules: [{from: [gateway]}]
";

const GATEWAY: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway}
spec:
  gatewayClassName: weft
  listeners:
    - {name: http, port: 8080, protocol: HTTP}
    - name: https
      port: 8443
      protocol: HTTPS
      hostname: "*.example.com"
      tls: {mode: Terminate}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api}
spec:
  parentRefs: [{kind: Gateway, name: gateway, sectionName: https}]
  hostnames: [api.example.com]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api/users}}]
      filters:
        - type: RateLimit
          rateLimit: {requests: 100, period: 1s, burst: 20, key: clientIP}
        - type: CORS
          cors: {allowOrigins: ["https://app.example.com"], allowMethods: [GET]}
      backendRefs: [{name: users}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: orders}
spec:
  parentRefs: [{kind: Gateway, name: gateway, sectionName: https}]
  rules: [{backendRefs: [{name: orders}]}]
"#;

/// A discovery stream to `cp` as a sidecar of `service` admitted by
/// `token`, without an app.
async fn join(
    cp: &ControlPlane,
    service: &str,
    token: String,
) -> anyhow::Result<weft_tests::mesh::RawStream> {
    cp.discovery_stream(service, &[], token).await
}

/// The next update that says something about `service`, ACKed.
async fn next_about(
    tx: &tokio::sync::mpsc::Sender<pb::SidecarMessage>,
    updates: &mut tonic::Streaming<pb::DiscoveryUpdate>,
    service: &str,
) -> anyhow::Result<(pb::DiscoveryUpdate, pb::ServiceUpdate)> {
    loop {
        let u = tokio::time::timeout(Duration::from_secs(10), updates.message())
            .await??
            .ok_or_else(|| anyhow::anyhow!("the stream ended"))?;
        tx.send(pb::SidecarMessage {
            kind: Some(pb::sidecar_message::Kind::Ack(pb::Ack {
                version: u.version,
            })),
        })
        .await?;
        if let Some(s) = u.services.iter().find(|s| s.name == service).cloned() {
            return Ok((u, s));
        }
    }
}

/// (route name, host names) of an update's routing.
fn routes(u: &pb::ServiceUpdate) -> Vec<(String, Vec<String>)> {
    u.routing
        .as_ref()
        .map(|r| {
            r.routes
                .iter()
                .map(|x| (x.name.clone(), x.hostnames.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_is_applied_printed_explained_pushed_and_kept_while_routes_attach()
-> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let (code, _, err) = cp.weftctl(&["apply", "-f", "-"], Some(SERVICES))?;
    assert_eq!(code, 0, "a policy may name the gateway as a caller: {err}");
    let (code, out, err) = cp.weftctl(&["apply", "-f", "-"], Some(GATEWAY))?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "gateway/gateway created\nhttproute/api created\ngrpcroute/orders created\n"
    );

    // Printed back: a table, and YAML that reads back as applied.
    let (code, table, err) = cp.weftctl(&["get", "gateways"], None)?;
    assert_eq!(code, 0, "{err}");
    assert!(
        table.lines().any(|l| l.starts_with("gateway")
            && l.contains("http 8080/HTTP *")
            && l.contains("https 8443/HTTPS *.example.com")),
        "{table}"
    );
    let (_, yaml, _) = cp.weftctl(&["get", "gateway", "gateway", "-o", "yaml"], None)?;
    assert_eq!(
        parse_documents(&yaml)?,
        parse_documents(GATEWAY)?[..1],
        "{yaml}"
    );
    let (_, yaml, _) = cp.weftctl(&["get", "httproute", "api", "-o", "yaml"], None)?;
    assert_eq!(
        parse_documents(&yaml)?,
        parse_documents(GATEWAY)?[1..2],
        "{yaml}"
    );
    let (_, table, _) = cp.weftctl(&["get", "routes"], None)?;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("api") && l.contains("gateway/gateway:https")),
        "{table}"
    );

    // A bad gateway file: refused whole by weftctl, every problem named.
    let bad = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge}\nspec:\n  gatewayClassName: nginx\n  listeners:\n    - {name: web, port: 80, protocol: HTTP, tls: {mode: Terminate}}\n    - {name: web, port: 443, protocol: HTTPS, hostname: \"*\", tls: {certificateRefs: [{name: cert}]}}\n    - {name: grpc, port: 0, protocol: GRPC}\n";
    let (code, _, err) = cp.weftctl(&["apply", "-f", "-"], Some(bad))?;
    assert_eq!(code, 1);
    for problem in [
        "document 1 (Gateway/edge): spec.gatewayClassName: \"nginx\": the only gateway class is \"weft\"",
        "document 1 (Gateway/edge): spec.listeners[0].tls: TLS is for HTTPS listeners",
        "document 1 (Gateway/edge): spec.listeners[1].hostname: \"*\" is not a host name",
        "document 1 (Gateway/edge): spec.listeners[1].tls.certificateRefs: certificates are files given to the gateway process, not Secrets",
        "document 1 (Gateway/edge): spec.listeners[2].port: a port between 1 and 65535",
        "document 1 (Gateway/edge): spec.listeners[2].protocol: \"GRPC\" is not a listener protocol",
    ] {
        assert!(err.contains(problem), "{problem}\nnot in:\n{err}");
    }
    // Routes only the control plane can judge, with a good gateway in the
    // same file: nothing of it is applied.
    let bad = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge}\nspec:\n  listeners: [{name: web, port: 80, protocol: HTTP, hostname: web.example.com}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: lost}\nspec:\n  parentRefs: [{kind: Gateway, name: edge}, {kind: Gateway, name: gateway, sectionName: grpc}, {kind: Gateway, name: front}]\n  hostnames: [shop.example.org]\n  rules: [{backendRefs: [{name: users}]}]\n";
    let (code, _, err) = cp.weftctl(&["apply", "-f", "-"], Some(bad))?;
    assert_eq!(code, 1);
    for problem in [
        "document 2 (HTTPRoute/lost): spec.hostnames: none of the route's host names is served by gateway edge's listeners (web.example.com)",
        "document 2 (HTTPRoute/lost): spec.parentRefs[1].sectionName: gateway gateway has no listener \"grpc\" (it has http, https)",
        "document 2 (HTTPRoute/lost): spec.parentRefs[2].name: unknown gateway front: no Gateway resource",
    ] {
        assert!(err.contains(problem), "{problem}\nnot in:\n{err}");
    }
    let (_, gateways, _) = cp.weftctl(&["get", "gateways", "-o", "yaml"], None)?;
    assert_eq!(parse_documents(&gateways)?.len(), 1, "{gateways}");

    // Explained at the gateway: the URL's host against the host names.
    let (code, out, err) = cp.weftctl(
        &[
            "explain",
            "--gateway",
            "gateway",
            "GET",
            "https://api.example.com/api/users/7",
        ],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rule taken: HTTPRoute/api rules[0].matches[0]"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("users")
                && l.contains("allowed by AuthorizationPolicy/users-callers")),
        "the gateway is the caller:\n{out}"
    );
    let (_, out, _) = cp.weftctl(
        &[
            "explain",
            "--gateway",
            "gateway",
            "GET",
            "http://www.example.com/api/users/7",
            "-o",
            "json",
        ],
        None,
    )?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v["taken"]["route"], "GRPCRoute/orders", "{out}");

    // A sidecar joins as the gateway: a token for its name, its
    // certificate, no app. It is sent its routes, with host names, and
    // their backends as if it had subscribed to them.
    let (code, token, err) = cp.weftctl(&["token", "create", "gateway"], None)?;
    assert_eq!(code, 0, "{err}");
    let (tx, mut updates) = join(&cp, "gateway", token.trim().to_string()).await?;
    let (first, gw) = next_about(&tx, &mut updates, "gateway").await?;
    assert!(first.full && gw.known);
    assert_eq!(
        routes(&gw),
        [
            (
                "GRPCRoute/orders".to_string(),
                vec!["*.example.com".to_string()]
            ),
            (
                "HTTPRoute/api".to_string(),
                vec!["api.example.com".to_string()]
            ),
        ],
        "a route without host names takes its listeners' when each names one"
    );
    let filters = &gw.routing.as_ref().expect("routing").routes[1].rules[0].filters;
    assert!(
        filters.iter().any(|f| matches!(f.kind, Some(pb::route_filter::Kind::RateLimit(ref r)) if r.requests == 100 && r.burst == 20))
            && filters.iter().any(|f| matches!(f.kind, Some(pb::route_filter::Kind::Cors(_)))),
        "{filters:?}"
    );
    for backend in ["users", "orders"] {
        assert!(
            first.services.iter().any(|s| s.name == backend && s.known),
            "{backend} not sent: {first:?}"
        );
    }

    // A change to the Gateway reaches it: a listener for any host.
    let open = GATEWAY.replace("      hostname: \"*.example.com\"\n", "");
    cp.apply_yaml(&open).await?;
    let (update, gw) = next_about(&tx, &mut updates, "gateway").await?;
    assert!(!update.full);
    assert_eq!(
        routes(&gw)[0],
        ("GRPCRoute/orders".to_string(), vec![]),
        "a listener without a host name takes any host"
    );

    // Deleting the gateway is refused while routes attach; the routes go first.
    let (code, _, err) = cp.weftctl(&["delete", "gateway", "gateway"], None)?;
    assert_eq!(code, 1);
    assert!(err.contains("refused: Gateway/gateway is in use"), "{err}");
    for route in [
        "HTTPRoute/api spec.parentRefs[0].name",
        "GRPCRoute/orders spec.parentRefs[0].name",
    ] {
        assert!(err.contains(route), "{route}\nnot in:\n{err}");
    }
    for (kind, name) in [("httproute", "api"), ("grpcroute", "orders")] {
        let (code, _, err) = cp.weftctl(&["delete", kind, name], None)?;
        assert_eq!(code, 0, "{err}");
    }
    // An update per delete (or one for both): routing whole each time,
    // until none is left.
    loop {
        let (_, gw) = next_about(&tx, &mut updates, "gateway").await?;
        let left = routes(&gw);
        assert!(gw.routing.is_some() && left.len() < 2, "{gw:?}");
        if left.is_empty() {
            break;
        }
    }
    let (code, out, err) = cp.weftctl(&["delete", "gateway", "gateway"], None)?;
    assert_eq!(
        (code, out.as_str()),
        (0, "gateway/gateway deleted\n"),
        "{err}"
    );
    Ok(())
}
