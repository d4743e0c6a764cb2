//! Resources written back out: the JSON value of each (`weftctl get -o
//! json`, the same shape as the YAML users write) and a small YAML emitter
//! (`-o yaml`) whose output `parse_documents` reads back unchanged. Routes
//! and gateways, in the Gateway API's shape, are in `render/route.rs`.

mod route;

pub use route::rule as rule_to_value;

use std::time::Duration;

use serde_json::{Map, Value, json};
use weft_proto::duration::format_duration;

use super::resilience::{CircuitBreaker, Faults, Hedge, Resilience, Retry, Timeouts};
use super::yaml::API_VERSION;
use super::{AuthorizationRule, Resource};

/// The YAML form of resources (`weftctl get -o yaml`), which `parse_documents`
/// reads back unchanged.
pub fn to_yaml_documents(resources: &[Resource]) -> String {
    let mut out = String::new();
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        emit(&to_value(r), 0, &mut out);
    }
    out
}

/// The JSON form (`weftctl get -o json`), the same shape as the YAML.
pub fn to_value(r: &Resource) -> Value {
    match r {
        Resource::Service(s) => {
            let mut spec = Map::new();
            if let Some(p) = s.protocol {
                spec.insert("protocol".into(), json!(p.as_str()));
            }
            spec.insert("loadBalancer".into(), json!(s.load_balancer.as_str()));
            if !s.subsets.is_empty() {
                let subsets: Vec<Value> = s
                    .subsets
                    .iter()
                    .map(|x| json!({"name": x.name.as_str(), "labels": x.labels}))
                    .collect();
                spec.insert("subsets".into(), Value::Array(subsets));
            }
            spec.insert("inboundMode".into(), json!(s.inbound_mode.as_str()));
            resilience(&s.resilience, &mut spec);
            if let Some(r) = &s.rate_limit {
                spec.insert("rateLimit".into(), route::rate_limit(r));
            }
            if !s.addresses.is_empty() {
                let a: Vec<String> = s.addresses.iter().map(|a| a.to_string()).collect();
                spec.insert("addresses".into(), json!(a));
            }
            if !s.opaque_ports.is_empty() {
                spec.insert("opaquePorts".into(), json!(s.opaque_ports));
            }
            json!({
                "apiVersion": API_VERSION,
                "kind": "Service",
                "metadata": {"name": s.name.as_str()},
                "spec": spec,
            })
        }
        Resource::AuthorizationPolicy(p) => {
            let rules: Vec<Value> = p.rules.iter().map(rule).collect();
            json!({
                "apiVersion": API_VERSION,
                "kind": "AuthorizationPolicy",
                "metadata": {"name": p.name.as_str()},
                "spec": {"service": p.service.as_str(), "rules": rules},
            })
        }
        Resource::Route(r) => route::route(r),
        Resource::Gateway(g) => route::gateway(g),
    }
}

fn rule(r: &AuthorizationRule) -> Value {
    let mut m = Map::new();
    let from: Vec<String> = r.from().iter().map(ToString::to_string).collect();
    m.insert("from".into(), json!(from));
    if !r.grpc_methods().is_empty() {
        m.insert("grpcMethods".into(), json!(r.grpc_methods()));
    }
    if !r.http().is_empty() {
        let http: Vec<Value> = r
            .http()
            .iter()
            .map(|h| {
                let methods: Vec<&str> = h.methods().iter().map(|m| m.as_str()).collect();
                json!({"methods": methods, "pathPrefix": h.path_prefix()})
            })
            .collect();
        m.insert("http".into(), Value::Array(http));
    }
    Value::Object(m)
}

/// A duration as the text users write, printed as everywhere else in the
/// mesh (`/config` too).
fn dur(d: Duration) -> Value {
    json!(format_duration(d))
}

/// The settings' fields, only what was set: what reads back the same.
fn resilience(r: &Resilience, spec: &mut Map<String, Value>) {
    let parts = [
        ("retries", r.retry.as_ref().map(retry)),
        ("timeouts", r.timeouts.as_ref().map(timeouts)),
        ("circuitBreaker", r.circuit_breaker.as_ref().map(breaker)),
        ("hedging", r.hedge.as_ref().map(hedge)),
        ("faults", r.fault.as_ref().map(faults)),
    ];
    for (key, value) in parts {
        if let Some(v) = value {
            spec.insert(key.into(), Value::Object(v));
        }
    }
}

/// A map of the fields that are set.
fn set_fields<const N: usize>(fields: [(&str, Option<Value>); N]) -> Map<String, Value> {
    fields
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_string(), v?)))
        .collect()
}

/// A nested map, unless nothing in it is set.
fn non_empty(m: Map<String, Value>) -> Option<Value> {
    (!m.is_empty()).then_some(Value::Object(m))
}

fn retry(r: &Retry) -> Map<String, Value> {
    let on = r.on.map(|set| {
        let names: Vec<&str> = set.iter().map(|c| c.as_str()).collect();
        json!(names)
    });
    let backoff = set_fields([
        ("base", r.backoff.base().map(dur)),
        ("max", r.backoff.max().map(dur)),
    ]);
    let budget = set_fields([
        ("ratio", r.budget.ratio.map(|x| json!(x.get()))),
        ("minPerSecond", r.budget.min_per_second.map(|n| json!(n))),
    ]);
    set_fields([
        ("attempts", r.attempts.map(|a| json!(a.get()))),
        ("on", on),
        ("perTryTimeout", r.per_try_timeout.map(dur)),
        ("backoff", non_empty(backoff)),
        ("budget", non_empty(budget)),
        ("nonIdempotent", r.non_idempotent.then_some(json!(true))),
        ("maxReplayBytes", r.max_replay_bytes.map(|n| json!(n))),
    ])
}

fn timeouts(t: &Timeouts) -> Map<String, Value> {
    set_fields([("request", t.request.map(dur)), ("idle", t.idle.map(dur))])
}

fn breaker(c: &CircuitBreaker) -> Map<String, Value> {
    set_fields([
        (
            "consecutiveFailures",
            c.consecutive_failures.map(|n| json!(n)),
        ),
        ("baseEjection", c.ejection.base().map(dur)),
        ("maxEjection", c.ejection.max().map(dur)),
        (
            "maxEjectedPercent",
            c.max_ejected_percent.map(|p| json!(p.get())),
        ),
        (
            "maxConcurrentRequests",
            c.max_concurrent_requests.map(|n| json!(n)),
        ),
        (
            "maxPendingRequests",
            c.max_pending_requests.map(|n| json!(n)),
        ),
    ])
}

fn hedge(h: &Hedge) -> Map<String, Value> {
    set_fields([
        ("grpcMethods", Some(json!(h.grpc_methods()))),
        ("delay", h.delay.map(dur)),
    ])
}

fn faults(f: &Faults) -> Map<String, Value> {
    let delay = f
        .delay
        .map(|d| json!({"percent": d.percent.get(), "duration": dur(d.duration)}));
    let abort = f.abort.map(|a| {
        Value::Object(set_fields([
            ("percent", Some(json!(a.percent.get()))),
            ("grpcStatus", a.grpc_status.map(|c| json!(c.as_u16()))),
            ("httpStatus", a.http_status.map(|s| json!(s.get()))),
        ]))
    });
    set_fields([("delay", delay), ("abort", abort)])
}

/// A small block-style YAML emitter for the JSON values we produce: maps,
/// lists, strings, numbers, booleans. Strings are always double-quoted JSON
/// strings (valid YAML), so no value can be misread as another type.
fn emit(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                out.push_str(&pad);
                out.push_str(&key_text(k));
                out.push(':');
                emit_child(v, indent, out);
            }
        }
        Value::Array(a) => {
            for v in a {
                out.push_str(&pad);
                out.push('-');
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        // First key on the dash line, the rest aligned under it.
                        let mut inner = String::new();
                        emit(v, indent + 2, &mut inner);
                        out.push(' ');
                        out.push_str(inner.trim_start());
                    }
                    _ => emit_child(v, indent, out),
                }
            }
        }
        scalar => {
            out.push_str(&pad);
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn emit_child(v: &Value, indent: usize, out: &mut String) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push('\n');
            emit(v, indent + 2, out);
        }
        Value::Array(a) if !a.is_empty() => {
            out.push('\n');
            emit(v, indent + 2, out);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

/// A mapping key, plain when YAML reads it back as the same string
/// (names, label keys such as `app.kubernetes.io/name`), else quoted: a key
/// like `true`, `8080` or `a: b` would come back as something else. (`on`
/// stays plain: it is a `retries` field, documented and read back so.)
fn key_text(k: &str) -> String {
    const WORDS: [&str; 3] = ["true", "false", "null"];
    let plain = k
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !WORDS.contains(&k.to_ascii_lowercase().as_str());
    if plain {
        k.to_string()
    } else {
        Value::String(k.to_string()).to_string()
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => Value::String(s.clone()).to_string(),
        other => other.to_string(),
    }
}

/// Emits any JSON value as YAML (used by `weftctl` for list output).
pub fn value_to_yaml(v: &Value) -> String {
    let mut out = String::new();
    match v {
        Value::Object(m) if m.is_empty() => out.push_str("{}\n"),
        Value::Array(a) if a.is_empty() => out.push_str("[]\n"),
        _ => emit(v, 0, &mut out),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_yaml_would_read_otherwise_are_quoted() {
        let v = json!({"true": 1, "8080": "x", "a: b": true, "app.kubernetes.io/name": "web"});
        let y = value_to_yaml(&v);
        assert!(y.contains("app.kubernetes.io/name: \"web\""), "{y}");
        let back: Value = serde_saphyr::from_str(&y).expect("yaml");
        assert_eq!(back, v, "{y}");
    }

    #[test]
    fn emits_yaml_for_lists() {
        let v = json!([{"name": "a", "labels": {"k": "v"}, "n": 1}, {"name": "b", "labels": {}}]);
        let y = value_to_yaml(&v);
        let back: Value = serde_saphyr::from_str(&y).expect("yaml");
        assert_eq!(back, v, "{y}");
    }
}
