//! Routing's words as `weft.v1` messages, both ways. Every message is
//! checked as it is read (the sidecar NACKs a bad push; the control plane
//! refuses a bad `Apply`), and the error says where (`matches[1].path`).

use super::RouteKind;
use super::edge::{Cors, EdgeError, HostMatch, RateKey, RateLimit};
use super::filter::{
    BackendRef, FilterError, Filters, HeaderModifier, Mirror, PathRewrite, UrlRewrite,
};
use super::matching::{
    GrpcMethodMatch, HeaderMatch, MatchError, PathMatch, QueryMatch, RouteMatch, ValueMatch,
    parse_method,
};
use crate::name::{NameError, ServiceName};
use crate::v1 as pb;

/// A message that does not make a route, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {problem}")]
pub struct WireError {
    pub at: String,
    pub problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(transparent)]
    Match(#[from] MatchError),
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(transparent)]
    Edge(#[from] EdgeError),
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: i32 },
    #[error("a filter with no kind")]
    EmptyFilter,
    #[error("a {kind} cannot match by {what}")]
    NotFor { kind: RouteKind, what: &'static str },
}

fn at<E: Into<Problem>>(at: impl Into<String>) -> impl FnOnce(E) -> WireError {
    let at = at.into();
    move |e| WireError {
        at,
        problem: e.into(),
    }
}

impl RouteKind {
    pub fn from_wire(v: i32) -> Result<Self, Problem> {
        match pb::RouteKind::try_from(v) {
            Ok(pb::RouteKind::Http) => Ok(RouteKind::Http),
            Ok(pb::RouteKind::Grpc) => Ok(RouteKind::Grpc),
            _ => Err(Problem::Unknown {
                what: "route kind",
                value: v,
            }),
        }
    }

    pub fn to_wire(self) -> pb::RouteKind {
        match self {
            RouteKind::Http => pb::RouteKind::Http,
            RouteKind::Grpc => pb::RouteKind::Grpc,
        }
    }
}

fn match_type(v: i32) -> Result<pb::MatchType, Problem> {
    pb::MatchType::try_from(v).map_err(|_| Problem::Unknown {
        what: "match type",
        value: v,
    })
}

fn value_from_wire(t: i32, v: &str) -> Result<ValueMatch, Problem> {
    Ok(match match_type(t)? {
        pb::MatchType::RegularExpression => ValueMatch::regex(v)?,
        _ => ValueMatch::exact(v)?,
    })
}

fn value_to_wire(v: &ValueMatch) -> (pb::MatchType, String) {
    match v {
        ValueMatch::Exact(s) => (pb::MatchType::Exact, s.clone()),
        ValueMatch::Regex(e) => (pb::MatchType::RegularExpression, e.as_str().to_string()),
    }
}

/// One `matches` entry of a rule of a `kind` route.
pub fn match_from_wire(m: &pb::RouteMatch, kind: RouteKind) -> Result<RouteMatch, WireError> {
    // An HTTPRoute matches paths, methods and query parameters; a
    // GRPCRoute the call's service and method. Both match headers.
    let not_for = |what| at(what)(Problem::NotFor { kind, what });
    match kind {
        RouteKind::Http if m.grpc_method.is_some() => return Err(not_for("method")),
        RouteKind::Grpc if m.path.is_some() => return Err(not_for("path")),
        RouteKind::Grpc if !m.method.is_empty() => return Err(not_for("HTTP method")),
        RouteKind::Grpc if !m.query_params.is_empty() => return Err(not_for("queryParams")),
        _ => {}
    }
    let path = match &m.path {
        None => PathMatch::default(),
        Some(p) => match match_type(p.r#type).map_err(at("path.type"))? {
            pb::MatchType::Exact => PathMatch::exact(&p.value),
            pb::MatchType::RegularExpression => PathMatch::regex(&p.value),
            pb::MatchType::PathPrefix | pb::MatchType::Unspecified => PathMatch::prefix(&p.value),
        }
        .map_err(at("path"))?,
    };
    let method = (!m.method.is_empty())
        .then(|| parse_method(&m.method))
        .transpose()
        .map_err(at("method"))?;
    let mut headers = Vec::with_capacity(m.headers.len());
    for (i, h) in m.headers.iter().enumerate() {
        let where_ = format!("headers[{i}]");
        let value = value_from_wire(h.r#type, &h.value).map_err(at(where_.clone()))?;
        headers.push(HeaderMatch::new(&h.name, value).map_err(at(where_))?);
    }
    let mut query = Vec::with_capacity(m.query_params.len());
    for (i, q) in m.query_params.iter().enumerate() {
        let where_ = format!("queryParams[{i}]");
        let value = value_from_wire(q.r#type, &q.value).map_err(at(where_.clone()))?;
        query.push(QueryMatch::new(&q.name, value).map_err(at(where_))?);
    }
    let grpc = match &m.grpc_method {
        Some(g) => Some(
            match match_type(g.r#type).map_err(at("method.type"))? {
                pb::MatchType::RegularExpression => GrpcMethodMatch::regex(&g.service, &g.method),
                _ => GrpcMethodMatch::exact(&g.service, &g.method),
            }
            .map_err(at("method"))?,
        ),
        None => None,
    };
    Ok(RouteMatch {
        path,
        method,
        headers,
        query,
        grpc,
    })
}

pub fn match_to_wire(m: &RouteMatch) -> pb::RouteMatch {
    let path = match &m.path {
        PathMatch::Exact(v) => (pb::MatchType::Exact, v.clone()),
        PathMatch::Prefix(v) => (pb::MatchType::PathPrefix, v.clone()),
        PathMatch::Regex(e) => (pb::MatchType::RegularExpression, e.as_str().to_string()),
    };
    let value = |name: String, v: &ValueMatch| {
        let (t, value) = value_to_wire(v);
        pb::ValueMatch {
            r#type: t as i32,
            name,
            value,
        }
    };
    pb::RouteMatch {
        // Every path (the default) is said by leaving it out, as a
        // GRPCRoute must.
        path: (m.path != PathMatch::default()).then_some(pb::PathMatch {
            r#type: path.0 as i32,
            value: path.1,
        }),
        method: m.method.as_ref().map(|x| x.to_string()).unwrap_or_default(),
        headers: m
            .headers
            .iter()
            .map(|h| value(h.name.to_string(), &h.value))
            .collect(),
        query_params: m
            .query
            .iter()
            .map(|q| value(q.name.clone(), &q.value))
            .collect(),
        grpc_method: m.grpc.as_ref().map(|g| {
            let regex = matches!(g.service, Some(ValueMatch::Regex(_)))
                || matches!(g.method, Some(ValueMatch::Regex(_)));
            let text = |v: &Option<ValueMatch>| {
                v.as_ref()
                    .map(|v| v.value().to_string())
                    .unwrap_or_default()
            };
            pb::GrpcMethodMatch {
                r#type: if regex {
                    pb::MatchType::RegularExpression
                } else {
                    pb::MatchType::Exact
                } as i32,
                service: text(&g.service),
                method: text(&g.method),
            }
        }),
    }
}

pub fn backend_from_wire(b: &pb::BackendRef, where_: &str) -> Result<BackendRef, WireError> {
    let service = ServiceName::parse(&b.service).map_err(at(format!("{where_}.name")))?;
    BackendRef::new(service, Some(b.subset.as_str()), b.weight.unwrap_or(1))
        .map_err(at(format!("{where_}.subset")))
}

pub fn backend_to_wire(b: &BackendRef) -> pb::BackendRef {
    pb::BackendRef {
        service: b.service.to_string(),
        subset: b.subset.clone().unwrap_or_default(),
        weight: Some(b.weight),
    }
}

fn modifier_from_wire(m: &pb::HeaderModifier) -> Result<HeaderModifier, FilterError> {
    fn pairs(hs: &[pb::Header]) -> Vec<(&str, &str)> {
        hs.iter()
            .map(|h| (h.name.as_str(), h.value.as_str()))
            .collect()
    }
    let remove: Vec<&str> = m.remove.iter().map(String::as_str).collect();
    HeaderModifier::new(&pairs(&m.set), &pairs(&m.add), &remove)
}

fn modifier_to_wire(m: &HeaderModifier) -> pb::HeaderModifier {
    let pairs = |v: &[(http::HeaderName, http::HeaderValue)]| {
        v.iter()
            .map(|(n, v)| pb::Header {
                name: n.to_string(),
                value: v.to_str().unwrap_or_default().to_string(),
            })
            .collect()
    };
    pb::HeaderModifier {
        set: pairs(&m.set),
        add: pairs(&m.add),
        remove: m.remove.iter().map(|n| n.to_string()).collect(),
    }
}

/// A rule's filters; `matches` are the rule's (a prefix rewrite needs them).
pub fn filters_from_wire(
    fs: &[pb::RouteFilter],
    matches: &[RouteMatch],
) -> Result<Filters, WireError> {
    use pb::route_filter::Kind;
    let mut out = Filters::default();
    for (i, f) in fs.iter().enumerate() {
        let where_ = format!("filters[{i}]");
        match &f.kind {
            None => return Err(at(where_)(Problem::EmptyFilter)),
            Some(Kind::RequestHeaders(m)) => {
                out.request_headers = Some(modifier_from_wire(m).map_err(at(where_))?)
            }
            Some(Kind::ResponseHeaders(m)) => {
                out.response_headers = Some(modifier_from_wire(m).map_err(at(where_))?)
            }
            Some(Kind::UrlRewrite(r)) => {
                let path = match &r.path {
                    Some(pb::url_rewrite::Path::ReplaceFullPath(p)) => {
                        Some(PathRewrite::Full(p.clone()))
                    }
                    Some(pb::url_rewrite::Path::ReplacePrefixMatch(p)) => {
                        Some(PathRewrite::Prefix(p.clone()))
                    }
                    None => None,
                };
                let host = (!r.hostname.is_empty()).then_some(r.hostname.as_str());
                let rewrite = UrlRewrite::new(host, path).map_err(at(where_.clone()))?;
                // A rule without matches takes every path (the prefix `/`).
                if !matches.is_empty() {
                    let paths = matches.iter().map(|m| &m.path);
                    rewrite.check_matches(paths).map_err(at(where_))?;
                }
                out.rewrite = Some(rewrite);
            }
            Some(Kind::Mirror(m)) => {
                let b = m.backend.clone().unwrap_or_default();
                let backend = backend_from_wire(&b, &format!("{where_}.backendRef"))?;
                out.mirrors
                    .push(Mirror::new(backend, m.percent).map_err(at(where_))?);
            }
            Some(Kind::RateLimit(r)) => {
                out.rate_limit = Some(rate_limit_from_wire(r, &format!("{where_}.rateLimit"))?)
            }
            Some(Kind::Cors(c)) => {
                out.cors = Some(cors_from_wire(c).map_err(at(format!("{where_}.cors")))?)
            }
        }
    }
    Ok(out)
}

pub fn filters_to_wire(f: &Filters) -> Vec<pb::RouteFilter> {
    use pb::route_filter::Kind;
    let mut out = Vec::new();
    if let Some(m) = &f.request_headers {
        out.push(Kind::RequestHeaders(modifier_to_wire(m)));
    }
    if let Some(m) = &f.response_headers {
        out.push(Kind::ResponseHeaders(modifier_to_wire(m)));
    }
    if let Some(r) = &f.rewrite {
        out.push(Kind::UrlRewrite(pb::UrlRewrite {
            hostname: r
                .hostname
                .as_ref()
                .map(|h| h.to_string())
                .unwrap_or_default(),
            path: r.path.as_ref().map(|p| match p {
                PathRewrite::Full(p) => pb::url_rewrite::Path::ReplaceFullPath(p.clone()),
                PathRewrite::Prefix(p) => pb::url_rewrite::Path::ReplacePrefixMatch(p.clone()),
            }),
        }));
    }
    for m in &f.mirrors {
        out.push(Kind::Mirror(pb::RequestMirror {
            backend: Some(backend_to_wire(&m.backend)),
            percent: m.percent,
        }));
    }
    if let Some(r) = &f.rate_limit {
        out.push(Kind::RateLimit(rate_limit_to_wire(r)));
    }
    if let Some(c) = &f.cors {
        out.push(Kind::Cors(cors_to_wire(c)));
    }
    out.into_iter()
        .map(|k| pb::RouteFilter { kind: Some(k) })
        .collect()
}

/// A rate limit; `where_` names it in errors.
pub fn rate_limit_from_wire(r: &pb::RateLimit, where_: &str) -> Result<RateLimit, WireError> {
    use pb::rate_limit::Key;
    let key = match &r.key {
        None => RateKey::All,
        Some(Key::ClientIp(_)) => RateKey::ClientIp,
        Some(Key::Caller(_)) => RateKey::Caller,
        Some(Key::Header(h)) => RateLimit::header_key(h).map_err(at(format!("{where_}.header")))?,
    };
    let period = std::time::Duration::from_millis(r.period_ms);
    RateLimit::new(r.requests, period, r.burst, key).map_err(at(where_))
}

pub fn rate_limit_to_wire(r: &RateLimit) -> pb::RateLimit {
    use pb::rate_limit::Key;
    pb::RateLimit {
        requests: r.requests,
        period_ms: u64::try_from(r.period.as_millis()).unwrap_or(u64::MAX),
        burst: r.burst,
        key: match &r.key {
            RateKey::All => None,
            RateKey::ClientIp => Some(Key::ClientIp(true)),
            RateKey::Caller => Some(Key::Caller(true)),
            RateKey::Header(h) => Some(Key::Header(h.to_string())),
        },
    }
}

fn cors_from_wire(c: &pb::Cors) -> Result<Cors, EdgeError> {
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let max_age = (c.max_age_s > 0).then(|| std::time::Duration::from_secs(c.max_age_s));
    Cors::new(
        &strs(&c.allow_origins),
        &strs(&c.allow_methods),
        &strs(&c.allow_headers),
        &strs(&c.expose_headers),
        max_age,
        c.allow_credentials,
    )
}

fn cors_to_wire(c: &Cors) -> pb::Cors {
    use super::edge::OriginMatch;
    pb::Cors {
        allow_origins: c
            .allow_origins
            .iter()
            .map(|o| match o {
                OriginMatch::Any => "*".to_string(),
                OriginMatch::Exact(o) => o.clone(),
                OriginMatch::Wildcard { scheme, suffix } => format!("{scheme}://*{suffix}"),
            })
            .collect(),
        allow_methods: c.allow_methods.iter().map(|m| m.to_string()).collect(),
        allow_headers: c.allow_headers.iter().map(|h| h.to_string()).collect(),
        expose_headers: c.expose_headers.iter().map(|h| h.to_string()).collect(),
        max_age_s: c.max_age.map_or(0, |d| d.as_secs()),
        allow_credentials: c.allow_credentials,
    }
}

/// A route's host names; `where_` names the list in errors.
pub fn hostnames_from_wire(hs: &[String], where_: &str) -> Result<Vec<HostMatch>, WireError> {
    hs.iter()
        .enumerate()
        .map(|(i, h)| HostMatch::parse(h).map_err(at(format!("{where_}[{i}]"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_and_filters_survive_the_round_trip() {
        let m = RouteMatch {
            path: PathMatch::regex("/users/[0-9]+").expect("p"),
            method: Some(http::Method::GET),
            headers: vec![
                HeaderMatch::new("x-canary", ValueMatch::exact("1").expect("v")).expect("h"),
            ],
            query: vec![QueryMatch::new("v", ValueMatch::regex("2|3").expect("v")).expect("q")],
            grpc: None,
        };
        assert_eq!(
            match_from_wire(&match_to_wire(&m), RouteKind::Http),
            Ok(m.clone())
        );
        let g = RouteMatch {
            grpc: Some(GrpcMethodMatch::exact("users.v1.Users", "Get").expect("g")),
            ..RouteMatch::default()
        };
        assert_eq!(match_from_wire(&match_to_wire(&g), RouteKind::Grpc), Ok(g));
        let svc = ServiceName::parse("users").expect("n");
        let f = Filters {
            rate_limit: Some(
                RateLimit::new(5, std::time::Duration::from_secs(1), 0, RateKey::ClientIp)
                    .expect("rate"),
            ),
            cors: Some(
                Cors::new(
                    &["https://*.example.com"],
                    &["GET"],
                    &["x-a"],
                    &[],
                    None,
                    true,
                )
                .expect("cors"),
            ),
            request_headers: Some(HeaderModifier::new(&[("x-a", "1")], &[], &["x-b"]).expect("m")),
            response_headers: None,
            rewrite: Some(
                UrlRewrite::new(Some("users"), Some(PathRewrite::Prefix("/".into()))).expect("r"),
            ),
            mirrors: vec![
                Mirror::new(BackendRef::new(svc, Some("v2"), 1).expect("b"), 10).expect("m"),
            ],
        };
        let prefix = [RouteMatch {
            path: PathMatch::prefix("/api").expect("p"),
            ..RouteMatch::default()
        }];
        assert_eq!(filters_from_wire(&filters_to_wire(&f), &prefix), Ok(f));
    }

    #[test]
    fn errors_say_where() {
        let bad = pb::RouteMatch {
            headers: vec![pb::ValueMatch {
                r#type: pb::MatchType::RegularExpression as i32,
                name: "x".into(),
                value: "(".into(),
            }],
            ..Default::default()
        };
        let e = match_from_wire(&bad, RouteKind::Http).expect_err("bad regex");
        assert_eq!(e.at, "headers[0]");
        let grpc_path = pb::RouteMatch {
            path: Some(pb::PathMatch::default()),
            ..Default::default()
        };
        let e = match_from_wire(&grpc_path, RouteKind::Grpc).expect_err("no paths in a GRPCRoute");
        assert_eq!(e.to_string(), "path: a GRPCRoute cannot match by path");
        let rewrite = pb::RouteFilter {
            kind: Some(pb::route_filter::Kind::UrlRewrite(pb::UrlRewrite {
                hostname: String::new(),
                path: Some(pb::url_rewrite::Path::ReplacePrefixMatch("/x".into())),
            })),
        };
        let exact = [RouteMatch {
            path: PathMatch::exact("/a").expect("p"),
            ..RouteMatch::default()
        }];
        let e =
            filters_from_wire(&[rewrite], &exact).expect_err("prefix rewrite on an exact match");
        assert_eq!(
            e.to_string(),
            "filters[0]: a prefix can only be replaced when the rule matches by path prefix"
        );
    }
}
