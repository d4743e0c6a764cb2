//! The catalog and its wire form: a sidecar's `Hello` and reports in,
//! the discovery updates out, the admin listings and `Top`, and the
//! instance records the store keeps.

use std::collections::BTreeSet;
use std::time::Duration;

use weft_proto::labels::{LabelError, Labels, validate_labels};
use weft_proto::name::{
    AddressError, InstanceIdError, NameError, validate_address, validate_instance_id,
};
use weft_proto::protocol::{ChoiceError, Protocol};
use weft_proto::routing::rate_limit_to_wire;
use weft_proto::stats::{BUCKETS, MAX_ROUTES, MAX_UPSTREAMS, MAX_WINDOW};
use weft_proto::time::unix_ms;
use weft_proto::v1 as pb;

use super::resources::{labels_from_proto, labels_to_proto, protocol_to_proto};
use crate::catalog::{
    Counters, DEFAULT_WINDOW, EjectedBy, Endpoint, Health, InboundPolicy, InstanceRecord,
    InstanceTop, InstanceView, MAX_VERSION_TEXT, MAX_WANTED, Registration, RouteCounts,
    ServiceSummary, ServiceTop, ServiceUpdate, SidecarStatus, TopError, TopQuery, TopReport,
    TrafficReport, clip,
};
use crate::resource::Name;

/// Why a `Hello` (or a stored instance record) is refused; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    #[error("hello.service: {0}")]
    Service(NameError),
    #[error("hello.instance_id: {0}")]
    InstanceId(#[from] InstanceIdError),
    #[error("hello.address: {0}")]
    Address(#[from] AddressError),
    #[error("hello.protocol: {0}")]
    Protocol(#[from] ChoiceError),
    #[error("hello.labels: {0}")]
    Labels(#[from] LabelError),
    #[error("hello.upstreams: {0} services, at most {MAX_WANTED}")]
    TooManyUpstreams(usize),
    #[error("hello.upstreams: {0}")]
    Upstream(NameError),
}

/// A `TrafficStats` message that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    #[error("latency_buckets has {got} entries, expected {expected}")]
    BucketCount { got: usize, expected: usize },
    #[error("upstreams: {0} entries, at most {MAX_UPSTREAMS}")]
    TooManyUpstreams(usize),
    #[error("upstreams[{index}].service: {error}")]
    Upstream { index: usize, error: NameError },
    #[error("upstreams[{index}].{error}")]
    UpstreamCounts {
        index: usize,
        error: Box<StatsError>,
    },
    #[error("routes: {0} entries, at most {MAX_ROUTES}")]
    TooManyRoutes(usize),
    #[error("routes[{0}].route: empty, or longer than {MAX_ROUTE_TEXT} bytes")]
    Route(usize),
}

/// The longest route name kept (a gRPC method path; the sidecar's own
/// names are far shorter).
pub const MAX_ROUTE_TEXT: usize = 512;

fn counters(requests: u64, failures: u64, buckets: &[u64]) -> Result<Counters, StatsError> {
    let array: [u64; BUCKETS] = buckets.try_into().map_err(|_| StatsError::BucketCount {
        got: buckets.len(),
        expected: BUCKETS,
    })?;
    Ok(Counters {
        requests,
        failures,
        buckets: array,
        plaintext: 0,
    })
}

/// Validates a hello; returns the registration and the services it wants.
pub fn registration_from_hello(
    h: &pb::Hello,
) -> Result<(Registration, BTreeSet<Name>), HelloError> {
    let service = Name::parse(&h.service).map_err(HelloError::Service)?;
    validate_instance_id(&h.instance_id)?;
    validate_address(&h.address)?;
    let protocol = Protocol::from_proto(h.protocol)?;
    let labels: Labels = labels_from_proto(&h.labels);
    validate_labels(&labels)?;
    if h.upstreams.len() > MAX_WANTED {
        return Err(HelloError::TooManyUpstreams(h.upstreams.len()));
    }
    let wanted = h
        .upstreams
        .iter()
        .map(|u| Name::parse(u).map_err(HelloError::Upstream))
        .collect::<Result<_, _>>()?;
    let registration = Registration {
        service,
        instance_id: h.instance_id.clone(),
        address: h.address.clone(),
        protocol,
        labels,
        health: health_from_proto(h.health),
        sidecar_version: clip(h.sidecar_version.clone(), MAX_VERSION_TEXT),
        no_app: h.no_app,
    };
    Ok((registration, wanted))
}

/// A health number this build does not know counts as unknown.
pub fn health_from_proto(v: i32) -> Health {
    match pb::Health::try_from(v) {
        Ok(pb::Health::Healthy) => Health::Healthy,
        Ok(pb::Health::Unhealthy) => Health::Unhealthy,
        Ok(pb::Health::Unknown) | Err(_) => Health::Unknown,
    }
}

impl From<Health> for pb::Health {
    fn from(h: Health) -> Self {
        match h {
            Health::Unknown => pb::Health::Unknown,
            Health::Healthy => pb::Health::Healthy,
            Health::Unhealthy => pb::Health::Unhealthy,
        }
    }
}

impl TryFrom<&pb::TrafficStats> for TrafficReport {
    type Error = StatsError;

    fn try_from(s: &pb::TrafficStats) -> Result<Self, StatsError> {
        let mut inbound = counters(s.requests, s.failures, &s.latency_buckets)?;
        inbound.plaintext = s.plaintext_requests;
        if s.upstreams.len() > MAX_UPSTREAMS {
            return Err(StatsError::TooManyUpstreams(s.upstreams.len()));
        }
        let upstreams = s
            .upstreams
            .iter()
            .enumerate()
            .map(|(index, u)| {
                let name = Name::parse(&u.service)
                    .map_err(|error| StatsError::Upstream { index, error })?;
                let c = counters(u.requests, u.failures, &u.latency_buckets).map_err(|e| {
                    StatsError::UpstreamCounts {
                        index,
                        error: Box::new(e),
                    }
                })?;
                Ok((name, c))
            })
            .collect::<Result<_, StatsError>>()?;
        if s.routes.len() > MAX_ROUTES {
            return Err(StatsError::TooManyRoutes(s.routes.len()));
        }
        let mut routes = RouteCounts::new();
        for (i, r) in s.routes.iter().enumerate() {
            if r.route.is_empty() || r.route.len() > MAX_ROUTE_TEXT {
                return Err(StatsError::Route(i));
            }
            routes.insert(r.route.clone(), (r.requests, r.failures.min(r.requests)));
        }
        Ok(TrafficReport {
            inbound,
            upstreams,
            routes,
        })
    }
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

impl From<&Endpoint> for pb::Endpoint {
    fn from(e: &Endpoint) -> Self {
        pb::Endpoint {
            instance_id: e.instance_id.clone(),
            address: e.address.clone(),
            labels: labels_to_proto(&e.labels),
            health: pb::Health::from(e.health) as i32,
            weight: e.weight,
        }
    }
}

impl From<&InboundPolicy> for pb::InboundPolicy {
    fn from(p: &InboundPolicy) -> Self {
        pb::InboundPolicy {
            mode: p.mode.to_proto() as i32,
            authorization: p.authorization,
            rules: p.rules.iter().map(pb::AuthorizationRule::from).collect(),
            rate_limit: p.rate_limit.as_ref().map(rate_limit_to_wire),
        }
    }
}

impl From<&ServiceUpdate> for pb::ServiceUpdate {
    fn from(u: &ServiceUpdate) -> Self {
        pb::ServiceUpdate {
            name: u.name.to_string(),
            known: u.known,
            policy: u.policy.as_ref().map(pb::ServiceSpec::from),
            reset_endpoints: u.reset_endpoints,
            endpoints: u.endpoints.iter().map(pb::Endpoint::from).collect(),
            removed: u.removed.clone(),
            inbound: u.inbound.as_ref().map(pb::InboundPolicy::from),
            routing: u.routing.as_ref().map(|routes| pb::Routing {
                routes: routes.iter().map(pb::Route::from).collect(),
            }),
        }
    }
}

/// The store's record of an instance (the same message `ListInstances`
/// answers with, without the live fields).
impl From<&InstanceRecord> for pb::InstanceInfo {
    fn from(r: &InstanceRecord) -> Self {
        pb::InstanceInfo {
            service: r.service.to_string(),
            instance_id: r.instance_id.clone(),
            address: r.address.clone(),
            protocol: protocol_to_proto(r.protocol),
            labels: labels_to_proto(&r.labels),
            health: pb::Health::from(r.health) as i32,
            health_detail: r.health_detail.clone(),
            connected: false,
            expires_at_unix_ms: 0,
            ejected_by: Vec::new(),
            no_app: r.no_app,
        }
    }
}

/// A record read back from the store, checked like the hello it came from.
pub fn record_from_proto(info: &pb::InstanceInfo) -> Result<InstanceRecord, HelloError> {
    let hello = pb::Hello {
        service: info.service.clone(),
        instance_id: info.instance_id.clone(),
        address: info.address.clone(),
        protocol: info.protocol,
        labels: info.labels.clone(),
        health: info.health,
        no_app: info.no_app,
        ..Default::default()
    };
    let (registration, _) = registration_from_hello(&hello)?;
    Ok(InstanceRecord {
        health_detail: info.health_detail.clone(),
        ..InstanceRecord::from(&registration)
    })
}

impl From<&EjectedBy> for pb::EjectedBy {
    fn from(e: &EjectedBy) -> Self {
        pb::EjectedBy {
            instance_id: e.instance_id.clone(),
            until_unix_ms: e.until_unix_ms,
        }
    }
}

impl From<&InstanceView> for pb::InstanceInfo {
    fn from(v: &InstanceView) -> Self {
        pb::InstanceInfo {
            connected: v.connected,
            expires_at_unix_ms: v.expires_at.map_or(0, unix_ms),
            ejected_by: v.ejected_by.iter().map(pb::EjectedBy::from).collect(),
            ..pb::InstanceInfo::from(&v.record)
        }
    }
}

impl From<&ServiceSummary> for pb::ServiceInfo {
    fn from(s: &ServiceSummary) -> Self {
        pb::ServiceInfo {
            name: s.name.to_string(),
            spec: s.policy.as_ref().map(pb::ServiceSpec::from),
            has_resource: s.has_resource,
            instances: u32::try_from(s.instances).unwrap_or(u32::MAX),
            healthy_instances: u32::try_from(s.healthy_instances).unwrap_or(u32::MAX),
        }
    }
}

impl From<SidecarStatus> for pb::SidecarInfo {
    fn from(s: SidecarStatus) -> Self {
        pb::SidecarInfo {
            service: s.service.to_string(),
            instance_id: s.instance_id,
            address: s.address,
            connected_since_unix_ms: unix_ms(s.connected_since),
            sent_version: s.sent_version,
            applied_version: s.applied_version,
            nack_version: s.nack.as_ref().map_or(0, |n| n.version),
            nack_reason: s.nack.map(|n| n.reason).unwrap_or_default(),
            subscriptions: s.subscriptions.iter().map(Name::to_string).collect(),
            sidecar_version: s.sidecar_version,
            certificate_expires_unix_ms: s.certificate_expires_unix_ms,
            // The admin service names its replica.
            replica: String::new(),
        }
    }
}

impl From<&InstanceTop> for pb::InstanceTop {
    fn from(i: &InstanceTop) -> Self {
        pb::InstanceTop {
            instance_id: i.instance_id.clone(),
            health: crate::api::contract::instance_word(i.health.into(), i.no_app).into(),
            rps: i.rps,
            requests: i.requests,
            failures: i.failures,
            success_rate: i.success_rate,
            p50_ms: i.p50_ms,
            p99_ms: i.p99_ms,
            reporting: i.reporting,
        }
    }
}

impl From<&ServiceTop> for pb::ServiceTop {
    fn from(s: &ServiceTop) -> Self {
        pb::ServiceTop {
            service: s.service.to_string(),
            rps: s.rps,
            requests: s.requests,
            failures: s.failures,
            success_rate: s.success_rate,
            p50_ms: s.p50_ms,
            p99_ms: s.p99_ms,
            endpoints: s.endpoints,
            healthy_endpoints: s.healthy_endpoints,
            instances: s.instances.iter().map(pb::InstanceTop::from).collect(),
        }
    }
}

impl From<&TopReport> for pb::TopResponse {
    fn from(r: &TopReport) -> Self {
        pb::TopResponse {
            services: r.services.iter().map(pb::ServiceTop::from).collect(),
            window_seconds: u32::try_from(r.window.as_secs()).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::contract::NO_APP;

    #[test]
    fn hello_validation_names_the_field() {
        let mut h = pb::Hello {
            service: "user-service".into(),
            instance_id: "u-1".into(),
            address: "127.0.0.1:1".into(),
            upstreams: vec!["a".into()],
            ..Default::default()
        };
        let (r, wanted) = registration_from_hello(&h).expect("valid");
        assert_eq!(r.service.as_str(), "user-service");
        assert!(wanted.iter().any(|n| n.as_str() == "a"));
        let err = |h: &pb::Hello| registration_from_hello(h).expect_err("bad").to_string();
        h.address = "nope".into();
        assert!(err(&h).starts_with("hello.address"));
        h.address = "127.0.0.1:1".into();
        h.instance_id = "has space".into();
        assert!(err(&h).starts_with("hello.instance_id"));
        h.instance_id = "u-1".into();
        h.upstreams = vec!["a".into(), "Not A Name".into()];
        let e = err(&h);
        assert!(
            e.starts_with("hello.upstreams") && e.contains("Not A Name"),
            "{e}"
        );
        h.upstreams = vec!["a".into(); MAX_WANTED + 1];
        let e = err(&h);
        assert!(e.starts_with("hello.upstreams"), "{e}");
        h.upstreams = vec![];
        h.protocol = 42;
        assert_eq!(err(&h), "hello.protocol: unknown protocol number 42");
        h.protocol = 0;
        h.sidecar_version = "v".repeat(1000);
        let (r, _) = registration_from_hello(&h).expect("valid");
        assert!(r.sidecar_version.len() <= 64 + '…'.len_utf8());
        h.health = 99;
        let (r, _) = registration_from_hello(&h).expect("valid");
        assert_eq!(r.health, Health::Unknown, "an unknown number is unknown");
    }

    #[test]
    fn an_instance_record_survives_the_store_and_bad_ones_are_refused() {
        let h = pb::Hello {
            service: "users".into(),
            instance_id: "u-1".into(),
            address: "127.0.0.1:1".into(),
            protocol: pb::Protocol::Http as i32,
            labels: [("version".to_string(), "v2".to_string())].into(),
            health: pb::Health::Unhealthy as i32,
            no_app: true,
            ..Default::default()
        };
        let (r, _) = registration_from_hello(&h).expect("valid");
        let record = InstanceRecord {
            health_detail: "503 from /health".into(),
            ..InstanceRecord::from(&r)
        };
        let stored = pb::InstanceInfo::from(&record);
        assert_eq!(record_from_proto(&stored), Ok(record));
        let bad = pb::InstanceInfo {
            address: String::new(),
            ..stored
        };
        assert!(matches!(
            record_from_proto(&bad),
            Err(HelloError::Address(_))
        ));
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

    #[test]
    fn a_malformed_bucket_count_is_refused() {
        let mut bad = pb::TrafficStats {
            requests: 10_000,
            latency_buckets: vec![10_000; BUCKETS - 1],
            ..Default::default()
        };
        assert_eq!(
            TrafficReport::try_from(&bad),
            Err(StatsError::BucketCount {
                got: BUCKETS - 1,
                expected: BUCKETS
            })
        );
        bad.latency_buckets = vec![10_000; BUCKETS + 1];
        assert!(TrafficReport::try_from(&bad).is_err());
        bad.latency_buckets = vec![10_000; BUCKETS];
        assert_eq!(
            TrafficReport::try_from(&bad).map(|c| c.inbound.buckets[0]),
            Ok(10_000)
        );
    }

    #[test]
    fn upstreams_and_routes_are_validated_and_bounded() {
        let good = pb::TrafficStats {
            requests: 3,
            failures: 1,
            latency_buckets: vec![3; BUCKETS],
            plaintext_requests: 2,
            upstreams: vec![pb::UpstreamTraffic {
                service: "users".into(),
                requests: 5,
                failures: 0,
                latency_buckets: vec![5; BUCKETS],
            }],
            routes: vec![pb::RouteTraffic {
                route: "/shop.Orders/Get".into(),
                requests: 3,
                // More failures than requests is clipped, not trusted.
                failures: 9,
            }],
        };
        let r = TrafficReport::try_from(&good).expect("valid");
        assert_eq!(r.inbound.plaintext, 2);
        assert_eq!(r.upstreams.len(), 1);
        assert_eq!(r.upstreams[0].0.as_str(), "users");
        assert_eq!(r.routes.get("/shop.Orders/Get"), Some(&(3, 3)));

        let mut bad = good.clone();
        bad.upstreams[0].service = "Not A Name".into();
        let e = TrafficReport::try_from(&bad).expect_err("bad name");
        assert!(e.to_string().starts_with("upstreams[0].service:"), "{e}");
        let mut bad = good.clone();
        bad.upstreams[0].latency_buckets.pop();
        let e = TrafficReport::try_from(&bad).expect_err("bad buckets");
        assert!(
            e.to_string().starts_with("upstreams[0].latency_buckets"),
            "{e}"
        );
        let mut bad = good.clone();
        bad.upstreams = vec![good.upstreams[0].clone(); MAX_UPSTREAMS + 1];
        assert_eq!(
            TrafficReport::try_from(&bad),
            Err(StatsError::TooManyUpstreams(MAX_UPSTREAMS + 1))
        );
        let mut bad = good.clone();
        bad.routes = vec![good.routes[0].clone(); MAX_ROUTES + 1];
        assert_eq!(
            TrafficReport::try_from(&bad),
            Err(StatsError::TooManyRoutes(MAX_ROUTES + 1))
        );
        let mut bad = good.clone();
        bad.routes[0].route = "x".repeat(MAX_ROUTE_TEXT + 1);
        assert_eq!(TrafficReport::try_from(&bad), Err(StatsError::Route(0)));
    }

    #[test]
    fn top_answers_use_the_health_words() {
        let instance = |id: &str, health, no_app| InstanceTop {
            instance_id: id.into(),
            health,
            no_app,
            rps: 0.0,
            requests: 0,
            failures: 0,
            success_rate: 1.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            reporting: false,
        };
        let report = TopReport {
            window: Duration::from_secs(10),
            services: vec![ServiceTop {
                service: Name::parse("orders").expect("name"),
                rps: 0.0,
                requests: 0,
                failures: 0,
                success_rate: 1.0,
                p50_ms: 0.0,
                p99_ms: 0.0,
                endpoints: 2,
                healthy_endpoints: 0,
                plaintext: 0,
                instances: vec![
                    instance("o-1", Health::Unknown, false),
                    instance("o-2", Health::Unhealthy, false),
                    instance("o-gw", Health::Unhealthy, true),
                ],
            }],
        };
        let wire = pb::TopResponse::from(&report);
        assert_eq!(wire.window_seconds, 10);
        let words: Vec<_> = wire.services[0]
            .instances
            .iter()
            .map(|i| i.health.as_str())
            .collect();
        assert_eq!(words, ["unknown", "unhealthy", NO_APP]);
    }
}
