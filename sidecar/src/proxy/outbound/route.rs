//! Step 1: where a request goes and under which rules.
//!
//! A request names its service by the listener (an upstream port) or by
//! its authority; the routing table turns that into a [`Route`]: the
//! backends attempts go to and the [`RoutePolicy`] they go under. A
//! service without routes has one, its default: its endpoints and its
//! policy. A service with routes (HTTPRoute, GRPCRoute) takes the rule the
//! shared matcher picks (`weft_proto::routing`, the precedence of the
//! Gateway API): its weighted backends, its policy (the service's with the
//! rule's overrides), its filters; a request no rule matches takes the
//! default. Nothing after this step reads anything but the `Route`.

use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http::uri::Authority;
use weft_proto::name::ServiceName;
use weft_proto::routing;

use crate::error::ProxyError;
pub use crate::model::policy::RoutePolicy;
use crate::proxy::CallerBody;
use crate::proxy::headers::{authority_of, host_of};
use crate::table::{Backends, Pick, Routes, RuleRuntime, Target};
use crate::telemetry::metrics::Metrics;

/// Where one request goes and the rules it goes under.
#[derive(Clone)]
pub struct Route {
    /// The service the request named (metrics and errors name it).
    pub service: ServiceName,
    pub backends: Backends,
    pub policy: Arc<RoutePolicy>,
    /// The rule the request took; `None`: the service's default route.
    pub rule: Option<Arc<RuleRuntime>>,
    /// The service has routes (so taking none of them is worth counting).
    pub routed: bool,
    /// The rule's URL rewrite, worked out for this request's path.
    pub rewrite: Option<Rewritten>,
}

/// The URL a rewrite gives a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewritten {
    pub authority: Option<Authority>,
    /// The new path (a query, if any, is kept from the request).
    pub path: Option<String>,
}

impl Route {
    /// The route every request to `target` takes when no rule says more.
    pub fn default_of(target: &Arc<Target>) -> Self {
        Route {
            service: target.name.clone(),
            policy: target.route_policy.clone(),
            backends: Backends::One(target.clone()),
            rule: None,
            routed: false,
            rewrite: None,
        }
    }

    /// The endpoint for one attempt, avoiding those already `tried`; a
    /// backend without endpoints ready gives its share to the others
    /// (counted per rule).
    pub fn pick(&self, tried: &[Arc<str>], metrics: &Metrics) -> Option<(Arc<Target>, Pick)> {
        let choice = self.backends.choose()?;
        if let (Some(from), Some(rule)) = (choice.fell_back_from, &self.rule) {
            metrics.count_route_fallback(&self.service, (&rule.route, rule.rule), &from.name);
        }
        let pick = choice.target.pick_excluding(tried)?;
        Some((choice.target.clone(), pick))
    }
}

/// The rule `req` takes among `routes`, as a route; `None`: no rule.
fn take(
    target: &Arc<Target>,
    routes: &crate::table::ServiceRoutes,
    req: &routing::Request<'_>,
) -> Option<Route> {
    let found = routes.find(req)?;
    let rule = found.action.clone();
    // A rule without matches matched by the prefix `/`.
    let root = routing::PathMatch::default();
    let matched = found.matched.map_or(&root, |m| &m.path);
    let rewrite = rule.filters.rewrite.as_ref().map(|r| Rewritten {
        authority: r.hostname.clone(),
        path: r
            .path
            .as_ref()
            .map(|_| r.path(req.path, Some(matched)).into_owned()),
    });
    Some(Route {
        service: target.name.clone(),
        backends: rule.backends.clone(),
        policy: rule.policy.clone(),
        rule: Some(rule),
        routed: true,
        rewrite,
    })
}

/// The service a request names, before it is looked up.
pub struct Destination {
    /// The service; `(unresolved)` when the request named none we could
    /// read as one (then `host` holds what it named).
    pub service: ServiceName,
    host: Option<String>,
    /// The authority the app sent, kept for the hop to the peer.
    pub authority: Option<Authority>,
    /// The app port the app dialled (an intercepted connection), which the
    /// peer's app gets the request on; `None`: the peer's `--app`.
    pub port: Option<u16>,
}

impl Destination {
    /// A service named by configuration (an upstream port).
    pub fn service(service: ServiceName) -> Self {
        Destination {
            service,
            host: None,
            authority: None,
            port: None,
        }
    }

    /// The same, to `port` of the service's app.
    pub fn with_port(self, port: Option<u16>) -> Self {
        Destination { port, ..self }
    }

    /// A gateway's request: the gateway names the routes, the client's
    /// authority goes on to the backend.
    pub fn gateway(gateway: ServiceName, authority: Option<Authority>) -> Self {
        Destination {
            authority,
            ..Destination::service(gateway)
        }
    }

    /// `fixed` is the upstream port's service; otherwise the request's
    /// authority (HTTP/2, absolute form) or Host header (HTTP/1.1) names it.
    pub fn of<B>(req: &Request<B>, fixed: Option<&ServiceName>) -> Option<Self> {
        let authority = authority_of(req);
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
            port: None,
        })
    }

    /// The name as the request gave it.
    pub fn name(&self) -> &str {
        self.host.as_deref().unwrap_or(self.service.as_str())
    }

    /// The route: the service learned from the control plane if need be
    /// (for at most `wait`), then the rule `req` takes, or its default.
    pub async fn route(
        &self,
        routes: &Routes,
        wait: Duration,
        req: Option<&Request<CallerBody>>,
    ) -> Result<Route, ProxyError> {
        let found = routes.resolve(self.name(), wait).await?;
        Ok(match (found.routes, req) {
            (Some(table), Some(req)) => take(&found.target, &table, &routing::Request::of(req))
                .unwrap_or_else(|| Route {
                    routed: true,
                    ..Route::default_of(&found.target)
                }),
            _ => Route::default_of(&found.target),
        })
    }

    /// At a gateway (this destination names the gateway): the rule `req`
    /// takes among the gateway's routes, its `host` (lower case, no port)
    /// matched against their host names. `None`: no rule takes it — a
    /// gateway has no endpoints of its own to fall back to.
    pub async fn gateway_route(
        &self,
        routes: &Routes,
        wait: Duration,
        req: &routing::Request<'_>,
    ) -> Result<Option<Route>, ProxyError> {
        let found = routes.resolve(self.name(), wait).await?;
        Ok(found
            .routes
            .and_then(|table| take(&found.target, &table, req)))
    }
}
