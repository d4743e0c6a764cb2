//! Rotating the mesh CA through the control plane, under load: trust the
//! new CA too (`--trust-bundle`), sign with it while still trusting the old
//! one, then drop the old one. The sidecars learn the roots on their
//! discovery stream and move to new certificates by renewing; no call
//! fails and weftctl keeps working. The control plane is a real process,
//! restarted on the same ports and data for each step.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use weft_proto::identity::{fingerprint, pem};
use weft_tests::echo::{SteadyLoad, start_echo};
use weft_tests::mesh::{Sidecar, SidecarSpec};
use weft_tests::process::{ControlPlaneProc, free_port, run};
use weft_tests::util::{init_logs, wait_for};

/// A CA written as `<name>.crt` / `<name>.key`: (cert path, key path,
/// fingerprint).
fn ca_files(dir: &Path, name: &str) -> anyhow::Result<(PathBuf, PathBuf, String)> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name
        .push(DnType::CommonName, format!("CA {name}"));
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key)?;
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, pem("CERTIFICATE", cert.der()))?;
    std::fs::write(&k, pem("PRIVATE KEY", &key.serialize_der()))?;
    Ok((c, k, fingerprint(cert.der())))
}

async fn roots(s: &Sidecar) -> Option<Vec<String>> {
    let c = s.config().await.ok()?;
    c["identity"]["roots"]
        .as_array()?
        .iter()
        .map(|r| r.as_str().map(str::to_string))
        .collect()
}

async fn expires_ms(s: &Sidecar) -> Option<u64> {
    s.config().await.ok()?["identity"]["certificateExpiresUnixMs"].as_u64()
}

/// Waits until every sidecar verifies peers under exactly `want`.
async fn all_trust(sidecars: &[&Sidecar], want: &[&str], step: &str) -> anyhow::Result<()> {
    wait_for(step, Duration::from_secs(20), || async {
        for s in sidecars {
            if roots(s).await? != want {
                return None;
            }
        }
        Some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mesh_ca_is_rotated_without_a_failed_call() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let (a_crt, a_key, a) = ca_files(dir.path(), "a")?;
    let (b_crt, b_key, b) = ca_files(dir.path(), "b")?;
    let (gport, aport) = (free_port()?, free_port()?);
    let path = |p: &Path| p.display().to_string();
    // Short certificates, so that renewals happen within the test.
    let start = |args: Vec<String>| {
        let mut all = vec!["--cert-ttl".to_string(), "4s".into()];
        all.extend(args);
        let data = data.clone();
        async move {
            let refs: Vec<&str> = all.iter().map(String::as_str).collect();
            ControlPlaneProc::start(gport, aport, &data, &refs).await
        }
    };
    let signing = |crt: &Path, key: &Path| {
        vec![
            "--ca-cert".to_string(),
            path(crt),
            "--ca-key".into(),
            path(key),
        ]
    };

    let cp = start(signing(&a_crt, &a_key)).await?;
    let access = cp.access()?;
    let app = start_echo("echo-1").await?;
    let echo = SidecarSpec::new("echo")
        .access(&access)
        .app(app.addr)
        .start()
        .await?;
    let caller = SidecarSpec::new("caller")
        .access(&access)
        .upstream("echo")
        .start()
        .await?;
    caller
        .wait_endpoints("echo", "the echo instance", |e| e.len() == 1)
        .await?;
    let sidecars = [&echo, &caller];
    all_trust(&sidecars, &[&a], "the sidecars to trust CA a").await?;
    let load = SteadyLoad::start(caller.upstream("echo"), Duration::from_millis(2), 100_000);
    let more_calls = |n: u64| {
        let from = load.ok();
        let load = &load;
        async move {
            wait_for("calls to go on", Duration::from_secs(10), || async {
                (load.ok() >= from + n).then_some(())
            })
            .await
        }
    };
    more_calls(50).await?;

    // 1. Trust b as well; a still signs.
    drop(cp);
    let mut with_b = signing(&a_crt, &a_key);
    with_b.extend(["--trust-bundle".into(), path(&b_crt)]);
    let cp = start(with_b).await?;
    all_trust(&sidecars, &[&a, &b], "the sidecars to trust CA b too").await?;
    more_calls(50).await?;

    // 2. b signs; a is still trusted. Every sidecar renews onto b.
    drop(cp);
    let mut b_signs = signing(&b_crt, &b_key);
    b_signs.extend(["--trust-bundle".into(), path(&a_crt)]);
    let cp = start(b_signs).await?;
    let switched = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    all_trust(&sidecars, &[&b, &a], "the new order of the roots").await?;
    wait_for(
        "every sidecar to hold a certificate from b",
        Duration::from_secs(20),
        || async {
            for s in sidecars {
                // Issued after the switch: expires 4 s after it at least.
                if expires_ms(s).await? < switched + 4000 {
                    return None;
                }
            }
            Some(())
        },
    )
    .await?;
    more_calls(50).await?;

    // 3. Drop a.
    drop(cp);
    let cp = start(signing(&b_crt, &b_key)).await?;
    all_trust(&sidecars, &[&b], "the sidecars to trust only CA b").await?;
    more_calls(100).await?;

    let (ok, failed) = load.stop().await?;
    assert_eq!(
        failed, 0,
        "calls failed during the rotation ({ok} went through)"
    );
    // weftctl's credential followed the roots: it still reaches the control plane.
    let credential = cp.data_dir.join("admin.credential");
    let (code, out, err) = run(
        "weftctl",
        &[
            "--control-plane",
            &cp.url(),
            "--credential",
            &path(&credential),
            "get",
            "instances",
        ],
        None,
    )?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("echo"), "{out}");
    Ok(())
}

/// New roots reach a sidecar on its discovery stream, long before its
/// certificate (24 h here) would be renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_roots_reach_the_sidecars_without_a_renewal() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data)?;
    let (a_crt, a_key, a) = ca_files(dir.path(), "a")?;
    let (b_crt, _, b) = ca_files(dir.path(), "b")?;
    let (gport, aport) = (free_port()?, free_port()?);
    let path = |p: &Path| p.display().to_string();
    let (a_crt, a_key, b_crt) = (path(&a_crt), path(&a_key), path(&b_crt));
    let a_signs = ["--ca-cert", a_crt.as_str(), "--ca-key", a_key.as_str()];
    let cp = ControlPlaneProc::start(gport, aport, &data, &a_signs).await?;
    let app = start_echo("echo-1").await?;
    let echo = SidecarSpec::new("echo")
        .access(&cp.access()?)
        .app(app.addr)
        .start()
        .await?;
    all_trust(&[&echo], &[&a], "the sidecar to trust CA a").await?;
    let issued = expires_ms(&echo).await;

    drop(cp);
    let with_b = [&a_signs[..], &["--trust-bundle", b_crt.as_str()]].concat();
    let _cp = ControlPlaneProc::start(gport, aport, &data, &with_b).await?;
    all_trust(&[&echo], &[&a, &b], "the sidecar to trust CA b too").await?;
    assert_eq!(expires_ms(&echo).await, issued, "no renewal happened");
    Ok(())
}
