//! The real binaries as child processes: found next to the test executable
//! (cargo builds them with the workspace's tests), their stderr drained on a
//! thread and kept for assertions, killed on drop, and killed by the kernel
//! when this process dies without dropping them (a SIGKILL, e.g. a test
//! harness's timeout): see [`spawn_tied`].

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The path of a workspace binary (`weft-sidecar`, `weft-control-plane`,
/// `weftctl`). Fails loudly when it was not built. `WEFT_SIDECAR_BIN`
/// names another `weft-sidecar` (the benchmarks measure the `dist`
/// profile's build with it: `tests/bench/peers.sh`).
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    if name == "weft-sidecar"
        && let Some(path) = std::env::var_os("WEFT_SIDECAR_BIN")
    {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.exists(),
            "WEFT_SIDECAR_BIN names {}, which does not exist",
            path.display()
        );
        return Ok(path);
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        anyhow::bail!(
            "{} is missing: build the workspace binaries first (cargo build --workspace --bins; \
             the README's test command does)",
            path.display()
        );
    }
    Ok(path)
}

/// A running child process.
pub struct Proc {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(name: &str, args: &[String]) -> anyhow::Result<Self> {
        Self::spawn_program(bin(name)?, args)
    }

    /// Any program (e.g. `ip netns exec ...` around one of ours).
    pub fn spawn_program(
        program: impl AsRef<std::ffi::OsStr>,
        args: &[String],
    ) -> anyhow::Result<Self> {
        let mut command = Command::new(program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = spawn_tied(command)?;
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        Ok(Proc { child, log })
    }

    /// Polls `http://{admin}/ready` until it answers 2xx (bounded), and
    /// fails at once if the process exits first (then whatever answers on
    /// that port is not it). The error carries the process's log.
    pub async fn wait_ready(
        &mut self,
        what: &str,
        admin: std::net::SocketAddr,
    ) -> anyhow::Result<()> {
        let url = format!("http://{admin}/ready");
        let child = &mut self.child;
        let ready = crate::util::wait_for(
            &format!("{what} to be ready"),
            Duration::from_secs(20),
            || {
                let exited = child.try_wait().ok().flatten();
                let url = &url;
                async move {
                    if let Some(status) = exited {
                        return Some(Err(status));
                    }
                    let r = crate::util::http_get(url).await.ok()?;
                    r.status.is_success().then_some(Ok(()))
                }
            },
        )
        .await;
        match ready {
            Ok(Ok(())) => Ok(()),
            Ok(Err(status)) => anyhow::bail!(
                "{what} exited ({status}) before it was ready; log:\n{}",
                self.log_text()
            ),
            Err(e) => anyhow::bail!("{e}; log:\n{}", self.log_text()),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_text(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Takes the lines logged so far, leaving none: a long run reads its
    /// children's logs in slices instead of keeping them all.
    pub fn take_log(&self) -> Vec<String> {
        self.log
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    /// Sends a signal (SIGTERM, SIGKILL, …).
    pub fn signal(&self, sig: i32) {
        // SAFETY-free: libc::kill is a plain syscall on our own child's pid.
        let _ = unsafe_kill(self.pid(), sig);
    }

    /// Waits for the exit code, for at most `within`.
    pub fn wait(&mut self, within: Duration) -> anyhow::Result<i32> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s.code().unwrap_or(-1));
            }
            if std::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "process did not exit within {within:?}; log:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawns `command` so that the kernel kills it (SIGKILL) when this
/// process dies: `PR_SET_PDEATHSIG` in the child. Drop kills a child on
/// every exit but a SIGKILL, after which sidecars and control planes used
/// to run on, holding ports and a core. The signal follows the thread that
/// forked the child, not the process, so every child is forked by one
/// thread that lives as long as the process (not by a runtime's worker or
/// blocking thread, which may end first).
fn spawn_tied(command: Command) -> std::io::Result<Child> {
    use std::sync::OnceLock;
    use std::sync::mpsc;
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut command, reply) in rx {
                    tie_to_this_process(&mut command);
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("the spawner thread starts");
        Mutex::new(tx)
    });
    let (reply, answer) = mpsc::channel();
    spawner
        .lock()
        .map_err(|_| std::io::Error::other("the spawner's lock is poisoned"))?
        .send((command, reply))
        .map_err(|_| std::io::Error::other("the spawner thread has ended"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread has ended"))?
}

#[allow(unsafe_code)]
fn tie_to_this_process(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: runs in the forked child before exec, and calls only
    // async-signal-safe system calls (prctl, getppid), allocating nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: nothing would signal us.
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[allow(unsafe_code)]
fn unsafe_kill(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) }
}

/// Runs a command to completion: (exit code, stdout, stderr).
pub fn run(
    name: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<(i32, String, String)> {
    use std::io::Write;
    let mut child = Command::new(bin(name)?)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        i.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A free port on 127.0.0.1 for a child process to bind later, and again
/// after it is killed and restarted on the same address.
///
/// Picked at random *below* the kernel's ephemeral range and checked by
/// binding it. Ports handed out by `bind(0)` and taken by outgoing
/// connections come from that range, so while the port is free (before the
/// child binds it, or between a kill and the restart) no other test can be
/// given it. A port from `bind(0)` could be, and was: another test's admin
/// server took a killed control plane's admin port, answered its `/ready`,
/// and the restarted process could not bind. A port is handed out once per
/// test process.
pub fn free_port() -> anyhow::Result<u16> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    use std::hash::{BuildHasher, RandomState};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let floor = 10_000.min(low / 2);
    let span = u64::from(low - floor);
    anyhow::ensure!(span > 0, "no ports below the ephemeral range ({low})");
    let seed = RandomState::new().hash_one((std::process::id(), std::time::Instant::now()));
    for i in 0..500u64 {
        let port = floor + (seed.wrapping_add(i.wrapping_mul(7919)) % span) as u16;
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free port found in 127.0.0.1:{floor}..{low}")
}

/// `weft-control-plane` as a child process on fixed loopback ports (so that
/// it can be killed and restarted on the same address).
pub struct ControlPlaneProc {
    pub proc: Proc,
    pub grpc: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    pub data_dir: std::path::PathBuf,
}

impl ControlPlaneProc {
    pub async fn start(
        grpc: u16,
        admin: u16,
        data_dir: &std::path::Path,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let grpc: std::net::SocketAddr = format!("127.0.0.1:{grpc}").parse()?;
        let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse()?;
        let mut args = vec![
            "--listen".to_string(),
            grpc.to_string(),
            "--admin".into(),
            admin.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        // Not the default port: control planes run side by side here.
        if !extra.contains(&"--dashboard") {
            args.extend(["--dashboard".into(), "127.0.0.1:0".into()]);
        }
        let mut proc = Proc::spawn("weft-control-plane", &args)?;
        proc.wait_ready("the control-plane process", admin).await?;
        Ok(ControlPlaneProc {
            proc,
            grpc,
            admin,
            data_dir: data_dir.to_path_buf(),
        })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.grpc)
    }

    /// Admin access through the credential it wrote.
    pub fn access(&self) -> anyhow::Result<crate::mesh::CpAccess> {
        crate::mesh::CpAccess::read(self.url(), &self.data_dir)
    }
}

/// `weft-sidecar` as a child process, every port on 127.0.0.1.
pub struct SidecarProc {
    pub proc: Proc,
    pub inbound: std::net::SocketAddr,
    pub admin: std::net::SocketAddr,
    /// Where its app sends traffic for any service (by Host / authority).
    pub outbound: std::net::SocketAddr,
    _tmp: tempfile::TempDir,
}

impl SidecarProc {
    /// Starts one joined to `access`'s mesh (a join token minted for it),
    /// or standalone with `None` (then `extra` says where its config is).
    pub async fn start(
        service: &str,
        access: Option<&crate::mesh::CpAccess>,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let inbound: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        Self::start_at(service, access, inbound, extra).await
    }

    /// The same, with its inbound listener on `inbound` (to come back where
    /// an instance that was killed listened).
    pub async fn start_at(
        service: &str,
        access: Option<&crate::mesh::CpAccess>,
        inbound: std::net::SocketAddr,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let mut sidecar = Self::spawn_at(service, access, inbound, extra).await?;
        sidecar
            .proc
            .wait_ready("the sidecar process", sidecar.admin)
            .await?;
        Ok(sidecar)
    }

    /// Starts one without waiting for it to be ready (a wrapped app's
    /// sidecar may end before a test could see it ready).
    pub async fn spawn(
        service: &str,
        access: Option<&crate::mesh::CpAccess>,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let inbound: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        Self::spawn_at(service, access, inbound, extra).await
    }

    async fn spawn_at(
        service: &str,
        access: Option<&crate::mesh::CpAccess>,
        inbound: std::net::SocketAddr,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let tmp = tempfile::tempdir()?;
        // The mesh's flags first: `extra` may end with `-- APP ARGS...`.
        let mut joined = Vec::new();
        if let Some(a) = access {
            let token = tmp.path().join("token");
            std::fs::write(&token, a.token(service, Duration::from_secs(3600)).await?)?;
            joined.extend([
                "--control-plane".into(),
                a.url.clone(),
                "--token-file".into(),
                token.display().to_string(),
            ]);
        }
        let extra = [joined, extra.to_vec()].concat();
        // An `--admin` in `extra` is kept (a wrapped app may need to know
        // it before the sidecar starts); else one is picked.
        let given = extra.iter().position(|a| a == "--admin");
        let admin: std::net::SocketAddr = match given.and_then(|i| extra.get(i + 1)) {
            Some(a) => a.parse()?,
            None => format!("127.0.0.1:{}", free_port()?).parse()?,
        };
        let admin_flag: &[String] = if given.is_some() {
            &[]
        } else {
            &["--admin".to_string(), admin.to_string()]
        };
        let outbound: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut args: Vec<String> = [
            "--service",
            service,
            "--inbound",
            &inbound.to_string(),
            "--outbound",
            &outbound.to_string(),
            "--health-interval",
            "100ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend_from_slice(admin_flag);
        args.extend(extra);
        let proc = Proc::spawn("weft-sidecar", &args)?;
        Ok(SidecarProc {
            proc,
            inbound,
            admin,
            outbound,
            _tmp: tmp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Set in the copy of this test binary that the test below starts.
    const HELPER: &str = "WEFT_TIED_CHILD_HELPER";

    /// A child spawned through `Proc` dies with the process that spawned
    /// it, even when that process is SIGKILLed and drops nothing. The test
    /// starts this test binary again as that process (the same test, with
    /// `HELPER` set): it spawns `sleep`, says its pid, and waits to be
    /// killed.
    #[test]
    fn a_child_dies_with_its_parent_even_on_sigkill() -> anyhow::Result<()> {
        let name = "process::tests::a_child_dies_with_its_parent_even_on_sigkill";
        if std::env::var_os(HELPER).is_some() {
            let child = Proc::spawn_program("sleep", &["600".to_string()])?;
            println!("child pid: {}", child.pid());
            std::thread::sleep(Duration::from_secs(600));
            return Ok(());
        }
        let mut parent = Command::new(std::env::current_exe()?)
            .args(["--exact", name, "--nocapture"])
            .env(HELPER, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdout = parent.stdout.take().expect("piped");
        let pid = BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("child pid: ").map(str::to_owned));
        let _ = parent.kill();
        let _ = parent.wait();
        let pid: i32 = pid
            .ok_or_else(|| anyhow::anyhow!("the helper said no child pid"))?
            .parse()?;
        // The kernel signals at once; reaping (the child is re-parented to
        // init or a subreaper) may take a moment: bounded wait.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let alive = |pid: i32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                // A zombie (state Z) has died; it only waits to be reaped.
                s.rsplit(')')
                    .next()
                    .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
            })
        };
        while alive(pid) {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the child {pid} still runs 10 s after its parent was killed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}
