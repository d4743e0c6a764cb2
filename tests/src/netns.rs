//! "Pods" as network namespaces, for the interception tests: a hub
//! namespace with a bridge (10.77.0.1/24, where the control plane listens
//! and where captures are taken) and one namespace per pod joined to it by
//! a veth pair, each with its own address and a default route through the
//! hub. Names carry the test process's id, so parallel tests never share
//! one; everything is deleted on drop, also when a test fails.
//!
//! Needs root and `ip`, `iptables`, `tcpdump`, `setpriv`: [`prerequisites`]
//! says which are missing (an error under `CI=true`, a skip otherwise).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::process::{Proc, bin};

/// The bridge's address in the hub namespace.
pub const HUB_IP: &str = "10.77.0.1";
/// Its IPv6 address, once [`Net::ipv6`] gave the hub one.
pub const HUB_IP6: &str = "fd77::1";

/// Whether the tests can run here. `Ok(false)`: they cannot and are
/// skipped with the reason printed; under `CI=true` that is an error.
pub fn prerequisites() -> anyhow::Result<bool> {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root (network namespaces and iptables need it)".to_string());
    }
    for tool in [
        "ip",
        "iptables",
        "ip6tables",
        "iptables-save",
        "iptables-restore",
        "ip6tables-restore",
        "tcpdump",
        "setpriv",
        "curl",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            missing.push(format!(
                "{tool} (apt-get install iptables iproute2 tcpdump util-linux curl)"
            ));
        }
    }
    if missing.is_empty() {
        return Ok(true);
    }
    let why = format!("interception tests need: {}", missing.join(", "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        anyhow::bail!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    Ok(false)
}

fn is_root() -> bool {
    // /proc/self/status: "Uid: real effective saved fs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs a command; fails with its stderr when it fails.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output()?;
    if !out.status.success() {
        anyhow::bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The hub and its pods; deleted on drop.
pub struct Net {
    pub hub: String,
    tag: String,
    namespaces: Vec<String>,
    /// Readable by the sidecars' user (1337): tokens, the app binary's copy.
    pub dir: tempfile::TempDir,
}

impl Net {
    pub fn new() -> anyhow::Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "w{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::tempdir()?;
        set_mode(dir.path(), 0o755)?;
        let mut net = Net {
            hub: format!("{tag}hub"),
            tag,
            namespaces: Vec::new(),
            dir,
        };
        let hub = net.hub.clone();
        net.add_namespace(&hub)?;
        sh("ip", &["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        sh(
            "ip",
            &[
                "-n",
                &hub,
                "addr",
                "add",
                &format!("{HUB_IP}/24"),
                "dev",
                "br0",
            ],
        )?;
        sh("ip", &["-n", &hub, "link", "set", "br0", "up"])?;
        Ok(net)
    }

    fn add_namespace(&mut self, name: &str) -> anyhow::Result<()> {
        sh("ip", &["netns", "add", name])?;
        self.namespaces.push(name.to_string());
        sh("ip", &["-n", name, "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// A pod at 10.77.0.`host`, joined to the hub's bridge.
    pub fn pod(&mut self, name: &str, host: u8) -> anyhow::Result<Pod> {
        let ns = format!("{}{name}", self.tag);
        self.add_namespace(&ns)?;
        let hub_end = format!("{}h{host}", self.tag);
        sh(
            "ip",
            &[
                "link", "add", &hub_end, "netns", &self.hub, "type", "veth", "peer", "name",
                "eth0", "netns", &ns,
            ],
        )?;
        sh(
            "ip",
            &[
                "-n", &self.hub, "link", "set", &hub_end, "master", "br0", "up",
            ],
        )?;
        let ip = format!("10.77.0.{host}");
        sh(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        )?;
        sh("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        sh("ip", &["-n", &ns, "route", "add", "default", "via", HUB_IP])?;
        Ok(Pod { ns, ip })
    }

    /// IPv6 on the hub's bridge (fd77::1/64), for pods given an IPv6
    /// address with [`Net::pod_ipv6`]. Without duplicate address detection
    /// (`nodad`): nothing else is on this bridge, and an address still
    /// "tentative" could not be used for the seconds DAD takes.
    pub fn ipv6(&self) -> anyhow::Result<()> {
        sh(
            "ip",
            &[
                "-n",
                &self.hub,
                "addr",
                "add",
                &format!("{HUB_IP6}/64"),
                "dev",
                "br0",
                "nodad",
            ],
        )?;
        Ok(())
    }

    /// Gives `pod` the IPv6 address fd77::`host` (dual stack, beside its
    /// IPv4 one) and a default IPv6 route through the hub; returns it.
    pub fn pod_ipv6(&self, pod: &Pod, host: u8) -> anyhow::Result<String> {
        let ip = format!("fd77::{host:x}");
        sh(
            "ip",
            &[
                "-n",
                &pod.ns,
                "addr",
                "add",
                &format!("{ip}/64"),
                "dev",
                "eth0",
                "nodad",
            ],
        )?;
        sh(
            "ip",
            &[
                "-n", &pod.ns, "-6", "route", "add", "default", "via", HUB_IP6,
            ],
        )?;
        Ok(ip)
    }

    /// A file the sidecars' user can read.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text)?;
        set_mode(&path, 0o644)?;
        Ok(path)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its interfaces and rules with it.
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn set_mode(path: &std::path::Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// One pod's namespace and address.
#[derive(Clone, Debug)]
pub struct Pod {
    pub ns: String,
    pub ip: String,
}

impl Pod {
    /// `ip netns exec <ns> program args...`, as root.
    pub fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", &self.ns, program];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// The same, returning the exit code and stdout without failing.
    pub fn try_run(&self, program: &str, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, program])
            .args(args)
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        ))
    }

    /// `weft-sidecar init ARGS` in this pod.
    pub fn init(&self, args: &[&str]) -> anyhow::Result<String> {
        let sidecar = bin("weft-sidecar")?.display().to_string();
        let mut all = vec!["init"];
        all.extend_from_slice(args);
        self.run(&sidecar, &all)
    }

    /// `iptables-save` and `ip6tables-save` without their timestamp
    /// comments and counters: what a second `init` must leave unchanged.
    pub fn rules(&self) -> anyhow::Result<String> {
        let mut text = String::new();
        for save in ["iptables-save", "ip6tables-save"] {
            for line in self.run(save, &[])?.lines() {
                if line.starts_with('#') {
                    continue;
                }
                let line = match line.find(" [") {
                    Some(i) if line.starts_with(':') => &line[..i],
                    _ => line,
                };
                text.push_str(line);
                text.push('\n');
            }
        }
        Ok(text)
    }

    /// A workspace binary started in this pod, as root or (`as_proxy`) as
    /// uid/gid 1337, the user `init` leaves alone.
    pub fn spawn(&self, name: &str, args: &[String], as_proxy: bool) -> anyhow::Result<Proc> {
        let mut all: Vec<String> = vec!["netns".into(), "exec".into(), self.ns.clone()];
        if as_proxy {
            all.extend(
                [
                    "setpriv",
                    "--reuid",
                    "1337",
                    "--regid",
                    "1337",
                    "--clear-groups",
                ]
                .map(String::from),
            );
        }
        all.push(bin(name)?.display().to_string());
        all.extend_from_slice(args);
        Proc::spawn_program("ip", &all)
    }

    /// Polls `url` with curl in this pod until it answers 2xx (bounded).
    pub async fn wait_http(&self, url: &str, proc: &mut Proc) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = proc.child.try_wait()? {
                anyhow::bail!(
                    "exited ({status}) before {url} answered; log:\n{}",
                    proc.log_text()
                );
            }
            if self.try_run("curl", &["-sf", "-m", "2", url])?.0 == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("{url} did not answer in 30s; log:\n{}", proc.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `curl` in this pod: (exit code, body).
    pub fn curl(&self, args: &[&str]) -> anyhow::Result<(i32, String)> {
        let mut all = vec!["-s", "-m", "10"];
        all.extend_from_slice(args);
        self.try_run("curl", &all)
    }
}
