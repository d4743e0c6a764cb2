//! The control plane a simulation runs against, as real processes: one
//! `weft-control-plane` on the embedded store, or replicas sharing a
//! three-member etcd (started with [`crate::etcd`]). Each can be killed and
//! started again on the same ports and data; their CPU time and resident
//! memory are read from `/proc`.

use std::path::PathBuf;
use std::time::Duration;

use weft_control_plane::auth::CREDENTIAL_FILE;
use weft_control_plane::ca::{CA_CERT_FILE, CA_KEY_FILE, Ca, CaSource};

use crate::etcd::{self, EtcdCluster};
use crate::mesh::CpAccess;
use crate::process::{ControlPlaneProc, free_port};

/// CPU time and resident memory, summed over the replicas.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub cpu: Duration,
    pub rss_bytes: u64,
}

impl Usage {
    /// CPU used since `earlier` (memory is `self`'s).
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            cpu: self.cpu.saturating_sub(earlier.cpu),
            rss_bytes: self.rss_bytes,
        }
    }
}

/// The running replicas (one without etcd).
pub struct Plane {
    replicas: Vec<ControlPlaneProc>,
    /// Each replica's flags beyond ports and data, to start it again.
    extra: Vec<String>,
    _etcd: Option<EtcdCluster>,
    _dir: tempfile::TempDir,
}

impl Plane {
    /// Starts `replicas` control planes: 1 on the embedded store, or more
    /// on a three-member etcd cluster with the same CA files on each.
    pub async fn start(replicas: usize) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        // A log line per connect and disconnect, as in production.
        let mut extra = vec!["--log".to_string(), "info".to_string()];
        let mut cluster = None;
        if replicas > 1 {
            let Some(binary) = etcd::binary()? else {
                anyhow::bail!("--replicas {replicas} needs etcd (apt-get install etcd-server)");
            };
            let c = EtcdCluster::start(binary, 3).await?;
            let ca_dir = dir.path().join("ca");
            std::fs::create_dir_all(&ca_dir)?;
            Ca::load_or_create(
                &CaSource::DataDir(ca_dir.clone()),
                "weft.local",
                Duration::from_secs(24 * 3600),
            )?;
            extra.extend([
                "--store".to_string(),
                c.store_flag(),
                "--ca-cert".into(),
                ca_dir.join(CA_CERT_FILE).display().to_string(),
                "--ca-key".into(),
                ca_dir.join(CA_KEY_FILE).display().to_string(),
            ]);
            cluster = Some(c);
        }
        let mut plane = Plane {
            replicas: Vec::new(),
            extra,
            _etcd: cluster,
            _dir: dir,
        };
        for i in 0..replicas {
            let data = plane.data_dir(i);
            std::fs::create_dir_all(&data)?;
            // Every replica takes the first one's admin credential.
            let first = plane.data_dir(0).join(CREDENTIAL_FILE);
            if i > 0 {
                std::fs::copy(&first, data.join(CREDENTIAL_FILE))?;
            }
            let p = plane.spawn(i, free_port()?, free_port()?).await?;
            plane.replicas.push(p);
        }
        Ok(plane)
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self._dir.path().join(format!("replica-{i}"))
    }

    async fn spawn(&self, i: usize, grpc: u16, admin: u16) -> anyhow::Result<ControlPlaneProc> {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        ControlPlaneProc::start(grpc, admin, &self.data_dir(i), &extra).await
    }

    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Each replica's gRPC URL.
    pub fn urls(&self) -> Vec<String> {
        self.replicas.iter().map(ControlPlaneProc::url).collect()
    }

    /// Admin access through replica `i`.
    pub fn access(&self, i: usize) -> anyhow::Result<CpAccess> {
        self.replicas
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("no replica {i}"))?
            .access()
    }

    /// CPU and memory of every replica now.
    pub fn usage(&self) -> anyhow::Result<Usage> {
        let mut total = Usage::default();
        for r in &self.replicas {
            let u = usage_of(r.proc.pid())?;
            total.cpu += u.cpu;
            total.rss_bytes += u.rss_bytes;
        }
        Ok(total)
    }

    /// Kills replica `i` (SIGKILL: nothing said to its sidecars).
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let r = &mut self.replicas[i];
        r.proc.signal(libc::SIGKILL);
        r.proc.wait(Duration::from_secs(10))?;
        Ok(())
    }

    /// Starts replica `i` again on its ports and data; returns once ready.
    pub async fn start_again(&mut self, i: usize) -> anyhow::Result<()> {
        let (grpc, admin) = (self.replicas[i].grpc.port(), self.replicas[i].admin.port());
        let fresh = self.spawn(i, grpc, admin).await?;
        self.replicas[i] = fresh;
        Ok(())
    }
}

/// CPU time (user + system, every thread) and VmRSS of process `pid`.
pub fn usage_of(pid: i32) -> anyhow::Result<Usage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) in parentheses:
    // state is field 3, utime 14 and stime 15 (proc(5)).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/stat: no command field"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        f.get(11).unwrap_or(&"0").parse::<u64>()? + f.get(12).unwrap_or(&"0").parse::<u64>()?;
    // USER_HZ, the unit of these fields, is 100 on Linux whatever the
    // kernel's own tick rate.
    let cpu = Duration::from_millis(ticks * 10);
    Ok(Usage {
        cpu,
        rss_bytes: rss_of(pid)?,
    })
}

/// VmRSS of process `pid`, in bytes.
pub fn rss_of(pid: i32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .ok_or_else(|| anyhow::anyhow!("/proc/{pid}/status: no VmRSS"))?;
    Ok(kb * 1024)
}
