//! Property tests of everything in the control plane that a sidecar, an
//! admin or a file reaches, fed random input and mutations of valid input
//! (`weft_proto::mutate`): CSRs at the CA, the CA's own files, join tokens,
//! discovery stream messages, Admin.Apply resources and YAML files. Each
//! is accepted or refused with a clear error, never a panic; what parses
//! prints back and converts to the wire and back to the same resources.
//!
//! `PROPTEST_CASES=100000 cargo test -p weft-control-plane --test properties`
//! runs more cases than CI's default (256; 64 for CSRs, which sign).

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use prost::Message;
use weft_control_plane::api::convert::{
    record_from_proto, registration_from_hello, resources_from_proto,
};
use weft_control_plane::auth::{TokenBook, TokenRecord};
use weft_control_plane::ca::{Ca, CaSource};
use weft_control_plane::catalog::{Catalog, CatalogConfig, MAX_REPORTED_TEXT, TrafficReport, clip};
use weft_control_plane::resource::route::check_routes;
use weft_control_plane::resource::{
    Resource, check_unique_addresses, parse_documents, to_yaml_documents,
};
use weft_proto::identity::{JoinToken, SpiffeId};
use weft_proto::mutate::{OPS, mutate};
use weft_proto::v1 as pb;

const MESH: &str = include_str!("../../examples/mesh.yaml");
const RESTAURANT: &str = include_str!("../../deploy/kubernetes/mesh/restaurant.yaml");

fn edits(n: usize) -> impl Strategy<Value = Vec<(u8, usize, u8)>> {
    prop::collection::vec((0..OPS, any::<usize>(), any::<u8>()), 0..n)
}

fn bytes_near(valid: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        (prop::sample::select(valid), edits(8)).prop_map(|(v, e)| mutate(&v, &e)),
    ]
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
    ProptestConfig::with_cases(cases)
}

/// One CA for every case (creating one costs a key generation).
fn ca() -> &'static Ca {
    static CA: OnceLock<(tempfile::TempDir, Ca)> = OnceLock::new();
    &CA.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::load_or_create(
            &CaSource::DataDir(dir.path().to_path_buf()),
            "weft.local",
            Duration::from_secs(3600),
        )
        .expect("ca");
        (dir, ca)
    })
    .1
}

fn csr(id: &str) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().expect("uri"))];
    params.serialize_request(&key).expect("csr").der().to_vec()
}

fn valid_resources() -> Vec<Resource> {
    let mut all = parse_documents(MESH).expect("examples/mesh.yaml is valid");
    all.extend(parse_documents(RESTAURANT).expect("restaurant.yaml is valid"));
    all
}

/// Whatever the control plane accepted: prints back, converts to the wire
/// and back, and goes through the checks Admin.Apply makes and into a
/// catalog whose views of every service can be built.
fn accepted(rs: &[Resource]) -> Result<(), TestCaseError> {
    let printed = to_yaml_documents(rs);
    let reparsed = parse_documents(&printed).ok();
    prop_assert_eq!(reparsed.as_deref(), Some(rs), "printed:\n{}", printed);
    let wire: Vec<pb::Resource> = rs.iter().map(pb::Resource::from).collect();
    prop_assert_eq!(resources_from_proto(&wire).ok(), Some(rs.to_vec()));
    if check_routes(rs, &[], &BTreeSet::new()).is_ok() && check_unique_addresses(rs, &[]).is_ok() {
        let catalog = Catalog::in_memory(CatalogConfig::default());
        catalog.apply(rs);
        let names: BTreeSet<_> = rs.iter().map(|r| r.name().clone()).collect();
        let (_, views) = catalog.views_since(&names, &HashMap::new());
        prop_assert_eq!(views.len(), names.len());
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(64))]

    /// Random DER and mutated valid CSRs: refused with an error (or, when
    /// the mutation left the CSR intact, signed), never a panic.
    #[test]
    fn csrs_are_signed_or_refused(b in bytes_near(vec![csr("spiffe://weft.local/service/fuzz")])) {
        let allowed = SpiffeId::service("weft.local", "fuzz");
        match ca().issue(&b, &allowed) {
            Ok((cert, _)) => {
                let info = weft_proto::identity::CertInfo::parse(&cert).expect("our own certificate");
                prop_assert_eq!(info.spiffe_id(), Some(allowed));
            }
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    /// The CA's certificate, key and trust-bundle files mutated: loaded or
    /// refused naming the file.
    #[test]
    fn ca_files_load_or_name_the_file(which in 0..3usize, e in edits(8)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let _ = Ca::load_or_create(&CaSource::DataDir(dir.path().to_path_buf()), "weft.local", Duration::from_secs(60)).expect("ca");
        let cert = dir.path().join("ca.crt");
        let key = dir.path().join("ca.key");
        let bundle = dir.path().join("bundle.pem");
        std::fs::copy(&cert, &bundle).expect("copy");
        let path = [&cert, &key, &bundle][which];
        let original = std::fs::read(path).expect("read");
        std::fs::write(path, mutate(&original, &e)).expect("write");
        let source = CaSource::Files { cert: cert.clone(), key: key.clone() };
        match Ca::load_or_create(&source, "weft.local", Duration::from_secs(60)) {
            Ok(ca) => {
                if let Err(err) = ca.trust_bundle(&bundle) {
                    prop_assert!(err.to_string().contains("bundle.pem"), "{}", err);
                }
            }
            Err(err) => prop_assert!(err.to_string().contains("ca."), "{}", err),
        }
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn join_tokens_admit_or_refuse(s in prop_oneof![
        any::<String>(),
        edits(6).prop_map(|e| String::from_utf8_lossy(&mutate(good_token().encode().as_bytes(), &e)).into_owned()),
    ]) {
        let book = TokenBook::new(vec![("abc".into(), TokenRecord::new("users", "s3cret", Duration::from_secs(60)))]);
        if let Ok(service) = book.admit(&s, SystemTime::now()) {
            // Only the real secret admits.
            prop_assert_eq!(service, "users");
            prop_assert_eq!(JoinToken::decode(&s).map(|t| t.secret), Some("s3cret".to_string()));
        }
    }

    /// Messages of a discovery stream, random and mutated: a hello is
    /// validated into a registration or refused; the rest are read the way
    /// the stream reads them.
    #[test]
    fn discovery_messages_are_validated(b in bytes_near(sidecar_messages())) {
        use pb::sidecar_message::Kind;
        let Ok(m) = pb::SidecarMessage::decode(b.as_slice()) else { return Ok(()) };
        match m.kind {
            Some(Kind::Hello(h)) => {
                if let Ok((reg, wanted)) = registration_from_hello(&h) {
                    prop_assert_eq!(reg.service.as_str(), h.service.as_str());
                    prop_assert!(wanted.len() <= h.upstreams.len());
                }
                if let Some(r) = &h.resume {
                    let _ = weft_proto::resume::Claimed::from(r);
                }
            }
            Some(Kind::Stats(s)) => { let _ = TrafficReport::try_from(&s); }
            Some(Kind::Nack(n)) => prop_assert!(clip(n.reason, MAX_REPORTED_TEXT).len() <= MAX_REPORTED_TEXT + 3),
            Some(Kind::Health(h)) => { let _ = clip(h.detail, MAX_REPORTED_TEXT); }
            _ => {}
        }
    }

    /// Admin.Apply's resources and external instances from the wire.
    #[test]
    fn applied_messages_are_validated(b in bytes_near(apply_requests())) {
        if let Ok(req) = pb::ApplyRequest::decode(b.as_slice())
            && let Ok(rs) = resources_from_proto(&req.resources)
            // Admin.Apply refuses an empty request before anything else.
            && !rs.is_empty()
        {
            accepted(&rs)?;
        }
        if let Ok(info) = pb::InstanceInfo::decode(b.as_slice()) {
            let _ = record_from_proto(&info);
        }
    }

    /// `weftctl apply -f`: random and mutated valid YAML files.
    #[test]
    fn yaml_files_parse_or_name_the_field(b in bytes_near(vec![MESH.as_bytes().to_vec(), RESTAURANT.as_bytes().to_vec()])) {
        let text = String::from_utf8_lossy(&b);
        match parse_documents(&text) {
            Ok(rs) => accepted(&rs)?,
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }
}

fn good_token() -> JoinToken {
    JoinToken {
        td: "weft.local".into(),
        id: "abc".into(),
        secret: "s3cret".into(),
        ca: "ff".into(),
    }
}

fn sidecar_messages() -> Vec<Vec<u8>> {
    use pb::sidecar_message::Kind;
    let m = |k| pb::SidecarMessage { kind: Some(k) }.encode_to_vec();
    vec![
        m(Kind::Hello(pb::Hello {
            service: "users".into(),
            instance_id: "users-1".into(),
            address: "127.0.0.1:15006".into(),
            protocol: pb::Protocol::Grpc as i32,
            health: pb::Health::Healthy as i32,
            upstreams: vec!["orders".into(), "email".into()],
            labels: [("version".to_string(), "v2".to_string())].into(),
            sidecar_version: "0.1.0".into(),
            resume: Some(pb::Resume {
                services: vec![pb::ServiceDigest {
                    name: "orders".into(),
                    digest: vec![1; 32],
                }],
                roots: vec![2; 32],
                addresses: vec![3; 32],
            }),
            ..Default::default()
        })),
        m(Kind::Stats(pb::TrafficStats {
            requests: 10,
            failures: 1,
            latency_buckets: vec![1; weft_proto::stats::BUCKETS],
            upstreams: vec![pb::UpstreamTraffic {
                service: "users".into(),
                requests: 4,
                failures: 0,
                latency_buckets: vec![4; weft_proto::stats::BUCKETS],
            }],
            routes: vec![pb::RouteTraffic {
                route: "/a.B/C".into(),
                requests: 10,
                failures: 1,
            }],
            ..Default::default()
        })),
        m(Kind::Nack(pb::Nack {
            version: 3,
            reason: "é".repeat(600),
        })),
        m(Kind::Subscribe(pb::Subscribe {
            services: vec!["a".into(), "b".into()],
        })),
    ]
}

fn apply_requests() -> Vec<Vec<u8>> {
    let resources: Vec<pb::Resource> = valid_resources().iter().map(pb::Resource::from).collect();
    let mut v: Vec<Vec<u8>> = resources
        .iter()
        .map(|r| {
            pb::ApplyRequest {
                resources: vec![r.clone()],
                dry_run: false,
            }
            .encode_to_vec()
        })
        .collect();
    v.push(
        pb::ApplyRequest {
            resources,
            dry_run: true,
        }
        .encode_to_vec(),
    );
    v.push(
        pb::InstanceInfo {
            service: "db".into(),
            instance_id: "db-1".into(),
            address: "10.0.0.9:5432".into(),
            ..Default::default()
        }
        .encode_to_vec(),
    );
    v
}

#[test]
fn the_valid_inputs_are_valid() {
    let rs = valid_resources();
    assert!(rs.len() >= 9);
    let allowed = SpiffeId::service("weft.local", "fuzz");
    assert!(ca().issue(&csr(&allowed.to_string()), &allowed).is_ok());
    let book = TokenBook::new(vec![(
        "abc".into(),
        TokenRecord::new("users", "s3cret", Duration::from_secs(60)),
    )]);
    assert_eq!(
        book.admit(&good_token().encode(), SystemTime::now())
            .as_deref(),
        Ok("users")
    );
}
