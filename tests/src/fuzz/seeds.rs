//! Valid inputs to mutate, one set per kind of listener: HTTP/1 requests,
//! an HTTP/2 preface with a gRPC call (HPACK written by hand, literal
//! fields only), a TLS ClientHello as rustls sends it, and the messages of
//! a discovery stream. Also the deterministic generator every input is
//! drawn from, and plain junk.

use std::sync::Arc;

use prost::Message;
use weft_proto::v1 as pb;

use crate::pb::EchoRequest;

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The echo service's unary method.
pub const UNARY: &str = "/weft.test.v1.Echo/Unary";

/// xorshift64*: small, fast and the same everywhere, so that a run is
/// replayed from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // splitmix64 once, so that neighbouring seeds start far apart.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Rng((z ^ (z >> 31)) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// `input` with 1 to `max` edits of [`weft_proto::mutate::edit`].
    pub fn mutate(&mut self, input: &[u8], max: usize) -> Vec<u8> {
        let mut out = input.to_vec();
        for _ in 0..1 + self.below(max) {
            let r = self.next_u64();
            weft_proto::mutate::edit(&mut out, r as u8, (r >> 8) as usize, (r >> 40) as u8);
        }
        out
    }

    pub fn junk(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| (self.next_u64() >> 56) as u8).collect()
    }
}

/// Deterministic junk bytes for `seed`.
pub fn junk(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed).junk(len)
}

/// One HTTP/2 frame.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A header block of literal fields without indexing (RFC 7541 §6.2.2):
/// valid HPACK with no table state, short names and values only.
fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        for s in [name, value] {
            debug_assert!(s.len() < 127);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// A gRPC message frame (uncompressed).
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut v = vec![0];
    v.extend((message.len() as u32).to_be_bytes());
    v.extend_from_slice(message);
    v
}

/// The body of a unary echo call.
pub fn echo_body(text: &str) -> Vec<u8> {
    grpc_frame(
        &EchoRequest {
            message: text.into(),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

/// A whole HTTP/2 connection's first bytes: preface, SETTINGS, one gRPC
/// call to `authority` (HEADERS then DATA with END_STREAM).
pub fn h2_call(authority: &str) -> Vec<u8> {
    let headers = hpack(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", UNARY),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", "1S"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ]);
    let mut v = H2_PREFACE.to_vec();
    v.extend(h2_frame(0x4, 0, 0, &[]));
    v.extend(h2_frame(0x1, 0x4, 1, &headers));
    v.extend(h2_frame(0x0, 0x1, 1, &echo_body("fuzz")));
    v
}

/// HTTP/1 requests an app or a scraper sends.
pub fn h1_requests(host: &str) -> Vec<Vec<u8>> {
    let body = echo_body("fuzz");
    let mut post = format!(
        "POST {UNARY} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/grpc\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    post.extend(body);
    vec![
        format!("GET /v1/echo/hi HTTP/1.1\r\nHost: {host}\r\nAccept: */*\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n").into_bytes(),
        post,
        format!("GET http://{host}/ HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes(),
        format!("CONNECT {host}:80 HTTP/1.1\r\nHost: {host}:80\r\n\r\n").into_bytes(),
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            .to_vec(),
    ]
}

/// The host the fuzzed mesh's gateway routes to the echo service (a
/// `GRPCRoute`: gRPC, gRPC-Web and transcoded REST), and the one behind a
/// CORS filter and a rate limit (an `HTTPRoute`).
pub const GATEWAY_GRPC_HOST: &str = "grpc.example.com";
pub const GATEWAY_BROWSER_HOST: &str = "app-api.example.com";

/// HTTP/1 requests a client on the internet sends the gateway: REST calls
/// it transcodes (a path variable and query, a JSON body, a server stream),
/// gRPC-Web calls in both encodings, a CORS preflight and an actual CORS
/// request, each with forwarding headers and a request id to read.
pub fn gateway_requests() -> Vec<Vec<u8>> {
    use base64::Engine as _;
    let grpc = GATEWAY_GRPC_HOST;
    let browser = GATEWAY_BROWSER_HOST;
    let from = "X-Forwarded-For: 203.0.113.9, 10.0.0.1\r\nForwarded: for=192.0.2.60;proto=http\r\nX-Request-Id: f81d4fae-7dec-11d0-a765-00a0c91e6bf6\r\n";
    let with_body = |head: String, body: &[u8]| {
        let mut r = format!("{head}Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        r.extend_from_slice(body);
        r
    };
    let json = br#"{"message": "posted", "payload": "AQID", "count": 2}"#;
    let text = base64::engine::general_purpose::STANDARD.encode(echo_body("from a browser"));
    vec![
        format!("GET /v1/echo/hello%20there?sleepMs=1&failCode=0 HTTP/1.1\r\nHost: {grpc}\r\n{from}\r\n").into_bytes(),
        format!("GET /v1/echo/tick/stream?count=3 HTTP/1.1\r\nHost: {grpc}\r\n\r\n").into_bytes(),
        with_body(format!("POST /v1/echo HTTP/1.1\r\nHost: {grpc}\r\nContent-Type: application/json\r\n{from}"), json),
        with_body(format!("POST {UNARY} HTTP/1.1\r\nHost: {grpc}\r\nContent-Type: application/grpc-web-text\r\nX-Grpc-Web: 1\r\n"), text.as_bytes()),
        with_body(format!("POST {UNARY} HTTP/1.1\r\nHost: {grpc}\r\nContent-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\n{from}"), &echo_body("binary")),
        format!("OPTIONS /v1/echo HTTP/1.1\r\nHost: {browser}\r\nOrigin: https://app.example.com\r\nAccess-Control-Request-Method: PUT\r\nAccess-Control-Request-Headers: x-user, content-type\r\n\r\n").into_bytes(),
        format!("GET /v1/echo/x HTTP/1.1\r\nHost: {browser}\r\nOrigin: https://a.example.org\r\nx-user: u1\r\n{from}\r\n").into_bytes(),
    ]
}

/// The host the fuzzed mesh's gateway serves through the matches and
/// rewrites of an `HTTPRoute` (`rest`), onto the echo service's gRPC
/// method (called as gRPC-Web: the gateway transcodes REST by the path a
/// client sent, before any route rewrites it, as Envoy does).
pub const GATEWAY_REST_HOST: &str = "rest.example.com";

/// gRPC-Web calls each rule of that route matches, each with what its
/// answer holds (the message the echo service sends back, the header the
/// rule adds to it): a prefix with header (exact and pattern)
/// and query matches, its path, host and headers rewritten and the
/// answer's headers too; a pattern match rewritten to a whole path; an
/// exact match with a method. Mutated, they miss a match, cut a prefix
/// short or carry odd bytes into a rewrite.
pub fn gateway_route_requests() -> Vec<(Vec<u8>, Vec<&'static str>)> {
    let rest = GATEWAY_REST_HOST;
    let call = |head: String, message: &'static str, served_by: bool| {
        let body = echo_body(message);
        let mut r = format!(
            "{head}Content-Type: application/grpc-web+proto\r\nX-Grpc-Web: 1\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        let mut holds = vec![message];
        holds.extend(served_by.then_some("x-served-by: gateway\r\n"));
        (r, holds)
    };
    vec![
        call(
            format!("POST /api/echo/Unary?v=2&w=x%20y HTTP/1.1\r\nHost: {rest}\r\nx-canary: 1\r\nx-tenant: t42\r\nx-debug: on\r\nx-route: from-client\r\n"),
            "matched",
            true,
        ),
        call(
            "POST /api/echo/Unary?v=3 HTTP/1.1\r\nHost: shop.rest.example.org:8080\r\nX-Canary: 1\r\nX-Tenant: t7\r\n".into(),
            "wildcard host",
            true,
        ),
        call(
            format!("POST /legacy/old/echo HTTP/1.1\r\nHost: {rest}\r\n"),
            "legacy",
            false,
        ),
        call(
            format!("POST {UNARY} HTTP/1.1\r\nHost: {rest}\r\n"),
            "exact",
            false,
        ),
    ]
}

/// Requests to an admin port (never `/shutdown` or `/log-level`: those are
/// meant to change the process).
pub fn admin_requests() -> Vec<Vec<u8>> {
    ["/live", "/ready", "/metrics", "/config"]
        .iter()
        .map(|p| format!("GET {p} HTTP/1.1\r\nHost: admin\r\n\r\n").into_bytes())
        .collect()
}

/// The first flight of a TLS client: a ClientHello offering h2, as rustls
/// writes it.
pub fn client_hello() -> anyhow::Result<Vec<u8>> {
    client_hello_to("echo", &[b"h2"])
}

/// The same for server name (SNI) `name`, offering `alpn`.
pub fn client_hello_to(name: &str, alpn: &[&[u8]]) -> anyhow::Result<Vec<u8>> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(weft_proto::identity::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from(name.to_string())?;
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name)?;
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

/// The messages a sidecar sends on its discovery stream, encoded: a hello
/// for `service` (instance `instance`), then the kinds that follow.
pub fn sidecar_messages(service: &str, instance: &str) -> Vec<Vec<u8>> {
    use pb::sidecar_message::Kind;
    let m = |k| pb::SidecarMessage { kind: Some(k) }.encode_to_vec();
    vec![
        m(Kind::Hello(pb::Hello {
            service: service.into(),
            instance_id: instance.into(),
            address: "127.0.0.1:9".into(),
            protocol: pb::Protocol::Grpc as i32,
            health: pb::Health::Healthy as i32,
            upstreams: vec!["echo".into()],
            labels: [("version".to_string(), "v1".to_string())].into(),
            sidecar_version: "fuzz".into(),
            ..Default::default()
        })),
        m(Kind::Ack(pb::Ack { version: 1 })),
        m(Kind::Nack(pb::Nack {
            version: 1,
            reason: "routing.routes[0]: kind: unknown".into(),
        })),
        m(Kind::Subscribe(pb::Subscribe {
            services: vec!["echo".into(), "caller".into()],
        })),
        m(Kind::Health(pb::AppHealth {
            health: pb::Health::Unhealthy as i32,
            detail: "connection refused".into(),
        })),
        m(Kind::Certificate(pb::CertificateStatus {
            expires_unix_ms: 1_900_000_000_000,
        })),
        m(Kind::Ejection(pb::Ejection {
            service: "echo".into(),
            instance_id: "echo-1".into(),
            until_unix_ms: 1_900_000_000_000,
        })),
        m(Kind::Stats(pb::TrafficStats {
            requests: 100,
            failures: 1,
            latency_buckets: vec![1; weft_proto::stats::BUCKETS],
            plaintext_requests: 3,
            upstreams: vec![pb::UpstreamTraffic {
                service: "users".into(),
                requests: 40,
                failures: 2,
                latency_buckets: vec![4; weft_proto::stats::BUCKETS],
            }],
            routes: vec![pb::RouteTraffic {
                route: "/echo.Echo/Say".into(),
                requests: 100,
                failures: 1,
            }],
        })),
    ]
}
