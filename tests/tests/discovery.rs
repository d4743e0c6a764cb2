//! Discovery from the caller's side: services learned on demand, unknown
//! services and an unreachable control plane failing fast, a rejected update
//! leaving the last good config in force, and a static config file.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::net::TcpListener;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Certificate, Identity as TlsIdentity, ServerTlsConfig};
use tonic::{Code, Request, Response, Status, Streaming};
use weft_proto::v1 as pb;
use weft_proto::v1::discovery_server::{Discovery, DiscoveryServer};
use weft_proto::v1::identity_server::{Identity, IdentityServer};
use weft_tests::ca::{TRUST_DOMAIN, TestCa, spiffe};
use weft_tests::echo::{MAX_MESSAGE, client, start_echo};
use weft_tests::mesh::{ControlPlane, SidecarSpec, write_temp};
use weft_tests::pb::EchoRequest;
use weft_tests::pb::echo_client::EchoClient;
use weft_tests::util::{init_logs, metric, wait_for};

/// A client of the sidecar's outbound listener that names `service` in :authority.
async fn by_authority(
    outbound: std::net::SocketAddr,
    service: &str,
) -> anyhow::Result<EchoClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{outbound}"))?
        .origin(format!("http://{service}").parse()?)
        .connect()
        .await?;
    Ok(EchoClient::new(ch).max_decoding_message_size(MAX_MESSAGE))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_learned_on_demand_and_unknown_ones_fail_fast() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let app = start_echo("e1").await?;
    let _server = SidecarSpec::new("echo")
        .control_plane(&cp)
        .app(app.addr)
        .start()
        .await?;
    // No declared upstreams at all.
    let caller = SidecarSpec::new("caller")
        .control_plane(&cp)
        .start()
        .await?;

    let mut c = by_authority(caller.outbound, "echo").await?;
    let r = c
        .unary(EchoRequest {
            message: "hi".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(r.get_ref().instance, "e1");

    let mut c = by_authority(caller.outbound, "nobody").await?;
    let started = Instant::now();
    let e = c
        .unary(EchoRequest::default())
        .await
        .expect_err("no such service");
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(
        e.metadata()
            .get("x-weft-error")
            .and_then(|v| v.to_str().ok()),
        Some("unknown-service")
    );
    assert!(e.message().contains("nobody"), "{}", e.message());
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );
    // Names the mesh does not know are counted together, under
    // `(unresolved)`: an app naming a new one per request cannot grow the
    // label sets.
    for i in 2..=20 {
        let mut c = by_authority(caller.outbound, &format!("nobody-{i}")).await?;
        let e = c.unary(EchoRequest::default()).await.expect_err("unknown");
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    }

    let m = caller.metrics().await?;
    assert!(!m.contains("nobody"), "{m}");
    assert_eq!(
        metric(&m, "weft_control_plane_stream", &[("state", "synced")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "weft_endpoints",
            &[("service", "echo"), ("health", "healthy")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "weft_responses_total",
            &[
                ("service", "(unresolved)"),
                ("error", "unknown-service"),
                ("grpc_status", "14")
            ]
        ),
        Some(20.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "weft_requests_total",
            &[("direction", "outbound"), ("service", "(unresolved)")]
        ),
        Some(20.0),
        "{m}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_control_plane_calls_fail_within_the_discovery_timeout() -> anyhow::Result<()> {
    init_logs();
    let dead = TcpListener::bind("127.0.0.1:0").await?.local_addr()?; // bound, then closed
    let dir = tempfile::tempdir()?;
    let token = weft_proto::identity::JoinToken {
        td: "weft.local".into(),
        id: "0".into(),
        secret: "0".into(),
        ca: "00".into(),
    };
    let token = write_temp(dir.path(), "token", &token.encode())?;
    let caller = SidecarSpec::new("caller")
        .arg("--control-plane", format!("https://{dead}"))
        .arg("--token-file", token.display())
        .arg("--discovery-timeout", "300ms")
        .upstream("echo")
        .start_unready()
        .await?;
    let mut c = client(caller.upstream("echo")).await?;
    let started = Instant::now();
    let e = c
        .unary(EchoRequest::default())
        .await
        .expect_err("nothing is known");
    let took = started.elapsed();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(
        e.metadata()
            .get("x-weft-error")
            .and_then(|v| v.to_str().ok()),
        Some("discovery-timeout")
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    // Not ready: it never had a config.
    let r = weft_tests::util::http_get(&format!("http://{}/ready", caller.admin)).await?;
    assert_eq!(r.status, 503);
    Ok(())
}

/// A control plane of our own, over real TLS with a test CA: it signs the
/// sidecar's certificate for its join token (the `Identity` service), sends
/// a good full state, then an update no sidecar may accept, and records
/// what the sidecar answers.
struct FakeControlPlane {
    ca: Arc<TestCa>,
    /// The one token it admits, and the service it is for.
    token: String,
    service: String,
    echo_addr: String,
    replies: Arc<Mutex<Vec<pb::sidecar_message::Kind>>>,
}

type Updates = Pin<Box<dyn Stream<Item = Result<pb::DiscoveryUpdate, Status>> + Send>>;

#[derive(Clone)]
struct FakeIdentity(Arc<FakeControlPlane>);

#[tonic::async_trait]
impl Identity for FakeIdentity {
    async fn issue(
        &self,
        request: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        let req = request.into_inner();
        if req.token != self.0.token {
            return Err(Status::unauthenticated("not the token this test minted"));
        }
        let id = spiffe(&self.0.service);
        let (leaf, expires_unix_ms) = self
            .0
            .ca
            .sign_request(&req.csr, &id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(pb::IssueResponse {
            chain: vec![leaf],
            roots: vec![self.0.ca.der().to_vec()],
            expires_unix_ms,
            spiffe_id: id,
        }))
    }
}

#[derive(Clone)]
struct FakeDiscovery(Arc<FakeControlPlane>);

#[tonic::async_trait]
impl Discovery for FakeDiscovery {
    type StreamStream = Updates;

    async fn stream(
        &self,
        request: Request<Streaming<pb::SidecarMessage>>,
    ) -> Result<Response<Updates>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let replies = self.0.replies.clone();
        let endpoint = |addr: &str| pb::Endpoint {
            instance_id: "echo-1".into(),
            address: addr.into(),
            health: pb::Health::Healthy as i32,
            ..Default::default()
        };
        let good = pb::DiscoveryUpdate {
            version: 1,
            full: true,
            services: vec![pb::ServiceUpdate {
                name: "echo".into(),
                known: true,
                policy: Some(pb::ServiceSpec {
                    name: "echo".into(),
                    protocol: pb::Protocol::Grpc as i32,
                    ..Default::default()
                }),
                reset_endpoints: true,
                endpoints: vec![endpoint(&self.0.echo_addr)],
                removed: vec![],
                inbound: None,
                routing: None,
            }],
            roots: vec![],
            addresses: None,
            resumed: 0,
        };
        let bad = pb::DiscoveryUpdate {
            version: 2,
            full: false,
            services: vec![pb::ServiceUpdate {
                name: "echo".into(),
                known: true,
                reset_endpoints: true,
                endpoints: vec![endpoint("not an address")],
                ..Default::default()
            }],
            roots: vec![],
            addresses: None,
            resumed: 0,
        };
        tokio::spawn(async move {
            let _ = tx.send(Ok(good)).await;
            let mut sent_bad = false;
            while let Ok(Some(m)) = inbound.message().await {
                let Some(kind) = m.kind else { continue };
                let is_ack = matches!(kind, pb::sidecar_message::Kind::Ack(_));
                if let Ok(mut r) = replies.lock() {
                    r.push(kind);
                }
                if is_ack && !sent_bad {
                    sent_bad = true;
                    let _ = tx.send(Ok(bad.clone())).await;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves `fake` on 127.0.0.1 over TLS as the real control plane does
/// (its certificate chains to the test CA; client certificates optional,
/// since the first `Issue` has none). Returns its address.
async fn serve_fake(fake: FakeControlPlane) -> anyhow::Result<std::net::SocketAddr> {
    let (chain, key) = fake.ca.control_plane_identity()?;
    let tls = ServerTlsConfig::new()
        .identity(TlsIdentity::from_pem(chain, key))
        .client_ca_root(Certificate::from_pem(&fake.ca.pem))
        .client_auth_optional(true);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let fake = Arc::new(fake);
    let server = tonic::transport::Server::builder()
        .tls_config(tls)?
        .add_service(IdentityServer::new(FakeIdentity(fake.clone())))
        .add_service(DiscoveryServer::new(FakeDiscovery(fake)))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_update_is_nacked_and_the_last_good_config_stays() -> anyhow::Result<()> {
    init_logs();
    let app = start_echo("e1").await?;
    let ca = Arc::new(TestCa::new()?);
    let dir = tempfile::tempdir()?;
    // The real server-side sidecar, from a static file with certificate
    // files from the same CA: no control plane needed.
    let (chain, key) = ca.leaf("echo", (2040, 1, 1))?;
    let empty = write_temp(dir.path(), "empty.yaml", "services: []\n")?;
    let server = SidecarSpec::new("echo")
        .static_config(&empty)
        .app(app.addr)
        .arg(
            "--cert-file",
            write_temp(dir.path(), "echo.crt", &chain)?.display(),
        )
        .arg(
            "--key-file",
            write_temp(dir.path(), "echo.key", &key)?.display(),
        )
        .arg(
            "--ca-file",
            write_temp(dir.path(), "ca.pem", &ca.pem)?.display(),
        )
        .start()
        .await?;

    let token = weft_proto::identity::JoinToken {
        td: TRUST_DOMAIN.into(),
        id: "fake".into(),
        secret: "only-this-test".into(),
        ca: ca.fingerprint(),
    }
    .encode();
    let replies = Arc::new(Mutex::new(Vec::new()));
    let fake_addr = serve_fake(FakeControlPlane {
        ca: ca.clone(),
        token: token.clone(),
        service: "caller".into(),
        echo_addr: server.inbound.to_string(),
        replies: replies.clone(),
    })
    .await?;
    let caller = SidecarSpec::new("caller")
        .arg("--control-plane", format!("https://{fake_addr}"))
        .arg(
            "--token-file",
            write_temp(dir.path(), "token", &token)?.display(),
        )
        .upstream("echo")
        .start()
        .await?;

    let nack = wait_for("the NACK", Duration::from_secs(10), || async {
        replies.lock().ok()?.iter().find_map(|k| match k {
            pb::sidecar_message::Kind::Nack(n) => Some(n.clone()),
            _ => None,
        })
    })
    .await?;
    assert_eq!(nack.version, 2);
    assert!(
        nack.reason.contains("echo-1") && nack.reason.contains("address"),
        "{}",
        nack.reason
    );
    let config = caller.config().await?;
    assert_eq!(config["controlPlane"]["version"], 1, "{config}");
    assert!(
        config["controlPlane"]["lastNack"]
            .as_str()
            .is_some_and(|s| s.starts_with("2:")),
        "{config}"
    );
    // The last good config is still in force.
    let mut c = client(caller.upstream("echo")).await?;
    assert_eq!(
        c.unary(EchoRequest::default()).await?.get_ref().instance,
        "e1"
    );
    let m = caller.metrics().await?;
    assert_eq!(
        metric(
            &m,
            "weft_control_plane_updates_total",
            &[("result", "nack")]
        ),
        Some(1.0),
        "{m}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_runs_from_a_static_file_without_a_control_plane() -> anyhow::Result<()> {
    init_logs();
    let a = start_echo("a").await?;
    let b = start_echo("b").await?;
    let dir = tempfile::tempdir()?;
    let empty = write_temp(dir.path(), "empty.yaml", "services: []\n")?;
    let sa = SidecarSpec::new("echo")
        .static_config(&empty)
        .app(a.addr)
        .start()
        .await?;
    let sb = SidecarSpec::new("echo")
        .static_config(&empty)
        .app(b.addr)
        .start()
        .await?;
    let mesh = write_temp(
        dir.path(),
        "mesh.yaml",
        &format!(
            "services:\n  - name: echo\n    loadBalancer: round-robin\n    endpoints:\n      - address: {}\n      - address: {}\n",
            sa.inbound, sb.inbound
        ),
    )?;
    let caller = SidecarSpec::new("caller")
        .static_config(&mesh)
        .upstream("echo")
        .start()
        .await?;
    let mut c = client(caller.upstream("echo")).await?;
    for _ in 0..10 {
        c.unary(EchoRequest::default()).await?;
    }
    assert_eq!(
        (a.calls(), b.calls()),
        (5, 5),
        "round robin over the file's endpoints"
    );
    let config = caller.config().await?;
    assert_eq!(config["controlPlane"]["state"], "static");
    // A service the file does not list fails at once.
    let mut c = by_authority(caller.outbound, "other").await?;
    let e = c.unary(EchoRequest::default()).await.expect_err("unknown");
    assert_eq!(
        e.metadata()
            .get("x-weft-error")
            .and_then(|v| v.to_str().ok()),
        Some("unknown-service")
    );
    Ok(())
}
