//! Real etcd for the HA tests: a cluster of one or three members on
//! 127.0.0.1, each with ports of its own (from [`free_port`], so that a
//! killed member comes back on the same address) and its own data
//! directory, started as child processes of Debian's `etcd` binary.
//! Members can be killed and restarted on the same data.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::{Proc, free_port};
use crate::util::{http_get, wait_for};

/// The etcd binary, or `None` when it is missing and CI is not set (said
/// loudly: the caller skips). Under `CI=true` a missing etcd fails.
pub fn binary() -> anyhow::Result<Option<PathBuf>> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file());
    if found.is_some() {
        return Ok(found);
    }
    let why = "the HA tests need etcd (Debian: apt-get install etcd-server)";
    if std::env::var("CI").as_deref() == Ok("true") {
        anyhow::bail!("{why}");
    }
    eprintln!("SKIPPED: {why}");
    Ok(None)
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    proc: Option<Proc>,
}

/// A running etcd cluster; every member is killed on drop.
pub struct EtcdCluster {
    binary: PathBuf,
    members: Vec<Member>,
    token: String,
    dir: tempfile::TempDir,
    /// More flags for every member.
    extra: Vec<String>,
}

impl EtcdCluster {
    /// Starts `n` members and waits until the cluster has a leader.
    pub async fn start(binary: PathBuf, n: usize) -> anyhow::Result<Self> {
        Self::start_with(binary, n, &[]).await
    }

    /// The same, every member with `extra` flags (its limits, say).
    pub async fn start_with(binary: PathBuf, n: usize, extra: &[&str]) -> anyhow::Result<Self> {
        let members = (0..n)
            .map(|i| {
                Ok(Member {
                    name: format!("m{i}"),
                    client: free_port()?,
                    peer: free_port()?,
                    proc: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut cluster = EtcdCluster {
            binary,
            members,
            token: format!("weft-test-{}-{}", std::process::id(), free_port()?),
            dir: tempfile::tempdir()?,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_healthy(i).await?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let args: Vec<String> = [
            "--name",
            &m.name,
            "--data-dir",
            &data.display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &initial.join(","),
            "--initial-cluster-token",
            &self.token,
            "--initial-cluster-state",
            "new",
            // Fast elections on loopback: a killed member's place is taken
            // within about a second.
            "--heartbeat-interval",
            "50",
            "--election-timeout",
            "500",
            "--logger",
            "zap",
            "--log-level",
            "warn",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain(self.extra.iter().cloned())
        .collect();
        let proc = Proc::spawn_program(&self.binary, &args)?;
        self.members[i].proc = Some(proc);
        Ok(())
    }

    /// `host:port` of every member, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("127.0.0.1:{}", m.client))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The control plane's `--store` for this cluster.
    pub fn store_flag(&self) -> String {
        format!("etcd://{}", self.endpoints())
    }

    /// `http://127.0.0.1:port` of every member, for a test's own client.
    pub fn urls(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("http://127.0.0.1:{}", m.client))
            .collect()
    }

    /// Waits until member `i` says the cluster is healthy (it has a leader).
    pub async fn wait_healthy(&self, i: usize) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/health", self.members[i].client);
        let r = wait_for(
            &format!("etcd member {i} to be healthy"),
            Duration::from_secs(20),
            || async {
                let r = http_get(&url).await.ok()?;
                r.body.contains("\"health\":\"true\"").then_some(())
            },
        )
        .await;
        if r.is_err()
            && let Some(p) = &self.members[i].proc
        {
            anyhow::bail!("etcd member {i} not healthy; log:\n{}", p.log_text());
        }
        r
    }

    /// Kills member `i` (SIGKILL) and waits until it is gone.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut p) = self.members[i].proc.take() {
            p.signal(libc::SIGKILL);
            p.wait(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Starts member `i` again on its data directory and ports.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        anyhow::ensure!(self.members[i].proc.is_none(), "member {i} is running");
        self.spawn(i)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}
