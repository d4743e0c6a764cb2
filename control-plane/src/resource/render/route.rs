//! A route or a gateway written back out in the Gateway API's shape, only
//! what was set (defaults left out), so that `parse_documents` reads it
//! back unchanged.

use http::{HeaderName, HeaderValue};
use serde_json::{Map, Value, json};
use weft_proto::duration::format_duration;
use weft_proto::routing::{
    BackendRef, Cors, GrpcMethodMatch, HeaderModifier, Mirror, OriginMatch, PathMatch, RateKey,
    RateLimit, RouteKind, RouteMatch, UrlRewrite, ValueMatch,
};

use super::{dur, faults, retry, set_fields};
use crate::resource::gateway::GATEWAY_CLASS;
use crate::resource::route::{RouteFilter, RouteRule, RouteSpec, path_rewrite_text};
use crate::resource::{GATEWAY_API_VERSION, GatewaySpec};

pub(super) fn route(r: &RouteSpec) -> Value {
    let services = r
        .services()
        .iter()
        .map(|s| json!({"kind": "Service", "name": s.as_str()}));
    let gateways = r.gateways().iter().map(|g| {
        Value::Object(set_fields([
            ("group", Some(json!("gateway.networking.k8s.io"))),
            ("kind", Some(json!("Gateway"))),
            ("name", Some(json!(g.name.as_str()))),
            ("sectionName", g.section.as_ref().map(|s| json!(s.as_str()))),
        ]))
    });
    let parents: Vec<Value> = services.chain(gateways).collect();
    let rules: Vec<Value> = r.rules().iter().map(|x| rule(r.kind, x)).collect();
    let hostnames: Vec<String> = r.hostnames().iter().map(ToString::to_string).collect();
    let spec = set_fields([
        ("parentRefs", Some(json!(parents))),
        (
            "hostnames",
            (!hostnames.is_empty()).then(|| json!(hostnames)),
        ),
        ("rules", Some(json!(rules))),
    ]);
    json!({
        "apiVersion": GATEWAY_API_VERSION,
        "kind": r.kind.as_str(),
        "metadata": {"name": r.name.as_str()},
        "spec": spec,
    })
}

pub(super) fn gateway(g: &GatewaySpec) -> Value {
    let listeners: Vec<Value> = g
        .listeners()
        .iter()
        .map(|l| {
            Value::Object(set_fields([
                ("name", Some(json!(l.name.as_str()))),
                ("port", Some(json!(l.port.get()))),
                ("protocol", Some(json!(l.protocol.as_str()))),
                (
                    "hostname",
                    l.hostname.as_ref().map(|h| json!(h.to_string())),
                ),
                ("tls", l.tls_terminate.then(|| json!({"mode": "Terminate"}))),
            ]))
        })
        .collect();
    let spec = set_fields([
        (
            "gatewayClassName",
            g.class_named.then(|| json!(GATEWAY_CLASS)),
        ),
        ("listeners", Some(json!(listeners))),
    ]);
    json!({
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "Gateway",
        "metadata": {"name": g.name.as_str()},
        "spec": spec,
    })
}

/// A rate limit as users write it (a filter's or a service's).
pub(super) fn rate_limit(r: &RateLimit) -> Value {
    let key = match &r.key {
        RateKey::All | RateKey::Caller => None,
        RateKey::ClientIp => Some(json!("clientIP")),
        RateKey::Header(h) => Some(json!({"header": h.as_str()})),
    };
    Value::Object(set_fields([
        ("requests", Some(json!(r.requests))),
        ("period", Some(json!(format_duration(r.period)))),
        ("burst", Some(json!(r.burst))),
        ("key", key),
        (
            "perCaller",
            (r.key == RateKey::Caller).then_some(json!(true)),
        ),
    ]))
}

fn cors(c: &Cors) -> Value {
    let list = |v: Vec<String>| (!v.is_empty()).then(|| json!(v));
    let origins = c
        .allow_origins
        .iter()
        .map(|o| match o {
            OriginMatch::Any => "*".to_string(),
            OriginMatch::Exact(o) => o.clone(),
            OriginMatch::Wildcard { scheme, suffix } => format!("{scheme}://*{suffix}"),
        })
        .collect();
    Value::Object(set_fields([
        ("allowOrigins", list(origins)),
        (
            "allowMethods",
            list(c.allow_methods.iter().map(ToString::to_string).collect()),
        ),
        (
            "allowHeaders",
            list(c.allow_headers.iter().map(ToString::to_string).collect()),
        ),
        (
            "exposeHeaders",
            list(c.expose_headers.iter().map(ToString::to_string).collect()),
        ),
        ("maxAge", c.max_age.map(|d| json!(d.as_secs()))),
        (
            "allowCredentials",
            c.allow_credentials.then_some(json!(true)),
        ),
    ]))
}

/// One rule, as its YAML (also what `weftctl explain` prints of it).
pub fn rule(kind: RouteKind, r: &RouteRule) -> Value {
    let matches = (!r.matches().is_empty()).then(|| {
        let v: Vec<Value> = r.matches().iter().map(|m| route_match(kind, m)).collect();
        Value::Array(v)
    });
    let filters =
        (!r.filters().is_empty()).then(|| Value::Array(r.filters().iter().map(filter).collect()));
    let backends = (!r.backends().is_empty()).then(|| {
        let v: Vec<Value> = r.backends().iter().map(backend_ref).collect();
        Value::Array(v)
    });
    let t = r.timeouts();
    let timeouts = set_fields([
        ("request", t.request.map(dur)),
        ("backendRequest", t.backend_request.map(dur)),
    ]);
    Value::Object(set_fields([
        ("matches", matches),
        ("filters", filters),
        ("backendRefs", backends),
        (
            "timeouts",
            (!timeouts.is_empty()).then_some(Value::Object(timeouts)),
        ),
        ("retry", r.retry().map(|x| Value::Object(retry(x)))),
        ("fault", r.fault().map(|x| Value::Object(faults(x)))),
    ]))
}

fn value_match(name: Option<&str>, v: &ValueMatch) -> Value {
    let kind = match v {
        ValueMatch::Exact(_) => "Exact",
        ValueMatch::Regex(_) => "RegularExpression",
    };
    let mut m = Map::new();
    m.insert("type".into(), json!(kind));
    if let Some(n) = name {
        m.insert("name".into(), json!(n));
    }
    m.insert("value".into(), json!(v.value()));
    Value::Object(m)
}

fn route_match(kind: RouteKind, m: &RouteMatch) -> Value {
    let headers = (!m.headers.is_empty()).then(|| {
        let v: Vec<Value> = m
            .headers
            .iter()
            .map(|h| value_match(Some(h.name.as_str()), &h.value))
            .collect();
        Value::Array(v)
    });
    if kind == RouteKind::Grpc {
        return Value::Object(set_fields([
            ("method", m.grpc.as_ref().map(grpc_method)),
            ("headers", headers),
        ]));
    }
    let path = (m.path != PathMatch::default()).then(|| {
        let kind = match m.path {
            PathMatch::Exact(_) => "Exact",
            PathMatch::Prefix(_) => "PathPrefix",
            PathMatch::Regex(_) => "RegularExpression",
        };
        json!({"type": kind, "value": m.path.value()})
    });
    let query = (!m.query.is_empty()).then(|| {
        let v: Vec<Value> = m
            .query
            .iter()
            .map(|q| value_match(Some(&q.name), &q.value))
            .collect();
        Value::Array(v)
    });
    Value::Object(set_fields([
        ("path", path),
        ("method", m.method.as_ref().map(|x| json!(x.as_str()))),
        ("headers", headers),
        ("queryParams", query),
    ]))
}

fn grpc_method(g: &GrpcMethodMatch) -> Value {
    let regex = matches!(g.service, Some(ValueMatch::Regex(_)))
        || matches!(g.method, Some(ValueMatch::Regex(_)));
    let text = |v: &Option<ValueMatch>| v.as_ref().map(|v| json!(v.value()));
    Value::Object(set_fields([
        (
            "type",
            Some(json!(if regex { "RegularExpression" } else { "Exact" })),
        ),
        ("service", text(&g.service)),
        ("method", text(&g.method)),
    ]))
}

fn object_ref(b: &BackendRef) -> Map<String, Value> {
    set_fields([
        ("kind", Some(json!("Service"))),
        ("name", Some(json!(b.service.as_str()))),
        ("subset", b.subset.as_ref().map(|s| json!(s))),
    ])
}

fn backend_ref(b: &BackendRef) -> Value {
    let mut m = object_ref(b);
    m.insert("weight".into(), json!(b.weight));
    Value::Object(m)
}

fn headers(v: &[(HeaderName, HeaderValue)]) -> Option<Value> {
    (!v.is_empty()).then(|| {
        let list: Vec<Value> = v
            .iter()
            .map(|(n, v)| json!({"name": n.as_str(), "value": v.to_str().unwrap_or_default()}))
            .collect();
        Value::Array(list)
    })
}

fn modifier(m: &HeaderModifier) -> Value {
    let remove: Vec<&str> = m.remove.iter().map(HeaderName::as_str).collect();
    Value::Object(set_fields([
        ("set", headers(&m.set)),
        ("add", headers(&m.add)),
        ("remove", (!remove.is_empty()).then(|| json!(remove))),
    ]))
}

fn rewrite(r: &UrlRewrite) -> Value {
    let path = r.path.as_ref().map(|p| {
        let (kind, value) = path_rewrite_text(p);
        let field = if kind == "ReplaceFullPath" {
            "replaceFullPath"
        } else {
            "replacePrefixMatch"
        };
        json!({"type": kind, field: value})
    });
    Value::Object(set_fields([
        ("hostname", r.hostname.as_ref().map(|h| json!(h.as_str()))),
        ("path", path),
    ]))
}

fn mirror(m: &Mirror) -> Value {
    let mut v = Map::new();
    v.insert("backendRef".into(), Value::Object(object_ref(&m.backend)));
    if m.percent != 100 {
        v.insert("percent".into(), json!(m.percent));
    }
    Value::Object(v)
}

fn filter(f: &RouteFilter) -> Value {
    let (field, settings) = match f {
        RouteFilter::RequestHeaders(m) => ("requestHeaderModifier", modifier(m)),
        RouteFilter::ResponseHeaders(m) => ("responseHeaderModifier", modifier(m)),
        RouteFilter::UrlRewrite(r) => ("urlRewrite", rewrite(r)),
        RouteFilter::Mirror(m) => ("requestMirror", mirror(m)),
        RouteFilter::Cors(c) => ("cors", cors(c)),
        RouteFilter::RateLimit(r) => ("rateLimit", rate_limit(r)),
    };
    json!({"type": f.type_name(), field: settings})
}
