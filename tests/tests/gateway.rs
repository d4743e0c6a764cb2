//! The gateway, end to end: a real control plane with a `Gateway` and
//! routes attached to it, the sidecar in gateway mode, real apps behind
//! their sidecars, and clients from outside: `curl` over HTTP/1.1, HTTP/2
//! and TLS (SNI picks the certificate), a tonic client over TLS, raw
//! sockets for the limits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_tests::echo::{EchoServerHandle, start_echo};
use weft_tests::http_app::{HttpAppHandle, start_http_app};
use weft_tests::mesh::{ControlPlane, Sidecar, SidecarSpec};
use weft_tests::pb::EchoRequest;
use weft_tests::pb::echo_client::EchoClient;
use weft_tests::util::{init_logs, metric, wait_for};

const MESH: &str = "apiVersion: weft.dev/v1
kind: Service
metadata: {name: users}
spec: {protocol: http}
---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: echo}
spec: {protocol: grpc}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway}
spec:
  gatewayClassName: weft
  listeners:
    - {name: web, port: 8080, protocol: HTTP}
    - {name: tls, port: 8443, protocol: HTTPS, tls: {mode: Terminate}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: users-api}
spec:
  parentRefs: [{kind: Gateway, name: gateway}]
  hostnames: [api.example.com, '*.example.org']
  rules:
    - matches: [{path: {type: PathPrefix, value: /api/users}}]
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /users}}
      backendRefs: [{name: users}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-api}
spec:
  parentRefs: [{kind: Gateway, name: gateway}]
  hostnames: [grpc.example.com]
  rules:
    - backendRefs: [{name: echo}]
";

/// Two self-signed certificates (`api.example.com` and `grpc.example.com`;
/// `*.example.org`), each its own trust anchor: a client that trusts only
/// one succeeds only when SNI picked that one.
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> anyhow::Result<Self> {
        let certs = Certs {
            dir: tempfile::tempdir()?,
        };
        certs.write("api", &["api.example.com", "grpc.example.com"])?;
        certs.write("org", &["*.example.org"])?;
        Ok(certs)
    }

    /// A new self-signed pair `stem.crt`, `stem.key` for `names`; the key is
    /// written first, then the certificate (a renewal as a user does it).
    fn write(&self, stem: &str, names: &[&str]) -> anyhow::Result<()> {
        let (cert, key) = weft_tests::ca::self_signed(names)?;
        std::fs::write(self.path(&format!("{stem}.key")), key)?;
        std::fs::write(self.path(&format!("{stem}.crt")), cert)?;
        Ok(())
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The `--tls-cert` value.
    fn flag(&self) -> String {
        let pair = |s: &str| {
            format!(
                "{},{}",
                self.path(&format!("{s}.crt")).display(),
                self.path(&format!("{s}.key")).display()
            )
        };
        format!("{};{}", pair("api"), pair("org"))
    }
}

struct Mesh {
    cp: ControlPlane,
    users: HttpAppHandle,
    echo: EchoServerHandle,
    _sidecars: Vec<Sidecar>,
    gateway: Sidecar,
    certs: Certs,
}

async fn mesh(extra: &str, gateway_flags: &[(&str, &str)]) -> anyhow::Result<Mesh> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    cp.apply_yaml(&format!("{MESH}{extra}")).await?;
    let users = start_http_app("u1").await?;
    let echo = start_echo("e1").await?;
    let mut sidecars = Vec::new();
    for (service, app, protocol) in [("users", users.addr, "http"), ("echo", echo.addr, "grpc")] {
        let s = SidecarSpec::new(service)
            .control_plane(&cp)
            .app(app)
            .arg("--protocol", protocol)
            .start()
            .await?;
        sidecars.push(s);
    }
    let certs = Certs::new()?;
    let mut spec = SidecarSpec::new("gateway")
        .control_plane(&cp)
        .arg("--gateway-http", "127.0.0.1:0")
        .arg("--gateway-https", "127.0.0.1:0")
        .arg("--tls-cert", certs.flag())
        .arg("--tls-reload-interval", "100ms");
    for (flag, value) in gateway_flags {
        spec = spec.arg(flag, value);
    }
    let gateway = spec.start().await?;
    for service in ["users", "echo"] {
        gateway
            .wait_endpoints(service, "the backends at the gateway", |e| {
                e.len() == 1 && e[0].1 == "healthy"
            })
            .await?;
    }
    Ok(Mesh {
        cp,
        users,
        echo,
        _sidecars: sidecars,
        gateway,
        certs,
    })
}

impl Mesh {
    fn http(&self) -> SocketAddr {
        self.gateway.gateway_http.expect("the cleartext listener")
    }

    fn https(&self) -> SocketAddr {
        self.gateway.gateway_https.expect("the TLS listener")
    }
}

/// What curl saw.
#[derive(Debug)]
struct Curl {
    status: u16,
    version: String,
    body: String,
}

/// Runs curl; the last line it writes is `STATUS HTTP_VERSION`.
async fn curl(args: &[&str]) -> anyhow::Result<Curl> {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (status, version) = last.split_once(' ').unwrap_or((last, ""));
    anyhow::ensure!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Curl {
        status: status.parse()?,
        version: version.to_string(),
        body: body.to_string(),
    })
}

fn json(body: &str) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(body)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_the_services_by_host_and_path_over_http1_http2_and_tls() -> anyhow::Result<()>
{
    let m = mesh("", &[]).await?;
    let plain = format!("http://{}/api/users/7?full=1", m.http());
    let host = "Host: api.example.com";
    // HTTP/1.1 and HTTP/2 (prior knowledge) in cleartext.
    for (flag, version) in [("--http1.1", "1.1"), ("--http2-prior-knowledge", "2")] {
        let r = curl(&[flag, "-H", host, &plain]).await?;
        assert_eq!((r.status, r.version.as_str()), (200, version), "{r:?}");
        let seen = json(&r.body)?;
        assert_eq!(seen["path"], "/users/7?full=1", "rewritten: {seen}");
        assert_eq!(seen["headers"]["host"], "api.example.com", "{seen}");
    }
    // TLS: each certificate trusted alone, so SNI must pick it.
    let port = m.https().port();
    for (name, ca) in [
        ("api.example.com", "api.crt"),
        ("www.example.org", "org.crt"),
    ] {
        let resolve = format!("{name}:{port}:127.0.0.1");
        let url = format!("https://{name}:{port}/api/users/1");
        let ca = m.certs.path(ca).display().to_string();
        for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
            let r = curl(&[flag, "--resolve", &resolve, "--cacert", &ca, &url]).await?;
            assert_eq!(
                (r.status, r.version.as_str()),
                (200, version),
                "{name}: {r:?}"
            );
            assert_eq!(json(&r.body)?["path"], "/users/1");
        }
    }
    // A renewed certificate is served once its files change (the old one
    // is no longer trusted by a client that trusts only the new one).
    let old_ca = std::fs::read(m.certs.path("api.crt"))?;
    m.certs
        .write("api", &["api.example.com", "grpc.example.com"])?;
    let renewed = m.certs.dir.path().join("renewed.crt");
    std::fs::copy(m.certs.path("api.crt"), &renewed)?;
    assert_ne!(old_ca, std::fs::read(&renewed)?);
    let resolve = format!("api.example.com:{port}:127.0.0.1");
    let url = format!("https://api.example.com:{port}/api/users/1");
    let ca = renewed.display().to_string();
    wait_for(
        "the renewed certificate",
        Duration::from_secs(10),
        || async {
            let r = curl(&["--resolve", &resolve, "--cacert", &ca, &url])
                .await
                .ok()?;
            (r.status == 200).then_some(())
        },
    )
    .await?;
    // A host no route names, and a path no rule takes: 404.
    for (host, path) in [("Host: other.net", "/api/users/1"), (host, "/elsewhere")] {
        let url = format!("http://{}{path}", m.http());
        let r = curl(&["-H", host, &url]).await?;
        assert_eq!(r.status, 404, "{host} {path}: {r:?}");
        assert!(r.body.contains("no route"), "{}", r.body);
    }
    assert!(m.users.calls() >= 7, "{}", m.users.calls());
    Ok(())
}

/// A tonic client over TLS to `addr`, verifying `name` under `ca`.
async fn tls_client(
    addr: SocketAddr,
    ca: &Path,
    name: &str,
) -> anyhow::Result<EchoClient<tonic::transport::Channel>> {
    let pem = std::fs::read_to_string(ca)?;
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(pem))
        .domain_name(name);
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .origin(format!("https://{name}").parse()?)
        .connect()
        .await?;
    Ok(EchoClient::new(channel))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_client_over_tls_reaches_a_grpc_service() -> anyhow::Result<()> {
    let m = mesh("", &[]).await?;
    let mut c = tls_client(m.https(), &m.certs.path("api.crt"), "grpc.example.com").await?;
    for i in 0..5 {
        let r = c
            .unary(EchoRequest {
                message: format!("hi {i}"),
                ..Default::default()
            })
            .await?
            .into_inner();
        assert_eq!(r.message, format!("hi {i}"));
        assert_eq!(r.instance, "e1");
    }
    assert_eq!(m.echo.calls(), 5);
    // The gRPC route answers only its host: elsewhere, UNIMPLEMENTED.
    let mut other = tls_client(m.https(), &m.certs.path("api.crt"), "api.example.com").await?;
    let e = other
        .unary(EchoRequest::default())
        .await
        .expect_err("no route");
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_can_name_the_gateway() -> anyhow::Result<()> {
    let m = mesh(
        "---
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: users-from-the-edge}
spec:
  service: users
  rules:
    - from: [gateway]
",
        &[],
    )
    .await?;
    let url = format!("http://{}/api/users/1", m.http());
    let r = curl(&["-H", "Host: api.example.com", &url]).await?;
    assert_eq!(r.status, 200, "{r:?}");
    // Another caller of the mesh is refused by the same policy.
    let caller = SidecarSpec::new("caller")
        .control_plane(&m.cp)
        .upstream("users")
        .start()
        .await?;
    caller
        .wait_endpoints("users", "users at the caller", |e| e.len() == 1)
        .await?;
    let r = curl(&[&format!("http://{}/users/1", caller.upstream("users"))]).await?;
    assert_eq!(r.status, 403, "{r:?}");
    Ok(())
}

/// Reads until the server closes, or `within` passes.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> anyhow::Result<String> {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await?;
    Ok(String::from_utf8_lossy(&all).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_slow_and_too_many_clients_are_cut() -> anyhow::Result<()> {
    // The app's /echo streams the body it reads back, unchanged.
    let echo_route = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-direct}
spec:
  parentRefs: [{kind: Gateway, name: gateway}]
  hostnames: [echo.example.com]
  rules: [{backendRefs: [{name: users}]}]
";
    let m = mesh(
        echo_route,
        &[
            ("--max-request-bytes", "1000"),
            ("--max-header-bytes", "8192"),
            ("--header-timeout", "300ms"),
            ("--client-idle-timeout", "600ms"),
            ("--max-connections", "3"),
        ],
    )
    .await?;
    let url = format!("http://{}/api/users/1", m.http());
    let host = "Host: api.example.com";
    // A body over the limit: 413 when declared, before the app sees it...
    let big = "x".repeat(5000);
    let r = curl(&["-H", host, "--data-binary", &big, &url]).await?;
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(m.users.calls(), 0, "nothing over the limit reached the app");
    // ...and cut at the limit when streamed: an app echoing what it reads
    // never gets (or sends back) more than the limit. Whether the client
    // sees a status or a broken transfer depends on who was first.
    let echo = format!("http://{}/echo", m.http());
    let streamed = curl(&[
        "-H",
        "Host: echo.example.com",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &big,
        &echo,
    ])
    .await;
    if let Ok(r) = streamed {
        assert!(
            r.status != 200 || r.body.len() <= 1000,
            "cut while streaming: {} {} bytes",
            r.status,
            r.body.len()
        );
    }
    // Headers over the limit.
    let huge = format!("X-Big: {}", "h".repeat(10_000));
    let r = curl(&["-H", host, "-H", &huge, &url]).await?;
    assert_eq!(r.status, 431, "{r:?}");
    // A client that never finishes its headers is cut after the header
    // timeout (408), not held.
    let mut slow = TcpStream::connect(m.http()).await?;
    slow.write_all(b"GET /api/users/1 HTTP/1.1\r\nHost: api.exa")
        .await?;
    let got = read_until_closed(&mut slow, Duration::from_secs(5)).await?;
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got:?}");
    // An idle connection is closed.
    let mut idle = TcpStream::connect(m.http()).await?;
    let got = read_until_closed(&mut idle, Duration::from_secs(5)).await?;
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got:?}");
    // Three connections at most: a fourth is closed at once.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = TcpStream::connect(m.http()).await?;
        s.write_all(b"GET /api/users/1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
            .await?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    let mut fourth = TcpStream::connect(m.http()).await?;
    let got = read_until_closed(&mut fourth, Duration::from_secs(5)).await?;
    assert!(got.is_empty(), "{got:?}");
    let refused = wait_for("the refusal counted", Duration::from_secs(5), || async {
        let text = m.gateway.metrics().await.ok()?;
        metric(
            &text,
            "weft_gateway_refused_connections_total",
            &[("reason", "max-connections")],
        )
        .filter(|n| *n >= 1.0)
    })
    .await?;
    assert!(refused >= 1.0);
    Ok(())
}

/// Sends `req` over HTTP/1.1 to `addr`; the whole answer.
async fn send(
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> anyhow::Result<(http::response::Parts, bytes::Bytes)> {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req)).await??;
    let (parts, body) = resp.into_parts();
    Ok((parts, body.collect().await?.to_bytes()))
}

fn request(
    method: &str,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<http::Request<http_body_util::Full<bytes::Bytes>>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    Ok(b.body(http_body_util::Full::new(bytes::Bytes::new()))?)
}

const EDGE: &str = "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: limited}
spec:
  parentRefs: [{kind: Gateway, name: gateway}]
  hostnames: [limited.example.com]
  rules:
    - filters:
        - type: RateLimit
          rateLimit: {requests: 5, period: 1m, key: clientIP}
      backendRefs: [{name: users}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: browser}
spec:
  parentRefs: [{kind: Gateway, name: gateway}]
  hostnames: [app-api.example.com]
  rules:
    - filters:
        - type: CORS
          cors:
            allowOrigins: [https://app.example.com]
            allowMethods: [GET, PUT]
            allowHeaders: [x-user]
            exposeHeaders: [x-instance]
            maxAge: 600
      backendRefs: [{name: users}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_cors_forwarding_headers_and_request_ids() -> anyhow::Result<()> {
    let m = mesh(EDGE, &[]).await?;
    let gw = m.http();
    // Exactly the bucket's five, then 429 with when to come back.
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let (p, _) = send(request("GET", gw, "limited.example.com", "/x", &[])?).await?;
        if p.status == 429 {
            let after: u64 = p.headers["retry-after"].to_str()?.parse()?;
            assert!((1..=60).contains(&after), "{after}");
            assert_eq!(p.headers["x-weft-error"], "rate-limited");
        }
        statuses.push(p.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(m.users.calls(), 5);

    // CORS: a preflight answered by the gateway, allowed or not...
    let preflight = |origin: &'static str| {
        request(
            "OPTIONS",
            gw,
            "app-api.example.com",
            "/x",
            &[
                ("origin", origin),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "x-user"),
            ],
        )
    };
    let (p, _) = send(preflight("https://app.example.com")?).await?;
    assert_eq!(p.status, 204);
    assert_eq!(
        p.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert!(
        p.headers["access-control-allow-methods"]
            .to_str()?
            .contains("PUT")
    );
    assert_eq!(p.headers["access-control-max-age"], "600");
    let (p, _) = send(preflight("https://evil.example.net")?).await?;
    assert_eq!(p.status, 403);
    assert!(p.headers.get("access-control-allow-origin").is_none());
    assert_eq!(m.users.calls(), 5, "preflights never reach the app");
    // ...and an actual request's answer decorated.
    let origin = [("origin", "https://app.example.com")];
    let (p, _) = send(request("GET", gw, "app-api.example.com", "/x", &origin)?).await?;
    assert_eq!(p.status, 200);
    assert_eq!(
        p.headers["access-control-allow-origin"],
        "https://app.example.com"
    );
    assert_eq!(p.headers["access-control-expose-headers"], "x-instance");

    // What the app sees: the client's address (a forged one replaced),
    // the scheme, and the request id the client gets back.
    let forged = [("x-forwarded-for", "6.6.6.6")];
    let (p, body) = send(request("GET", gw, "app-api.example.com", "/x", &forged)?).await?;
    let seen = json(std::str::from_utf8(&body)?)?;
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{seen}");
    assert_eq!(h["x-forwarded-proto"], "http", "{seen}");
    let id = p.headers["x-request-id"].to_str()?;
    assert!(!id.is_empty());
    assert_eq!(h["x-request-id"], id, "{seen}");
    let mine = [("x-request-id", "order-42")];
    let (p, body) = send(request("GET", gw, "app-api.example.com", "/x", &mine)?).await?;
    assert_eq!(p.headers["x-request-id"], "order-42");
    assert_eq!(
        json(std::str::from_utf8(&body)?)?["headers"]["x-request-id"],
        "order-42"
    );
    Ok(())
}

/// One gRPC message frame.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![flag];
    f.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(0).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The frames of a gRPC-Web body: (flag, payload).
fn frames(mut body: &[u8]) -> anyhow::Result<Vec<(u8, Vec<u8>)>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        anyhow::ensure!(body.len() >= 5, "a cut frame header");
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        anyhow::ensure!(body.len() >= 5 + len, "a cut frame");
        out.push((body[0], body[5..5 + len].to_vec()));
        body = &body[5 + len..];
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_calls_a_grpc_service_with_grpc_web() -> anyhow::Result<()> {
    use base64::Engine;
    use prost::Message;
    let m = mesh("", &[]).await?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let call = EchoRequest {
        message: "from a browser".into(),
        ..Default::default()
    }
    .encode_to_vec();
    for (content_type, text) in [
        ("application/grpc-web+proto", false),
        ("application/grpc-web-text", true),
    ] {
        let raw = frame(0, &call);
        let body = if text {
            b64.encode(&raw).into_bytes()
        } else {
            raw
        };
        let req = http::Request::post(format!("http://{}/weft.test.v1.Echo/Unary", m.http()))
            .header("host", "grpc.example.com")
            .header("content-type", content_type)
            .header("x-grpc-web", "1")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))?;
        let (p, body) = send(req).await?;
        assert_eq!(p.status, 200, "{content_type}");
        // The server's format (`+proto` or none) in the web encoding.
        let media = if text {
            "application/grpc-web-text"
        } else {
            "application/grpc-web"
        };
        let got_type = p.headers["content-type"].to_str()?;
        assert!(
            got_type == media || got_type == format!("{media}+proto"),
            "{got_type}"
        );
        // Text mode may pad each chunk (as Envoy does): decode by groups
        // of four, as browsers' clients do.
        let body = if text {
            let mut out = Vec::new();
            for group in body.chunks(4) {
                out.extend(b64.decode(group)?);
            }
            out
        } else {
            body.to_vec()
        };
        let got = frames(&body)?;
        assert_eq!(got.len(), 2, "a message, then the trailers: {got:?}");
        let reply = weft_tests::pb::EchoReply::decode(got[0].1.as_slice())?;
        assert_eq!((got[0].0, reply.message.as_str()), (0, "from a browser"));
        let trailers = String::from_utf8(got[1].1.clone())?;
        assert_eq!(got[1].0, 0x80);
        let status = trailers.split("\r\n").find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "grpc-status").then(|| v.trim().to_string())
        });
        assert_eq!(status.as_deref(), Some("0"), "{trailers:?}");
    }
    assert_eq!(m.echo.calls(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_limits_each_caller_at_its_own_sidecar() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    cp.apply_yaml(
        "apiVersion: weft.dev/v1
kind: Service
metadata: {name: users}
spec:
  protocol: http
  rateLimit: {requests: 3, period: 1m, perCaller: true}
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
    let mut callers = Vec::new();
    for name in ["caller-a", "caller-b"] {
        let c = SidecarSpec::new(name)
            .control_plane(&cp)
            .upstream("users")
            .start()
            .await?;
        c.wait_endpoints("users", "users at the caller", |e| e.len() == 1)
            .await?;
        callers.push(c);
    }
    for c in &callers {
        let mut statuses = Vec::new();
        for _ in 0..5 {
            let url = format!("http://{}/x", c.upstream("users"));
            statuses.push(weft_tests::util::http_get(&url).await?.status.as_u16());
        }
        assert_eq!(
            statuses,
            [200, 200, 200, 429, 429],
            "each caller has its own bucket"
        );
    }
    assert_eq!(app.calls(), 6);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_calls_are_transcoded_to_grpc_with_path_query_and_body_bound() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let set = dir.path().join("echo.binpb");
    std::fs::write(&set, weft_tests::ECHO_DESCRIPTORS)?;
    let set = set.display().to_string();
    let m = mesh("", &[("--transcode", &set)]).await?;
    let base = format!("http://{}", m.http());
    let host = "Host: grpc.example.com";
    // The path's variable, and a query parameter, bound to the request.
    let r = curl(&[
        "-H",
        host,
        &format!("{base}/v1/echo/hello%20there?sleepMs=1"),
    ])
    .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let v = json(&r.body)?;
    assert_eq!(v["message"], "hello there", "{v}");
    assert_eq!(v["instance"], "e1", "{v}");
    // The body (protobuf's JSON mapping: bytes in base64).
    let r = curl(&[
        "-H",
        host,
        "-H",
        "content-type: application/json",
        "--data",
        r#"{"message": "posted", "payload": "AQID"}"#,
        &format!("{base}/v1/echo"),
    ])
    .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let v = json(&r.body)?;
    assert_eq!(
        (v["message"].as_str(), v["payload"].as_str()),
        (Some("posted"), Some("AQID"))
    );
    // A server stream as a JSON array.
    let r = curl(&["-H", host, &format!("{base}/v1/echo/tick/stream?count=3")]).await?;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        json(&r.body)?.as_array().map(Vec::len),
        Some(3),
        "{}",
        r.body
    );
    // A gRPC status as HTTP, with the code and message as JSON.
    let r = curl(&["-H", host, &format!("{base}/v1/echo/x?failCode=5")]).await?;
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(json(&r.body)?["code"], 5, "{}", r.body);
    // A parameter the request has no field for: the client's mistake.
    let r = curl(&["-H", host, &format!("{base}/v1/echo/x?nope=1")]).await?;
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(
        m.echo.calls(),
        4,
        "the bad request never reached the service"
    );
    Ok(())
}
