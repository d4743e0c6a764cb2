//! What a front door needs besides matching: host names a gateway's route
//! answers for, local rate limits (a rule's, or a service's per caller), and
//! CORS. The validated shapes only; the sidecar keeps the buckets and writes
//! the headers.

use std::time::Duration;

use http::Method;
use http::header::{HeaderName, HeaderValue};

/// An edge setting that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EdgeError {
    #[error(
        "{0:?} is not a host name (letters, digits, '-' and '.', optionally starting with '*.')"
    )]
    Hostname(String),
    #[error("a rate limit needs at least one request per period")]
    NoRequests,
    #[error("a rate limit's period must be between 1ms and 1 day")]
    Period,
    #[error("{0:?} is not an HTTP header name")]
    Header(String),
    #[error("{0:?} is not an origin (scheme://host[:port], '*', or with a '*.' host)")]
    Origin(String),
    #[error("{0:?} is not an HTTP method")]
    Method(String),
    #[error("credentials cannot be allowed for every origin ('*')")]
    CredentialsForAny,
}

/// A route's host name at a gateway: `api.example.com`, or `*.example.com`
/// (any host with at least one more label in front).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostMatch {
    Exact(String),
    /// The suffix after `*`, e.g. `.example.com`.
    Wildcard(String),
}

fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

impl HostMatch {
    pub fn parse(h: &str) -> Result<Self, EdgeError> {
        let lower = h.to_ascii_lowercase();
        match lower.strip_prefix("*.") {
            Some(rest) if is_dns_name(rest) => Ok(HostMatch::Wildcard(format!(".{rest}"))),
            None if is_dns_name(&lower) => Ok(HostMatch::Exact(lower)),
            _ => Err(EdgeError::Hostname(h.to_string())),
        }
    }

    /// `host` is lower case without a port.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(h) => h == host,
            HostMatch::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }

    /// How specific: an exact name beats any wildcard, a longer one a
    /// shorter (the Gateway API's order between routes).
    pub fn rank(&self) -> (usize, usize) {
        match self {
            HostMatch::Exact(h) => (h.len(), h.len()),
            HostMatch::Wildcard(s) => (0, s.len() + 1),
        }
    }

    /// Whether some host matches both (a route's host names against a
    /// gateway listener's).
    pub fn intersects(&self, other: &HostMatch) -> bool {
        match (self, other) {
            (HostMatch::Exact(a), b) | (b, HostMatch::Exact(a)) => b.matches(a),
            (HostMatch::Wildcard(a), HostMatch::Wildcard(b)) => a.ends_with(b) || b.ends_with(a),
        }
    }
}

impl std::fmt::Display for HostMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HostMatch::Exact(h) => f.write_str(h),
            HostMatch::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// The host of a request (`Host` or `:authority`), lower case and without
/// its port, as [`HostMatch::matches`] takes it.
pub fn request_host(authority: &str) -> String {
    let host = match authority.rsplit_once(':') {
        // `[::1]:80` and `host:80`; a bare IPv6 address has no port here.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => authority,
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Which bucket a request draws from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// One bucket for every request.
    All,
    ClientIp,
    Header(HeaderName),
    /// The caller's mesh identity.
    Caller,
}

/// A token bucket: `requests` per `period`, up to `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub period: Duration,
    pub burst: u32,
    pub key: RateKey,
}

impl RateLimit {
    pub fn new(
        requests: u32,
        period: Duration,
        burst: u32,
        key: RateKey,
    ) -> Result<Self, EdgeError> {
        if requests == 0 {
            return Err(EdgeError::NoRequests);
        }
        if period < Duration::from_millis(1) || period > Duration::from_secs(86_400) {
            return Err(EdgeError::Period);
        }
        let burst = if burst == 0 { requests } else { burst };
        Ok(RateLimit {
            requests,
            period,
            burst,
            key,
        })
    }

    /// A header key, checked.
    pub fn header_key(name: &str) -> Result<RateKey, EdgeError> {
        HeaderName::from_bytes(name.as_bytes())
            .map(RateKey::Header)
            .map_err(|_| EdgeError::Header(name.to_string()))
    }
}

/// An allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginMatch {
    Any,
    Exact(String),
    /// `https://*.example.com`: the scheme and the host's suffix.
    Wildcard {
        scheme: String,
        suffix: String,
    },
}

impl OriginMatch {
    pub fn parse(o: &str) -> Result<Self, EdgeError> {
        if o == "*" {
            return Ok(OriginMatch::Any);
        }
        let bad = || EdgeError::Origin(o.to_string());
        let lower = o.to_ascii_lowercase();
        let (scheme, rest) = lower.split_once("://").ok_or_else(bad)?;
        if !matches!(scheme, "http" | "https") || rest.contains('/') {
            return Err(bad());
        }
        let host = rest.rsplit_once(':').map_or(rest, |(h, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                rest
            }
        });
        match host.strip_prefix("*.") {
            Some(suffix) if is_dns_name(suffix) && host.len() == rest.len() => {
                Ok(OriginMatch::Wildcard {
                    scheme: scheme.to_string(),
                    suffix: format!(".{suffix}"),
                })
            }
            None if is_dns_name(host) => Ok(OriginMatch::Exact(lower)),
            _ => Err(bad()),
        }
    }

    pub fn matches(&self, origin: &str) -> bool {
        match self {
            OriginMatch::Any => true,
            OriginMatch::Exact(o) => o.eq_ignore_ascii_case(origin),
            OriginMatch::Wildcard { scheme, suffix } => {
                let lower = origin.to_ascii_lowercase();
                lower
                    .strip_prefix(scheme.as_str())
                    .and_then(|r| r.strip_prefix("://"))
                    // A host name under the suffix, nothing else: an
                    // origin is `scheme://host[:port]`, and a path, a user
                    // or a second scheme before the suffix is not a host
                    // under it (`https://https://a.example.com`).
                    .is_some_and(|host| {
                        host.len() > suffix.len() && host.ends_with(suffix) && is_dns_name(host)
                    })
            }
        }
    }
}

/// The Gateway API's `CORS` filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub allow_origins: Vec<OriginMatch>,
    /// Empty: the methods of simple requests only (GET, HEAD, POST).
    pub allow_methods: Vec<Method>,
    /// Lower case; `*` allows any.
    pub allow_headers: Vec<HeaderName>,
    pub expose_headers: Vec<HeaderName>,
    pub max_age: Option<Duration>,
    pub allow_credentials: bool,
}

fn header_names(names: &[&str]) -> Result<Vec<HeaderName>, EdgeError> {
    names
        .iter()
        .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|_| EdgeError::Header(n.to_string())))
        .collect()
}

impl Cors {
    pub fn new(
        origins: &[&str],
        methods: &[&str],
        allow_headers: &[&str],
        expose_headers: &[&str],
        max_age: Option<Duration>,
        allow_credentials: bool,
    ) -> Result<Self, EdgeError> {
        let allow_origins = origins
            .iter()
            .map(|o| OriginMatch::parse(o))
            .collect::<Result<Vec<_>, _>>()?;
        if allow_credentials && allow_origins.contains(&OriginMatch::Any) {
            return Err(EdgeError::CredentialsForAny);
        }
        let allow_methods = methods
            .iter()
            .map(|m| {
                // `*` (any method) is a valid token too.
                Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                    .map_err(|_| EdgeError::Method(m.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Cors {
            allow_origins,
            allow_methods,
            allow_headers: header_names(allow_headers)?,
            expose_headers: header_names(expose_headers)?,
            max_age,
            allow_credentials,
        })
    }

    pub fn allows_origin(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|o| o.matches(origin))
    }

    pub fn allows_method(&self, m: &Method) -> bool {
        if self
            .allow_methods
            .iter()
            .any(|a| a.as_str() == "*" || a == m)
        {
            return true;
        }
        self.allow_methods.is_empty() && matches!(*m, Method::GET | Method::HEAD | Method::POST)
    }

    /// `Access-Control-Request-Headers` (comma separated) are all allowed.
    pub fn allows_headers(&self, requested: &HeaderValue) -> bool {
        let Ok(list) = requested.to_str() else {
            return false;
        };
        if self.allow_headers.iter().any(|h| h.as_str() == "*") {
            return true;
        }
        list.split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .all(|h| {
                self.allow_headers
                    .iter()
                    .any(|a| a.as_str().eq_ignore_ascii_case(h))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_exact_and_wildcard() {
        let exact = HostMatch::parse("API.example.com").expect("host");
        let wild = HostMatch::parse("*.example.com").expect("host");
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("www.example.com"));
        assert!(wild.matches("www.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"), "at least one more label");
        assert!(exact.rank() > wild.rank());
        assert!(
            HostMatch::parse("*.a.example.com").expect("h").rank() > wild.rank(),
            "a longer wildcard is more specific"
        );
        assert!(exact.intersects(&wild));
        assert!(!exact.intersects(&HostMatch::parse("*.other.com").expect("h")));
        for bad in ["", "a..b", "*", "*.", "a b", "foo.*.com", "-a.com"] {
            assert!(HostMatch::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(request_host("Api.Example.com:8443"), "api.example.com");
        assert_eq!(request_host("api.example.com."), "api.example.com");
        assert_eq!(request_host("[::1]:80"), "[::1]");
    }

    #[test]
    fn rate_limits_are_checked() {
        let r = RateLimit::new(10, Duration::from_secs(1), 0, RateKey::ClientIp).expect("r");
        assert_eq!(r.burst, 10, "the burst defaults to the rate");
        assert_eq!(
            RateLimit::new(0, Duration::from_secs(1), 0, RateKey::All),
            Err(EdgeError::NoRequests)
        );
        assert_eq!(
            RateLimit::new(1, Duration::ZERO, 0, RateKey::All),
            Err(EdgeError::Period)
        );
        assert!(RateLimit::header_key("x-api-key").is_ok());
        assert!(RateLimit::header_key("bad key").is_err());
    }

    #[test]
    fn cors_origins_methods_and_headers() {
        let c = Cors::new(
            &["https://app.example.com", "https://*.example.org"],
            &["GET", "put"],
            &["content-type", "x-user"],
            &["x-request-id"],
            Some(Duration::from_secs(600)),
            true,
        )
        .expect("cors");
        assert!(c.allows_origin("https://app.example.com"));
        assert!(c.allows_origin("https://a.example.org"));
        assert!(
            !c.allows_origin("http://a.example.org"),
            "the scheme counts"
        );
        assert!(!c.allows_origin("https://evil.com"));
        // Found by the gateway's property tests: only a host name under
        // the suffix is under it.
        for smuggled in [
            "https://https://a.example.org",
            "https://evil.com/.example.org",
            "https://user@a.example.org",
        ] {
            assert!(!c.allows_origin(smuggled), "{smuggled}");
        }
        assert!(c.allows_method(&Method::PUT));
        assert!(!c.allows_method(&Method::DELETE));
        assert!(c.allows_headers(&HeaderValue::from_static("Content-Type, X-User")));
        assert!(!c.allows_headers(&HeaderValue::from_static("content-type, x-admin")));
        assert_eq!(
            Cors::new(&["*"], &[], &[], &[], None, true),
            Err(EdgeError::CredentialsForAny)
        );
        for bad in [
            "example.com",
            "ftp://x.com",
            "https://x.com/path",
            "https://*",
        ] {
            assert!(OriginMatch::parse(bad).is_err(), "{bad}");
        }
    }
}
