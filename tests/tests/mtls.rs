//! Identity and mutual TLS: who may connect, who may get a certificate, who
//! may call what; rotation under load; the control plane's API closed to
//! strangers. Real TLS throughout, and `openssl s_client` where a client that
//! is not ours fits.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use weft_proto::v1 as pb;
use weft_tests::echo::{SteadyLoad, client, start_echo};
use weft_tests::http_app::start_http_app;
use weft_tests::mesh::{ControlPlane, SidecarSpec, caller, echo_instances, write_temp};
use weft_tests::pb::EchoRequest;
use weft_tests::util::{http_send, init_logs, metric, wait_for};

/// `openssl s_client` against `addr`, with an optional client certificate;
/// returns everything it printed. Fails loudly when openssl is missing.
fn s_client(
    addr: std::net::SocketAddr,
    cert: Option<(&std::path::Path, &std::path::Path)>,
) -> anyhow::Result<String> {
    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-alpn",
        "h2",
        "-tls1_3",
        "-ign_eof",
    ]);
    if let Some((c, k)) = cert {
        cmd.arg("-cert").arg(c).arg("-key").arg(k);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("openssl is needed for this test (apt-get install openssl): {e}")
        })?;
    // An HTTP/2 preface: a server that accepted us would answer with SETTINGS.
    if let Some(mut i) = child.stdin.take() {
        use std::io::Write;
        let _ = i.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    }
    let out = child.wait_with_output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// A CA that is not the mesh's, and a client certificate from it that
/// claims a mesh identity.
fn foreign_client_cert(
    dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf)> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.subject_alt_names = vec![SanType::URI(
        "spiffe://weft.local/service/caller".try_into()?,
    )];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&key, &issuer)?;
    drop(ca_cert);
    let c = write_temp(
        dir,
        "foreign.crt",
        &weft_proto::identity::pem("CERTIFICATE", cert.der()),
    )?;
    let k = write_temp(
        dir,
        "foreign.key",
        &weft_proto::identity::pem("PRIVATE KEY", &key.serialize_der()),
    )?;
    Ok((c, k))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_inbound_refuses_plaintext_and_strangers() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let mut echo = echo_instances(&cp, "echo", &["e"]).await?;
    let (app, server) = echo.remove(0);
    let inbound = server.inbound;

    // A plaintext gRPC client.
    let plain = match client(inbound).await {
        Ok(mut c) => c
            .unary(EchoRequest::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(plain.is_err(), "a plaintext gRPC call got through");
    // A plaintext HTTP/1.1 request: the connection is closed, nothing answered.
    let mut tcp = tokio::net::TcpStream::connect(inbound).await?;
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: echo\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await?;
    assert!(
        buf.is_empty(),
        "got an answer: {}",
        String::from_utf8_lossy(&buf)
    );

    // openssl without a client certificate, then with one from another CA.
    let none = tokio::task::spawn_blocking(move || s_client(inbound, None)).await??;
    eprintln!("--- no certificate:\n{none}");
    assert!(none.contains("alert certificate required"), "{none}");
    let dir = tempfile::tempdir()?;
    let (c, k) = foreign_client_cert(dir.path())?;
    let foreign = tokio::task::spawn_blocking(move || s_client(inbound, Some((&c, &k)))).await??;
    eprintln!("--- foreign certificate:\n{foreign}");
    assert!(foreign.contains("alert unknown ca"), "{foreign}");
    assert_eq!(app.calls(), 0);

    let m = server.metrics().await?;
    let failed = |reason: &str| {
        metric(
            &m,
            "weft_tls_handshakes_total",
            &[
                ("direction", "inbound"),
                ("result", "failed"),
                ("reason", reason),
            ],
        )
    };
    assert!(failed("plaintext-refused").unwrap_or(0.0) >= 2.0, "{m}");
    let all_failed = metric(
        &m,
        "weft_tls_handshakes_total",
        &[("direction", "inbound"), ("result", "failed")],
    )
    .unwrap_or(0.0);
    assert!(
        all_failed >= 4.0,
        "two plaintext and two TLS strangers: {m}"
    );

    // A mesh member gets through.
    let c = caller(&cp, "echo", 1).await?;
    let mut grpc = client(c.upstream("echo")).await?;
    grpc.unary(EchoRequest::default()).await?;
    assert_eq!(app.calls(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_inbound_also_takes_plaintext() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    cp.apply_yaml("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: echo}\nspec: {inboundMode: permissive}\n").await?;
    let mut echo = echo_instances(&cp, "echo", &["e"]).await?;
    let (app, server) = echo.remove(0);
    wait_for(
        "the permissive mode on the sidecar",
        Duration::from_secs(10),
        || async { (server.config().await.ok()?["inbound"]["mode"] == "PERMISSIVE").then_some(()) },
    )
    .await?;
    let mut plain = client(server.inbound).await?;
    plain.unary(EchoRequest::default()).await?;
    let c = caller(&cp, "echo", 1).await?;
    client(c.upstream("echo"))
        .await?
        .unary(EchoRequest::default())
        .await?;
    assert_eq!(app.calls(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_admit_one_service_and_expire() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let dir = tempfile::tempdir()?;
    let sidecar = |service: &str, token: &str| {
        let token = write_temp(dir.path(), &format!("{service}.token"), token)
            .map(|p| p.display().to_string());
        let args: Vec<String> = [
            "--service",
            service,
            "--control-plane",
            &cp.url(),
            "--inbound",
            "127.0.0.1:0",
            "--outbound",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        token.map(|t| [args, vec!["--token-file".into(), t]].concat())
    };
    // A token for orders cannot get a certificate for users: the sidecar stops and says why.
    let for_orders = cp.token("orders").await?;
    let mut p = weft_tests::process::Proc::spawn("weft-sidecar", &sidecar("users", &for_orders)?)?;
    let code = tokio::task::spawn_blocking(move || {
        p.wait(Duration::from_secs(15)).map(|c| (c, p.log_text()))
    })
    .await??;
    assert_ne!(code.0, 0);
    assert!(
        code.1.contains("spiffe://weft.local/service/users")
            && code.1.contains("spiffe://weft.local/service/orders"),
        "{}",
        code.1
    );

    // An expired token is refused.
    let resp = cp
        .admin_client()
        .await?
        .create_token(pb::CreateTokenRequest {
            service: "users".into(),
            ttl_seconds: 1,
        })
        .await?
        .into_inner();
    let expires = UNIX_EPOCH + Duration::from_millis(resp.expires_unix_ms);
    // Wait for the deadline itself: what is under test is expiry.
    if let Ok(left) = expires.duration_since(SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(50)).await;
    }
    let mut p = weft_tests::process::Proc::spawn("weft-sidecar", &sidecar("users", &resp.token)?)?;
    let code = tokio::task::spawn_blocking(move || {
        p.wait(Duration::from_secs(15)).map(|c| (c, p.log_text()))
    })
    .await??;
    assert_ne!(code.0, 0);
    assert!(code.1.contains("the join token expired"), "{}", code.1);

    // And a good one works.
    let s = SidecarSpec::new("users").control_plane(&cp).start().await?;
    let config = s.config().await?;
    assert_eq!(
        config["identity"]["spiffeId"],
        "spiffe://weft.local/service/users"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_refuses_a_server_that_is_not_the_service_it_meant() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let evil_app = start_echo("evil").await?;
    let evil = SidecarSpec::new("evil")
        .control_plane(&cp)
        .app(evil_app.addr)
        .start()
        .await?;
    // An "echo" instance whose advertised address is evil's sidecar: the
    // catalog says echo, the certificate there says evil.
    let echo_app = start_echo("echo").await?;
    let _liar = SidecarSpec::new("echo")
        .control_plane(&cp)
        .app(echo_app.addr)
        .arg("--advertise", evil.inbound)
        .start()
        .await?;
    let c = caller(&cp, "echo", 1).await?;
    let e = client(c.upstream("echo"))
        .await?
        .unary(EchoRequest::default())
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(
        e.metadata()
            .get("x-weft-error")
            .and_then(|v| v.to_str().ok()),
        Some("tls-failed")
    );
    assert!(
        e.message().contains("spiffe://weft.local/service/evil"),
        "{}",
        e.message()
    );
    assert_eq!(evil_app.calls(), 0);
    let m = c.metrics().await?;
    // Every try (a connect failure is retried by default) was refused.
    let refused = metric(
        &m,
        "weft_tls_handshakes_total",
        &[
            ("direction", "outbound"),
            ("result", "failed"),
            ("reason", "wrong-identity"),
        ],
    );
    assert!(refused.is_some_and(|n| n >= 1.0), "{m}");
    assert_eq!(
        metric(
            &m,
            "weft_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "ok")]
        ),
        None,
        "{m}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_learns_the_callers_identity_and_cannot_be_fooled() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let app = start_http_app("users-1").await?;
    let _s = SidecarSpec::new("users")
        .arg("--protocol", "http")
        .control_plane(&cp)
        .app(app.addr)
        .start()
        .await?;
    let web = SidecarSpec::new("web")
        .control_plane(&cp)
        .upstream("users")
        .start()
        .await?;
    web.wait_endpoints("users", "users", |e| e.len() == 1)
        .await?;
    let req = http::Request::builder()
        .uri(format!("http://{}/whoami", web.upstream("users")))
        .header("x-weft-peer-identity", "spiffe://weft.local/service/admin")
        .body(http_body_util::Full::new(bytes::Bytes::new()))?;
    let r = http_send(req).await?;
    assert_eq!(r.status, 200, "{r:?}");
    let v: serde_json::Value = serde_json::from_str(&r.body)?;
    assert_eq!(
        v["headers"]["x-weft-peer-identity"], "spiffe://weft.local/service/web",
        "{v}"
    );

    // HTTP rules: GET under /users/ only.
    cp.apply_yaml(
        "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: users-web}\nspec:\n  service: users\n  rules:\n    - from: [web]\n      http: [{methods: [GET], pathPrefix: /users/}]\n",
    )
    .await?;
    let send = |method: &str, path: &str| {
        http::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", web.upstream("users")))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
    };
    wait_for(
        "the HTTP rule on the users sidecar",
        Duration::from_secs(10),
        || async {
            let r = http_send(send("GET", "/orders").ok()?).await.ok()?;
            (r.status == 403).then_some(())
        },
    )
    .await?;
    assert_eq!(http_send(send("GET", "/users/7")?).await?.status, 200);
    let denied = http_send(send("DELETE", "/users/7")?).await?;
    assert_eq!(denied.status, 403);
    assert_eq!(denied.headers["x-weft-error"], "forbidden");
    assert!(denied.body.contains("DELETE /users/7"), "{}", denied.body);
    Ok(())
}

const POLICY: &str = "apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: echo-callers}
spec:
  service: echo
  rules:
    - from: [alice]
      grpcMethods: [\"/weft.test.v1.Echo/Unary\"]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_allows_denies_and_changes_with_the_next_request() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let mut echo = echo_instances(&cp, "echo", &["e"]).await?;
    let (app, server) = echo.remove(0);
    let alice = SidecarSpec::new("alice")
        .control_plane(&cp)
        .upstream("echo")
        .start()
        .await?;
    let bob = SidecarSpec::new("bob")
        .control_plane(&cp)
        .upstream("echo")
        .start()
        .await?;
    for s in [&alice, &bob] {
        s.wait_endpoints("echo", "echo", |e| e.len() == 1).await?;
    }
    let mut a = client(alice.upstream("echo")).await?;
    let mut b = client(bob.upstream("echo")).await?;
    // No policy yet: everyone in the mesh may call.
    b.unary(EchoRequest::default()).await?;

    cp.apply_yaml(POLICY).await?;
    wait_for(
        "the policy on the echo sidecar",
        Duration::from_secs(10),
        || async {
            server.config().await.ok()?["inbound"]["rules"]
                .as_array()
                .map(|_| ())
        },
    )
    .await?;
    a.unary(EchoRequest::default()).await?; // allowed method, allowed caller
    let e = a
        .server_stream(EchoRequest {
            count: 1,
            ..Default::default()
        })
        .await
        .expect_err("another method");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("/weft.test.v1.Echo/ServerStream"),
        "{}",
        e.message()
    );
    let e = b
        .unary(EchoRequest::default())
        .await
        .expect_err("another caller");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("spiffe://weft.local/service/bob"),
        "{}",
        e.message()
    );
    let calls_before = app.calls();

    // Let bob in: the very next request after the push passes, on the same connection.
    cp.apply_yaml(&POLICY.replace("from: [alice]", "from: [alice, bob]"))
        .await?;
    wait_for("the changed policy", Duration::from_secs(10), || async {
        let c = server.config().await.ok()?;
        (c["inbound"]["rules"][0]["from"].as_array()?.len() == 2).then_some(())
    })
    .await?;
    b.unary(EchoRequest::default()).await?;
    assert_eq!(app.calls(), calls_before + 1);
    let m = server.metrics().await?;
    assert_eq!(
        metric(&m, "weft_authorization_denied_total", &[("caller", "bob")]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "weft_authorization_denied_total",
            &[("caller", "alice")]
        ),
        Some(1.0),
        "{m}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_request() -> anyhow::Result<()> {
    init_logs();
    // Two-second certificates: renewed about every 1.4 s.
    let cp = ControlPlane::start_with(None, |c| {
        c.leaf_ttl = Duration::from_secs(2);
        c.catalog.instance_grace = Duration::from_millis(300);
    })
    .await?;
    let mut echo = echo_instances(&cp, "echo", &["e"]).await?;
    let (_app, server) = echo.remove(0);
    let c = caller(&cp, "echo", 1).await?;
    let load = SteadyLoad::start(c.upstream("echo"), Duration::from_millis(2), 200_000);
    let renewals = |text: &str| {
        metric(text, "weft_certificate_renewals_total", &[("result", "ok")]).unwrap_or(0.0)
    };
    // Until both sides rotated three times with the load running through
    // them (a slow build sends fewer calls per rotation: it runs longer).
    wait_for(
        "three rotations on both sides, and 500 calls",
        Duration::from_secs(30),
        || async {
            let (a, b) = (c.metrics().await.ok()?, server.metrics().await.ok()?);
            let rotated = renewals(&a) >= 3.0 && renewals(&b) >= 3.0;
            (rotated && load.ok() > 500).then_some(())
        },
    )
    .await?;
    let (ok, failed) = load.stop().await?;
    assert!(ok > 500, "the load ran: {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "requests failed during rotation");
    // The connection between the sidecars outlived every rotation.
    let m = c.metrics().await?;
    assert_eq!(
        metric(
            &m,
            "weft_tls_handshakes_total",
            &[("direction", "outbound"), ("result", "ok")]
        ),
        Some(1.0),
        "{m}"
    );
    let expiry = metric(&m, "weft_certificate_expiry_timestamp_seconds", &[]).unwrap_or(0.0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
    assert!(
        expiry > now - 1.0 && expiry < now + 5.0,
        "the gauge follows the current certificate: {expiry} vs {now}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_api_is_closed_to_strangers() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let mode = std::fs::metadata(cp.data_dir.join("ca.key"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the CA key file");
    let mode = std::fs::metadata(cp.data_dir.join("admin.credential"))?
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the admin credential file");
    let url = cp.url();
    let tls = || {
        weft_control_plane::cli::connect_tls(&url, &cp.access.credential, Duration::from_secs(5))
    };

    // Admin calls without, or with a wrong, credential.
    let mut anon = pb::admin_client::AdminClient::new(tls().await?);
    let e = anon
        .list_services(pb::ListServicesRequest {})
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = anon
        .create_token(pb::CreateTokenRequest {
            service: "x".into(),
            ttl_seconds: 60,
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated);
    let bad = weft_control_plane::cli::Bearer("Bearer not-the-token".parse()?);
    let mut wrong = pb::admin_client::AdminClient::with_interceptor(tls().await?, bad);
    assert_eq!(
        wrong
            .list_services(pb::ListServicesRequest {})
            .await
            .expect_err("refused")
            .code(),
        Code::Unauthenticated
    );
    let dir = tempfile::tempdir()?;
    let mut cred = cp.access.credential.clone();
    cred.token = "not-the-token".into();
    let path = write_temp(dir.path(), "bad.credential", &serde_json::to_string(&cred)?)?;
    let (code, _, err) = weft_tests::process::run(
        "weftctl",
        &[
            "--control-plane",
            &cp.url(),
            "--credential",
            &path.display().to_string(),
            "get",
            "services",
        ],
        None,
    )?;
    assert_eq!(code, 1);
    assert!(
        err.contains("not allowed") && err.contains("not valid for this control plane"),
        "{err}"
    );

    // A certificate request without token or certificate.
    let mut identity = pb::identity_client::IdentityClient::new(tls().await?);
    let e = identity
        .issue(pb::IssueRequest {
            csr: vec![1, 2, 3],
            token: String::new(),
        })
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated);

    // A discovery stream without a client certificate.
    let mut discovery = pb::discovery_client::DiscoveryClient::new(tls().await?);
    let hello = pb::SidecarMessage {
        kind: Some(pb::sidecar_message::Kind::Hello(pb::Hello {
            service: "users".into(),
            instance_id: "u-1".into(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        })),
    };
    let e = discovery
        .stream(futures_util::stream::iter(vec![hello]))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::Unauthenticated);

    // A certificate for users, obtained as a sidecar does (token + CSR)...
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(
        "spiffe://weft.local/service/users".try_into()?,
    )];
    let csr = params.serialize_request(&key)?;
    let issued = identity
        .issue(pb::IssueRequest {
            csr: csr.der().to_vec(),
            token: cp.token("users").await?,
        })
        .await?
        .into_inner();
    assert_eq!(issued.spiffe_id, "spiffe://weft.local/service/users");
    // ...cannot register as orders.
    let roots = weft_proto::identity::root_store(&[issued.roots[0].clone().into()])?;
    let verifier = weft_proto::identity::SpiffeServerVerifier::new(
        roots,
        weft_proto::identity::SpiffeId::control_plane("weft.local"),
    );
    let cert_pem = weft_proto::identity::pem("CERTIFICATE", &issued.chain[0]);
    let key_pem = weft_proto::identity::pem("PRIVATE KEY", &key.serialize_der());
    let channel = tonic::transport::Endpoint::from_shared(cp.url())?
        .tls_config_with_verifier(
            tonic::transport::ClientTlsConfig::new()
                .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem)),
            Arc::new(verifier),
        )?
        .connect()
        .await?;
    let mut as_users = pb::discovery_client::DiscoveryClient::new(channel);
    let claim = |service: &str| pb::SidecarMessage {
        kind: Some(pb::sidecar_message::Kind::Hello(pb::Hello {
            service: service.into(),
            instance_id: "x-1".into(),
            address: "127.0.0.1:1".into(),
            ..Default::default()
        })),
    };
    let e = as_users
        .stream(futures_util::stream::iter(vec![claim("orders")]))
        .await
        .expect_err("refused");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains("may not register as service orders"),
        "{}",
        e.message()
    );
    // As itself it may (the stream opens).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(claim("users")).await?;
    let mut updates = as_users
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    assert!(updates.message().await?.is_some_and(|u| u.full));
    Ok(())
}
