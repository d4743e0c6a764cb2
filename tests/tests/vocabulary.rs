//! The sidecar and the control plane accept exactly the same words: each
//! name, label, instance id, address, protocol, load balancer, retry
//! condition and gRPC method pattern below goes through the sidecar's parsing (flags, static file,
//! or a policy pushed to it) and through the control plane's validation of
//! resources and of a sidecar's `Hello`, and all must agree with the
//! expected answer. A sidecar can then never start with a value its
//! control plane will refuse.

use clap::Parser;
use serde_json::json;
use weft_control_plane::api::convert::registration_from_hello;
use weft_control_plane::resource::parse_documents;
use weft_proto::identity::{JoinToken, SpiffeId};
use weft_proto::v1 as pb;
use weft_sidecar::config::{Args, parse_static};

/// Flag parsing of a sidecar that joins a control plane, with `extra`
/// flags (as `--flag=value`, so values starting with `-` stay values).
struct Sidecar {
    _dir: tempfile::TempDir,
    token: String,
}

impl Sidecar {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = JoinToken {
            td: "weft.local".into(),
            id: "1".into(),
            secret: "2".into(),
            ca: "ff".into(),
        };
        let path = dir.path().join("token");
        std::fs::write(&path, token.encode()).expect("write the token");
        Sidecar {
            token: path.display().to_string(),
            _dir: dir,
        }
    }

    /// Whether the sidecar starts with these flags; `service` replaces the
    /// default `--service`.
    fn accepts(&self, service: &str, extra: &[String]) -> Result<(), String> {
        let mut argv = vec![
            "weft-sidecar".to_string(),
            format!("--service={service}"),
            "--control-plane=https://127.0.0.1:15012".into(),
            "--inbound=127.0.0.1:0".into(),
            format!("--token-file={}", self.token),
        ];
        argv.extend_from_slice(extra);
        let args = Args::try_parse_from(&argv).map_err(|e| e.to_string())?;
        args.into_config().map(|_| ()).map_err(|e| e.to_string())
    }
}

/// A `Hello` the control plane accepts, changed by `f`.
fn hello(f: impl FnOnce(&mut pb::Hello)) -> Result<(), String> {
    let mut h = pb::Hello {
        service: "a".into(),
        instance_id: "a-1".into(),
        address: "127.0.0.1:15006".into(),
        ..Default::default()
    };
    f(&mut h);
    registration_from_hello(&h)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether the control plane accepts this YAML (written as JSON, which is
/// YAML too, so that no value needs quoting by hand).
fn resource(doc: serde_json::Value) -> Result<(), String> {
    parse_documents(&doc.to_string())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Whether the sidecar takes a static mesh file (`--config`) listing this
/// one service.
fn static_file(service: serde_json::Value) -> Result<(), String> {
    parse_static(&json!({"services": [service]}).to_string())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn service(name: &str, spec: serde_json::Value) -> serde_json::Value {
    json!({"apiVersion": "weft.dev/v1", "kind": "Service", "metadata": {"name": name}, "spec": spec})
}

/// Asserts that every check gave `want` for `input`.
fn agree(what: &str, input: &str, want: bool, checks: &[(&str, Result<(), String>)]) {
    for (by, got) in checks {
        assert_eq!(
            got.is_ok(),
            want,
            "{what} {input:?}: {by} says {got:?}, expected {}",
            if want { "accepted" } else { "refused" }
        );
    }
}

#[test]
fn service_names_are_judged_alike() {
    let sidecar = Sidecar::new();
    let longest = ["a"; 127].join(".");
    let too_long = ["a"; 128].join(".");
    let label63 = "a".repeat(63);
    let label64 = "a".repeat(64);
    let cases: &[(&str, bool)] = &[
        ("a", true),
        ("user-service", true),
        ("user-service.prod", true),
        ("0abc", true),
        ("127.0.0.1", true),
        (&label63, true),
        (&longest, true),
        ("", false),
        ("User", false),
        ("-a", false),
        ("a-", false),
        ("a..b", false),
        (".a", false),
        ("a_b", false),
        ("a b", false),
        ("a/b", false),
        ("é", false),
        (&label64, false),
        (&too_long, false),
    ];
    for &(name, want) in cases {
        agree(
            "service name",
            name,
            want,
            &[
                ("sidecar --service", sidecar.accepts(name, &[])),
                (
                    "sidecar --upstream",
                    sidecar.accepts("a", &[format!("--upstream={name}=127.0.0.1:0")]),
                ),
                ("static file name", static_file(json!({"name": name}))),
                ("Service metadata.name", resource(service(name, json!({})))),
                ("Hello.service", hello(|h| h.service = name.into())),
                (
                    "Hello.upstreams",
                    hello(|h| h.upstreams = vec![name.into()]),
                ),
                (
                    "SPIFFE ID",
                    SpiffeId::parse(&format!("spiffe://weft.local/service/{name}"))
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                ),
            ],
        );
    }
}

#[test]
fn labels_are_judged_alike() {
    let sidecar = Sidecar::new();
    let key63 = format!("{}=v", "k".repeat(63));
    let key64 = format!("{}=v", "k".repeat(64));
    let value63 = format!("k={}", "v".repeat(63));
    let value64 = format!("k={}", "v".repeat(64));
    let cases: &[(&str, bool)] = &[
        ("version=v2", true),
        ("app.kubernetes.io/name=web", true),
        ("tier=", true),
        ("a=A-b_c.9", true),
        ("9_=x", true),
        (&key63, true),
        (&value63, true),
        // The sidecar took these before there was one rule.
        ("_a=b", false),
        ("/a=b", false),
        (".a=b", false),
        ("-a=b", false),
        ("=v", false),
        ("bad key=x", false),
        ("é=x", false),
        ("k=bad value", false),
        ("k=a/b", false),
        ("k=a=b", false),
        ("k=é", false),
        (&key64, false),
        (&value64, false),
    ];
    for &(label, want) in cases {
        let (k, v) = label.split_once('=').expect("cases are key=value");
        let subset = json!({"subsets": [{"name": "s", "labels": {k: v}}]});
        agree(
            "label",
            label,
            want,
            &[
                (
                    "sidecar --label",
                    sidecar.accepts("a", &[format!("--label={label}")]),
                ),
                (
                    "static file endpoint labels",
                    static_file(json!({"name": "a", "endpoints": [
                        {"address": "127.0.0.1:1", "labels": {k: v}}
                    ]})),
                ),
                ("Service subset labels", resource(service("a", subset))),
                (
                    "Hello.labels",
                    hello(|h| {
                        h.labels.insert(k.into(), v.into());
                    }),
                ),
            ],
        );
    }
    assert!(
        sidecar.accepts("a", &["--label=x".into()]).is_err(),
        "a label needs key=value"
    );
}

#[test]
fn instance_ids_are_judged_alike() {
    let sidecar = Sidecar::new();
    let longest = "i".repeat(253);
    let too_long = "i".repeat(254);
    let cases: &[(&str, bool)] = &[
        ("a-1", true),
        ("10.0.0.5:15006", true),
        ("pod/abc_1", true),
        ("Upper.Case", true),
        (&longest, true),
        ("", false),
        ("has space", false),
        ("tab\tin", false),
        ("é", false),
        (&too_long, false),
    ];
    for &(id, want) in cases {
        agree(
            "instance id",
            id,
            want,
            &[
                (
                    "sidecar --instance-id",
                    sidecar.accepts("a", &[format!("--instance-id={id}")]),
                ),
                ("Hello.instance_id", hello(|h| h.instance_id = id.into())),
            ],
        );
    }
}

#[test]
fn advertised_addresses_are_judged_alike() {
    let sidecar = Sidecar::new();
    let cases: &[(&str, bool)] = &[
        ("127.0.0.1:15006", true),
        ("[::1]:80", true),
        ("user-1.mesh:15006", true),
        ("127.0.0.1", false),
        ("127.0.0.1:0", false),
        ("nohost", false),
        ("host:x", false),
        ("host:70000", false),
        (":80", false),
        ("Bad_Host:80", false),
    ];
    for &(addr, want) in cases {
        agree(
            "address",
            addr,
            want,
            &[
                (
                    "sidecar --advertise",
                    sidecar.accepts("a", &[format!("--advertise={addr}")]),
                ),
                (
                    "static file endpoint address",
                    static_file(json!({"name": "a", "endpoints": [{"address": addr}]})),
                ),
                ("Hello.address", hello(|h| h.address = addr.into())),
            ],
        );
    }
}

#[test]
fn protocols_are_judged_alike() {
    let sidecar = Sidecar::new();
    let cases: &[(&str, bool)] = &[
        ("grpc", true),
        ("http", true),
        ("tcp", true),
        ("udp", false),
        ("GRPC", false),
        ("", false),
    ];
    for &(protocol, want) in cases {
        agree(
            "protocol",
            protocol,
            want,
            &[
                (
                    "sidecar --protocol",
                    sidecar.accepts("a", &[format!("--protocol={protocol}")]),
                ),
                (
                    "static file protocol",
                    static_file(json!({"name": "a", "protocol": protocol})),
                ),
                (
                    "Service spec.protocol",
                    resource(service("a", json!({"protocol": protocol}))),
                ),
            ],
        );
    }
}

#[test]
fn load_balancers_are_judged_alike() {
    let cases: &[(&str, bool)] = &[
        ("p2c-ewma", true),
        ("round-robin", true),
        ("random", false),
        ("Round-Robin", false),
        ("", false),
    ];
    for &(lb, want) in cases {
        agree(
            "load balancer",
            lb,
            want,
            &[
                (
                    "static file loadBalancer",
                    static_file(json!({"name": "a", "loadBalancer": lb})),
                ),
                (
                    "Service spec.loadBalancer",
                    resource(service("a", json!({"loadBalancer": lb}))),
                ),
            ],
        );
    }
}

/// Whether the sidecar applies a pushed policy for service `a`.
fn pushed(policy: pb::ServiceSpec) -> Result<(), String> {
    weft_sidecar::discovery::convert_update(&pb::DiscoveryUpdate {
        services: vec![pb::ServiceUpdate {
            name: "a".into(),
            known: true,
            policy: Some(pb::ServiceSpec {
                name: "a".into(),
                ..policy
            }),
            ..Default::default()
        }],
        ..Default::default()
    })
    .map(|_| ())
    .map_err(|e| e.to_string())
}

#[test]
fn retry_conditions_are_judged_alike() {
    let cases: &[(&str, bool)] = &[
        ("unavailable", true),
        ("cancelled", true),
        ("resource-exhausted", true),
        ("deadline-exceeded", true),
        ("internal", true),
        ("5xx", true),
        ("gateway-error", true),
        ("connect-failure", true),
        ("refused-stream", true),
        ("reset", true),
        ("never", false),
        ("Unavailable", false),
        ("unknown", false),
        ("", false),
    ];
    for &(condition, want) in cases {
        agree(
            "retry condition",
            condition,
            want,
            &[
                (
                    "Service spec.retries.on",
                    resource(service("a", json!({"retries": {"on": [condition]}}))),
                ),
                (
                    "sidecar applying a pushed policy",
                    pushed(pb::ServiceSpec {
                        retry: Some(pb::RetryPolicy {
                            on: vec![condition.into()],
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                ),
            ],
        );
    }
}

#[test]
fn method_patterns_are_judged_alike() {
    let cases: &[(&str, bool)] = &[
        ("*", true),
        ("/users.v1.Users/GetUser", true),
        ("/users.v1.Users/*", true),
        ("/*.Users/Get*", true),
        ("/u.Users/Get_User2", true),
        ("", false),
        ("GetUser", false),
        ("/users.v1.Users", false),
        ("/a/b/c", false),
        ("/users-v1.Users/Get", false),
        ("/u.Users/Get User", false),
    ];
    for &(method, want) in cases {
        let policy = json!({"apiVersion": "weft.dev/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": "p"},
            "spec": {"service": "a", "rules": [{"from": ["b"], "grpcMethods": [method]}]}});
        let inbound = pb::DiscoveryUpdate {
            services: vec![pb::ServiceUpdate {
                name: "a".into(),
                inbound: Some(pb::InboundPolicy {
                    authorization: true,
                    rules: vec![pb::AuthorizationRule {
                        from: vec!["b".into()],
                        grpc_methods: vec![method.into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        agree(
            "method pattern",
            method,
            want,
            &[
                ("AuthorizationPolicy grpcMethods", resource(policy)),
                (
                    "Service spec.hedging.grpcMethods",
                    resource(service("a", json!({"hedging": {"grpcMethods": [method]}}))),
                ),
                (
                    "sidecar applying a pushed inbound policy",
                    weft_sidecar::discovery::convert_update(&inbound)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                ),
                (
                    "sidecar applying a pushed hedging policy",
                    pushed(pb::ServiceSpec {
                        hedge: Some(pb::HedgePolicy {
                            grpc_methods: vec![method.into()],
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                ),
            ],
        );
    }
}
