//! A rule's `filters` as users write them: `type` and the settings in the
//! field of that type (`requestHeaderModifier`, `responseHeaderModifier`,
//! `urlRewrite` — HTTPRoute only —, `requestMirror`, `cors`, and Weft's
//! `rateLimit`), each built by the shared constructors of
//! `weft_proto::routing`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use weft_proto::routing::{
    Cors, HeaderModifier, Mirror, PathRewrite, RateKey, RateLimit, RouteKind, UrlRewrite,
};

use super::super::DocErrors;
use super::super::edge::rate_limit;
use super::{backend, check_service_ref};
use crate::resource::route::RouteFilter;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawFilter {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<RawModifier>,
    response_header_modifier: Option<RawModifier>,
    #[serde(rename = "urlRewrite")]
    url_rewrite: Option<RawRewrite>,
    request_mirror: Option<RawMirror>,
    cors: Option<RawCors>,
    rate_limit: Option<RawRateLimit>,
}

/// The Gateway API's `CORS` filter settings; `maxAge` in seconds.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCors {
    #[serde(default)]
    allow_origins: Vec<String>,
    #[serde(default)]
    allow_methods: Vec<String>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    max_age: Option<u64>,
    #[serde(default)]
    allow_credentials: bool,
}

/// Weft's `RateLimit` filter: `key` is `clientIP` or `{header: NAME}`;
/// unset: one bucket for every request of the rule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRateLimit {
    requests: u32,
    period: String,
    burst: Option<u32>,
    key: Option<Value>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawModifier {
    #[serde(default)]
    set: Vec<RawHeader>,
    #[serde(default)]
    add: Vec<RawHeader>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRewrite {
    hostname: Option<String>,
    path: Option<RawRewritePath>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRewritePath {
    #[serde(rename = "type")]
    kind: String,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

/// A mirror's backend: a reference without a weight.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawObjectRef {
    name: String,
    group: Option<String>,
    kind: Option<String>,
    #[serde(rename = "port")]
    _port: Option<u16>,
    subset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMirror {
    backend_ref: RawObjectRef,
    /// Unset: every request.
    percent: Option<u32>,
}

/// A kind's matches as users write them.
fn pairs(hs: &[RawHeader]) -> Vec<(&str, &str)> {
    hs.iter()
        .map(|h| (h.name.as_str(), h.value.as_str()))
        .collect()
}

fn modifier(
    at: &str,
    raw: Option<RawModifier>,
    errs: &mut DocErrors<'_>,
) -> Option<HeaderModifier> {
    let m = raw.unwrap_or_default();
    let (set, add) = (pairs(&m.set), pairs(&m.add));
    let remove: Vec<&str> = m.remove.iter().map(String::as_str).collect();
    // Each list on its own first, so that an error names the list it is in.
    let mut ok = true;
    for (field, check) in [
        ("set", HeaderModifier::new(&set, &[], &[])),
        ("add", HeaderModifier::new(&[], &add, &[])),
        ("remove", HeaderModifier::new(&[], &[], &remove)),
    ] {
        if let Err(e) = check {
            errs.push(format!("{at}.{field}"), e);
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    HeaderModifier::new(&set, &add, &remove)
        .map_err(|e| errs.push(at, e))
        .ok()
}

/// The filter types and the field each one's settings go in.
const FILTERS: [(&str, &str); 6] = [
    ("RequestHeaderModifier", "requestHeaderModifier"),
    ("ResponseHeaderModifier", "responseHeaderModifier"),
    ("URLRewrite", "urlRewrite"),
    ("RequestMirror", "requestMirror"),
    ("CORS", "cors"),
    ("RateLimit", "rateLimit"),
];

pub(super) fn parse_filter(
    kind: RouteKind,
    at: &str,
    f: RawFilter,
    errs: &mut DocErrors<'_>,
) -> Option<RouteFilter> {
    let given: Vec<&str> = [
        f.request_header_modifier
            .as_ref()
            .map(|_| "requestHeaderModifier"),
        f.response_header_modifier
            .as_ref()
            .map(|_| "responseHeaderModifier"),
        f.url_rewrite.as_ref().map(|_| "urlRewrite"),
        f.request_mirror.as_ref().map(|_| "requestMirror"),
        f.cors.as_ref().map(|_| "cors"),
        f.rate_limit.as_ref().map(|_| "rateLimit"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let allowed = FILTERS
        .iter()
        .filter(|(t, _)| kind == RouteKind::Http || *t != "URLRewrite");
    let Some(&(_, field)) = allowed.clone().find(|(t, _)| *t == f.kind) else {
        let names: Vec<&str> = allowed.map(|(t, _)| *t).collect();
        errs.push(
            format!("{at}.type"),
            format!(
                "{:?} is not a {} filter Weft supports (expected one of {})",
                f.kind,
                kind,
                names.join(", ")
            ),
        );
        return None;
    };
    if let Some(other) = given.iter().find(|g| **g != field) {
        errs.push(
            format!("{at}.{other}"),
            format!("a {} filter takes its settings in {field}", f.kind),
        );
        return None;
    }
    let here = format!("{at}.{field}");
    match f.kind.as_str() {
        "RequestHeaderModifier" => {
            modifier(&here, f.request_header_modifier, errs).map(RouteFilter::RequestHeaders)
        }
        "ResponseHeaderModifier" => {
            modifier(&here, f.response_header_modifier, errs).map(RouteFilter::ResponseHeaders)
        }
        "URLRewrite" => rewrite(&here, f.url_rewrite.unwrap_or_default(), errs),
        "CORS" => cors(&here, f.cors.unwrap_or_default(), errs),
        "RateLimit" => {
            let Some(r) = f.rate_limit else {
                errs.push(here, "a RateLimit filter needs its requests and period");
                return None;
            };
            route_rate_limit(&here, r, errs)
        }
        _ => {
            let Some(m) = f.request_mirror else {
                errs.push(here, "a RequestMirror filter needs its backendRef");
                return None;
            };
            mirror(&here, m, errs)
        }
    }
}

fn rewrite(at: &str, r: RawRewrite, errs: &mut DocErrors<'_>) -> Option<RouteFilter> {
    let path = match r.path {
        None => None,
        Some(p) => {
            let here = format!("{at}.path");
            match (p.kind.as_str(), p.replace_full_path, p.replace_prefix_match) {
                ("ReplaceFullPath", Some(v), None) => Some(PathRewrite::Full(v)),
                ("ReplacePrefixMatch", None, Some(v)) => Some(PathRewrite::Prefix(v)),
                ("ReplaceFullPath" | "ReplacePrefixMatch", _, _) => {
                    let field = if p.kind == "ReplaceFullPath" {
                        "replaceFullPath"
                    } else {
                        "replacePrefixMatch"
                    };
                    errs.push(
                        here,
                        format!(
                            "a {} rewrite takes its path in {field}, and only there",
                            p.kind
                        ),
                    );
                    return None;
                }
                (other, _, _) => {
                    errs.push(
                        format!("{here}.type"),
                        format!(
                            "unknown path rewrite {other:?}, expected ReplaceFullPath or ReplacePrefixMatch"
                        ),
                    );
                    return None;
                }
            }
        }
    };
    let field = match &path {
        Some(PathRewrite::Full(_)) => ".path.replaceFullPath",
        Some(PathRewrite::Prefix(_)) => ".path.replacePrefixMatch",
        None => ".hostname",
    };
    UrlRewrite::new(r.hostname.as_deref(), path)
        .map_err(|e| {
            let field = match e {
                weft_proto::routing::FilterError::Hostname(_) => ".hostname",
                _ => field,
            };
            errs.push(format!("{at}{field}"), e)
        })
        .ok()
        .map(RouteFilter::UrlRewrite)
}

fn mirror(at: &str, m: RawMirror, errs: &mut DocErrors<'_>) -> Option<RouteFilter> {
    let here = format!("{at}.backendRef");
    let b = &m.backend_ref;
    check_service_ref(&here, b.group.as_deref(), b.kind.as_deref(), errs);
    let backend = backend(&here, &b.name, b.subset.as_deref(), 1, errs)?;
    // Unset is every request; 0 written is refused rather than read as 100.
    let percent = match m.percent {
        None => 100,
        Some(0) => {
            errs.push(
                format!("{at}.percent"),
                "between 1 and 100; leave it out for every request",
            );
            return None;
        }
        Some(p) => p,
    };
    Mirror::new(backend, percent)
        .map_err(|e| errs.push(format!("{at}.percent"), e))
        .ok()
        .map(RouteFilter::Mirror)
}

fn cors(at: &str, c: RawCors, errs: &mut DocErrors<'_>) -> Option<RouteFilter> {
    fn strs(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    // Each list on its own first, so that an error names the entry.
    let before = errs.count();
    for (field, list) in [
        ("allowOrigins", &c.allow_origins),
        ("allowMethods", &c.allow_methods),
        ("allowHeaders", &c.allow_headers),
        ("exposeHeaders", &c.expose_headers),
    ] {
        for (i, v) in list.iter().enumerate() {
            let one = [v.as_str()];
            let check = match field {
                "allowOrigins" => Cors::new(&one, &[], &[], &[], None, false),
                "allowMethods" => Cors::new(&[], &one, &[], &[], None, false),
                "allowHeaders" => Cors::new(&[], &[], &one, &[], None, false),
                _ => Cors::new(&[], &[], &[], &one, None, false),
            };
            if let Err(e) = check {
                errs.push(format!("{at}.{field}[{i}]"), e);
            }
        }
    }
    if c.max_age == Some(0) {
        errs.push(
            format!("{at}.maxAge"),
            "at least 1 (seconds); leave it out to send no Access-Control-Max-Age",
        );
    }
    if errs.count() != before {
        return None;
    }
    Cors::new(
        &strs(&c.allow_origins),
        &strs(&c.allow_methods),
        &strs(&c.allow_headers),
        &strs(&c.expose_headers),
        c.max_age.map(Duration::from_secs),
        c.allow_credentials,
    )
    .map_err(|e| errs.push(format!("{at}.allowCredentials"), e))
    .ok()
    .map(RouteFilter::Cors)
}

/// `clientIP`, `{header: NAME}`, or unset.
fn rate_key(at: &str, key: Option<Value>, errs: &mut DocErrors<'_>) -> Option<RateKey> {
    let bad = "clientIP or {header: NAME}; leave it out for one bucket for every request";
    match key {
        None => Some(RateKey::All),
        Some(Value::String(s)) if s == "clientIP" => Some(RateKey::ClientIp),
        Some(Value::Object(m)) if m.len() == 1 => match m.get("header") {
            Some(Value::String(h)) => RateLimit::header_key(h)
                .map_err(|e| errs.push(format!("{at}.header"), e))
                .ok(),
            _ => {
                errs.push(at, bad);
                None
            }
        },
        Some(_) => {
            errs.push(at, bad);
            None
        }
    }
}

fn route_rate_limit(at: &str, r: RawRateLimit, errs: &mut DocErrors<'_>) -> Option<RouteFilter> {
    let key = rate_key(&format!("{at}.key"), r.key, errs)?;
    rate_limit(at, r.requests, &r.period, r.burst, key, errs).map(RouteFilter::RateLimit)
}
