//! Property tests of every parser in the sidecar that a peer, the control
//! plane or a user's file reaches, fed random input and mutations of valid
//! input (`weft_proto::mutate`): protocol detection, `grpc-timeout`,
//! `traceparent` / `tracestate`, discovery updates, the static mesh file
//! and certificate files. Each returns a value or an error and never
//! panics; what it accepts prints back where the format allows.
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
