//! Which rule a request takes when several match: the precedence of the
//! Gateway API, computed once when a table is built, so that finding the
//! rule is a walk down one sorted list.
//!
//! Across every rule of a service's routes, in order:
//! 0. at a gateway, the route's host name that matched: exact before any
//!    wildcard, longer before shorter, a route without host names last;
//! 1. the path match: exact, then a regular expression, then a prefix;
//!    within a kind, the longer value first (the Gateway API leaves
//!    regular expressions' place to implementations; ours is between
//!    exact and prefix, as in Envoy Gateway);
//! 2. for gRPC, the longer exact service name, then the longer exact method;
//! 3. a method match;
//! 4. more header matches;
//! 5. more query parameter matches;
//! 6. then the route's name (alphabetical: the Gateway API's creation-time
//!    rule needs a clock both programs agree on; names are that), the
//!    rule's place in its route, and the match's place in its rule.

use std::cmp::Reverse;

use super::RouteKind;
use super::edge::HostMatch;
use http::HeaderMap;
use http::header::{GetAll, HeaderName, HeaderValue};

use super::matching::{HeaderMatch, Mismatch, PathMatch, Request, RouteMatch, ValueMatch};

/// A rule of a route: what it matches and what it does (`A`: each program
/// keeps its own action — the sidecar its backends and policy, the control
/// plane what `explain` prints).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule<A> {
    /// None: every request.
    pub matches: Vec<RouteMatch>,
    pub action: A,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route<A> {
    /// `HTTPRoute/name` or `GRPCRoute/name`.
    pub name: String,
    pub kind: RouteKind,
    pub rules: Vec<Rule<A>>,
    /// At a gateway, the hosts it answers for; empty: every host.
    pub hostnames: Vec<HostMatch>,
}

/// How specific a match is: greater sorts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    /// The matched host name's (exact length, length).
    host: (usize, usize),
    path_kind: u8,
    path_len: usize,
    grpc_service: usize,
    grpc_method: usize,
    method: bool,
    headers: usize,
    query: usize,
}

fn exact_len(v: Option<&ValueMatch>) -> usize {
    match v {
        Some(ValueMatch::Exact(s)) => s.len(),
        _ => 0,
    }
}

impl Rank {
    fn of(host: Option<&HostMatch>, m: &RouteMatch) -> Self {
        let path_kind = match m.path {
            PathMatch::Exact(_) => 3,
            PathMatch::Regex(_) => 2,
            PathMatch::Prefix(_) => 1,
        };
        Rank {
            host: host.map_or((0, 0), HostMatch::rank),
            path_kind,
            path_len: m.path.value().len(),
            grpc_service: exact_len(m.grpc.as_ref().and_then(|g| g.service.as_ref())),
            grpc_method: exact_len(m.grpc.as_ref().and_then(|g| g.method.as_ref())),
            method: m.method.is_some(),
            headers: m.headers.len(),
            query: m.query.len(),
        }
    }
}

/// One match of one rule, in precedence order.
#[derive(Debug, Clone)]
struct Entry {
    route: usize,
    /// The route's host name this entry is for; `None`: any host.
    host: Option<usize>,
    rule: usize,
    /// `None`: the rule has no matches (it takes every request).
    matched: Option<usize>,
}

/// A service's routes, ready to route by.
#[derive(Debug, Clone)]
pub struct RouteTable<A> {
    routes: Vec<Route<A>>,
    order: Vec<Entry>,
}

/// The rule a request takes.
#[derive(Debug)]
pub struct Found<'a, A> {
    pub route: &'a Route<A>,
    /// Its index in the route's rules (metrics and spans carry it).
    pub rule: usize,
    pub action: &'a A,
    /// The match that took it; `None` for a rule without matches.
    pub matched: Option<&'a RouteMatch>,
}

/// One candidate `explain` reports, in precedence order.
#[derive(Debug)]
pub struct Candidate<'a> {
    pub route: &'a str,
    pub rule: usize,
    pub matched: Option<usize>,
    /// Why it did not match; `None`: it matched.
    pub mismatch: Option<Mismatch>,
}

impl<A> RouteTable<A> {
    pub fn new(mut routes: Vec<Route<A>>) -> Self {
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut order = Vec::new();
        let every = RouteMatch::default();
        for (ri, route) in routes.iter().enumerate() {
            // One entry per host name: which one matched decides the rank.
            let hosts: Vec<Option<usize>> = if route.hostnames.is_empty() {
                vec![None]
            } else {
                (0..route.hostnames.len()).map(Some).collect()
            };
            for host in hosts {
                let host_match = host.map(|h| &route.hostnames[h]);
                for (ui, rule) in route.rules.iter().enumerate() {
                    let matches: Vec<(Option<usize>, &RouteMatch)> = if rule.matches.is_empty() {
                        vec![(None, &every)]
                    } else {
                        rule.matches
                            .iter()
                            .enumerate()
                            .map(|(i, m)| (Some(i), m))
                            .collect()
                    };
                    for (matched, m) in matches {
                        let entry = Entry {
                            route: ri,
                            host,
                            rule: ui,
                            matched,
                        };
                        order.push((Rank::of(host_match, m), entry));
                    }
                }
            }
        }
        // Stable: equal ranks keep route, rule and match order.
        order.sort_by_key(|(rank, _)| Reverse(*rank));
        RouteTable {
            routes,
            order: order.into_iter().map(|(_, e)| e).collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn routes(&self) -> &[Route<A>] {
        &self.routes
    }

    /// The entry's match; `None` for a rule that takes every request.
    fn match_of(&self, e: &Entry) -> Option<&RouteMatch> {
        e.matched
            .map(|i| &self.routes[e.route].rules[e.rule].matches[i])
    }

    /// Whether the entry's host name takes the request's host.
    fn host_ok(&self, e: &Entry, req: &Request<'_>) -> bool {
        e.host.is_none_or(|h| {
            req.host
                .is_some_and(|host| self.routes[e.route].hostnames[h].matches(host))
        })
    }

    /// The rule `req` takes; `None` when no rule matches. Each header the
    /// rules name is looked up once, however many rules name it.
    pub fn find(&self, req: &Request<'_>) -> Option<Found<'_, A>> {
        let mut seen = SeenHeaders::new(req.headers);
        let mut header = |h: &HeaderMatch| seen.check(h);
        let e = self.order.iter().find(|e| {
            self.host_ok(e, req)
                && self
                    .match_of(e)
                    .is_none_or(|m| m.mismatch_with(req, &mut header).is_none())
        })?;
        let route = &self.routes[e.route];
        let rule = &route.rules[e.rule];
        Some(Found {
            route,
            rule: e.rule,
            action: &rule.action,
            matched: e.matched.map(|i| &rule.matches[i]),
        })
    }

    /// Every candidate in precedence order, each with why it did not
    /// match, up to and including the first that did.
    pub fn explain(&self, req: &Request<'_>) -> Vec<Candidate<'_>> {
        let mut out = Vec::new();
        for e in &self.order {
            let mismatch = if self.host_ok(e, req) {
                self.match_of(e).and_then(|m| m.mismatch(req))
            } else {
                Some(Mismatch::Host)
            };
            let hit = mismatch.is_none();
            out.push(Candidate {
                route: &self.routes[e.route].name,
                rule: e.rule,
                matched: e.matched,
                mismatch,
            });
            if hit {
                break;
            }
        }
        out
    }
}

/// The headers a walk down the table has looked up, by name: the first
/// few kept (most tables name one or two), the rest looked up each time.
struct SeenHeaders<'r> {
    headers: &'r HeaderMap,
    slots: [Option<(HeaderName, GetAll<'r, HeaderValue>)>; 4],
}

impl<'r> SeenHeaders<'r> {
    fn new(headers: &'r HeaderMap) -> Self {
        SeenHeaders {
            headers,
            slots: Default::default(),
        }
    }

    fn check(&mut self, h: &HeaderMatch) -> bool {
        for slot in &mut self.slots {
            match slot {
                Some((name, values)) if *name == h.name => return h.matches_values(values),
                Some(_) => {}
                None => {
                    let values = self.headers.get_all(&h.name);
                    let ok = h.matches_values(&values);
                    *slot = Some((h.name.clone(), values));
                    return ok;
                }
            }
        }
        h.matches_values(&self.headers.get_all(&h.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::matching::{GrpcMethodMatch, HeaderMatch};
    use http::{HeaderMap, Method};

    fn path(p: PathMatch) -> RouteMatch {
        RouteMatch {
            path: p,
            ..RouteMatch::default()
        }
    }

    fn route(name: &str, rules: Vec<(Vec<RouteMatch>, &'static str)>) -> Route<&'static str> {
        Route {
            name: name.into(),
            kind: RouteKind::Http,
            hostnames: vec![],
            rules: rules
                .into_iter()
                .map(|(matches, action)| Rule { matches, action })
                .collect(),
        }
    }

    fn take<'a>(
        t: &'a RouteTable<&'static str>,
        m: &Method,
        uri: &str,
        h: &HeaderMap,
    ) -> Option<&'a str> {
        let (p, q) = uri
            .split_once('?')
            .map_or((uri, None), |(p, q)| (p, Some(q)));
        let req = Request {
            method: m,
            host: None,
            path: p,
            query: q,
            headers: h,
        };
        t.find(&req).map(|f| *f.action)
    }

    #[test]
    fn the_most_specific_path_wins_whatever_the_order_written() {
        let t = RouteTable::new(vec![
            route(
                "HTTPRoute/a",
                vec![
                    (vec![path(PathMatch::prefix("/").expect("p"))], "root"),
                    (vec![path(PathMatch::prefix("/api").expect("p"))], "api"),
                    (
                        vec![path(PathMatch::regex("/api/users/[0-9]+").expect("p"))],
                        "regex",
                    ),
                ],
            ),
            route(
                "HTTPRoute/b",
                vec![
                    (
                        vec![path(PathMatch::prefix("/api/users").expect("p"))],
                        "users",
                    ),
                    (
                        vec![path(PathMatch::exact("/api/users/1").expect("p"))],
                        "exact",
                    ),
                ],
            ),
        ]);
        let h = HeaderMap::new();
        let get = Method::GET;
        assert_eq!(take(&t, &get, "/api/users/1", &h), Some("exact"));
        assert_eq!(take(&t, &get, "/api/users/2", &h), Some("regex"));
        assert_eq!(take(&t, &get, "/api/users/x", &h), Some("users"));
        assert_eq!(take(&t, &get, "/api/orders", &h), Some("api"));
        assert_eq!(take(&t, &get, "/health", &h), Some("root"));
    }

    #[test]
    fn then_method_headers_and_query_then_names_and_order() {
        let canary = RouteMatch {
            headers: vec![
                HeaderMatch::new("x-canary", ValueMatch::exact("1").expect("v")).expect("h"),
            ],
            ..path(PathMatch::prefix("/").expect("p"))
        };
        let get = RouteMatch {
            method: Some(Method::GET),
            ..path(PathMatch::prefix("/").expect("p"))
        };
        let t = RouteTable::new(vec![
            route(
                "HTTPRoute/z",
                vec![(vec![path(PathMatch::prefix("/").expect("p"))], "z-first")],
            ),
            route(
                "HTTPRoute/a",
                vec![
                    (vec![canary], "canary"),
                    (vec![get], "get"),
                    (vec![path(PathMatch::prefix("/").expect("p"))], "a-first"),
                    (vec![], "a-second"),
                ],
            ),
        ]);
        let mut h = HeaderMap::new();
        assert_eq!(
            take(&t, &Method::POST, "/x", &h),
            Some("a-first"),
            "name, then rule order"
        );
        assert_eq!(
            take(&t, &Method::GET, "/x", &h),
            Some("get"),
            "a method beats headers"
        );
        h.insert("x-canary", "1".parse().expect("v"));
        assert_eq!(take(&t, &Method::POST, "/x", &h), Some("canary"));
        assert_eq!(take(&t, &Method::GET, "/x", &h), Some("get"));
    }

    #[test]
    fn grpc_routes_by_service_then_method_and_explain_says_why() {
        let grpc = |s: &str, m: &str| RouteMatch {
            grpc: Some(GrpcMethodMatch::exact(s, m).expect("g")),
            ..RouteMatch::default()
        };
        let t = RouteTable::new(vec![Route {
            name: "GRPCRoute/users".into(),
            kind: RouteKind::Grpc,
            hostnames: vec![],
            rules: vec![
                Rule {
                    matches: vec![grpc("users.v1.Users", "")],
                    action: "service",
                },
                Rule {
                    matches: vec![grpc("users.v1.Users", "Get")],
                    action: "get",
                },
            ],
        }]);
        let h = HeaderMap::new();
        let post = Method::POST;
        assert_eq!(take(&t, &post, "/users.v1.Users/Get", &h), Some("get"));
        assert_eq!(take(&t, &post, "/users.v1.Users/List", &h), Some("service"));
        assert_eq!(take(&t, &post, "/orders.v1.Orders/Get", &h), None);
        let req = Request {
            method: &post,
            host: None,
            path: "/users.v1.Users/List",
            query: None,
            headers: &h,
        };
        let why = t.explain(&req);
        assert_eq!(why.len(), 2);
        assert_eq!(
            (why[0].rule, why[0].mismatch.clone()),
            (1, Some(Mismatch::GrpcMethod))
        );
        assert_eq!((why[1].rule, why[1].mismatch.clone()), (0, None));
    }

    #[test]
    fn at_a_gateway_the_most_specific_host_name_comes_first() {
        let host = |h: &str| HostMatch::parse(h).expect("host");
        let every = || vec![(vec![path(PathMatch::prefix("/").expect("p"))], "")];
        let named = |name: &str, hosts: Vec<HostMatch>, action: &'static str| Route {
            hostnames: hosts,
            rules: every()
                .into_iter()
                .map(|(matches, _)| Rule { matches, action })
                .collect(),
            ..route(name, vec![])
        };
        let t = RouteTable::new(vec![
            named("HTTPRoute/a-any", vec![], "any"),
            named("HTTPRoute/b-wild", vec![host("*.example.com")], "wild"),
            named(
                "HTTPRoute/c-exact",
                vec![host("other.org"), host("api.example.com")],
                "exact",
            ),
        ]);
        let h = HeaderMap::new();
        let get = Method::GET;
        let at = |host: Option<&str>| {
            let req = Request {
                method: &get,
                host,
                path: "/x",
                query: None,
                headers: &h,
            };
            t.find(&req).map(|f| *f.action)
        };
        assert_eq!(at(Some("api.example.com")), Some("exact"));
        assert_eq!(at(Some("other.org")), Some("exact"));
        assert_eq!(at(Some("www.example.com")), Some("wild"));
        assert_eq!(at(Some("elsewhere.net")), Some("any"));
        assert_eq!(at(None), Some("any"));
    }
}
