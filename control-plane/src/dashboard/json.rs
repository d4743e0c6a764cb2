//! The dashboard's JSON: the catalog's views in the shape the page reads,
//! with each node's and edge's state (`ok`, `warn`, `bad`, `idle`) decided
//! here, so that the page only draws and the rule is tested once.

use serde_json::{Value, json};
use weft_proto::time::unix_ms;

use crate::catalog::{GraphEdge, GraphNode, Health, MeshGraph, ServicePage, SidecarRow, Traffic};
use crate::resource::to_yaml_documents;

/// A success rate below this makes a node or an edge `bad`.
pub const BAD_SUCCESS: f64 = 0.95;

pub fn error(message: &str) -> String {
    json!({ "error": message }).to_string()
}

fn health(h: Health) -> &'static str {
    match h {
        Health::Healthy => "healthy",
        Health::Unhealthy => "unhealthy",
        Health::Unknown => "unknown",
    }
}

/// Finite, rounded for the wire (a rate of 1/3 needs no 17 digits).
fn num(x: f64, places: i32) -> f64 {
    if !x.is_finite() {
        return 0.0;
    }
    let p = 10f64.powi(places);
    (x * p).round() / p
}

fn traffic(t: &Traffic) -> Value {
    json!({
        "rps": num(t.rps, 2),
        "requests": t.requests,
        "failures": t.failures,
        "success_rate": num(t.success_rate(), 4),
        "p50_ms": num(t.percentile_ms(0.5), 3),
        "p99_ms": num(t.percentile_ms(0.99), 3),
    })
}

/// An edge is `bad` when its success rate is under [`BAD_SUCCESS`], `warn`
/// with any failure, `idle` without requests.
fn edge_state(t: &Traffic) -> &'static str {
    if t.requests == 0 {
        "idle"
    } else if t.success_rate() < BAD_SUCCESS {
        "bad"
    } else if t.failures > 0 {
        "warn"
    } else {
        "ok"
    }
}

/// A node is `bad` when an endpoint is unhealthy, none is healthy, or its
/// success rate is under [`BAD_SUCCESS`]; `warn` with any failure, an
/// ejected instance or a plaintext caller; `idle` without requests.
fn node_state(n: &GraphNode) -> &'static str {
    let t = &n.top;
    let none_healthy = t.endpoints > 0 && t.healthy_endpoints == 0;
    if n.unhealthy() > 0 || none_healthy || (t.requests > 0 && t.success_rate < BAD_SUCCESS) {
        "bad"
    } else if t.failures > 0 || n.plaintext > 0 {
        "warn"
    } else if t.requests == 0 {
        "idle"
    } else {
        "ok"
    }
}

fn node(n: &GraphNode) -> Value {
    let t = &n.top;
    json!({
        "name": t.service.as_str(),
        "state": node_state(n),
        "gateway": n.gateway,
        "unknown": n.unknown,
        "endpoints": t.endpoints,
        "healthy": t.healthy_endpoints,
        "unhealthy": n.unhealthy(),
        "instances": t.instances.len(),
        "rps": num(t.rps, 2),
        "requests": t.requests,
        "failures": t.failures,
        "success_rate": num(t.success_rate, 4),
        "p50_ms": num(t.p50_ms, 3),
        "p99_ms": num(t.p99_ms, 3),
        "plaintext": n.plaintext,
    })
}

fn edge(e: &GraphEdge) -> Value {
    let mut v = traffic(&e.traffic);
    v["from"] = json!(e.from.as_str());
    v["to"] = json!(e.to.as_str());
    v["state"] = json!(edge_state(&e.traffic));
    // Sidecars call each other over mutual TLS only: an edge the callers
    // counted is one. Plaintext shows on the callee (`plaintext`).
    v["mtls"] = json!(true);
    v
}

pub fn graph(g: &MeshGraph) -> String {
    json!({
        "window_seconds": g.window.as_secs(),
        "generated_unix_ms": unix_ms(std::time::SystemTime::now()),
        "nodes": g.nodes.iter().map(node).collect::<Vec<_>>(),
        "edges": g.edges.iter().map(edge).collect::<Vec<_>>(),
    })
    .to_string()
}

pub fn service_page(p: &ServicePage) -> String {
    let tops = &p.node.top.instances;
    let instances: Vec<Value> = p
        .instances
        .iter()
        .map(|i| {
            let r = &i.view.record;
            let top = tops.iter().find(|t| t.instance_id == r.instance_id);
            json!({
                "id": r.instance_id,
                "address": r.address,
                "labels": r.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
                "health": health(r.health),
                "health_detail": r.health_detail,
                "caller_only": r.no_app,
                "connected": i.view.connected,
                "expires_unix_ms": i.view.expires_at.map(unix_ms),
                "ejected_by": i.view.ejected_by.iter().map(|e| json!({
                    "instance_id": e.instance_id,
                    "until_unix_ms": e.until_unix_ms,
                })).collect::<Vec<_>>(),
                "certificate_expires_unix_ms": i.certificate_expires_unix_ms,
                "sidecar_version": i.sidecar_version,
                "rps": num(top.map_or(0.0, |t| t.rps), 2),
                "success_rate": num(top.map_or(1.0, |t| t.success_rate), 4),
                "p99_ms": num(top.map_or(0.0, |t| t.p99_ms), 3),
            })
        })
        .collect();
    let history: Vec<Value> = p
        .history
        .iter()
        .map(|h| {
            let mut v = traffic(&h.traffic);
            v["end_unix_ms"] = json!(h.end_unix_ms);
            v
        })
        .collect();
    let routes: Vec<Value> = p
        .routes
        .iter()
        .map(|(route, requests, failures)| {
            json!({ "route": route, "requests": requests, "failures": failures })
        })
        .collect();
    json!({
        "name": p.node.top.service.as_str(),
        "node": node(&p.node),
        "instances": instances,
        "resources_yaml": to_yaml_documents(&p.resources),
        "history": history,
        "history_slot_seconds": crate::catalog::HISTORY_SLOT.as_secs(),
        "routes": routes,
        "route_window_seconds": p.route_window.as_secs(),
        "callers": p.callers.iter().map(edge).collect::<Vec<_>>(),
        "callees": p.callees.iter().map(edge).collect::<Vec<_>>(),
    })
    .to_string()
}

pub fn sidecars(rows: &[SidecarRow]) -> String {
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            let s = &r.status;
            json!({
                "service": s.service.as_str(),
                "instance_id": s.instance_id,
                "address": s.address,
                "version": s.sidecar_version,
                "connected_since_unix_ms": unix_ms(s.connected_since),
                "sent_version": s.sent_version,
                "applied_version": s.applied_version,
                "nack": s.nack.as_ref().map(|n| json!({ "version": n.version, "reason": n.reason })),
                "certificate_expires_unix_ms": s.certificate_expires_unix_ms,
                "subscriptions": s.subscriptions.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
                "problems": r.problems,
            })
        })
        .collect();
    json!({ "sidecars": list }).to_string()
}
