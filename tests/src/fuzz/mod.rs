//! The random-input driver (`weft-fuzz`, and `tests/tests/fuzz.rs` with a
//! small count): a real control plane, two real sidecars (an mTLS pair in
//! front of an echo app) and a third as the API gateway in front of the
//! same service (REST transcoding, gRPC-Web, CORS, a rate limit, the
//! forwarding headers, a route's header, query and path matches and its
//! rewrites), and a stream of mutated valid inputs at every listener, many
//! connections at once, each input bounded by a timeout.
//! Between batches and at the end it checks that every process still runs,
//! logged no panic, keeps its memory within a bound, and carries a normal
//! call through the pair and a REST call through the gateway, and that the
//! caller's metrics name no service the mesh does not hold.
//!
//! Every input is drawn from `(seed, index)` alone, so a run is replayed
//! from its seed; which connection carries it depends on timing.

pub mod seeds;
pub mod send;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use tokio_rustls::TlsConnector;
use weft_proto::identity::{SpiffeId, certs_from_pem, pem, root_store};
use weft_proto::v1 as pb;

use crate::echo::{EchoServerHandle, client, start_echo};
use crate::pb::EchoRequest;
use crate::process::{ControlPlaneProc, Proc, SidecarProc, free_port};
use seeds::Rng;
use send::Outcome;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Inputs in all (a discovery stream of four messages is one).
    pub inputs: u64,
    /// Stop starting inputs after this long.
    pub limit: Option<Duration>,
    pub seed: u64,
    /// Inputs in flight at once.
    pub concurrency: usize,
    /// Inputs between two checks of the processes.
    pub batch: u64,
    /// How long one input may take before it counts as a hang.
    pub timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            inputs: 10_000_000,
            limit: None,
            seed: 1,
            concurrency: 32,
            batch: 20_000,
            timeout: Duration::from_secs(5),
        }
    }
}

/// How inputs reach a listener.
enum Kind {
    /// Mutated bytes on a new TCP connection.
    Raw(Vec<Vec<u8>>),
    /// Mutated bytes inside a mutual-TLS session with a mesh certificate.
    RawInMtls(Vec<Vec<u8>>),
    /// Mutated HTTP/1 requests on a new TCP connection, each read to its
    /// whole answer (`send::http1`).
    Http1(Vec<Vec<u8>>),
    /// Valid HTTP/2 framing carrying gRPC calls with mutated paths,
    /// authorities, headers and bodies; one connection carries many.
    Requests { authority: &'static str, mtls: bool },
    /// A discovery stream over mutual TLS: a hello and three more
    /// messages, each mutated or not (one input: the stream).
    Discovery,
}

/// Counts of one target.
#[derive(Debug, Default)]
pub struct Counts {
    pub inputs: AtomicU64,
    pub answered: AtomicU64,
    pub resets: AtomicU64,
    pub timeouts: AtomicU64,
    /// HTTP/1 inputs answered with a 2xx: they reached what answers them.
    pub ok_2xx: AtomicU64,
}

impl Counts {
    fn add(&self, inputs: u64, o: Outcome) {
        self.inputs.fetch_add(inputs, Ordering::Relaxed);
        let c = match o {
            Outcome::Answered => &self.answered,
            Outcome::Reset => &self.resets,
            Outcome::TimedOut => &self.timeouts,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    kind: Kind,
    /// Share of the inputs (out of the sum of all weights).
    weight: u64,
    counts: Counts,
}

/// Memory and health of one process over the run.
#[derive(Debug, Clone)]
pub struct ProcReport {
    pub name: &'static str,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    pub rss_peak_kib: u64,
    pub bound_kib: u64,
    pub panics: Vec<String>,
    pub exited: Option<String>,
}

/// One target's counts at the end.
#[derive(Debug, Clone)]
pub struct TargetReport {
    pub name: &'static str,
    pub inputs: u64,
    pub answered: u64,
    pub resets: u64,
    pub timeouts: u64,
    /// Answered with a 2xx; `None` for inputs that are not HTTP/1.
    pub ok_2xx: Option<u64>,
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub elapsed: Duration,
    pub targets: Vec<TargetReport>,
    pub processes: Vec<ProcReport>,
    /// Normal calls through the pair after each batch: made, and failed
    /// (with the first error).
    pub checks: u64,
    pub failed_checks: Vec<String>,
}

impl Report {
    pub fn inputs(&self) -> u64 {
        self.targets.iter().map(|t| t.inputs).sum()
    }

    pub fn timeouts(&self) -> u64 {
        self.targets.iter().map(|t| t.timeouts).sum()
    }

    /// Everything that went wrong; empty for a clean run.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        for p in &self.processes {
            if let Some(e) = &p.exited {
                out.push(format!("{} exited: {e}", p.name));
            }
            for line in p.panics.iter().take(3) {
                out.push(format!("{} panicked: {line}", p.name));
            }
            if p.rss_peak_kib > p.bound_kib {
                out.push(format!(
                    "{} RSS peaked at {} KiB, over its bound of {} KiB",
                    p.name, p.rss_peak_kib, p.bound_kib
                ));
            }
        }
        for t in &self.targets {
            if t.timeouts > 0 {
                out.push(format!(
                    "{}: {} inputs hung past the timeout",
                    t.name, t.timeouts
                ));
            }
        }
        out.extend(self.failed_checks.iter().cloned());
        out
    }

    /// The tables `weft-fuzz` prints.
    pub fn table(&self) -> String {
        let mut s = format!(
            "{:<40} {:>11} {:>11} {:>10} {:>9} {:>11}\n",
            "target", "inputs", "answered", "resets", "timeouts", "HTTP 2xx"
        );
        for t in &self.targets {
            let ok = t.ok_2xx.map_or("-".to_string(), |n| n.to_string());
            s += &format!(
                "{:<40} {:>11} {:>11} {:>10} {:>9} {ok:>11}\n",
                t.name, t.inputs, t.answered, t.resets, t.timeouts
            );
        }
        s += &format!(
            "{:<40} {:>11} {:>11} {:>10} {:>9}\n\n",
            "total",
            self.inputs(),
            self.targets.iter().map(|t| t.answered).sum::<u64>(),
            self.targets.iter().map(|t| t.resets).sum::<u64>(),
            self.timeouts()
        );
        s += &format!(
            "{:<22} {:>14} {:>14} {:>14} {:>14}  {}\n",
            "process", "RSS start KiB", "RSS end KiB", "RSS peak KiB", "bound KiB", "status"
        );
        for p in &self.processes {
            let status = match (&p.exited, p.panics.len()) {
                (Some(e), _) => format!("exited: {e}"),
                (None, 0) => "running, no panic".to_string(),
                (None, n) => format!("{n} panic lines"),
            };
            s += &format!(
                "{:<22} {:>14} {:>14} {:>14} {:>14}  {status}\n",
                p.name, p.rss_start_kib, p.rss_end_kib, p.rss_peak_kib, p.bound_kib
            );
        }
        let secs = self.elapsed.as_secs_f64();
        s += &format!(
            "\nseed {}; {} inputs in {:.1} s ({:.0}/s); {} checks after batches (a call through the pair, a REST call through the gateway), {} failed\n",
            self.seed,
            self.inputs(),
            secs,
            self.inputs() as f64 / secs.max(0.001),
            self.checks,
            self.failed_checks.len()
        );
        s
    }
}

/// The processes under test and what the inputs need to reach them.
struct Mesh {
    cp: ControlPlaneProc,
    echo: SidecarProc,
    caller: SidecarProc,
    gateway: SidecarProc,
    _app: EchoServerHandle,
    upstream: SocketAddr,
    /// The gateway's cleartext and TLS listeners.
    gateway_http: SocketAddr,
    gateway_https: SocketAddr,
    /// Mutual TLS as service `fuzz`, to the echo sidecar's inbound.
    inbound_tls: TlsConnector,
    /// The discovery API over mutual TLS as service `fuzz`.
    discovery: tonic::transport::Channel,
    _dir: tempfile::TempDir,
}

/// A request deadline on the echo service: however a call's headers or
/// body are mutated, the pair answers it within this. A gateway routes to
/// it by three hosts (`seeds::GATEWAY_GRPC_HOST`, `GATEWAY_BROWSER_HOST`,
/// and `GATEWAY_REST_HOST` through header, query and path matches and
/// rewrites of the path, the host and headers both ways).
const ECHO_SERVICE: &str = "apiVersion: weft.dev/v1
kind: Service
metadata: {name: echo}
spec:
  timeouts: {request: 2s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway}
spec:
  gatewayClassName: weft
  listeners:
    - {name: web, port: 8080, protocol: HTTP}
    - {name: tls, port: 8443, protocol: HTTPS, tls: {mode: Terminate}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: echo-api}
spec:
  parentRefs: [{kind: Gateway, name: gateway}]
  hostnames: [grpc.example.com]
  rules:
    - backendRefs: [{name: echo}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: browser}
spec:
  parentRefs: [{kind: Gateway, name: gateway}]
  hostnames: [app-api.example.com]
  rules:
    - filters:
        - type: CORS
          cors:
            allowOrigins: [https://app.example.com, 'https://*.example.org']
            allowMethods: [GET, PUT]
            allowHeaders: [x-user, content-type]
            exposeHeaders: [x-instance]
            maxAge: 600
        - type: RateLimit
          rateLimit: {requests: 1000, period: 1s, key: {header: x-user}}
      backendRefs: [{name: echo}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rest}
spec:
  parentRefs: [{kind: Gateway, name: gateway}]
  hostnames: [rest.example.com, '*.rest.example.org']
  rules:
    - matches:
        - path: {type: PathPrefix, value: /api/echo}
          method: POST
          headers:
            - {name: x-canary, value: '1'}
            - {type: RegularExpression, name: x-tenant, value: 't[0-9]+'}
          queryParams: [{type: RegularExpression, name: v, value: '2|3'}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-route, value: canary}]
            add: [{name: x-hops, value: gateway}]
            remove: [x-debug]
        - type: URLRewrite
          urlRewrite:
            hostname: echo.internal
            path: {type: ReplacePrefixMatch, replacePrefixMatch: /weft.test.v1.Echo}
        - type: ResponseHeaderModifier
          responseHeaderModifier:
            set: [{name: x-served-by, value: gateway}]
            remove: [x-instance]
      backendRefs: [{name: echo}]
    - matches: [{path: {type: RegularExpression, value: '/legacy/[a-z]+/echo'}}]
      filters:
        - type: URLRewrite
          urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /weft.test.v1.Echo/Unary}}
      backendRefs: [{name: echo}]
    - matches: [{path: {type: Exact, value: /weft.test.v1.Echo/Unary}, method: POST}]
      backendRefs: [{name: echo}]
";

async fn start_mesh() -> anyhow::Result<Mesh> {
    let dir = tempfile::tempdir()?;
    let quiet = ["--log", "warn"];
    let cp = ControlPlaneProc::start(free_port()?, free_port()?, dir.path(), &quiet).await?;
    let access = cp.access()?;
    let resources = weft_control_plane::resource::parse_documents(ECHO_SERVICE)?;
    access
        .admin_client()
        .await?
        .apply(pb::ApplyRequest {
            resources: resources.iter().map(pb::Resource::from).collect(),
            dry_run: false,
        })
        .await?;
    let app = start_echo("echo-1").await?;
    let flags = |v: &[String]| {
        let mut v = v.to_vec();
        v.extend(quiet.iter().map(|s| s.to_string()));
        v
    };
    let echo = SidecarProc::start(
        "echo",
        Some(&access),
        &flags(&["--app".into(), app.addr.to_string()]),
    )
    .await?;
    let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let caller = SidecarProc::start(
        "caller",
        Some(&access),
        &flags(&["--upstream".into(), format!("echo={upstream}")]),
    )
    .await?;
    // The gateway keeps and appends to the forwarding headers a client
    // sends and writes all of them: the most parsing they get.
    let descriptors = dir.path().join("echo.binpb");
    std::fs::write(&descriptors, crate::ECHO_DESCRIPTORS)?;
    let gateway_http: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let gateway_https: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    // Its certificate for clients: self-signed, for both hosts.
    let (cert_pem, key_pem) =
        crate::ca::self_signed(&[seeds::GATEWAY_GRPC_HOST, seeds::GATEWAY_BROWSER_HOST])?;
    let (crt, key_file) = (
        dir.path().join("gateway.crt"),
        dir.path().join("gateway.key"),
    );
    std::fs::write(&key_file, key_pem)?;
    std::fs::write(&crt, cert_pem)?;
    let gateway = SidecarProc::start(
        "gateway",
        Some(&access),
        &flags(&[
            "--gateway-http".into(),
            gateway_http.to_string(),
            "--gateway-https".into(),
            gateway_https.to_string(),
            "--tls-cert".into(),
            format!("{},{}", crt.display(), key_file.display()),
            "--transcode".into(),
            descriptors.display().to_string(),
            "--trust-forwarded".into(),
            "--forwarded-full".into(),
        ]),
    )
    .await?;

    // A mesh certificate for service `fuzz`, as a sidecar gets one.
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://weft.local/service/fuzz".try_into()?,
    )];
    let csr = params.serialize_request(&key)?.der().to_vec();
    let token = access.token("fuzz", Duration::from_secs(24 * 3600)).await?;
    let anonymous = weft_control_plane::cli::connect_tls(
        &access.url,
        &access.credential,
        Duration::from_secs(10),
    )
    .await?;
    let issued = pb::identity_client::IdentityClient::new(anonymous)
        .issue(pb::IssueRequest { csr, token })
        .await?
        .into_inner();
    let roots = root_store(&certs_from_pem(&access.credential.ca)?)?;
    let chain: Vec<rustls::pki_types::CertificateDer<'static>> = issued
        .chain
        .iter()
        .map(|c| rustls::pki_types::CertificateDer::from(c.clone()))
        .collect();
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| anyhow::anyhow!("the key: {e}"))?;
    let inbound_tls = send::mesh_tls(
        roots.clone(),
        SpiffeId::service("weft.local", "echo"),
        chain.clone(),
        key_der.clone_key(),
    )?;
    let chain_pem: String = issued.chain.iter().map(|c| pem("CERTIFICATE", c)).collect();
    let verifier = weft_proto::identity::SpiffeServerVerifier::new(
        roots,
        SpiffeId::control_plane("weft.local"),
    );
    let tls = tonic::transport::ClientTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(chain_pem, pem("PRIVATE KEY", &key.serialize_der())),
    );
    let discovery = tonic::transport::Endpoint::from_shared(access.url.clone())?
        .tls_config_with_verifier(tls, Arc::new(verifier))?
        .connect()
        .await?;
    let mesh = Mesh {
        cp,
        echo,
        caller,
        gateway,
        _app: app,
        upstream,
        gateway_http,
        gateway_https,
        inbound_tls,
        discovery,
        _dir: dir,
    };
    // The caller knows the echo instance before the first input.
    crate::util::wait_for(
        "a call through the pair",
        Duration::from_secs(20),
        || async move { normal_call(upstream).await.ok() },
    )
    .await?;
    crate::util::wait_for(
        "a REST call through the gateway",
        Duration::from_secs(20),
        || async move { gateway_call(gateway_http).await.ok() },
    )
    .await?;
    // The gateway's seeds, unmutated, reach what they are meant for (a
    // transcoded call, gRPC-Web, an allowed preflight, a rewritten path):
    // not a 404 that would leave the code behind them untried.
    for seed in seeds::gateway_requests() {
        let (outcome, status) = send::http1(gateway_http, &seed, Duration::from_secs(10)).await;
        anyhow::ensure!(
            status.is_some_and(|s| (200..300).contains(&s)),
            "the gateway answered the seed {:?}: {outcome:?}, status {status:?}",
            String::from_utf8_lossy(&seed),
        );
    }
    // The matched and rewritten ones reach the echo method itself: a 2xx
    // alone would also be gRPC-Web's answer of UNIMPLEMENTED or NOT_FOUND.
    for (seed, holds) in seeds::gateway_route_requests() {
        let (outcome, got) = send::http1_answer(gateway_http, &seed, Duration::from_secs(10)).await;
        let answer = String::from_utf8_lossy(&got);
        anyhow::ensure!(
            answer.starts_with("HTTP/1.1 200")
                && answer.contains("grpc-status: 0\r\n")
                && holds.iter().all(|h| answer.contains(h)),
            "the gateway answered the seed {:?}: {outcome:?}, {answer:?}",
            String::from_utf8_lossy(&seed),
        );
    }
    Ok(mesh)
}

/// A normal REST call through the gateway, transcoded to the echo
/// service's unary method.
async fn gateway_call(gateway: SocketAddr) -> anyhow::Result<()> {
    let req = format!(
        "GET /v1/echo/still%20here HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        seeds::GATEWAY_GRPC_HOST
    );
    let (outcome, answer) =
        send::http1_answer(gateway, req.as_bytes(), Duration::from_secs(10)).await;
    let answer = String::from_utf8_lossy(&answer);
    anyhow::ensure!(
        matches!(outcome, Outcome::Answered)
            && answer.starts_with("HTTP/1.1 200")
            && answer.contains("\"still here\""),
        "the gateway answered {outcome:?}, {:?}",
        answer.chars().take(300).collect::<String>()
    );
    Ok(())
}

/// A normal unary call through the pair.
async fn normal_call(upstream: SocketAddr) -> anyhow::Result<()> {
    let run = async {
        let r = client(upstream)
            .await?
            .unary(EchoRequest {
                message: "still here".into(),
                ..Default::default()
            })
            .await?;
        anyhow::ensure!(r.into_inner().message == "still here", "a wrong echo");
        anyhow::Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("no answer in 10 s"),
    }
}

fn targets(mesh: &Mesh) -> anyhow::Result<Vec<Target>> {
    use seeds::{admin_requests, client_hello, h1_requests, h2_call};
    let hello = client_hello()?;
    let mut admin = admin_requests();
    admin.push(h2_call("admin"));
    let mut app_side = h1_requests("echo");
    app_side.push(h2_call("echo"));
    app_side.push(seeds::junk(7, 64));
    let mut gateway = seeds::gateway_requests();
    gateway.push(h2_call(seeds::GATEWAY_GRPC_HOST));
    let t = |name, addr, kind, weight| Target {
        name,
        addr,
        kind,
        weight,
        counts: Counts::default(),
    };
    Ok(vec![
        t(
            "control plane gRPC (TLS), raw",
            mesh.cp.grpc,
            Kind::Raw(vec![hello.clone(), h2_call("cp")]),
            2,
        ),
        t(
            "control plane discovery streams (mTLS)",
            mesh.cp.grpc,
            Kind::Discovery,
            4,
        ),
        t(
            "control plane admin, raw",
            mesh.cp.admin,
            Kind::Raw(admin.clone()),
            1,
        ),
        t(
            "control plane admin, HTTP/1",
            mesh.cp.admin,
            Kind::Http1(admin_requests()),
            1,
        ),
        t(
            "echo sidecar inbound, raw",
            mesh.echo.inbound,
            Kind::Raw(vec![hello, h2_call("echo")]),
            2,
        ),
        t(
            "echo sidecar inbound, h2 in mTLS",
            mesh.echo.inbound,
            Kind::RawInMtls(vec![h2_call("echo")]),
            1,
        ),
        t(
            "echo sidecar inbound, calls in mTLS",
            mesh.echo.inbound,
            Kind::Requests {
                authority: "echo",
                mtls: true,
            },
            6,
        ),
        t(
            "echo sidecar admin, raw",
            mesh.echo.admin,
            Kind::Raw(admin.clone()),
            1,
        ),
        t(
            "echo sidecar admin, HTTP/1",
            mesh.echo.admin,
            Kind::Http1(admin_requests()),
            1,
        ),
        t(
            "caller upstream port, raw",
            mesh.upstream,
            Kind::Raw(app_side.clone()),
            3,
        ),
        t(
            "caller upstream port, HTTP/1",
            mesh.upstream,
            Kind::Http1(h1_requests("echo")),
            2,
        ),
        t(
            "caller upstream port, calls",
            mesh.upstream,
            Kind::Requests {
                authority: "echo",
                mtls: false,
            },
            10,
        ),
        t(
            "caller outbound port, raw",
            mesh.caller.outbound,
            Kind::Raw(app_side),
            3,
        ),
        t(
            "caller outbound port, calls",
            mesh.caller.outbound,
            Kind::Requests {
                authority: "echo",
                mtls: false,
            },
            4,
        ),
        t(
            "caller sidecar admin, raw",
            mesh.caller.admin,
            Kind::Raw(admin.clone()),
            1,
        ),
        t(
            "caller sidecar admin, HTTP/1",
            mesh.caller.admin,
            Kind::Http1(admin_requests()),
            1,
        ),
        t(
            "gateway, HTTP/1",
            mesh.gateway_http,
            Kind::Http1(gateway),
            4,
        ),
        t(
            "gateway, HTTP/1 matched and rewritten",
            mesh.gateway_http,
            Kind::Http1(
                seeds::gateway_route_requests()
                    .into_iter()
                    .map(|(r, _)| r)
                    .collect(),
            ),
            2,
        ),
        t(
            "gateway TLS, raw",
            mesh.gateway_https,
            Kind::Raw(vec![
                seeds::client_hello_to(seeds::GATEWAY_GRPC_HOST, &[b"h2", b"http/1.1"])?,
                seeds::client_hello_to(seeds::GATEWAY_BROWSER_HOST, &[b"http/1.1"])?,
                seeds::client_hello_to("unknown.example.net", &[b"h2"])?,
            ]),
            2,
        ),
        t(
            "gateway, gRPC calls",
            mesh.gateway_http,
            Kind::Requests {
                authority: seeds::GATEWAY_GRPC_HOST,
                mtls: false,
            },
            2,
        ),
    ])
}

/// Which target input `i` goes to: by weight, interleaved.
fn pick(targets: &[Target], total_weight: u64, i: u64) -> usize {
    let mut slot = i % total_weight;
    for (n, t) in targets.iter().enumerate() {
        if slot < t.weight {
            return n;
        }
        slot -= t.weight;
    }
    0
}

/// What a worker keeps between inputs: an HTTP/2 connection per request
/// target.
type Conns = Vec<Option<SendRequest<Full<bytes::Bytes>>>>;

/// What workers share to reach the listeners.
struct Net {
    inbound_tls: TlsConnector,
    discovery: tonic::transport::Channel,
}

/// One input of bytes: plain junk one time in sixteen, else one of
/// `seeds` mutated.
fn raw_input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(16) {
        0 => {
            let len = rng.below(512);
            rng.junk(len)
        }
        _ => {
            let seed = &seeds[rng.below(seeds.len())];
            rng.mutate(seed, 8)
        }
    }
}

async fn one_input(
    mesh: &Net,
    targets: &[Target],
    conns: &mut Conns,
    n: usize,
    rng: &mut Rng,
    timeout: Duration,
) {
    let t = &targets[n];
    match &t.kind {
        Kind::Raw(seeds) | Kind::RawInMtls(seeds) => {
            let bytes = raw_input(rng, seeds);
            let tls = matches!(t.kind, Kind::RawInMtls(_)).then_some(&mesh.inbound_tls);
            t.counts
                .add(1, send::raw(t.addr, tls, &bytes, timeout).await);
        }
        Kind::Http1(seeds) => {
            let bytes = raw_input(rng, seeds);
            let (o, status) = send::http1(t.addr, &bytes, timeout).await;
            if status.is_some_and(|s| (200..300).contains(&s)) {
                t.counts.ok_2xx.fetch_add(1, Ordering::Relaxed);
            }
            t.counts.add(1, o);
        }
        Kind::Requests { authority, mtls } => {
            let req = send::request(rng, authority);
            if conns[n].as_ref().is_none_or(|c| c.is_closed()) {
                let tls = mtls.then_some(&mesh.inbound_tls);
                conns[n] = match tokio::time::timeout(timeout, send::h2_connect(t.addr, tls)).await
                {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(_)) => {
                        t.counts.add(1, Outcome::Reset);
                        return;
                    }
                    Err(_) => {
                        t.counts.add(1, Outcome::TimedOut);
                        return;
                    }
                };
            }
            if let Some(c) = conns[n].as_mut() {
                let o = send::call(c, req, timeout).await;
                if o == Outcome::TimedOut {
                    conns[n] = None;
                }
                t.counts.add(1, o);
            }
        }
        Kind::Discovery => {
            let valid = seeds::sidecar_messages("fuzz", &format!("fuzz-{}", rng.below(16)));
            let hello = if rng.below(4) == 0 {
                rng.mutate(&valid[0], 6)
            } else {
                valid[0].clone()
            };
            let mut messages = vec![hello];
            for _ in 0..3 {
                let m = &valid[1 + rng.below(valid.len() - 1)];
                messages.push(if rng.below(4) == 0 {
                    m.clone()
                } else {
                    rng.mutate(m, 6)
                });
            }
            t.counts
                .add(1, send::discovery(&mesh.discovery, messages, timeout).await);
        }
    }
}

/// The services this mesh holds: the only ones the caller's metrics may
/// name, besides `(unresolved)` for every name it does not know.
const MESH_SERVICES: [&str; 4] = ["echo", "caller", "fuzz", "(unresolved)"];

/// Checks that the caller's outbound metrics name only the mesh's services.
/// Mutated `:authority`s are valid service names now and then (`0cho`,
/// `4echo`); counted under their own names, each grew every request
/// family by a series (docs/robustness.md, "The caller's memory, found and
/// bounded"), which the RSS bound sees only over millions of inputs.
async fn metrics_name_known_services(admin: SocketAddr) -> anyhow::Result<()> {
    let text = crate::util::http_get(&format!("http://{admin}/metrics"))
        .await?
        .body;
    let named = outbound_services(&text);
    anyhow::ensure!(
        named.contains_key("echo"),
        "the caller's metrics have no outbound series for echo, which the \
         normal calls went to: the check does not read them"
    );
    let odd: Vec<(&String, &str)> = named
        .iter()
        .filter(|(n, _)| !MESH_SERVICES.contains(&n.as_str()))
        .map(|(n, line)| (n, *line))
        .collect();
    anyhow::ensure!(
        odd.is_empty(),
        "the caller's metrics name {} services the mesh does not hold, e.g. {:#?}",
        odd.len(),
        &odd[..odd.len().min(3)]
    );
    Ok(())
}

/// The `service` label of every outbound series in Prometheus' text
/// format, each with the first line that names it.
fn outbound_services(text: &str) -> std::collections::BTreeMap<String, &str> {
    let mut named = std::collections::BTreeMap::new();
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains("direction=\"outbound\""))
        .filter_map(|l| {
            let rest = &l[l.find("service=\"")? + "service=\"".len()..];
            // Escaped quotes (`\"`) do not end the value.
            let mut end = None;
            let mut escaped = false;
            for (i, c) in rest.char_indices() {
                match c {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => {
                        end = Some(i);
                        break;
                    }
                    _ => escaped = false,
                }
            }
            Some((rest[..end?].to_string(), l))
        })
        .for_each(|(service, line)| {
            named.entry(service).or_insert(line);
        });
    named
}

/// Resident memory of a process, KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The bound on a process's RSS over a run: twice what it used after
/// start-up and a first call, plus 32 MiB for pools and buffers that grow
/// with concurrency. A leak of even a few bytes per input crosses it over
/// millions of inputs.
pub fn rss_bound_kib(start_kib: u64) -> u64 {
    2 * start_kib + 32 * 1024
}

fn watch(p: &mut Proc, r: &mut ProcReport) {
    let rss = rss_kib(p.pid());
    r.rss_end_kib = rss;
    r.rss_peak_kib = r.rss_peak_kib.max(rss);
    for line in p.take_log() {
        if line.contains("panicked") && r.panics.len() < 10 {
            r.panics.push(line.chars().take(500).collect());
        }
    }
    if r.exited.is_none()
        && let Ok(Some(status)) = p.child.try_wait()
    {
        r.exited = Some(status.to_string());
    }
}

/// Runs the whole thing: starts the mesh, sends the inputs in batches,
/// checks after each, and reports.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let mut mesh = start_mesh().await?;
    let targets = Arc::new(targets(&mesh)?);
    let net = Arc::new(Net {
        inbound_tls: mesh.inbound_tls.clone(),
        discovery: mesh.discovery.clone(),
    });
    let total_weight: u64 = targets.iter().map(|t| t.weight).sum();
    let upstream = mesh.upstream;
    let gateway_http = mesh.gateway_http;
    let caller_admin = mesh.caller.admin;
    let mut procs: Vec<(&mut Proc, ProcReport)> = [
        ("control plane", &mut mesh.cp.proc),
        ("echo sidecar", &mut mesh.echo.proc),
        ("caller sidecar", &mut mesh.caller.proc),
        ("gateway sidecar", &mut mesh.gateway.proc),
    ]
    .into_iter()
    .map(|(name, p)| {
        let rss = rss_kib(p.pid());
        let _ = p.take_log();
        let r = ProcReport {
            name,
            rss_start_kib: rss,
            rss_end_kib: rss,
            rss_peak_kib: rss,
            bound_kib: rss_bound_kib(rss),
            panics: Vec::new(),
            exited: None,
        };
        (p, r)
    })
    .collect();
    let started = Instant::now();
    let deadline = opts.limit.map(|l| started + l);
    let next = Arc::new(AtomicU64::new(0));
    let (mut checks, mut failed_checks) = (0, Vec::new());
    let mut done = 0;
    while done < opts.inputs && deadline.is_none_or(|d| Instant::now() < d) {
        let end = (done + opts.batch.max(1)).min(opts.inputs);
        let workers: Vec<_> = (0..opts.concurrency.max(1))
            .map(|_| {
                let (targets, net, next) = (targets.clone(), net.clone(), next.clone());
                let (seed, timeout) = (opts.seed, opts.timeout);
                tokio::spawn(async move {
                    let mut conns: Conns = targets.iter().map(|_| None).collect();
                    loop {
                        if deadline.is_some_and(|d| Instant::now() >= d) {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= end {
                            next.fetch_sub(1, Ordering::Relaxed);
                            break;
                        }
                        let mut rng = Rng::new(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                        let n = pick(&targets, total_weight, i);
                        one_input(&net, &targets, &mut conns, n, &mut rng, timeout).await;
                    }
                })
            })
            .collect();
        for w in workers {
            w.await?;
        }
        done = next.load(Ordering::Relaxed);
        for (p, r) in procs.iter_mut() {
            watch(p, r);
        }
        checks += 1;
        if let Err(e) = normal_call(upstream).await {
            failed_checks.push(format!("the normal call after {done} inputs failed: {e:#}"));
        }
        if let Err(e) = gateway_call(gateway_http).await {
            failed_checks.push(format!(
                "the REST call through the gateway after {done} inputs failed: {e:#}"
            ));
        }
        if let Err(e) = metrics_name_known_services(caller_admin).await {
            failed_checks.push(format!("after {done} inputs: {e:#}"));
        }
        if procs.iter().any(|(_, r)| r.exited.is_some()) {
            break;
        }
    }
    let elapsed = started.elapsed();
    Ok(Report {
        seed: opts.seed,
        elapsed,
        targets: targets
            .iter()
            .map(|t| TargetReport {
                name: t.name,
                inputs: t.counts.inputs.load(Ordering::Relaxed),
                answered: t.counts.answered.load(Ordering::Relaxed),
                resets: t.counts.resets.load(Ordering::Relaxed),
                timeouts: t.counts.timeouts.load(Ordering::Relaxed),
                ok_2xx: matches!(t.kind, Kind::Http1(_))
                    .then(|| t.counts.ok_2xx.load(Ordering::Relaxed)),
            })
            .collect(),
        processes: procs.into_iter().map(|(_, r)| r).collect(),
        checks,
        failed_checks,
    })
}

#[cfg(test)]
mod tests {
    use super::outbound_services;

    #[test]
    fn outbound_services_are_read_from_the_service_label() {
        let text = "# HELP weft_requests_total Requests.\n\
            weft_requests_total{direction=\"outbound\",service=\"echo\",route=\"/a\"} 3\n\
            weft_requests_total{direction=\"inbound\",service=\"caller\"} 1\n\
            weft_request_duration_seconds_bucket{direction=\"outbound\",service=\"(unresolved)\",le=\"0.1\"} 2\n\
            weft_requests_total{direction=\"outbound\",service=\"a\\\"b\"} 1\n";
        let got: Vec<String> = outbound_services(text).into_keys().collect();
        assert_eq!(got, ["(unresolved)", "a\\\"b", "echo"]);
    }
}
