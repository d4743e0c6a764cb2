//! Transparent interception with the real parts: pods as network
//! namespaces, `weft-sidecar init`'s iptables rules, real sidecars run as
//! uid 1337, the real control plane, unchanged apps (`weft-podapp`) and a
//! plain client (curl) dialling a service's virtual address, and a packet
//! capture (tcpdump) between the pods. Opaque TCP too: a server-first
//! protocol with and without the `opaquePorts` hint (timed: the hint means
//! no wait, no hint at most the detection bound) and a client-first one,
//! with the TCP metrics per service. Needs root (see `netns`).

use std::time::Duration;

use weft_tests::netns::{HUB_IP, Net, Pod, prerequisites};
use weft_tests::process::{Proc, bin};
use weft_tests::util::metric;

/// The virtual address of the `web` service (`spec.addresses`).
const WEB_VIP: &str = "10.96.0.10";
/// Its IPv6 virtual address.
const WEB_VIP6: &str = "fd00::10";
/// A string sent in the payload that must never cross the wire in clear.
const MARKER: &str = "weft-marker-7f3a9c";
/// The same, sent to a server outside the mesh: it must show in clear.
const CONTROL: &str = "weft-control-51d2e0";

#[tokio::test]
async fn init_twice_changes_nothing_and_remove_leaves_no_rule() -> anyhow::Result<()> {
    if !prerequisites()? {
        return Ok(());
    }
    let mut net = Net::new()?;
    let pod = net.pod("app", 2)?;
    let before = pod.rules()?;
    let flags = [
        "--exclude-inbound-ports",
        "22,9090",
        "--exclude-outbound-cidrs",
        "169.254.169.254/32,fd00::/8",
    ];
    let dry = pod.init(&[&flags[..], &["--dry-run"]].concat())?;
    assert!(
        dry.contains("iptables -t nat -A OUTPUT -p tcp -j WEFT_OUTPUT"),
        "{dry}"
    );
    assert_eq!(pod.rules()?, before, "--dry-run changed the rules");

    let printed = pod.init(&flags)?;
    assert!(
        printed.contains("iptables -t nat -A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN"),
        "each rule is printed as it is applied:\n{printed}"
    );
    let first = pod.rules()?;
    for chain in [
        "WEFT_OUTPUT",
        "WEFT_REDIRECT",
        "WEFT_INBOUND",
        "WEFT_IN_REDIRECT",
    ] {
        assert!(
            first.contains(&format!(":{chain} -")),
            "{chain} missing:\n{first}"
        );
    }
    assert!(
        first.contains("-A WEFT_OUTPUT -d 169.254.169.254/32 -j RETURN"),
        "{first}"
    );
    assert!(
        first.contains("-A WEFT_OUTPUT -d fd00::/8 -j RETURN"),
        "{first}"
    );
    assert!(first.contains("--dport 9090 -j RETURN"), "{first}");

    pod.init(&flags)?;
    assert_eq!(pod.rules()?, first, "a second init changed the rules");

    let removed = pod.init(&["--remove"])?;
    assert!(removed.contains("-X WEFT_OUTPUT"), "{removed}");
    let after = pod.rules()?;
    assert!(
        !after.contains("WEFT"),
        "--remove left rules behind:\n{after}"
    );
    // What is left is what was there, plus the empty nat tables that
    // iptables creates on first use.
    let empty = [
        "*nat",
        ":PREROUTING ACCEPT",
        ":INPUT ACCEPT",
        ":OUTPUT ACCEPT",
    ];
    let empty = [&empty[..], &[":POSTROUTING ACCEPT", "COMMIT"]].concat();
    for line in after.lines() {
        assert!(
            empty.contains(&line) || before.lines().any(|b| b == line),
            "--remove left {line:?} behind:\n{after}"
        );
    }
    // Removing what is not there is not an error.
    pod.init(&["--remove"])?;
    Ok(())
}

#[tokio::test]
async fn a_rule_set_iptables_rejects_leaves_the_rules_before_it_in_place() -> anyhow::Result<()> {
    if !prerequisites()? {
        return Ok(());
    }
    let mut net = Net::new()?;
    let pod = net.pod("app", 2)?;
    pod.init(&["--exclude-outbound-ports", "5432"])?;
    let before = pod.rules()?;
    assert!(before.contains("--dport 5432 -j RETURN"), "{before}");
    // A uid our flags take and iptables' owner match refuses (2^32 - 1
    // means "no uid"), among changes that flush and refill every chain:
    // one command per rule would have left the chains half-filled.
    let err = pod
        .init(&[
            "--proxy-uid",
            "4294967295",
            "--exclude-outbound-ports",
            "6379",
        ])
        .expect_err("iptables accepted uid 4294967295");
    let err = err.to_string();
    assert!(
        err.contains("rejected the rule set") && err.contains("--uid-owner 4294967295"),
        "the error names the rejected rule: {err}"
    );
    assert_eq!(
        pod.rules()?,
        before,
        "a rejected rule set changed the rules"
    );
    // The same in a namespace without rules: none appear.
    let fresh = net.pod("fresh", 3)?;
    assert!(fresh.init(&["--proxy-uid", "4294967295"]).is_err());
    let after = fresh.rules()?;
    assert!(
        !after.contains("WEFT"),
        "a rejected rule set left:\n{after}"
    );
    Ok(())
}

/// The control plane in the hub namespace, and how to reach it as admin.
struct ControlPlane {
    hub: Pod,
    url: String,
    credential: String,
    _proc: Proc,
}

impl ControlPlane {
    async fn start(net: &Net) -> anyhow::Result<Self> {
        let hub = Pod {
            ns: net.hub.clone(),
            ip: HUB_IP.into(),
        };
        let data = net.dir.path().join("cp");
        let mut proc = hub.spawn(
            "weft-control-plane",
            &[
                "--listen".into(),
                format!("{HUB_IP}:15012"),
                "--admin".into(),
                "127.0.0.1:15014".into(),
                "--data-dir".into(),
                data.display().to_string(),
            ],
            false,
        )?;
        hub.wait_http("http://127.0.0.1:15014/ready", &mut proc)
            .await?;
        Ok(ControlPlane {
            hub,
            url: format!("https://{HUB_IP}:15012"),
            credential: data.join("admin.credential").display().to_string(),
            _proc: proc,
        })
    }

    fn weftctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let weftctl = bin("weftctl")?.display().to_string();
        let mut all = vec![
            "--control-plane",
            &self.url,
            "--credential",
            &self.credential,
        ];
        all.extend_from_slice(args);
        self.hub.run(&weftctl, &all)
    }

    /// A sidecar for `service` in `pod`, as uid 1337, intercepting.
    async fn sidecar(
        &self,
        net: &Net,
        pod: &Pod,
        service: &str,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        self.sidecar_speaking(net, pod, service, "http", extra)
            .await
    }

    /// The same, for an app of `protocol` (what its health check speaks).
    async fn sidecar_speaking(
        &self,
        net: &Net,
        pod: &Pod,
        service: &str,
        protocol: &str,
        extra: &[&str],
    ) -> anyhow::Result<Proc> {
        let token = self.weftctl(&["token", "create", service])?;
        let token = net.write(&format!("{service}.token"), token.trim())?;
        let mut args: Vec<String> = [
            "--service",
            service,
            "--protocol",
            protocol,
            "--control-plane",
            &self.url,
            "--token-file",
            &token.display().to_string(),
            "--inbound",
            "0.0.0.0:15006",
            "--advertise",
            &format!("{}:15006", pod.ip),
            "--intercept",
            "--health-interval",
            "100ms",
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut p = pod.spawn("weft-sidecar", &args, true)?;
        pod.wait_http("http://127.0.0.1:15000/ready", &mut p)
            .await?;
        Ok(p)
    }
}

/// The interception scenario: `web` (an app behind a sidecar, with an
/// IPv4 and an IPv6 virtual address, HTTP on port 8080 and a server-first
/// line protocol on 9000), two clients behind sidecars (`client` passes
/// unknown destinations through, `strict` refuses them and lets port 9090
/// bypass its sidecar), and a server outside the mesh. Every pod is dual
/// stack. Fields drop in order: the processes before the namespaces.
struct Scenario {
    client: Pod,
    strict: Pod,
    web: Pod,
    outside: Pod,
    /// `web`'s IPv6 address.
    web6: String,
    web_app: Proc,
    _procs: Vec<Proc>,
    cp: ControlPlane,
    net: Net,
}

impl Scenario {
    async fn start() -> anyhow::Result<Self> {
        let mut net = Net::new()?;
        let client = net.pod("client", 2)?;
        let web = net.pod("web", 3)?;
        let strict = net.pod("strict", 4)?;
        let outside = net.pod("out", 9)?;
        net.ipv6()?;
        let web6 = net.pod_ipv6(&web, 3)?;
        net.pod_ipv6(&outside, 9)?;
        net.pod_ipv6(&client, 2)?;
        net.pod_ipv6(&strict, 4)?;
        let cp = ControlPlane::start(&net).await?;
        let yaml = net.write("mesh.yaml", &web_service("PERMISSIVE"))?;
        cp.weftctl(&["apply", "-f", &yaml.display().to_string()])?;
        let mut procs = Vec::new();
        // The outside server: no sidecar, no rules.
        procs.push(outside.spawn(
            "weft-podapp",
            &[
                "outside".into(),
                "0.0.0.0:8080".into(),
                "0.0.0.0:9090".into(),
            ],
            false,
        )?);
        // web: its app on loopback, its rules, its sidecar.
        let web_app = web.spawn(
            "weft-podapp",
            &[
                "web".into(),
                "127.0.0.1:8080".into(),
                "tcp:127.0.0.1:9000".into(),
            ],
            false,
        )?;
        web.init(&[])?;
        procs.push(
            cp.sidecar(&net, &web, "web", &["--app", "127.0.0.1:8080"])
                .await?,
        );
        client.init(&[])?;
        procs.push(cp.sidecar(&net, &client, "client", &[]).await?);
        strict.init(&["--exclude-outbound-ports", "9090"])?;
        procs.push(
            cp.sidecar(&net, &strict, "strict", &["--unknown-destinations", "deny"])
                .await?,
        );
        Ok(Scenario {
            client,
            strict,
            web,
            outside,
            web6,
            web_app,
            _procs: procs,
            cp,
            net,
        })
    }

    fn metrics(pod: &Pod) -> anyhow::Result<String> {
        Ok(pod.curl(&["http://127.0.0.1:15000/metrics"])?.1)
    }
}

/// The `web` Service: its virtual addresses, its server-first port, and
/// `mode` as its inbound mode.
fn web_service(mode: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  \
         protocol: http\n  inboundMode: {mode}\n  addresses: [{WEB_VIP}, \"{WEB_VIP6}\"]\n  \
         opaquePorts: [9000]\n"
    )
}

/// `weft-podapp --send ADDR LINE` in `pod`: the line protocol's answer
/// (empty when the connection was closed without one).
fn send_line(pod: &Pod, addr: &str, line: &str) -> anyhow::Result<String> {
    let podapp = bin("weft-podapp")?.display().to_string();
    Ok(pod.try_run(&podapp, &["--send", addr, line])?.1)
}

fn intercepted(text: &str, direction: &str, outcome: &str) -> f64 {
    metric(
        text,
        "weft_intercepted_connections_total",
        &[("direction", direction), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn intercepted_traffic_crosses_pods_only_over_mutual_tls() -> anyhow::Result<()> {
    if !prerequisites()? {
        return Ok(());
    }
    let s = Scenario::start().await?;

    // A capture on every interface of the hub (the bridge and its ports):
    // everything between the pods.
    let pcap = s.net.dir.path().join("between-pods.pcap");
    let mut capture = Proc::spawn_program(
        "ip",
        &[
            "netns",
            "exec",
            &s.net.hub,
            "tcpdump",
            "-i",
            "any",
            "--immediate-mode",
            "-U",
            "-s",
            "0",
            "-w",
            &pcap.display().to_string(),
            "tcp",
        ]
        .map(String::from),
    )?;
    weft_tests::util::wait_for("tcpdump to listen", Duration::from_secs(10), || {
        let started = capture.log_text().contains("listening on any");
        async move { started.then_some(()) }
    })
    .await?;

    // The app dials the service's virtual address with a plain client.
    let url = format!("http://{WEB_VIP}:8080/orders?note={MARKER}");
    let (code, body) = s
        .client
        .curl(&["-H", &format!("x-marker: {MARKER}"), &url])?;
    assert_eq!(code, 0, "curl to the virtual address failed; body {body:?}");
    // The app saw its own sidecar (loopback), not the client.
    assert_eq!(body, "web saw 127.0.0.1");
    let app_log = s.web_app.log_text();
    assert!(
        app_log.contains(&format!("/orders?note={MARKER}")) && app_log.contains(MARKER),
        "the app did not get the marker:\n{app_log}"
    );
    // The same sidecar serves the app's other port, opaque TCP, over
    // mutual TLS too: the app greets first and echoes the marker.
    let answer = send_line(&s.client, &format!("{WEB_VIP}:9000"), MARKER)?;
    assert_eq!(
        answer,
        format!("web tcp ready\nweb tcp echo from 127.0.0.1: {MARKER}\n")
    );

    // The control: the same kind of request to a server outside the mesh
    // passes through in clear, and the capture must show its marker. It
    // also tells when the capture has caught up: packets reach the file as
    // tcpdump sees them (--immediate-mode, -U), in order.
    let control = format!("http://{}:8080/?control={CONTROL}", s.outside.ip);
    assert_eq!(s.client.curl(&[&control])?.0, 0);
    let path = pcap.clone();
    let seen = weft_tests::util::wait_for(
        "the control marker in the capture",
        Duration::from_secs(10),
        || {
            let found = std::fs::read(&path)
                .is_ok_and(|b| b.windows(CONTROL.len()).any(|w| w == CONTROL.as_bytes()));
            async move { found.then_some(()) }
        },
    )
    .await;
    capture.signal(libc::SIGINT);
    capture.wait(Duration::from_secs(10))?;
    let bytes = std::fs::read(&pcap)?;
    seen.map_err(|e| anyhow::anyhow!("{e}; tcpdump said:\n{}", capture.log_text()))?;
    // 24 bytes of pcap header; a TLS handshake is thousands more.
    assert!(
        bytes.len() > 2000,
        "the capture saw no traffic ({} bytes); tcpdump said:\n{}",
        bytes.len(),
        capture.log_text()
    );
    assert!(
        !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "the marker crossed the wire in clear text"
    );

    let client = Scenario::metrics(&s.client)?;
    assert_eq!(intercepted(&client, "outbound", "service"), 2.0, "{client}");
    let web = Scenario::metrics(&s.web)?;
    assert!(
        metric(
            &web,
            "weft_requests_total",
            &[("direction", "inbound"), ("service", "web")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "the web sidecar counted no inbound request:\n{web}"
    );

    // Inbound interception: a client outside the mesh dials the app's port;
    // the web pod's rules send it through its sidecar (PERMISSIVE) to the
    // app, which again sees its sidecar.
    let (code, body) = s
        .outside
        .curl(&[&format!("http://{}:8080/direct", s.web.ip)])?;
    assert_eq!((code, body.as_str()), (0, "web saw 127.0.0.1"));
    let web = Scenario::metrics(&s.web)?;
    assert_eq!(intercepted(&web, "inbound", "app"), 1.0, "{web}");
    Ok(())
}

#[tokio::test]
async fn unknown_destinations_pass_through_or_are_denied_and_excluded_ports_bypass()
-> anyhow::Result<()> {
    if !prerequisites()? {
        return Ok(());
    }
    let s = Scenario::start().await?;
    let outside = format!("http://{}:8080/", s.outside.ip);

    // Passthrough: the outside server is reached, from the client pod's
    // address (the sidecar dialled it as uid 1337, not redirected again).
    let (code, body) = s.client.curl(&[&outside])?;
    assert_eq!((code, body.as_str()), (0, "outside saw 10.77.0.2"));
    let m = Scenario::metrics(&s.client)?;
    assert_eq!(intercepted(&m, "outbound", "passthrough"), 1.0, "{m}");

    // Deny: refused, and counted.
    let (code, body) = s.strict.curl(&[&outside])?;
    assert_ne!(code, 0, "a denied destination answered: {body:?}");
    let m = Scenario::metrics(&s.strict)?;
    assert_eq!(intercepted(&m, "outbound", "denied"), 1.0, "{m}");

    // An excluded port never reaches the sidecar, even in deny mode.
    let (code, body) = s
        .strict
        .curl(&[&format!("http://{}:9090/", s.outside.ip)])?;
    assert_eq!((code, body.as_str()), (0, "outside saw 10.77.0.4"));
    let m = Scenario::metrics(&s.strict)?;
    assert_eq!(intercepted(&m, "outbound", "denied"), 1.0, "{m}");
    assert_eq!(intercepted(&m, "outbound", "passthrough"), 0.0, "{m}");
    Ok(())
}

/// The virtual address of `mail`, a service with a server-first port.
const MAIL_VIP: &str = "10.96.0.25";
/// The virtual address of `kv`, a client-first TCP service.
const KV_VIP: &str = "10.96.0.26";
/// How long an intercepted connection may wait for its first bytes
/// (`INTERCEPT_DETECT_TIMEOUT` in the sidecar).
const DETECT_BOUND_MS: u64 = 300;

/// Opaque TCP through interception: `mail` greets first (like SMTP) on
/// 2525, a port its `Service` lists in `opaquePorts`, and on 2526, which
/// it does not; `kv` waits for the client's line (like Redis). Their
/// instances are TCP apps (health-checked by a connect), but both
/// `Service`s declare HTTP (their main port, say), so only the hint or the
/// bytes themselves make these connections TCP. `out` is outside the mesh
/// and tells when the capture has caught up.
struct TcpScenario {
    client: Pod,
    mail: Pod,
    outside: Pod,
    mail_app: Proc,
    procs: Vec<Proc>,
    _cp: ControlPlane,
    net: Net,
}

impl TcpScenario {
    async fn start() -> anyhow::Result<Self> {
        let mut net = Net::new()?;
        let client = net.pod("client", 2)?;
        let mail = net.pod("mail", 5)?;
        let kv = net.pod("kv", 6)?;
        let outside = net.pod("out", 9)?;
        let cp = ControlPlane::start(&net).await?;
        let yaml = net.write(
            "tcp-mesh.yaml",
            &format!(
                "apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: mail\nspec:\n  \
                 protocol: http\n  addresses: [{MAIL_VIP}]\n  opaquePorts: [2525]\n---\n\
                 apiVersion: weft.dev/v1\nkind: Service\nmetadata:\n  name: kv\nspec:\n  \
                 protocol: http\n  addresses: [{KV_VIP}]\n"
            ),
        )?;
        cp.weftctl(&["apply", "-f", &yaml.display().to_string()])?;
        let mut procs = Vec::new();
        procs.push(outside.spawn(
            "weft-podapp",
            &["outside".into(), "0.0.0.0:8080".into()],
            false,
        )?);
        // The greeting server listens on both ports: today the inbound side
        // hands every opaque connection to `--app`; with the original port
        // kept, each goes to its own.
        let mail_app = mail.spawn(
            "weft-podapp",
            &[
                "--greet".into(),
                "mail".into(),
                "127.0.0.1:2525".into(),
                "127.0.0.1:2526".into(),
            ],
            false,
        )?;
        mail.init(&[])?;
        procs.push(
            cp.sidecar_speaking(&net, &mail, "mail", "tcp", &["--app", "127.0.0.1:2525"])
                .await?,
        );
        procs.push(kv.spawn(
            "weft-podapp",
            &["--echo".into(), "kv".into(), "127.0.0.1:6379".into()],
            false,
        )?);
        kv.init(&[])?;
        procs.push(
            cp.sidecar_speaking(&net, &kv, "kv", "tcp", &["--app", "127.0.0.1:6379"])
                .await?,
        );
        client.init(&[])?;
        procs.push(cp.sidecar(&net, &client, "client", &[]).await?);
        Ok(TcpScenario {
            client,
            mail,
            outside,
            mail_app,
            procs,
            _cp: cp,
            net,
        })
    }

    /// `weft-podapp --dial` in the client pod: its printed fields.
    fn dial(&self, addr: &str, line: &str, extra: &[&str]) -> anyhow::Result<Dialled> {
        let podapp = bin("weft-podapp")?.display().to_string();
        let mut args = vec!["--dial", addr, line];
        args.extend_from_slice(extra);
        let out = self.client.run(&podapp, &args);
        out.and_then(|o| Dialled::parse(&o))
            .map_err(|e| anyhow::anyhow!("{e}; the pods' logs:\n{}", self.logs()))
    }

    /// Every process's log, for a failure's message.
    fn logs(&self) -> String {
        self.procs
            .iter()
            .chain([&self.mail_app])
            .map(|p| p.log_text())
            .collect::<Vec<_>>()
            .join("\n----\n")
    }
}

/// What `weft-podapp --dial` printed.
#[derive(Debug)]
struct Dialled {
    first_byte_ms: u64,
    greeting: Option<String>,
    reply: String,
}

impl Dialled {
    fn parse(out: &str) -> anyhow::Result<Self> {
        let field = |key: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        };
        Ok(Dialled {
            first_byte_ms: field("first-byte-ms ")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("no first-byte-ms in {out:?}"))?,
            greeting: field("greeting "),
            reply: field("reply ").ok_or_else(|| anyhow::anyhow!("no reply in {out:?}"))?,
        })
    }
}

/// A capture on every interface of the hub (the bridge and its ports):
/// everything between the pods.
struct Capture {
    proc: Proc,
    path: std::path::PathBuf,
}

impl Capture {
    async fn start(net: &Net, name: &str) -> anyhow::Result<Self> {
        let path = net.dir.path().join(name);
        let proc = Proc::spawn_program(
            "ip",
            &[
                "netns",
                "exec",
                &net.hub,
                "tcpdump",
                "-i",
                "any",
                "--immediate-mode",
                "-U",
                "-s",
                "0",
                "-w",
                &path.display().to_string(),
                "tcp",
            ]
            .map(String::from),
        )?;
        weft_tests::util::wait_for("tcpdump to listen", Duration::from_secs(10), || {
            let started = proc.log_text().contains("listening on any");
            async move { started.then_some(()) }
        })
        .await?;
        Ok(Capture { proc, path })
    }

    /// Stops once `control` (sent in clear last) is in the file: packets
    /// reach it in order, so everything before is there too. Its bytes.
    async fn stop_after(mut self, control: &str) -> anyhow::Result<Vec<u8>> {
        let path = self.path.clone();
        let seen = weft_tests::util::wait_for(
            "the control marker in the capture",
            Duration::from_secs(10),
            || {
                let found = std::fs::read(&path)
                    .is_ok_and(|b| b.windows(control.len()).any(|w| w == control.as_bytes()));
                async move { found.then_some(()) }
            },
        )
        .await;
        self.proc.signal(libc::SIGINT);
        self.proc.wait(Duration::from_secs(10))?;
        seen.map_err(|e| anyhow::anyhow!("{e}; tcpdump said:\n{}", self.proc.log_text()))?;
        Ok(std::fs::read(&self.path)?)
    }
}

fn tcp_metric(text: &str, name: &str, direction: &str, service: &str) -> f64 {
    metric(
        text,
        name,
        &[("direction", direction), ("service", service)],
    )
    .unwrap_or(0.0)
}

/// `curl -i` in `pod`: the status line and headers, and the body.
fn curl_status(pod: &Pod, url: &str) -> anyhow::Result<String> {
    let (code, text) = pod.curl(&["-i", url])?;
    anyhow::ensure!(code == 0, "curl {url} failed ({code}): {text:?}");
    Ok(text)
}

fn refused_ports(text: &str, reason: &str) -> f64 {
    metric(
        text,
        "weft_app_port_refused_total",
        &[("service", "web"), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn server_first_and_client_first_tcp_cross_pods_over_mutual_tls_without_waiting()
-> anyhow::Result<()> {
    if !prerequisites()? {
        return Ok(());
    }
    let s = TcpScenario::start().await?;
    let capture = Capture::start(&s.net, "tcp-between-pods.pcap").await?;

    // The first connection to a service looks its endpoints up; the
    // timings below are of connections after it.
    let hinted = format!("{MAIL_VIP}:2525");
    let warm = s.dial(&hinted, &format!("HELO {MARKER}-0"), &[])?;
    assert_eq!(warm.greeting.as_deref(), Some("220 mail ready"), "{warm:?}");

    // The hinted port: the greeting comes at once, before the client says
    // anything, and well before the detection bound would have let it.
    for i in 1..=3 {
        let d = s.dial(&hinted, &format!("HELO {MARKER}-{i}"), &[])?;
        assert_eq!(d.greeting.as_deref(), Some("220 mail ready"), "{d:?}");
        assert_eq!(d.reply, format!("250 mail got HELO {MARKER}-{i}"));
        assert!(
            d.first_byte_ms < DETECT_BOUND_MS,
            "the greeting on an opaquePorts port took {} ms: detection was not skipped",
            d.first_byte_ms
        );
    }

    // Without the hint: the sidecar waits for the client's first bytes
    // for the bounded time, then carries the connection as opaque TCP.
    let d = s.dial(
        &format!("{MAIL_VIP}:2526"),
        &format!("HELO {MARKER}-nohint"),
        &[],
    )?;
    assert_eq!(d.greeting.as_deref(), Some("220 mail ready"), "{d:?}");
    assert_eq!(d.reply, format!("250 mail got HELO {MARKER}-nohint"));
    assert!(
        (DETECT_BOUND_MS - 10..=DETECT_BOUND_MS + 600).contains(&d.first_byte_ms),
        "an unhinted server-first port: the greeting after {} ms, expected the {DETECT_BOUND_MS} ms \
         detection bound plus a connection's setup",
        d.first_byte_ms
    );

    // Client-first: the first bytes are not HTTP, so detection ends on
    // them, not on the bound.
    let kv = format!("{KV_VIP}:6379");
    s.dial(&kv, &format!("PING {MARKER}-warm"), &["--speak-first"])?;
    let d = s.dial(&kv, &format!("SET k {MARKER}-kv"), &["--speak-first"])?;
    assert_eq!(d.reply, format!("kv echoed SET k {MARKER}-kv"));
    assert!(
        d.first_byte_ms < DETECT_BOUND_MS,
        "a client-first connection's answer took {} ms",
        d.first_byte_ms
    );

    // The apps got the lines in clear; the wire between the pods did not.
    let log = s.mail_app.log_text();
    assert!(
        log.contains(&format!("HELO {MARKER}-3")) && log.contains(&format!("HELO {MARKER}-nohint")),
        "the mail app did not get the lines:\n{log}"
    );
    let control = format!("http://{}:8080/?control={CONTROL}", s.outside.ip);
    assert_eq!(s.client.curl(&[&control])?.0, 0);
    let bytes = capture.stop_after(CONTROL).await?;
    assert!(bytes.len() > 2000, "the capture saw no traffic");
    for clear in [MARKER, "220 mail ready", "kv echoed"] {
        assert!(
            !bytes.windows(clear.len()).any(|w| w == clear.as_bytes()),
            "{clear:?} crossed the wire in clear text"
        );
    }

    // Per service, on both sides.
    let client = Scenario::metrics(&s.client)?;
    let connections = "weft_tcp_connections_total";
    assert_eq!(
        tcp_metric(&client, connections, "outbound", "mail"),
        5.0,
        "{client}"
    );
    assert_eq!(
        tcp_metric(&client, connections, "outbound", "kv"),
        2.0,
        "{client}"
    );
    assert_eq!(intercepted(&client, "outbound", "service"), 7.0, "{client}");
    for name in ["weft_tcp_sent_bytes_total", "weft_tcp_received_bytes_total"] {
        assert!(
            tcp_metric(&client, name, "outbound", "mail") > 0.0,
            "{name}:\n{client}"
        );
        assert!(
            tcp_metric(&client, name, "outbound", "kv") > 0.0,
            "{name}:\n{client}"
        );
    }
    let mail = Scenario::metrics(&s.mail)?;
    assert_eq!(
        tcp_metric(&mail, connections, "inbound", "mail"),
        5.0,
        "{mail}"
    );
    assert!(
        tcp_metric(&mail, "weft_tcp_sent_bytes_total", "inbound", "mail") > 0.0,
        "{mail}"
    );
    Ok(())
}

#[tokio::test]
async fn an_open_intercepted_tcp_connection_is_counted_open_on_both_sides_until_it_closes()
-> anyhow::Result<()> {
    if !prerequisites()? {
        return Ok(());
    }
    let s = TcpScenario::start().await?;
    let go = s.net.dir.path().join("go");
    let mut dial = s.client.spawn(
        "weft-podapp",
        &[
            "--dial".into(),
            format!("{MAIL_VIP}:2525"),
            "QUIT".into(),
            "--pause-until".into(),
            go.display().to_string(),
        ],
        false,
    )?;
    weft_tests::util::wait_for("the greeting", Duration::from_secs(20), || {
        let greeted = dial.log_text().contains("greeting 220 mail ready");
        async move { greeted.then_some(()) }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}; the client said:\n{}", dial.log_text()))?;
    let open = "weft_tcp_open_connections";
    let client = Scenario::metrics(&s.client)?;
    assert_eq!(
        tcp_metric(&client, open, "outbound", "mail"),
        1.0,
        "{client}"
    );
    let mail = Scenario::metrics(&s.mail)?;
    assert_eq!(tcp_metric(&mail, open, "inbound", "mail"), 1.0, "{mail}");

    std::fs::write(&go, "")?;
    assert_eq!(
        dial.wait(Duration::from_secs(20))?,
        0,
        "{}",
        dial.log_text()
    );
    assert!(dial.log_text().contains("reply 250 mail got QUIT"));
    // Both sidecars see the close once the other side's copy has ended.
    weft_tests::util::wait_for("both sides to close", Duration::from_secs(10), || {
        let closed =
            [(&s.client, "outbound"), (&s.mail, "inbound")]
                .iter()
                .all(|(pod, direction)| {
                    Scenario::metrics(pod)
                        .is_ok_and(|m| tcp_metric(&m, open, direction, "mail") == 0.0)
                });
        async move { closed.then_some(()) }
    })
    .await?;
    let client = Scenario::metrics(&s.client)?;
    assert_eq!(
        tcp_metric(&client, "weft_tcp_connections_total", "outbound", "mail"),
        1.0,
        "{client}"
    );
    Ok(())
}

#[tokio::test]
async fn one_sidecar_serves_every_app_port_and_refuses_the_rest() -> anyhow::Result<()> {
    if !prerequisites()? {
        return Ok(());
    }
    let s = Scenario::start().await?;
    let vip = |port: u16| format!("http://{WEB_VIP}:{port}/");

    // The app's two ports through the one sidecar, each reached on the
    // port the caller's app dialled.
    assert!(curl_status(&s.client, &vip(8080))?.ends_with("web saw 127.0.0.1"));
    let echo = send_line(&s.client, &format!("{WEB_VIP}:9000"), "hi")?;
    assert!(echo.ends_with("echo from 127.0.0.1: hi\n"), "{echo:?}");

    // A port the app does not listen on: 503 naming why (retried, as
    // another endpoint may listen there), or a closed connection; a port
    // of the web sidecar's own is never reached (403, not retried).
    let none = curl_status(&s.client, &vip(8081))?;
    assert!(
        none.starts_with("HTTP/1.1 503") && none.contains("x-weft-error: no-app-port"),
        "{none}"
    );
    assert_eq!(send_line(&s.client, &format!("{WEB_VIP}:9001"), "hi")?, "");
    let admin = curl_status(&s.client, &format!("{}metrics", vip(15000)))?;
    assert!(
        admin.starts_with("HTTP/1.1 403") && admin.contains("x-weft-error: no-app-port"),
        "{admin}"
    );
    let web = Scenario::metrics(&s.web)?;
    let client = Scenario::metrics(&s.client)?;
    let retries = metric(&client, "weft_retries_total", &[("service", "web")]).unwrap_or(0.0);
    assert_eq!(
        refused_ports(&web, "not-listening"),
        2.0 + retries,
        "one HTTP request and its retries, one TCP connection:\n{web}"
    );
    assert_eq!(refused_ports(&web, "sidecar-port"), 1.0, "{web}");

    // IPv6: the client's app dials the service's IPv6 virtual address
    // (ip6tables, the outbound listener's IPv6 twin), and a plain client
    // outside the mesh dials the web pod's IPv6 address (the inbound
    // listener's twin, PERMISSIVE).
    let (code, body) = s.client.curl(&[&format!("http://[{WEB_VIP6}]:8080/v6")])?;
    assert_eq!((code, body.as_str()), (0, "web saw 127.0.0.1"));
    let (code, body) = s
        .outside
        .curl(&[&format!("http://[{}]:8080/v6-direct", s.web6)])?;
    assert_eq!((code, body.as_str()), (0, "web saw 127.0.0.1"));
    assert!(s.web_app.log_text().contains("/v6-direct"));
    let web = Scenario::metrics(&s.web)?;
    assert_eq!(intercepted(&web, "inbound", "app"), 1.0, "{web}");

    // STRICT, and only `client` may call: a plaintext client outside the
    // mesh is refused at the app's port (over IPv4 and IPv6), and the
    // `strict` pod's calls to both ports are denied.
    let yaml = s.net.write(
        "strict.yaml",
        &format!(
            "{}---\napiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  \
             name: web-callers\nspec:\n  service: web\n  rules:\n    - from: [client]\n",
            web_service("STRICT")
        ),
    )?;
    s.cp.weftctl(&["apply", "-f", &yaml.display().to_string()])?;
    let outside = format!("http://{}:8080/", s.web.ip);
    let (strict, outer) = (s.strict.clone(), s.outside.clone());
    weft_tests::util::wait_for(
        "STRICT and the policy on web's sidecar",
        Duration::from_secs(10),
        || {
            let denied = curl_status(&strict, &vip(8080)).is_ok_and(|t| t.contains(" 403 "));
            let refused = outer.curl(&[&outside]).is_ok_and(|(c, _)| c != 0);
            async move { (denied && refused).then_some(()) }
        },
    )
    .await?;
    let (code, _) = s.outside.curl(&[&format!("http://[{}]:8080/", s.web6)])?;
    assert_ne!(code, 0, "a plaintext IPv6 client got through STRICT");
    assert_eq!(send_line(&s.strict, &format!("{WEB_VIP}:9000"), "hi")?, "");
    // The allowed caller still reaches both ports.
    assert!(curl_status(&s.client, &vip(8080))?.ends_with("web saw 127.0.0.1"));
    let echo = send_line(&s.client, &format!("{WEB_VIP}:9000"), "again")?;
    assert!(echo.ends_with("echo from 127.0.0.1: again\n"), "{echo:?}");
    let web = Scenario::metrics(&s.web)?;
    let denied = metric(
        &web,
        "weft_authorization_denied_total",
        &[("service", "web"), ("caller", "strict")],
    )
    .unwrap_or(0.0);
    assert!(denied >= 2.0, "{web}");
    Ok(())
}
