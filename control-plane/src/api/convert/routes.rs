//! Routes and their `weft.v1` messages: the `RouteSpec` resource (admin
//! API, store) and the `Route`s pushed in `ServiceUpdate.routing`. A rule's
//! matches, filters and backends go through the shared wire functions of
//! `weft_proto::routing` — the ones the sidecars read them back with — and
//! its retry and fault settings through a service's; what spans a rule or a
//! route is checked by the same constructors as YAML.

use weft_proto::routing::{
    Filters, RateKey, RouteKind, backend_from_wire, backend_to_wire, filters_from_wire,
    filters_to_wire, hostnames_from_wire, match_from_wire, match_to_wire,
};
use weft_proto::v1 as pb;

use super::resilience::{faults, from_ms, ms, retry};
use crate::resource::route::{
    Attachment, RouteFilter, RouteRule, RouteSpec, RulePart, RuleParts, RuleTimeouts, SpecPart,
    filters_in_order,
};
use crate::resource::{GatewayParent, Name};

/// Problems of one message: (proto field path, reason).
pub(super) type Problems = Vec<(String, String)>;

/// One written filter as the shared type holds it.
fn single(f: &RouteFilter) -> Filters {
    let mut out = Filters::default();
    match f {
        RouteFilter::RequestHeaders(m) => out.request_headers = Some(m.clone()),
        RouteFilter::ResponseHeaders(m) => out.response_headers = Some(m.clone()),
        RouteFilter::UrlRewrite(r) => out.rewrite = Some(r.clone()),
        RouteFilter::Mirror(m) => out.mirrors.push(m.clone()),
        RouteFilter::Cors(c) => out.cors = Some(c.clone()),
        RouteFilter::RateLimit(r) => out.rate_limit = Some(r.clone()),
    }
    out
}

impl From<&RouteRule> for pb::RouteRule {
    fn from(r: &RouteRule) -> Self {
        let t = r.timeouts();
        pb::RouteRule {
            matches: r.matches().iter().map(match_to_wire).collect(),
            backends: r.backends().iter().map(backend_to_wire).collect(),
            // One by one, so that the written order survives the store.
            filters: r
                .filters()
                .iter()
                .flat_map(|f| filters_to_wire(&single(f)))
                .collect(),
            request_timeout_ms: ms(t.request),
            backend_request_timeout_ms: ms(t.backend_request),
            retry: r.retry().map(pb::RetryPolicy::from),
            fault: r.fault().map(pb::FaultPolicy::from),
        }
    }
}

/// Validates one rule of a `kind` route; errors carry proto field paths
/// under the rule (`matches[0].headers[1]`).
pub fn rule_from_proto(p: &pb::RouteRule, kind: RouteKind) -> Result<RouteRule, Problems> {
    let mut errors = Problems::new();
    let mut parts = RuleParts::default();
    for (i, m) in p.matches.iter().enumerate() {
        match match_from_wire(m, kind) {
            Ok(m) => parts.matches.push(m),
            Err(e) => errors.push((format!("matches[{i}].{}", e.at), e.problem.to_string())),
        }
    }
    for (i, b) in p.backends.iter().enumerate() {
        match backend_from_wire(b, &format!("backends[{i}]")) {
            Ok(b) => parts.backends.push(b),
            Err(e) => errors.push((e.at, e.problem.to_string())),
        }
    }
    // Checked whole (the indices in errors are right), then read one by one
    // to keep their order.
    match filters_from_wire(&p.filters, &parts.matches) {
        Err(e) => errors.push((e.at, e.problem.to_string())),
        Ok(_) => {
            for (i, f) in p.filters.iter().enumerate() {
                if let Ok(one) = filters_from_wire(std::slice::from_ref(f), &parts.matches) {
                    // A rule's limit is by client or header; per caller is
                    // a service's (YAML cannot say it here either).
                    if one
                        .rate_limit
                        .as_ref()
                        .is_some_and(|r| r.key == RateKey::Caller)
                    {
                        errors.push((
                            format!("filters[{i}].rateLimit.caller"),
                            "a route's rate limit is keyed by client address or header".into(),
                        ));
                    }
                    parts.filters.extend(filters_in_order(one));
                }
            }
        }
    }
    parts.timeouts = RuleTimeouts {
        request: from_ms(p.request_timeout_ms),
        backend_request: from_ms(p.backend_request_timeout_ms),
    };
    let mut settings = Vec::new();
    parts.retry = p
        .retry
        .as_ref()
        .and_then(|r| retry(r, "retry", &mut settings));
    parts.fault = p.fault.and_then(|f| faults(&f, "fault", &mut settings));
    errors.extend(settings.into_iter().map(|(at, e)| (at, e.to_string())));
    if !errors.is_empty() {
        return Err(errors);
    }
    RouteRule::new(kind, parts).map_err(|es| {
        es.into_iter()
            .map(|(part, e)| {
                let at = match part {
                    RulePart::Matches => "matches".to_string(),
                    RulePart::Backends => "backends".to_string(),
                    RulePart::Backend(i) => format!("backends[{i}].weight"),
                    RulePart::Filters => "filters".to_string(),
                    RulePart::Filter(i) => format!("filters[{i}]"),
                    RulePart::Timeouts => "backend_request_timeout_ms".to_string(),
                };
                (at, e.to_string())
            })
            .collect()
    })
}

impl From<&RouteSpec> for pb::RouteSpec {
    fn from(r: &RouteSpec) -> Self {
        pb::RouteSpec {
            name: r.name.to_string(),
            kind: r.kind.to_wire() as i32,
            services: r.services().iter().map(ToString::to_string).collect(),
            rules: r.rules().iter().map(pb::RouteRule::from).collect(),
            gateways: r.gateways().iter().map(|g| g.name.to_string()).collect(),
            hostnames: r.hostnames().iter().map(ToString::to_string).collect(),
            // Only when one is named, so that routes without keep their bytes.
            gateway_sections: if r.gateways().iter().any(|g| g.section.is_some()) {
                r.gateways()
                    .iter()
                    .map(|g| {
                        g.section
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    })
                    .collect()
            } else {
                vec![]
            },
        }
    }
}

/// A route as the sidecars of its callers get it (or a gateway's: the
/// catalog gives each parent's sidecars the host names that apply there).
impl From<&RouteSpec> for pb::Route {
    fn from(r: &RouteSpec) -> Self {
        pb::Route {
            name: r.qualified_name(),
            kind: r.kind.to_wire() as i32,
            rules: r.rules().iter().map(pb::RouteRule::from).collect(),
            hostnames: r.hostnames().iter().map(ToString::to_string).collect(),
        }
    }
}

/// The kind a stored or sent route names, for the error's resource name.
pub(super) fn kind_name(kind: i32) -> &'static str {
    RouteKind::from_wire(kind).map_or("Route", RouteKind::as_str)
}

/// Validates a protobuf route; errors carry proto field paths.
pub(super) fn route_spec_from_proto(p: &pb::RouteSpec) -> Result<RouteSpec, Problems> {
    let mut errors = Problems::new();
    let name = Name::parse(&p.name)
        .map_err(|e| errors.push(("name".into(), e.to_string())))
        .ok();
    let kind = RouteKind::from_wire(p.kind)
        .map_err(|e| errors.push(("kind".into(), e.to_string())))
        .ok();
    let mut services = Vec::with_capacity(p.services.len());
    for (i, s) in p.services.iter().enumerate() {
        match Name::parse(s) {
            Ok(n) => services.push(n),
            Err(e) => errors.push((format!("services[{i}]"), e.to_string())),
        }
    }
    if !p.gateway_sections.is_empty() && p.gateway_sections.len() != p.gateways.len() {
        errors.push((
            "gateway_sections".into(),
            format!(
                "{} entries for {} gateways: one per gateway, or none",
                p.gateway_sections.len(),
                p.gateways.len()
            ),
        ));
    }
    let mut gateways = Vec::with_capacity(p.gateways.len());
    for (i, g) in p.gateways.iter().enumerate() {
        let name = Name::parse(g)
            .map_err(|e| errors.push((format!("gateways[{i}]"), e.to_string())))
            .ok();
        let section = match p.gateway_sections.get(i).map(String::as_str) {
            None | Some("") => Some(None),
            Some(s) => Name::parse(s)
                .map(Some)
                .map_err(|e| errors.push((format!("gateway_sections[{i}]"), e.to_string())))
                .ok(),
        };
        if let (Some(name), Some(section)) = (name, section) {
            gateways.push(GatewayParent { name, section });
        }
    }
    let hostnames = hostnames_from_wire(&p.hostnames, "hostnames")
        .map_err(|e| errors.push((e.at, e.problem.to_string())))
        .unwrap_or_default();
    let mut rules = Vec::with_capacity(p.rules.len());
    if let Some(kind) = kind {
        for (i, r) in p.rules.iter().enumerate() {
            match rule_from_proto(r, kind) {
                Ok(r) => rules.push(r),
                Err(es) => errors.extend(
                    es.into_iter()
                        .map(|(at, reason)| (format!("rules[{i}].{at}"), reason)),
                ),
            }
        }
    }
    let (Some(name), Some(kind)) = (name, kind) else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let to = Attachment {
        services,
        gateways,
        hostnames,
    };
    RouteSpec::attached(name, kind, to, rules).map_err(|es| {
        es.into_iter()
            .map(|(part, e)| {
                let at = match part {
                    SpecPart::Parents => "services".to_string(),
                    SpecPart::Parent(i) => format!("services[{i}]"),
                    SpecPart::Gateway(i) => format!("gateways[{i}]"),
                    SpecPart::Hostnames => "hostnames".to_string(),
                    SpecPart::Hostname(i) => format!("hostnames[{i}]"),
                    SpecPart::Rules => "rules".to_string(),
                    SpecPart::Backends(i) => format!("rules[{i}].backends"),
                };
                (at, e.to_string())
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Resource, parse_documents};

    const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: users}
spec:
  parentRefs: [{name: users}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: "1"}]}]
      filters:
        - type: RequestMirror
          requestMirror: {backendRef: {name: shadow}, percent: 5}
        - type: URLRewrite
          urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}
      backendRefs: [{name: users, subset: v2, weight: 3}, {name: users, weight: 0}]
      timeouts: {request: 2s, backendRequest: 1s}
      retry: {attempts: 2, on: [reset]}
      fault: {abort: {percent: 1, httpStatus: 503}}
"#;

    fn route() -> RouteSpec {
        match parse_documents(ROUTE).expect("valid").pop() {
            Some(Resource::Route(r)) => *r,
            other => panic!("a route, not {other:?}"),
        }
    }

    #[test]
    fn a_route_survives_the_wire_with_its_filters_in_order() {
        let r = route();
        let p = pb::RouteSpec::from(&r);
        assert_eq!(p.rules[0].backends[1].weight, Some(0));
        assert!(matches!(
            p.rules[0].filters[0].kind,
            Some(pb::route_filter::Kind::Mirror(_))
        ));
        assert_eq!(route_spec_from_proto(&p), Ok(r.clone()));
        let pushed = pb::Route::from(&r);
        assert_eq!(pushed.name, "HTTPRoute/users");
        assert_eq!(pushed.rules, p.rules);
    }

    #[test]
    fn bad_messages_name_their_fields() {
        let mut p = pb::RouteSpec::from(&route());
        p.services.push("Bad Name".into());
        let rule = &mut p.rules[0];
        rule.matches[0].headers[0].r#type = pb::MatchType::RegularExpression as i32;
        rule.matches[0].headers[0].value = "(".into();
        rule.backends[0].weight = Some(0);
        rule.retry = Some(pb::RetryPolicy {
            attempts: 11,
            ..Default::default()
        });
        let errors = route_spec_from_proto(&p).expect_err("invalid");
        let paths: Vec<&str> = errors.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                "services[1]",
                "rules[0].matches[0].headers[0]",
                "rules[0].retry.attempts"
            ]
        );
        // Whole messages that only fail as a whole: the weights.
        let mut p = pb::RouteSpec::from(&route());
        p.rules[0].backends[0].weight = Some(0);
        let errors = route_spec_from_proto(&p).expect_err("invalid");
        assert_eq!(errors[0].0, "rules[0].backends");
        assert!(errors[0].1.contains("weights sum to 0"), "{errors:?}");
        let p = pb::RouteSpec {
            name: "r".into(),
            kind: 7,
            ..Default::default()
        };
        let errors = route_spec_from_proto(&p).expect_err("invalid");
        assert_eq!(errors[0].0, "kind");
    }
}
