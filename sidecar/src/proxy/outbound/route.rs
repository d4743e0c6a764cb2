//! Step 1: where a request goes and under which rules.
//!
//! A request names its service by the listener (an upstream port) or by
//! its authority; the routing table turns that into a [`Route`]: the
//! backends attempts go to, and the [`RoutePolicy`] they go under. Today
//! a service has one route, its default: one backend (the service's
//! endpoints) and the service's policy. Routes pushed by the control plane
//! slot in here — match → rule → weighted backends → the rule's policy
//! overriding the service's — and nothing after this step changes: the
//! rest of the path reads only a `Route`.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http::uri::Authority;
use hyper::body::Incoming;
use weft_proto::name::ServiceName;

use crate::error::ProxyError;
pub use crate::model::policy::RoutePolicy;
use crate::proxy::headers::host_of;
use crate::table::{Pick, Routes, Target};

/// One backend of a route and its share of the requests.
#[derive(Clone)]
pub struct Backend {
    pub target: Arc<Target>,
    pub weight: u32,
}

/// Where a route's attempts go: one backend, or several sharing the
/// requests by weight (a canary, a blue/green switch).
#[derive(Clone)]
pub enum Backends {
    One(Arc<Target>),
    Weighted(Arc<[Backend]>),
}

impl Backends {
    /// The backend that holds the route's request limits and retry budget:
    /// the service the request named.
    pub fn primary(&self) -> Option<&Arc<Target>> {
        match self {
            Backends::One(t) => Some(t),
            Backends::Weighted(all) => all.first().map(|b| &b.target),
        }
    }

    /// The backend for one attempt: by weight, skipping backends with no
    /// endpoint ready (the others take their share).
    pub fn choose(&self) -> Option<&Arc<Target>> {
        match self {
            Backends::One(t) => Some(t),
            Backends::Weighted(all) => {
                let live = || {
                    all.iter()
                        .filter(|b| b.weight > 0 && b.target.ready_count() > 0)
                };
                let total: u64 = live().map(|b| u64::from(b.weight)).sum();
                if total == 0 {
                    return all.first().map(|b| &b.target);
                }
                let mut point = crate::rand::next_u64() % total;
                live()
                    .find(|b| {
                        let w = u64::from(b.weight);
                        if point < w {
                            return true;
                        }
                        point -= w;
                        false
                    })
                    .map(|b| &b.target)
            }
        }
    }
}

/// Where one request goes and the rules it goes under.
#[derive(Clone)]
pub struct Route {
    /// The service the request named (metrics and errors name it).
    pub service: ServiceName,
    pub backends: Backends,
    pub policy: Arc<RoutePolicy>,
}

impl Route {
    /// The route every request to `target` takes when no rule says more.
    pub fn default_of(target: &Arc<Target>) -> Self {
        Route {
            service: target.name.clone(),
            policy: target.route_policy.clone(),
            backends: Backends::One(target.clone()),
        }
    }

    /// The endpoint for one attempt, avoiding those already `tried`.
    pub fn pick(&self, tried: &[Arc<str>]) -> Option<(Arc<Target>, Pick)> {
        let target = self.backends.choose()?;
        let pick = target.pick_excluding(tried)?;
        Some((target.clone(), pick))
    }
}

/// The service a request names, before it is looked up.
pub struct Destination {
    /// The service; `(unresolved)` when the request named none we could
    /// read as one (then `host` holds what it named).
    pub service: ServiceName,
    host: Option<String>,
    /// The authority the app sent, kept for the hop to the peer.
    pub authority: Option<Authority>,
}

impl Destination {
    /// A service named by configuration (an upstream port).
    pub fn service(service: ServiceName) -> Self {
        Destination {
            service,
            host: None,
            authority: None,
        }
    }

    /// `fixed` is the upstream port's service; otherwise the request's
    /// authority (HTTP/2, absolute form) or Host header (HTTP/1.1) names it.
    pub fn of(req: &Request<Incoming>, fixed: Option<&ServiceName>) -> Option<Self> {
        let authority = req.uri().authority().cloned().or_else(|| {
            let host = req.headers().get(http::header::HOST)?;
            Authority::try_from(host.as_bytes()).ok()
        });
        if let Some(s) = fixed {
            return Some(Destination {
                authority,
                ..Destination::service(s.clone())
            });
        }
        let named = match &authority {
            Some(a) => host_of(a.as_str()),
            // A Host header that is no authority still names something.
            None => req.headers().get(http::header::HOST)?.to_str().ok()?,
        };
        let (service, host) = match ServiceName::parse(named) {
            Ok(s) => (s, None),
            Err(_) => (ServiceName::unresolved(), Some(named.to_string())),
        };
        Some(Destination {
            service,
            host,
            authority,
        })
    }

    /// The name as the request gave it.
    pub fn name(&self) -> &str {
        self.host.as_deref().unwrap_or(self.service.as_str())
    }

    /// The route: the service learned from the control plane if need be
    /// (for at most `wait`), then its default route.
    pub async fn route(&self, routes: &Routes, wait: Duration) -> Result<Route, ProxyError> {
        let target = routes.resolve(self.name(), wait).await?;
        Ok(Route::default_of(&target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Health;
    use crate::table::fixtures::{builder, state, target};
    use weft_proto::protocol::LoadBalancer;

    fn service(name: &str, health: Health) -> (ServiceName, crate::model::ServiceState) {
        let name = ServiceName::parse(name).expect("name");
        (
            name,
            state(LoadBalancer::P2cEwma, &[("127.0.0.1:1", health)]),
        )
    }

    #[tokio::test]
    async fn weights_share_the_requests_and_a_backend_without_endpoints_gives_its_share_away() {
        let (stable, s1) = service("stable", Health::Healthy);
        let (canary, s2) = service("canary", Health::Healthy);
        let (down, s3) = service("down", Health::Unhealthy);
        let table = builder().build(
            [(&stable, &s1), (&canary, &s2), (&down, &s3)].into_iter(),
            std::iter::empty(),
        );
        let backend = |n: &str, weight| Backend {
            target: target(&table, n),
            weight,
        };
        let split = Backends::Weighted(Arc::from(vec![
            backend("stable", 90),
            backend("canary", 10),
            backend("down", 100),
        ]));
        let mut canaries = 0;
        for _ in 0..10_000 {
            let t = split.choose().expect("a backend");
            assert_ne!(t.name.as_str(), "down", "no endpoint ready there");
            canaries += usize::from(t.name.as_str() == "canary");
        }
        // 10% of 10 000, within a generous margin for the dice.
        assert!((800..1200).contains(&canaries), "{canaries}");
        assert_eq!(split.primary().map(|t| t.name.as_str()), Some("stable"));
        let one = Backends::One(target(&table, "canary"));
        assert_eq!(one.choose().map(|t| t.name.as_str()), Some("canary"));
    }
}
