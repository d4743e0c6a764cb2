//! The wrapped app (`weft-sidecar [flags] -- APP ARGS...`), with the real
//! sidecar binary, a real control plane and `sh -c` scripts as apps: the
//! app starts only once the sidecar is ready, signals reach it, its exit
//! code is the sidecar's, a Job-like app that exits 0 ends the sidecar
//! with 0, and as PID 1 of a PID namespace (`unshare`, root) the sidecar
//! reaps the orphans re-parented to it without taking the app's status.

use std::path::Path;
use std::time::Duration;

use weft_tests::mesh::ControlPlane;
use weft_tests::process::{ControlPlaneProc, SidecarProc, free_port};
use weft_tests::util::{http_get, init_logs, wait_for};

/// `-- sh -c SCRIPT`, the way a user writes an app after the flags.
fn app(script: &str) -> Vec<String> {
    ["--", "sh", "-c", script]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// A shell command that writes the HTTP status `/ready` answers (000: no
/// answer) to `file`, atomically so that a reader never sees half of it.
fn record_ready(admin: &str, file: &Path) -> String {
    let f = file.display();
    format!(
        "curl -s -o /dev/null -w '%{{http_code}}' http://{admin}/ready > {f}.tmp; mv {f}.tmp {f}"
    )
}

fn require_curl() -> anyhow::Result<bool> {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok()
    {
        return Ok(true);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        anyhow::bail!("curl is missing: the wrapped apps ask /ready with it (.ci/run installs it)");
    }
    eprintln!("skipping: curl is missing (the wrapped apps ask /ready with it)");
    Ok(false)
}

async fn wait_file(path: &Path, what: &str) -> anyhow::Result<String> {
    wait_for(what, Duration::from_secs(20), || async {
        std::fs::read_to_string(path).ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_starts_only_once_the_sidecar_is_ready_and_a_job_exiting_0_ends_it_with_0()
-> anyhow::Result<()> {
    init_logs();
    if !require_curl()? {
        return Ok(());
    }
    // The control plane is down while the sidecar starts, so there is a
    // long stretch in which the sidecar is up and not ready: an app
    // started then would record 503.
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("cp");
    let (grpc, admin) = (free_port()?, free_port()?);
    let cp = ControlPlaneProc::start(grpc, admin, &data, &[]).await?;
    let token_file = dir.path().join("token");
    std::fs::write(
        &token_file,
        cp.access()?.token("job", Duration::from_secs(3600)).await?,
    )?;
    let url = cp.url();
    drop(cp); // killed

    let sidecar_admin = free_port()?;
    let recorded = dir.path().join("ready-at-start");
    let mut extra: Vec<String> = vec![
        "--control-plane".into(),
        url,
        "--token-file".into(),
        token_file.display().to_string(),
        "--admin".into(),
        format!("127.0.0.1:{sidecar_admin}"),
    ];
    extra.extend(app(&format!(
        "{}; exit 0",
        record_ready(&format!("127.0.0.1:{sidecar_admin}"), &recorded)
    )));
    let mut sidecar = SidecarProc::spawn("job", None, &extra).await?;

    // Up and not ready (no certificate: the control plane is away), and
    // the app not started.
    let ready_url = format!("http://127.0.0.1:{sidecar_admin}/ready");
    let answer = wait_for(
        "the sidecar's admin port to answer",
        Duration::from_secs(20),
        || async { http_get(&ready_url).await.ok() },
    )
    .await?;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(
        !recorded.exists(),
        "the app started before the sidecar was ready"
    );

    // The control plane comes back: the sidecar gets its certificate and
    // config, starts the app, which finds /ready 200 and exits 0.
    let _cp = ControlPlaneProc::start(grpc, admin, &data, &[]).await?;
    let (code, log) = tokio::task::spawn_blocking(move || {
        let code = sidecar.proc.wait(Duration::from_secs(30));
        (code, sidecar.proc.log_text())
    })
    .await?;
    let code = code?;
    assert_eq!(
        std::fs::read_to_string(&recorded)?,
        "200",
        "the app's /ready at its start; log:\n{log}"
    );
    assert_eq!(code, 0, "the sidecar's exit code; log:\n{log}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_exit_code_is_the_sidecars() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let sidecar = SidecarProc::spawn("batch", Some(&cp.access), &app("exit 7")).await?;
    let mut proc = sidecar.proc;
    let code = tokio::task::spawn_blocking(move || proc.wait(Duration::from_secs(30))).await??;
    assert_eq!(code, 7);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_reach_the_app_and_the_sidecar_serves_until_it_exits() -> anyhow::Result<()> {
    init_logs();
    if !require_curl()? {
        return Ok(());
    }
    let cp = ControlPlane::start_fast().await?;
    let dir = tempfile::tempdir()?;
    let (started, hup, term) = (
        dir.path().join("started"),
        dir.path().join("hup"),
        dir.path().join("term"),
    );
    let sidecar_admin = format!("127.0.0.1:{}", free_port()?);
    // HUP is noted and the app goes on; TERM: the app asks /ready (the
    // sidecar must still serve while its app shuts down) and exits 3.
    let script = format!(
        "trap 'echo hup > {hup}' HUP; trap '{}; exit 3' TERM; touch {started}; \
         while :; do sleep 0.05; done",
        record_ready(&sidecar_admin, &term),
        hup = hup.display(),
        started = started.display(),
    );
    let mut extra = vec!["--admin".to_string(), sidecar_admin];
    extra.extend(app(&script));
    let mut sidecar = SidecarProc::spawn("worker", Some(&cp.access), &extra).await?;
    wait_file(&started, "the app to start").await?;

    sidecar.proc.signal(libc::SIGHUP);
    assert_eq!(wait_file(&hup, "the app to get SIGHUP").await?, "hup\n");
    assert!(
        sidecar.proc.child.try_wait()?.is_none() && !term.exists(),
        "SIGHUP ended the app or the sidecar"
    );

    sidecar.proc.signal(libc::SIGTERM);
    let mut proc = sidecar.proc;
    let (code, log) =
        tokio::task::spawn_blocking(move || (proc.wait(Duration::from_secs(30)), proc.log_text()))
            .await?;
    assert_eq!(code?, 3, "the app's code after SIGTERM; log:\n{log}");
    assert_eq!(
        std::fs::read_to_string(&term)?,
        "200",
        "/ready while the app handled SIGTERM: the sidecar drains after the app exits"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_killed_by_the_forwarded_signal_exits_128_plus_the_signal() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let dir = tempfile::tempdir()?;
    let started = dir.path().join("started");
    // `exec`: the signal reaches sleep itself, which has no handler.
    let script = format!("touch {}; exec sleep 60", started.display());
    let sidecar = SidecarProc::spawn("sleeper", Some(&cp.access), &app(&script)).await?;
    wait_file(&started, "the app to start").await?;
    sidecar.proc.signal(libc::SIGTERM);
    let mut proc = sidecar.proc;
    let code = tokio::task::spawn_blocking(move || proc.wait(Duration::from_secs(30))).await??;
    assert_eq!(code, 128 + libc::SIGTERM);
    Ok(())
}

/// Root and `unshare` (util-linux), for a PID namespace of its own; under
/// `CI=true` their absence fails the run.
fn require_pid_namespace() -> anyhow::Result<bool> {
    let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(2))
            == Some("0")
    });
    let unshare = std::process::Command::new("unshare")
        .arg("--version")
        .output()
        .is_ok();
    if root && unshare {
        return Ok(true);
    }
    let why = "the PID 1 test needs root and unshare (apt-get install util-linux)";
    if std::env::var("CI").as_deref() == Ok("true") {
        anyhow::bail!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    Ok(false)
}

/// The processes whose parent is `parent`, with their state letter (`Z`:
/// a zombie) and name, read from the host's `/proc/PID/stat`.
fn children(parent: i32) -> Vec<(i32, char, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        // "PID (COMM) STATE PPID ...": COMM may hold spaces, so split at
        // the last ')'.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_string();
        let mut rest = stat[close + 1..].split_whitespace();
        let state = rest.next().and_then(|s| s.chars().next()).unwrap_or('?');
        if rest.next().and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
            out.push((pid, state, comm));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_pid_1_the_sidecar_reaps_orphans_and_still_exits_with_the_apps_code()
-> anyhow::Result<()> {
    init_logs();
    if !require_pid_namespace()? {
        return Ok(());
    }
    let cp = ControlPlane::start_fast().await?;
    let dir = tempfile::tempdir()?;
    let d = dir.path().display().to_string();
    let token = dir.path().join("token");
    std::fs::write(
        &token,
        cp.access.token("reaper", Duration::from_secs(3600)).await?,
    )?;
    // An inner shell puts each orphan in the background and exits at once,
    // so each is re-parented to PID 1, the sidecar: three that end soon
    // (marking their end in a file), one that runs on (proof that orphans
    // land on the sidecar). The app itself waits, boundedly, for the
    // test's word, then exits 7.
    let script = format!(
        "sh -c 'for i in 1 2 3; do (sleep 0.1; touch {d}/orphan-$i) & done; sleep 30 &'; \
         touch {d}/started; i=0; \
         while [ ! -e {d}/go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; exit 7"
    );
    // --kill-child: should the test fail and kill unshare, the sidecar
    // and its namespace go with it.
    let mut args: Vec<String> = ["--pid", "--fork", "--mount-proc", "--kill-child"]
        .map(String::from)
        .to_vec();
    args.push(
        weft_tests::process::bin("weft-sidecar")?
            .display()
            .to_string(),
    );
    args.extend(
        [
            "--service".to_string(),
            "reaper".into(),
            "--control-plane".into(),
            cp.access.url.clone(),
            "--token-file".into(),
            token.display().to_string(),
            "--inbound".into(),
            format!("127.0.0.1:{}", free_port()?),
            "--outbound".into(),
            format!("127.0.0.1:{}", free_port()?),
            "--admin".into(),
            format!("127.0.0.1:{}", free_port()?),
        ]
        .into_iter()
        .chain(app(&script)),
    );
    let mut unshare = weft_tests::process::Proc::spawn_program("unshare", &args)?;

    for f in ["started", "orphan-1", "orphan-2", "orphan-3"] {
        wait_file(&dir.path().join(f), &format!("{f} to be written"))
            .await
            .map_err(|e| anyhow::anyhow!("{e}; log:\n{}", unshare.log_text()))?;
    }
    // `unshare --fork`'s only child is PID 1 of the new namespace.
    let pid1 = match children(unshare.pid()).as_slice() {
        [(pid, _, comm)] if comm.starts_with("weft-sidecar") => *pid,
        other => anyhow::bail!("unshare's children: {other:?}"),
    };
    let settled = wait_for(
        "the exited orphans to be reaped",
        Duration::from_secs(10),
        || {
            let kids = children(pid1);
            let zombies = kids.iter().filter(|(_, s, _)| *s == 'Z').count();
            let sleeper = kids.iter().any(|(_, _, c)| c == "sleep");
            async move { (zombies == 0 && sleeper).then_some(()) }
        },
    )
    .await;
    let seen = children(pid1);
    std::fs::write(dir.path().join("go"), "")?;
    settled.map_err(|e| {
        anyhow::anyhow!(
            "{e}: PID 1's children (pid, state, name): {seen:?}; log:\n{}",
            unshare.log_text()
        )
    })?;

    let (code, log) = tokio::task::spawn_blocking(move || {
        (unshare.wait(Duration::from_secs(30)), unshare.log_text())
    })
    .await?;
    assert_eq!(code?, 7, "the app's code, not an orphan's; log:\n{log}");
    Ok(())
}
