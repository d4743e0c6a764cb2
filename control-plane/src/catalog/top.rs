//! `Top`: live traffic per service and instance, from the samples each
//! sidecar's stream has sent (see [`super::stats`]), over a window.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use weft_proto::name::NameError;
use weft_proto::stats::MAX_WINDOW;

use super::instances::{Health, Instance};
use super::stats::{Traffic, TrafficRing};
use crate::resource::Name;

/// The window when a request names none.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

/// A validated `TopRequest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopQuery {
    /// `None`: every service with an instance.
    pub service: Option<Name>,
    pub window: Duration,
}

/// Why a `Top` request cannot be answered; all are the caller's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopError {
    #[error("window_seconds: at most {max} seconds", max = MAX_WINDOW.as_secs())]
    WindowTooLong,
    #[error("service: {0}")]
    BadName(NameError),
    #[error("service {0:?} not found")]
    UnknownService(String),
}

/// Traffic per service over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct TopReport {
    pub window: Duration,
    /// Sorted by name.
    pub services: Vec<ServiceTop>,
}

/// One service over the window: the sum of its instances.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceTop {
    pub service: Name,
    pub rps: f64,
    pub requests: u64,
    pub failures: u64,
    /// 0..1; 1 without requests.
    pub success_rate: f64,
    /// Milliseconds; 0 without requests.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Instances with an app: callers only are not endpoints.
    pub endpoints: u32,
    pub healthy_endpoints: u32,
    /// Inbound requests that came without mutual TLS.
    pub plaintext: u64,
    /// Sorted by id.
    pub instances: Vec<InstanceTop>,
}

/// One instance over the window.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceTop {
    pub instance_id: String,
    pub health: Health,
    /// A caller-only sidecar: its health says nothing about an endpoint.
    pub no_app: bool,
    pub rps: f64,
    pub requests: u64,
    pub failures: u64,
    pub success_rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// False when its sidecar has not reported traffic (yet).
    pub reporting: bool,
}

/// One service's instances, each with the samples of the stream that keeps
/// it (none while it is disconnected or its sidecar has not reported).
pub(super) type ServiceInstances<'a> = Vec<(&'a Instance, Option<&'a TrafficRing>)>;

/// Sums each service's instances over `window` ending at `now`. Services
/// come out sorted by name, instances by id.
pub(super) fn build(
    services: BTreeMap<Name, ServiceInstances<'_>>,
    window: Duration,
    now: Instant,
) -> TopReport {
    let services = services
        .into_iter()
        .map(|(name, mut instances)| {
            instances.sort_by(|a, b| a.0.record.instance_id.cmp(&b.0.record.instance_id));
            service_top(name, &instances, window, now)
        })
        .collect();
    TopReport { services, window }
}

pub(super) fn service_top(
    name: Name,
    instances: &[(&Instance, Option<&TrafficRing>)],
    window: Duration,
    now: Instant,
) -> ServiceTop {
    let mut sum = Traffic::default();
    let tops = instances
        .iter()
        .map(|(i, ring)| {
            let traffic = ring.and_then(|r| r.window(now, window));
            let reporting = traffic.is_some();
            let t = traffic.unwrap_or_default();
            sum.add(&t);
            InstanceTop {
                instance_id: i.record.instance_id.clone(),
                health: i.record.health,
                no_app: i.record.no_app,
                rps: t.rps,
                requests: t.requests,
                failures: t.failures,
                success_rate: t.success_rate(),
                p50_ms: t.percentile_ms(0.5),
                p99_ms: t.percentile_ms(0.99),
                reporting,
            }
        })
        .collect();
    let healthy = instances
        .iter()
        .filter(|(i, _)| i.record.health == Health::Healthy)
        .count();
    ServiceTop {
        service: name,
        rps: sum.rps,
        requests: sum.requests,
        failures: sum.failures,
        success_rate: sum.success_rate(),
        p50_ms: sum.percentile_ms(0.5),
        p99_ms: sum.percentile_ms(0.99),
        // Callers without an app are not endpoints.
        endpoints: u32::try_from(instances.iter().filter(|(i, _)| !i.record.no_app).count())
            .unwrap_or(u32::MAX),
        healthy_endpoints: u32::try_from(healthy).unwrap_or(u32::MAX),
        plaintext: sum.plaintext,
        instances: tops,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::Arc;

    use super::*;
    use crate::catalog::{
        Catalog, CatalogConfig, Counters, Registration, SidecarStream, TrafficReport,
    };
    use crate::resource::parse_documents;

    fn register(c: &Arc<Catalog>, service: &str, id: &str, health: Health) -> SidecarStream {
        register_as(c, service, id, health, false)
    }

    fn register_as(
        c: &Arc<Catalog>,
        service: &str,
        id: &str,
        health: Health,
        no_app: bool,
    ) -> SidecarStream {
        let reg = Registration {
            service: Name::parse(service).expect("name"),
            instance_id: id.into(),
            address: "127.0.0.1:1000".into(),
            protocol: None,
            labels: Default::default(),
            health,
            sidecar_version: String::new(),
            no_app,
        };
        c.connect(reg, BTreeSet::new(), 0)
    }

    /// Cumulative stats: `requests` of `ms` each, `failures` of them failed.
    fn stats(requests: u64, failures: u64, ms: f64) -> TrafficReport {
        TrafficReport {
            inbound: Counters::of(requests, failures, ms),
            upstreams: Vec::new(),
            routes: Default::default(),
        }
    }

    fn query(service: Option<&str>, secs: u64) -> TopQuery {
        TopQuery {
            service: service.map(|s| Name::parse(s).expect("name")),
            window: Duration::from_secs(secs),
        }
    }

    /// users: u-1 and u-2 report, u-3 does not; orders: o-1 does not.
    /// The streams by instance id.
    async fn mesh() -> (Arc<Catalog>, HashMap<&'static str, SidecarStream>) {
        let c = Catalog::in_memory(CatalogConfig::default());
        let mut streams = HashMap::new();
        streams.insert("u-2", register(&c, "users", "u-2", Health::Healthy));
        streams.insert("u-1", register(&c, "users", "u-1", Health::Healthy));
        streams.insert("u-3", register(&c, "users", "u-3", Health::Unhealthy));
        streams.insert("o-1", register(&c, "orders", "o-1", Health::Unknown));
        // A caller-only sidecar of orders: listed, not an endpoint.
        let gateway = register_as(&c, "orders", "o-gw", Health::Unhealthy, true);
        streams.insert("o-gw", gateway);
        streams["u-1"].record_stats(stats(0, 0, 0.8));
        streams["u-2"].record_stats(stats(0, 0, 40.0));
        tokio::time::advance(Duration::from_secs(10)).await;
        streams["u-1"].record_stats(stats(100, 1, 0.8));
        streams["u-2"].record_stats(stats(300, 0, 40.0));
        (c, streams)
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_is_the_sum_of_its_instances() {
        let (c, _streams) = mesh().await;
        let top = c.top(&query(None, 10)).expect("an answer");
        assert_eq!(top.window, Duration::from_secs(10));
        let names: Vec<_> = top.services.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(names, ["orders", "users"]);

        let users = &top.services[1];
        assert_eq!((users.requests, users.failures), (400, 1));
        assert_eq!(users.rps, 40.0);
        assert_eq!(users.success_rate, 1.0 - 1.0 / 400.0);
        assert_eq!((users.endpoints, users.healthy_endpoints), (3, 2));
        // 100 fast and 300 slow requests: the median is a slow one.
        assert!(
            users.p50_ms > 30.0 && users.p50_ms <= 50.0,
            "{}",
            users.p50_ms
        );
        let ids: Vec<_> = users
            .instances
            .iter()
            .map(|i| i.instance_id.as_str())
            .collect();
        assert_eq!(ids, ["u-1", "u-2", "u-3"]);
        let u1 = &users.instances[0];
        assert_eq!((u1.requests, u1.failures, u1.rps), (100, 1, 10.0));
        assert_eq!(u1.success_rate, 0.99);
        assert!(u1.p99_ms > 0.5 && u1.p99_ms <= 1.0, "{}", u1.p99_ms);
        assert!(u1.reporting && users.instances[1].reporting);
        let u3 = &users.instances[2];
        assert!(!u3.reporting);
        assert_eq!(u3.health, Health::Unhealthy);
        assert_eq!((u3.requests, u3.rps, u3.success_rate), (0, 0.0, 1.0));

        let orders = &top.services[0];
        assert_eq!((orders.endpoints, orders.healthy_endpoints), (1, 0));
        assert_eq!(orders.instances[0].health, Health::Unknown);
        assert_eq!(
            (
                orders.instances[1].instance_id.as_str(),
                orders.instances[1].no_app
            ),
            ("o-gw", true)
        );
        assert_eq!(
            (orders.rps, orders.success_rate, orders.p99_ms),
            (0.0, 1.0, 0.0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_service_or_not_found() {
        let (c, _streams) = mesh().await;
        let top = c.top(&query(Some("users"), 10)).expect("an answer");
        assert_eq!(top.services.len(), 1);
        assert_eq!(top.services[0].service.as_str(), "users");
        let e = c.top(&query(Some("nope"), 10)).expect_err("unknown");
        assert_eq!(e.to_string(), "service \"nope\" not found");
        // A service with a resource and no instance has no traffic, but exists.
        let rs =
            parse_documents("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: payments}\n")
                .expect("valid");
        c.apply(&rs);
        let top = c.top(&query(Some("payments"), 10)).expect("an answer");
        assert_eq!(top.services[0].endpoints, 0);
        assert!(top.services[0].instances.is_empty());
        assert!(
            c.top(&query(None, 10))
                .expect("an answer")
                .services
                .iter()
                .all(|s| s.service.as_str() != "payments"),
            "the full list holds services with instances"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn samples_go_with_their_stream() {
        let (c, mut streams) = mesh().await;
        streams.remove("u-1").expect("a stream").close(false);
        let top = c.top(&query(Some("users"), 10)).expect("an answer");
        let u1 = &top.services[0].instances[0];
        assert_eq!(u1.instance_id, "u-1", "kept for the grace period");
        assert!(!u1.reporting);
        assert_eq!(top.services[0].requests, 300);
        // Back on a new stream: no history until it reports again.
        let again = register(&c, "users", "u-1", Health::Healthy);
        let top = c.top(&query(Some("users"), 10)).expect("an answer");
        assert!(!top.services[0].instances[0].reporting);
        again.record_stats(stats(7, 0, 1.0));
        let top = c.top(&query(Some("users"), 10)).expect("an answer");
        assert!(top.services[0].instances[0].reporting);
        // Only a stream's own handle reports for it, and malformed stats
        // never get this far (`api::convert` refuses them).
        let top = c.top(&query(Some("users"), 10)).expect("an answer");
        assert!(!top.services[0].instances[2].reporting);
    }
}
