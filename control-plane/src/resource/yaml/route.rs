//! An `HTTPRoute`'s or a `GRPCRoute`'s `spec` as the Kubernetes Gateway API
//! (v1, GAMMA's mesh profile) writes it, so that a user who knows it needs
//! no docs: `parentRefs` to services, `rules` with `matches`, `filters`,
//! `backendRefs`, `timeouts`; Weft adds `subset` on a backend (one of the
//! service's `spec.subsets`) and a rule's `retry` and `fault`, with the
//! fields of a `Service`'s `retries` and `faults`. A backend's or a
//! parent's `port` is accepted and ignored (a Weft service has one port).

use serde::Deserialize;
use serde_json::Value;
use weft_proto::routing::{
    BackendRef, GrpcMethodMatch, HeaderMatch, HeaderModifier, Mirror, PathMatch, PathRewrite,
    QueryMatch, RouteKind, RouteMatch, UrlRewrite, ValueMatch, parse_method,
};

use super::resilience::{RawFaults, RawRetries, duration};
use super::{DocErrors, typed};
use crate::resource::Name;
use crate::resource::route::{
    RouteFilter, RouteRule, RouteSpec, RulePart, RuleParts, RuleTimeouts, SpecPart,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRouteSpec<M> {
    parent_refs: Vec<RawParentRef>,
    #[serde(default = "Vec::new")]
    rules: Vec<RawRule<M>>,
}

/// A reference to a service: `group` "" (or `core`), `kind` Service.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawParentRef {
    name: String,
    group: Option<String>,
    kind: Option<String>,
    #[serde(rename = "port")]
    _port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule<M> {
    #[serde(default = "Vec::new")]
    matches: Vec<M>,
    #[serde(default)]
    filters: Vec<RawFilter>,
    #[serde(default)]
    backend_refs: Vec<RawBackendRef>,
    timeouts: Option<RawRuleTimeouts>,
    retry: Option<RawRetries>,
    fault: Option<RawFaults>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBackendRef {
    name: String,
    group: Option<String>,
    kind: Option<String>,
    #[serde(rename = "port")]
    _port: Option<u16>,
    /// Unset: 1, as in the Gateway API.
    weight: Option<u32>,
    /// Weft's: one of the service's `spec.subsets`.
    subset: Option<String>,
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
struct RawRuleTimeouts {
    request: Option<String>,
    backend_request: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHttpMatch {
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
struct RawGrpcMatch {
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFilter {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<RawModifier>,
    response_header_modifier: Option<RawModifier>,
    #[serde(rename = "urlRewrite")]
    url_rewrite: Option<RawRewrite>,
    request_mirror: Option<RawMirror>,
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMirror {
    backend_ref: RawObjectRef,
    /// Unset: every request.
    percent: Option<u32>,
}

/// A kind's matches as users write them.
trait RawMatch: for<'de> Deserialize<'de> {
    fn parse(self, at: &str, errs: &mut DocErrors<'_>) -> Option<RouteMatch>;
}

/// The spec of `HTTPRoute/name` or `GRPCRoute/name`, or `None` with every
/// problem pushed to `errs`.
pub(super) fn parse(
    name: Name,
    kind: RouteKind,
    spec: Value,
    errs: &mut DocErrors<'_>,
) -> Option<RouteSpec> {
    match kind {
        RouteKind::Http => parse_as::<RawHttpMatch>(name, kind, spec, errs),
        RouteKind::Grpc => parse_as::<RawGrpcMatch>(name, kind, spec, errs),
    }
}

fn parse_as<M: RawMatch>(
    name: Name,
    kind: RouteKind,
    spec: Value,
    errs: &mut DocErrors<'_>,
) -> Option<RouteSpec> {
    let raw: RawRouteSpec<M> = match typed(spec, "spec") {
        Ok(r) => r,
        Err((path, reason)) => {
            errs.push(path, reason);
            return None;
        }
    };
    let before = errs.count();
    let mut services = Vec::with_capacity(raw.parent_refs.len());
    for (i, p) in raw.parent_refs.iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        check_service_ref(&at, p.group.as_deref(), p.kind.as_deref(), errs);
        if let Some(s) = service_name(&format!("{at}.name"), &p.name, errs) {
            services.push(s);
        }
    }
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, r) in raw.rules.into_iter().enumerate() {
        if let Some(rule) = parse_rule(kind, &format!("spec.rules[{i}]"), r, errs) {
            rules.push(rule);
        }
    }
    if errs.count() != before {
        return None;
    }
    RouteSpec::new(name, kind, services, rules)
        .map_err(|es| {
            for (part, e) in es {
                let at = match part {
                    SpecPart::Parents => "spec.parentRefs".to_string(),
                    SpecPart::Parent(i) => format!("spec.parentRefs[{i}].name"),
                    SpecPart::Rules => "spec.rules".to_string(),
                };
                errs.push(at, e);
            }
        })
        .ok()
}

/// A reference must be to a core `Service`: the only kind a Weft route
/// can attach to or send to.
fn check_service_ref(at: &str, group: Option<&str>, kind: Option<&str>, errs: &mut DocErrors<'_>) {
    if let Some(g) = group
        && !g.is_empty()
        && g != "core"
    {
        errs.push(
            format!("{at}.group"),
            format!("{g:?}: only the core group (\"\") is supported"),
        );
    }
    if let Some(k) = kind
        && k != "Service"
    {
        errs.push(
            format!("{at}.kind"),
            format!("{k:?}: only Service is supported"),
        );
    }
}

fn service_name(at: &str, name: &str, errs: &mut DocErrors<'_>) -> Option<Name> {
    Name::parse(name).map_err(|e| errs.push(at, e)).ok()
}

fn backend(
    at: &str,
    name: &str,
    subset: Option<&str>,
    weight: u32,
    errs: &mut DocErrors<'_>,
) -> Option<BackendRef> {
    let service = service_name(&format!("{at}.name"), name, errs)?;
    BackendRef::new(service, subset, weight)
        .map_err(|e| errs.push(format!("{at}.subset"), e))
        .ok()
}

fn parse_rule<M: RawMatch>(
    kind: RouteKind,
    at: &str,
    r: RawRule<M>,
    errs: &mut DocErrors<'_>,
) -> Option<RouteRule> {
    let before = errs.count();
    let mut parts = RuleParts::default();
    for (i, m) in r.matches.into_iter().enumerate() {
        if let Some(m) = m.parse(&format!("{at}.matches[{i}]"), errs) {
            parts.matches.push(m);
        }
    }
    for (i, b) in r.backend_refs.iter().enumerate() {
        let here = format!("{at}.backendRefs[{i}]");
        check_service_ref(&here, b.group.as_deref(), b.kind.as_deref(), errs);
        let weight = b.weight.unwrap_or(1);
        if let Some(b) = backend(&here, &b.name, b.subset.as_deref(), weight, errs) {
            parts.backends.push(b);
        }
    }
    for (i, f) in r.filters.into_iter().enumerate() {
        if let Some(f) = parse_filter(kind, &format!("{at}.filters[{i}]"), f, errs) {
            parts.filters.push(f);
        }
    }
    if let Some(t) = r.timeouts {
        parts.timeouts = RuleTimeouts {
            request: duration(
                t.request.as_deref(),
                &format!("{at}.timeouts.request"),
                errs,
            ),
            backend_request: duration(
                t.backend_request.as_deref(),
                &format!("{at}.timeouts.backendRequest"),
                errs,
            ),
        };
    }
    parts.retry = r.retry.and_then(|x| x.parse(&format!("{at}.retry"), errs));
    parts.fault = r.fault.and_then(|x| x.parse(&format!("{at}.fault"), errs));
    if errs.count() != before {
        return None;
    }
    RouteRule::new(kind, parts)
        .map_err(|es| {
            for (part, e) in es {
                let field = match part {
                    RulePart::Matches => "matches".to_string(),
                    RulePart::Backends => "backendRefs".to_string(),
                    RulePart::Backend(i) => format!("backendRefs[{i}].weight"),
                    RulePart::Filters => "filters".to_string(),
                    RulePart::Filter(i) => format!("filters[{i}]"),
                    RulePart::Timeouts => "timeouts.backendRequest".to_string(),
                };
                errs.push(format!("{at}.{field}"), e);
            }
        })
        .ok()
}

/// `type` with the Gateway API's default.
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
const FILTERS: [(&str, &str); 4] = [
    ("RequestHeaderModifier", "requestHeaderModifier"),
    ("ResponseHeaderModifier", "responseHeaderModifier"),
    ("URLRewrite", "urlRewrite"),
    ("RequestMirror", "requestMirror"),
];

fn parse_filter(
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weft_proto::routing::{PathRewrite, ValueMatch};

    use crate::resource::route::RouteFilter;
    use crate::resource::{Resource, RouteSpec, parse_documents, to_yaml_documents};

    /// Written as the Gateway API's own examples write them.
    const GOOD: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: users-canary
spec:
  parentRefs:
    - group: ""
      kind: Service
      name: users
      port: 8080
  rules:
    - matches:
        - path: {type: PathPrefix, value: /api/users}
          method: GET
          headers: [{type: Exact, name: x-canary, value: "1"}]
          queryParams: [{type: RegularExpression, name: v, value: "2|3"}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-route, value: canary}]
            remove: [x-debug]
        - type: URLRewrite
          urlRewrite:
            hostname: users.internal
            path: {type: ReplacePrefixMatch, replacePrefixMatch: /users}
        - type: RequestMirror
          requestMirror:
            backendRef: {name: shadow, port: 8080}
            percent: 10
      backendRefs:
        - {name: users, port: 8080, subset: v2}
      timeouts: {request: 2s, backendRequest: 500ms}
      retry: {attempts: 3, on: [unavailable, reset], perTryTimeout: 400ms}
      fault: {abort: {percent: 1, httpStatus: 503}}
    - backendRefs:
        - {name: users, subset: v1, weight: 90}
        - {name: users, subset: v2, weight: 10}
---
apiVersion: weft.dev/v1
kind: GRPCRoute
metadata: {name: users-grpc}
spec:
  parentRefs: [{name: users}, {name: accounts}]
  rules:
    - matches:
        - method: {service: users.v1.Users, method: Get}
          headers: [{name: x-tenant, type: RegularExpression, value: "a.*"}]
        - method: {type: RegularExpression, method: "List.*"}
      filters:
        - type: ResponseHeaderModifier
          responseHeaderModifier: {add: [{name: x-served-by, value: v2}]}
      backendRefs: [{name: users, subset: v2}]
"#;

    fn routes(text: &str) -> Vec<RouteSpec> {
        parse_documents(text)
            .expect("valid")
            .into_iter()
            .map(|r| match r {
                Resource::Route(r) => *r,
                other => panic!("a route, not {other:?}"),
            })
            .collect()
    }

    #[test]
    fn the_gateway_api_shape_parses_with_its_defaults() {
        let rs = routes(GOOD);
        let http = &rs[0];
        assert_eq!(http.qualified_name(), "HTTPRoute/users-canary");
        assert_eq!(http.services()[0].as_str(), "users");
        let first = &http.rules()[0];
        let m = &first.matches()[0];
        assert_eq!(m.path.value(), "/api/users");
        assert_eq!(m.method, Some(http::Method::GET));
        assert!(matches!(m.query[0].value, ValueMatch::Regex(_)));
        assert_eq!(first.backends()[0].weight, 1, "the default weight");
        assert_eq!(first.backends()[0].subset.as_deref(), Some("v2"));
        let kinds: Vec<&str> = first.filters().iter().map(RouteFilter::type_name).collect();
        assert_eq!(
            kinds,
            ["RequestHeaderModifier", "URLRewrite", "RequestMirror"]
        );
        let merged = first.merged_filters();
        let rewrite = merged.rewrite.expect("a rewrite");
        assert_eq!(rewrite.path, Some(PathRewrite::Prefix("/users".into())));
        assert_eq!(merged.mirrors[0].percent, 10);
        assert_eq!(
            first.timeouts().backend_request,
            Some(Duration::from_millis(500))
        );
        assert_eq!(
            first.retry().and_then(|r| r.attempts).map(|a| a.get()),
            Some(3)
        );
        assert!(first.fault().and_then(|f| f.abort).is_some());
        let split = &http.rules()[1];
        assert!(split.matches().is_empty(), "no matches: every request");
        assert_eq!(
            split
                .backends()
                .iter()
                .map(|b| b.weight)
                .collect::<Vec<_>>(),
            [90, 10]
        );
        let grpc = &rs[1];
        assert_eq!(grpc.qualified_name(), "GRPCRoute/users-grpc");
        assert_eq!(grpc.services().len(), 2);
        let g = grpc.rules()[0].matches()[0].grpc.as_ref().expect("method");
        assert_eq!(
            g.service.as_ref().map(ValueMatch::value),
            Some("users.v1.Users")
        );
    }

    #[test]
    fn routes_round_trip_through_yaml() {
        let rs = parse_documents(GOOD).expect("valid");
        let text = to_yaml_documents(&rs);
        assert!(
            text.contains("apiVersion: \"gateway.networking.k8s.io/v1\""),
            "{text}"
        );
        assert_eq!(parse_documents(&text).expect("reparse"), rs, "{text}");
    }

    fn errors(text: &str) -> Vec<String> {
        parse_documents(text)
            .expect_err("must be rejected")
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    fn http_route(spec: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r}}\nspec:\n{spec}"
        )
    }

    #[test]
    fn every_problem_is_named_with_its_path() {
        let e = errors(&http_route(
            "  parentRefs: [{name: users, kind: Gateway}]\n  rules:\n    - matches:\n        - path: {type: RegularExpression, value: \"/users/(\"}\n          method: get\n          headers: [{type: Prefix, name: x, value: v}]\n        - path: {type: Exact, value: /a}\n      filters:\n        - type: URLRewrite\n          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}\n        - type: RequestRedirect\n      backendRefs: [{name: users, weight: 0}, {name: Users}]\n      timeouts: {request: soon}\n      retry: {attempts: 11}\n      fault: {abort: {percent: 101}}\n",
        ));
        let paths: Vec<&str> = e
            .iter()
            .map(|e| {
                e.trim_start_matches("document 1 (HTTPRoute/r): ")
                    .split(": ")
                    .next()
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            paths,
            [
                "spec.parentRefs[0].kind",
                "spec.rules[0].matches[0].path.value",
                "spec.rules[0].matches[0].method",
                "spec.rules[0].matches[0].headers[0].type",
                "spec.rules[0].backendRefs[1].name",
                "spec.rules[0].filters[1].type",
                "spec.rules[0].timeouts.request",
                "spec.rules[0].retry.attempts",
                "spec.rules[0].fault.abort.percent",
            ],
            "{e:#?}"
        );
        // What spans a rule is checked once its parts are good.
        let e = errors(&http_route(
            "  parentRefs: [{name: users}]\n  rules:\n    - matches: [{path: {type: Exact, value: /a}}]\n      filters:\n        - type: URLRewrite\n          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}\n      backendRefs: [{name: users, weight: 0}]\n      timeouts: {request: 1s, backendRequest: 2s}\n",
        ));
        assert_eq!(
            e,
            [
                "document 1 (HTTPRoute/r): spec.rules[0].backendRefs: the weights sum to 0, so no request could be sent: give a backend a weight above 0, or leave backendRefs out to send to the service itself",
                "document 1 (HTTPRoute/r): spec.rules[0].filters[0]: a prefix can only be replaced when the rule matches by path prefix",
                "document 1 (HTTPRoute/r): spec.rules[0].timeouts.backendRequest: backendRequest must not exceed request",
            ]
        );
    }

    #[test]
    fn unknown_fields_and_kind_mismatches_are_errors() {
        let e = errors(&http_route("  parentRefs: [{name: users, namespace: x}]\n"));
        assert!(
            e[0].contains("spec.parentRefs[0]") && e[0].contains("unknown field `namespace`"),
            "{e:?}"
        );
        let e = errors(&http_route("  parentRefs: [{name: users}]\n  rules: []\n"));
        assert_eq!(
            e,
            ["document 1 (HTTPRoute/r): spec.rules: a route needs at least one rule"]
        );
        let grpc = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{name: users}]\n  rules:\n    - matches: [{path: {value: /x}}]\n";
        let e = errors(grpc);
        assert!(
            e[0].contains("spec.rules[0].matches[0]") && e[0].contains("unknown field `path`"),
            "{e:?}"
        );
        let rewrite = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g}\nspec:\n  parentRefs: [{name: users}]\n  rules:\n    - filters: [{type: URLRewrite, urlRewrite: {hostname: x}}]\n";
        let e = errors(rewrite);
        assert!(
            e[0].contains("spec.rules[0].filters[0].type")
                && e[0].contains("is not a GRPCRoute filter"),
            "{e:?}"
        );
        let mismatched = http_route(
            "  parentRefs: [{name: users}]\n  rules:\n    - filters: [{type: RequestHeaderModifier, responseHeaderModifier: {}}]\n",
        );
        assert!(errors(&mismatched)[0].contains("filters[0].responseHeaderModifier"));
        let version =
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Service\nmetadata: {name: s}\n";
        assert!(errors(version)[0].contains("apiVersion"));
        let mirror = http_route(
            "  parentRefs: [{name: users}]\n  rules:\n    - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: s}, percent: 0}}]\n",
        );
        assert!(errors(&mirror)[0].contains("filters[0].requestMirror.percent"));
        let forged = http_route(
            "  parentRefs: [{name: users}]\n  rules:\n    - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-weft-peer-identity, value: x}]}}]\n",
        );
        assert!(
            errors(&forged)[0].contains("filters[0].requestHeaderModifier.set"),
            "{:?}",
            errors(&forged)
        );
    }
}
