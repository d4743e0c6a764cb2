//! CORS at the gateway, as the Fetch standard's CORS protocol reads it
//! (fetch.spec.whatwg.org, "CORS protocol"): answering preflights itself
//! ([`preflight`]) and adding the response headers a browser checks to
//! actual responses ([`decorate`]). The gateway owns these headers: what
//! the service behind it set is replaced.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, CONTENT_LENGTH, HeaderMap,
    HeaderName, HeaderValue, ORIGIN, VARY,
};
use http::{Method, Request, Response, StatusCode};
use weft_proto::routing::{Cors, OriginMatch};

use crate::body::{BoxBody, empty};

/// A preflight's answer, or `None` when `req` is not a CORS preflight (an
/// `OPTIONS` with `Origin` and `Access-Control-Request-Method`), which then
/// goes on to the service like any request.
///
/// Allowed: `204` with the allow headers. Refused (origin, method or a
/// requested header not allowed): `403` without them, which the browser
/// reports as a CORS failure. CORS-safelisted methods (GET, HEAD, POST)
/// are always allowed, as browsers allow them whatever the answer lists.
pub fn preflight<B>(cors: &Cors, req: &Request<B>) -> Option<Response<BoxBody>> {
    if req.method() != Method::OPTIONS {
        return None;
    }
    let h = req.headers();
    let origin = h.get(ORIGIN)?;
    let method = h.get(ACCESS_CONTROL_REQUEST_METHOD)?;
    let requested = h.get(ACCESS_CONTROL_REQUEST_HEADERS);
    let mut out = HeaderMap::new();
    out.insert(
        VARY,
        HeaderValue::from_static(
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        ),
    );
    out.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
    let method = Method::from_bytes(method.as_bytes()).ok();
    let allowed = origin.to_str().is_ok_and(|o| cors.allows_origin(o))
        && method.as_ref().is_some_and(|m| {
            cors.allows_method(m) || matches!(*m, Method::GET | Method::HEAD | Method::POST)
        })
        && requested.is_none_or(|r| cors.allows_headers(r));
    if !allowed {
        return Some(answer(StatusCode::FORBIDDEN, out));
    }
    allow_origin(cors, origin, &mut out);
    let wildcard = |names: &[&str]| names.contains(&"*");
    let methods: Vec<&str> = cors.allow_methods.iter().map(Method::as_str).collect();
    let methods_value = if methods.is_empty() {
        None
    } else if wildcard(&methods) && cors.allow_credentials {
        // With credentials `*` is taken literally (Fetch): name the method.
        method.map(|m| m.as_str().to_string())
    } else {
        Some(methods.join(", "))
    };
    if let Some(v) = methods_value.and_then(|v| HeaderValue::from_str(&v).ok()) {
        out.insert(ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    let headers: Vec<&str> = cors.allow_headers.iter().map(HeaderName::as_str).collect();
    match requested {
        // Only the headers asked for are named: a list that grows with the
        // config would say nothing more to the browser.
        Some(r) if wildcard(&headers) && cors.allow_credentials => {
            out.insert(ACCESS_CONTROL_ALLOW_HEADERS, r.clone());
        }
        _ if !headers.is_empty() => {
            if let Ok(v) = HeaderValue::from_str(&headers.join(", ")) {
                out.insert(ACCESS_CONTROL_ALLOW_HEADERS, v);
            }
        }
        _ => {}
    }
    if let Some(age) = cors.max_age {
        out.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(age.as_secs()));
    }
    Some(answer(StatusCode::NO_CONTENT, out))
}

fn answer(status: StatusCode, headers: HeaderMap) -> Response<BoxBody> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Adds CORS headers to an actual (not preflight) response to a request
/// with `origin`: `Access-Control-Allow-Origin` (the origin, or `*` when
/// every origin is allowed and credentials are not), `-Allow-Credentials`
/// and `-Expose-Headers` when the origin is allowed, and always
/// `Vary: Origin`, since the answer depends on it. Headers the service set
/// under these names are removed first.
pub fn decorate(cors: &Cors, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    for n in [
        ACCESS_CONTROL_ALLOW_ORIGIN,
        ACCESS_CONTROL_ALLOW_CREDENTIALS,
        ACCESS_CONTROL_EXPOSE_HEADERS,
    ] {
        headers.remove(n);
    }
    add_vary_origin(headers);
    let Some(origin) = origin else {
        return;
    };
    if !origin.to_str().is_ok_and(|o| cors.allows_origin(o)) {
        return;
    }
    allow_origin(cors, origin, headers);
    if !cors.expose_headers.is_empty() {
        let names: Vec<&str> = cors.expose_headers.iter().map(HeaderName::as_str).collect();
        if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v);
        }
    }
}

fn allow_origin(cors: &Cors, origin: &HeaderValue, out: &mut HeaderMap) {
    let any = cors.allow_origins.contains(&OriginMatch::Any);
    let value = if any && !cors.allow_credentials {
        HeaderValue::from_static("*")
    } else {
        origin.clone()
    };
    out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, value);
    if cors.allow_credentials {
        out.insert(
            ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
}

/// `Vary: Origin`, unless some `Vary` already names it (or `*`).
fn add_vary_origin(headers: &mut HeaderMap) {
    let named = headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.eq_ignore_ascii_case("origin")
        });
    if !named {
        headers.append(VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn app_cors(credentials: bool) -> Cors {
        Cors::new(
            &["https://app.example.com", "https://*.example.org"],
            &["PUT", "DELETE"],
            &["content-type", "x-user"],
            &["grpc-status", "grpc-message"],
            Some(Duration::from_secs(600)),
            credentials,
        )
        .expect("cors")
    }

    fn preflight_req(origin: &str, method: &str, headers: Option<&str>) -> Request<()> {
        let mut b = Request::builder()
            .method(Method::OPTIONS)
            .uri("/api")
            .header(ORIGIN, origin)
            .header(ACCESS_CONTROL_REQUEST_METHOD, method);
        if let Some(h) = headers {
            b = b.header(ACCESS_CONTROL_REQUEST_HEADERS, h);
        }
        b.body(()).expect("request")
    }

    #[test]
    fn an_allowed_preflight_gets_204_and_the_allow_headers() {
        let c = app_cors(true);
        let r = preflight(
            &c,
            &preflight_req(
                "https://app.example.com",
                "PUT",
                Some("Content-Type, X-User"),
            ),
        )
        .expect("a preflight");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let h = r.headers();
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "PUT, DELETE");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_HEADERS], "content-type, x-user");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert!(h[VARY].to_str().expect("ascii").starts_with("Origin"));
        // A wildcard origin, and a safelisted method not in the list.
        let r = preflight(&c, &preflight_req("https://a.example.org", "POST", None))
            .expect("a preflight");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://a.example.org"
        );
    }

    #[test]
    fn a_refused_preflight_gets_403_without_allow_headers() {
        let c = app_cors(false);
        for req in [
            preflight_req("https://evil.com", "PUT", None),
            preflight_req("http://a.example.org", "PUT", None),
            preflight_req("https://app.example.com", "PATCH", None),
            preflight_req("https://app.example.com", "PUT", Some("x-admin")),
        ] {
            let r = preflight(&c, &req).expect("a preflight");
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{:?}", req.headers());
            assert!(r.headers().get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
            assert!(r.headers().contains_key(VARY));
        }
    }

    #[test]
    fn what_is_not_a_preflight_goes_on() {
        let c = app_cors(false);
        let get = Request::builder()
            .method(Method::GET)
            .header(ORIGIN, "https://app.example.com")
            .header(ACCESS_CONTROL_REQUEST_METHOD, "PUT")
            .body(())
            .expect("request");
        assert!(preflight(&c, &get).is_none());
        let options = Request::builder()
            .method(Method::OPTIONS)
            .header(ORIGIN, "https://app.example.com")
            .body(())
            .expect("request");
        assert!(preflight(&c, &options).is_none(), "no requested method");
    }

    #[test]
    fn any_origin_is_star_without_credentials_and_wildcards_are_echoed_with_them() {
        let open = Cors::new(&["*"], &["*"], &["*"], &[], None, false).expect("cors");
        let r = preflight(
            &open,
            &preflight_req("https://x.com", "PATCH", Some("x-a, x-b")),
        )
        .expect("a preflight");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_METHODS], "*");
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_HEADERS], "*");
        assert!(r.headers().get(ACCESS_CONTROL_ALLOW_CREDENTIALS).is_none());

        let listed = Cors::new(&["https://x.com"], &["*"], &["*"], &[], None, true).expect("cors");
        let r = preflight(
            &listed,
            &preflight_req("https://x.com", "PATCH", Some("x-a, x-b")),
        )
        .expect("a preflight");
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "https://x.com");
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_METHODS], "PATCH");
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_HEADERS], "x-a, x-b");
    }

    #[test]
    fn actual_responses_get_the_origin_credentials_and_exposed_headers() {
        let c = app_cors(true);
        let mut h = HeaderMap::new();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        h.insert(VARY, HeaderValue::from_static("Accept-Encoding"));
        let origin = HeaderValue::from_static("https://app.example.com");
        decorate(&c, Some(&origin), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "https://app.example.com");
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(
            h[ACCESS_CONTROL_EXPOSE_HEADERS],
            "grpc-status, grpc-message"
        );
        let vary: Vec<_> = h.get_all(VARY).iter().collect();
        assert_eq!(vary, ["Accept-Encoding", "Origin"]);

        let mut h = HeaderMap::new();
        h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
        decorate(
            &c,
            Some(&HeaderValue::from_static("https://evil.com")),
            &mut h,
        );
        assert!(
            h.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none(),
            "the service's own header is not passed on"
        );
        assert_eq!(h[VARY], "Origin");

        let mut h = HeaderMap::new();
        decorate(&c, None, &mut h);
        assert_eq!(h.len(), 1, "only Vary: {h:?}");

        let open = Cors::new(&["*"], &[], &[], &[], None, false).expect("cors");
        let mut h = HeaderMap::new();
        decorate(&open, Some(&origin), &mut h);
        assert_eq!(h[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    }
}
