//! A service's routes, ready to route by: each rule's backends resolved to
//! targets (a service, or the endpoints of one of its subsets), its policy
//! merged from the service's and the rule's overrides, its filters and
//! mirrors. Built with the table, so a request pays only the match.

use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::counter::Counter;
use weft_proto::name::ServiceName;
use weft_proto::routing::{Filters, RouteTable};

use super::target::Target;
use crate::model::policy::{RoutePolicy, TryTimeout};
use crate::model::route::RuleSpec;

/// The routes of one service, in precedence order.
pub type ServiceRoutes = RouteTable<Arc<RuleRuntime>>;

/// One backend of a rule and its share of the requests.
#[derive(Clone)]
pub struct Backend {
    /// `service` or `service/subset`, as metrics name it.
    pub name: Arc<str>,
    /// `None` when the sidecar does not know the service (yet) or the
    /// service has no such subset: its share goes to the others.
    pub target: Option<Arc<Target>>,
    pub weight: u32,
}

impl Backend {
    fn live(&self) -> Option<&Arc<Target>> {
        self.target.as_ref().filter(|t| t.ready_count() > 0)
    }
}

/// Where a route's attempts go: one target, or several sharing the
/// requests by weight (a canary, a blue/green switch, an A/B split).
#[derive(Clone)]
pub enum Backends {
    One(Arc<Target>),
    Weighted(Arc<[Backend]>),
}

/// The backend one attempt takes.
pub struct Choice<'a> {
    pub target: &'a Arc<Target>,
    /// The weights drew a backend with no endpoint ready, and this one took
    /// its place (counted, so that a split that is not what it says shows).
    pub fell_back_from: Option<&'a Backend>,
}

impl Backends {
    /// The backend for one attempt: drawn by weight. A backend drawn with
    /// no endpoint ready gives its place to another drawn by weight among
    /// those with endpoints, so its share is spread over the others in
    /// proportion to theirs.
    pub fn choose(&self) -> Option<Choice<'_>> {
        let all = match self {
            Backends::One(t) => {
                return Some(Choice {
                    target: t,
                    fell_back_from: None,
                });
            }
            Backends::Weighted(all) => all,
        };
        let drawn = draw(all.iter())?;
        if let Some(target) = drawn.live() {
            return Some(Choice {
                target,
                fell_back_from: None,
            });
        }
        let other = draw(all.iter().filter(|b| b.live().is_some()))?;
        Some(Choice {
            target: other.live()?,
            fell_back_from: Some(drawn),
        })
    }

    /// The backend that holds the route's request limits and retry budget:
    /// the first one (for a service's default route, the service).
    pub fn primary(&self) -> Option<&Arc<Target>> {
        match self {
            Backends::One(t) => Some(t),
            Backends::Weighted(all) => all.iter().find_map(|b| b.target.as_ref()),
        }
    }
}

/// One of `backends`, by weight; `None` when all weigh 0.
fn draw<'a>(backends: impl Iterator<Item = &'a Backend> + Clone) -> Option<&'a Backend> {
    let total: u64 = backends.clone().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = crate::rand::next_u64() % total;
    backends.into_iter().find(|b| {
        let w = u64::from(b.weight);
        if point < w {
            return true;
        }
        point -= w;
        false
    })
}

/// A rule as requests take it.
pub struct RuleRuntime {
    /// `HTTPRoute/name` or `GRPCRoute/name`.
    pub route: Arc<str>,
    /// Its place in the route's rules.
    pub rule: usize,
    pub backends: Backends,
    pub policy: Arc<RoutePolicy>,
    pub filters: Filters,
    /// Where copies go, and for which share of the requests (percent).
    pub mirrors: Vec<(Backend, u32)>,
    /// Its `weft_route_requests_total` counter, found on its first request
    /// and kept while the rule is (its labels are looked up once).
    pub requests: OnceLock<Counter>,
}

/// The policy of a rule: the service's, with what the rule overrides.
pub fn rule_policy(service: &RoutePolicy, rule: &RuleSpec) -> RoutePolicy {
    let mut p = service.clone();
    if let Some(r) = &rule.retry {
        p.retry = r.clone();
    }
    if let Some(f) = rule.fault {
        p.fault = Some(f);
    }
    if rule.request_timeout.is_some() {
        p.timeouts.request = rule.request_timeout;
    }
    if rule.backend_request_timeout.is_some() {
        p.retry.per_try_timeout = rule.backend_request_timeout.map(TryTimeout::new);
    }
    p
}

/// How metrics name a backend.
pub fn backend_name(service: &ServiceName, subset: Option<&str>) -> Arc<str> {
    match subset {
        Some(s) => Arc::from(format!("{service}/{s}")),
        None => Arc::from(service.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Health;
    use crate::model::policy::{Resilience, RetryPolicy};
    use crate::table::fixtures::{builder, state, target};
    use std::time::Duration;
    use weft_proto::protocol::LoadBalancer;

    #[tokio::test]
    async fn weights_share_the_requests_and_an_empty_backend_gives_its_share_away() {
        let svc = |n: &str, h| {
            (
                ServiceName::parse(n).expect("name"),
                state(LoadBalancer::P2cEwma, &[("127.0.0.1:1", h)]),
            )
        };
        let (stable, s1) = svc("stable", Health::Healthy);
        let (canary, s2) = svc("canary", Health::Healthy);
        let (down, s3) = svc("down", Health::Unhealthy);
        let table = builder().build(
            [(&stable, &s1), (&canary, &s2), (&down, &s3)].into_iter(),
            std::iter::empty(),
        );
        let backend = |n: &str, weight| Backend {
            name: Arc::from(n),
            target: Some(target(&table, n)),
            weight,
        };
        let missing = Backend {
            name: Arc::from("gone"),
            target: None,
            weight: 50,
        };
        let split = Backends::Weighted(Arc::from(vec![
            backend("stable", 90),
            backend("canary", 10),
            backend("down", 100),
            missing,
        ]));
        let (mut canaries, mut fallbacks) = (0, 0);
        for _ in 0..20_000 {
            let c = split.choose().expect("a backend");
            assert!(["stable", "canary"].contains(&c.target.name.as_str()));
            canaries += usize::from(c.target.name.as_str() == "canary");
            fallbacks += usize::from(c.fell_back_from.is_some());
        }
        // 10% of the live weight; 150 of 250 drawn weight falls back (60%).
        assert!((1_600..2_400).contains(&canaries), "{canaries}");
        assert!((11_000..13_000).contains(&fallbacks), "{fallbacks}");
        assert_eq!(split.primary().map(|t| t.name.as_str()), Some("stable"));
        let none = Backends::Weighted(Arc::from(vec![backend("down", 1)]));
        assert!(none.choose().is_none(), "no backend has an endpoint");
    }

    #[test]
    fn a_rule_overrides_what_it_sets() {
        let service = RoutePolicy::of_service(&Resilience::default());
        let rule = RuleSpec {
            backends: vec![],
            filters: Filters::default(),
            request_timeout: Some(Duration::from_secs(2)),
            backend_request_timeout: Some(Duration::from_millis(300)),
            retry: Some(RetryPolicy {
                attempts: 5,
                ..RetryPolicy::default()
            }),
            fault: None,
        };
        let p = rule_policy(&service, &rule);
        assert_eq!(p.timeouts.request, Some(Duration::from_secs(2)));
        assert_eq!(p.retry.attempts, 5);
        assert_eq!(
            p.retry.per_try_timeout.map(|t| t.limit()),
            Some(Duration::from_millis(300))
        );
        assert_eq!(
            p.timeouts.idle, service.timeouts.idle,
            "what it does not set stays"
        );
        assert_eq!(p.fault, None);
    }
}
