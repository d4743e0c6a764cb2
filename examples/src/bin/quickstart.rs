//! The quick start: runs the restaurant in a Weft mesh from the binaries
//! next to this one (the control plane, two user-service instances — v1,
//! and a v2 canary taking 10% by route — and one order-service, each with
//! its sidecar, and the gateway in front; and, when RabbitMQ is installed,
//! a broker of its own and email-service, each with its sidecar), sends
//! traffic through the gateway, places orders whose confirmations
//! email-service sends, prints what happened, and keeps the mesh up until
//! Ctrl-C (or stops at once with `--once`).

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use weft_examples::broker::{Broker, BrokerConfig, INSTALL_HINT, amqp_url, find_server};
use weft_examples::otel::Otel;

#[derive(Debug, Parser)]
#[command(
    name = "quickstart",
    about = "Run the restaurant example in a Weft mesh"
)]
struct Args {
    /// How many requests to send through the mesh.
    #[arg(long, default_value_t = 300)]
    requests: u32,
    /// At how many requests per second.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// How many orders to place (POST /api/orders) when RabbitMQ is
    /// installed: each is an `order.created` event email-service consumes.
    #[arg(long, default_value_t = 5)]
    orders: u32,
    /// Stop after printing the results instead of waiting for Ctrl-C.
    #[arg(long)]
    once: bool,
    /// Use free ports instead of the well-known ones (15012, 9002, …).
    #[arg(long)]
    free_ports: bool,
    /// Where the processes write their logs (default: a new temporary directory).
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Send traces of every app and sidecar to this OTLP/gRPC collector,
    /// e.g. Jaeger's http://127.0.0.1:4317.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Where to look at the traces (default: Jaeger's UI on the
    /// collector's host, port 16686).
    #[arg(long)]
    jaeger_ui: Option<String>,
}

/// Jaeger's UI beside its OTLP port: same host, port 16686.
fn jaeger_ui(endpoint: &str) -> String {
    let host = endpoint
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_string))
        .unwrap_or_else(|| "127.0.0.1".into());
    format!("http://{host}:16686")
}

/// Hands out the well-known port, or a free one.
struct Ports {
    free: bool,
    given: std::cell::RefCell<Vec<u16>>,
}

impl Ports {
    fn get(&self, well_known: u16) -> anyhow::Result<u16> {
        if !self.free {
            return Ok(well_known);
        }
        // Below the kernel's ephemeral range, so that nothing else running
        // (tests in parallel) is handed the port by bind(0) or an outgoing
        // connection before our process binds it.
        use std::hash::{BuildHasher, RandomState};
        let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
            .unwrap_or(32768);
        let floor = 10_000.min(low / 2);
        let span = u64::from(low - floor).max(1);
        let seed = RandomState::new().hash_one((std::process::id(), well_known));
        (0..500u64)
            .map(|i| floor + (seed.wrapping_add(i.wrapping_mul(7919)) % span) as u16)
            .find(|port| {
                !self.given.borrow().contains(port)
                    && std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok()
            })
            .inspect(|port| self.given.borrow_mut().push(*port))
            .context("no free port below the ephemeral range")
    }
}

struct Procs {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    /// Set in every process (the OTLP endpoint).
    env: Vec<(&'static str, String)>,
    children: Vec<(String, Child)>,
}

impl Procs {
    fn spawn(&mut self, name: &str, bin: &str, args: &[String]) -> anyhow::Result<()> {
        let path = self.bin_dir.join(bin);
        if !path.exists() {
            bail!(
                "{} is missing: run ./examples/quickstart.sh, which builds it",
                path.display()
            );
        }
        let log = std::fs::File::create(self.log_dir.join(format!("{name}.log")))?;
        let child = Command::new(&path)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: Ctrl-C reaches only us, and we stop the
            // mesh in order.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", path.display()))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// SIGTERM to each, then wait (bounded): the apps first, then the
    /// sidecars, then the control plane, each group in reverse start order.
    /// That is how Kubernetes stops a pod with native sidecars: a sidecar
    /// outlives its app. An app's long-lived connection through its
    /// sidecar (AMQP to the broker) then ends with the app, instead of
    /// holding the sidecar's drain open until its timeout.
    fn stop(&mut self) {
        let rank = |name: &str| match name {
            "control-plane" => 0,
            n if n.ends_with("-sidecar") => 1,
            _ => 2,
        };
        // Popped from the end: the last group to stop sorts first.
        self.children.sort_by_key(|(name, _)| rank(name));
        while let Some((name, mut child)) = self.children.pop() {
            terminate(child.id());
            let started = Instant::now();
            let deadline = started + Duration::from_secs(15);
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        println!(
                            "  stopped {name:<22} ({status}, {:.1} s)",
                            started.elapsed().as_secs_f64()
                        );
                        break;
                    }
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        println!("  killed  {name:<20} (did not stop in time)");
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[allow(unsafe_code)]
fn terminate(pid: u32) {
    // SAFETY: kill(2) with plain integers on our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
}

async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
) -> anyhow::Result<(http::StatusCode, String)> {
    get_with(client, url, http::HeaderMap::new()).await
}

async fn get_with(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
    headers: http::HeaderMap,
) -> anyhow::Result<(http::StatusCode, String)> {
    let mut req = http::Request::get(url).body(Empty::new())?;
    *req.headers_mut() = headers;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req)).await??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

async fn wait_ready(
    client: &Client<HttpConnector, Empty<Bytes>>,
    what: &str,
    url: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok((s, _)) = get(client, url).await
            && s.is_success()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{what} did not become ready ({url}); see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workdir = match &args.workdir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("weft-quickstart-{}", std::process::id())),
    };
    let log_dir = workdir.join("logs");
    std::fs::create_dir_all(&log_dir)?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("no directory for this binary")?;
    let p = Ports {
        free: args.free_ports,
        given: Default::default(),
    };
    let cp = p.get(15012)?;
    let cp_admin = p.get(15014)?;
    let cp_dashboard = p.get(15015)?;
    let cp_url = format!("https://127.0.0.1:{cp}");
    let credential = workdir.join("data").join("admin.credential");
    let up_users = p.get(9001)?;
    let gateway_port = p.get(8080)?;
    let otlp = args.otlp_endpoint.clone().filter(|e| !e.trim().is_empty());
    let mut procs = Procs {
        bin_dir: bin_dir.clone(),
        log_dir: log_dir.clone(),
        env: otlp
            .iter()
            .map(|e| ("OTEL_EXPORTER_OTLP_ENDPOINT", e.clone()))
            .collect(),
        children: Vec::new(),
    };
    let http: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // RabbitMQ, if installed: a node of our own (its Erlang VM takes a few
    // seconds to boot, so it starts while the rest of the mesh does).
    let rabbitmq = match find_server() {
        Some(server) => {
            let config = BrokerConfig {
                server,
                dir: workdir.join("rabbitmq"),
                node: if args.free_ports {
                    format!("weft-quickstart-{}@localhost", std::process::id())
                } else {
                    "weft-quickstart@localhost".into()
                },
                amqp_port: p.get(5672)?,
                dist_port: p.get(25672)?,
                // With free ports, an epmd of its own (ended with it), so
                // that quick starts running side by side do not meet.
                epmd_port: if args.free_ports {
                    Some(p.get(4369)?)
                } else {
                    None
                },
            };
            println!(
                "Starting RabbitMQ (node {}, data in {})",
                config.node,
                config.dir.display()
            );
            Some(tokio::spawn(Broker::start(config)))
        }
        None => {
            println!(
                "RabbitMQ is not installed: the restaurant runs without its queue and email-service.\n  \
                 To see orders' confirmation emails: {INSTALL_HINT}"
            );
            None
        }
    };
    let up_rabbit_orders = p.get(9005)?;
    let up_rabbit_emails = p.get(9006)?;

    println!(
        "Starting the Weft control plane and the restaurant (logs in {})",
        log_dir.display()
    );
    procs.spawn(
        "control-plane",
        "weft-control-plane",
        &s(&[
            "--listen",
            &format!("127.0.0.1:{cp}"),
            "--admin",
            &format!("127.0.0.1:{cp_admin}"),
            "--dashboard",
            &format!("127.0.0.1:{cp_dashboard}"),
            "--data-dir",
            &workdir.join("data").display().to_string(),
        ]),
    )?;
    wait_ready(
        &http,
        "the control plane",
        &format!("http://127.0.0.1:{cp_admin}/ready"),
        &log_dir,
    )
    .await?;

    // weftctl as a user runs it: the control plane's URL and the admin
    // credential it wrote at first start.
    let weftctl = |args: &[&str], stdin: Option<&str>| -> anyhow::Result<String> {
        let mut cmd = Command::new(bin_dir.join("weftctl"));
        cmd.args([
            "--control-plane",
            &cp_url,
            "--credential",
            &credential.display().to_string(),
        ])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("cannot run weftctl")?;
        if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            i.write_all(text.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "weftctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    // The services' policy, as a user would apply it.
    let applied = weftctl(&["apply", "-f", "-"], Some(include_str!("../../mesh.yaml")))?;
    println!("  $ weftctl apply -f examples/mesh.yaml");
    for line in applied.lines() {
        println!("  {line}");
    }
    // A join token per service: each sidecar's first certificate.
    let token_dir = workdir.join("tokens");
    std::fs::create_dir_all(&token_dir)?;
    let mut token_files = std::collections::HashMap::new();
    for service in [
        "user-service",
        "order-service",
        "gateway",
        "rabbitmq",
        "email-service",
    ] {
        let token = weftctl(&["token", "create", service, "--ttl", "1h"], None)?;
        let path = token_dir.join(format!("{service}.token"));
        std::fs::write(&path, token.trim())?;
        token_files.insert(service, path.display().to_string());
    }
    println!(
        "  $ weftctl token create SERVICE   (one join token per service; mTLS between all sidecars)"
    );

    let mut sidecar_admins = Vec::new();
    let sidecar = |procs: &mut Procs,
                   name: &str,
                   service: &str,
                   base: u16,
                   extra: &[String]|
     -> anyhow::Result<String> {
        let (inbound, outbound, admin) = (p.get(base + 6)?, p.get(base + 1)?, p.get(base)?);
        let mut a = s(&[
            "--service",
            service,
            "--token-file",
            token_files
                .get(service)
                .map(String::as_str)
                .unwrap_or_default(),
            "--control-plane",
            &cp_url,
            "--inbound",
            &format!("127.0.0.1:{inbound}"),
            "--outbound",
            &format!("127.0.0.1:{outbound}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ]);
        a.extend_from_slice(extra);
        procs.spawn(&format!("{name}-sidecar"), "weft-sidecar", &a)?;
        Ok(format!("127.0.0.1:{admin}"))
    };
    for (i, (instance, version)) in [("user-1", "v1"), ("user-2", "v2")].iter().enumerate() {
        let app = p.get(8081 + i as u16)?;
        procs.spawn(
            instance,
            "user-service",
            &s(&[
                "--listen",
                &format!("127.0.0.1:{app}"),
                "--instance",
                instance,
            ]),
        )?;
        let admin = sidecar(
            &mut procs,
            instance,
            "user-service",
            15100 + 100 * i as u16,
            &s(&[
                "--app",
                &format!("127.0.0.1:{app}"),
                "--protocol",
                "grpc",
                "--label",
                &format!("version={version}"),
                "--instance-id",
                instance,
            ]),
        )?;
        sidecar_admins.push((instance.to_string(), admin));
    }
    let order_app = p.get(8090)?;
    let mut order_args = s(&[
        "--listen",
        &format!("127.0.0.1:{order_app}"),
        "--user-service",
        &format!("http://127.0.0.1:{up_users}"),
    ]);
    let mut order_sidecar_args = s(&[
        "--app",
        &format!("127.0.0.1:{order_app}"),
        "--protocol",
        "http",
        "--upstream",
        &format!("user-service=127.0.0.1:{up_users}"),
        "--instance-id",
        "order-1",
    ]);
    if rabbitmq.is_some() {
        // order-service publishes through its sidecar's port for rabbitmq.
        order_args.extend(s(&[
            "--amqp",
            &amqp_url(([127, 0, 0, 1], up_rabbit_orders).into()),
        ]));
        order_sidecar_args.extend(s(&[
            "--upstream",
            &format!("rabbitmq=127.0.0.1:{up_rabbit_orders}"),
        ]));
    }
    procs.spawn("order-service", "order-service", &order_args)?;
    let admin = sidecar(
        &mut procs,
        "order-service",
        "order-service",
        15300,
        &order_sidecar_args,
    )?;
    sidecar_admins.push(("order-service".into(), admin));
    // The front door: a sidecar in gateway mode, routing by the routes
    // attached to the `gateway` Gateway; REST calls to user-service are
    // transcoded to gRPC by the rules in user.proto.
    let descriptors = workdir.join("restaurant.binpb");
    std::fs::write(&descriptors, weft_examples::DESCRIPTORS)?;
    let admin = sidecar(
        &mut procs,
        "gateway",
        "gateway",
        15400,
        &s(&[
            "--gateway-http",
            &format!("127.0.0.1:{gateway_port}"),
            "--transcode",
            &descriptors.display().to_string(),
            "--instance-id",
            "gateway-1",
        ]),
    )?;
    sidecar_admins.push(("gateway".into(), admin));
    // The broker behind its sidecar (opaque TCP, mutual TLS), and
    // email-service reaching it through its own sidecar.
    let mut email = None;
    let broker = match rabbitmq {
        Some(task) => {
            let broker = task.await??;
            let admin = sidecar(
                &mut procs,
                "rabbitmq",
                "rabbitmq",
                15500,
                &s(&[
                    "--app",
                    &broker.addr().to_string(),
                    "--protocol",
                    "tcp",
                    "--instance-id",
                    "rabbitmq-1",
                ]),
            )?;
            sidecar_admins.push(("rabbitmq".into(), admin));
            let email_app = p.get(8095)?;
            procs.spawn(
                "email-service",
                "email-service",
                &s(&[
                    "--listen",
                    &format!("127.0.0.1:{email_app}"),
                    "--amqp",
                    &amqp_url(([127, 0, 0, 1], up_rabbit_emails).into()),
                ]),
            )?;
            let admin = sidecar(
                &mut procs,
                "email-service",
                "email-service",
                15600,
                &s(&[
                    "--app",
                    &format!("127.0.0.1:{email_app}"),
                    "--protocol",
                    "http",
                    "--upstream",
                    &format!("rabbitmq=127.0.0.1:{up_rabbit_emails}"),
                    "--instance-id",
                    "email-1",
                ]),
            )?;
            sidecar_admins.push(("email-service".into(), admin));
            email = Some(format!("127.0.0.1:{email_app}"));
            Some(broker)
        }
        None => None,
    };
    for (name, admin) in &sidecar_admins {
        wait_ready(
            &http,
            &format!("the {name} sidecar"),
            &format!("http://{admin}/ready"),
            &log_dir,
        )
        .await?;
    }
    // Wait until every hop sees its upstream healthy: the gateway sees
    // order-service and user-service, order-service's sidecar both
    // user-service instances.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut upstreams = vec![
        (&sidecar_admins[2].1, "user-service", 2),
        (&sidecar_admins[3].1, "order-service", 1),
        (&sidecar_admins[3].1, "user-service", 2),
    ];
    if broker.is_some() {
        // Both clients of the broker see it.
        upstreams.push((&sidecar_admins[2].1, "rabbitmq", 1));
        upstreams.push((&sidecar_admins[5].1, "rabbitmq", 1));
    }
    for (admin, service, want) in upstreams {
        loop {
            let config = get(&http, &format!("http://{admin}/config")).await?.1;
            let v: serde_json::Value = serde_json::from_str(&config).unwrap_or_default();
            let healthy = v["services"][service]["endpoints"]
                .as_array()
                .map_or(0, |e| e.iter().filter(|x| x["health"] == "healthy").count());
            if healthy == want {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{service} did not become healthy; see {}",
                    log_dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!(
        "  the mesh is up: control plane, 2 × user-service (v1, v2), 1 × order-service, {}, the gateway on 127.0.0.1:{gateway_port}\n",
        if broker.is_some() {
            "RabbitMQ, 1 × email-service, 5 sidecars"
        } else {
            "3 sidecars"
        }
    );

    // Traffic: our client → the gateway → order-service's sidecar →
    // order-service → its sidecar → a user-service sidecar → user-service.
    println!(
        "Sending {} requests at {}/s: GET /api/orders?userId=N through the gateway",
        args.requests, args.rate
    );
    // Our client traces its requests too: each one is a trace through the
    // whole restaurant.
    let otel = Otel::init_with("quickstart-client", otlp.as_deref())?;
    let period = Duration::from_secs_f64(1.0 / f64::from(args.rate.max(1)));
    let mut tick = tokio::time::interval(period);
    let mut latencies = Vec::new();
    let mut served: BTreeMap<String, u32> = BTreeMap::new();
    let mut failures: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..args.requests {
        tick.tick().await;
        let url = format!(
            "http://127.0.0.1:{gateway_port}/api/orders?userId={}",
            i % 5 + 1
        );
        let cx = otel.start(
            &opentelemetry::Context::new(),
            SpanKind::Client,
            "GET /api/orders",
            vec![
                KeyValue::new("http.request.method", "GET"),
                KeyValue::new("url.full", url.clone()),
            ],
        );
        let mut headers = http::HeaderMap::new();
        otel.inject(&cx, &mut headers);
        let started = Instant::now();
        let result = get_with(&http, &url, headers).await;
        otel.end(
            &cx,
            match &result {
                Ok((s, _)) if s.is_success() => None,
                Ok((s, _)) => Some(format!("HTTP {s}")),
                Err(e) => Some(e.to_string()),
            },
        );
        match result {
            Ok((status, body)) if status.is_success() => {
                latencies.push(started.elapsed());
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                *served
                    .entry(v["servedBy"].as_str().unwrap_or("?").to_string())
                    .or_default() += 1;
            }
            Ok((status, body)) => {
                *failures
                    .entry(format!("{status}: {}", body.trim()))
                    .or_default() += 1
            }
            Err(e) => *failures.entry(e.to_string()).or_default() += 1,
        }
    }
    latencies.sort();
    let ok = latencies.len() as u32;
    println!("  succeeded {ok}, failed {}", args.requests - ok);
    for (reason, n) in &failures {
        println!("    {n} × {reason}");
    }
    println!(
        "  latency (the gateway, 2 services, 3 sidecars): p50 {}   p90 {}   p99 {}   max {}",
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.90)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    println!("  user-service calls per instance (GRPCRoute user-service-canary: v1 90%, v2 10%):");
    for (instance, n) in &served {
        println!(
            "    {instance:<8} {n:>6}  ({:.1}%)",
            100.0 * f64::from(*n) / f64::from(ok.max(1))
        );
    }
    // A REST call the gateway transcodes into UserService.GetUser.
    let url = format!("http://127.0.0.1:{gateway_port}/api/users/1");
    match get(&http, &url).await {
        Ok((status, body)) => println!(
            "\n$ curl {url}      (REST → gRPC at the gateway)\n{} {}",
            status.as_u16(),
            body.trim()
        ),
        Err(e) => println!("\n$ curl {url}\nfailed: {e}"),
    }
    // Orders: each one an order.created event through RabbitMQ, and an
    // email from email-service.
    let mut orders_failed = 0;
    if let Some(email) = &email {
        orders_failed = place_orders(&otel, gateway_port, email, args.orders).await?;
    }
    otel.shutdown().await;
    if let Ok(out) = weftctl(&["status"], None) {
        println!("\n$ weftctl status\n{out}");
    }
    // What the sidecars reported (every second) over the last 10 s.
    if let Ok(out) = weftctl(&["top", "--once"], None) {
        println!("$ weftctl top --once\n{out}");
    }
    if let Some(endpoint) = &otlp {
        let ui = args
            .jaeger_ui
            .clone()
            .unwrap_or_else(|| jaeger_ui(endpoint));
        println!("Traces went to {endpoint}; see them in Jaeger:");
        println!("  {ui}/search?service=quickstart-client");
    }

    if args.once {
        println!("Stopping the mesh");
    } else {
        println!("Try it:");
        println!("  curl http://127.0.0.1:{gateway_port}/api/users/1");
        println!("  curl 'http://127.0.0.1:{gateway_port}/api/orders?userId=1'");
        if let Some(email) = &email {
            println!(
                "  curl -X POST -H 'content-type: application/json' -d '{{\"userId\": 1}}' http://127.0.0.1:{gateway_port}/api/orders"
            );
            println!("  curl http://{email}/emails");
        }
        println!(
            "  {}/weftctl --control-plane {cp_url} --credential {} get instances",
            bin_dir.display(),
            credential.display()
        );
        println!(
            "  {}/weftctl --control-plane {cp_url} --credential {} top",
            bin_dir.display(),
            credential.display()
        );
        println!("  curl http://{}/metrics", sidecar_admins[2].1);
        println!("The mesh's dashboard (service graph, services, sidecars):");
        println!("  http://127.0.0.1:{cp_dashboard}/");
        println!("Ctrl-C stops the mesh.");
        tokio::signal::ctrl_c().await?;
        println!("\nStopping the mesh");
    }
    procs.stop();
    if let Some(mut broker) = broker {
        let started = Instant::now();
        match broker.stop().await {
            Ok(status) => println!(
                "  stopped {:<22} ({status}, {:.1} s)",
                "rabbitmq",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => println!("  killed  {:<20} ({e})", "rabbitmq"),
        }
    }
    if orders_failed > 0 {
        bail!("{orders_failed} of {} orders failed", args.orders);
    }
    if ok != args.requests {
        bail!(
            "{} of {} requests failed",
            args.requests - ok,
            args.requests
        );
    }
    Ok(())
}

/// Places `n` orders through the gateway (each under a client span of its
/// own), waits until email-service has sent their confirmations, prints
/// them, and returns how many orders failed.
async fn place_orders(otel: &Otel, gateway_port: u16, email: &str, n: u32) -> anyhow::Result<u32> {
    let url = format!("http://127.0.0.1:{gateway_port}/api/orders");
    println!(
        "\nPlacing {n} orders: POST /api/orders through the gateway → order-service → RabbitMQ (order.created) → email-service"
    );
    let client: Client<HttpConnector, http_body_util::Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let before = emails_sent(email).await.unwrap_or(0);
    let mut placed = 0u32;
    let mut failures: BTreeMap<String, u32> = BTreeMap::new();
    for i in 0..n {
        let cx = otel.start(
            &opentelemetry::Context::new(),
            SpanKind::Client,
            "POST /api/orders",
            vec![
                KeyValue::new("http.request.method", "POST"),
                KeyValue::new("url.full", url.clone()),
            ],
        );
        let mut req = http::Request::post(&url).body(http_body_util::Full::new(Bytes::from(
            serde_json::json!({"userId": i % 5 + 1}).to_string(),
        )))?;
        req.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        otel.inject(&cx, req.headers_mut());
        let result = async {
            let resp = tokio::time::timeout(Duration::from_secs(20), client.request(req)).await??;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
        }
        .await;
        otel.end(
            &cx,
            match &result {
                Ok((s, _)) if s.is_success() => None,
                Ok((s, _)) => Some(format!("HTTP {s}")),
                Err(e) => Some(e.to_string()),
            },
        );
        match result {
            Ok((status, _)) if status == http::StatusCode::CREATED => placed += 1,
            Ok((status, body)) => {
                *failures
                    .entry(format!("{status}: {}", body.trim()))
                    .or_default() += 1
            }
            Err(e) => *failures.entry(e.to_string()).or_default() += 1,
        }
    }
    println!("  placed {placed}, failed {}", n - placed);
    for (reason, k) in &failures {
        println!("    {k} × {reason}");
    }
    // The events are consumed asynchronously: wait (bounded) for the emails.
    let deadline = Instant::now() + Duration::from_secs(20);
    let want = before + u64::from(placed);
    let mut sent = before;
    while sent < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        sent = emails_sent(email).await.unwrap_or(sent);
    }
    println!("  emails sent by email-service: {}", sent - before);
    if let Ok((_, body)) = get(&plain_client(), &format!("http://{email}/emails")).await {
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let last = v["last"].as_array().map(Vec::as_slice).unwrap_or_default();
        for e in &last[last.len().saturating_sub(n as usize)..] {
            println!(
                "    to {:<22} {}",
                e["to"].as_str().unwrap_or("?"),
                e["subject"].as_str().unwrap_or("?")
            );
        }
    }
    let missing = u32::try_from(want.saturating_sub(sent)).unwrap_or(u32::MAX);
    Ok(n - placed + missing)
}

fn plain_client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// email-service's count of confirmations sent.
async fn emails_sent(email: &str) -> anyhow::Result<u64> {
    let (_, body) = get(&plain_client(), &format!("http://{email}/emails")).await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    v["sent"].as_u64().context("no count in /emails")
}
