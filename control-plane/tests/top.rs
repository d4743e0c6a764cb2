//! `weftctl top` against a real control plane on 127.0.0.1:0, fed by
//! discovery streams that present a mesh certificate and send
//! `TrafficStats` as a sidecar does: the numbers, the JSON shape, the
//! errors and their exit codes, and the live view riding out an outage.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{CertificateParams, KeyPair, SanType};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity};
use weft_control_plane::ca::{Ca, CaSource};
use weft_control_plane::{ControlPlaneConfig, Listeners, run};
use weft_proto::identity::{SpiffeId, SpiffeServerVerifier, pem, root_store};
use weft_proto::stats::{BUCKETS, bucket_of};
use weft_proto::v1 as pb;
use weft_proto::v1::discovery_client::DiscoveryClient;
use weft_proto::v1::sidecar_message::Kind;

const TD: &str = "weft.local";
const DEADLINE: Duration = Duration::from_secs(15);

struct ControlPlane {
    url: String,
    credential: PathBuf,
    ca: Ca,
    stop: Option<oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

async fn start() -> ControlPlane {
    let dir = tempfile::tempdir().expect("tempdir");
    // The control plane loads this same CA from its data directory, so the
    // test can sign a sidecar certificate without a join token.
    let ca = Ca::load_or_create(
        &CaSource::DataDir(dir.path().to_path_buf()),
        TD,
        Duration::from_secs(3600),
    )
    .expect("a CA");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}", grpc.local_addr().expect("addr"));
    let (stop, stopped) = oneshot::channel::<()>();
    let config = ControlPlaneConfig::new(dir.path().to_path_buf());
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        let listeners = Listeners {
            grpc,
            admin,
            dashboard: None,
        };
        if let Err(e) = run(config, listeners, shutdown).await {
            panic!("control plane failed: {e}");
        }
    });
    let credential = dir.path().join("admin.credential");
    // The listener is bound already; only the credential file must exist.
    let start = Instant::now();
    while !credential.exists() {
        assert!(start.elapsed() < DEADLINE, "no admin credential written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ControlPlane {
        url,
        credential,
        ca,
        stop: Some(stop),
        _dir: dir,
    }
}

/// A TLS channel with a certificate for `service`, as a sidecar holds.
async fn sidecar_channel(cp: &ControlPlane, service: &str) -> Channel {
    weft_proto::identity::install_provider();
    let key = KeyPair::generate().expect("key");
    let id = SpiffeId::service(TD, service);
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().expect("uri"))];
    let csr = params.serialize_request(&key).expect("csr");
    let (cert, _) = cp.ca.issue(csr.der(), &id).expect("issued");
    let identity = Identity::from_pem(
        pem("CERTIFICATE", &cert),
        pem("PRIVATE KEY", &key.serialize_der()),
    );
    let roots = root_store(&[cp.ca.root().clone()]).expect("roots");
    let verifier = SpiffeServerVerifier::new(roots, SpiffeId::control_plane(TD));
    Endpoint::from_shared(cp.url.clone())
        .expect("url")
        .tls_config_with_verifier(
            ClientTlsConfig::new().identity(identity),
            Arc::new(verifier),
        )
        .expect("tls")
        .connect()
        .await
        .expect("connected")
}

/// A discovery stream registered as `service`/`id`, its first update received.
async fn register(
    channel: Channel,
    service: &str,
    id: &str,
    port: u16,
) -> (
    mpsc::Sender<pb::SidecarMessage>,
    tonic::Streaming<pb::DiscoveryUpdate>,
) {
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::SidecarMessage {
        kind: Some(Kind::Hello(pb::Hello {
            service: service.into(),
            instance_id: id.into(),
            address: format!("127.0.0.1:{port}"),
            health: pb::Health::Healthy as i32,
            ..Default::default()
        })),
    })
    .await
    .expect("hello");
    let mut updates = DiscoveryClient::new(channel)
        .stream(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let first = updates.message().await.expect("an update").expect("open");
    assert!(first.full);
    (tx, updates)
}

fn stats(requests: u64, failures: u64, ms: f64) -> pb::SidecarMessage {
    let first = bucket_of(ms);
    pb::SidecarMessage {
        kind: Some(Kind::Stats(pb::TrafficStats {
            requests,
            failures,
            latency_buckets: (0..BUCKETS)
                .map(|i| if i >= first { requests } else { 0 })
                .collect(),
            ..Default::default()
        })),
    }
}

async fn weftctl(cp_url: &str, credential: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![
        "--control-plane".to_string(),
        cp_url.to_string(),
        "--credential".to_string(),
        credential.display().to_string(),
    ];
    all.extend(args.iter().map(|s| s.to_string()));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_weftctl"))
            .args(&all)
            .stdin(Stdio::null())
            .output()
    })
    .await
    .expect("joined")
    .expect("weftctl runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_reports_what_sidecars_send() {
    let mut cp = start().await;
    let channel = sidecar_channel(&cp, "users").await;
    let (u1, _u1_updates) = register(channel.clone(), "users", "u-1", 2001).await;
    let (_u2, _u2_updates) = register(channel, "users", "u-2", 2002).await;
    u1.send(stats(0, 0, 0.8)).await.expect("sent");
    u1.send(stats(100, 1, 0.8)).await.expect("sent");

    // Poll until the control plane has the second sample.
    let start = Instant::now();
    let json: Value = loop {
        let (code, out, err) =
            weftctl(&cp.url, &cp.credential, &["top", "users", "-o", "json"]).await;
        assert_eq!(code, 0, "{err}");
        let v: Value = serde_json::from_str(&out).expect("JSON");
        if v["services"][0]["requests"] == 100 {
            break v;
        }
        assert!(start.elapsed() < DEADLINE, "never saw the traffic: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(json["window_seconds"], 10);
    let users = &json["services"][0];
    assert_eq!(users["service"], "users");
    assert_eq!(users["failures"], 1);
    assert_eq!(users["success_rate"], 0.99);
    assert_eq!(users["endpoints"], 2);
    assert_eq!(users["healthy_endpoints"], 2);
    assert!(users["rps"].as_f64().is_some_and(|r| r > 0.0), "{users}");
    let p50 = users["p50_ms"].as_f64().expect("p50");
    assert!(p50 > 0.5 && p50 <= 1.0, "{p50}");
    let u1_top = &users["instances"][0];
    assert_eq!(u1_top["instance_id"], "u-1");
    assert_eq!(u1_top["health"], "healthy");
    assert_eq!(u1_top["reporting"], true);
    assert_eq!(u1_top["requests"], 100);
    let u2_top = &users["instances"][1];
    assert_eq!(u2_top["instance_id"], "u-2");
    assert_eq!(u2_top["reporting"], false);

    // One frame as a table.
    let (code, out, err) = weftctl(
        &cp.url,
        &cp.credential,
        &["top", "--once", "--window", "30s"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("weftctl top   {}   window 30s   ", cp.url)),
        "{out}"
    );
    assert!(out.contains("99.00%"), "{out}");
    assert!(
        !out.contains('\x1b'),
        "no screen clearing off a terminal: {out}"
    );
    let u2_line = out.lines().find(|l| l.contains("u-2")).expect("u-2 listed");
    assert!(u2_line.trim_end().ends_with('-'), "{u2_line}");

    // Errors: unknown service, bad window, wrong credential.
    let (code, _, err) = weftctl(&cp.url, &cp.credential, &["top", "nope", "--once"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("service \"nope\" not found"), "{err}");
    let (code, _, err) = weftctl(&cp.url, &cp.credential, &["top", "--window", "301s"]).await;
    assert_eq!(code, 2, "a usage error: {err}");
    assert!(err.contains("300s"), "{err}");
    let forged = cp.credential.with_file_name("forged.credential");
    let mut cred: Value =
        serde_json::from_str(&std::fs::read_to_string(&cp.credential).expect("read"))
            .expect("json");
    cred["token"] = Value::String("0".repeat(64));
    std::fs::write(&forged, cred.to_string()).expect("write");
    let (code, _, err) = weftctl(&cp.url, &forged, &["top", "--once"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("not allowed"), "{err}");

    // The live view: frames separated by a blank line off a terminal; a
    // failed refresh is shown and the view keeps going.
    let mut live = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args([
            "--control-plane",
            &cp.url,
            "--credential",
            &cp.credential.display().to_string(),
            "--timeout",
            "1s",
            "top",
            "--interval",
            "100ms",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("weftctl runs");
    let stdout = live.stdout.take().expect("stdout");
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if lines_tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen: Vec<String> = Vec::new();
    let headers = |s: &[String]| s.iter().filter(|l| l.starts_with("weftctl top")).count();
    wait_for(&mut lines, &mut seen, |s| headers(s) >= 2).await;
    if let Some(stop) = cp.stop.take() {
        let _ = stop.send(());
    }
    wait_for(&mut lines, &mut seen, |s| {
        s.iter().any(|l| l.starts_with("error: "))
    })
    .await;
    let before = headers(&seen);
    wait_for(&mut lines, &mut seen, |s| headers(s) > before).await;
    assert!(live.try_wait().expect("status").is_none(), "still running");
    let frames = seen.join("\n");
    assert!(
        frames.contains("\n\nweftctl top"),
        "blank line between frames:\n{frames}"
    );
    assert!(!frames.contains('\x1b'), "{frames}");
    live.kill().expect("stopped");
    let _ = live.wait();
}

/// Reads the live view's lines into `seen` until `pred` holds (bounded).
async fn wait_for(
    lines: &mut mpsc::UnboundedReceiver<String>,
    seen: &mut Vec<String>,
    pred: impl Fn(&[String]) -> bool,
) {
    let start = Instant::now();
    while !pred(seen) {
        let left = DEADLINE.saturating_sub(start.elapsed());
        match tokio::time::timeout(left, lines.recv()).await {
            Ok(Some(l)) => seen.push(l),
            _ => panic!("live view stalled; so far:\n{}", seen.join("\n")),
        }
    }
}
