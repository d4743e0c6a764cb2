//! A RabbitMQ broker of our own, for the quick start and the tests: Debian's
//! `rabbitmq-server` started as a child process on its own node name, ports,
//! data and log directories, so that it neither needs nor disturbs a system
//! broker. It can be stopped and started again on the same node and data
//! directory (what survives is what was durable).
//!
//! Erlang's distribution needs epmd. Given an `epmd_port`, [`Broker`] runs an
//! epmd of its own there (a child process, ended when the broker is
//! dropped); without one, the broker uses the shared epmd on 4369, starting
//! it if needed (and leaving it running, as the system broker would).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Where Debian puts the script that runs the broker as the calling user
/// (`/usr/sbin/rabbitmq-server` switches to the `rabbitmq` user when run
/// as root, who cannot write our directories).
const DEBIAN_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// How to install the broker, for messages.
pub const INSTALL_HINT: &str = "sudo apt-get install rabbitmq-server";

/// An Erlang VM boots in 5–10 s here; a loaded machine may take longer.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// A graceful stop takes 2–3 s.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The `rabbitmq-server` script, if RabbitMQ is installed.
pub fn find_server() -> Option<PathBuf> {
    let debian = Path::new(DEBIAN_SERVER);
    if debian.is_file() {
        return Some(debian.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("rabbitmq-server"))
            .find(|p| p.is_file())
    })
}

/// Where and as whom a broker runs.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The `rabbitmq-server` script.
    pub server: PathBuf,
    /// Its data (`mnesia/`), logs (`log/`), Erlang cookie and settings.
    pub dir: PathBuf,
    /// The Erlang node name, e.g. `weft-quickstart@localhost`.
    pub node: String,
    /// The AMQP port on 127.0.0.1.
    pub amqp_port: u16,
    /// The Erlang distribution port on 127.0.0.1.
    pub dist_port: u16,
    /// Its own epmd on this port, or the shared one on 4369.
    pub epmd_port: Option<u16>,
}

/// A running (or stopped, to be started again) broker.
pub struct Broker {
    config: BrokerConfig,
    child: Option<Child>,
    epmd: Option<Child>,
}

impl Broker {
    /// Starts it and waits until it accepts an AMQP connection.
    pub async fn start(config: BrokerConfig) -> anyhow::Result<Broker> {
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(config.dir.join(sub))
                .with_context(|| format!("cannot create {}", config.dir.join(sub).display()))?;
        }
        // No plugins: the management UI alone adds seconds to every boot.
        std::fs::write(config.dir.join("enabled_plugins"), "[].\n")?;
        let mut broker = Broker {
            config,
            child: None,
            epmd: None,
        };
        if let Some(port) = broker.config.epmd_port {
            broker.epmd = Some(start_epmd(port).await?);
        }
        broker.start_again().await?;
        Ok(broker)
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/%2f` (the default user may log in
    /// from loopback only, which is where its sidecar connects from).
    pub fn url(&self) -> String {
        amqp_url(self.addr())
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.config.amqp_port))
    }

    pub fn log_file(&self) -> PathBuf {
        self.config.dir.join("log").join("console.log")
    }

    /// Starts the same node on the same data directory (after [`stop`]).
    ///
    /// [`stop`]: Broker::stop
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            bail!("the broker is already running");
        }
        let c = &self.config;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())?;
        let mut cmd = Command::new(&c.server);
        cmd.env("HOME", &c.dir) // the Erlang cookie goes there
            .env("RABBITMQ_NODENAME", &c.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", c.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", c.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", c.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", c.dir.join("log"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                c.dir.join("enabled_plugins"),
            )
            .env("RABBITMQ_PID_FILE", c.dir.join("broker.pid"))
            // Files that do not exist: none of the system's settings apply.
            .env("RABBITMQ_CONFIG_FILE", c.dir.join("rabbitmq"))
            .env(
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                c.dir.join("advanced.config"),
            )
            .env("RABBITMQ_CONF_ENV_FILE", c.dir.join("rabbitmq-env.conf"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .current_dir(&c.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: the script runs the Erlang VM as its
            // child, and a kill must reach both.
            .process_group(0);
        if let Some(p) = c.epmd_port {
            cmd.env("ERL_EPMD_PORT", p.to_string());
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot run {}", c.server.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Polls with an AMQP connection until one succeeds, failing at once if
    /// the process exits first.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let url = self.url();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "rabbitmq-server exited ({status}) before it was ready; see {}",
                    self.log_file().display()
                );
            }
            let probe = tokio::time::timeout(
                Duration::from_secs(2),
                lapin::Connection::connect(&url, lapin::ConnectionProperties::default()),
            )
            .await;
            if let Ok(Ok(conn)) = probe {
                let _ = conn.close(200, "ready".into()).await;
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "rabbitmq-server did not accept AMQP connections on {} within {START_TIMEOUT:?}; see {}",
                    self.addr(),
                    self.log_file().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops it gracefully (SIGTERM: the script asks the VM to stop) and
    /// waits; kills it if it does not stop in time.
    pub async fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("the broker is not running");
        };
        // The script only: it asks the VM to stop and waits for it.
        signal(child.id() as i32, libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                signal(-(child.id() as i32), libc::SIGKILL);
                let status = child.wait()?;
                bail!("rabbitmq-server did not stop within {STOP_TIMEOUT:?}; killed ({status})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(-(child.id() as i32), libc::SIGKILL);
            let _ = child.wait();
        }
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.kill();
            let _ = epmd.wait();
        }
    }
}

/// Runs epmd in the foreground on `port` (so that it stays our child) and
/// waits until it listens; the broker finds it through `ERL_EPMD_PORT`.
async fn start_epmd(port: u16) -> anyhow::Result<Child> {
    let mut child = Command::new("epmd")
        .args(["-port", &port.to_string(), "-address", "127.0.0.1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot run epmd (Erlang's port mapper, installed with rabbitmq-server)")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("epmd exited ({status}) at start: is port {port} taken?");
        }
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(child);
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("epmd did not listen on 127.0.0.1:{port} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The AMQP URL of the default vhost at `addr`, as the guest user.
pub fn amqp_url(addr: std::net::SocketAddr) -> String {
    format!("amqp://guest:guest@{addr}/%2f")
}

/// kill(2): a negative `pid` is the process group of the child we started
/// with `process_group(0)` (its pid is the group's id).
#[allow(unsafe_code)]
fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, sig);
    }
}
