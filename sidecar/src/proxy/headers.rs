//! Header rules for forwarding between HTTP/1.1 and HTTP/2.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Set by the outbound sidecar when the app spoke HTTP/1.1; the inbound
/// sidecar speaks HTTP/1.1 to its app again and removes it.
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("x-weft-orig-proto");
pub const HTTP11: HeaderValue = HeaderValue::from_static("HTTP/1.1");

/// The app port an intercepted caller dialled (its original destination's
/// port), set by the outbound sidecar for the peer, which sends the request
/// to that port of its app. Taken only from a caller mutual TLS proved, and
/// removed from every request on both sides, so neither an app nor a
/// plaintext client can choose a port with it.
pub const TARGET_PORT: HeaderName = HeaderName::from_static("x-weft-target-port");

/// The caller's verified SPIFFE ID, set by the inbound sidecar for its app.
/// Stripped from every incoming request first, so it cannot be forged.
pub const PEER_IDENTITY: HeaderName = HeaderName::from_static("x-weft-peer-identity");

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes connection-specific headers (RFC 9110 §7.6.1), which must not be
/// forwarded and which HTTP/2 forbids. `te: trailers` is kept: gRPC needs it.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Runs four times per call through a pair, and almost every request
    // and answer has none of them: one pass over the few headers present
    // costs less than a lookup of each name.
    if !h
        .iter()
        .any(|(n, v)| is_hop_by_hop(n) || (n == header::TE && v != "trailers"))
    {
        return;
    }
    // Headers named in Connection are hop-by-hop too.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    let te_trailers = h
        .get(header::TE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        });
    h.remove(header::TE);
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The names [`strip_hop_by_hop`] removes whatever their value.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
];

fn is_hop_by_hop(n: &HeaderName) -> bool {
    HOP_BY_HOP.contains(n)
}

pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The authority a request names: `:authority` (HTTP/2, absolute form)
/// or the `Host` header (HTTP/1.1).
pub fn authority_of<B>(req: &http::Request<B>) -> Option<http::uri::Authority> {
    req.uri().authority().cloned().or_else(|| {
        let host = req.headers().get(header::HOST)?;
        http::uri::Authority::try_from(host.as_bytes()).ok()
    })
}

/// The host part of an authority (`user-service:80` → `user-service`).
pub fn host_of(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority.split(']').next().map_or(authority, |h| &h[1..]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            authority
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_but_keeps_te_trailers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-foo".parse().expect("v"));
        h.insert("x-foo", "1".parse().expect("v"));
        h.insert("keep-alive", "timeout=5".parse().expect("v"));
        h.insert(header::TE, "gzip, trailers".parse().expect("v"));
        h.insert("x-keep", "1".parse().expect("v"));
        strip_hop_by_hop(&mut h);
        assert!(
            h.get("x-foo").is_none()
                && h.get("keep-alive").is_none()
                && h.get(header::CONNECTION).is_none()
        );
        assert_eq!(h[header::TE], "trailers");
        assert_eq!(h["x-keep"], "1");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_found() {
        for (name, value) in [
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("proxy-authenticate", "Basic"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("connection", "close"),
            ("te", "gzip"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, "application/grpc".parse().expect("v"));
            h.insert(HeaderName::from_static(name), value.parse().expect("v"));
            strip_hop_by_hop(&mut h);
            assert!(h.get(name).is_none(), "{name}: {value} kept");
            assert_eq!(h.len(), 1, "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert(header::TE, "trailers".parse().expect("v"));
        h.insert(header::USER_AGENT, "x".parse().expect("v"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before, "nothing to strip");
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("user-service:80"), "user-service");
        assert_eq!(host_of("user-service"), "user-service");
        assert_eq!(host_of("[::1]:80"), "::1");
    }
}
