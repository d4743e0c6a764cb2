//! What a request entering the gateway carries about where it came from:
//! `X-Forwarded-For` and `-Proto`, on request `X-Forwarded-Host` and an
//! RFC 7239 `Forwarded` element, and an `x-request-id` every hop and log
//! line can share.
//!
//! `X-Forwarded-Host` and `Forwarded` are opt-in ([`Forwarding::full`]), as
//! in Envoy: most apps read only the first two, and every header the
//! gateway adds is encoded and decoded again at each hop after it (by
//! `perf`, the gateway's and the next sidecar's HPACK time).
//!
//! By default nothing a client claims about earlier hops is believed (they
//! are replaced by what the gateway saw); behind a trusted load balancer,
//! [`Forwarding::trust_forwarded`] keeps them and appends to them.

use std::net::IpAddr;

use http::header::{FORWARDED, HOST, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri};

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id a client may choose.
const MAX_REQUEST_ID: usize = 128;

/// How the forwarding headers are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// Keep incoming `X-Forwarded-*` and `Forwarded` and append to them
    /// (the gateway sits behind a proxy it trusts). Default: replace them,
    /// since any client can write them.
    pub trust_forwarded: bool,
    /// Also write `X-Forwarded-Host` and `Forwarded`.
    pub full: bool,
}

/// Where a connection's requests come from, as the forwarding headers say
/// it: made once per connection, so that a request's `X-Forwarded-For` is
/// a copy of a ready value rather than an address formatted again.
#[derive(Debug, Clone)]
pub struct Origin {
    client: IpAddr,
    tls: bool,
    /// The client's address as a header value.
    for_value: HeaderValue,
}

impl Origin {
    pub fn new(client: IpAddr, tls: bool) -> Self {
        let client = client.to_canonical();
        let for_value = HeaderValue::from_str(&client.to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Origin {
            client,
            tls,
            for_value,
        }
    }
}

/// Sets the forwarding headers of `req`, which arrived from `origin`, and
/// returns its request id (the client's if it sent a sane one, else a
/// fresh one), which is also in the request's `x-request-id`.
pub fn apply<B>(req: &mut Request<B>, origin: &Origin, how: Forwarding) -> HeaderValue {
    let host = how
        .full
        .then(|| host_of(req.uri(), req.headers()))
        .flatten();
    let h = req.headers_mut();
    let client = origin.client;
    let proto = if origin.tls { "https" } else { "http" };
    if !how.trust_forwarded {
        for n in [
            X_FORWARDED_FOR,
            X_FORWARDED_PROTO,
            X_FORWARDED_HOST,
            FORWARDED,
        ] {
            h.remove(n);
        }
    }
    if h.contains_key(X_FORWARDED_FOR) {
        append_list(h, X_FORWARDED_FOR, &client.to_string());
    } else {
        h.insert(X_FORWARDED_FOR, origin.for_value.clone());
    }
    if !h.contains_key(X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if how.full {
        if let Some(host) = &host
            && !h.contains_key(X_FORWARDED_HOST)
        {
            h.insert(X_FORWARDED_HOST, host.clone());
        }
        append_list(
            h,
            FORWARDED,
            &forwarded_element(client, proto, host.as_ref()),
        );
    }
    request_id(h)
}

/// `Host`, or the authority of an HTTP/2 request (`:authority`).
fn host_of(uri: &Uri, h: &HeaderMap) -> Option<HeaderValue> {
    h.get(HOST).cloned().or_else(|| {
        uri.authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    })
}

/// Adds `item` to a comma-separated list header, as one value, so that
/// the list stays in one line whatever hop reads it.
fn append_list(h: &mut HeaderMap, name: HeaderName, item: &str) {
    // The usual case (a client's own were just removed): no list to join.
    if !h.contains_key(&name) {
        if let Ok(v) = HeaderValue::from_str(item) {
            h.insert(name, v);
        }
        return;
    }
    let joined = {
        let old: Vec<&str> = h
            .get_all(&name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if old.is_empty() {
            item.to_string()
        } else {
            format!("{}, {item}", old.join(", "))
        }
    };
    if let Ok(v) = HeaderValue::from_str(&joined) {
        h.insert(name, v);
    }
}

/// `for=192.0.2.60;proto=https;host=example.com`, IPv6 as
/// `for="[2001:db8::1]"` and a host with a port quoted (RFC 7239 §4, §6:
/// `:` and `[` are not token characters).
fn forwarded_element(client: IpAddr, proto: &str, host: Option<&HeaderValue>) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(64);
    let _ = match client {
        IpAddr::V4(v4) => write!(out, "for={v4}"),
        IpAddr::V6(v6) => write!(out, "for=\"[{v6}]\""),
    };
    out.push_str(";proto=");
    out.push_str(proto);
    if let Some(host) = host.and_then(|h| h.to_str().ok()) {
        out.push_str(";host=");
        out.push_str(&token_or_quoted(host));
    }
    out
}

fn token_or_quoted(v: &str) -> std::borrow::Cow<'_, str> {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !v.is_empty() && v.chars().all(tchar) {
        return std::borrow::Cow::Borrowed(v);
    }
    let mut q = String::with_capacity(v.len() + 2);
    q.push('"');
    for c in v.chars() {
        if c == '"' || c == '\\' {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    std::borrow::Cow::Owned(q)
}

/// Keeps the client's `x-request-id` when it is a sane token (1 to 128 of
/// letters, digits and `-_.:+/=`), otherwise sets a fresh one: an id
/// copied into every log line must not carry whatever a client wrote.
///
/// The id is marked sensitive: HPACK then never puts it in a connection's
/// header table, where a value unique to each request would only push out
/// the values that repeat (measured: the hops after a gateway spent twice
/// the time in HPACK's table).
pub fn request_id(h: &mut HeaderMap) -> HeaderValue {
    let mut ids = h.get_all(X_REQUEST_ID).iter();
    let kept = match (ids.next(), ids.next()) {
        (Some(v), None) if sane_id(v.as_bytes()) => Some(v.clone()),
        _ => None,
    };
    let mut id = kept.unwrap_or_else(|| {
        HeaderValue::from_bytes(&new_id()).unwrap_or(HeaderValue::from_static("0"))
    });
    id.set_sensitive(true);
    h.insert(X_REQUEST_ID, id.clone());
    id
}

fn sane_id(v: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=".contains(b))
}

/// A random id shaped like a UUID v4 (what logs and tools expect), from
/// the sidecar's fast generator: unique enough to correlate, not secret.
/// Written by hand into a buffer: it is made for most requests a gateway
/// takes, and `format!` is the costlier part of it.
fn new_id() -> [u8; 36] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hi = crate::rand::next_u64();
    let lo = crate::rand::next_u64();
    let hi = (hi & !0xf000) | 0x4000; // version 4
    let lo = (lo & !(0b11 << 62)) | (0b10 << 62); // the RFC 4122 variant
    let mut out = [b'-'; 36];
    // 32 hex digits, most significant first, around the dashes at 8, 13,
    // 18 and 23.
    let mut place = 0;
    for i in 0..32 {
        if matches!(place, 8 | 13 | 18 | 23) {
            place += 1;
        }
        let word = if i < 16 { hi } else { lo };
        let d = (word >> (60 - 4 * (i % 16))) & 0xf;
        out[place] = HEX[d as usize];
        place += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/api/users/1");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn untrusted_headers_are_replaced_by_what_the_gateway_saw() {
        let mut r = req(&[
            ("host", "api.example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.com"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let ip: IpAddr = "192.0.2.60".parse().expect("ip");
        let full = Forwarding {
            full: true,
            ..Forwarding::default()
        };
        apply(&mut r, &Origin::new(ip, false), full);
        let h = r.headers();
        assert_eq!(h[X_FORWARDED_FOR], "192.0.2.60");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "api.example.com");
        assert_eq!(
            h[FORWARDED],
            "for=192.0.2.60;proto=http;host=api.example.com"
        );
    }

    #[test]
    fn by_default_only_for_and_proto_are_written_and_forged_ones_dropped() {
        let mut r = req(&[
            ("host", "api.example.com"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-host", "evil.com"),
            ("forwarded", "for=6.6.6.6"),
        ]);
        let ip: IpAddr = "192.0.2.60".parse().expect("ip");
        apply(&mut r, &Origin::new(ip, true), Forwarding::default());
        let h = r.headers();
        assert_eq!(h[X_FORWARDED_FOR], "192.0.2.60");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert!(!h.contains_key(X_FORWARDED_HOST), "{h:?}");
        assert!(!h.contains_key(FORWARDED), "{h:?}");
    }

    #[test]
    fn trusted_headers_are_kept_and_appended_to() {
        let mut r = req(&[
            ("host", "api.example.com:8443"),
            ("x-forwarded-for", "203.0.113.7, 10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=203.0.113.7"),
        ]);
        let ip: IpAddr = "2001:db8::1".parse().expect("ip");
        apply(
            &mut r,
            &Origin::new(ip, true),
            Forwarding {
                trust_forwarded: true,
                full: true,
            },
        );
        let h = r.headers();
        assert_eq!(h[X_FORWARDED_FOR], "203.0.113.7, 10.0.0.1, 2001:db8::1");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "api.example.com:8443");
        assert_eq!(
            h[FORWARDED],
            r#"for=203.0.113.7, for="[2001:db8::1]";proto=https;host="api.example.com:8443""#
        );
    }

    #[test]
    fn an_ipv4_client_on_an_ipv6_socket_is_written_as_ipv4() {
        let mut r = Request::builder()
            .uri("https://api.example.com/x")
            .body(())
            .expect("request");
        let ip: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        let full = Forwarding {
            full: true,
            ..Forwarding::default()
        };
        apply(&mut r, &Origin::new(ip, true), full);
        assert_eq!(r.headers()[X_FORWARDED_FOR], "192.0.2.1");
        assert_eq!(
            r.headers()[FORWARDED],
            "for=192.0.2.1;proto=https;host=api.example.com",
            "the HTTP/2 authority is the host"
        );
    }

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let mut r = req(&[("x-request-id", "abc-123_X.y:z")]);
        let id = apply(&mut r, &Origin::new(ip, false), Forwarding::default());
        assert_eq!(id, "abc-123_X.y:z");
        assert_eq!(r.headers()[X_REQUEST_ID], "abc-123_X.y:z");

        let long = "a".repeat(129);
        for bad in ["", "has space", "semi;colon", long.as_str()] {
            let mut r = req(&[("x-request-id", bad)]);
            let id = apply(&mut r, &Origin::new(ip, false), Forwarding::default());
            assert_ne!(id, bad);
            assert_eq!(r.headers()[X_REQUEST_ID], id);
            assert_eq!(r.headers().get_all(X_REQUEST_ID).iter().count(), 1);
        }
        let mut r = req(&[]);
        let a = apply(&mut r, &Origin::new(ip, false), Forwarding::default());
        let b = apply(
            &mut req(&[]),
            &Origin::new(ip, false),
            Forwarding::default(),
        );
        assert_ne!(a, b, "fresh each time");
        let a = a.to_str().expect("ascii");
        assert_eq!(a.len(), 36, "{a}");
        assert_eq!(&a[14..15], "4", "a version 4 UUID: {a}");
        assert!(sane_id(a.as_bytes()));
    }
}
