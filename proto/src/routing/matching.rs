//! What a route rule matches: a request's path (exact, by path segments,
//! or a regular expression), method, headers and query parameters, and for
//! gRPC its service and method — the `matches` of the Gateway API's
//! `HTTPRoute` and `GRPCRoute`. Every value is checked when it is built;
//! matching allocates nothing.

use std::fmt;

use http::header::{GetAll, HeaderName, HeaderValue};
use http::{HeaderMap, Method};
use regex::{Regex, RegexBuilder};

/// The longest path, header or parameter value, or expression, accepted.
pub const MAX_VALUE: usize = 1024;
/// What a compiled expression may grow to: bounds a hostile one.
const REGEX_SIZE: usize = 1 << 20;

/// A value that cannot be part of a match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatchError {
    #[error("{0:?} is not an absolute path (it must start with '/' and hold no '?' or '#')")]
    Path(String),
    #[error("{value:?} is not a regular expression: {reason}")]
    Regex { value: String, reason: String },
    #[error("{0:?} is not an HTTP header name")]
    HeaderName(String),
    #[error("{0:?} is not a query parameter name")]
    QueryName(String),
    #[error(
        "{0:?} is not an HTTP method (GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH)"
    )]
    Method(String),
    #[error("{0:?} is not a gRPC {1} name")]
    GrpcName(String, &'static str),
    #[error("a gRPC method match needs a service, a method or both")]
    GrpcEmpty,
    #[error("a value is longer than {MAX_VALUE} characters")]
    TooLong,
}

/// A compiled regular expression (RE2 syntax, linear time) that must match
/// a whole value.
#[derive(Clone)]
pub struct Expression {
    source: String,
    regex: Regex,
}

impl Expression {
    pub fn new(source: &str) -> Result<Self, MatchError> {
        if source.len() > MAX_VALUE {
            return Err(MatchError::TooLong);
        }
        let regex = RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE)
            .build()
            .map_err(|e| MatchError::Regex {
                value: source.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Expression {
            source: source.to_string(),
            regex,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    pub fn is_match(&self, s: &str) -> bool {
        self.regex.is_match(s)
    }
}

impl fmt::Debug for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expression({:?})", self.source)
    }
}

impl PartialEq for Expression {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Expression {}

/// How a request's path is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Exact(String),
    /// By whole segments: `/a` matches `/a`, `/a/` and `/a/b`, not `/ab`
    /// (a trailing `/` in the value is ignored).
    Prefix(String),
    Regex(Expression),
}

fn check_path(v: &str) -> Result<(), MatchError> {
    if v.len() > MAX_VALUE {
        return Err(MatchError::TooLong);
    }
    if !v.starts_with('/') || v.contains(['?', '#']) {
        return Err(MatchError::Path(v.to_string()));
    }
    Ok(())
}

impl PathMatch {
    pub fn exact(v: &str) -> Result<Self, MatchError> {
        check_path(v)?;
        Ok(PathMatch::Exact(v.to_string()))
    }

    pub fn prefix(v: &str) -> Result<Self, MatchError> {
        check_path(v)?;
        let trimmed = v.trim_end_matches('/');
        Ok(PathMatch::Prefix(if trimmed.is_empty() {
            "/".to_string()
        } else {
            trimmed.to_string()
        }))
    }

    pub fn regex(v: &str) -> Result<Self, MatchError> {
        Ok(PathMatch::Regex(Expression::new(v)?))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(v) => path == v,
            PathMatch::Prefix(v) if v == "/" => true,
            PathMatch::Prefix(v) => path
                .strip_prefix(v.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
            PathMatch::Regex(e) => e.is_match(path),
        }
    }

    /// The value as written (for precedence and for printing).
    pub fn value(&self) -> &str {
        match self {
            PathMatch::Exact(v) | PathMatch::Prefix(v) => v,
            PathMatch::Regex(e) => e.as_str(),
        }
    }
}

impl Default for PathMatch {
    /// Every path.
    fn default() -> Self {
        PathMatch::Prefix("/".to_string())
    }
}

/// How a header's or a parameter's value is matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueMatch {
    Exact(String),
    Regex(Expression),
}

impl ValueMatch {
    pub fn exact(v: &str) -> Result<Self, MatchError> {
        if v.len() > MAX_VALUE {
            return Err(MatchError::TooLong);
        }
        Ok(ValueMatch::Exact(v.to_string()))
    }

    pub fn regex(v: &str) -> Result<Self, MatchError> {
        Ok(ValueMatch::Regex(Expression::new(v)?))
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            ValueMatch::Exact(e) => v == e,
            ValueMatch::Regex(e) => e.is_match(v),
        }
    }

    pub fn value(&self) -> &str {
        match self {
            ValueMatch::Exact(v) => v,
            ValueMatch::Regex(e) => e.as_str(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMatch {
    /// Compared without regard to case, as HTTP header names are.
    pub name: HeaderName,
    pub value: ValueMatch,
}

impl HeaderMatch {
    pub fn new(name: &str, value: ValueMatch) -> Result<Self, MatchError> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| MatchError::HeaderName(name.to_string()))?;
        Ok(HeaderMatch { name, value })
    }

    /// Any of the request's values of the header matches.
    fn matches(&self, headers: &HeaderMap) -> bool {
        self.matches_values(&headers.get_all(&self.name))
    }

    /// Any of `values` (the request's values of this header) matches.
    pub fn matches_values(&self, values: &GetAll<'_, HeaderValue>) -> bool {
        values
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| self.value.matches(v)))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryMatch {
    /// Compared exactly (query parameter names are case-sensitive).
    pub name: String,
    pub value: ValueMatch,
}

impl QueryMatch {
    pub fn new(name: &str, value: ValueMatch) -> Result<Self, MatchError> {
        let ok = !name.is_empty()
            && name.len() <= 256
            && name
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'&' | b'=' | b'#'));
        if !ok {
            return Err(MatchError::QueryName(name.to_string()));
        }
        Ok(QueryMatch {
            name: name.to_string(),
            value,
        })
    }

    /// The first occurrence of the parameter decides (as the raw value in
    /// the URL, not percent-decoded).
    fn matches(&self, query: Option<&str>) -> bool {
        let Some(q) = query else {
            return false;
        };
        q.split('&')
            .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
            .find(|(k, _)| *k == self.name)
            .is_some_and(|(_, v)| self.value.matches(v))
    }
}

/// A gRPC call's service (`package.Service`) and method, either of which
/// may be left out (any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcMethodMatch {
    pub service: Option<ValueMatch>,
    pub method: Option<ValueMatch>,
}

fn grpc_name(v: &str, what: &'static str, dots: bool) -> Result<(), MatchError> {
    let ok = !v.is_empty()
        && v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || (dots && b == b'.'));
    if ok {
        Ok(())
    } else {
        Err(MatchError::GrpcName(v.to_string(), what))
    }
}

impl GrpcMethodMatch {
    /// Exact names; empty means any.
    pub fn exact(service: &str, method: &str) -> Result<Self, MatchError> {
        if service.is_empty() && method.is_empty() {
            return Err(MatchError::GrpcEmpty);
        }
        let part = |v: &str, what, dots| -> Result<Option<ValueMatch>, MatchError> {
            if v.is_empty() {
                return Ok(None);
            }
            grpc_name(v, what, dots)?;
            Ok(Some(ValueMatch::Exact(v.to_string())))
        };
        Ok(GrpcMethodMatch {
            service: part(service, "service", true)?,
            method: part(method, "method", false)?,
        })
    }

    /// Regular expressions; empty means any.
    pub fn regex(service: &str, method: &str) -> Result<Self, MatchError> {
        if service.is_empty() && method.is_empty() {
            return Err(MatchError::GrpcEmpty);
        }
        let part = |v: &str| (!v.is_empty()).then(|| ValueMatch::regex(v)).transpose();
        Ok(GrpcMethodMatch {
            service: part(service)?,
            method: part(method)?,
        })
    }

    /// `path` is `/package.Service/Method`.
    fn matches(&self, path: &str) -> bool {
        let Some((service, method)) = path.strip_prefix('/').and_then(|p| p.split_once('/')) else {
            return false;
        };
        self.service.as_ref().is_none_or(|s| s.matches(service))
            && self.method.as_ref().is_none_or(|m| m.matches(method))
    }
}

/// What a matcher reads of a request.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    /// Lower case, without a port ([`super::request_host`]); only gateway
    /// routes with host names read it.
    pub host: Option<&'a str>,
    /// The path, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl<'a> Request<'a> {
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        Request {
            method: req.method(),
            host: None,
            path: req.uri().path(),
            query: req.uri().query(),
            headers: req.headers(),
        }
    }
}

/// Which condition of a match a request failed first (`weftctl explain`
/// says it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// None of the route's host names.
    Host,
    Path,
    Method,
    Header(HeaderName),
    Query(String),
    GrpcMethod,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Host => f.write_str("the host is none of the route's"),
            Mismatch::Path => f.write_str("the path differs"),
            Mismatch::Method => f.write_str("the method differs"),
            Mismatch::Header(h) => write!(f, "header {h} differs or is missing"),
            Mismatch::Query(q) => write!(f, "query parameter {q} differs or is missing"),
            Mismatch::GrpcMethod => f.write_str("the gRPC service or method differs"),
        }
    }
}

/// One `matches` entry: every condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub method: Option<Method>,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    /// GRPCRoute: the call's service and method.
    pub grpc: Option<GrpcMethodMatch>,
}

/// The methods a route may match (the Gateway API's list).
pub fn parse_method(m: &str) -> Result<Method, MatchError> {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    if !KNOWN.contains(&m) {
        return Err(MatchError::Method(m.to_string()));
    }
    Method::from_bytes(m.as_bytes()).map_err(|_| MatchError::Method(m.to_string()))
}

impl RouteMatch {
    pub fn matches(&self, req: &Request<'_>) -> bool {
        self.mismatch(req).is_none()
    }

    /// The first condition `req` fails; `None` when it matches.
    pub fn mismatch(&self, req: &Request<'_>) -> Option<Mismatch> {
        self.mismatch_with(req, &mut |h| h.matches(req.headers))
    }

    /// The same, with the header conditions judged by `header` (a table
    /// walking many rules looks each header up once per request).
    pub fn mismatch_with(
        &self,
        req: &Request<'_>,
        header: &mut dyn FnMut(&HeaderMatch) -> bool,
    ) -> Option<Mismatch> {
        if !self.path.matches(req.path) {
            return Some(Mismatch::Path);
        }
        if let Some(g) = &self.grpc
            && !g.matches(req.path)
        {
            return Some(Mismatch::GrpcMethod);
        }
        if self.method.as_ref().is_some_and(|m| m != req.method) {
            return Some(Mismatch::Method);
        }
        if let Some(h) = self.headers.iter().find(|h| !header(h)) {
            return Some(Mismatch::Header(h.name.clone()));
        }
        if let Some(q) = self.query.iter().find(|q| !q.matches(req.query)) {
            return Some(Mismatch::Query(q.name.clone()));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a Method, uri: &'a str, headers: &'a HeaderMap) -> Request<'a> {
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (uri, None),
        };
        Request {
            host: None,
            method,
            path,
            query,
            headers,
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let p = PathMatch::prefix("/api/users/").expect("prefix");
        assert_eq!(p.value(), "/api/users");
        for yes in ["/api/users", "/api/users/", "/api/users/1"] {
            assert!(p.matches(yes), "{yes}");
        }
        for no in ["/api/usersx", "/api", "/"] {
            assert!(!p.matches(no), "{no}");
        }
        assert!(PathMatch::prefix("/").expect("root").matches("/anything"));
        assert!(PathMatch::exact("/a").expect("exact").matches("/a"));
        assert!(!PathMatch::exact("/a").expect("exact").matches("/a/"));
    }

    #[test]
    fn expressions_match_whole_values_and_bad_ones_are_named() {
        let p = PathMatch::regex(r"/users/\d+").expect("regex");
        assert!(p.matches("/users/42"));
        assert!(!p.matches("/users/42/orders"), "anchored at both ends");
        assert!(matches!(
            PathMatch::regex("/users/(").err(),
            Some(MatchError::Regex { .. })
        ));
        assert!(matches!(
            Expression::new(&"a".repeat(MAX_VALUE + 1)).err(),
            Some(MatchError::TooLong)
        ));
        // A hostile expression is refused by size, not run.
        assert!(Expression::new("(a{1000}){1000}").is_err());
    }

    #[test]
    fn bad_values_are_refused() {
        for bad in ["", "users", "/a?b", "/a#b"] {
            assert!(PathMatch::prefix(bad).is_err(), "{bad}");
        }
        assert!(HeaderMatch::new("bad header", ValueMatch::Exact("x".into())).is_err());
        assert!(QueryMatch::new("a=b", ValueMatch::Exact("x".into())).is_err());
        assert!(parse_method("get").is_err() && parse_method("PATCH").is_ok());
        assert_eq!(GrpcMethodMatch::exact("", ""), Err(MatchError::GrpcEmpty));
        assert!(GrpcMethodMatch::exact("users.v1.Users", "Get.x").is_err());
    }

    #[test]
    fn every_condition_must_hold_and_the_first_failure_is_named() {
        let mut h = HeaderMap::new();
        h.insert("x-canary", "yes".parse().expect("value"));
        h.append("x-multi", "a".parse().expect("value"));
        h.append("x-multi", "b".parse().expect("value"));
        let m = RouteMatch {
            path: PathMatch::prefix("/orders").expect("path"),
            method: Some(Method::GET),
            headers: vec![
                HeaderMatch::new("X-Canary", ValueMatch::exact("yes").expect("v")).expect("h"),
                HeaderMatch::new("x-multi", ValueMatch::exact("b").expect("v")).expect("h"),
            ],
            query: vec![
                QueryMatch::new("user", ValueMatch::regex("[0-9]+").expect("v")).expect("q"),
            ],
            grpc: None,
        };
        let get = Method::GET;
        assert!(m.matches(&req(&get, "/orders?user=7&user=x", &h)));
        assert_eq!(
            m.mismatch(&req(&get, "/orders?user=x&user=7", &h)),
            Some(Mismatch::Query("user".into())),
            "the first occurrence decides"
        );
        assert_eq!(
            m.mismatch(&req(&get, "/items?user=7", &h)),
            Some(Mismatch::Path)
        );
        assert_eq!(
            m.mismatch(&req(&Method::POST, "/orders?user=7", &h)),
            Some(Mismatch::Method)
        );
        let empty = HeaderMap::new();
        assert_eq!(
            m.mismatch(&req(&get, "/orders?user=7", &empty)),
            Some(Mismatch::Header(HeaderName::from_static("x-canary")))
        );
        assert!(RouteMatch::default().matches(&req(&Method::DELETE, "/x", &empty)));
    }

    #[test]
    fn grpc_service_and_method() {
        let m = RouteMatch {
            grpc: Some(GrpcMethodMatch::exact("users.v1.Users", "").expect("grpc")),
            ..RouteMatch::default()
        };
        let post = Method::POST;
        let h = HeaderMap::new();
        assert!(m.matches(&req(&post, "/users.v1.Users/Get", &h)));
        assert_eq!(
            m.mismatch(&req(&post, "/orders.v1.Orders/Get", &h)),
            Some(Mismatch::GrpcMethod)
        );
        let r = RouteMatch {
            grpc: Some(GrpcMethodMatch::regex("", "Get.*").expect("grpc")),
            ..RouteMatch::default()
        };
        assert!(r.matches(&req(&post, "/users.v1.Users/GetAll", &h)));
        assert!(!r.matches(&req(&post, "/users.v1.Users/List", &h)));
        assert!(!r.matches(&req(&post, "/not-grpc", &h)));
    }
}
