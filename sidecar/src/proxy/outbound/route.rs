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
use hyper::body::Incoming;
use weft_proto::name::ServiceName;

use crate::error::ProxyError;
use crate::proxy::headers::host_of;
pub use crate::resilience::RoutePolicy;
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
    /// As the request named it (a host, or the upstream port's service).
    pub name: String,
    /// For metrics: the service, or `(unresolved)` when the name is none.
    pub label: ServiceName,
    /// The authority the app sent, kept for the hop to the peer.
    pub authority: Option<String>,
}

impl Destination {
    /// `fixed` is the upstream port's service; otherwise the request's
    /// authority (HTTP/2, absolute form) or Host header (HTTP/1.1) names it.
    pub fn of(req: &Request<Incoming>, fixed: Option<&ServiceName>) -> Option<Self> {
        let authority = authority(req);
        let (name, label) = match (fixed, &authority) {
            (Some(s), _) => (s.as_str().to_string(), s.clone()),
            (None, Some(a)) => {
                let host = host_of(a);
                let label = ServiceName::parse(host).unwrap_or_else(|_| ServiceName::unresolved());
                (host.to_string(), label)
            }
            (None, None) => return None,
        };
        Some(Destination {
            name,
            label,
            authority,
        })
    }

    /// The route: the service learned from the control plane if need be
    /// (for at most `wait`), then its default route.
    pub async fn route(&self, routes: &Routes, wait: Duration) -> Result<Route, ProxyError> {
        let target = routes.resolve(&self.name, wait).await?;
        Ok(Route::default_of(&target))
    }
}

/// The authority a request was sent to: the URI's (HTTP/2, absolute form)
/// or the Host header's (HTTP/1.1).
fn authority(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}
