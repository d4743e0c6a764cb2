//! Resources written back out: the JSON value of each (`weftctl get -o
//! json`, the same shape as the YAML users write) and a small YAML emitter
//! (`-o yaml`) whose output `parse_documents` reads back unchanged.

use serde_json::{Map, Value, json};

use super::yaml::API_VERSION;
use super::{Resource, resilience};

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
            resilience::to_value(&s.resilience, &mut spec);
            json!({
                "apiVersion": API_VERSION,
                "kind": "Service",
                "metadata": {"name": s.name.as_str()},
                "spec": spec,
            })
        }
        Resource::AuthorizationPolicy(p) => {
            let rules: Vec<Value> = p
                .rules
                .iter()
                .map(|r| {
                    let mut m = Map::new();
                    m.insert("from".into(), json!(r.from));
                    if !r.grpc_methods.is_empty() {
                        m.insert("grpcMethods".into(), json!(r.grpc_methods));
                    }
                    if !r.http.is_empty() {
                        let http: Vec<Value> = r
                            .http
                            .iter()
                            .map(|h| json!({"methods": h.methods, "pathPrefix": h.path_prefix}))
                            .collect();
                        m.insert("http".into(), Value::Array(http));
                    }
                    Value::Object(m)
                })
                .collect();
            json!({
                "apiVersion": API_VERSION,
                "kind": "AuthorizationPolicy",
                "metadata": {"name": p.name.as_str()},
                "spec": {"service": p.service.as_str(), "rules": rules},
            })
        }
    }
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
                out.push_str(k);
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
    fn emits_yaml_for_lists() {
        let v = json!([{"name": "a", "labels": {"k": "v"}, "n": 1}, {"name": "b", "labels": {}}]);
        let y = value_to_yaml(&v);
        let back: Value = serde_saphyr::from_str(&y).expect("yaml");
        assert_eq!(back, v, "{y}");
    }
}
