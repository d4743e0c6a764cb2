//! An `HTTPRoute`'s or a `GRPCRoute`'s `spec` as the Kubernetes Gateway API
//! (v1, GAMMA's mesh profile) writes it, so that a user who knows it needs
//! no docs: `parentRefs` to services, `rules` with `matches`, `filters`,
//! `backendRefs`, `timeouts`; Weft adds `subset` on a backend (one of the
//! service's `spec.subsets`) and a rule's `retry` and `fault`, with the
//! fields of a `Service`'s `retries` and `faults`. A backend's or a
//! parent's `port` is accepted and ignored (a Weft service has one port).
//! A parent may also be a `Gateway` (group `gateway.networking.k8s.io`,
//! optionally one listener by `sectionName`), and `hostnames` say which
//! hosts the route answers for there.

#[cfg(test)]
mod edge_tests;
mod filters;
mod matches;

use serde::Deserialize;
use serde_json::Value;
use weft_proto::routing::{BackendRef, HostMatch, RouteKind};

use super::resilience::{RawFaults, RawRetries, duration};
use super::{DocErrors, typed};
use crate::resource::route::{
    Attachment, RouteRule, RouteSpec, RulePart, RuleParts, RuleTimeouts, SpecPart,
};
use crate::resource::{GatewayParent, Name};
use filters::{RawFilter, parse_filter};
use matches::{RawGrpcMatch, RawHttpMatch, RawMatch};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRouteSpec<M> {
    parent_refs: Vec<RawParentRef>,
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default = "Vec::new")]
    rules: Vec<RawRule<M>>,
}

/// A reference to a service (`group` "" or `core`, `kind` Service, the
/// default) or to a gateway (`group` `gateway.networking.k8s.io`, `kind`
/// Gateway, optionally one listener by `sectionName`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawParentRef {
    name: String,
    group: Option<String>,
    kind: Option<String>,
    section_name: Option<String>,
    #[serde(rename = "port")]
    _port: Option<u16>,
}

/// The Gateway API's group, which a `Gateway` parent is in.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Where one parent went: the services or the gateways, at which index.
enum ParentAt {
    Service(usize),
    Gateway(usize),
}

fn parse_parent(
    at: &str,
    p: &RawParentRef,
    to: &mut Attachment,
    written: &mut Vec<ParentAt>,
    errs: &mut DocErrors<'_>,
) {
    if let Some(k) = p.kind.as_deref()
        && k != "Service"
        && k != "Gateway"
    {
        errs.push(
            format!("{at}.kind"),
            format!("{k:?}: a route attaches to a Service or a Gateway"),
        );
        return;
    }
    if p.kind.as_deref() != Some("Gateway") {
        check_service_ref(at, p.group.as_deref(), p.kind.as_deref(), errs);
        if p.section_name.is_some() {
            errs.push(
                format!("{at}.sectionName"),
                "sectionName names a Gateway's listener; a Service has none",
            );
        }
        if let Some(s) = service_name(&format!("{at}.name"), &p.name, errs) {
            written.push(ParentAt::Service(to.services.len()));
            to.services.push(s);
        }
        return;
    }
    if let Some(g) = p.group.as_deref()
        && g != GATEWAY_GROUP
    {
        errs.push(
            format!("{at}.group"),
            format!("{g:?}: a Gateway is in group {GATEWAY_GROUP:?}"),
        );
    }
    let name = service_name(&format!("{at}.name"), &p.name, errs);
    let section = match p.section_name.as_deref() {
        None => Some(None),
        Some(s) => Name::parse(s)
            .map(Some)
            .map_err(|e| errs.push(format!("{at}.sectionName"), e))
            .ok(),
    };
    if let (Some(name), Some(section)) = (name, section) {
        written.push(ParentAt::Gateway(to.gateways.len()));
        to.gateways.push(GatewayParent { name, section });
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRuleTimeouts {
    request: Option<String>,
    backend_request: Option<String>,
}

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
    let mut to = Attachment::default();
    let mut written = Vec::with_capacity(raw.parent_refs.len());
    for (i, p) in raw.parent_refs.iter().enumerate() {
        parse_parent(
            &format!("spec.parentRefs[{i}]"),
            p,
            &mut to,
            &mut written,
            errs,
        );
    }
    for (i, h) in raw.hostnames.iter().enumerate() {
        match HostMatch::parse(h) {
            Ok(h) => to.hostnames.push(h),
            Err(e) => errs.push(format!("spec.hostnames[{i}]"), e),
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
    // Problems are named by where the parent was written.
    let written_at =
        |found: &dyn Fn(&ParentAt) -> bool| written.iter().position(found).unwrap_or_default();
    RouteSpec::attached(name, kind, to, rules)
        .map_err(|es| {
            for (part, e) in es {
                let at = match part {
                    SpecPart::Parents => "spec.parentRefs".to_string(),
                    SpecPart::Parent(i) => {
                        let k = written_at(&|p| matches!(p, ParentAt::Service(j) if *j == i));
                        format!("spec.parentRefs[{k}].name")
                    }
                    SpecPart::Gateway(i) => {
                        let k = written_at(&|p| matches!(p, ParentAt::Gateway(j) if *j == i));
                        format!("spec.parentRefs[{k}]")
                    }
                    SpecPart::Hostnames => "spec.hostnames".to_string(),
                    SpecPart::Hostname(i) => format!("spec.hostnames[{i}]"),
                    SpecPart::Rules => "spec.rules".to_string(),
                    SpecPart::Backends(i) => format!("spec.rules[{i}].backendRefs"),
                };
                errs.push(at, e);
            }
        })
        .ok()
}

/// A reference must be to a core `Service`: the only kind a Weft route
/// can attach to or send to.
pub(super) fn check_service_ref(
    at: &str,
    group: Option<&str>,
    kind: Option<&str>,
    errs: &mut DocErrors<'_>,
) {
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

pub(super) fn backend(
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
            "  parentRefs: [{name: users, kind: Mesh}]\n  rules:\n    - matches:\n        - path: {type: RegularExpression, value: \"/users/(\"}\n          method: get\n          headers: [{type: Prefix, name: x, value: v}]\n        - path: {type: Exact, value: /a}\n      filters:\n        - type: URLRewrite\n          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}\n        - type: RequestRedirect\n      backendRefs: [{name: users, weight: 0}, {name: Users}]\n      timeouts: {request: soon}\n      retry: {attempts: 11}\n      fault: {abort: {percent: 101}}\n",
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
