//! The `HTTPRoute` and `GRPCRoute` resources as validated values: the
//! services a route attaches to and its rules, each rule's matches,
//! backends, filters, timeouts and retry and fault overrides. What a match,
//! a filter or a backend is comes from `weft_proto::routing`, the words the
//! sidecars route by; this module adds what makes a rule and a route whole
//! (weights that can send somewhere, one filter of each kind, bounds), and
//! `check.rs` what spans resources (services that exist, subsets, rules no
//! request could ever take).
//!
//! ```yaml
//! apiVersion: gateway.networking.k8s.io/v1
//! kind: HTTPRoute
//! metadata: {name: users-canary}
//! spec:
//!   parentRefs: [{kind: Service, name: users}]
//!   rules:
//!     - matches: [{headers: [{name: x-canary, value: "1"}]}]
//!       backendRefs: [{name: users, subset: v2}]
//!     - backendRefs:
//!         - {name: users, subset: v1, weight: 90}
//!         - {name: users, subset: v2, weight: 10}
//!       timeouts: {request: 2s, backendRequest: 500ms}
//!       retry: {attempts: 3, on: [unavailable]}
//! ```

mod check;

pub use check::{ReferenceError, check_delete, check_routes};

use std::time::Duration;

use weft_proto::routing::{
    BackendRef, Cors, FilterError, Filters, HeaderModifier, HostMatch, Mirror, PathRewrite,
    RateLimit, RouteKind, RouteMatch, UrlRewrite,
};

use super::Name;
use super::gateway::GatewayParent;
use super::resilience::{Faults, Retry};

/// The most parents, rules, matches, backends and filters a route may
/// have: the Gateway API's own limits, which also bound what a sidecar
/// must hold and what the checks across routes cost.
pub const MAX_PARENTS: usize = 32;
pub const MAX_RULES: usize = 16;
pub const MAX_MATCHES: usize = 64;
pub const MAX_BACKENDS: usize = 16;
pub const MAX_FILTERS: usize = 16;
pub const MAX_HOSTNAMES: usize = 16;
/// The largest backend weight (the Gateway API's).
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Why part of a route was refused; the text follows the field's path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("name at least one service or gateway the route attaches to")]
    NoParents,
    #[error("service {0} is named twice")]
    DuplicateParent(Name),
    #[error("gateway {0} is named twice")]
    DuplicateGateway(GatewayParent),
    #[error("host name {0} is named twice")]
    DuplicateHostname(HostMatch),
    #[error(
        "a rule of a route attached to a gateway needs backendRefs: a gateway has no endpoints \
         of its own to send to"
    )]
    NoBackendsAtGateway,
    #[error("a route needs at least one rule")]
    NoRules,
    #[error("at most {max} {what}")]
    TooMany { what: &'static str, max: usize },
    #[error("at most {MAX_WEIGHT}")]
    Weight,
    #[error(
        "the weights sum to 0, so no request could be sent: give a backend a weight above 0, \
         or leave backendRefs out to send to the service itself"
    )]
    ZeroWeights,
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("{0} appears twice in one rule (only RequestMirror may repeat)")]
    DuplicateFilter(&'static str),
    #[error("a GRPCRoute cannot rewrite URLs")]
    RewriteInGrpc,
    #[error("backendRequest must not exceed request")]
    TimeoutOrder,
}

/// One of a rule's filters, in the order it was written (`weftctl get`
/// prints them so); the sidecars get them as the shared [`Filters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteFilter {
    RequestHeaders(HeaderModifier),
    ResponseHeaders(HeaderModifier),
    UrlRewrite(UrlRewrite),
    Mirror(Mirror),
    /// The Gateway API's `CORS`.
    Cors(Cors),
    /// Weft's `RateLimit`: a token bucket on the rule's requests.
    RateLimit(RateLimit),
}

impl RouteFilter {
    /// Its `type:` in the Gateway API.
    pub fn type_name(&self) -> &'static str {
        match self {
            RouteFilter::RequestHeaders(_) => "RequestHeaderModifier",
            RouteFilter::ResponseHeaders(_) => "ResponseHeaderModifier",
            RouteFilter::UrlRewrite(_) => "URLRewrite",
            RouteFilter::Mirror(_) => "RequestMirror",
            RouteFilter::Cors(_) => "CORS",
            RouteFilter::RateLimit(_) => "RateLimit",
        }
    }
}

/// A rule's own time limits; `None`: the service's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleTimeouts {
    /// The whole request, retries included.
    pub request: Option<Duration>,
    /// Each try.
    pub backend_request: Option<Duration>,
}

/// Which part of a rule a problem is in; each way in (YAML, protobuf)
/// names it in its own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RulePart {
    Matches,
    Backends,
    Backend(usize),
    Filters,
    Filter(usize),
    Timeouts,
}

/// A rule as given, before the checks that span its parts.
#[derive(Debug, Clone, Default)]
pub struct RuleParts {
    pub matches: Vec<RouteMatch>,
    pub backends: Vec<BackendRef>,
    pub filters: Vec<RouteFilter>,
    pub timeouts: RuleTimeouts,
    pub retry: Option<Retry>,
    pub fault: Option<Faults>,
}

/// One rule of a route: what it matches and what it does with it.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteRule {
    matches: Vec<RouteMatch>,
    backends: Vec<BackendRef>,
    filters: Vec<RouteFilter>,
    timeouts: RuleTimeouts,
    retry: Option<Retry>,
    fault: Option<Faults>,
}

impl RouteRule {
    /// Checks what spans a rule's parts; `Err` lists every problem with
    /// the part it is in.
    pub fn new(kind: RouteKind, p: RuleParts) -> Result<Self, Vec<(RulePart, RouteError)>> {
        let mut errors = Vec::new();
        let too_many = |what, max| RouteError::TooMany { what, max };
        if p.matches.len() > MAX_MATCHES {
            errors.push((RulePart::Matches, too_many("matches", MAX_MATCHES)));
        }
        if p.backends.len() > MAX_BACKENDS {
            errors.push((RulePart::Backends, too_many("backendRefs", MAX_BACKENDS)));
        }
        for (i, b) in p.backends.iter().enumerate() {
            if b.weight > MAX_WEIGHT {
                errors.push((RulePart::Backend(i), RouteError::Weight));
            }
        }
        if !p.backends.is_empty() && p.backends.iter().all(|b| b.weight == 0) {
            errors.push((RulePart::Backends, RouteError::ZeroWeights));
        }
        if p.filters.len() > MAX_FILTERS {
            errors.push((RulePart::Filters, too_many("filters", MAX_FILTERS)));
        }
        for (i, f) in p.filters.iter().enumerate() {
            let repeated = !matches!(f, RouteFilter::Mirror(_))
                && p.filters[..i]
                    .iter()
                    .any(|g| g.type_name() == f.type_name());
            if repeated {
                errors.push((
                    RulePart::Filter(i),
                    RouteError::DuplicateFilter(f.type_name()),
                ));
            }
            if let RouteFilter::UrlRewrite(r) = f {
                if kind == RouteKind::Grpc {
                    errors.push((RulePart::Filter(i), RouteError::RewriteInGrpc));
                }
                // A rule without matches takes every path (the prefix `/`).
                if !p.matches.is_empty()
                    && let Err(e) = r.check_matches(p.matches.iter().map(|m| &m.path))
                {
                    errors.push((RulePart::Filter(i), e.into()));
                }
            }
        }
        if let (Some(request), Some(backend)) = (p.timeouts.request, p.timeouts.backend_request)
            && backend > request
        {
            errors.push((RulePart::Timeouts, RouteError::TimeoutOrder));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RouteRule {
            matches: p.matches,
            backends: p.backends,
            filters: p.filters,
            timeouts: p.timeouts,
            retry: p.retry,
            fault: p.fault,
        })
    }

    /// None: every request.
    pub fn matches(&self) -> &[RouteMatch] {
        &self.matches
    }

    /// None: the service the route is attached to. Their weights never
    /// all 0.
    pub fn backends(&self) -> &[BackendRef] {
        &self.backends
    }

    /// As written.
    pub fn filters(&self) -> &[RouteFilter] {
        &self.filters
    }

    /// The filters as the sidecars apply them.
    pub fn merged_filters(&self) -> Filters {
        let mut out = Filters::default();
        for f in &self.filters {
            match f {
                RouteFilter::RequestHeaders(m) => out.request_headers = Some(m.clone()),
                RouteFilter::ResponseHeaders(m) => out.response_headers = Some(m.clone()),
                RouteFilter::UrlRewrite(r) => out.rewrite = Some(r.clone()),
                RouteFilter::Mirror(m) => out.mirrors.push(m.clone()),
                RouteFilter::Cors(c) => out.cors = Some(c.clone()),
                RouteFilter::RateLimit(r) => out.rate_limit = Some(r.clone()),
            }
        }
        out
    }

    /// Every mirror, with its place among the filters.
    pub fn mirrors(&self) -> impl Iterator<Item = (usize, &Mirror)> {
        self.filters
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f {
                RouteFilter::Mirror(m) => Some((i, m)),
                _ => None,
            })
    }

    pub fn timeouts(&self) -> RuleTimeouts {
        self.timeouts
    }

    /// `None`: the service's retries.
    pub fn retry(&self) -> Option<&Retry> {
        self.retry.as_ref()
    }

    /// `None`: the service's fault injection.
    pub fn fault(&self) -> Option<&Faults> {
        self.fault.as_ref()
    }
}

/// Splits a list of filters as the wire carries them (the shared
/// [`Filters`], in its own order) into the written form.
pub fn filters_in_order(f: Filters) -> Vec<RouteFilter> {
    let mut out = Vec::new();
    out.extend(f.request_headers.map(RouteFilter::RequestHeaders));
    out.extend(f.response_headers.map(RouteFilter::ResponseHeaders));
    out.extend(f.rewrite.map(RouteFilter::UrlRewrite));
    out.extend(f.mirrors.into_iter().map(RouteFilter::Mirror));
    out.extend(f.rate_limit.map(RouteFilter::RateLimit));
    out.extend(f.cors.map(RouteFilter::Cors));
    out
}

/// Which part of a route a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpecPart {
    Parents,
    Parent(usize),
    /// One of the gateways (its place among them).
    Gateway(usize),
    Hostname(usize),
    Hostnames,
    Rules,
    /// A rule's `backendRefs`.
    Backends(usize),
}

/// What a route attaches to, and the host names it answers for at a
/// gateway (services' routes ignore them, as GAMMA says).
#[derive(Debug, Clone, Default)]
pub struct Attachment {
    pub services: Vec<Name>,
    pub gateways: Vec<GatewayParent>,
    pub hostnames: Vec<HostMatch>,
}

/// An `HTTPRoute` or a `GRPCRoute`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub name: Name,
    pub kind: RouteKind,
    services: Vec<Name>,
    gateways: Vec<GatewayParent>,
    hostnames: Vec<HostMatch>,
    rules: Vec<RouteRule>,
}

impl RouteSpec {
    /// A route attached to services only.
    pub fn new(
        name: Name,
        kind: RouteKind,
        services: Vec<Name>,
        rules: Vec<RouteRule>,
    ) -> Result<Self, Vec<(SpecPart, RouteError)>> {
        let to = Attachment {
            services,
            ..Attachment::default()
        };
        Self::attached(name, kind, to, rules)
    }

    /// A route attached to services, gateways or both. A rule of a route
    /// at a gateway must name its backends: the gateway is nobody's
    /// endpoint.
    pub fn attached(
        name: Name,
        kind: RouteKind,
        to: Attachment,
        rules: Vec<RouteRule>,
    ) -> Result<Self, Vec<(SpecPart, RouteError)>> {
        let Attachment {
            services,
            gateways,
            hostnames,
        } = to;
        let mut errors = Vec::new();
        if services.is_empty() && gateways.is_empty() {
            errors.push((SpecPart::Parents, RouteError::NoParents));
        }
        for (i, g) in gateways.iter().enumerate() {
            if gateways[..i].contains(g) {
                errors.push((
                    SpecPart::Gateway(i),
                    RouteError::DuplicateGateway(g.clone()),
                ));
            }
        }
        if hostnames.len() > MAX_HOSTNAMES {
            errors.push((
                SpecPart::Hostnames,
                RouteError::TooMany {
                    what: "hostnames",
                    max: MAX_HOSTNAMES,
                },
            ));
        }
        for (i, h) in hostnames.iter().enumerate() {
            if hostnames[..i].contains(h) {
                errors.push((
                    SpecPart::Hostname(i),
                    RouteError::DuplicateHostname(h.clone()),
                ));
            }
        }
        if !gateways.is_empty() {
            for (i, r) in rules.iter().enumerate() {
                if r.backends.is_empty() {
                    errors.push((SpecPart::Backends(i), RouteError::NoBackendsAtGateway));
                }
            }
        }
        if services.len() + gateways.len() > MAX_PARENTS {
            errors.push((
                SpecPart::Parents,
                RouteError::TooMany {
                    what: "parentRefs",
                    max: MAX_PARENTS,
                },
            ));
        }
        for (i, s) in services.iter().enumerate() {
            if services[..i].contains(s) {
                errors.push((SpecPart::Parent(i), RouteError::DuplicateParent(s.clone())));
            }
        }
        if rules.is_empty() {
            errors.push((SpecPart::Rules, RouteError::NoRules));
        }
        if rules.len() > MAX_RULES {
            errors.push((
                SpecPart::Rules,
                RouteError::TooMany {
                    what: "rules",
                    max: MAX_RULES,
                },
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RouteSpec {
            name,
            kind,
            services,
            gateways,
            hostnames,
            rules,
        })
    }

    /// The services it attaches to (`parentRefs` of kind `Service`): no
    /// repeats; empty only when it attaches to gateways.
    pub fn services(&self) -> &[Name] {
        &self.services
    }

    /// The gateways it attaches to (`parentRefs` of kind `Gateway`), after
    /// the services in `parentRefs` as Weft writes them back.
    pub fn gateways(&self) -> &[GatewayParent] {
        &self.gateways
    }

    /// `spec.hostnames`; empty: every host.
    pub fn hostnames(&self) -> &[HostMatch] {
        &self.hostnames
    }

    /// The same route answering for `hostnames` instead: what one parent's
    /// sidecars are sent (none for a service, the effective ones at a
    /// gateway).
    pub fn with_hostnames(&self, hostnames: Vec<HostMatch>) -> RouteSpec {
        RouteSpec {
            hostnames,
            ..self.clone()
        }
    }

    /// Whether it attaches to `gateway`.
    pub fn at_gateway(&self, gateway: &Name) -> bool {
        self.gateways.iter().any(|g| &g.name == gateway)
    }

    /// The `parentRefs` index of its `i`th gateway, as Weft writes them
    /// (services first).
    pub fn gateway_ref_index(&self, i: usize) -> usize {
        self.services.len() + i
    }

    /// Never empty.
    pub fn rules(&self) -> &[RouteRule] {
        &self.rules
    }

    /// `HTTPRoute/name`: how the sidecars, metrics and `explain` name it.
    pub fn qualified_name(&self) -> String {
        self.kind.qualified(self.name.as_str())
    }

    /// Every service its rules send requests to, mirrors included.
    pub fn backend_services(&self) -> impl Iterator<Item = &Name> {
        self.rules.iter().flat_map(|r| {
            r.backends
                .iter()
                .map(|b| &b.service)
                .chain(r.mirrors().map(|(_, m)| &m.backend.service))
        })
    }
}

/// A prefix rewrite's text and a full one's, for printing.
pub fn path_rewrite_text(p: &PathRewrite) -> (&'static str, &str) {
    match p {
        PathRewrite::Full(p) => ("ReplaceFullPath", p),
        PathRewrite::Prefix(p) => ("ReplacePrefixMatch", p),
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::routing::PathMatch;

    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).expect("name")
    }

    fn backend(subset: &str, weight: u32) -> BackendRef {
        BackendRef::new(name("users"), Some(subset), weight).expect("backend")
    }

    #[test]
    fn a_rule_checks_what_spans_its_parts() {
        let exact = RouteMatch {
            path: PathMatch::exact("/a").expect("path"),
            ..RouteMatch::default()
        };
        let prefix_rewrite =
            UrlRewrite::new(None, Some(PathRewrite::Prefix("/b".into()))).expect("rewrite");
        let headers = HeaderModifier::new(&[("x-a", "1")], &[], &[]).expect("modifier");
        let errors = RouteRule::new(
            RouteKind::Grpc,
            RuleParts {
                matches: vec![exact],
                backends: vec![backend("v1", 0), backend("v2", 0)],
                filters: vec![
                    RouteFilter::RequestHeaders(headers.clone()),
                    RouteFilter::UrlRewrite(prefix_rewrite),
                    RouteFilter::RequestHeaders(headers),
                ],
                timeouts: RuleTimeouts {
                    request: Some(Duration::from_secs(1)),
                    backend_request: Some(Duration::from_secs(2)),
                },
                ..RuleParts::default()
            },
        )
        .expect_err("invalid");
        assert_eq!(
            errors,
            [
                (RulePart::Backends, RouteError::ZeroWeights),
                (RulePart::Filter(1), RouteError::RewriteInGrpc),
                (
                    RulePart::Filter(1),
                    RouteError::Filter(FilterError::PrefixWithoutPrefixMatch)
                ),
                (
                    RulePart::Filter(2),
                    RouteError::DuplicateFilter("RequestHeaderModifier")
                ),
                (RulePart::Timeouts, RouteError::TimeoutOrder),
            ]
        );
    }

    #[test]
    fn a_rule_without_matches_may_replace_a_prefix_and_weights_need_one_above_zero() {
        let rewrite = UrlRewrite::new(None, Some(PathRewrite::Prefix("/".into()))).expect("r");
        let rule = RouteRule::new(
            RouteKind::Http,
            RuleParts {
                backends: vec![backend("v1", 0), backend("v2", 1)],
                filters: vec![RouteFilter::UrlRewrite(rewrite)],
                ..RuleParts::default()
            },
        )
        .expect("valid");
        assert_eq!(rule.backends().len(), 2);
        assert!(rule.merged_filters().rewrite.is_some());
        let heavy = RouteRule::new(
            RouteKind::Http,
            RuleParts {
                backends: vec![backend("v1", MAX_WEIGHT + 1)],
                ..RuleParts::default()
            },
        );
        assert_eq!(heavy, Err(vec![(RulePart::Backend(0), RouteError::Weight)]));
    }

    #[test]
    fn a_route_names_its_services_once_and_has_rules() {
        let errors = RouteSpec::new(name("r"), RouteKind::Http, vec![], vec![]).expect_err("empty");
        assert_eq!(
            errors,
            [
                (SpecPart::Parents, RouteError::NoParents),
                (SpecPart::Rules, RouteError::NoRules)
            ]
        );
        let rule = RouteRule::new(RouteKind::Http, RuleParts::default()).expect("rule");
        let errors = RouteSpec::new(
            name("r"),
            RouteKind::Http,
            vec![name("users"), name("users")],
            vec![rule],
        )
        .expect_err("repeated");
        assert_eq!(
            errors,
            [(
                SpecPart::Parent(1),
                RouteError::DuplicateParent(name("users"))
            )]
        );
    }

    #[test]
    fn filters_keep_their_written_order_and_merge_for_the_sidecars() {
        let svc = name("shadow");
        let mirror = Mirror::new(BackendRef::new(svc, None, 1).expect("b"), 10).expect("m");
        let headers = HeaderModifier::new(&[], &[("x-b", "2")], &[]).expect("m");
        let filters = vec![
            RouteFilter::Mirror(mirror.clone()),
            RouteFilter::ResponseHeaders(headers.clone()),
        ];
        let rule = RouteRule::new(
            RouteKind::Http,
            RuleParts {
                filters: filters.clone(),
                ..RuleParts::default()
            },
        )
        .expect("valid");
        assert_eq!(rule.filters(), filters);
        assert_eq!(rule.mirrors().map(|(i, _)| i).collect::<Vec<_>>(), [0]);
        let merged = rule.merged_filters();
        assert_eq!(
            (merged.response_headers, merged.mirrors),
            (Some(headers.clone()), vec![mirror.clone()])
        );
        assert_eq!(
            filters_in_order(rule.merged_filters()),
            [
                RouteFilter::ResponseHeaders(headers),
                RouteFilter::Mirror(mirror)
            ]
        );
    }
}
