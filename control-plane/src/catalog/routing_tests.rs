//! Routes in the catalog: which services' views carry which routes, the
//! generations a route change moves, and the services a caller is sent
//! because a route of a service it calls sends there.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use weft_proto::v1 as pb;

use super::{Catalog, CatalogConfig, ServiceView};
use crate::resource::{Kind, Name, Resource, parse_documents};

fn name(s: &str) -> Name {
    Name::parse(s).expect("a valid name")
}

fn names<'a>(v: impl IntoIterator<Item = &'a Name>) -> Vec<&'a str> {
    v.into_iter().map(Name::as_str).collect()
}

fn catalog() -> std::sync::Arc<Catalog> {
    Catalog::in_memory(CatalogConfig {
        instance_grace: Duration::from_secs(10),
        startup_grace: Duration::from_secs(30),
    })
}

fn apply(c: &Catalog, text: &str) {
    let rs: Vec<Resource> = parse_documents(text).expect("valid");
    c.apply(&rs);
}

const SERVICES: &str = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec: {subsets: [{name: v2, labels: {version: v2}}]}\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: orders}\n";

fn route(name: &str, parents: &str, backends: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n  parentRefs: [{parents}]\n  rules: [{{backendRefs: [{backends}]}}]\n"
    )
}

fn view(c: &Catalog, service: &str) -> ServiceView {
    let mut wanted = BTreeSet::from([name(service)]);
    let (views, _) = c.views_with_backends(&mut wanted, &HashMap::new(), 100);
    views
        .into_iter()
        .find(|(n, _, _)| n.as_str() == service)
        .map(|(_, _, v)| (*v).clone())
        .expect("a view")
}

/// The generation of every service in `wanted`, as a stream would remember it.
fn seen(c: &Catalog, wanted: &[&str]) -> HashMap<Name, u64> {
    let mut w: BTreeSet<Name> = wanted.iter().map(|s| name(s)).collect();
    let (views, _) = c.views_with_backends(&mut w, &HashMap::new(), 100);
    views.into_iter().map(|(n, g, _)| (n, g)).collect()
}

fn changed(c: &Catalog, wanted: &[&str], seen: &HashMap<Name, u64>) -> Vec<String> {
    let mut w: BTreeSet<Name> = wanted.iter().map(|s| name(s)).collect();
    let (views, _) = c.views_with_backends(&mut w, seen, 100);
    views.into_iter().map(|(n, _, _)| n.to_string()).collect()
}

#[test]
fn a_route_goes_with_the_service_it_attaches_to_and_moves_its_generation() {
    let c = catalog();
    apply(&c, SERVICES);
    let before = seen(&c, &["users", "orders"]);
    apply(
        &c,
        &route("canary", "{name: users}", "{name: users, subset: v2}"),
    );
    assert_eq!(changed(&c, &["users", "orders"], &before), ["users"]);
    let users = name("users");
    let v = view(&c, "users");
    assert_eq!(
        v.routing
            .iter()
            .map(|r| r.qualified_name())
            .collect::<Vec<_>>(),
        ["HTTPRoute/canary"]
    );
    assert!(view(&c, "orders").routing.is_empty());
    // Always whole in a full update of a known service, even empty.
    let full = v.full(&users, false);
    assert_eq!(full.routing.as_ref().map(Vec::len), Some(1));
    assert_eq!(
        view(&c, "orders").full(&name("orders"), false).routing,
        Some(vec![])
    );
    assert_eq!(
        ServiceView::unknown().full(&name("nobody"), false).routing,
        None
    );

    // The same route again changes nothing; moved to orders, both change.
    let before = seen(&c, &["users", "orders"]);
    apply(
        &c,
        &route("canary", "{name: users}", "{name: users, subset: v2}"),
    );
    assert!(changed(&c, &["users", "orders"], &before).is_empty());
    apply(
        &c,
        &route("canary", "{name: orders}", "{name: users, subset: v2}"),
    );
    assert_eq!(
        changed(&c, &["users", "orders"], &before),
        ["orders", "users"]
    );
    let moved = view(&c, "users");
    let update = moved.diff(&users, Some(&v), false).expect("a change");
    assert_eq!(update.routing, Some(vec![]), "all of it: none left");
    assert!(update.policy.is_none() && update.endpoints.is_empty());

    // Deleted: its service changes and is sent its (empty) routing.
    let before = seen(&c, &["users", "orders"]);
    c.remove(Kind::HttpRoute, &name("canary"));
    assert_eq!(changed(&c, &["users", "orders"], &before), ["orders"]);
    assert!(view(&c, "orders").routing.is_empty());
}

#[test]
fn routes_are_sent_by_name_through_the_shared_wire_form() {
    let c = catalog();
    apply(&c, SERVICES);
    apply(&c, &route("b", "{name: users}", "{name: users}"));
    apply(
        &c,
        &route(
            "a",
            "{name: users}, {name: orders}",
            "{name: users, weight: 3}",
        ),
    );
    let v = view(&c, "users");
    let update = pb::ServiceUpdate::from(&v.full(&name("users"), false));
    let routing = update.routing.expect("routing");
    let names: Vec<&str> = routing.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["HTTPRoute/a", "HTTPRoute/b"]);
    assert_eq!(routing.routes[0].kind, pb::RouteKind::Http as i32);
    assert_eq!(routing.routes[0].rules[0].backends[0].weight, Some(3));
    // No change, no routing in the diff.
    let diff = view(&c, "users").diff(&name("users"), Some(&v), false);
    assert!(diff.is_none());
}

#[test]
fn a_caller_is_sent_the_services_its_callees_routes_send_to() {
    let c = catalog();
    apply(&c, SERVICES);
    let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{name: users}]\n  rules:\n    - backendRefs: [{name: users-v2}]\n      filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow}}}]\n";
    apply(&c, text);
    let mut wanted = BTreeSet::from([name("users")]);
    let (views, added) = c.views_with_backends(&mut wanted, &HashMap::new(), 100);
    assert_eq!(names(&added), ["users-v2", "shadow"]);
    assert_eq!(names(&wanted), ["shadow", "users", "users-v2"]);
    let got: Vec<(&str, bool)> = views
        .iter()
        .map(|(n, _, v)| (n.as_str(), v.known))
        .collect();
    assert_eq!(
        got,
        [("shadow", false), ("users", true), ("users-v2", false)],
        "sent like any subscribed service: known or not"
    );
    let seen: HashMap<Name, u64> = views.iter().map(|(n, g, _)| (n.clone(), *g)).collect();

    // A backend that is itself routed elsewhere brings its backends too.
    apply(&c, &route("v2", "{name: users-v2}", "{name: ledger}"));
    let (views, added) = c.views_with_backends(&mut wanted, &seen, 100);
    assert_eq!(names(&added), ["ledger"]);
    assert_eq!(
        views.iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>(),
        ["ledger", "users-v2"]
    );

    // Nothing changed: nothing sent, nothing added.
    let seen: HashMap<Name, u64> = seen
        .into_iter()
        .chain(views.iter().map(|(n, g, _)| (n.clone(), *g)))
        .collect();
    let (views, added) = c.views_with_backends(&mut wanted, &seen, 100);
    assert!(views.is_empty() && added.is_empty());

    // A route that stops naming a service leaves it wanted.
    apply(&c, &route("v2", "{name: users-v2}", "{name: users-v2}"));
    let (views, added) = c.views_with_backends(&mut wanted, &seen, 100);
    assert!(added.is_empty());
    assert_eq!(
        views.iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>(),
        ["users-v2"]
    );
    assert!(wanted.contains(&name("ledger")));
}

#[test]
fn what_a_caller_is_sent_stays_within_its_bound() {
    let c = catalog();
    apply(&c, SERVICES);
    apply(
        &c,
        &route("r", "{name: users}", "{name: a}, {name: b}, {name: c}"),
    );
    let mut wanted = BTreeSet::from([name("users")]);
    let (views, added) = c.views_with_backends(&mut wanted, &HashMap::new(), 2);
    assert_eq!((wanted.len(), added.len(), views.len()), (2, 1, 2));
}

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  listeners:\n    - {name: web, port: 80, protocol: HTTP, hostname: \"*.example.com\"}\n    - {name: tls, port: 443, protocol: HTTPS, hostname: api.example.com}\n";

fn hostnames(v: &ServiceView) -> Vec<(String, Vec<String>)> {
    v.routing
        .iter()
        .map(|r| {
            (
                r.qualified_name(),
                r.hostnames().iter().map(ToString::to_string).collect(),
            )
        })
        .collect()
}

#[test]
fn a_gateways_sidecar_gets_its_routes_with_host_names_and_their_backends() {
    let c = catalog();
    apply(&c, SERVICES);
    // Known as soon as the Gateway is, though nothing attaches yet.
    apply(&c, GATEWAY);
    let v = view(&c, "gw");
    assert!(v.known && v.routing.is_empty());
    let attached = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: api}\nspec:\n  parentRefs: [{kind: Gateway, name: gw}, {name: users}]\n  hostnames: [api.example.com]\n  rules: [{backendRefs: [{name: users-v2}]}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: grpc}\nspec:\n  parentRefs: [{kind: Gateway, name: gw, sectionName: web}]\n  rules: [{backendRefs: [{name: orders}]}]\n";
    apply(&c, attached);
    // The gateway's sidecar wants its own name, like any sidecar.
    let mut wanted = BTreeSet::from([name("gw")]);
    let (views, added) = c.views_with_backends(&mut wanted, &HashMap::new(), 100);
    assert_eq!(names(&added), ["orders", "users-v2"]);
    let gw = &views
        .iter()
        .find(|(n, _, _)| n.as_str() == "gw")
        .expect("gw")
        .2;
    assert_eq!(
        hostnames(gw),
        [
            (
                "GRPCRoute/grpc".to_string(),
                vec!["*.example.com".to_string()]
            ),
            (
                "HTTPRoute/api".to_string(),
                vec!["api.example.com".to_string()]
            ),
        ],
        "its own host names, or those of the listeners it attaches to"
    );
    // On the wire, to its own sidecar: known, routing with host names.
    let update = pb::ServiceUpdate::from(&gw.full(&name("gw"), true));
    assert!(update.known && update.inbound.is_some());
    let routes = update.routing.expect("routing").routes;
    assert_eq!(routes[1].hostnames, ["api.example.com"]);
    // The service it also attaches to gets it without host names (GAMMA).
    assert_eq!(
        hostnames(&view(&c, "users")),
        [("HTTPRoute/api".to_string(), vec![])]
    );
}

#[test]
fn a_change_to_the_gateway_or_its_routes_reaches_its_sidecar() {
    let c = catalog();
    apply(&c, SERVICES);
    apply(&c, GATEWAY);
    let r = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Gateway, name: gw}]\n  rules: [{backendRefs: [{name: users}]}]\n";
    apply(&c, r);
    let before_view = view(&c, "gw");
    assert_eq!(
        hostnames(&before_view),
        [(
            "HTTPRoute/r".to_string(),
            vec!["*.example.com".to_string(), "api.example.com".to_string()]
        )]
    );
    // A listener without a host name takes any host: so does the route.
    let before = seen(&c, &["gw", "users", "orders"]);
    apply(
        &c,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  listeners: [{name: web, port: 80, protocol: HTTP}]\n",
    );
    assert_eq!(changed(&c, &["gw", "users", "orders"], &before), ["gw"]);
    let after = view(&c, "gw");
    assert_eq!(hostnames(&after), [("HTTPRoute/r".to_string(), vec![])]);
    let update = after
        .diff(&name("gw"), Some(&before_view), true)
        .expect("a change");
    assert!(update.routing.is_some() && update.policy.is_none());

    // A route's change, and its deletion, move the gateway's generation.
    let before = seen(&c, &["gw", "orders"]);
    apply(&c, &r.replace("{name: users}]}]", "{name: orders}]}]"));
    assert_eq!(changed(&c, &["gw", "orders"], &before), ["gw"]);
    let before = seen(&c, &["gw"]);
    c.remove(Kind::HttpRoute, &name("r"));
    assert_eq!(changed(&c, &["gw"], &before), ["gw"]);
    assert!(view(&c, "gw").routing.is_empty());
}

#[test]
fn a_services_rate_limit_goes_to_its_own_sidecars() {
    let c = catalog();
    apply(
        &c,
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec:\n  rateLimit: {requests: 5, period: 1s, perCaller: true}\n",
    );
    let v = view(&c, "users");
    let own = pb::ServiceUpdate::from(&v.full(&name("users"), true));
    let limit = own.inbound.and_then(|i| i.rate_limit).expect("a limit");
    assert_eq!((limit.requests, limit.period_ms, limit.burst), (5, 1000, 5));
    assert_eq!(limit.key, Some(pb::rate_limit::Key::Caller(true)));
    let caller = pb::ServiceUpdate::from(&v.full(&name("users"), false));
    assert!(caller.inbound.is_none(), "callers are not sent it");
}
