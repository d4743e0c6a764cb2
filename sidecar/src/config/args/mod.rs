//! Command-line flags, each also a `WEFT_*` variable, in groups: who this
//! sidecar is ([`names`]), where its view of the mesh and its certificate
//! come from ([`source`]), where it listens and what it calls ([`listen`]),
//! its time limits, and what it tells about traffic ([`telemetry`]). Each
//! group checks its flags' syntax into a validated part; the files the
//! flags name are read only once every flag is known to be well formed, so
//! a typo is reported before anything is read.

mod gateway;
mod listen;
mod names;
mod source;
mod telemetry;

use std::time::Duration;

use clap::Parser;
use weft_proto::duration::parse_duration;

pub use gateway::GatewayArgs;
pub use listen::ListenArgs;
pub use names::NameArgs;
pub use source::SourceArgs;
pub use telemetry::TelemetryArgs;

use super::{ConfigError, SidecarConfig, Timeouts};

/// The Weft sidecar: carries a service's gRPC, HTTP and TCP traffic to and
/// from the rest of the mesh.
#[derive(Debug, Parser)]
#[command(
    name = "weft-sidecar",
    version,
    after_help = "Example:\n  weft-sidecar --service order-service --app 127.0.0.1:8080 \\\n    \
                  --control-plane https://127.0.0.1:15012 --token-file token \\\n    \
                  --upstream user-service=127.0.0.1:9001\n\n\
                  Control-plane replicas on etcd (a list, or a name with several addresses):\n  \
                  weft-sidecar --service order-service --app 127.0.0.1:8080 --token-file token \\\n    \
                  --control-plane https://10.0.0.1:15012,https://10.0.0.2:15012,https://10.0.0.3:15012\n\n\
                  The gateway (the mesh's front door: no app, public listeners):\n  \
                  weft-sidecar --service gateway --control-plane https://127.0.0.1:15012 \\\n    \
                  --token-file gateway.token --advertise 10.0.0.9:15006 \\\n    \
                  --gateway-http 0.0.0.0:8080\n\n\
                  An app wrapped (a Job ends when its app does):\n  \
                  weft-sidecar --service report --control-plane https://127.0.0.1:15012 \\\n    \
                  --token-file report.token -- ./report --since 1d\n\n\
                  Transparent interception (the app unchanged; rules by `weft-sidecar init`,\n\
                  see `weft-sidecar init --help`; run the sidecar as uid 1337):\n  \
                  weft-sidecar --service web --app 127.0.0.1:8080 --intercept \\\n    \
                  --control-plane https://10.0.0.1:15012 --token-file web.token \\\n    \
                  --advertise 10.0.0.5:15006"
)]
pub struct Args {
    #[command(flatten)]
    pub names: NameArgs,

    #[command(flatten)]
    pub source: SourceArgs,

    #[command(flatten)]
    pub listen: ListenArgs,

    #[command(flatten)]
    pub timeouts: TimeoutArgs,

    /// Threads for the data path. 1 (the default) runs everything on one
    /// thread, which gives the lowest latency; more add throughput.
    #[arg(long, env = "WEFT_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// The most requests in flight (not yet answered with headers) to each
    /// called service whose policy sets no `maxConcurrentRequests`; over
    /// it a request is answered at once with 503 / UNAVAILABLE
    /// `overloaded` instead of queueing. 0: no default limit.
    #[arg(long, env = "WEFT_MAX_CONCURRENT_REQUESTS", default_value_t = 1024)]
    pub max_concurrent_requests: usize,

    /// Log filter, e.g. info or weft_sidecar=debug (changeable at runtime:
    /// PUT /log-level on the admin port).
    #[arg(long, env = "WEFT_LOG", default_value = "info")]
    pub log: String,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    #[command(flatten)]
    pub gateway: GatewayArgs,

    /// The app to run beside the sidecar, after `--` (e.g. `-- ./server
    /// --port 8080`): started once the sidecar is ready (certificate and
    /// first config), sent the SIGTERM, SIGINT and SIGHUP the sidecar gets;
    /// when it exits the sidecar drains and exits with its code (128 +
    /// the signal that killed it).
    #[arg(last = true, value_name = "APP")]
    pub command: Vec<std::ffi::OsString>,
}

/// Time limits (each parsed as a duration such as `2s` by clap).
#[derive(Debug, clap::Args)]
pub struct TimeoutArgs {
    /// How long a call to a service not known yet waits to learn it.
    #[arg(long, env = "WEFT_DISCOVERY_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub discovery_timeout: Duration,

    /// TCP connect timeout (to peers and to the app).
    #[arg(long, env = "WEFT_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// How often to check the local app's health.
    #[arg(long, env = "WEFT_HEALTH_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub health_interval: Duration,

    /// How long in-flight requests get to finish on SIGTERM.
    #[arg(long, env = "WEFT_DRAIN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

impl From<TimeoutArgs> for Timeouts {
    fn from(t: TimeoutArgs) -> Self {
        Timeouts {
            discovery: t.discovery_timeout,
            connect: t.connect_timeout,
            health_interval: t.health_interval,
            drain: t.drain_timeout,
        }
    }
}

impl Args {
    /// Validates every flag, then reads the files they name; the first
    /// problem is named.
    pub fn into_config(self) -> Result<SidecarConfig, ConfigError> {
        // The flags' syntax, group by group...
        let names = self.names.validate()?;
        let source = self.source.validate()?;
        let listen = self.listen.validate(source.joins_control_plane())?;
        let telemetry = self.telemetry.validate()?;
        let gateway = self.gateway.validate(listen.app.is_some())?;
        // ...then the files they name.
        let source = source.read(&names.service)?;
        let tracing = telemetry.tracing.map(|t| t.read()).transpose()?;
        Ok(SidecarConfig {
            service: names.service,
            instance_id: names.instance_id,
            protocol: names.protocol,
            labels: names.labels,
            app: listen.app,
            inbound: listen.inbound,
            outbound: listen.outbound,
            admin: listen.admin,
            advertise: listen.advertise,
            upstreams: listen.upstreams,
            intercept: listen.intercept,
            source,
            timeouts: self.timeouts.into(),
            max_concurrent_requests: (self.max_concurrent_requests != 0)
                .then_some(self.max_concurrent_requests),
            tracing,
            access_log: telemetry.access_log,
            log_level: None,
            gateway,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use weft_proto::protocol::Protocol;

    use super::Args;
    use crate::config::{SidecarConfig, Source};
    use crate::intercept::UnknownDestinations;

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
    fn a_default_concurrency_limit_unless_turned_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = token_file(dir.path());
        let c = parse_joined(&token, &[]).expect("flags");
        assert_eq!(c.max_concurrent_requests, Some(1024));
        let c = parse_joined(&token, &["--max-concurrent-requests", "50"]).expect("flags");
        assert_eq!(c.max_concurrent_requests, Some(50));
        let c = parse_joined(&token, &["--max-concurrent-requests", "0"]).expect("flags");
        assert_eq!(c.max_concurrent_requests, None);
        let e = parse_joined(&token, &["--max-concurrent-requests", "lots"]).expect_err("bad");
        assert!(e.contains("--max-concurrent-requests"), "{e}");
    }

    #[test]
    fn interception_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = token_file(dir.path());
        let c = parse_joined(&token, &[]).expect("flags");
        assert_eq!(c.intercept, None);
        let c = parse_joined(&token, &["--intercept"]).expect("flags");
        assert_eq!(c.intercept, Some(UnknownDestinations::Passthrough));
        let c = parse_joined(&token, &["--intercept", "--unknown-destinations", "deny"])
            .expect("flags");
        assert_eq!(c.intercept, Some(UnknownDestinations::Deny));
        let e = parse_joined(&token, &["--unknown-destinations", "deny"]).expect_err("alone");
        assert!(e.contains("--intercept"), "{e}");
        let e = parse_joined(&token, &["--intercept", "--unknown-destinations", "drop"])
            .expect_err("bad value");
        assert!(e.contains("drop") && e.contains("passthrough"), "{e}");
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
        assert!(
            matches!(&c.source, Source::ControlPlane(join) if join.token.starts_with("weft1."))
        );
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
        // Every bad entry of a list is named.
        let e = parse(&[
            "--service",
            "a",
            "--control-plane",
            "https://a:1,http://b:2,,https://c:1",
        ])
        .expect_err("bad list");
        assert!(
            e.contains("--control-plane")
                && e.contains("\"http://b:2\": the control plane serves TLS")
                && e.contains("\"entry 3\": empty")
                && !e.contains("https://c:1"),
            "{e}"
        );
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

    #[test]
    fn gateway_flags_are_checked_before_anything_is_read() {
        let dir = tempfile::tempdir().expect("dir");
        let token = token_file(dir.path());
        let c = parse_joined(&token, &["--gateway-http", "127.0.0.1:8080"]).expect("a gateway");
        let g = c.gateway.expect("gateway mode");
        assert_eq!(g.http, Some("127.0.0.1:8080".parse().expect("addr")));
        assert_eq!(g.limits.max_request_bytes, 4 << 20);
        assert!(
            parse_joined(&token, &[])
                .expect("a sidecar")
                .gateway
                .is_none()
        );
        for (flags, says) in [
            (
                &["--gateway-https", "127.0.0.1:8443"][..],
                "--gateway-https: needs a certificate",
            ),
            (
                &["--tls-cert", "a.crt,a.key"][..],
                "--tls-cert: only a gateway",
            ),
            (
                &["--gateway-http", "127.0.0.1:1", "--app", "127.0.0.1:2"][..],
                "--app: a gateway has no app",
            ),
            (
                &[
                    "--gateway-https",
                    "127.0.0.1:1",
                    "--tls-cert",
                    "only-one-file.pem",
                ][..],
                "must be CERT_PEM,KEY_PEM",
            ),
            (
                &["--gateway-http", "127.0.0.1:1", "--max-connections", "0"][..],
                "the limits must be positive",
            ),
        ] {
            let e = parse_joined(&token, flags).expect_err("refused");
            assert!(e.contains(says), "{flags:?}: {e}");
        }
    }
}
