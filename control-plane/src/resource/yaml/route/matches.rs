//! A rule's `matches` as users write them: an `HTTPRoute`'s path, method,
//! headers and query parameters, a `GRPCRoute`'s method and headers, each
//! built by the shared constructors of `weft_proto::routing`.

use serde::Deserialize;
use weft_proto::routing::{
    GrpcMethodMatch, HeaderMatch, PathMatch, QueryMatch, RouteMatch, ValueMatch, parse_method,
};

use super::super::DocErrors;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawHttpMatch {
    path: Option<RawPath>,
    method: Option<String>,
    #[serde(default)]
    headers: Vec<RawValueMatch>,
    #[serde(default)]
    query_params: Vec<RawValueMatch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValueMatch {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrpcMatch {
    method: Option<RawGrpcMethod>,
    #[serde(default)]
    headers: Vec<RawValueMatch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrpcMethod {
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    service: String,
    #[serde(default)]
    method: String,
}

pub(super) trait RawMatch: for<'de> Deserialize<'de> {
    fn parse(self, at: &str, errs: &mut DocErrors<'_>) -> Option<RouteMatch>;
}

/// The spec of `HTTPRoute/name` or `GRPCRoute/name`, or `None` with every
/// problem pushed to `errs`.
fn match_kind<'a>(kind: Option<&'a str>, default: &'a str) -> &'a str {
    kind.unwrap_or(default)
}

fn value_match(
    at: &str,
    kind: Option<&str>,
    value: &str,
    errs: &mut DocErrors<'_>,
) -> Option<ValueMatch> {
    match match_kind(kind, "Exact") {
        "Exact" => ValueMatch::exact(value),
        "RegularExpression" => ValueMatch::regex(value),
        other => {
            errs.push(
                format!("{at}.type"),
                format!("unknown match type {other:?}, expected Exact or RegularExpression"),
            );
            return None;
        }
    }
    .map_err(|e| errs.push(format!("{at}.value"), e))
    .ok()
}

fn headers(at: &str, raw: &[RawValueMatch], errs: &mut DocErrors<'_>) -> Vec<HeaderMatch> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, h) in raw.iter().enumerate() {
        let here = format!("{at}.headers[{i}]");
        let Some(value) = value_match(&here, h.kind.as_deref(), &h.value, errs) else {
            continue;
        };
        match HeaderMatch::new(&h.name, value) {
            Ok(m) => out.push(m),
            Err(e) => errs.push(format!("{here}.name"), e),
        }
    }
    out
}

impl RawMatch for RawHttpMatch {
    fn parse(self, at: &str, errs: &mut DocErrors<'_>) -> Option<RouteMatch> {
        let before = errs.count();
        let path = match self.path {
            None => PathMatch::default(),
            Some(p) => {
                let value = p.value.as_deref().unwrap_or("/");
                match match_kind(p.kind.as_deref(), "PathPrefix") {
                    "Exact" => PathMatch::exact(value),
                    "PathPrefix" => PathMatch::prefix(value),
                    "RegularExpression" => PathMatch::regex(value),
                    other => {
                        errs.push(
                            format!("{at}.path.type"),
                            format!(
                                "unknown path match type {other:?}, expected Exact, PathPrefix or RegularExpression"
                            ),
                        );
                        Ok(PathMatch::default())
                    }
                }
                .unwrap_or_else(|e| {
                    errs.push(format!("{at}.path.value"), e);
                    PathMatch::default()
                })
            }
        };
        let method = self.method.as_deref().and_then(|m| {
            parse_method(m)
                .map_err(|e| errs.push(format!("{at}.method"), e))
                .ok()
        });
        let headers = headers(at, &self.headers, errs);
        let mut query = Vec::with_capacity(self.query_params.len());
        for (i, q) in self.query_params.iter().enumerate() {
            let here = format!("{at}.queryParams[{i}]");
            let Some(value) = value_match(&here, q.kind.as_deref(), &q.value, errs) else {
                continue;
            };
            match QueryMatch::new(&q.name, value) {
                Ok(m) => query.push(m),
                Err(e) => errs.push(format!("{here}.name"), e),
            }
        }
        (errs.count() == before).then_some(RouteMatch {
            path,
            method,
            headers,
            query,
            grpc: None,
        })
    }
}

impl RawMatch for RawGrpcMatch {
    fn parse(self, at: &str, errs: &mut DocErrors<'_>) -> Option<RouteMatch> {
        let before = errs.count();
        let grpc = self.method.and_then(|m| {
            let here = format!("{at}.method");
            match match_kind(m.kind.as_deref(), "Exact") {
                "Exact" => GrpcMethodMatch::exact(&m.service, &m.method),
                "RegularExpression" => GrpcMethodMatch::regex(&m.service, &m.method),
                other => {
                    errs.push(
                        format!("{here}.type"),
                        format!(
                            "unknown match type {other:?}, expected Exact or RegularExpression"
                        ),
                    );
                    return None;
                }
            }
            .map_err(|e| errs.push(here, e))
            .ok()
        });
        let headers = headers(at, &self.headers, errs);
        (errs.count() == before).then_some(RouteMatch {
            grpc,
            headers,
            ..RouteMatch::default()
        })
    }
}
