//! Property tests of every parser in the sidecar that a peer, the control
//! plane or a user's file reaches, fed random input and mutations of valid
//! input (`weft_proto::mutate`): protocol detection, `grpc-timeout`,
//! `traceparent` / `tracestate`, discovery updates, the static mesh file
//! and certificate files; and at the gateway, what a client on the
//! internet sends it: gRPC-Web bodies and content types, the forwarding
//! headers and request ids, CORS preflights and origins, REST calls to
//! transcode (and the descriptor set they are transcoded by). Each returns
//! a value or an error and never panics; what it accepts prints back where
//! the format allows.
//!
//! `PROPTEST_CASES=100000 cargo test -p weft-sidecar --test properties`
//! runs more cases than CI's default (256, 64 for the file-based ones).

use std::time::Duration;

use http::HeaderValue;
use proptest::prelude::*;
use prost::Message;
use weft_proto::deadline;
use weft_proto::identity::pem;
use weft_proto::mutate::{OPS, mutate};
use weft_proto::v1 as pb;
use weft_sidecar::config::{CertPair, parse_static};
use weft_sidecar::discovery::{ConfigState, convert_update};
use weft_sidecar::identity::CertFiles;
use weft_sidecar::intercept::AddressMap;
use weft_sidecar::proxy::gateway::Certificates;
use weft_sidecar::proxy::{Detected, detect_protocol};
use weft_sidecar::telemetry::context::{TraceContext, trace_state};

fn edits(n: usize) -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    prop::collection::vec((0..OPS, any::<usize>(), any::<u8>()), 0..n)
}

/// Bytes: random, or one of `valid` mutated.
fn bytes_near(valid: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (prop::sample::select(valid), edits(8)).prop_map(|(v, e)| mutate(&v, &e)),
    ]
}

/// The cases a property over files runs: fewer, as each writes files.
fn file_cases() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    ProptestConfig::with_cases(cases)
}

const H2: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn first_bytes() -> Vec<Vec<u8>> {
    vec![
        H2.to_vec(),
        b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n".to_vec(),
        b"POST /echo.Echo/Unary HTTP/1.1\r\n".to_vec(),
        b"CONNECT echo:80 HTTP/1.1\r\n\r\n".to_vec(),
        vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
        b"AMQP\x00\x00\x09\x01".to_vec(),
    ]
}

proptest! {
    /// Detection decides once and for all: more bytes never change a
    /// decision, and "need more" happens only on a prefix of something it
    /// could recognise (else a silent peer would be waited for in vain).
    #[test]
    fn detection_is_stable_as_bytes_arrive(b in bytes_near(first_bytes()), more in prop::collection::vec(any::<u8>(), 0..32)) {
        let d = detect_protocol(&b);
        let mut longer = b.clone();
        longer.extend_from_slice(&more);
        match d {
            Some(d) => prop_assert_eq!(detect_protocol(&longer), Some(d)),
            None => prop_assert!(b.is_empty() || b.len() < H2.len()),
        }
        if b.starts_with(H2) {
            prop_assert_eq!(d, Some(Detected::Http2));
        }
    }

    #[test]
    fn grpc_timeouts_parse_or_are_ignored(b in bytes_near(vec![b"250m".to_vec(), b"1S".to_vec(), b"99999999H".to_vec(), b"7n".to_vec()])) {
        if let Ok(v) = HeaderValue::from_bytes(&b)
            && let Some(d) = deadline::parse(&v)
        {
            // Formatting never gives less time than was asked, and reads back.
            let again = deadline::parse(&deadline::format(d));
            prop_assert!(again.is_some_and(|a| a >= d), "{:?} -> {:?}", d, again);
        }
    }

    #[test]
    fn any_deadline_formats_to_a_valid_grpc_timeout(ns in any::<u64>(), secs in any::<u64>()) {
        for d in [Duration::from_nanos(ns), Duration::from_secs(secs)] {
            let v = deadline::format(d);
            prop_assert!(v.len() <= 9, "{:?}", v);
            let back = deadline::parse(&v);
            prop_assert!(back.is_some(), "{:?}", v);
        }
    }

    #[test]
    fn traceparents_parse_or_start_a_new_trace(b in bytes_near(vec![
        b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
        b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later".to_vec(),
    ])) {
        if let Ok(v) = HeaderValue::from_bytes(&b)
            && let Some(c) = TraceContext::parse(&v)
        {
            prop_assert!(c.trace_id != 0 && c.span_id != 0);
            prop_assert_eq!(TraceContext::parse(&c.to_header()), Some(c));
        }
    }

    #[test]
    fn trace_contexts_round_trip(trace_id in 1..=u128::MAX, span_id in 1..=u64::MAX, sampled in any::<bool>()) {
        let c = TraceContext { trace_id, span_id, sampled };
        prop_assert_eq!(TraceContext::parse(&c.to_header()), Some(c));
    }

    #[test]
    fn tracestates_are_read_or_dropped(b in bytes_near(vec![
        b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".to_vec(),
        b"a@b=1,c=2".to_vec(),
    ])) {
        if let Ok(v) = HeaderValue::from_bytes(&b) {
            let s = trace_state(&v);
            // What was kept is valid again.
            let header = s.header();
            if !header.is_empty() {
                let again = trace_state(&HeaderValue::from_str(&header).expect("printable"));
                prop_assert_eq!(again.header(), header);
            }
        }
    }

    /// Random and mutated updates from the control plane: converted whole
    /// or refused with a reason; what converts applies to the state; the
    /// address map and trust anchors are read or refused.
    #[test]
    fn discovery_updates_apply_or_are_refused(b in bytes_near(vec![valid_update().encode_to_vec()])) {
        let Ok(u) = pb::DiscoveryUpdate::decode(b.as_slice()) else { return Ok(()) };
        let mut state = ConfigState::default();
        match convert_update(&u) {
            Ok(changes) => state.apply(u.full, changes),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
        if let Some(a) = &u.addresses {
            let _ = AddressMap::from_proto(a);
        }
        let roots: Vec<_> = u.roots.iter().map(|r| rustls_pki_types::CertificateDer::from(r.clone())).collect();
        let _ = weft_proto::identity::root_store(&roots);
        let mut held = weft_proto::resume::Held::default();
        held.apply(&u);
        let _ = held.resume();
    }

    #[test]
    fn static_mesh_files_parse_or_name_the_field(b in bytes_near(vec![STATIC.as_bytes().to_vec()])) {
        let text = String::from_utf8_lossy(&b);
        match parse_static(&text) {
            Ok(services) => prop_assert!(services.iter().all(|(_, s)| s.endpoints.values().all(|e| e.weight >= 1))),
            Err(p) => prop_assert!(!p.reason.is_empty()),
        }
    }
}

proptest! {
    #![proptest_config(file_cases())]

    /// `--cert-file`, `--key-file` and `--ca-file` mutated: a clear error
    /// naming the flag, never a panic; unmutated, they load.
    #[test]
    fn certificate_files_load_or_name_the_flag(which in 0..3usize, e in edits(8)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_identity(dir.path());
        let path = [&files.cert, &files.key, &files.ca][which];
        let original = std::fs::read(path).expect("read");
        let service = weft_proto::name::ServiceName::parse("fuzz").expect("name");
        std::fs::write(path, mutate(&original, &e)).expect("write");
        if let Err(err) = files.load(&service) {
            prop_assert!(err.flag.ends_with("-file"), "{}", err);
        }
        // The gateway's certificate pairs read the same files.
        let pair = CertPair { cert: files.cert.clone(), key: files.key.clone() };
        let _ = Certificates::load(&[pair]);
        std::fs::write(path, original).expect("write");
        prop_assert!(files.load(&service).is_ok());
    }
}

const STATIC: &str = "services:
  - name: user-service
    protocol: grpc
    loadBalancer: round-robin
    endpoints:
      - address: 10.0.0.5:15006
        id: user-1
        labels: {version: v1}
        weight: 2
      - address: 10.0.0.6:15006
  - name: order-service
    protocol: http
    endpoints: []
";

/// A CA, and a leaf for `spiffe://weft.local/service/fuzz` with its key, as files.
fn write_identity(dir: &std::path::Path) -> CertFiles {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let mut leaf = rcgen::CertificateParams::default();
    leaf.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://weft.local/service/fuzz".try_into().expect("uri"),
    )];
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    let files = CertFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: dir.join("ca.pem"),
    };
    std::fs::write(&files.cert, pem("CERTIFICATE", cert.der())).expect("write");
    std::fs::write(&files.key, pem("PRIVATE KEY", &key.serialize_der())).expect("write");
    std::fs::write(&files.ca, pem("CERTIFICATE", ca_cert.der())).expect("write");
    files
}

/// An update with most of what the control plane sends: a policy with
/// resilience, endpoints, an inbound policy and a route.
fn valid_update() -> pb::DiscoveryUpdate {
    let endpoint = |id: &str, addr: &str| pb::Endpoint {
        instance_id: id.into(),
        address: addr.into(),
        labels: [("version".to_string(), "v2".to_string())].into(),
        health: pb::Health::Healthy as i32,
        weight: 2,
    };
    pb::DiscoveryUpdate {
        version: 7,
        full: true,
        services: vec![
            pb::ServiceUpdate {
                name: "users".into(),
                known: true,
                policy: Some(pb::ServiceSpec {
                    name: "users".into(),
                    protocol: pb::Protocol::Grpc as i32,
                    subsets: vec![pb::Subset {
                        name: "v2".into(),
                        labels: [("version".to_string(), "v2".to_string())].into(),
                    }],
                    retry: Some(pb::RetryPolicy {
                        attempts: 3,
                        on: vec!["unavailable".into(), "reset".into()],
                        per_try_timeout_ms: 500,
                        ..Default::default()
                    }),
                    timeouts: Some(pb::TimeoutPolicy {
                        request_ms: 2000,
                        ..Default::default()
                    }),
                    circuit_breaker: Some(pb::CircuitBreakerPolicy {
                        consecutive_failures: 3,
                        max_ejected_percent: 30,
                        ..Default::default()
                    }),
                    hedge: Some(pb::HedgePolicy {
                        grpc_methods: vec!["/u.Users/Get*".into()],
                        delay_ms: 15,
                    }),
                    ..Default::default()
                }),
                reset_endpoints: true,
                endpoints: vec![
                    endpoint("users-1", "127.0.0.1:15006"),
                    endpoint("users-2", "[::1]:15006"),
                ],
                removed: vec!["users-0".into()],
                inbound: Some(pb::InboundPolicy {
                    mode: pb::InboundMode::Permissive as i32,
                    authorization: true,
                    rules: vec![pb::AuthorizationRule {
                        from: vec!["orders".into()],
                        grpc_methods: vec!["/u.Users/*".into()],
                        ..Default::default()
                    }],
                    rate_limit: None,
                }),
                routing: Some(pb::Routing {
                    routes: vec![pb::Route {
                        name: "canary".into(),
                        kind: pb::RouteKind::Grpc as i32,
                        hostnames: vec![],
                        rules: vec![pb::RouteRule {
                            matches: vec![pb::RouteMatch {
                                grpc_method: Some(pb::GrpcMethodMatch {
                                    r#type: pb::MatchType::Exact as i32,
                                    service: "u.Users".into(),
                                    method: "Get".into(),
                                }),
                                headers: vec![pb::ValueMatch {
                                    r#type: pb::MatchType::RegularExpression as i32,
                                    name: "x-user".into(),
                                    value: "a.*b".into(),
                                }],
                                ..Default::default()
                            }],
                            backends: vec![pb::BackendRef {
                                service: "users".into(),
                                subset: "v2".into(),
                                weight: Some(10),
                            }],
                            request_timeout_ms: 300,
                            ..Default::default()
                        }],
                    }],
                }),
            },
            pb::ServiceUpdate {
                name: "gone".into(),
                known: false,
                ..Default::default()
            },
        ],
        roots: vec![],
        addresses: Some(pb::AddressMap {
            services: vec![pb::ServiceAddresses {
                service: "users".into(),
                addresses: vec!["10.96.0.10".into()],
                opaque_ports: vec![3306],
            }],
        }),
        resumed: 0,
    }
}

#[test]
fn the_valid_update_is_valid() {
    let u = valid_update();
    let changes = convert_update(&u).expect("valid");
    let mut state = ConfigState::default();
    state.apply(true, changes);
    assert_eq!(state.known.len(), 1);
    assert!(AddressMap::from_proto(u.addresses.as_ref().expect("map")).is_ok());
}

// The gateway: what a client on the internet sends it.

mod gateway {
    use std::convert::Infallible;
    use std::net::IpAddr;
    use std::sync::LazyLock;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use bytes::Bytes;
    use futures_util::FutureExt as _;
    use http::header::{
        ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD,
        CONTENT_TYPE, FORWARDED, HOST, ORIGIN, TE,
    };
    use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
    use http_body::Frame;
    use http_body_util::{BodyExt as _, StreamBody};
    use proptest::prelude::*;
    use weft_proto::grpc::GrpcCode;
    use weft_proto::mutate::mutate;
    use weft_proto::routing::Cors;
    use weft_sidecar::edge::forwarded::{
        self, Forwarding, Origin, X_FORWARDED_FOR, X_FORWARDED_HOST, X_REQUEST_ID,
    };
    use weft_sidecar::edge::transcode::Transcoder;
    use weft_sidecar::edge::{cors, grpc_web};

    use super::{bytes_near, edits};

    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    /// `bytes` as a body cut at `cuts` (taken modulo its length).
    fn chunked(bytes: &[u8], cuts: &[usize]) -> Chunks {
        let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        at.extend([0, bytes.len()]);
        at.sort_unstable();
        at.dedup();
        let frames: Vec<_> = at
            .windows(2)
            .map(|w| Ok(Frame::data(Bytes::copy_from_slice(&bytes[w[0]..w[1]]))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    /// The gRPC body a gRPC-Web request of `content_type` becomes, or the
    /// error it ends with. Every chunk is at hand: no runtime needed.
    fn web_to_grpc(content_type: &str, body: &[u8], cuts: &[usize]) -> Result<Vec<u8>, String> {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/echo.Echo/Unary")
            .header(CONTENT_TYPE, content_type)
            .body(chunked(body, cuts))
            .expect("request");
        let encoding = grpc_web::detect(req.headers()).expect("a gRPC-Web content type");
        let body = grpc_web::into_grpc_request(req, encoding).into_body();
        match body.collect().now_or_never().expect("all chunks at hand") {
            Ok(c) => Ok(c.to_bytes().to_vec()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// gRPC messages (5-byte prefix) as gRPC-Web text, each encoded on its
    /// own as clients send them.
    fn web_text(messages: &[Vec<u8>]) -> Vec<u8> {
        messages
            .iter()
            .flat_map(|m| STANDARD.encode(m).into_bytes())
            .collect()
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&u32::try_from(payload.len()).expect("len").to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// The restaurant's annotated protos (tests/proto), compiled as a
    /// user's descriptor set would be.
    static DESCRIPTORS: LazyLock<Vec<u8>> = LazyLock::new(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut compiler = protox::Compiler::new([root.join("tests/proto"), root.join("proto")])
            .expect("includes");
        compiler
            .include_imports(true)
            .open_file("restaurant.proto")
            .expect("protos compile");
        compiler.encode_file_descriptor_set()
    });
    static POOL: LazyLock<prost_reflect::DescriptorPool> = LazyLock::new(|| {
        prost_reflect::DescriptorPool::decode(DESCRIPTORS.as_slice()).expect("descriptors")
    });
    static RESTAURANT: LazyLock<Transcoder> =
        LazyLock::new(|| Transcoder::from_bytes(&DESCRIPTORS).expect("bindings load"));

    /// An allowed origin, a wildcard one, a few methods and headers, with
    /// credentials (so the allowed origin is echoed, never `*`).
    static CORS: LazyLock<Cors> = LazyLock::new(|| {
        Cors::new(
            &["https://shop.example.com", "https://*.example.org"],
            &["PUT", "DELETE"],
            &["x-user", "content-type"],
            &["x-request-id"],
            Some(std::time::Duration::from_secs(600)),
            true,
        )
        .expect("cors")
    });

    proptest! {
        /// gRPC-Web text: messages each base64-encoded with its padding,
        /// line breaks between some, the whole cut anywhere: the gRPC body
        /// is the messages, byte for byte.
        #[test]
        fn grpc_web_text_decodes_whatever_its_chunks(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6),
            breaks in prop::collection::vec(any::<bool>(), 6),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut text = Vec::new();
            let mut want = Vec::new();
            for (p, br) in payloads.iter().zip(&breaks) {
                let m = framed(p);
                text.extend_from_slice(&web_text(std::slice::from_ref(&m)));
                if *br {
                    text.extend_from_slice(b"\r\n");
                }
                want.extend_from_slice(&m);
            }
            prop_assert_eq!(web_to_grpc("application/grpc-web-text", &text, &cuts), Ok(want));
        }

        /// Any text body, random or a valid one mutated, cut anywhere:
        /// decoded or refused, never a panic, never more bytes out than
        /// base64 carries. A binary body passes unchanged.
        #[test]
        fn any_grpc_web_body_decodes_or_is_refused(
            b in bytes_near(vec![
                web_text(&[framed(b"hello")]),
                web_text(&[framed(b""), framed(b"ab")]),
                [web_text(&[framed(b"x")]), b"\r\n".to_vec(), web_text(&[framed(b"yz")])].concat(),
            ]),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            if let Ok(out) = web_to_grpc("application/grpc-web-text+proto", &b, &cuts) {
                prop_assert!(out.len() <= b.len() / 4 * 3, "{} bytes from {}", out.len(), b.len());
            }
            prop_assert_eq!(web_to_grpc("application/grpc-web", &b, &cuts), Ok(b.clone()));
        }

        /// Any `content-type`: gRPC-Web or not; a gRPC-Web one becomes
        /// gRPC's, with `te: trailers`.
        #[test]
        fn any_content_type_is_grpc_web_or_not(b in bytes_near(vec![
            b"application/grpc-web".to_vec(),
            b"application/grpc-web-text+proto; charset=utf-8".to_vec(),
            b"Application/GRPC-WEB+json".to_vec(),
        ])) {
            let Ok(v) = HeaderValue::from_bytes(&b) else { return Ok(()) };
            let mut req = Request::new(());
            req.headers_mut().insert(CONTENT_TYPE, v);
            if let Some(e) = grpc_web::detect(req.headers()) {
                let out = grpc_web::into_grpc_request(req, e);
                let ct = out.headers()[CONTENT_TYPE].to_str().expect("visible ASCII");
                prop_assert!(ct.starts_with("application/grpc"), "{}", ct);
                prop_assert!(!ct.starts_with("application/grpc-web"), "{}", ct);
                prop_assert_eq!(&out.headers()[TE], "trailers");
            }
        }

        /// Whatever trailers a service sends, gRPC-Web's trailer frame
        /// carries them: flag 0x80, the length of what follows, and
        /// `name: value` lines that read back to the same trailers.
        #[test]
        fn grpc_web_trailer_frames_read_back(
            pairs in prop::collection::vec(("[a-z][a-z0-9-]{0,12}", "[!-~]([ -~]{0,22}[!-~])?"), 0..6),
        ) {
            let mut t = HeaderMap::new();
            for (n, v) in &pairs {
                t.append(
                    HeaderName::from_bytes(n.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                );
            }
            let frame = grpc_web::trailer_frame(&t);
            prop_assert_eq!(frame[0], 0x80);
            let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
            prop_assert_eq!(len, frame.len() - 5);
            let text = std::str::from_utf8(&frame[5..]).expect("ASCII");
            let mut read: Vec<(String, String)> = text
                .split_terminator("\r\n")
                .map(|l| {
                    let (n, v) = l.split_once(": ").expect("name: value");
                    (n.to_string(), v.to_string())
                })
                .collect();
            let mut sent: Vec<(String, String)> = t
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_str().expect("ASCII").to_string()))
                .collect();
            read.sort();
            sent.sort();
            prop_assert_eq!(read, sent);
        }

        /// Whatever forwarding headers and request id a client sends:
        /// untrusted, `X-Forwarded-For` is the client's address alone;
        /// trusted, one list ending with it; the request id returned is
        /// the request's, and one a log line can carry as it is.
        #[test]
        fn forwarding_headers_are_the_gateways(
            xff in bytes_near(vec![b"203.0.113.9, 10.0.0.1".to_vec(), b"[2001:db8::1]:443".to_vec()]),
            fwd in bytes_near(vec![b"for=192.0.2.60;proto=http;by=203.0.113.43".to_vec(), b"for=\"[2001:db8:cafe::17]:4711\"".to_vec()]),
            host in bytes_near(vec![b"shop.example.com:8443".to_vec(), b"[::1]:80".to_vec()]),
            id in bytes_near(vec![b"f81d4fae-7dec-11d0-a765-00a0c91e6bf6".to_vec()]),
            twice in any::<bool>(),
            ip in any::<[u8; 16]>(),
            v4 in any::<bool>(),
            tls in any::<bool>(),
            trust_forwarded in any::<bool>(),
            full in any::<bool>(),
        ) {
            let client = if v4 { IpAddr::from([ip[0], ip[1], ip[2], ip[3]]) } else { IpAddr::from(ip) };
            let mut req = Request::new(());
            for (name, v) in [(X_FORWARDED_FOR, &xff), (FORWARDED, &fwd), (X_FORWARDED_HOST, &host), (HOST, &host), (X_REQUEST_ID, &id)] {
                if let Ok(v) = HeaderValue::from_bytes(v) {
                    if twice {
                        req.headers_mut().append(name.clone(), v.clone());
                    }
                    req.headers_mut().append(name, v);
                }
            }
            let how = Forwarding { trust_forwarded, full };
            let id = forwarded::apply(&mut req, &Origin::new(client, tls), how);
            let h = req.headers();
            prop_assert_eq!(h.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(), vec![&id]);
            prop_assert!((1..=128).contains(&id.len()), "{:?}", id);
            prop_assert!(id.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b)), "{:?}", id);
            let me = client.to_canonical().to_string();
            let xff: Vec<_> = h.get_all(X_FORWARDED_FOR).iter().collect();
            prop_assert_eq!(xff.len(), 1, "one list: {:?}", xff);
            let list = xff[0].to_str().expect("ASCII");
            if trust_forwarded {
                prop_assert!(list == me || list.ends_with(&format!(", {me}")), "{} for {}", list, me);
            } else {
                prop_assert_eq!(list, me.as_str());
                prop_assert_eq!(h.get_all(FORWARDED).iter().count(), usize::from(full));
            }
        }

        /// Any preflight: answered only when it is one (OPTIONS, `Origin`,
        /// `Access-Control-Request-Method`); allowed, the origin is echoed
        /// and is one the policy names; refused, no allow headers at all.
        /// An actual response is decorated for allowed origins only.
        #[test]
        fn cors_answers_only_what_it_allows(
            options in any::<bool>(),
            origin in proptest::option::of(bytes_near(vec![
                b"https://shop.example.com".to_vec(),
                b"https://menu.example.org".to_vec(),
                b"http://a.b.example.org".to_vec(),
            ])),
            method in proptest::option::of(bytes_near(vec![b"PUT".to_vec(), b"PATCH".to_vec()])),
            requested in proptest::option::of(bytes_near(vec![b"x-user, Content-Type".to_vec(), b"x-other".to_vec()])),
        ) {
            let mut req = Request::new(());
            if options {
                *req.method_mut() = Method::OPTIONS;
            }
            let header = |b: &Option<Vec<u8>>| b.as_ref().and_then(|b| HeaderValue::from_bytes(b).ok());
            let origin = header(&origin);
            for (name, v) in [(ORIGIN, &origin), (ACCESS_CONTROL_REQUEST_METHOD, &header(&method)), (ACCESS_CONTROL_REQUEST_HEADERS, &header(&requested))] {
                if let Some(v) = v {
                    req.headers_mut().insert(name, v.clone());
                }
            }
            let is_preflight = options
                && req.headers().contains_key(ORIGIN)
                && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD);
            let allowed = |o: &HeaderValue| o.to_str().is_ok_and(|o| CORS.allows_origin(o));
            match cors::preflight(&CORS, &req) {
                None => prop_assert!(!is_preflight),
                Some(resp) => {
                    prop_assert!(is_preflight);
                    let echoed = resp.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN);
                    if resp.status() == StatusCode::NO_CONTENT {
                        prop_assert_eq!(echoed, origin.as_ref());
                        prop_assert!(origin.as_ref().is_some_and(allowed));
                    } else {
                        prop_assert_eq!(resp.status(), StatusCode::FORBIDDEN);
                        prop_assert!(echoed.is_none());
                    }
                }
            }
            let mut out = HeaderMap::new();
            out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
            cors::decorate(&CORS, origin.as_ref(), &mut out);
            match out.get(ACCESS_CONTROL_ALLOW_ORIGIN) {
                Some(o) => prop_assert!(Some(o) == origin.as_ref() && allowed(o)),
                None => prop_assert!(!origin.as_ref().is_some_and(allowed)),
            }
        }

        /// What a wildcard origin allows is that scheme and a host name
        /// under it: nothing with a path, user or port smuggled in.
        #[test]
        fn a_wildcard_origin_allows_only_hosts_under_it(o in bytes_near(vec![
            b"https://menu.example.org".to_vec(),
            b"https://a.b.example.org".to_vec(),
        ])) {
            let Ok(o) = std::str::from_utf8(&o) else { return Ok(()) };
            if CORS.allows_origin(o) && !o.eq_ignore_ascii_case("https://shop.example.com") {
                let lower = o.to_ascii_lowercase();
                let host = lower.strip_prefix("https://");
                let label = |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                prop_assert!(host.is_some_and(|h| h.ends_with(".example.org") && h.split('.').all(label)), "{}", o);
            }
        }

        /// Any REST call near the restaurant's bindings: routed unchanged,
        /// transcoded into one gRPC message of the method's input type, or
        /// refused as the client's error (400) — never a panic or an
        /// error of the gateway's own.
        #[test]
        fn rest_calls_transcode_or_are_the_clients_error(
            method in prop::sample::select(vec![Method::GET, Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::HEAD]),
            path in bytes_near(vec![
                b"/api/orders/42".to_vec(), b"/api/orders/a%2Fb:cancel".to_vec(),
                b"/api/users/7/orders/9".to_vec(), b"/api/shops/s1/dishes/soup".to_vec(),
                b"/api/files/menus/2024/winter.pdf".to_vec(), b"/api/orders:watch".to_vec(),
            ]),
            query in proptest::option::of(bytes_near(vec![
                b"userId=1&page.size=2&tags=a&tags=b&statuses=PAID".to_vec(),
                b"since=2024-01-01T00:00:00Z&paid=true&reason=late%20again".to_vec(),
                b"withPrice=true&x=%zz".to_vec(),
            ])),
            body in bytes_near(vec![
                br#"{"user_id": 7, "items": ["soup"], "note": "\u00e9"}"#.to_vec(),
                br#"{"id": "42", "total": "1250", "createdAt": "2024-01-01T00:00:00Z"}"#.to_vec(),
                b"[1, 2, {\"a\": null}]".to_vec(),
            ]),
        ) {
            let (Ok(path), Ok(query)) = (String::from_utf8(path), query.map(String::from_utf8).transpose()) else {
                return Ok(());
            };
            match RESTAURANT.request(&method, &path, query.as_deref(), &body) {
                Ok(None) => {}
                Ok(Some(t)) => {
                    let m = &t.message;
                    let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
                    prop_assert_eq!((m[0], len), (0, m.len() - 5));
                    let (service, name) = t.grpc_path()[1..].split_once('/').expect("/service/method");
                    let input = POOL
                        .get_service_by_name(service)
                        .and_then(|s| s.methods().find(|m| m.name() == name))
                        .expect("the binding's method")
                        .input();
                    prop_assert!(prost_reflect::DynamicMessage::decode(input, &m[5..]).is_ok());
                }
                Err(e) => {
                    prop_assert!(e.is_client_error(), "{}", e);
                    prop_assert_eq!(e.to_http().0, StatusCode::BAD_REQUEST);
                }
            }
        }

        /// Whatever a service answers a transcoded call with (random or
        /// mutated messages, any status and message): a REST answer with
        /// a JSON body, never a panic.
        #[test]
        fn any_grpc_answer_renders_as_json(
            body in bytes_near(vec![framed(b"\x0a\x02id\x10\x07"), [framed(b"\x0a\x01a"), framed(b"\x0a\x01b")].concat()]),
            code in 0..20u16,
            message in ".{0,40}",
            which in any::<prop::sample::Index>(),
        ) {
            let bindings: Vec<_> = RESTAURANT.bindings().collect();
            let binding = which.get(&bindings);
            let (status, json) = RESTAURANT.response(binding, GrpcCode::lenient(code), &message, &body);
            prop_assert!(status.as_u16() >= 200 && status.as_u16() < 600);
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&json).is_ok(), "{:?}", json);
        }
    }

    proptest! {
        #![proptest_config(super::file_cases())]

        /// The operator's descriptor set, mutated: loaded or refused with
        /// an error, never a panic.
        #[test]
        fn descriptor_sets_load_or_are_refused(e in edits(8)) {
            let _ = Transcoder::from_bytes(&mutate(&DESCRIPTORS, &e));
        }
    }
}
