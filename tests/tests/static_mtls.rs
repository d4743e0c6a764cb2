//! Mutual TLS without a control plane: static sidecars (`--config`) given a
//! certificate, its key and the mesh CA as files (`--cert-file`,
//! `--key-file`, `--ca-file`) refuse plaintext, check that a server is the
//! service they meant, tell the app who called, reload the files when they
//! change (keeping the old certificate when the new files are bad, without
//! a failed request), and refuse to start on bad files, naming the flag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use weft_tests::ca::{TestCa as Ca, spiffe};
use weft_tests::echo::{EchoService, SteadyLoad, client, start_echo};
use weft_tests::mesh::{Sidecar, SidecarSpec, write_temp};
use weft_tests::pb::EchoRequest;
use weft_tests::pb::echo_server::EchoServer;
use weft_tests::util::{init_logs, metric, wait_for};

/// Expiry dates (year, month, day) of the leaves: distinct, so that
/// `/config` tells which certificate is in force.
const FIRST: (i32, u8, u8) = (2040, 1, 1);
const SECOND: (i32, u8, u8) = (2041, 6, 1);

fn expiry_ms((y, m, d): (i32, u8, u8)) -> i64 {
    rcgen::date_time_ymd(y, m, d).unix_timestamp() * 1000
}

/// One sidecar's three files.
struct Files {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

impl Files {
    /// A leaf for `service` from `ca`, its key and `ca`, in a new directory in `dir`.
    fn write(dir: &Path, ca: &Ca, service: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir_in(dir)?.keep();
        let (chain, key) = ca.leaf(service, FIRST)?;
        Ok(Files {
            cert: write_temp(&dir, "cert.pem", &chain)?,
            key: write_temp(&dir, "key.pem", &key)?,
            ca: write_temp(&dir, "ca.pem", &ca.pem)?,
        })
    }

    fn on(&self, spec: SidecarSpec) -> SidecarSpec {
        spec.arg("--cert-file", self.cert.display())
            .arg("--key-file", self.key.display())
            .arg("--ca-file", self.ca.display())
    }
}

/// Starts `spec` with files for `service` from `ca`.
async fn start(
    dir: &Path,
    ca: &Ca,
    service: &str,
    spec: SidecarSpec,
) -> anyhow::Result<(Files, Sidecar)> {
    let files = Files::write(dir, ca, service)?;
    let sidecar = files.on(spec).start().await?;
    Ok((files, sidecar))
}

/// Replaces a file at once (written aside, then renamed), as a deploy tool would.
fn replace(path: &Path, text: &str) -> anyhow::Result<()> {
    let aside = PathBuf::from(format!("{}.new", path.display()));
    std::fs::write(&aside, text)?;
    std::fs::rename(aside, path)?;
    Ok(())
}

/// A static sidecar of `service` in front of `app`, its file listing nothing.
fn server(dir: &Path, service: &str, app: SocketAddr) -> anyhow::Result<SidecarSpec> {
    let empty = write_temp(dir, "empty.yaml", "services: []\n")?;
    Ok(SidecarSpec::new(service).static_config(&empty).app(app))
}

/// A static caller whose file lists `echo` at `addr`.
fn caller_of_echo_at(dir: &Path, addr: SocketAddr) -> anyhow::Result<SidecarSpec> {
    let yaml = format!(
        "services:\n  - name: echo\n    protocol: grpc\n    endpoints:\n      - address: {addr}\n"
    );
    let file = write_temp(dir, &format!("echo-at-{}.yaml", addr.port()), &yaml)?;
    Ok(SidecarSpec::new("caller")
        .static_config(&file)
        .upstream("echo"))
}

/// The error of one call to echo through `caller`.
async fn refused(caller: &Sidecar) -> anyhow::Result<tonic::Status> {
    let mut grpc = client(caller.upstream("echo")).await?;
    match grpc.unary(EchoRequest::default()).await {
        Ok(_) => anyhow::bail!("the call went through"),
        Err(e) => Ok(e),
    }
}

/// An echo app (with gRPC health) recording the `x-weft-peer-identity` of
/// every echo call.
async fn echo_app_recording_peers() -> anyhow::Result<(SocketAddr, Arc<Mutex<Vec<String>>>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let peers = Arc::new(Mutex::new(Vec::new()));
    let seen = peers.clone();
    let echo = EchoServer::with_interceptor(
        EchoService {
            instance: "echo-1".into(),
            calls: Default::default(),
            state: Default::default(),
        },
        move |req: tonic::Request<()>| {
            let id = req.metadata().get("x-weft-peer-identity");
            let id = id.and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            if let Ok(mut p) = seen.lock() {
                p.push(id);
            }
            Ok(req)
        },
    );
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_svc)
            .add_service(echo)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok((addr, peers))
}

/// An echo app behind a static `echo` sidecar, and a static `caller` sidecar
/// listing it, both with files from `ca`: (peers seen by the app, echo's
/// files, echo's sidecar, the caller).
async fn pair(
    dir: &Path,
    ca: &Ca,
) -> anyhow::Result<(Arc<Mutex<Vec<String>>>, Files, Sidecar, Sidecar)> {
    let (app, peers) = echo_app_recording_peers().await?;
    let (echo_files, echo) = start(dir, ca, "echo", server(dir, "echo", app)?).await?;
    let (_, caller) = start(dir, ca, "caller", caller_of_echo_at(dir, echo.inbound)?).await?;
    Ok((peers, echo_files, echo, caller))
}

async fn expires_ms(s: &Sidecar) -> Option<i64> {
    s.config().await.ok()?["identity"]["certificateExpiresUnixMs"].as_i64()
}

fn renewals(metrics: &str, result: &str) -> f64 {
    let labels = [("result", result)];
    metric(metrics, "weft_certificate_renewals_total", &labels).unwrap_or(0.0)
}

/// `weft_certificate_expiry_timestamp_seconds` in milliseconds.
fn expiry_gauge_ms(metrics: &str) -> Option<i64> {
    let gauge = metric(metrics, "weft_certificate_expiry_timestamp_seconds", &[]);
    gauge.map(|s| (s * 1000.0) as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_sidecars_speak_mutual_tls_with_certificate_files() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (peers, _files, echo, caller) = pair(dir.path(), &Ca::new()?).await?;
    let mut grpc = client(caller.upstream("echo")).await?;
    let mut req = tonic::Request::new(EchoRequest::default());
    // The app learns who called from the certificate, not from the caller's word.
    req.metadata_mut()
        .insert("x-weft-peer-identity", spiffe("admin").parse()?);
    assert_eq!(grpc.unary(req).await?.get_ref().instance, "echo-1");
    let seen = |p: &Mutex<Vec<String>>| p.lock().map(|p| p.clone()).unwrap_or_default();
    assert_eq!(seen(&peers), vec![spiffe("caller")]);

    // Plaintext straight to the echo sidecar is refused.
    let plain = match client(echo.inbound).await {
        Ok(mut c) => c.unary(EchoRequest::default()).await.is_ok(),
        Err(_) => false,
    };
    assert!(!plain, "a plaintext call got through");
    assert_eq!(seen(&peers).len(), 1);

    for (s, service) in [(&echo, "echo"), (&caller, "caller")] {
        let config = s.config().await?;
        assert_eq!(config["identity"]["spiffeId"], spiffe(service), "{config}");
        let expires = config["identity"]["certificateExpiresUnixMs"].as_i64();
        assert_eq!(expires, Some(expiry_ms(FIRST)), "{config}");
    }
    let m = echo.metrics().await?;
    assert_eq!(expiry_gauge_ms(&m), Some(expiry_ms(FIRST)), "{m}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_caller_refuses_a_server_that_is_not_the_service_it_meant() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let ca = Ca::new()?;
    let dir = dir.path();

    // The file says echo is there; the certificate there says other.
    let other_app = start_echo("other").await?;
    let (_, other) = start(dir, &ca, "other", server(dir, "other", other_app.addr)?).await?;
    let (_, caller) = start(dir, &ca, "caller", caller_of_echo_at(dir, other.inbound)?).await?;
    let e = refused(&caller).await?;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    let error = e.metadata().get("x-weft-error");
    assert_eq!(
        error.and_then(|v| v.to_str().ok()),
        Some("tls-failed"),
        "{e:?}"
    );
    assert_eq!(other_app.calls(), 0);

    // A caller whose certificate comes from another CA cannot reach a good
    // echo, even trusting echo's CA: echo refuses it.
    let echo_app = start_echo("echo-1").await?;
    let (_, echo) = start(dir, &ca, "echo", server(dir, "echo", echo_app.addr)?).await?;
    let stranger = Ca::new()?;
    let foreign = Files::write(dir, &stranger, "caller")?;
    std::fs::write(&foreign.ca, format!("{}{}", stranger.pem, ca.pem))?;
    let foreign = foreign.on(caller_of_echo_at(dir, echo.inbound)?);
    let e = refused(&foreign.start().await?).await?;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(echo_app.calls(), 0);
    let failed = [("direction", "inbound"), ("result", "failed")];
    wait_for(
        "echo to refuse the stranger",
        Duration::from_secs(10),
        || async {
            let m = echo.metrics().await.ok()?;
            metric(&m, "weft_tls_handshakes_total", &failed).filter(|n| *n >= 1.0)
        },
    )
    .await?;
    Ok(())
}

/// The CA bundle is rotated like the certificates: a sidecar that did not
/// trust a peer's CA does once its `--ca-file` gains that CA, on both ends
/// of a connection, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ca_in_the_bundle_is_trusted_after_the_reload() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let dir = dir.path();
    let (old, new) = (Ca::new()?, Ca::new()?);
    let both = format!("{}{}", old.pem, new.pem);

    // Outbound: echo's certificate is from the new CA; the caller trusts
    // only the old one, until its bundle gains the new one.
    let app = start_echo("echo-1").await?;
    let echo_files = Files::write(dir, &new, "echo")?;
    std::fs::write(&echo_files.ca, &both)?;
    let echo = echo_files
        .on(server(dir, "echo", app.addr)?)
        .start()
        .await?;
    let (caller_files, caller) =
        start(dir, &old, "caller", caller_of_echo_at(dir, echo.inbound)?).await?;
    let e = refused(&caller).await?;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    replace(&caller_files.ca, &both)?;
    wait_for(
        "the caller to trust the new CA",
        Duration::from_secs(15),
        || async {
            let mut c = client(caller.upstream("echo")).await.ok()?;
            c.unary(EchoRequest::default()).await.ok().map(|_| ())
        },
    )
    .await?;

    // Inbound: a caller with a certificate from the new CA reaches a
    // server that trusted only the old one, once the server's bundle
    // gains the new CA.
    let app = start_echo("echo-2").await?;
    let (server_files, server) = start(dir, &old, "echo", server(dir, "echo", app.addr)?).await?;
    let newcomer = Files::write(dir, &new, "caller")?;
    std::fs::write(&newcomer.ca, &both)?;
    let newcomer = newcomer
        .on(caller_of_echo_at(dir, server.inbound)?)
        .start()
        .await?;
    let e = refused(&newcomer).await?;
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert_eq!(app.calls(), 0);
    replace(&server_files.ca, &both)?;
    wait_for(
        "the server to trust the new CA",
        Duration::from_secs(15),
        || async {
            let mut c = client(newcomer.upstream("echo")).await.ok()?;
            c.unary(EchoRequest::default()).await.ok().map(|_| ())
        },
    )
    .await?;
    assert!(app.calls() >= 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_are_reloaded_when_they_change() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let ca = Ca::new()?;
    let (_peers, files, echo, caller) = pair(dir.path(), &ca).await?;
    assert_eq!(expires_ms(&echo).await, Some(expiry_ms(FIRST)));
    let load = SteadyLoad::start(caller.upstream("echo"), Duration::from_millis(5), 20_000);
    wait_for("the load to run", Duration::from_secs(10), || async {
        (load.ok() > 0).then_some(())
    })
    .await?;

    // A good new set: the new certificate is in force, counted as a renewal.
    let (chain, key) = ca.leaf("echo", SECOND)?;
    replace(&files.key, &key)?;
    replace(&files.cert, &chain)?;
    wait_for("the new certificate", Duration::from_secs(15), || async {
        (expires_ms(&echo).await? == expiry_ms(SECOND)).then_some(())
    })
    .await?;
    let m = echo.metrics().await?;
    assert!(renewals(&m, "ok") >= 1.0, "{m}");
    assert_eq!(expiry_gauge_ms(&m), Some(expiry_ms(SECOND)), "{m}");

    // Garbage: refused and counted; the certificate in force stays.
    let failed_before = renewals(&m, "failed");
    replace(&files.cert, "not a certificate\n")?;
    wait_for("the bad files refused", Duration::from_secs(15), || async {
        (renewals(&echo.metrics().await.ok()?, "failed") > failed_before).then_some(())
    })
    .await?;
    assert_eq!(expires_ms(&echo).await, Some(expiry_ms(SECOND)));
    let ok_then = load.ok();
    wait_for(
        "calls after the refusal",
        Duration::from_secs(10),
        || async { (load.ok() >= ok_then + 20).then_some(()) },
    )
    .await?;
    let (ok, failed) = load.stop().await?;
    assert_eq!(failed, 0, "calls failed ({ok} went through)");
    // The connection between the sidecars outlived the reloads.
    let m = caller.metrics().await?;
    let handshakes = [("direction", "outbound"), ("result", "ok")];
    assert_eq!(
        metric(&m, "weft_tls_handshakes_total", &handshakes),
        Some(1.0),
        "{m}"
    );
    Ok(())
}

/// Why a sidecar of `spec` does not start ("" when it does).
async fn start_error(spec: SidecarSpec) -> String {
    let started = async {
        match spec.start_unready().await {
            Err(e) => format!("{e:#}"),
            Ok(s) => s
                .stop()
                .await
                .map_or_else(|e| format!("{e:#}"), |()| String::new()),
        }
    };
    tokio::time::timeout(Duration::from_secs(15), started)
        .await
        .unwrap_or_else(|_| "(still starting after 15 s)".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_certificate_files_stop_the_sidecar_at_start_naming_the_flag() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let (ca, stranger) = (Ca::new()?, Ca::new()?);
    let empty = write_temp(dir.path(), "empty.yaml", "services: []\n")?;
    let good = Files::write(dir.path(), &ca, "echo")?;
    let other = Files::write(dir.path(), &ca, "other")?;
    let foreign = Files::write(dir.path(), &stranger, "echo")?;
    let echo = || SidecarSpec::new("echo").static_config(&empty);
    let files = |cert: &PathBuf, key: &PathBuf, ca: &PathBuf| {
        let [cert, key, ca] = [cert, key, ca].map(PathBuf::clone);
        Files { cert, key, ca }
    };
    let shows = |e: &str, parts: &[&str]| {
        assert!(parts.iter().all(|p| e.contains(p)), "{parts:?} in: {e}");
    };

    let e = start_error(echo().arg("--cert-file", good.cert.display())).await;
    shows(&e, &["--key-file"]);
    let only_two = echo()
        .arg("--cert-file", good.cert.display())
        .arg("--key-file", good.key.display());
    shows(&start_error(only_two).await, &["--ca-file"]);

    let e = start_error(other.on(echo())).await;
    shows(&e, &[&spiffe("other"), &spiffe("echo")]);

    let e = start_error(files(&good.cert, &foreign.key, &good.ca).on(echo())).await;
    shows(&e, &["--key-file", &foreign.key.display().to_string()]);

    let e = start_error(files(&good.cert, &good.key, &foreign.ca).on(echo())).await;
    assert!(e.contains("--ca-file") || e.contains("chain"), "{e}");

    let missing = dir.path().join("missing.crt");
    let e = start_error(files(&missing, &good.key, &good.ca).on(echo())).await;
    shows(&e, &["--cert-file", &missing.display().to_string()]);

    // With a control plane the files are refused.
    let token = weft_proto::identity::JoinToken {
        td: "weft.local".into(),
        id: "t1".into(),
        secret: "s".into(),
        ca: "00".into(),
    };
    let token = write_temp(dir.path(), "token", &token.encode())?;
    let joined = SidecarSpec::new("echo")
        .arg("--control-plane", "https://127.0.0.1:1")
        .arg("--token-file", token.display());
    shows(&start_error(good.on(joined)).await, &["--cert-file"]);
    Ok(())
}
