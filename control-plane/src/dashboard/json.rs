//! The dashboard's JSON: the catalog's views in the shape the page reads,
//! with each node's and edge's state (`ok`, `warn`, `bad`, `idle`) decided
//! here, so that the page only draws and the rule is tested once.
//!
//! Typed structs that borrow from the views, serialized in one pass: the
//! graph of a large mesh is answered every two seconds per open page, and
//! building a `serde_json::Value` tree first cost several times more.

use std::collections::BTreeMap;

use serde::Serialize;
use weft_proto::time::unix_ms;

use crate::catalog::{
    GraphEdge, GraphNode, HISTORY_SLOT, Health, MeshGraph, ServicePage, SidecarRow, Traffic,
};
use crate::resource::to_yaml_documents;

/// A success rate below this makes a node or an edge `bad`.
pub const BAD_SUCCESS: f64 = 0.95;

fn to_string<T: Serialize>(v: &T) -> String {
    // Serializing plain structs of numbers and strings cannot fail.
    serde_json::to_string(v).unwrap_or_else(|e| error(&e.to_string()))
}

pub fn error(message: &str) -> String {
    #[derive(Serialize)]
    struct Error<'a> {
        error: &'a str,
    }
    serde_json::to_string(&Error { error: message }).unwrap_or_default()
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

#[derive(Serialize)]
struct TrafficJson {
    rps: f64,
    requests: u64,
    failures: u64,
    success_rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

impl From<&Traffic> for TrafficJson {
    fn from(t: &Traffic) -> Self {
        TrafficJson {
            rps: num(t.rps, 2),
            requests: t.requests,
            failures: t.failures,
            success_rate: num(t.success_rate(), 4),
            p50_ms: num(t.percentile_ms(0.5), 3),
            p99_ms: num(t.percentile_ms(0.99), 3),
        }
    }
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

/// A node is `bad` when an endpoint is unhealthy or ejected, none is
/// healthy, or its success rate is under [`BAD_SUCCESS`]; `warn` with any
/// failure or a plaintext caller; `idle` without requests.
fn node_state(n: &GraphNode) -> &'static str {
    let t = &n.top;
    let none_healthy = t.endpoints > 0 && t.healthy_endpoints == 0;
    let failing_instance = n.unhealthy() > 0 || n.ejected > 0;
    if failing_instance || none_healthy || (t.requests > 0 && t.success_rate < BAD_SUCCESS) {
        "bad"
    } else if t.failures > 0 || t.plaintext > 0 {
        "warn"
    } else if t.requests == 0 {
        "idle"
    } else {
        "ok"
    }
}

#[derive(Serialize)]
struct NodeJson<'a> {
    name: &'a str,
    state: &'static str,
    gateway: bool,
    unknown: bool,
    endpoints: u32,
    healthy: u32,
    unhealthy: u32,
    ejected: u32,
    instances: usize,
    plaintext: u64,
    /// Inbound, summed over its instances.
    #[serde(flatten)]
    traffic: TrafficJson,
}

impl<'a> From<&'a GraphNode> for NodeJson<'a> {
    fn from(n: &'a GraphNode) -> Self {
        let t = &n.top;
        NodeJson {
            name: t.service.as_str(),
            state: node_state(n),
            gateway: n.gateway,
            unknown: n.unknown,
            endpoints: t.endpoints,
            healthy: t.healthy_endpoints,
            unhealthy: n.unhealthy(),
            ejected: n.ejected,
            instances: t.instances.len(),
            plaintext: t.plaintext,
            traffic: TrafficJson {
                rps: num(t.rps, 2),
                requests: t.requests,
                failures: t.failures,
                success_rate: num(t.success_rate, 4),
                p50_ms: num(t.p50_ms, 3),
                p99_ms: num(t.p99_ms, 3),
            },
        }
    }
}

#[derive(Serialize)]
struct EdgeJson<'a> {
    from: &'a str,
    to: &'a str,
    state: &'static str,
    /// Sidecars call each other over mutual TLS only: an edge the callers
    /// counted is one. Plaintext shows on the callee (`plaintext`).
    mtls: bool,
    #[serde(flatten)]
    traffic: TrafficJson,
}

impl<'a> From<&'a GraphEdge> for EdgeJson<'a> {
    fn from(e: &'a GraphEdge) -> Self {
        EdgeJson {
            from: e.from.as_str(),
            to: e.to.as_str(),
            state: edge_state(&e.traffic),
            mtls: true,
            traffic: TrafficJson::from(&e.traffic),
        }
    }
}

pub fn graph(g: &MeshGraph) -> String {
    #[derive(Serialize)]
    struct GraphJson<'a> {
        window_seconds: u64,
        generated_unix_ms: u64,
        nodes: Vec<NodeJson<'a>>,
        edges: Vec<EdgeJson<'a>>,
    }
    to_string(&GraphJson {
        window_seconds: g.window.as_secs(),
        generated_unix_ms: unix_ms(std::time::SystemTime::now()),
        nodes: g.nodes.iter().map(NodeJson::from).collect(),
        edges: g.edges.iter().map(EdgeJson::from).collect(),
    })
}

#[derive(Serialize)]
struct EjectedJson<'a> {
    instance_id: &'a str,
    until_unix_ms: u64,
}

#[derive(Serialize)]
struct InstanceJson<'a> {
    id: &'a str,
    address: &'a str,
    labels: &'a BTreeMap<String, String>,
    health: &'static str,
    health_detail: &'a str,
    caller_only: bool,
    connected: bool,
    expires_unix_ms: Option<u64>,
    ejected_by: Vec<EjectedJson<'a>>,
    certificate_expires_unix_ms: u64,
    sidecar_version: &'a str,
    rps: f64,
    success_rate: f64,
    p99_ms: f64,
}

#[derive(Serialize)]
struct PointJson {
    end_unix_ms: u64,
    #[serde(flatten)]
    traffic: TrafficJson,
}

#[derive(Serialize)]
struct RouteJson<'a> {
    route: &'a str,
    requests: u64,
    failures: u64,
}

pub fn service_page(p: &ServicePage) -> String {
    #[derive(Serialize)]
    struct PageJson<'a> {
        name: &'a str,
        node: NodeJson<'a>,
        instances: Vec<InstanceJson<'a>>,
        resources_yaml: String,
        history: Vec<PointJson>,
        history_slot_seconds: u64,
        routes: Vec<RouteJson<'a>>,
        route_window_seconds: u64,
        callers: Vec<EdgeJson<'a>>,
        callees: Vec<EdgeJson<'a>>,
    }
    let tops = &p.node.top.instances;
    let instances = p
        .instances
        .iter()
        .map(|i| {
            let r = &i.view.record;
            let top = tops.iter().find(|t| t.instance_id == r.instance_id);
            InstanceJson {
                id: &r.instance_id,
                address: &r.address,
                labels: &r.labels,
                health: health(r.health),
                health_detail: &r.health_detail,
                caller_only: r.no_app,
                connected: i.view.connected,
                expires_unix_ms: i.view.expires_at.map(unix_ms),
                ejected_by: i
                    .view
                    .ejected_by
                    .iter()
                    .map(|e| EjectedJson {
                        instance_id: &e.instance_id,
                        until_unix_ms: e.until_unix_ms,
                    })
                    .collect(),
                certificate_expires_unix_ms: i.certificate_expires_unix_ms,
                sidecar_version: &i.sidecar_version,
                rps: num(top.map_or(0.0, |t| t.rps), 2),
                success_rate: num(top.map_or(1.0, |t| t.success_rate), 4),
                p99_ms: num(top.map_or(0.0, |t| t.p99_ms), 3),
            }
        })
        .collect();
    to_string(&PageJson {
        name: p.node.top.service.as_str(),
        node: NodeJson::from(&p.node),
        instances,
        resources_yaml: to_yaml_documents(&p.resources),
        history: p
            .history
            .iter()
            .map(|h| PointJson {
                end_unix_ms: h.end_unix_ms,
                traffic: TrafficJson::from(&h.traffic),
            })
            .collect(),
        history_slot_seconds: HISTORY_SLOT.as_secs(),
        routes: p
            .routes
            .iter()
            .map(|(route, requests, failures)| RouteJson {
                route,
                requests: *requests,
                failures: *failures,
            })
            .collect(),
        route_window_seconds: p.route_window.as_secs(),
        callers: p.callers.iter().map(EdgeJson::from).collect(),
        callees: p.callees.iter().map(EdgeJson::from).collect(),
    })
}

pub fn sidecars(rows: &[SidecarRow]) -> String {
    #[derive(Serialize)]
    struct NackJson<'a> {
        version: u64,
        reason: &'a str,
    }
    #[derive(Serialize)]
    struct RowJson<'a> {
        service: &'a str,
        instance_id: &'a str,
        address: &'a str,
        version: &'a str,
        connected_since_unix_ms: u64,
        sent_version: u64,
        applied_version: u64,
        nack: Option<NackJson<'a>>,
        certificate_expires_unix_ms: u64,
        subscriptions: Vec<&'a str>,
        problems: &'a [String],
    }
    #[derive(Serialize)]
    struct SidecarsJson<'a> {
        sidecars: Vec<RowJson<'a>>,
    }
    let sidecars = rows
        .iter()
        .map(|r| {
            let s = &r.status;
            RowJson {
                service: s.service.as_str(),
                instance_id: &s.instance_id,
                address: &s.address,
                version: &s.sidecar_version,
                connected_since_unix_ms: unix_ms(s.connected_since),
                sent_version: s.sent_version,
                applied_version: s.applied_version,
                nack: s.nack.as_ref().map(|n| NackJson {
                    version: n.version,
                    reason: &n.reason,
                }),
                certificate_expires_unix_ms: s.certificate_expires_unix_ms,
                subscriptions: s.subscriptions.iter().map(|n| n.as_str()).collect(),
                problems: &r.problems,
            }
        })
        .collect();
    to_string(&SidecarsJson { sidecars })
}
