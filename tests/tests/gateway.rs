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
        let dir = tempfile::tempdir()?;
        for (stem, names) in [
            ("api", vec!["api.example.com", "grpc.example.com"]),
            ("org", vec!["*.example.org"]),
        ] {
            let key = rcgen::KeyPair::generate()?;
            let names: Vec<String> = names.into_iter().map(String::from).collect();
            let cert = rcgen::CertificateParams::new(names)?.self_signed(&key)?;
            let pem = weft_proto::identity::pem;
            std::fs::write(
                dir.path().join(format!("{stem}.crt")),
                pem("CERTIFICATE", cert.der()),
            )?;
            std::fs::write(
                dir.path().join(format!("{stem}.key")),
                pem("PRIVATE KEY", &key.serialize_der()),
            )?;
        }
        Ok(Certs { dir })
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
        .arg("--tls-cert", certs.flag());
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
    // A host no route names, and a path no rule takes: 404.
    for (host, path) in [("Host: other.net", "/api/users/1"), (host, "/elsewhere")] {
        let url = format!("http://{}{path}", m.http());
        let r = curl(&["-H", host, &url]).await?;
        assert_eq!(r.status, 404, "{host} {path}: {r:?}");
        assert!(r.body.contains("no route"), "{}", r.body);
    }
    assert_eq!(m.users.calls(), 6);
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
    let m = mesh(
        "",
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
    // A body over the limit: 413, declared or streamed.
    let big = "x".repeat(5000);
    let r = curl(&["-H", host, "--data-binary", &big, &url]).await?;
    assert_eq!(r.status, 413, "{r:?}");
    let r = curl(&[
        "-H",
        host,
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &big,
        &url,
    ])
    .await?;
    assert!(matches!(r.status, 413 | 502), "cut while streaming: {r:?}");
    assert_eq!(m.users.calls(), 0, "nothing over the limit reached the app");
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
