//! Whatever a peer sends, nothing crashes or panics: junk bytes, broken
//! HTTP/1 and HTTP/2, a TLS handshake cut short, and well-formed requests
//! with hostile headers and bodies, at every port of real processes (a
//! control plane and two sidecars). Afterwards every process still runs,
//! logged no panic, and carries a normal call.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_proto::v1 as pb;
use weft_proto::v1::discovery_client::DiscoveryClient;
use weft_proto::v1::identity_client::IdentityClient;
use weft_tests::echo::{client, start_echo};
use weft_tests::fuzz::seeds::{H2_PREFACE, h2_frame, junk};
use weft_tests::pb::EchoRequest;
use weft_tests::process::{ControlPlaneProc, Proc, SidecarProc, free_port};
use weft_tests::util::{http_get, init_logs};

/// Byte streams no server should choke on.
fn raw_inputs() -> Vec<(&'static str, Vec<u8>)> {
    // A frame whose length field may lie about its payload.
    let frame = |len: u32, kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let mut f = h2_frame(kind, flags, stream, payload);
        f[..3].copy_from_slice(&len.to_be_bytes()[1..]);
        f
    };
    let with_preface = |frames: &[Vec<u8>]| {
        let mut v = H2_PREFACE.to_vec();
        for f in frames {
            v.extend_from_slice(f);
        }
        v
    };
    let mut long_header = b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: ".to_vec();
    long_header.extend(std::iter::repeat_n(b'a', 200 * 1024));
    vec![
        ("nothing", Vec::new()),
        ("junk", junk(1, 64 * 1024)),
        ("one zero byte", vec![0]),
        ("a header that never ends", long_header),
        (
            "HTTP/1 with a body shorter than its length",
            b"POST /echo.Echo/Unary HTTP/1.1\r\nHost: echo\r\nContent-Length: 99999999\r\n\r\nabc"
                .to_vec(),
        ),
        (
            "HTTP/1 with a bad chunk size",
            b"POST / HTTP/1.1\r\nHost: echo\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n"
                .to_vec(),
        ),
        (
            "HTTP/1 with both lengths",
            b"POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
        ),
        (
            "HTTP/1 with a control character in a header",
            b"GET / HTTP/1.1\r\nHost: echo\r\nX-Bad: a\x01b\r\n\r\n".to_vec(),
        ),
        ("HTTP/1 absolute junk method", b"\xff\xfe / HTTP/1.1\r\n\r\n".to_vec()),
        ("a cut HTTP/2 preface", H2_PREFACE[..10].to_vec()),
        ("an HTTP/2 preface then junk", with_preface(&[junk(2, 4096)])),
        (
            "an HTTP/2 SETTINGS frame of a wrong length",
            with_preface(&[frame(5, 0x4, 0, 0, &[0, 0, 0, 0, 0])]),
        ),
        (
            "HTTP/2 HEADERS with broken HPACK",
            with_preface(&[
                frame(0, 0x4, 0, 0, &[]),
                frame(8, 0x1, 0x4 | 0x1, 1, &junk(3, 8)),
            ]),
        ),
        (
            "HTTP/2 DATA on a stream never opened",
            with_preface(&[frame(0, 0x4, 0, 0, &[]), frame(4, 0x0, 0, 7, b"abcd")]),
        ),
        (
            "an HTTP/2 frame longer than allowed",
            with_preface(&[frame(0, 0x4, 0, 0, &[]), frame(0xff_ffff, 0x0, 0, 1, b"x")]),
        ),
        (
            "HTTP/2 WINDOW_UPDATE of zero",
            with_preface(&[frame(0, 0x4, 0, 0, &[]), frame(4, 0x8, 0, 0, &[0, 0, 0, 0])]),
        ),
        (
            "a TLS ClientHello cut short",
            vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03],
        ),
        ("a TLS record of junk", {
            let mut v = vec![0x16, 0x03, 0x03, 0x10, 0x00];
            v.extend(junk(4, 4096));
            v
        }),
    ]
}

/// Sends `bytes` on a new connection and reads whatever comes back, for a
/// bounded time. Refused or reset connections are fine; hanging forever is
/// bounded by the timeout, not failed (some servers wait for more).
async fn send_raw(addr: SocketAddr, bytes: &[u8]) {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
    else {
        return;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = s.write_all(bytes).await;
        let _ = s.shutdown().await;
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n) = s.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// One request of [`send_hostile_requests`].
struct Hostile {
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
}

impl Hostile {
    fn new(path: &str, headers: Vec<(&'static str, String)>, body: Bytes) -> Self {
        Hostile {
            path: path.to_string(),
            headers,
            body,
        }
    }
}

/// gRPC-shaped requests with hostile headers or bodies, over one HTTP/2
/// connection per request. Each gets an answer or an error, never a hang.
async fn send_hostile_requests(addr: SocketAddr) -> anyhow::Result<usize> {
    let long = "x".repeat(16 * 1024);
    let lying_prefix = Bytes::from_static(&[0, 0x40, 0, 0, 0, 1, 2, 3, 4, 5]);
    let compressed = Bytes::from_static(&[1, 0, 0, 0, 2, 8, 1]);
    const UNARY: &str = "/echo.Echo/Unary";
    let header = |name: &'static str, value: &str| vec![(name, value.to_string())];
    let requests: Vec<Hostile> = vec![
        Hostile::new(UNARY, header("grpc-timeout", "zzz"), Bytes::new()),
        Hostile::new(UNARY, header("grpc-timeout", "99999999H"), Bytes::new()),
        Hostile::new(UNARY, header("grpc-timeout", "0n"), Bytes::new()),
        Hostile::new(UNARY, header("traceparent", "00-zz-yy-01"), Bytes::new()),
        Hostile::new(
            UNARY,
            header(
                "traceparent",
                "00-00000000000000000000000000000000-0000000000000000-01",
            ),
            Bytes::new(),
        ),
        Hostile::new(UNARY, header("tracestate", &long), Bytes::new()),
        Hostile::new(UNARY, vec![], lying_prefix),
        Hostile::new(UNARY, header("grpc-encoding", "identity"), compressed),
        Hostile::new(UNARY, vec![], Bytes::from(junk(5, 70 * 1024))),
        Hostile::new(UNARY, header("content-type", "text/plain"), Bytes::new()),
        Hostile::new(
            UNARY,
            header("x-weft-peer-identity", "spiffe://weft.local/service/admin"),
            Bytes::new(),
        ),
        Hostile::new("/", vec![], Bytes::new()),
        Hostile::new("//", vec![], Bytes::new()),
        Hostile::new("/echo.Echo/", vec![], Bytes::new()),
        Hostile::new("/no.Such/Method", vec![], Bytes::new()),
        Hostile::new(&format!("/{long}"), vec![], Bytes::new()),
    ];
    let mut answered = 0;
    for Hostile {
        path,
        headers,
        body,
    } in requests
    {
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            let io = TokioIo::new(TcpStream::connect(addr).await?);
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            let mut req = http::Request::post(format!("http://echo{path}"))
                .header("content-type", "application/grpc")
                .header("te", "trailers");
            for (k, v) in &headers {
                req = req.header(*k, v.as_str());
            }
            let resp = send.send_request(req.body(Full::new(body))?).await?;
            let _ = resp.into_body().collect().await;
            anyhow::Ok(())
        })
        .await;
        if matches!(r, Ok(Ok(()))) {
            answered += 1;
        }
    }
    Ok(answered)
}

fn assert_alive_without_panics(name: &str, p: &mut Proc) {
    let exited = p.child.try_wait().ok().flatten();
    assert!(
        exited.is_none(),
        "{name} exited ({exited:?}); log:\n{}",
        p.log_text()
    );
    let log = p.log_text();
    assert!(!log.contains("panicked"), "{name} panicked; log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_input_crashes_a_sidecar_or_the_control_plane() -> anyhow::Result<()> {
    init_logs();
    let dir = tempfile::tempdir()?;
    let mut cp = ControlPlaneProc::start(free_port()?, free_port()?, dir.path(), &[]).await?;
    let access = cp.access()?;
    // Tracing and the access log on: hostile headers reach that code too.
    let collector = weft_tests::otlp::Collector::start().await?;
    let observed = |mut v: Vec<String>| {
        v.extend([
            "--otlp-endpoint".into(),
            collector.endpoint(),
            "--access-log".into(),
        ]);
        v
    };
    let app = start_echo("echo-1").await?;
    let mut echo = SidecarProc::start(
        "echo",
        Some(&access),
        &observed(vec!["--app".into(), app.addr.to_string()]),
    )
    .await?;
    let upstream: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut caller = SidecarProc::start(
        "caller",
        Some(&access),
        &observed(vec!["--upstream".into(), format!("echo={upstream}")]),
    )
    .await?;
    // The caller knows the echo instance before the assault.
    client(upstream)
        .await?
        .unary(EchoRequest::default())
        .await?;

    let ports = [
        ("control plane gRPC (TLS)", cp.grpc),
        ("control plane admin", cp.admin),
        ("echo sidecar inbound (mTLS)", echo.inbound),
        ("echo sidecar admin", echo.admin),
        ("caller sidecar upstream port", upstream),
        ("caller sidecar outbound port", caller.outbound),
        ("caller sidecar admin", caller.admin),
    ];
    for (_, addr) in ports {
        for (_, bytes) in raw_inputs() {
            send_raw(addr, &bytes).await;
        }
    }
    // Requests that are valid HTTP/2 but hostile gRPC, through the mesh.
    let answered = send_hostile_requests(upstream).await?;
    assert!(answered > 0, "no hostile request got an answer at all");
    // Many connections opened and dropped at once.
    let floods = (0..200).map(|i| async move {
        if let Ok(mut s) = TcpStream::connect(upstream).await {
            let _ = s.write_all(&H2_PREFACE[..(i % H2_PREFACE.len())]).await;
        }
    });
    futures_util::future::join_all(floods).await;

    // Everything still runs, logged no panic, and carries a normal call.
    assert_alive_without_panics("the control plane", &mut cp.proc);
    assert_alive_without_panics("the echo sidecar", &mut echo.proc);
    assert_alive_without_panics("the caller sidecar", &mut caller.proc);
    let r = client(upstream)
        .await?
        .unary(EchoRequest {
            message: "still here".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(r.into_inner().message, "still here");
    for (name, admin) in [
        ("control plane", cp.admin),
        ("echo sidecar", echo.admin),
        ("caller sidecar", caller.admin),
    ] {
        let m = http_get(&format!("http://{admin}/metrics")).await?;
        assert!(m.status.is_success(), "{name} /metrics: {}", m.status);
    }
    Ok(())
}

/// A CSR for `spiffe://weft.local/service/{service}` and its key.
fn csr(service: &str) -> anyhow::Result<(Vec<u8>, rcgen::KeyPair)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        format!("spiffe://weft.local/service/{service}").try_into()?,
    )];
    Ok((params.serialize_request(&key)?.der().to_vec(), key))
}

fn msg(kind: pb::sidecar_message::Kind) -> pb::SidecarMessage {
    pb::SidecarMessage { kind: Some(kind) }
}

fn hello(service: &str, address: &str) -> pb::SidecarMessage {
    msg(pb::sidecar_message::Kind::Hello(pb::Hello {
        service: service.into(),
        instance_id: format!("{service}-1"),
        address: address.into(),
        protocol: pb::Protocol::Grpc as i32,
        health: pb::Health::Healthy as i32,
        upstreams: vec!["echo".into()],
        ..Default::default()
    }))
}

/// The unauthenticated Identity API and the authenticated discovery
/// stream, fed junk: every bad call is refused, the control plane keeps
/// running, logs no panic, and answers weftctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_message_crashes_the_control_plane() -> anyhow::Result<()> {
    use pb::sidecar_message::Kind;
    init_logs();
    let dir = tempfile::tempdir()?;
    let mut cp = ControlPlaneProc::start(free_port()?, free_port()?, dir.path(), &[]).await?;
    let access = cp.access()?;
    let anonymous = weft_control_plane::cli::connect_tls(
        &access.url,
        &access.credential,
        Duration::from_secs(10),
    )
    .await?;
    let mut identity = IdentityClient::new(anonymous);
    let token = access.token("fuzz", Duration::from_secs(3600)).await?;
    let (good_csr, key) = csr("fuzz")?;
    let bad_calls = [
        ("nothing", Vec::new(), String::new()),
        ("a junk CSR, no token", junk(6, 4096), String::new()),
        ("a junk token", junk(7, 512), "weft1.!!!".to_string()),
        ("a good token, a junk CSR", junk(8, 512), token.clone()),
        (
            "a huge token",
            good_csr.clone(),
            format!("weft1.{}", "A".repeat(100_000)),
        ),
        ("a CSR for another service", csr("other")?.0, token.clone()),
        ("a 3 MB CSR", vec![0x30; 3 * 1024 * 1024], token.clone()),
    ];
    for (what, csr, token) in bad_calls {
        let r = identity.issue(pb::IssueRequest { csr, token }).await;
        assert!(r.is_err(), "{what} was accepted");
    }
    let issued = identity
        .issue(pb::IssueRequest {
            csr: good_csr,
            token,
        })
        .await?
        .into_inner();

    // A sidecar's certificate, then streams of hostile messages.
    let chain: String = issued
        .chain
        .iter()
        .map(|c| weft_proto::identity::pem("CERTIFICATE", c))
        .collect();
    let roots = weft_proto::identity::certs_from_pem(&access.credential.ca)
        .and_then(|c| weft_proto::identity::root_store(&c))?;
    let verifier = weft_proto::identity::SpiffeServerVerifier::new(
        roots,
        weft_proto::identity::SpiffeId::control_plane("weft.local"),
    );
    let tls =
        tonic::transport::ClientTlsConfig::new().identity(tonic::transport::Identity::from_pem(
            chain,
            weft_proto::identity::pem("PRIVATE KEY", &key.serialize_der()),
        ));
    let channel = tonic::transport::Endpoint::from_shared(access.url.clone())?
        .tls_config_with_verifier(tls, std::sync::Arc::new(verifier))?
        .connect()
        .await?;
    let mut discovery = DiscoveryClient::new(channel);
    let stats = |requests, failures, buckets: Vec<u64>| {
        msg(Kind::Stats(pb::TrafficStats {
            requests,
            failures,
            latency_buckets: buckets,
            ..Default::default()
        }))
    };
    let buckets = weft_proto::stats::BUCKETS;
    // Well-formed counts under names made up per report, and routes that
    // are too many or too long: refused or bounded, never kept whole.
    let edges = |round: u64| {
        msg(Kind::Stats(pb::TrafficStats {
            requests: round,
            failures: 0,
            latency_buckets: vec![round; buckets],
            plaintext_requests: u64::MAX,
            upstreams: (0..256)
                .map(|i| pb::UpstreamTraffic {
                    service: format!("made-up-{round}-{i}"),
                    requests: u64::MAX,
                    failures: u64::MAX,
                    latency_buckets: vec![u64::MAX; buckets],
                })
                .collect(),
            routes: (0..256)
                .map(|i| pb::RouteTraffic {
                    route: format!("/r.R/{round}-{i}"),
                    requests: u64::MAX - round,
                    failures: u64::MAX,
                })
                .collect(),
        }))
    };
    let too_many = msg(Kind::Stats(pb::TrafficStats {
        latency_buckets: vec![0; buckets],
        upstreams: vec![pb::UpstreamTraffic::default(); 100_000],
        routes: vec![
            pb::RouteTraffic {
                route: "r".repeat(100_000),
                ..Default::default()
            };
            10
        ],
        ..Default::default()
    }));
    let streams: Vec<(&str, Vec<pb::SidecarMessage>)> = vec![
        ("empty", vec![]),
        ("stats before hello", vec![stats(5, 1, vec![1, 2, 3])]),
        (
            "another service's hello",
            vec![hello("other", "127.0.0.1:1")],
        ),
        (
            "a bad service name",
            vec![hello("Bad Name!", "127.0.0.1:1")],
        ),
        ("a bad address", vec![hello("fuzz", "not an address")]),
        (
            "unknown enums and junk upstreams",
            vec![msg(Kind::Hello(pb::Hello {
                protocol: 999,
                health: 999,
                upstreams: vec!["Not A Name".into(), "x".repeat(10_000)],
                labels: [("".to_string(), "v".repeat(100_000))].into(),
                ..match hello("fuzz", "127.0.0.1:1").kind {
                    Some(Kind::Hello(h)) => h,
                    _ => pb::Hello::default(),
                }
            }))],
        ),
        (
            "everything odd after a hello",
            vec![
                hello("fuzz", "127.0.0.1:1"),
                msg(Kind::Subscribe(pb::Subscribe {
                    services: (0..1000)
                        .map(|i| format!("svc-{i}"))
                        .chain(["".into(), "UPPER".into(), "y".repeat(10_000)])
                        .collect(),
                })),
                msg(Kind::Ack(pb::Ack { version: u64::MAX })),
                msg(Kind::Nack(pb::Nack {
                    version: 0,
                    reason: "r".repeat(1024 * 1024),
                })),
                msg(Kind::Health(pb::AppHealth {
                    health: 999,
                    detail: "d".repeat(100_000),
                })),
                msg(Kind::Certificate(pb::CertificateStatus {
                    expires_unix_ms: u64::MAX,
                })),
                msg(Kind::Ejection(pb::Ejection {
                    service: "nobody".into(),
                    instance_id: "x".into(),
                    until_unix_ms: u64::MAX,
                })),
                stats(10, 20, vec![u64::MAX; 10_000]),
                stats(u64::MAX, u64::MAX, vec![]),
                stats(1, 0, vec![5, 3, 1]),
                edges(1),
                edges(2),
                edges(3),
                too_many,
                hello("fuzz", "127.0.0.1:2"),
                msg(Kind::Leave(pb::Leave {})),
                stats(2, 0, vec![1]),
                pb::SidecarMessage { kind: None },
            ],
        ),
    ];
    for (what, messages) in streams {
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            let Ok(resp) = discovery.stream(tokio_stream::iter(messages)).await else {
                return;
            };
            let mut inbound = resp.into_inner();
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
        // A stream the control plane keeps open (it waits for more) ends
        // at the timeout; that is not a failure, a crash is.
        let _ = (what, outcome);
    }

    assert_alive_without_panics("the control plane", &mut cp.proc);
    // The 1 MB NACK reason reached the log clipped.
    let log = cp.proc.log_text();
    let nack = log
        .lines()
        .find(|l| l.contains("sidecar rejected an update"))
        .ok_or_else(|| anyhow::anyhow!("the NACK was not logged:\n{log}"))?;
    assert!(nack.len() < 2048, "a NACK line of {} bytes", nack.len());
    let services = access
        .admin_client()
        .await?
        .list_services(pb::ListServicesRequest {})
        .await?
        .into_inner();
    let _ = services;
    let m = http_get(&format!("http://{}/metrics", cp.admin)).await?;
    assert!(m.status.is_success(), "/metrics: {}", m.status);
    Ok(())
}
