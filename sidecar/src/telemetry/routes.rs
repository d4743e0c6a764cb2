//! The `route` label of request metrics: for gRPC the method
//! (`/pkg.Service/Method`), interned so that a request costs a lookup, not
//! an allocation. The label set is bounded: a service that is called with
//! more distinct methods than [`MAX_ROUTES_PER_SERVICE`] (a scanner, a
//! client gone wrong) has the rest counted as `(other)`, so that no peer can
//! grow the sidecar's memory through its metrics.
//!
//! An interned route belongs to one direction and service, so it also
//! holds that label set's instruments ([`RequestStats`]) once they are
//! first used: counting a request is then an atomic add rather than a hash
//! of its labels in each metric family.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use weft_proto::name::ServiceName;

use crate::model::NameMap;

/// Distinct routes kept per service and direction.
pub const MAX_ROUTES_PER_SERVICE: usize = 200;

/// A route label value; empty where no route is known (HTTP until routes
/// are configured, opaque TCP). Compared and hashed by its name.
#[derive(Clone, Debug, Default)]
pub struct Route(Option<Arc<Interned>>);

#[derive(Debug)]
struct Interned {
    name: Arc<str>,
    /// `None` for a name shared by every service (`(other)`), whose
    /// instruments differ by label set.
    stats: Option<RequestStats>,
}

/// The instruments of one (direction, service, route) label set, each
/// taken from its metric family the first time it is used (`Metrics` fills
/// them in), so that a series appears when it is first recorded, as it
/// would through the family. Valid for as long as the families keep the
/// series: the request families are never cleared.
#[derive(Debug, Default)]
pub struct RequestStats {
    pub requests: OnceLock<Counter>,
    pub latency: OnceLock<Histogram>,
    /// The responses counter of the usual ending: HTTP 200, gRPC status
    /// 0, no error.
    pub completed: OnceLock<Counter>,
}

impl Route {
    fn interned(name: Arc<str>, own_stats: bool) -> Self {
        Route(Some(Arc::new(Interned {
            name,
            stats: own_stats.then(RequestStats::default),
        })))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_deref().map_or("", |i| &i.name)
    }

    /// This route's instruments; `None` for a route that is not one label
    /// set's alone.
    pub fn stats(&self) -> Option<&RequestStats> {
        self.0.as_deref()?.stats.as_ref()
    }
}

impl PartialEq for Route {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_ref().map(|i| &i.name) == other.0.as_ref().map(|i| &i.name)
    }
}

impl Eq for Route {}

impl Hash for Route {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.as_ref().map(|i| &i.name).hash(state);
    }
}

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// The routes seen for one (inbound?, service). FNV, as for the
/// maps by service name (`model::NameMap`): a method's path is a few
/// dozen bytes, hashed on every request. A peer chooses the paths, but at
/// most [`MAX_ROUTES_PER_SERVICE`] of them are kept, so paths made to
/// collide cost a scan of that many at worst.
type RoutesByPath = HashMap<Arc<str>, Route, fnv::FnvBuildHasher>;

#[derive(Default)]
pub struct RouteNames {
    /// Per service, the outbound routes and the inbound ones.
    by_service: Mutex<NameMap<[RoutesByPath; 2]>>,
    other: Route,
}

impl RouteNames {
    pub fn new() -> Self {
        RouteNames {
            by_service: Mutex::default(),
            other: Route::interned(Arc::from("(other)"), false),
        }
    }

    /// The route of a gRPC call to `path` of `service` (`inbound` tells the
    /// two directions' budgets apart).
    pub fn grpc(&self, inbound: bool, service: &ServiceName, path: &str) -> Route {
        let Ok(mut map) = self.by_service.lock() else {
            return self.other.clone();
        };
        // A path is checked when it is first seen: one in the map is valid.
        if let Some(routes) = map.get(service.as_str())
            && let Some(r) = routes[usize::from(inbound)].get(path)
        {
            return r.clone();
        }
        if !is_grpc_method(path) {
            return self.other.clone();
        }
        // The key is cloned only once per new service.
        let routes = &mut map.entry(service.clone()).or_default()[usize::from(inbound)];
        if routes.len() >= MAX_ROUTES_PER_SERVICE {
            return self.other.clone();
        }
        let name: Arc<str> = Arc::from(path);
        let route = Route::interned(name.clone(), true);
        routes.insert(name, route.clone());
        route
    }
}

/// `/package.Service/Method`: printable, two segments, bounded length.
fn is_grpc_method(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let Some((svc, method)) = rest.split_once('/') else {
        return false;
    };
    path.len() <= 256
        && !svc.is_empty()
        && !method.is_empty()
        && !method.contains('/')
        && path.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_are_interned_and_bounded() {
        let names = RouteNames::new();
        let svc = ServiceName::parse("users").expect("name");
        let a = names.grpc(false, &svc, "/users.v1.Users/Get");
        assert_eq!(a.as_str(), "/users.v1.Users/Get");
        let b = names.grpc(false, &svc, "/users.v1.Users/Get");
        assert!(matches!((&a.0, &b.0), (Some(x), Some(y)) if Arc::ptr_eq(x, y)));
        assert!(a.stats().is_some(), "one label set's own");
        assert!(names.grpc(false, &svc, "/x").stats().is_none(), "shared");
        for bad in ["", "/", "/x", "/x/", "//m", "/a/b/c", "/a/b c"] {
            assert_eq!(names.grpc(false, &svc, bad).as_str(), "(other)", "{bad:?}");
        }
        for i in 0..MAX_ROUTES_PER_SERVICE + 10 {
            names.grpc(true, &svc, &format!("/s.S/M{i}"));
        }
        assert_eq!(names.grpc(true, &svc, "/s.S/Extra").as_str(), "(other)");
        assert_eq!(names.grpc(true, &svc, "/s.S/M1").as_str(), "/s.S/M1");
        // The other direction has its own budget.
        assert_eq!(names.grpc(false, &svc, "/s.S/Extra").as_str(), "/s.S/Extra");
    }
}
