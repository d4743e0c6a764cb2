//! From the wire to the model: every prost type of `weft.v1` the sidecar
//! receives is turned into validated domain types here, and nowhere else.
//! An update is converted whole before anything changes; its first problem
//! is the NACK reason, naming the service, the field and what is wrong.
//! Unset fields (0, empty) take the defaults of `model::policy`.

use std::sync::Arc;
use std::time::Duration;

use weft_proto::grpc::GrpcCode;
use weft_proto::labels::Labels;
use weft_proto::name::{AddressError, NameError, ServiceName, validate_address};
use weft_proto::pattern::{MethodPattern, PatternError};
use weft_proto::protocol::{ChoiceError, InboundMode, LoadBalancer, Protocol};
use weft_proto::retry::RetryConditions;
use weft_proto::routing::{
    Problem, RateKey, RouteKind, Rule as RouteRule, WireError, backend_from_wire,
    filters_from_wire, hostnames_from_wire, match_from_wire, rate_limit_from_wire,
};
use weft_proto::v1 as pb;

use crate::model::inbound::{AnyCaller, Caller, HttpRule, InboundPolicy, Rule};
use crate::model::policy::{
    BreakerConfig, BudgetConfig, FaultPolicy, HedgePolicy, Limits, Resilience, RetryPolicy,
    Timeouts, TryTimeout,
};
use crate::model::route::{RouteSpec, RuleSpec};
use crate::model::{EndpointSpec, Health, ServicePolicy, Subset};

/// One service's change, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// What this sidecar enforces inbound (sent with its own service).
    Inbound(InboundPolicy),
    Unknown(ServiceName),
    Known {
        name: ServiceName,
        policy: Option<Box<ServicePolicy>>,
        reset: bool,
        upsert: Vec<EndpointSpec>,
        removed: Vec<Arc<str>>,
        /// Set when the routes attached to the service changed.
        routes: Option<Vec<RouteSpec>>,
    },
}

/// Why an update is refused; its text is the NACK reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    #[error("service {name:?}: {error}")]
    ServiceName { name: String, error: NameError },
    #[error("service {service}: {error}")]
    Service {
        service: ServiceName,
        error: ServiceError,
    },
}

/// What is wrong in one service's part of an update, by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("inbound.mode: {0}")]
    InboundMode(ChoiceError),
    #[error("inbound.rules[{rule}].from: {error}")]
    RuleFrom { rule: usize, error: NameError },
    #[error("inbound.rules[{rule}].grpc_methods: {error}")]
    RuleGrpcMethod { rule: usize, error: PatternError },
    #[error("inbound.rules[{rule}].http: invalid HTTP method")]
    RuleHttpMethod { rule: usize, method: String },
    #[error(transparent)]
    RateLimit(WireError),
    #[error(
        "inbound.rate_limit: a service's limit is for all callers, per caller or per header; a sidecar cannot tell clients' addresses apart behind their sidecars"
    )]
    RateLimitByClientIp,
    #[error("policy.protocol: {0}")]
    Protocol(ChoiceError),
    #[error("policy.load_balancer: {0}")]
    LoadBalancer(ChoiceError),
    #[error("retry.on: {0}")]
    RetryOn(ChoiceError),
    #[error("hedge.grpc_methods: {0}")]
    HedgeMethod(PatternError),
    #[error("fault.abort_grpc_status: {0} is not a gRPC status")]
    FaultStatus(u32),
    #[error("endpoint without instance_id")]
    EndpointWithoutId,
    #[error("endpoint {id}: address: {error}")]
    EndpointAddress { id: String, error: AddressError },
    #[error("endpoint {id}: unknown health {health}")]
    EndpointHealth { id: String, health: i32 },
    #[error("routing.routes[{route}]: {problem}")]
    Route { route: usize, problem: RouteProblem },
}

/// What is wrong in one pushed route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteProblem {
    #[error("kind: {0}")]
    Kind(Problem),
    #[error("{0}")]
    Hostnames(WireError),
    #[error("rules[{rule}].{error}")]
    Wire { rule: usize, error: WireError },
    #[error("rules[{rule}].retry.on: {error}")]
    RetryOn { rule: usize, error: ChoiceError },
    #[error("rules[{rule}].fault.abort_grpc_status: {status} is not a gRPC status")]
    FaultStatus { rule: usize, status: u32 },
}

/// Validates a whole update; the first problem is the NACK reason.
pub fn convert_update(u: &pb::DiscoveryUpdate) -> Result<Vec<Change>, ConvertError> {
    let mut out = Vec::with_capacity(u.services.len());
    for s in &u.services {
        let name = ServiceName::parse(&s.name).map_err(|error| ConvertError::ServiceName {
            name: s.name.clone(),
            error,
        })?;
        convert_service(s, &name, &mut out).map_err(|error| ConvertError::Service {
            service: name,
            error,
        })?;
    }
    Ok(out)
}

/// One service's update: its inbound policy (on this sidecar's own
/// service), then whether it is known, its policy and endpoint changes.
fn convert_service(
    s: &pb::ServiceUpdate,
    name: &ServiceName,
    out: &mut Vec<Change>,
) -> Result<(), ServiceError> {
    if let Some(ib) = &s.inbound {
        out.push(Change::Inbound(inbound_policy(ib)?));
    }
    if !s.known {
        out.push(Change::Unknown(name.clone()));
        return Ok(());
    }
    let policy = s
        .policy
        .as_ref()
        .map(|p| convert_policy(p).map(Box::new))
        .transpose()?;
    let upsert = s
        .endpoints
        .iter()
        .map(convert_endpoint)
        .collect::<Result<Vec<_>, _>>()?;
    let routes = s.routing.as_ref().map(routing).transpose()?;
    out.push(Change::Known {
        name: name.clone(),
        policy,
        reset: s.reset_endpoints,
        upsert,
        removed: s.removed.iter().map(|r| r.as_str().into()).collect(),
        routes,
    });
    Ok(())
}

/// The routes attached to a service.
fn routing(r: &pb::Routing) -> Result<Vec<RouteSpec>, ServiceError> {
    r.routes
        .iter()
        .enumerate()
        .map(|(i, route)| {
            convert_route(route).map_err(|problem| ServiceError::Route { route: i, problem })
        })
        .collect()
}

fn convert_route(r: &pb::Route) -> Result<RouteSpec, RouteProblem> {
    let kind = RouteKind::from_wire(r.kind).map_err(RouteProblem::Kind)?;
    let rules = r
        .rules
        .iter()
        .enumerate()
        .map(|(i, rule)| convert_rule(i, rule, kind))
        .collect::<Result<Vec<_>, _>>()?;
    let hostnames =
        hostnames_from_wire(&r.hostnames, "hostnames").map_err(RouteProblem::Hostnames)?;
    Ok(RouteSpec {
        name: r.name.clone(),
        kind,
        rules,
        hostnames,
    })
}

fn convert_rule(
    i: usize,
    r: &pb::RouteRule,
    kind: RouteKind,
) -> Result<RouteRule<RuleSpec>, RouteProblem> {
    let wire = |error: WireError| RouteProblem::Wire { rule: i, error };
    let matches = r
        .matches
        .iter()
        .enumerate()
        .map(|(j, m)| {
            match_from_wire(m, kind).map_err(|e| WireError {
                at: format!("matches[{j}].{}", e.at),
                problem: e.problem,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(wire)?;
    let backends = r
        .backends
        .iter()
        .enumerate()
        .map(|(j, b)| backend_from_wire(b, &format!("backendRefs[{j}]")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(wire)?;
    let filters = filters_from_wire(&r.filters, &matches).map_err(wire)?;
    let retry = r
        .retry
        .as_ref()
        .map(retry)
        .transpose()
        .map_err(|error| RouteProblem::RetryOn { rule: i, error })?;
    let fault = r
        .fault
        .as_ref()
        .map(fault)
        .transpose()
        .map_err(|status| RouteProblem::FaultStatus { rule: i, status })?;
    Ok(RouteRule {
        matches,
        action: RuleSpec {
            backends,
            filters,
            request_timeout: nonzero_ms(r.request_timeout_ms),
            backend_request_timeout: nonzero_ms(r.backend_request_timeout_ms),
            retry,
            fault,
        },
    })
}

fn convert_policy(p: &pb::ServiceSpec) -> Result<ServicePolicy, ServiceError> {
    let protocol = Protocol::from_proto(p.protocol)
        .map_err(ServiceError::Protocol)?
        .unwrap_or(Protocol::Grpc);
    let balance = LoadBalancer::from_proto(p.load_balancer).map_err(ServiceError::LoadBalancer)?;
    let subsets = p
        .subsets
        .iter()
        .map(|s| Subset {
            name: s.name.clone(),
            labels: labels(&s.labels),
        })
        .collect();
    Ok(ServicePolicy {
        protocol,
        balance,
        subsets,
        resilience: resilience(p)?,
    })
}

fn labels<'a>(wire: impl IntoIterator<Item = (&'a String, &'a String)>) -> Labels {
    wire.into_iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn convert_endpoint(e: &pb::Endpoint) -> Result<EndpointSpec, ServiceError> {
    if e.instance_id.is_empty() {
        return Err(ServiceError::EndpointWithoutId);
    }
    validate_address(&e.address).map_err(|error| ServiceError::EndpointAddress {
        id: e.instance_id.clone(),
        error,
    })?;
    let health = match pb::Health::try_from(e.health) {
        Ok(pb::Health::Unknown) => Health::Unknown,
        Ok(pb::Health::Healthy) => Health::Healthy,
        Ok(pb::Health::Unhealthy) => Health::Unhealthy,
        Err(_) => {
            return Err(ServiceError::EndpointHealth {
                id: e.instance_id.clone(),
                health: e.health,
            });
        }
    };
    Ok(EndpointSpec {
        id: e.instance_id.as_str().into(),
        addr: e.address.as_str().into(),
        labels: labels(&e.labels),
        health,
        weight: e.weight.max(1),
    })
}

/// The app's health as the discovery stream carries it (the one
/// conversion the other way, beside its reverse above).
pub fn health_to_proto(h: Health) -> pb::Health {
    match h {
        Health::Unknown => pb::Health::Unknown,
        Health::Healthy => pb::Health::Healthy,
        Health::Unhealthy => pb::Health::Unhealthy,
    }
}

/// The control plane's inbound policy, validated; errors name the rule and
/// field.
pub fn inbound_policy(p: &pb::InboundPolicy) -> Result<InboundPolicy, ServiceError> {
    let mode = InboundMode::from_proto(p.mode).map_err(ServiceError::InboundMode)?;
    let rate_limit = p
        .rate_limit
        .as_ref()
        .map(|r| rate_limit_from_wire(r, "inbound.rate_limit"))
        .transpose()
        .map_err(ServiceError::RateLimit)?;
    if rate_limit
        .as_ref()
        .is_some_and(|r| r.key == RateKey::ClientIp)
    {
        return Err(ServiceError::RateLimitByClientIp);
    }
    if !p.authorization {
        return Ok(InboundPolicy {
            mode,
            rules: None,
            rate_limit,
        });
    }
    let rules = p
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(i, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(InboundPolicy {
        mode,
        rules: Some(rules),
        rate_limit,
    })
}

fn rule(rule: usize, r: &pb::AuthorizationRule) -> Result<Rule, ServiceError> {
    let from = r
        .from
        .iter()
        .map(|f| {
            if f == "*" {
                Ok(Caller::Any(AnyCaller::Any))
            } else {
                ServiceName::parse(f).map(Caller::Service)
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ServiceError::RuleFrom { rule, error })?;
    let grpc = r
        .grpc_methods
        .iter()
        .map(|m| MethodPattern::parse(m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| ServiceError::RuleGrpcMethod { rule, error })?;
    let http = r
        .http
        .iter()
        .map(|h| http_rule(rule, h))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule { from, grpc, http })
}

fn http_rule(rule: usize, h: &pb::HttpMatch) -> Result<HttpRule, ServiceError> {
    let methods = h
        .methods
        .iter()
        .map(|m| {
            http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                ServiceError::RuleHttpMethod {
                    rule,
                    method: m.clone(),
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpRule {
        methods,
        path_prefix: h.path_prefix.clone(),
    })
}

/// A service's resilience settings; unset fields take the defaults.
pub fn resilience(p: &pb::ServiceSpec) -> Result<Resilience, ServiceError> {
    let d = Resilience::default();
    let (breaker, limits) = match &p.circuit_breaker {
        None => (d.breaker, d.limits),
        Some(c) => (breaker(c, d.breaker), self::limits(c)),
    };
    Ok(Resilience {
        retry: p
            .retry
            .as_ref()
            .map_or(Ok(d.retry), retry)
            .map_err(ServiceError::RetryOn)?,
        timeouts: p.timeouts.as_ref().map_or(d.timeouts, timeouts),
        breaker,
        limits,
        hedge: p.hedge.as_ref().map(hedge).transpose()?,
        fault: p
            .fault
            .as_ref()
            .map(fault)
            .transpose()
            .map_err(ServiceError::FaultStatus)?,
    })
}

/// `ms` as a duration, 0 standing for `default`.
fn ms_or(ms: u64, default: Duration) -> Duration {
    if ms == 0 {
        default
    } else {
        Duration::from_millis(ms)
    }
}

/// `ms` as a duration, 0 standing for none.
fn nonzero_ms(ms: u64) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms))
}

/// `n`, 0 standing for `default`.
fn or<T: Default + PartialEq>(n: T, default: T) -> T {
    if n == T::default() { default } else { n }
}

/// Retry settings; the only way they can be wrong is a condition's name.
fn retry(r: &pb::RetryPolicy) -> Result<RetryPolicy, ChoiceError> {
    let d = RetryPolicy::default();
    let ratio = if r.budget_ratio > 0.0 && r.budget_ratio <= 1.0 {
        r.budget_ratio
    } else {
        d.budget.ratio
    };
    Ok(RetryPolicy {
        attempts: or(r.attempts, d.attempts).min(10),
        on: RetryConditions::parse(&r.on)?,
        per_try_timeout: nonzero_ms(r.per_try_timeout_ms).map(TryTimeout::new),
        backoff_base: ms_or(r.backoff_base_ms, d.backoff_base),
        backoff_max: ms_or(r.backoff_max_ms, d.backoff_max),
        budget: BudgetConfig {
            ratio,
            min_per_second: or(r.budget_min_per_second, d.budget.min_per_second),
        },
        non_idempotent: r.non_idempotent,
        max_replay_bytes: or(r.max_replay_bytes as usize, d.max_replay_bytes),
    })
}

fn timeouts(t: &pb::TimeoutPolicy) -> Timeouts {
    Timeouts {
        request: nonzero_ms(t.request_ms),
        idle: ms_or(t.idle_ms, Timeouts::default().idle),
    }
}

fn breaker(c: &pb::CircuitBreakerPolicy, d: BreakerConfig) -> BreakerConfig {
    BreakerConfig {
        consecutive_failures: or(c.consecutive_failures, d.consecutive_failures),
        base: ms_or(c.base_ejection_ms, d.base),
        max: ms_or(c.max_ejection_ms, d.max),
        max_ejected_percent: or(c.max_ejected_percent, d.max_ejected_percent).min(100),
    }
}

fn limits(c: &pb::CircuitBreakerPolicy) -> Limits {
    Limits {
        max_concurrent: (c.max_concurrent_requests != 0)
            .then_some(c.max_concurrent_requests as usize),
        max_pending: (c.max_pending_requests != 0).then_some(c.max_pending_requests as usize),
    }
}

fn hedge(h: &pb::HedgePolicy) -> Result<HedgePolicy, ServiceError> {
    let methods = h
        .grpc_methods
        .iter()
        .map(|m| MethodPattern::parse(m))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ServiceError::HedgeMethod)?;
    Ok(HedgePolicy {
        methods,
        delay: nonzero_ms(h.delay_ms),
    })
}

/// Fault injection; the only way it can be wrong is a status that is no
/// gRPC status (the error holds it).
fn fault(f: &pb::FaultPolicy) -> Result<FaultPolicy, u32> {
    let abort_grpc_status = match f.abort_grpc_status {
        0 => GrpcCode::Unavailable,
        n => u16::try_from(n)
            .ok()
            .and_then(GrpcCode::from_u16)
            .ok_or(n)?,
    };
    Ok(FaultPolicy {
        delay_percent: f.delay_percent.min(100),
        delay: Duration::from_millis(f.delay_ms),
        abort_percent: f.abort_percent.min(100),
        abort_grpc_status,
        abort_http_status: if f.abort_http_status == 0 {
            503
        } else {
            f.abort_http_status as u16
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resilience_defaults_and_overrides() {
        let d = resilience(&pb::ServiceSpec::default()).expect("valid");
        assert_eq!(d, Resilience::default());
        assert!(d.retry.on.grpc(GrpcCode::Unavailable) && !d.retry.on.grpc(GrpcCode::Internal));
        assert!(d.retry.on.http(503) && !d.retry.on.http(500));
        let p = pb::ServiceSpec {
            retry: Some(pb::RetryPolicy {
                attempts: 5,
                on: vec!["internal".into(), "5xx".into()],
                per_try_timeout_ms: 100,
                ..Default::default()
            }),
            circuit_breaker: Some(pb::CircuitBreakerPolicy {
                consecutive_failures: 2,
                max_concurrent_requests: 10,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r = resilience(&p).expect("valid");
        assert_eq!(r.retry.attempts, 5);
        assert!(
            r.retry.on.grpc(GrpcCode::Internal)
                && !r.retry.on.grpc(GrpcCode::Unavailable)
                && r.retry.on.http(500)
        );
        assert_eq!(
            r.retry.per_try_timeout.map(|t| t.limit()),
            Some(Duration::from_millis(100))
        );
        assert_eq!(r.breaker.consecutive_failures, 2);
        assert_eq!(r.breaker.base, Duration::from_secs(30));
        assert_eq!(r.limits.max_concurrent, Some(10));
        let bad = pb::ServiceSpec {
            retry: Some(pb::RetryPolicy {
                on: vec!["never".into()],
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(resilience(&bad).is_err());
    }

    #[test]
    fn unset_fields_take_the_defaults_and_bounds_hold() {
        let p = pb::ServiceSpec {
            retry: Some(pb::RetryPolicy {
                attempts: 50,
                budget_ratio: 1.5,
                ..Default::default()
            }),
            circuit_breaker: Some(pb::CircuitBreakerPolicy {
                max_ejected_percent: 300,
                ..Default::default()
            }),
            fault: Some(pb::FaultPolicy {
                abort_percent: 150,
                ..Default::default()
            }),
            timeouts: Some(pb::TimeoutPolicy::default()),
            ..Default::default()
        };
        let r = resilience(&p).expect("valid");
        let d = Resilience::default();
        assert_eq!(r.retry.attempts, 10, "at most ten tries");
        assert_eq!(r.retry.budget, d.retry.budget, "a ratio above 1 is ignored");
        assert_eq!(r.retry.on, d.retry.on, "no conditions: the defaults");
        assert_eq!(r.retry.max_replay_bytes, d.retry.max_replay_bytes);
        assert_eq!(r.timeouts, d.timeouts);
        assert_eq!(r.breaker.max_ejected_percent, 100);
        assert_eq!(r.limits, Limits::default());
        let f = r.fault.expect("fault");
        assert_eq!(f.abort_percent, 100);
        assert_eq!(f.abort_grpc_status, GrpcCode::Unavailable);
        assert_eq!(f.abort_http_status, 503);
        let bad = pb::ServiceSpec {
            fault: Some(pb::FaultPolicy {
                abort_grpc_status: 99,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            resilience(&bad).expect_err("invalid").to_string(),
            "fault.abort_grpc_status: 99 is not a gRPC status"
        );
    }

    #[test]
    fn bad_rules_are_named() {
        let e = inbound_policy(&pb::InboundPolicy {
            rate_limit: None,
            mode: 0,
            authorization: true,
            rules: vec![pb::AuthorizationRule {
                from: vec!["Bad Name".into()],
                ..Default::default()
            }],
        })
        .expect_err("invalid")
        .to_string();
        assert!(e.starts_with("inbound.rules[0].from"), "{e}");
        let e = inbound_policy(&pb::InboundPolicy {
            rate_limit: None,
            mode: 0,
            authorization: true,
            rules: vec![pb::AuthorizationRule {
                http: vec![pb::HttpMatch {
                    methods: vec!["GE T".into()],
                    path_prefix: "/".into(),
                }],
                ..Default::default()
            }],
        })
        .expect_err("invalid");
        assert_eq!(e.to_string(), "inbound.rules[0].http: invalid HTTP method");
    }

    #[test]
    fn a_services_rate_limit_is_read_with_or_without_authorization() {
        let limit = |key| pb::RateLimit {
            requests: 10,
            period_ms: 1000,
            burst: 0,
            key,
        };
        for authorization in [false, true] {
            let p = inbound_policy(&pb::InboundPolicy {
                authorization,
                rate_limit: Some(limit(Some(pb::rate_limit::Key::Caller(true)))),
                ..Default::default()
            })
            .expect("valid");
            let r = p.rate_limit.expect("a limit");
            assert_eq!((r.requests, r.burst, r.key), (10, 10, RateKey::Caller));
            assert_eq!(r.period, Duration::from_secs(1));
        }
        let e = inbound_policy(&pb::InboundPolicy {
            rate_limit: Some(pb::RateLimit {
                requests: 0,
                ..limit(None)
            }),
            ..Default::default()
        })
        .expect_err("invalid");
        assert!(e.to_string().starts_with("inbound.rate_limit: "), "{e}");
        let e = inbound_policy(&pb::InboundPolicy {
            rate_limit: Some(limit(Some(pb::rate_limit::Key::ClientIp(true)))),
            ..Default::default()
        })
        .expect_err("invalid");
        assert_eq!(e, ServiceError::RateLimitByClientIp);
        let none = inbound_policy(&pb::InboundPolicy::default()).expect("valid");
        assert_eq!(none.rate_limit, None);
    }

    #[test]
    fn nack_reasons_name_the_service_and_the_field() {
        let update = |s: pb::ServiceUpdate| pb::DiscoveryUpdate {
            services: vec![s],
            ..Default::default()
        };
        let e = convert_update(&update(pb::ServiceUpdate {
            name: "Bad".into(),
            ..Default::default()
        }))
        .expect_err("invalid");
        assert!(e.to_string().starts_with("service \"Bad\": "), "{e}");
        let e = convert_update(&update(pb::ServiceUpdate {
            name: "x".into(),
            known: true,
            policy: Some(pb::ServiceSpec {
                retry: Some(pb::RetryPolicy {
                    on: vec!["never".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .expect_err("invalid");
        assert!(
            e.to_string().starts_with("service x: retry.on: unknown"),
            "{e}"
        );
        let e = convert_update(&update(pb::ServiceUpdate {
            name: "x".into(),
            known: true,
            endpoints: vec![pb::Endpoint {
                instance_id: "x-1".into(),
                address: "127.0.0.1:1".into(),
                health: 7,
                ..Default::default()
            }],
            ..Default::default()
        }))
        .expect_err("invalid");
        assert_eq!(e.to_string(), "service x: endpoint x-1: unknown health 7");
    }
}
