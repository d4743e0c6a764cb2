//! What a gateway adds to routes' YAML: gateway parents with a listener,
//! host names, the CORS and RateLimit filters; and a `Service`'s
//! `rateLimit`. Each parses, round-trips, and is refused with its path.

use std::time::Duration;

use weft_proto::routing::{HostMatch, RateKey};

use crate::resource::route::RouteFilter;
use crate::resource::{Resource, RouteSpec, parse_documents, to_yaml_documents};

const AT_GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api}
spec:
  parentRefs:
    - {group: gateway.networking.k8s.io, kind: Gateway, name: gateway, sectionName: https}
    - {name: users}
    - {kind: Gateway, name: internal}
  hostnames: [api.example.com, "*.api.example.com"]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api/users}}]
      filters:
        - type: CORS
          cors:
            allowOrigins: ["https://app.example.com", "https://*.example.org"]
            allowMethods: [GET, POST]
            allowHeaders: [content-type]
            exposeHeaders: [x-request-id]
            maxAge: 600
            allowCredentials: true
        - type: RateLimit
          rateLimit: {requests: 100, period: 1s, burst: 20, key: clientIP}
      backendRefs: [{name: users}]
    - filters:
        - type: RateLimit
          rateLimit: {requests: 10, period: 1m, key: {header: x-api-key}}
      backendRefs: [{name: orders}]
"#;

fn route(text: &str) -> RouteSpec {
    match parse_documents(text).expect("valid").pop() {
        Some(Resource::Route(r)) => *r,
        other => panic!("a route, not {other:?}"),
    }
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
fn gateway_parents_host_names_and_edge_filters_parse_and_round_trip() {
    let r = route(AT_GATEWAY);
    assert_eq!(
        r.services().iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        ["users"]
    );
    let gws: Vec<(&str, Option<&str>)> = r
        .gateways()
        .iter()
        .map(|g| (g.name.as_str(), g.section.as_ref().map(|s| s.as_str())))
        .collect();
    assert_eq!(gws, [("gateway", Some("https")), ("internal", None)]);
    assert_eq!(r.gateway_ref_index(1), 2, "services first, as written back");
    assert_eq!(
        r.hostnames(),
        [
            HostMatch::parse("api.example.com").expect("h"),
            HostMatch::parse("*.api.example.com").expect("h")
        ]
    );
    let first = &r.rules()[0];
    let kinds: Vec<&str> = first.filters().iter().map(RouteFilter::type_name).collect();
    assert_eq!(kinds, ["CORS", "RateLimit"]);
    let merged = first.merged_filters();
    let cors = merged.cors.expect("cors");
    assert!(cors.allows_origin("https://a.example.org") && cors.allow_credentials);
    assert_eq!(cors.max_age, Some(Duration::from_secs(600)));
    let limit = merged.rate_limit.expect("a limit");
    assert_eq!(
        (limit.requests, limit.period, limit.burst, limit.key),
        (100, Duration::from_secs(1), 20, RateKey::ClientIp)
    );
    let by_key = r.rules()[1].merged_filters().rate_limit.expect("a limit");
    assert_eq!(by_key.burst, 10, "the burst defaults to the rate");
    assert!(matches!(by_key.key, RateKey::Header(ref h) if h == "x-api-key"));

    let rs = parse_documents(AT_GATEWAY).expect("valid");
    let text = to_yaml_documents(&rs);
    assert!(text.contains("sectionName: \"https\""), "{text}");
    assert_eq!(parse_documents(&text).expect("reparse"), rs, "{text}");
}

#[test]
fn gateway_parents_and_host_names_are_refused_with_their_paths() {
    let e = errors(&http_route(
        "  parentRefs:\n    - {kind: Gateway, group: networking.istio.io, name: gw}\n    - {name: users, sectionName: http}\n    - {kind: Gateway, name: gw, sectionName: Bad_Name}\n    - {kind: Mesh, name: m}\n  hostnames: [\"*\", ok.example.com]\n  rules: [{backendRefs: [{name: users}]}]\n",
    ));
    assert_eq!(
        e,
        [
            "document 1 (HTTPRoute/r): spec.parentRefs[0].group: \"networking.istio.io\": a Gateway is in group \"gateway.networking.k8s.io\"",
            "document 1 (HTTPRoute/r): spec.parentRefs[1].sectionName: sectionName names a Gateway's listener; a Service has none",
            "document 1 (HTTPRoute/r): spec.parentRefs[2].sectionName: \"Bad_Name\" is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit (e.g. user-service)",
            "document 1 (HTTPRoute/r): spec.parentRefs[3].kind: \"Mesh\": a route attaches to a Service or a Gateway",
            "document 1 (HTTPRoute/r): spec.hostnames[0]: \"*\" is not a host name (letters, digits, '-' and '.', optionally starting with '*.')",
        ]
    );
    // What spans the route: the same gateway twice, a host name twice, and
    // a rule with nowhere to go at a gateway (named where it was written).
    let e = errors(&http_route(
        "  parentRefs: [{kind: Gateway, name: gw}, {name: users}, {kind: Gateway, name: gw}]\n  hostnames: [a.example.com, A.example.com]\n  rules:\n    - backendRefs: [{name: users}]\n    - matches: [{path: {value: /x}}]\n",
    ));
    assert_eq!(
        e,
        [
            "document 1 (HTTPRoute/r): spec.parentRefs[2]: gateway gw is named twice",
            "document 1 (HTTPRoute/r): spec.hostnames[1]: host name a.example.com is named twice",
            "document 1 (HTTPRoute/r): spec.rules[1].backendRefs: a rule of a route attached to a gateway needs backendRefs: a gateway has no endpoints of its own to send to",
        ]
    );
}

#[test]
fn edge_filters_are_refused_with_their_paths() {
    let e = errors(&http_route(
        "  parentRefs: [{name: users}]\n  rules:\n    - filters:\n        - type: CORS\n          cors: {allowOrigins: [example.com, \"*\"], allowMethods: [\"G T\"], allowHeaders: [\"bad header\"], maxAge: 0, allowCredentials: true}\n        - type: RateLimit\n          rateLimit: {requests: 0, period: 1s}\n        - type: RateLimit\n          rateLimit: {requests: 5, period: soon, burst: 0}\n        - type: RateLimit\n          rateLimit: {requests: 5, period: 1s, key: caller}\n        - type: RateLimit\n          rateLimit: {requests: 5, period: 1s, key: {header: \"bad key\"}}\n        - type: RateLimit\n          rateLimit: {requests: 5, period: 25h}\n        - type: RateLimit\n          cors: {}\n",
    ));
    assert_eq!(
        e,
        [
            "document 1 (HTTPRoute/r): spec.rules[0].filters[0].cors.allowOrigins[0]: \"example.com\" is not an origin (scheme://host[:port], '*', or with a '*.' host)",
            "document 1 (HTTPRoute/r): spec.rules[0].filters[0].cors.allowMethods[0]: \"G T\" is not an HTTP method",
            "document 1 (HTTPRoute/r): spec.rules[0].filters[0].cors.allowHeaders[0]: \"bad header\" is not an HTTP header name",
            "document 1 (HTTPRoute/r): spec.rules[0].filters[0].cors.maxAge: at least 1 (seconds); leave it out to send no Access-Control-Max-Age",
            "document 1 (HTTPRoute/r): spec.rules[0].filters[1].rateLimit.requests: a rate limit needs at least one request per period",
            "document 1 (HTTPRoute/r): spec.rules[0].filters[2].rateLimit.period: \"soon\" is not a duration (e.g. 250ms, 10s, 5m, 1h)",
            "document 1 (HTTPRoute/r): spec.rules[0].filters[3].rateLimit.key: clientIP or {header: NAME}; leave it out for one bucket for every request",
            "document 1 (HTTPRoute/r): spec.rules[0].filters[4].rateLimit.key.header: \"bad key\" is not an HTTP header name",
            "document 1 (HTTPRoute/r): spec.rules[0].filters[5].rateLimit.period: a rate limit's period must be between 1ms and 1 day",
            "document 1 (HTTPRoute/r): spec.rules[0].filters[6].cors: a RateLimit filter takes its settings in rateLimit",
        ]
    );
    // Credentials for any origin, once the lists are good; a second of a kind.
    let e = errors(&http_route(
        "  parentRefs: [{name: users}]\n  rules:\n    - filters:\n        - {type: CORS, cors: {allowOrigins: [\"*\"], allowCredentials: true}}\n        - {type: RateLimit, rateLimit: {requests: 1, period: 1s}}\n        - {type: RateLimit, rateLimit: {requests: 2, period: 1s}}\n",
    ));
    assert_eq!(
        e,
        [
            "document 1 (HTTPRoute/r): spec.rules[0].filters[0].cors.allowCredentials: credentials cannot be allowed for every origin ('*')",
        ]
    );
    let e = errors(&http_route(
        "  parentRefs: [{name: users}]\n  rules:\n    - filters:\n        - {type: RateLimit, rateLimit: {requests: 1, period: 1s}}\n        - {type: RateLimit, rateLimit: {requests: 2, period: 1s}}\n",
    ));
    assert_eq!(
        e,
        [
            "document 1 (HTTPRoute/r): spec.rules[0].filters[1]: RateLimit appears twice in one rule (only RequestMirror may repeat)",
        ]
    );
}

#[test]
fn a_services_rate_limit_parses_round_trips_and_is_checked() {
    let text = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec:\n  rateLimit: {requests: 50, period: 1s, burst: 10, perCaller: true}\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: orders}\nspec:\n  rateLimit: {requests: 1000, period: 1m}\n";
    let rs = parse_documents(text).expect("valid");
    let limits: Vec<_> = rs
        .iter()
        .map(|r| match r {
            Resource::Service(s) => s.rate_limit.clone().expect("a limit"),
            other => panic!("a service, not {other:?}"),
        })
        .collect();
    assert_eq!(
        (limits[0].requests, limits[0].burst, &limits[0].key),
        (50, 10, &RateKey::Caller)
    );
    assert_eq!(
        (limits[1].period, limits[1].burst, &limits[1].key),
        (Duration::from_secs(60), 1000, &RateKey::All)
    );
    let back = to_yaml_documents(&rs);
    assert!(back.contains("perCaller: true"), "{back}");
    assert_eq!(parse_documents(&back).expect("reparse"), rs, "{back}");
    let e = errors(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  rateLimit: {requests: 5, period: 0s, key: clientIP}\n",
    );
    assert!(
        e[0].contains("spec.rateLimit") && e[0].contains("unknown field `key`"),
        "a service's limit is per caller or for all: {e:?}"
    );
    let e = errors(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  rateLimit: {requests: 5, period: 0s}\n",
    );
    assert_eq!(
        e,
        ["document 1 (Service/a): spec.rateLimit.period: must be more than 0"]
    );
}
