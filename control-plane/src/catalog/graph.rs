//! What the dashboard shows, read from the catalog under one lock: the
//! service graph (a node per service, an edge per caller → callee pair as
//! the callers' sidecars counted it), one service's page (instances,
//! resources, recent history, top routes) and the connected sidecars with
//! their problems first.
//!
//! Everything is computed from what the sidecars reported ([`super::stats`]);
//! nothing here is stored, and every list is bounded by the catalog's own
//! bounds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use weft_proto::time::unix_ms;

use super::instances::{Health, InstanceView};
use super::sidecars::SidecarStatus;
use super::stats::{ROUTE_WINDOW, RouteCounts, Traffic};
use super::top::ServiceTop;
use super::{Catalog, TopQuery};
use crate::resource::{Name, Resource};

/// The service graph over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshGraph {
    pub window: Duration,
    /// Every service with an instance or a resource, sorted by name, and
    /// every service an edge names that the catalog does not know.
    pub nodes: Vec<GraphNode>,
    /// Sorted by caller, then callee.
    pub edges: Vec<GraphEdge>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GraphNode {
    /// Inbound traffic (plaintext callers included), instances and
    /// health (`weftctl top`'s row).
    pub top: ServiceTop,
    /// A Gateway resource of this name exists.
    pub gateway: bool,
    /// Only edges name it: no instance, no resource.
    pub unknown: bool,
    /// Its instances some sidecar's outlier detection has ejected now.
    pub ejected: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GraphEdge {
    pub from: Name,
    pub to: Name,
    /// The callers' sidecars' count, summed over the caller's instances.
    pub traffic: Traffic,
}

/// One point of a service's history: its inbound traffic in the slot that
/// ends at `end_unix_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPoint {
    pub end_unix_ms: u64,
    pub traffic: Traffic,
}

/// One instance on a service page.
#[derive(Debug, Clone, PartialEq)]
pub struct PageInstance {
    pub view: InstanceView,
    /// Its sidecar's certificate's expiry (unix ms); 0 when not connected
    /// here or without one.
    pub certificate_expires_unix_ms: u64,
    pub sidecar_version: String,
}

/// Everything the dashboard shows about one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePage {
    pub node: GraphNode,
    pub instances: Vec<PageInstance>,
    /// Its Service, its routes, the policies on it, a Gateway of its name.
    pub resources: Vec<Resource>,
    /// Oldest first, [`HISTORY_SLOT`] apart, over [`HISTORY`].
    pub history: Vec<HistoryPoint>,
    /// Requests and failures per route over [`ROUTE_WINDOW`], the busiest
    /// first.
    pub routes: Vec<(String, u64, u64)>,
    pub route_window: Duration,
    /// Edges into and out of it.
    pub callers: Vec<GraphEdge>,
    pub callees: Vec<GraphEdge>,
}

/// How far back a service page's history goes, and its resolution.
pub const HISTORY: Duration = Duration::from_secs(300);
pub const HISTORY_SLOT: Duration = Duration::from_secs(10);

/// The routes a page lists at most.
pub const MAX_PAGE_ROUTES: usize = 50;

/// An update unanswered this long makes a sidecar stale.
pub const STALE_AFTER: Duration = Duration::from_secs(10);

/// A certificate this close to expiry is a problem.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(3600);

/// A connected sidecar, with what is wrong with it.
#[derive(Debug, Clone)]
pub struct SidecarRow {
    pub status: SidecarStatus,
    /// Empty: nothing; else why it is listed first.
    pub problems: Vec<String>,
}

impl Catalog {
    /// The service graph over `window` (at most the edges' horizon).
    pub fn graph(&self, window: Duration) -> MeshGraph {
        let window = window.min(super::stats::EDGE_HORIZON);
        let now = Instant::now();
        let wall_ms = unix_ms(SystemTime::now());
        let parts = self.lock();
        let mut edges: BTreeMap<(Name, Name), Traffic> = BTreeMap::new();
        // Each ejected instance once, whoever ejected it: one pass over
        // every sidecar's (small) list.
        let mut ejected: BTreeSet<(&str, &str)> = BTreeSet::new();
        for (status, traffic) in parts.sidecars.each_with_traffic() {
            for ((service, instance), until) in &status.ejections {
                if *until > wall_ms {
                    ejected.insert((service.as_str(), instance.as_str()));
                }
            }
            let Some(traffic) = traffic else { continue };
            for (to, ring) in &traffic.upstreams {
                if let Some(t) = ring.window(now, window) {
                    edges
                        .entry((status.service.clone(), to.clone()))
                        .or_default()
                        .add(&t);
                }
            }
        }
        let report = self.top_locked(
            &parts,
            &TopQuery {
                service: None,
                window,
            },
            now,
        );
        let mut nodes: BTreeMap<Name, GraphNode> = report
            .services
            .into_iter()
            .map(|top| {
                let name = top.service.clone();
                let node = GraphNode {
                    gateway: parts.resources.gateway(&name).is_some(),
                    unknown: false,
                    ejected: top
                        .instances
                        .iter()
                        .filter(|i| ejected.contains(&(name.as_str(), i.instance_id.as_str())))
                        .count() as u32,
                    top,
                };
                (name, node)
            })
            .collect();
        for name in parts.resources.service_names() {
            nodes
                .entry(name.clone())
                .or_insert_with(|| GraphNode::empty(name.clone(), false));
        }
        for (from, to) in edges.keys() {
            for n in [from, to] {
                nodes
                    .entry(n.clone())
                    .or_insert_with(|| GraphNode::empty(n.clone(), true));
            }
        }
        MeshGraph {
            window,
            nodes: nodes.into_values().collect(),
            edges: edges
                .into_iter()
                .map(|((from, to), traffic)| GraphEdge { from, to, traffic })
                .collect(),
        }
    }

    /// One service's page; `None` when the catalog knows nothing of it.
    pub fn service_page(&self, name: &Name, window: Duration) -> Option<ServicePage> {
        let graph = self.graph(window);
        let node = graph.nodes.iter().find(|n| &n.top.service == name)?.clone();
        let now = Instant::now();
        let wall = SystemTime::now();
        let wall_ms = unix_ms(wall);
        let parts = self.lock();
        let mut instances = Vec::new();
        let mut rings = Vec::new();
        let mut routes: RouteCounts = RouteCounts::new();
        for i in parts.instances.iter().filter(|i| &i.record.service == name) {
            let ejected_by =
                parts
                    .sidecars
                    .ejections_of(&i.record.service, &i.record.instance_id, wall_ms);
            let sidecar = i.stream.and_then(|s| parts.sidecars.status(s));
            instances.push(PageInstance {
                view: i.view(now, wall, ejected_by),
                certificate_expires_unix_ms: sidecar.map_or(0, |s| s.certificate_expires_unix_ms),
                sidecar_version: sidecar
                    .map(|s| s.sidecar_version.clone())
                    .unwrap_or_default(),
            });
            if let Some(t) = i.stream.and_then(|s| parts.sidecars.traffic(s)) {
                rings.push(&t.inbound);
                for (route, (r, f)) in t.routes.window(now) {
                    let e = routes.entry(route).or_default();
                    e.0 += r;
                    e.1 += f;
                }
            }
        }
        instances.sort_by(|a, b| a.view.record.instance_id.cmp(&b.view.record.instance_id));
        let history = (0..HISTORY.as_secs() / HISTORY_SLOT.as_secs())
            .rev()
            .filter_map(|k| {
                let end = now.checked_sub(HISTORY_SLOT * u32::try_from(k).ok()?)?;
                let start = end.checked_sub(HISTORY_SLOT)?;
                let mut sum = Traffic::default();
                for ring in &rings {
                    if let Some(t) = ring.between(start, end) {
                        sum.add(&t);
                    }
                }
                let ago = now.saturating_duration_since(end);
                let end_wall = wall.checked_sub(ago)?;
                Some(HistoryPoint {
                    end_unix_ms: unix_ms(end_wall),
                    traffic: sum,
                })
            })
            .collect();
        let mut routes: Vec<(String, u64, u64)> =
            routes.into_iter().map(|(k, (r, f))| (k, r, f)).collect();
        routes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        routes.truncate(MAX_PAGE_ROUTES);
        let resources = parts
            .resources
            .all()
            .into_iter()
            .filter(|r| concerns(r, name))
            .collect();
        drop(parts);
        let (callers, callees) = (
            graph
                .edges
                .iter()
                .filter(|e| &e.to == name)
                .cloned()
                .collect(),
            graph
                .edges
                .iter()
                .filter(|e| &e.from == name)
                .cloned()
                .collect(),
        );
        Some(ServicePage {
            node,
            instances,
            resources,
            history,
            routes,
            route_window: ROUTE_WINDOW,
            callers,
            callees,
        })
    }

    /// Every connected sidecar: those with a problem first (then by
    /// service and instance).
    pub fn sidecar_rows(&self) -> Vec<SidecarRow> {
        let now = Instant::now();
        let wall_ms = unix_ms(SystemTime::now());
        let mut rows: Vec<SidecarRow> = self
            .sidecars()
            .into_iter()
            .map(|status| SidecarRow {
                problems: problems(&status, now, wall_ms),
                status,
            })
            .collect();
        rows.sort_by(|a, b| {
            (
                a.problems.is_empty(),
                &a.status.service,
                &a.status.instance_id,
            )
                .cmp(&(
                    b.problems.is_empty(),
                    &b.status.service,
                    &b.status.instance_id,
                ))
        });
        rows
    }
}

impl GraphNode {
    fn empty(service: Name, unknown: bool) -> Self {
        GraphNode {
            top: super::top::service_top(service, &[], Duration::ZERO, Instant::now()),
            gateway: false,
            unknown,
            ejected: 0,
        }
    }

    /// Instances with an app that are not healthy.
    pub fn unhealthy(&self) -> u32 {
        self.top
            .instances
            .iter()
            .filter(|i| !i.no_app && i.health != Health::Healthy)
            .count() as u32
    }
}

/// Whether `r` belongs on `service`'s page.
fn concerns(r: &Resource, service: &Name) -> bool {
    match r {
        Resource::Service(s) => &s.name == service,
        Resource::AuthorizationPolicy(p) => &p.service == service,
        Resource::Route(route) => route.services().contains(service),
        Resource::Gateway(g) => &g.name == service,
    }
}

/// What is wrong with a sidecar, in words.
fn problems(s: &SidecarStatus, now: Instant, wall_ms: u64) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(n) = &s.nack
        && n.version > s.applied_version
    {
        out.push(format!("rejected update {}: {}", n.version, n.reason));
    }
    if let Some(since) = s.unanswered_since {
        let waited = now.saturating_duration_since(since);
        if waited >= STALE_AFTER {
            out.push(format!(
                "update {} unanswered for {} s",
                s.sent_version,
                waited.as_secs()
            ));
        }
    }
    let expires = s.certificate_expires_unix_ms;
    if expires != 0 {
        if expires <= wall_ms {
            out.push("certificate expired".into());
        } else if expires - wall_ms < EXPIRY_WARNING.as_millis() as u64 {
            out.push(format!(
                "certificate expires in {} min",
                (expires - wall_ms) / 60_000
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::catalog::{CatalogConfig, Counters, Registration, SidecarStream, TrafficReport};
    use crate::resource::parse_documents;

    fn name(s: &str) -> Name {
        Name::parse(s).expect("name")
    }

    fn register(c: &Arc<Catalog>, service: &str, id: &str, health: Health) -> SidecarStream {
        let reg = Registration {
            service: name(service),
            instance_id: id.into(),
            address: "127.0.0.1:1000".into(),
            protocol: None,
            labels: Default::default(),
            health,
            sidecar_version: "test".into(),
            no_app: false,
        };
        c.connect(reg, BTreeSet::new(), 0)
    }

    fn counters(requests: u64, failures: u64, ms: f64) -> Counters {
        Counters::of(requests, failures, ms)
    }

    fn report(
        inbound: Counters,
        upstreams: &[(&str, Counters)],
        routes: &[(&str, u64, u64)],
    ) -> TrafficReport {
        TrafficReport {
            inbound,
            upstreams: upstreams
                .iter()
                .map(|(n, c)| (name(n), c.clone()))
                .collect(),
            routes: routes
                .iter()
                .map(|(r, n, f)| (r.to_string(), (*n, *f)))
                .collect(),
        }
    }

    /// gateway → orders (2 instances) → users; orders → email fails.
    /// Ten seconds of traffic.
    async fn mesh() -> (Arc<Catalog>, Vec<SidecarStream>) {
        let c = Catalog::in_memory(CatalogConfig::default());
        let yaml = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec: {}\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: idle}\nspec: {}\n";
        c.apply(&parse_documents(yaml).expect("valid yaml"));
        let gw = register(&c, "gateway", "gw-1", Health::Healthy);
        let o1 = register(&c, "orders", "o-1", Health::Healthy);
        let o2 = register(&c, "orders", "o-2", Health::Unhealthy);
        let u1 = register(&c, "users", "u-1", Health::Healthy);
        let zero = counters(0, 0, 1.0);
        for s in [&gw, &o1, &o2, &u1] {
            s.record_stats(report(zero.clone(), &[], &[]));
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        gw.record_stats(report(
            zero.clone(),
            &[("orders", counters(300, 0, 4.0))],
            &[],
        ));
        let mut plain = counters(200, 0, 2.0);
        plain.plaintext = 50;
        o1.record_stats(report(
            plain,
            &[
                ("users", counters(100, 0, 1.0)),
                ("email", counters(20, 20, 30.0)),
            ],
            &[("/shop.Orders/Get", 150, 0), ("/shop.Orders/Put", 50, 0)],
        ));
        o2.record_stats(report(
            counters(100, 10, 2.0),
            &[("users", counters(50, 5, 1.0))],
            &[("/shop.Orders/Put", 100, 10)],
        ));
        u1.record_stats(report(counters(150, 5, 1.0), &[], &[]));
        (c, vec![gw, o1, o2, u1])
    }

    #[tokio::test(start_paused = true)]
    async fn nodes_and_edges_come_from_the_callers_counts() {
        let (c, streams) = mesh().await;
        let g = c.graph(Duration::from_secs(10));
        let nodes: Vec<_> = g
            .nodes
            .iter()
            .map(|n| (n.top.service.as_str(), n.unknown))
            .collect();
        assert_eq!(
            nodes,
            [
                ("email", true),
                ("gateway", false),
                ("idle", false),
                ("orders", false),
                ("users", false)
            ]
        );
        let edges: Vec<_> = g
            .edges
            .iter()
            .map(|e| {
                (
                    e.from.as_str(),
                    e.to.as_str(),
                    e.traffic.requests,
                    e.traffic.failures,
                )
            })
            .collect();
        assert_eq!(
            edges,
            [
                ("gateway", "orders", 300, 0),
                ("orders", "email", 20, 20),
                ("orders", "users", 150, 5),
            ]
        );
        let to_users = &g.edges[2];
        assert_eq!(to_users.traffic.rps, 15.0, "summed over both callers");
        assert!(to_users.traffic.percentile_ms(0.99) <= 1.0);
        let orders = &g.nodes[3];
        assert_eq!((orders.top.requests, orders.top.failures), (300, 10));
        assert_eq!(orders.top.plaintext, 50);
        assert_eq!((orders.top.endpoints, orders.top.healthy_endpoints), (2, 1));
        assert_eq!(orders.unhealthy(), 1);
        assert_eq!(orders.ejected, 0);
        // The gateway's sidecar ejects o-2 (and names an instance that is
        // not there: not counted); an ejection that is over is not either.
        let far = unix_ms(SystemTime::now()) + 60_000;
        streams[0].record_ejection("orders".into(), "o-2".into(), far);
        streams[0].record_ejection("orders".into(), "o-9".into(), far);
        streams[3].record_ejection("orders".into(), "o-1".into(), 1);
        let g = c.graph(Duration::from_secs(10));
        assert_eq!(g.nodes[3].ejected, 1);
        // The window is capped at what edges keep.
        assert_eq!(
            c.graph(Duration::from_secs(3600)).window,
            super::super::EDGE_HORIZON
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_page_has_instances_routes_history_and_edges() {
        let (c, streams) = mesh().await;
        let page = c
            .service_page(&name("orders"), Duration::from_secs(10))
            .expect("known");
        let ids: Vec<_> = page
            .instances
            .iter()
            .map(|i| i.view.record.instance_id.as_str())
            .collect();
        assert_eq!(ids, ["o-1", "o-2"]);
        assert_eq!(page.instances[0].sidecar_version, "test");
        assert_eq!(
            page.routes,
            [
                ("/shop.Orders/Put".to_string(), 150, 10),
                ("/shop.Orders/Get".to_string(), 150, 0)
            ]
            .iter()
            .rev()
            .cloned()
            .collect::<Vec<_>>()
        );
        assert_eq!(page.callers.len(), 1);
        assert_eq!(page.callees.len(), 2);
        assert!(page.resources.is_empty(), "orders has no resource");
        let users = c
            .service_page(&name("users"), Duration::from_secs(10))
            .expect("known");
        assert_eq!(users.resources.len(), 1);
        // History: 30 slots of 10 s; the last holds the 10 s of traffic.
        assert_eq!(page.history.len(), 30);
        let last = page.history.last().expect("points");
        assert_eq!(last.traffic.requests, 300);
        assert_eq!(last.traffic.rps, 30.0);
        assert!(page.history[..29].iter().all(|p| p.traffic.requests == 0));
        // Ten more seconds without traffic: the newest slot is empty, the
        // one before holds it.
        tokio::time::advance(Duration::from_secs(10)).await;
        let page = c
            .service_page(&name("orders"), Duration::from_secs(10))
            .expect("known");
        assert_eq!(page.history[29].traffic.requests, 0);
        assert_eq!(page.history[28].traffic.requests, 300);
        assert!(
            c.service_page(&name("nobody"), Duration::from_secs(10))
                .is_none()
        );
        drop(streams);
    }

    #[tokio::test(start_paused = true)]
    async fn sidecars_with_problems_come_first() {
        let (c, streams) = mesh().await;
        // o-2 rejected an update; gw-1 has an update unanswered too long.
        streams[2].record_sent(7);
        streams[2].record_nack(7, "bad route".into());
        streams[0].record_sent(8);
        tokio::time::advance(STALE_AFTER).await;
        let rows = c.sidecar_rows();
        let order: Vec<_> = rows
            .iter()
            .map(|r| (r.status.instance_id.as_str(), r.problems.len()))
            .collect();
        assert_eq!(order, [("gw-1", 1), ("o-2", 1), ("o-1", 0), ("u-1", 0)]);
        assert_eq!(rows[0].problems[0], "update 8 unanswered for 10 s");
        assert_eq!(rows[1].problems[0], "rejected update 7: bad route");
        // Answered: no longer a problem.
        streams[0].record_ack(8);
        streams[2].record_sent(9);
        streams[2].record_ack(9);
        assert!(c.sidecar_rows().iter().all(|r| r.problems.is_empty()));
    }
}
