//! The traffic summary behind `weftctl top` and the dashboard: requests,
//! the server's failures and a latency histogram, counted with relaxed
//! atomics on the data path and sent, cumulative, to the control plane
//! every second by the discovery stream (which turns differences into
//! rates).
//!
//! Three views of the same requests: inbound (this instance's app, with
//! how many came without mTLS), outbound per service that served them (the
//! caller's side of each edge of the service graph), and inbound per route
//! (the service page's top methods). The last two are keyed maps, bounded
//! by [`MAX_UPSTREAMS`] and [`MAX_ROUTES`]: a request past the bound still
//! counts inbound, and in Prometheus, but adds no key.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use weft_proto::name::ServiceName;
use weft_proto::stats::{BUCKETS, MAX_ROUTES, MAX_UPSTREAMS, bucket_of};
use weft_proto::v1 as pb;

use super::Route;

/// Requests per latency bucket and failures.
#[derive(Debug)]
struct Histogram {
    /// Requests per latency bucket (not cumulative; the sum is all requests).
    per_bucket: [AtomicU64; BUCKETS],
    failures: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            per_bucket: std::array::from_fn(|_| AtomicU64::new(0)),
            failures: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn record(&self, elapsed: Duration, failed: bool) {
        self.per_bucket[bucket_of(elapsed.as_secs_f64() * 1e3)].fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests, failures and the cumulative buckets so far.
    fn snapshot(&self) -> (u64, u64, Vec<u64>) {
        let mut buckets = Vec::with_capacity(BUCKETS);
        let mut sum = 0u64;
        for b in &self.per_bucket {
            sum += b.load(Ordering::Relaxed);
            buckets.push(sum);
        }
        // Read after the buckets: never more failures than requests seen.
        let failures = self.failures.load(Ordering::Relaxed).min(sum);
        (sum, failures, buckets)
    }
}

#[derive(Debug, Default)]
struct RouteCounts {
    requests: AtomicU64,
    failures: AtomicU64,
}

/// A map whose entries are created on first use, up to `max` keys; read
/// under a shared lock on the data path (the write lock only for a new key).
#[derive(Debug)]
struct Bounded<K, V> {
    /// FNV, as for the maps by service name (`model::NameMap`): looked
    /// up on every request, and bounded by `max`.
    map: RwLock<HashMap<K, V, fnv::FnvBuildHasher>>,
    max: usize,
}

impl<K: std::hash::Hash + Eq + Clone, V: Default> Bounded<K, V> {
    fn new(max: usize) -> Self {
        Bounded {
            map: RwLock::default(),
            max,
        }
    }

    /// Runs `f` on the entry of `key`, made on first use; nothing past
    /// the bound. A known key costs a shared lock and a lookup, with no
    /// reference count touched: the common case on the data path.
    fn with(&self, key: &K, f: impl FnOnce(&V)) {
        if let Ok(map) = self.map.read()
            && let Some(v) = map.get(key)
        {
            f(v);
            return;
        }
        let Ok(mut map) = self.map.write() else {
            return;
        };
        if !map.contains_key(key) && map.len() >= self.max {
            return;
        }
        f(map.entry(key.clone()).or_default());
    }

    fn each(&self, mut f: impl FnMut(&K, &V)) {
        if let Ok(map) = self.map.read() {
            for (k, v) in map.iter() {
                f(k, v);
            }
        }
    }
}

#[derive(Debug)]
pub struct Traffic {
    inbound: Histogram,
    plaintext: AtomicU64,
    upstreams: Bounded<ServiceName, Histogram>,
    routes: Bounded<Route, RouteCounts>,
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic {
            inbound: Histogram::default(),
            plaintext: AtomicU64::new(0),
            upstreams: Bounded::new(MAX_UPSTREAMS),
            routes: Bounded::new(MAX_ROUTES),
        }
    }
}

/// How one inbound request arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Mtls,
    /// No mutual TLS: a PERMISSIVE service's plaintext caller.
    Plaintext,
}

impl Traffic {
    /// One inbound request on `route` that took `elapsed`; `failed` when it
    /// failed by the server's fault.
    pub fn record_inbound(
        &self,
        route: &Route,
        transport: Transport,
        elapsed: Duration,
        failed: bool,
    ) {
        self.inbound.record(elapsed, failed);
        if transport == Transport::Plaintext {
            self.plaintext.fetch_add(1, Ordering::Relaxed);
        }
        // Requests without a route (HTTP, until routes name them) are
        // counted above only.
        if route.as_str().is_empty() {
            return;
        }
        self.routes.with(route, |r| {
            r.requests.fetch_add(1, Ordering::Relaxed);
            if failed {
                r.failures.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// One request this sidecar sent that `service` served (or, for a
    /// mesh error, that named it).
    pub fn record_outbound(&self, service: &ServiceName, elapsed: Duration, failed: bool) {
        self.upstreams.with(service, |h| h.record(elapsed, failed));
    }

    /// The counts so far, as `TrafficStats` (cumulative buckets), upstreams
    /// and routes sorted by name so that an unchanged snapshot compares
    /// equal to the last one sent.
    pub fn snapshot(&self) -> pb::TrafficStats {
        let (requests, failures, latency_buckets) = self.inbound.snapshot();
        let mut upstreams = Vec::new();
        self.upstreams.each(|service, h| {
            let (requests, failures, latency_buckets) = h.snapshot();
            upstreams.push(pb::UpstreamTraffic {
                service: service.to_string(),
                requests,
                failures,
                latency_buckets,
            });
        });
        upstreams.sort_unstable_by(|a, b| a.service.cmp(&b.service));
        let mut routes = Vec::new();
        self.routes.each(|route, c| {
            let requests = c.requests.load(Ordering::Relaxed);
            routes.push(pb::RouteTraffic {
                route: route.as_str().to_string(),
                requests,
                failures: c.failures.load(Ordering::Relaxed).min(requests),
            });
        });
        routes.sort_unstable_by(|a, b| a.route.cmp(&b.route));
        pb::TrafficStats {
            requests,
            failures,
            latency_buckets,
            plaintext_requests: self.plaintext.load(Ordering::Relaxed).min(requests),
            upstreams,
            routes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::RouteNames;

    fn name(s: &str) -> ServiceName {
        ServiceName::parse(s).expect("a valid name")
    }

    #[test]
    fn counts_are_cumulative() {
        let t = Traffic::default();
        assert_eq!(t.snapshot().requests, 0);
        let none = Route::default();
        t.record_inbound(&none, Transport::Mtls, Duration::from_micros(300), false);
        t.record_inbound(&none, Transport::Plaintext, Duration::from_millis(4), true);
        t.record_inbound(&none, Transport::Mtls, Duration::from_secs(60), false);
        let s = t.snapshot();
        assert_eq!(s.requests, 3);
        assert_eq!(s.failures, 1);
        assert_eq!(s.plaintext_requests, 1);
        assert_eq!(s.latency_buckets.len(), BUCKETS);
        assert_eq!(s.latency_buckets[0], 1, "0.3 ms is under 0.5 ms");
        assert_eq!(s.latency_buckets[4], 2, "4 ms is under 5 ms");
        assert_eq!(
            s.latency_buckets[BUCKETS - 2],
            2,
            "60 s is beyond every bound"
        );
        assert_eq!(s.latency_buckets[BUCKETS - 1], 3);
        assert!(s.routes.is_empty(), "requests without a route add no key");
        assert!(s.upstreams.is_empty());
    }

    #[test]
    fn upstreams_and_routes_are_counted_apart_and_sorted() {
        let t = Traffic::default();
        let routes = RouteNames::new();
        let me = name("orders");
        let get = routes.grpc(true, &me, "/shop.Orders/Get");
        let put = routes.grpc(true, &me, "/shop.Orders/Put");
        for i in 0..5 {
            t.record_inbound(&get, Transport::Mtls, Duration::from_millis(1), i == 0);
        }
        t.record_inbound(&put, Transport::Mtls, Duration::from_millis(1), false);
        for _ in 0..3 {
            t.record_outbound(&name("users"), Duration::from_millis(2), false);
        }
        t.record_outbound(&name("email"), Duration::from_millis(200), true);
        let s = t.snapshot();
        let ups: Vec<_> = s
            .upstreams
            .iter()
            .map(|u| (u.service.as_str(), u.requests, u.failures))
            .collect();
        assert_eq!(ups, [("email", 1, 1), ("users", 3, 0)]);
        assert_eq!(s.upstreams[1].latency_buckets[BUCKETS - 1], 3);
        let rs: Vec<_> = s
            .routes
            .iter()
            .map(|r| (r.route.as_str(), r.requests, r.failures))
            .collect();
        assert_eq!(rs, [("/shop.Orders/Get", 5, 1), ("/shop.Orders/Put", 1, 0)]);
        assert_eq!(s.requests, 6, "routes count inbound too");
        // Nothing new: the same snapshot (the stream sends none).
        assert_eq!(t.snapshot(), s);
    }

    #[test]
    fn keys_stop_at_the_bound_but_requests_still_count() {
        let t = Traffic::default();
        for i in 0..MAX_UPSTREAMS + 10 {
            t.record_outbound(&name(&format!("s{i}")), Duration::from_millis(1), false);
        }
        assert_eq!(t.snapshot().upstreams.len(), MAX_UPSTREAMS);
        // A known key still counts past the bound.
        t.record_outbound(&name("s0"), Duration::from_millis(1), false);
        let s = t.snapshot();
        let s0 = s.upstreams.iter().find(|u| u.service == "s0");
        assert_eq!(s0.map(|u| u.requests), Some(2));
    }
}
