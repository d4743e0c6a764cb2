//! How `weftctl` prints things: aligned tables for people, YAML and JSON for programs.

use std::time::SystemTime;

use serde_json::{Value, json};
use weft_proto::protocol::{LoadBalancer, Protocol};
use weft_proto::v1 as pb;

use super::Format;
use crate::api::contract::instance_word;
use crate::api::convert::service_spec_from_proto;
use crate::resource::{Resource, RouteSpec, to_value, to_yaml_documents, value_to_yaml};

/// Left-aligned columns separated by three spaces, like kubectl.
pub(super) fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

pub(super) fn structured(v: Value, format: Format) -> String {
    match format {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&v).unwrap_or_default()),
        _ => value_to_yaml(&v),
    }
}

/// A protocol as users write it; `-` when none is declared.
fn protocol(p: i32) -> &'static str {
    Protocol::from_proto(p)
        .ok()
        .flatten()
        .map_or("-", Protocol::as_str)
}

/// An instance's health in the words `weftctl top` (from the control
/// plane) uses, or `no app` for a caller-only sidecar.
fn instance_health(i: &pb::InstanceInfo) -> &'static str {
    match pb::Health::try_from(i.health) {
        Ok(h) => instance_word(h, i.no_app),
        Err(_) => instance_word(pb::Health::Unknown, i.no_app),
    }
}

fn labels(l: &std::collections::HashMap<String, String>) -> String {
    let mut v: Vec<_> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
    v.sort();
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// `3m12s`, like kubectl's AGE column.
fn age(unix_ms: u64) -> String {
    let now = weft_proto::time::unix_ms(SystemTime::now());
    let s = now.saturating_sub(unix_ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        3600..=86399 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Time left until `unix_ms`: `23h59m`, `41s`, or `expired`.
fn time_left(unix_ms: u64) -> String {
    if unix_ms == 0 {
        return "-".into();
    }
    let now = weft_proto::time::unix_ms(SystemTime::now());
    if unix_ms <= now {
        return "expired".into();
    }
    let s = (unix_ms - now) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn in_time(unix_ms: u64) -> String {
    let now = weft_proto::time::unix_ms(SystemTime::now());
    format!("{}ms", unix_ms.saturating_sub(now))
}

pub fn services(list: &[pb::ServiceInfo], format: Format) -> String {
    if format == Format::Table {
        let rows = list
            .iter()
            .map(|s| {
                let spec = s.spec.clone().unwrap_or_default();
                let lb = LoadBalancer::from_proto(spec.load_balancer).unwrap_or_default();
                vec![
                    s.name.clone(),
                    protocol(spec.protocol).into(),
                    lb.as_str().into(),
                    format!("{}/{}", s.healthy_instances, s.instances),
                    if s.has_resource {
                        "resource"
                    } else {
                        "discovered"
                    }
                    .into(),
                ]
            })
            .collect();
        return table(
            &[
                "NAME",
                "PROTOCOL",
                "BALANCER",
                "HEALTHY/INSTANCES",
                "SOURCE",
            ],
            rows,
        );
    }
    // As apply-able documents: what `weftctl apply -f` takes back.
    let resources: Vec<Resource> = list
        .iter()
        .filter_map(|s| s.spec.as_ref())
        .filter_map(|p| service_spec_from_proto(p).ok())
        .map(|s| Resource::Service(Box::new(s)))
        .collect();
    match format {
        Format::Json => structured(
            Value::Array(resources.iter().map(to_value).collect()),
            format,
        ),
        _ => to_yaml_documents(&resources),
    }
}

pub fn policies(list: &[Resource], format: Format) -> String {
    match format {
        Format::Table => {
            let rows = list
                .iter()
                .filter_map(|r| match r {
                    Resource::AuthorizationPolicy(p) => Some(vec![
                        p.name.to_string(),
                        p.service.to_string(),
                        p.rules
                            .iter()
                            .map(|r| {
                                let from: Vec<String> =
                                    r.from().iter().map(ToString::to_string).collect();
                                from.join("|")
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                    ]),
                    Resource::Service(_) | Resource::Route(_) | Resource::Gateway(_) => None,
                })
                .collect();
            table(&["NAME", "SERVICE", "ALLOWED CALLERS"], rows)
        }
        Format::Json => structured(Value::Array(list.iter().map(to_value).collect()), format),
        Format::Yaml => to_yaml_documents(list),
    }
}

/// Routes: a table of what each attaches to and sends to, or the
/// Gateway API YAML (JSON) that `weftctl apply` takes back.
pub fn routes(list: &[Resource], format: Format) -> String {
    match format {
        Format::Table => {
            if list.is_empty() {
                return "no routes\n".into();
            }
            let rows = list
                .iter()
                .filter_map(|r| match r {
                    Resource::Route(r) => Some(route_row(r)),
                    _ => None,
                })
                .collect();
            table(&["NAME", "KIND", "PARENTS", "RULES", "BACKENDS"], rows)
        }
        Format::Json => structured(Value::Array(list.iter().map(to_value).collect()), format),
        Format::Yaml => to_yaml_documents(list),
    }
}

/// Gateways: a table of their listeners, or the Gateway API YAML (JSON)
/// that `weftctl apply` takes back.
pub fn gateways(list: &[Resource], format: Format) -> String {
    match format {
        Format::Table => {
            if list.is_empty() {
                return "no gateways\n".into();
            }
            let rows = list
                .iter()
                .filter_map(|r| match r {
                    Resource::Gateway(g) => Some(vec![
                        g.name.to_string(),
                        g.listeners()
                            .iter()
                            .map(|l| {
                                let host = l
                                    .hostname
                                    .as_ref()
                                    .map_or_else(|| "*".to_string(), ToString::to_string);
                                format!("{} {}/{} {host}", l.name, l.port, l.protocol)
                            })
                            .collect::<Vec<_>>()
                            .join(", "),
                    ]),
                    _ => None,
                })
                .collect();
            table(&["NAME", "LISTENERS"], rows)
        }
        Format::Json => structured(Value::Array(list.iter().map(to_value).collect()), format),
        Format::Yaml => to_yaml_documents(list),
    }
}

fn route_row(r: &RouteSpec) -> Vec<String> {
    let services: Vec<&str> = r.services().iter().map(|s| s.as_str()).collect();
    // Each backend once, in the order the rules name them; a rule without
    // backends sends to the service itself.
    let mut backends: Vec<String> = Vec::new();
    for rule in r.rules() {
        let named: Vec<String> = if rule.backends().is_empty() {
            services.iter().map(|s| s.to_string()).collect()
        } else {
            rule.backends()
                .iter()
                .map(|b| match &b.subset {
                    Some(subset) => format!("{}:{subset}", b.service),
                    None => b.service.to_string(),
                })
                .collect()
        };
        for b in named {
            if !backends.contains(&b) {
                backends.push(b);
            }
        }
    }
    let gateways = r.gateways().iter().map(|g| match &g.section {
        Some(s) => format!("gateway/{}:{s}", g.name),
        None => format!("gateway/{}", g.name),
    });
    let parents: Vec<String> = services
        .iter()
        .map(|s| s.to_string())
        .chain(gateways)
        .collect();
    vec![
        r.name.to_string(),
        r.kind.as_str().to_string(),
        parents.join(","),
        r.rules().len().to_string(),
        backends.join(","),
    ]
}

pub fn instances(list: &[pb::InstanceInfo], format: Format) -> String {
    if format == Format::Table {
        let rows = list
            .iter()
            .map(|i| {
                vec![
                    i.service.clone(),
                    i.instance_id.clone(),
                    i.address.clone(),
                    instance_health(i).into(),
                    if i.connected {
                        "yes".into()
                    } else {
                        format!("no (removed in {})", in_time(i.expires_at_unix_ms))
                    },
                    labels(&i.labels),
                    if i.ejected_by.is_empty() {
                        "-".into()
                    } else {
                        i.ejected_by
                            .iter()
                            .map(|e| {
                                format!("by {} for {}", e.instance_id, in_time(e.until_unix_ms))
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                ]
            })
            .collect();
        return table(
            &[
                "SERVICE",
                "INSTANCE",
                "ADDRESS",
                "HEALTH",
                "CONNECTED",
                "LABELS",
                "EJECTED",
            ],
            rows,
        );
    }
    let v = list
        .iter()
        .map(|i| {
            json!({
                "service": i.service,
                "instance": i.instance_id,
                "address": i.address,
                "protocol": protocol(i.protocol),
                "health": instance_health(i),
                "healthDetail": i.health_detail,
                "connected": i.connected,
                "expiresAtUnixMs": i.expires_at_unix_ms,
                "labels": i.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
                "ejectedBy": i.ejected_by.iter().map(|e| json!({"instance": e.instance_id, "untilUnixMs": e.until_unix_ms})).collect::<Vec<_>>(),
            })
        })
        .collect();
    structured(Value::Array(v), format)
}

fn sidecar_json(s: &pb::SidecarInfo) -> Value {
    json!({
        "service": s.service,
        "instance": s.instance_id,
        "address": s.address,
        "connectedSinceUnixMs": s.connected_since_unix_ms,
        "sentVersion": s.sent_version,
        "appliedVersion": s.applied_version,
        "lastNack": if s.nack_version == 0 { Value::Null } else {
            json!({"version": s.nack_version, "reason": s.nack_reason})
        },
        "subscriptions": s.subscriptions,
        "sidecarVersion": s.sidecar_version,
        "certificateExpiresUnixMs": s.certificate_expires_unix_ms,
        "replica": s.replica,
    })
}

pub fn sidecars(list: &[pb::SidecarInfo], format: Format) -> String {
    status(list, format)
}

pub fn tokens(list: &[pb::TokenInfo], format: Format) -> String {
    if format != Format::Table {
        let v = list
            .iter()
            .map(|t| {
                json!({
                    "id": t.id,
                    "service": t.service,
                    "createdUnixMs": t.created_unix_ms,
                    "expiresUnixMs": t.expires_unix_ms,
                })
            })
            .collect();
        return structured(Value::Array(v), format);
    }
    if list.is_empty() {
        return "no join tokens in date\n".into();
    }
    let rows = list
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.service.clone(),
                if t.created_unix_ms == 0 {
                    "-".into()
                } else {
                    age(t.created_unix_ms)
                },
                time_left(t.expires_unix_ms),
            ]
        })
        .collect();
    table(&["ID", "SERVICE", "AGE", "EXPIRES IN"], rows)
}

pub fn status(list: &[pb::SidecarInfo], format: Format) -> String {
    if format != Format::Table {
        return structured(
            Value::Array(list.iter().map(sidecar_json).collect()),
            format,
        );
    }
    if list.is_empty() {
        return "no sidecars connected\n".into();
    }
    let rows = list
        .iter()
        .map(|s| {
            let synced = if s.applied_version == s.sent_version {
                "synced"
            } else {
                "pending"
            };
            vec![
                s.service.clone(),
                s.instance_id.clone(),
                s.address.clone(),
                if s.replica.is_empty() {
                    "-".into()
                } else {
                    s.replica.clone()
                },
                age(s.connected_since_unix_ms),
                format!("{} ({synced})", s.applied_version),
                time_left(s.certificate_expires_unix_ms),
                if s.nack_version == 0 {
                    "-".into()
                } else {
                    format!("{}: {}", s.nack_version, s.nack_reason)
                },
            ]
        })
        .collect();
    table(
        &[
            "SERVICE",
            "INSTANCE",
            "ADDRESS",
            "REPLICA",
            "CONNECTED FOR",
            "APPLIED VERSION",
            "CERT EXPIRES IN",
            "LAST NACK",
        ],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let t = table(&["A", "BB"], vec![vec!["long".into(), "x".into()]]);
        assert_eq!(t, "A      BB\nlong   x\n");
    }
}
