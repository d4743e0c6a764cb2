//! Resources and their protobuf form (admin API, store, and the policy
//! pushed to sidecars). Protobuf in is parsed by the same constructors as
//! YAML in, so both refuse alike; a service's resilience settings are in
//! `resilience.rs`, routes in `routes.rs`, gateways here.

use weft_proto::v1 as pb;

use weft_proto::labels::{Labels, validate_labels};
use weft_proto::protocol::{InboundMode, LoadBalancer, Protocol};
use weft_proto::routing::{HostMatch, RateKey, rate_limit_from_wire, rate_limit_to_wire};

use super::resilience::resilience_from_proto;
use super::routes::{kind_name, route_spec_from_proto};
use crate::resource::gateway::{GATEWAY_CLASS, GatewayError, GatewayPart};
use crate::resource::{
    AuthorizationPolicySpec, AuthorizationRule, FieldError, GatewaySpec, InvalidResources,
    Listener, ListenerProtocol, Name, RawHttpMatch, RawRule, Resource, ServiceSpec, Subset,
    check_unique,
};

/// Problems of one message: (proto field path, reason).
type Problems = Vec<(String, String)>;

/// A protocol as sent: `PROTOCOL_UNSPECIFIED` for `None`.
pub fn protocol_to_proto(p: Option<Protocol>) -> i32 {
    p.map_or(pb::Protocol::Unspecified, Protocol::to_proto) as i32
}

/// Labels as the wire carries them.
pub fn labels_to_proto(labels: &Labels) -> std::collections::HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Labels from the wire, sorted (not yet validated).
pub fn labels_from_proto(labels: &std::collections::HashMap<String, String>) -> Labels {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl From<&ServiceSpec> for pb::ServiceSpec {
    fn from(s: &ServiceSpec) -> Self {
        let r = &s.resilience;
        pb::ServiceSpec {
            name: s.name.to_string(),
            protocol: protocol_to_proto(s.protocol),
            load_balancer: s.load_balancer.to_proto() as i32,
            subsets: s
                .subsets
                .iter()
                .map(|s| pb::Subset {
                    name: s.name.to_string(),
                    labels: labels_to_proto(&s.labels),
                })
                .collect(),
            inbound_mode: s.inbound_mode.to_proto() as i32,
            retry: r.retry.as_ref().map(pb::RetryPolicy::from),
            timeouts: r.timeouts.as_ref().map(pb::TimeoutPolicy::from),
            circuit_breaker: r
                .circuit_breaker
                .as_ref()
                .map(pb::CircuitBreakerPolicy::from),
            hedge: r.hedge.as_ref().map(pb::HedgePolicy::from),
            fault: r.fault.as_ref().map(pb::FaultPolicy::from),
            rate_limit: s.rate_limit.as_ref().map(rate_limit_to_wire),
            addresses: s.addresses.iter().map(|a| a.to_string()).collect(),
            opaque_ports: s.opaque_ports.iter().map(|&p| u32::from(p)).collect(),
        }
    }
}

/// Validates a protobuf service; errors carry proto field paths (those of
/// the resilience settings their YAML paths, as they always have).
pub fn service_spec_from_proto(p: &pb::ServiceSpec) -> Result<ServiceSpec, Problems> {
    let mut errors = Vec::new();
    let name = Name::parse(&p.name)
        .map_err(|e| errors.push(("name".into(), e.to_string())))
        .ok();
    let protocol = Protocol::from_proto(p.protocol)
        .map_err(|e| errors.push(("protocol".into(), e.to_string())))
        .ok()
        .flatten();
    let load_balancer = LoadBalancer::from_proto(p.load_balancer)
        .map_err(|e| errors.push(("load_balancer".into(), e.to_string())))
        .unwrap_or_default();
    let inbound_mode = InboundMode::from_proto(p.inbound_mode)
        .map_err(|e| errors.push(("inbound_mode".into(), e.to_string())))
        .unwrap_or_default();
    let mut subsets = Vec::new();
    for (i, s) in p.subsets.iter().enumerate() {
        let labels = labels_from_proto(&s.labels);
        if let Err(e) = validate_labels(&labels) {
            errors.push((format!("subsets[{i}].labels"), e.to_string()));
        }
        match Name::parse(&s.name) {
            Ok(name) => subsets.push(Subset { name, labels }),
            Err(e) => errors.push((format!("subsets[{i}].name"), e.to_string())),
        }
    }
    let resilience = resilience_from_proto(p)
        .map_err(|es| {
            errors.extend(es.into_iter().map(|(path, e)| (path, e.to_string())));
        })
        .ok();
    let rate_limit = p.rate_limit.as_ref().and_then(|r| {
        let limit = rate_limit_from_wire(r, "rate_limit")
            .map_err(|e| errors.push((e.at, e.problem.to_string())))
            .ok()?;
        // A service limits all its callers together or each one.
        if !matches!(limit.key, RateKey::All | RateKey::Caller) {
            errors.push((
                "rate_limit.key".into(),
                "a service's rate limit is for all callers or per caller".into(),
            ));
            return None;
        }
        Some(limit)
    });
    let addresses = crate::resource::check_addresses(&p.addresses, "addresses", &mut errors);
    let opaque_ports = crate::resource::check_ports(&p.opaque_ports, "opaque_ports", &mut errors);
    match (name, resilience) {
        (Some(name), Some(resilience)) if errors.is_empty() => Ok(ServiceSpec {
            name,
            protocol,
            load_balancer,
            subsets,
            inbound_mode,
            resilience,
            rate_limit,
            addresses,
            opaque_ports,
        }),
        _ => Err(errors),
    }
}

impl From<&AuthorizationRule> for pb::AuthorizationRule {
    fn from(r: &AuthorizationRule) -> Self {
        pb::AuthorizationRule {
            from: r.from().iter().map(|c| c.to_string()).collect(),
            grpc_methods: r.grpc_methods().iter().map(|m| m.to_string()).collect(),
            http: r
                .http()
                .iter()
                .map(|h| pb::HttpMatch {
                    methods: h.methods().iter().map(|m| m.as_str().to_string()).collect(),
                    path_prefix: h.path_prefix().to_string(),
                })
                .collect(),
        }
    }
}

/// Checks one rule; errors name the fields as YAML does (`grpcMethods[0]`).
fn rule_from_proto(p: &pb::AuthorizationRule) -> Result<AuthorizationRule, Problems> {
    let http: Vec<RawHttpMatch<'_>> = p
        .http
        .iter()
        .map(|h| RawHttpMatch {
            methods: &h.methods,
            path_prefix: &h.path_prefix,
        })
        .collect();
    AuthorizationRule::parse(RawRule {
        from: &p.from,
        grpc_methods: &p.grpc_methods,
        http: &http,
    })
    .map_err(|es| {
        es.into_iter()
            .map(|(path, e)| (path, e.to_string()))
            .collect()
    })
}

impl From<&AuthorizationPolicySpec> for pb::AuthorizationPolicySpec {
    fn from(p: &AuthorizationPolicySpec) -> Self {
        pb::AuthorizationPolicySpec {
            name: p.name.to_string(),
            service: p.service.to_string(),
            rules: p.rules.iter().map(pb::AuthorizationRule::from).collect(),
        }
    }
}

/// Validates a protobuf policy; errors carry proto field paths.
fn policy_from_proto(p: &pb::AuthorizationPolicySpec) -> Result<AuthorizationPolicySpec, Problems> {
    let mut errors = Vec::new();
    let name = Name::parse(&p.name)
        .map_err(|e| errors.push(("name".into(), e.to_string())))
        .ok();
    let service = Name::parse(&p.service)
        .map_err(|e| errors.push(("service".into(), e.to_string())))
        .ok();
    let mut rules = Vec::with_capacity(p.rules.len());
    for (i, r) in p.rules.iter().enumerate() {
        match rule_from_proto(r) {
            Ok(rule) => rules.push(rule),
            Err(es) => errors.extend(
                es.into_iter()
                    .map(|(path, reason)| (format!("rules[{i}].{path}"), reason)),
            ),
        }
    }
    match (name, service) {
        (Some(name), Some(service)) if errors.is_empty() => Ok(AuthorizationPolicySpec {
            name,
            service,
            rules,
        }),
        _ => Err(errors),
    }
}

impl From<&Resource> for pb::Resource {
    fn from(r: &Resource) -> Self {
        let kind = match r {
            Resource::Service(s) => pb::resource::Kind::Service(s.as_ref().into()),
            Resource::AuthorizationPolicy(p) => pb::resource::Kind::AuthorizationPolicy(p.into()),
            Resource::Route(r) => pb::resource::Kind::Route(r.as_ref().into()),
            Resource::Gateway(g) => pb::resource::Kind::Gateway(g.into()),
        };
        pb::Resource { kind: Some(kind) }
    }
}

/// Validates one protobuf resource; `index` is its place in the request.
fn resource_from_proto(index: usize, p: &pb::Resource) -> Result<Resource, Vec<FieldError>> {
    let errs = |resource: String, prefix: &str, es: Problems| {
        es.into_iter()
            .map(|(path, reason)| FieldError {
                document: index,
                resource: Some(resource.clone()),
                path: format!("{prefix}.{path}"),
                reason,
            })
            .collect::<Vec<_>>()
    };
    match &p.kind {
        None => Err(vec![FieldError {
            document: index,
            resource: None,
            path: "kind".into(),
            reason: "no resource kind set".into(),
        }]),
        Some(pb::resource::Kind::Service(s)) => service_spec_from_proto(s)
            .map(|s| Resource::Service(Box::new(s)))
            .map_err(|es| errs(format!("Service/{}", s.name), "service", es)),
        Some(pb::resource::Kind::AuthorizationPolicy(a)) => policy_from_proto(a)
            .map(Resource::AuthorizationPolicy)
            .map_err(|es| {
                errs(
                    format!("AuthorizationPolicy/{}", a.name),
                    "authorization_policy",
                    es,
                )
            }),
        Some(pb::resource::Kind::Route(r)) => route_spec_from_proto(r)
            .map(|r| Resource::Route(Box::new(r)))
            .map_err(|es| errs(format!("{}/{}", kind_name(r.kind), r.name), "route", es)),
        Some(pb::resource::Kind::Gateway(g)) => gateway_from_proto(g)
            .map(Resource::Gateway)
            .map_err(|es| errs(format!("Gateway/{}", g.name), "gateway", es)),
    }
}

impl From<&GatewaySpec> for pb::GatewaySpec {
    fn from(g: &GatewaySpec) -> Self {
        pb::GatewaySpec {
            name: g.name.to_string(),
            gateway_class_name: if g.class_named {
                GATEWAY_CLASS.into()
            } else {
                String::new()
            },
            listeners: g
                .listeners()
                .iter()
                .map(|l| pb::Listener {
                    name: l.name.to_string(),
                    port: u32::from(l.port.get()),
                    protocol: match l.protocol {
                        ListenerProtocol::Http => pb::ListenerProtocol::Http,
                        ListenerProtocol::Https => pb::ListenerProtocol::Https,
                    } as i32,
                    hostname: l
                        .hostname
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    tls_terminate: l.tls_terminate,
                })
                .collect(),
        }
    }
}

fn listener_from_proto(at: &str, l: &pb::Listener, errors: &mut Problems) -> Option<Listener> {
    let before = errors.len();
    let name = Name::parse(&l.name)
        .map_err(|e| errors.push((format!("{at}.name"), e.to_string())))
        .ok();
    let port = Listener::port(i64::from(l.port))
        .map_err(|e| errors.push((format!("{at}.port"), e.to_string())))
        .ok();
    let protocol = match pb::ListenerProtocol::try_from(l.protocol) {
        Ok(pb::ListenerProtocol::Http) => Some(ListenerProtocol::Http),
        Ok(pb::ListenerProtocol::Https) => Some(ListenerProtocol::Https),
        _ => {
            let e = GatewayError::Protocol(l.protocol.to_string());
            errors.push((format!("{at}.protocol"), e.to_string()));
            None
        }
    };
    let hostname = (!l.hostname.is_empty())
        .then(|| HostMatch::parse(&l.hostname))
        .transpose()
        .map_err(|e| errors.push((format!("{at}.hostname"), e.to_string())))
        .ok()
        .flatten();
    if l.tls_terminate && protocol == Some(ListenerProtocol::Http) {
        errors.push((
            format!("{at}.tls_terminate"),
            GatewayError::TlsOnHttp.to_string(),
        ));
    }
    if errors.len() != before {
        return None;
    }
    Some(Listener {
        name: name?,
        port: port?,
        protocol: protocol?,
        hostname,
        tls_terminate: l.tls_terminate,
    })
}

/// Validates a protobuf gateway; errors carry proto field paths.
fn gateway_from_proto(p: &pb::GatewaySpec) -> Result<GatewaySpec, Problems> {
    let mut errors = Problems::new();
    let name = Name::parse(&p.name)
        .map_err(|e| errors.push(("name".into(), e.to_string())))
        .ok();
    let class_named = match p.gateway_class_name.as_str() {
        "" => false,
        GATEWAY_CLASS => true,
        other => {
            let e = GatewayError::Class(other.into());
            errors.push(("gateway_class_name".into(), e.to_string()));
            false
        }
    };
    let listeners: Vec<Listener> = p
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| listener_from_proto(&format!("listeners[{i}]"), l, &mut errors))
        .collect();
    let Some(name) = name else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    GatewaySpec::new(name, class_named, listeners).map_err(|es| {
        es.into_iter()
            .map(|(part, e)| {
                let at = match part {
                    GatewayPart::Listeners => "listeners".to_string(),
                    GatewayPart::ListenerName(i) => format!("listeners[{i}].name"),
                    GatewayPart::Listener(i) => format!("listeners[{i}]"),
                };
                (at, e.to_string())
            })
            .collect()
    })
}

/// Validates every resource of a request; all or nothing.
pub fn resources_from_proto(ps: &[pb::Resource]) -> Result<Vec<Resource>, InvalidResources> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        match resource_from_proto(i, p) {
            Ok(r) => out.push(r),
            Err(es) => errors.extend(es),
        }
    }
    if !errors.is_empty() {
        return Err(InvalidResources(errors));
    }
    check_unique(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::parse_documents;

    #[test]
    fn round_trip_and_rejects() {
        let text = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  protocol: http\n  inboundMode: permissive\n  subsets: [{name: v1, labels: {version: v1}}]\n---\napiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  service: a\n  rules:\n    - from: [b]\n      grpcMethods: [/x.Y/Z]\n      http: [{methods: [GET], pathPrefix: /users/}]\n";
        let rs = parse_documents(text).expect("valid");
        let ps: Vec<_> = rs.iter().map(pb::Resource::from).collect();
        assert_eq!(resources_from_proto(&ps).expect("valid"), rs);

        let mut bad = ps[0].clone();
        if let Some(pb::resource::Kind::Service(s)) = &mut bad.kind {
            s.name = "Bad Name".into();
            s.load_balancer = 99;
        }
        let e = resources_from_proto(&[bad]).expect_err("invalid");
        let text = e.to_string();
        assert!(
            text.contains("service.name") && text.contains("service.load_balancer"),
            "{text}"
        );
        assert!(resources_from_proto(&[pb::Resource { kind: None }]).is_err());

        let mut bad = ps[1].clone();
        if let Some(pb::resource::Kind::AuthorizationPolicy(a)) = &mut bad.kind {
            a.rules[0].from = vec![];
            a.rules[0].grpc_methods = vec!["GetUser".into()];
        }
        let text = resources_from_proto(&[bad])
            .expect_err("invalid")
            .to_string();
        assert!(
            text.contains("authorization_policy.rules[0].from")
                && text.contains("rules[0].grpcMethods[0]"),
            "{text}"
        );
    }

    #[test]
    fn gateways_routes_at_them_and_rate_limits_survive_the_wire() {
        let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  gatewayClassName: weft\n  listeners:\n    - {name: http, port: 8080, protocol: HTTP}\n    - {name: https, port: 8443, protocol: HTTPS, hostname: \"*.example.com\", tls: {mode: Terminate}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: users}, {kind: Gateway, name: gw, sectionName: https}, {kind: Gateway, name: gw2}]\n  hostnames: [api.example.com]\n  rules:\n    - filters: [{type: RateLimit, rateLimit: {requests: 5, period: 1s, key: {header: x-key}}}, {type: CORS, cors: {allowOrigins: [\"*\"]}}]\n      backendRefs: [{name: users}]\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec:\n  rateLimit: {requests: 5, period: 1s, perCaller: true}\n";
        let rs = parse_documents(text).expect("valid");
        let ps: Vec<_> = rs.iter().map(pb::Resource::from).collect();
        assert_eq!(resources_from_proto(&ps).expect("valid"), rs);
        let Some(pb::resource::Kind::Route(r)) = &ps[1].kind else {
            panic!("a route")
        };
        assert_eq!(
            (r.gateways.as_slice(), r.gateway_sections.as_slice()),
            (
                ["gw".to_string(), "gw2".to_string()].as_slice(),
                ["https".to_string(), String::new()].as_slice()
            )
        );

        let bad = |f: fn(&mut pb::Resource)| {
            let mut ps = ps.clone();
            f(&mut ps[0]);
            f(&mut ps[1]);
            f(&mut ps[2]);
            resources_from_proto(&ps).expect_err("invalid").to_string()
        };
        let text = bad(|p| match &mut p.kind {
            Some(pb::resource::Kind::Gateway(g)) => {
                g.gateway_class_name = "istio".into();
                g.listeners[0].port = 70_000;
                g.listeners[0].tls_terminate = true;
                g.listeners[1].protocol = 9;
            }
            Some(pb::resource::Kind::Route(r)) => {
                r.gateway_sections.pop();
                r.hostnames.push("*".into());
            }
            Some(pb::resource::Kind::Service(s)) => {
                if let Some(l) = s.rate_limit.as_mut() {
                    l.key = Some(pb::rate_limit::Key::ClientIp(true));
                }
            }
            _ => {}
        });
        for path in [
            "gateway.gateway_class_name",
            "gateway.listeners[0].port",
            "gateway.listeners[0].tls_terminate",
            "gateway.listeners[1].protocol",
            "route.gateway_sections",
            "route.hostnames[1]",
            "service.rate_limit.key",
        ] {
            assert!(text.contains(path), "{path} missing in {text}");
        }
    }
}
