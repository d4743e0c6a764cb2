//! `Top`: live traffic per service and instance, from the samples each
//! sidecar's stream has sent (see [`super::stats`]), over a window.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use weft_proto::name::NameError;
use weft_proto::v1 as pb;

use super::Instance;
use super::stats::{MAX_WINDOW, Traffic, TrafficRing};
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

impl TryFrom<&pb::TopRequest> for TopQuery {
    type Error = TopError;

    fn try_from(r: &pb::TopRequest) -> Result<Self, TopError> {
        let window = match u64::from(r.window_seconds) {
            0 => DEFAULT_WINDOW,
            s if s > MAX_WINDOW.as_secs() => return Err(TopError::WindowTooLong),
            s => Duration::from_secs(s),
        };
        let service = match r.service.as_str() {
            "" => None,
            s => Some(Name::parse(s).map_err(TopError::BadName)?),
        };
        Ok(TopQuery { service, window })
    }
}

/// The strings `ListInstances` readers see (`weftctl get instances`).
pub fn health_str(h: pb::Health) -> &'static str {
    match h {
        pb::Health::Healthy => "healthy",
        pb::Health::Unhealthy => "unhealthy",
        pb::Health::Unknown => "unknown",
    }
}

/// What a sidecar with no app shows instead of its health: it is a caller,
/// not an endpoint that failed.
pub const NO_APP: &str = "no app";

/// One service's instances, each with the samples of the stream that keeps
/// it (none while it is disconnected or its sidecar has not reported).
pub type ServiceInstances<'a> = Vec<(&'a Instance, Option<&'a TrafficRing>)>;

/// Sums each service's instances over `window` ending at `now`. Services
/// come out sorted by name, instances by id.
pub fn build(
    services: BTreeMap<Name, ServiceInstances<'_>>,
    window: Duration,
    now: Instant,
) -> pb::TopResponse {
    let services = services
        .into_iter()
        .map(|(name, mut instances)| {
            instances.sort_by(|a, b| a.0.id.cmp(&b.0.id));
            service_top(&name, &instances, window, now)
        })
        .collect();
    pb::TopResponse {
        services,
        window_seconds: u32::try_from(window.as_secs()).unwrap_or(u32::MAX),
    }
}

fn service_top(
    name: &Name,
    instances: &[(&Instance, Option<&TrafficRing>)],
    window: Duration,
    now: Instant,
) -> pb::ServiceTop {
    let mut sum = Traffic::default();
    let tops = instances
        .iter()
        .map(|(i, ring)| {
            let traffic = ring.and_then(|r| r.window(now, window));
            let reporting = traffic.is_some();
            let t = traffic.unwrap_or_default();
            sum.add(&t);
            pb::InstanceTop {
                instance_id: i.id.clone(),
                health: if i.no_app {
                    NO_APP
                } else {
                    health_str(i.health)
                }
                .into(),
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
        .filter(|(i, _)| i.health == pb::Health::Healthy)
        .count();
    pb::ServiceTop {
        service: name.to_string(),
        rps: sum.rps,
        requests: sum.requests,
        failures: sum.failures,
        success_rate: sum.success_rate(),
        p50_ms: sum.percentile_ms(0.5),
        p99_ms: sum.percentile_ms(0.99),
        // Callers without an app are not endpoints.
        endpoints: u32::try_from(instances.iter().filter(|(i, _)| !i.no_app).count())
            .unwrap_or(u32::MAX),
        healthy_endpoints: u32::try_from(healthy).unwrap_or(u32::MAX),
        instances: tops,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::catalog::{Catalog, CatalogConfig, Registration};
    use crate::resource::parse_documents;
    use weft_proto::stats::{BUCKETS, bucket_of};

    fn register(c: &Catalog, stream: u64, service: &str, id: &str, health: pb::Health) {
        let h = pb::Hello {
            service: service.into(),
            instance_id: id.into(),
            address: format!("127.0.0.1:{}", 1000 + stream),
            health: health as i32,
            ..Default::default()
        };
        let reg = Registration::from_hello(&h).expect("valid hello").0;
        c.register(stream, reg, BTreeSet::new(), 0);
    }

    /// Cumulative stats: `requests` of `ms` each, `failures` of them failed.
    fn stats(requests: u64, failures: u64, ms: f64) -> pb::TrafficStats {
        let first = bucket_of(ms);
        pb::TrafficStats {
            requests,
            failures,
            latency_buckets: (0..BUCKETS)
                .map(|i| if i >= first { requests } else { 0 })
                .collect(),
        }
    }

    fn query(service: Option<&str>, secs: u64) -> TopQuery {
        TopQuery {
            service: service.map(|s| Name::parse(s).expect("name")),
            window: Duration::from_secs(secs),
        }
    }

    /// users: u-1 and u-2 report, u-3 does not; orders: o-1 does not.
    async fn mesh() -> std::sync::Arc<Catalog> {
        let c = Catalog::in_memory(CatalogConfig::default());
        register(&c, 1, "users", "u-2", pb::Health::Healthy);
        register(&c, 2, "users", "u-1", pb::Health::Healthy);
        register(&c, 3, "users", "u-3", pb::Health::Unhealthy);
        register(&c, 4, "orders", "o-1", pb::Health::Unknown);
        // A caller-only sidecar of orders: listed, not an endpoint.
        let gateway = pb::Hello {
            service: "orders".into(),
            instance_id: "o-gw".into(),
            address: "127.0.0.1:1100".into(),
            health: pb::Health::Unhealthy as i32,
            no_app: true,
            ..Default::default()
        };
        c.register(
            5,
            Registration::from_hello(&gateway).expect("valid hello").0,
            BTreeSet::new(),
            0,
        );
        c.record_stats(2, &stats(0, 0, 0.8));
        c.record_stats(1, &stats(0, 0, 40.0));
        tokio::time::advance(Duration::from_secs(10)).await;
        c.record_stats(2, &stats(100, 1, 0.8));
        c.record_stats(1, &stats(300, 0, 40.0));
        c
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_is_the_sum_of_its_instances() {
        let c = mesh().await;
        let top = c.top(&query(None, 10)).expect("an answer");
        assert_eq!(top.window_seconds, 10);
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
        assert_eq!(u3.health, "unhealthy");
        assert_eq!((u3.requests, u3.rps, u3.success_rate), (0, 0.0, 1.0));

        let orders = &top.services[0];
        assert_eq!((orders.endpoints, orders.healthy_endpoints), (1, 0));
        assert_eq!(orders.instances[0].health, "unknown");
        assert_eq!(
            (
                orders.instances[1].instance_id.as_str(),
                orders.instances[1].health.as_str()
            ),
            ("o-gw", NO_APP)
        );
        assert_eq!(
            (orders.rps, orders.success_rate, orders.p99_ms),
            (0.0, 1.0, 0.0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_service_or_not_found() {
        let c = mesh().await;
        let top = c.top(&query(Some("users"), 10)).expect("an answer");
        assert_eq!(top.services.len(), 1);
        assert_eq!(top.services[0].service, "users");
        let e = c.top(&query(Some("nope"), 10)).expect_err("unknown");
        assert_eq!(e.to_string(), "service \"nope\" not found");
        // A service with a resource and no instance has no traffic, but exists.
        let rs =
            parse_documents("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: payments}\n")
                .expect("valid");
        c.set_resources(&rs);
        let top = c.top(&query(Some("payments"), 10)).expect("an answer");
        assert_eq!(top.services[0].endpoints, 0);
        assert!(top.services[0].instances.is_empty());
        assert!(
            c.top(&query(None, 10))
                .expect("an answer")
                .services
                .iter()
                .all(|s| s.service != "payments"),
            "the full list holds services with instances"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn samples_go_with_their_stream() {
        let c = mesh().await;
        c.disconnect(2, false);
        let top = c.top(&query(Some("users"), 10)).expect("an answer");
        let u1 = &top.services[0].instances[0];
        assert_eq!(u1.instance_id, "u-1", "kept for the grace period");
        assert!(!u1.reporting);
        assert_eq!(top.services[0].requests, 300);
        // Back on a new stream: no history until it reports again.
        register(&c, 5, "users", "u-1", pb::Health::Healthy);
        let top = c.top(&query(Some("users"), 10)).expect("an answer");
        assert!(!top.services[0].instances[0].reporting);
        c.record_stats(5, &stats(7, 0, 1.0));
        let top = c.top(&query(Some("users"), 10)).expect("an answer");
        assert!(top.services[0].instances[0].reporting);
        // A stream the catalog does not know, and malformed stats, change nothing.
        c.record_stats(99, &stats(7, 0, 1.0));
        let mut bad = stats(1_000, 0, 1.0);
        bad.latency_buckets.truncate(3);
        c.record_stats(3, &bad);
        let top = c.top(&query(Some("users"), 10)).expect("an answer");
        assert!(!top.services[0].instances[2].reporting);
    }

    #[test]
    fn requests_become_queries() {
        let q = |service: &str, window_seconds| {
            TopQuery::try_from(&pb::TopRequest {
                service: service.into(),
                window_seconds,
            })
        };
        assert_eq!(
            q("", 0),
            Ok(TopQuery {
                service: None,
                window: DEFAULT_WINDOW
            })
        );
        let one = q("users", 300).expect("valid");
        assert_eq!(one.service.as_ref().map(Name::as_str), Some("users"));
        assert_eq!(one.window, Duration::from_secs(300));
        let e = q("", 301).expect_err("too long");
        assert_eq!(e, TopError::WindowTooLong);
        assert!(e.to_string().contains("at most 300 seconds"), "{e}");
        assert!(matches!(q("Bad_Name", 10), Err(TopError::BadName(_))));
    }
}
