//! The flags as a user writes them: good ones become the config, and each
//! bad one is refused naming its flag.

use clap::Parser;
use weft_proto::protocol::Protocol;

use super::Args;
use crate::config::{SidecarConfig, Source};

fn parse(args: &[&str]) -> Result<SidecarConfig, String> {
    let mut v = vec!["weft-sidecar"];
    v.extend_from_slice(args);
    Args::try_parse_from(v)
        .map_err(|e| e.to_string())?
        .into_config()
        .map_err(|e| e.to_string())
}

/// A sidecar that joins a control plane with the token in `token`, and
/// `extra` flags.
fn parse_joined(token: &str, extra: &[&str]) -> Result<SidecarConfig, String> {
    let mut v = vec![
        "--service",
        "a",
        "--control-plane",
        "https://x:1",
        "--inbound",
        "127.0.0.1:0",
        "--token-file",
        token,
    ];
    v.extend_from_slice(extra);
    parse(&v)
}

/// A token file with a well-formed token.
fn token_file(dir: &std::path::Path) -> String {
    let t = weft_proto::identity::JoinToken {
        td: "weft.local".into(),
        id: "1".into(),
        secret: "2".into(),
        ca: "ff".into(),
    };
    let path = dir.join("token");
    std::fs::write(&path, t.encode()).expect("write");
    path.display().to_string()
}

#[test]
fn good_flags() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let c = parse(&[
        "--service",
        "order-service",
        "--control-plane",
        "https://127.0.0.1:15012",
        "--token-file",
        &token,
        "--inbound",
        "127.0.0.1:0",
        "--upstream",
        "user-service=127.0.0.1:9001",
        "--label",
        "version=v2",
        "--protocol",
        "http",
    ])
    .expect("valid");
    assert_eq!(c.service.as_str(), "order-service");
    assert_eq!(c.upstreams[0].service.as_str(), "user-service");
    assert_eq!(c.labels.get("version").map(String::as_str), Some("v2"));
    assert_eq!(c.protocol, Protocol::Http);
    assert!(c.instance_id.starts_with("order-service-"));
    assert!(matches!(&c.source, Source::ControlPlane(join) if join.token.starts_with("weft1.")));
    assert!(c.tracing.is_none(), "no endpoint, no tracing");
    let c = parse_joined(
        &token,
        &[
            "--otlp-endpoint",
            "http://collector:4317",
            "--trace-sampling",
            "0.25",
            "--access-log",
        ],
    )
    .expect("valid");
    let t = c.tracing.expect("tracing configured");
    assert_eq!(t.endpoint.to_string(), "http://collector:4317/");
    assert_eq!(t.sampling, 0.25);
    assert_eq!(t.queue, 2048);
    assert!(c.access_log);
}

/// A self-signed certificate and its key, PEM, written to `dir`.
fn cert_pair(dir: &std::path::Path, name: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["sidecar".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (c, k) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, weft_proto::identity::pem("CERTIFICATE", cert.der())).expect("write");
    std::fs::write(
        &k,
        weft_proto::identity::pem("PRIVATE KEY", &key.serialize_der()),
    )
    .expect("write");
    (c.display().to_string(), k.display().to_string())
}

#[test]
fn a_client_certificate_for_the_collector_is_checked_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let (cert, key) = cert_pair(dir.path(), "a");
    let (_, other_key) = cert_pair(dir.path(), "b");
    let ca = cert.clone();
    let with = |endpoint: &str, extra: &[&str]| {
        let mut v = vec!["--otlp-endpoint", endpoint, "--otlp-ca-file", &ca];
        v.extend_from_slice(extra);
        parse_joined(&token, &v)
    };
    let c = with(
        "https://x:4317",
        &["--otlp-cert-file", &cert, "--otlp-key-file", &key],
    )
    .expect("valid pair");
    let id = c.tracing.and_then(|t| t.client_identity).expect("identity");
    assert!(String::from_utf8_lossy(&id.chain).contains("BEGIN CERTIFICATE"));
    assert!(
        !format!("{id:?}").contains("PRIVATE"),
        "the key is not printed"
    );

    let fails = |endpoint: &str, extra: &[&str], want: &[&str]| {
        let e = with(endpoint, extra).expect_err("must fail");
        for w in want {
            assert!(e.contains(w), "{extra:?}: want {w:?} in {e}");
        }
    };
    fails(
        "https://x:4317",
        &["--otlp-cert-file", &cert],
        &["--otlp-key-file"],
    );
    fails(
        "https://x:4317",
        &["--otlp-key-file", &key],
        &["--otlp-cert-file"],
    );
    fails(
        "http://x:4317",
        &["--otlp-cert-file", &cert, "--otlp-key-file", &key],
        &["--otlp-cert-file", "https"],
    );
    fails(
        "https://x:4317",
        &[
            "--otlp-cert-file",
            "/nonexistent.crt",
            "--otlp-key-file",
            &key,
        ],
        &["--otlp-cert-file", "/nonexistent.crt"],
    );
    fails(
        "https://x:4317",
        &["--otlp-cert-file", &key, "--otlp-key-file", &key],
        &["--otlp-cert-file", "CERTIFICATE"],
    );
    fails(
        "https://x:4317",
        &["--otlp-cert-file", &cert, "--otlp-key-file", &cert],
        &["--otlp-key-file", "no PEM private key"],
    );
    fails(
        "https://x:4317",
        &["--otlp-cert-file", &cert, "--otlp-key-file", &other_key],
        &["--otlp-key-file", "is not the key of the certificate"],
    );
}

#[test]
fn bad_flags_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = token_file(dir.path());
    let with = |extra: &[&str]| parse_joined(&token, extra).expect_err("must fail");
    assert!(with(&["--upstream", "nope"]).contains("--upstream"));
    assert!(with(&["--upstream", "a=notaddr"]).contains("--upstream"));
    assert!(with(&["--label", "x"]).contains("--label"));
    assert!(with(&["--protocol", "udp"]).contains("--protocol"));
    assert!(with(&["--discovery-timeout", "5"]).contains("unit"));
    assert!(with(&["--ca-file", "/nonexistent.pem"]).contains("--ca-file"));
    for bad in ["127.0.0.1:4317", "ftp://x:1", "http://", "not a url"] {
        let e = with(&["--otlp-endpoint", bad]);
        assert!(e.contains("--otlp-endpoint"), "{bad}: {e}");
    }
    let e = with(&[
        "--otlp-endpoint",
        "https://x:4317",
        "--otlp-ca-file",
        "/nonexistent.pem",
    ]);
    assert!(
        e.contains("--otlp-ca-file") && e.contains("/nonexistent.pem"),
        "{e}"
    );
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello").expect("write");
    let e = with(&[
        "--otlp-endpoint",
        "https://x:4317",
        "--otlp-ca-file",
        &not_pem.display().to_string(),
    ]);
    assert!(e.contains("no PEM certificate"), "{e}");
    for bad in ["1.5", "-0.1", "NaN"] {
        let e = with(&[&format!("--trace-sampling={bad}")]);
        assert!(e.contains("--trace-sampling"), "{bad}: {e}");
    }
    let e = with(&["--trace-queue", "0"]);
    assert!(e.contains("--trace-queue"), "{e}");
    let fails = |args: &[&str], flag: &str| {
        let e = parse(args).expect_err("must fail");
        assert!(e.contains(flag), "{args:?}: {e}");
    };
    fails(
        &["--service", "Bad", "--control-plane", "https://x:1"],
        "--service",
    );
    fails(&["--service", "a"], "--control-plane");
    fails(
        &[
            "--service",
            "a",
            "--control-plane",
            "x",
            "--inbound",
            "127.0.0.1:0",
        ],
        "--control-plane",
    );
    fails(
        &[
            "--service",
            "a",
            "--control-plane",
            "http://x:1",
            "--inbound",
            "127.0.0.1:0",
        ],
        "https://",
    );
    // All interfaces without --advertise.
    fails(
        &[
            "--service",
            "a",
            "--control-plane",
            "https://x:1",
            "--token-file",
            &token,
        ],
        "--advertise",
    );
    // No token, a missing token file, a malformed token.
    if std::env::var("WEFT_TOKEN").is_err() {
        fails(
            &[
                "--service",
                "a",
                "--control-plane",
                "https://x:1",
                "--inbound",
                "127.0.0.1:0",
            ],
            "--token-file",
        );
    }
    fails(
        &[
            "--service",
            "a",
            "--control-plane",
            "https://x:1",
            "--inbound",
            "127.0.0.1:0",
            "--token-file",
            "/nope",
        ],
        "--token-file",
    );
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "not a token").expect("write");
    let bad = bad.display().to_string();
    fails(
        &[
            "--service",
            "a",
            "--control-plane",
            "https://x:1",
            "--inbound",
            "127.0.0.1:0",
            "--token-file",
            &bad,
        ],
        "malformed",
    );
}
