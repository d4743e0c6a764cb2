//! Catalog rules: registration, grace periods (with paused time), leave,
//! health, restored instances, and the views and diffs pushed to sidecars.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use weft_proto::protocol::{InboundMode, LoadBalancer, Protocol};

use crate::resource::{Caller, parse_documents};

fn name(s: &str) -> Name {
    Name::parse(s).expect("a valid name")
}

fn hello(service: &str, id: &str, port: u16) -> Registration {
    Registration {
        service: name(service),
        instance_id: id.into(),
        address: format!("127.0.0.1:{port}"),
        protocol: Some(Protocol::Http),
        labels: Default::default(),
        health: Health::Unknown,
        sidecar_version: String::new(),
        no_app: false,
    }
}

fn config() -> CatalogConfig {
    CatalogConfig {
        instance_grace: Duration::from_secs(10),
        startup_grace: Duration::from_secs(30),
    }
}

fn wanted(names: &[&str]) -> BTreeSet<Name> {
    names.iter().map(|s| name(s)).collect()
}

fn view(c: &Catalog, service: &str) -> ServiceView {
    let (_, mut v) = c.views_since(&wanted(&[service]), &HashMap::new());
    v.pop().expect("a view").2
}

fn connect(c: &Arc<Catalog>, service: &str, id: &str, port: u16) -> SidecarStream {
    c.connect(hello(service, id, port), BTreeSet::new(), 0)
}

#[tokio::test(start_paused = true)]
async fn a_disconnected_instance_stays_for_the_grace_period() {
    let c = Catalog::in_memory(config());
    connect(&c, "users", "u-1", 1).close(false);
    assert_eq!(view(&c, "users").endpoints.len(), 1);
    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(c.reap(Instant::now()), 0);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(c.reap(Instant::now()), 1);
    assert!(
        !view(&c, "users").known,
        "no resource and no instance: unknown"
    );
}

#[tokio::test(start_paused = true)]
async fn ejections_are_kept_only_for_instances_that_exist() {
    let c = Catalog::in_memory(config());
    let _users = connect(&c, "users", "u-1", 1);
    let orders = connect(&c, "orders", "o-1", 2);
    let far = u64::MAX;
    // Unknown instance, and a known instance under the wrong service: dropped.
    orders.record_ejection("users".into(), "nobody".into(), far);
    orders.record_ejection("orders".into(), "u-1".into(), far);
    orders.record_ejection("users".into(), "u-1".into(), far);
    let ejected = |c: &Catalog| -> Vec<(String, usize)> {
        c.instances()
            .into_iter()
            .map(|i| (i.record.instance_id, i.ejected_by.len()))
            .collect()
    };
    assert_eq!(
        ejected(&c),
        [("o-1".to_string(), 0), ("u-1".to_string(), 1)]
    );
    orders.record_ejection("users".into(), "u-1".into(), 0);
    assert_eq!(
        ejected(&c),
        [("o-1".to_string(), 0), ("u-1".to_string(), 0)]
    );
}

#[tokio::test(start_paused = true)]
async fn reconnecting_within_the_grace_keeps_the_instance() {
    let c = Catalog::in_memory(config());
    connect(&c, "users", "u-1", 1).close(false);
    tokio::time::advance(Duration::from_secs(5)).await;
    let _again = connect(&c, "users", "u-1", 1);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(c.reap(Instant::now()), 0);
    assert!(c.instances()[0].connected);
}

#[tokio::test(start_paused = true)]
async fn an_old_stream_ending_does_not_evict_its_successor() {
    let c = Catalog::in_memory(config());
    let old = connect(&c, "users", "u-1", 1);
    let _new = connect(&c, "users", "u-1", 1); // took over
    old.close(false);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(c.reap(Instant::now()), 0);
    assert_eq!(c.counts().sidecars, 1);
}

#[tokio::test(start_paused = true)]
async fn leave_removes_at_once() {
    let c = Catalog::in_memory(config());
    connect(&c, "users", "u-1", 1).close(true);
    assert!(c.instances().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_dropped_stream_ends_like_one_without_leave() {
    let c = Catalog::in_memory(config());
    drop(connect(&c, "users", "u-1", 1));
    assert_eq!(c.counts().sidecars, 0);
    let listed = c.instances();
    assert!(!listed[0].connected, "kept for the grace period");
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(c.reap(Instant::now()), 1);
}

#[tokio::test(start_paused = true)]
async fn health_changes_reach_the_view_and_wake_streams() {
    let c = Catalog::in_memory(config());
    let mut changed = c.subscribe();
    let s = connect(&c, "users", "u-1", 1);
    changed.borrow_and_update();
    s.set_health(Health::Unhealthy, "down".into());
    assert!(changed.has_changed().unwrap_or(false));
    let v = view(&c, "users");
    assert_eq!(v.endpoints["u-1"].health, Health::Unhealthy);
    assert_eq!(c.services()[0].healthy_instances, 0);
}

#[tokio::test(start_paused = true)]
async fn restored_instances_wait_for_the_startup_grace() {
    let record = InstanceRecord {
        health: Health::Healthy,
        ..InstanceRecord::from(&hello("users", "u-1", 1))
    };
    let c = Catalog::new(config(), Vec::new(), vec![record], Persistence::none());
    assert_eq!(
        view(&c, "users").endpoints.len(),
        1,
        "served right after a restart"
    );
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(c.reap(Instant::now()), 0);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(c.reap(Instant::now()), 1);
}

#[test]
fn the_resource_decides_the_policy_else_the_instances() {
    let c = Catalog::in_memory(config());
    let _s = connect(&c, "users", "u-1", 1);
    let v = view(&c, "users");
    assert_eq!(
        v.policy.as_ref().map(|p| p.protocol),
        Some(Some(Protocol::Http))
    );
    let rs = parse_documents("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec: {protocol: grpc, loadBalancer: round-robin}\n")
        .expect("valid");
    c.apply(&rs);
    let v = view(&c, "users");
    let p = v.policy.expect("policy");
    assert_eq!(p.protocol, Some(Protocol::Grpc));
    assert_eq!(p.load_balancer, LoadBalancer::RoundRobin);
}

#[test]
fn views_are_only_recomputed_for_services_that_changed() {
    let c = Catalog::in_memory(config());
    let users = connect(&c, "users", "u-1", 1);
    let _orders = connect(&c, "orders", "o-1", 2);
    let w = wanted(&["users", "orders"]);
    let (_, all) = c.views_since(&w, &HashMap::new());
    let seen: HashMap<Name, u64> = all.iter().map(|(n, g, _)| (n.clone(), *g)).collect();
    users.set_health(Health::Unhealthy, String::new());
    let (_, changed) = c.views_since(&w, &seen);
    assert_eq!(
        changed.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        vec!["users"]
    );
}

#[test]
fn diffs_carry_only_changes() {
    let ep = |id: &str, health: Health| Endpoint {
        instance_id: id.into(),
        address: "127.0.0.1:1".into(),
        labels: Default::default(),
        health,
        weight: 1,
    };
    let s = name("s");
    let mut old = ServiceView {
        known: true,
        policy: Some(ServiceSpec {
            name: s.clone(),
            protocol: Some(Protocol::Grpc),
            load_balancer: Default::default(),
            subsets: Vec::new(),
            inbound_mode: InboundMode::Strict,
            resilience: Default::default(),
            rate_limit: None,
            addresses: Vec::new(),
            opaque_ports: Vec::new(),
        }),
        endpoints: Default::default(),
        inbound: Default::default(),
        routing: Vec::new(),
    };
    old.endpoints.insert("a".into(), ep("a", Health::Healthy));
    old.endpoints.insert("b".into(), ep("b", Health::Healthy));
    assert_eq!(old.diff(&s, Some(&old), false), None);
    let mut new = old.clone();
    new.endpoints.remove("a");
    new.endpoints.insert("b".into(), ep("b", Health::Unhealthy));
    new.endpoints.insert("c".into(), ep("c", Health::Healthy));
    let d = new.diff(&s, Some(&old), false).expect("a change");
    assert!(!d.reset_endpoints && d.policy.is_none());
    assert_eq!(d.removed, vec!["a".to_string()]);
    let ids: Vec<_> = d.endpoints.iter().map(|e| e.instance_id.as_str()).collect();
    assert_eq!(ids, vec!["b", "c"]);
    let full = new.diff(&s, None, false).expect("new");
    assert!(full.reset_endpoints && full.policy.is_some());
}

#[test]
fn the_inbound_policy_goes_to_the_service_own_sidecars_only() {
    let c = Catalog::in_memory(config());
    let _s = connect(&c, "users", "u-1", 1);
    let rs = parse_documents(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec: {inboundMode: permissive}\n---\n\
         apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  service: users\n  rules: [{from: [orders]}]\n",
    )
    .expect("valid");
    c.apply(&rs);
    let v = view(&c, "users");
    let users = name("users");
    assert_eq!(v.inbound.mode, InboundMode::Permissive);
    assert!(v.inbound.authorization);
    assert_eq!(v.inbound.rules[0].from(), [Caller::Service(name("orders"))]);
    assert!(v.full(&users, true).inbound.is_some());
    assert!(
        v.full(&users, false).inbound.is_none(),
        "callers never see it"
    );
    // A policy change alone is a change for the own sidecars, not for callers.
    let mut changed = v.clone();
    changed.inbound.rules.clear();
    assert!(changed.diff(&users, Some(&v), false).is_none());
    assert!(
        changed
            .diff(&users, Some(&v), true)
            .is_some_and(|u| u.inbound.is_some())
    );
    c.remove(Kind::AuthorizationPolicy, &name("p"));
    assert!(!view(&c, "users").inbound.authorization);
}

#[test]
fn moving_an_instance_to_another_service_changes_both_views() {
    let c = Catalog::in_memory(config());
    let _old = connect(&c, "users", "u-1", 1);
    let w = wanted(&["users", "orders"]);
    let (_, all) = c.views_since(&w, &HashMap::new());
    let seen: HashMap<Name, u64> = all.iter().map(|(n, g, _)| (n.clone(), *g)).collect();
    let _new = connect(&c, "orders", "u-1", 1);
    let (_, changed) = c.views_since(&w, &seen);
    let names: Vec<_> = changed.iter().map(|x| x.0.as_str()).collect();
    assert_eq!(names, ["orders", "users"]);
    assert!(!view(&c, "users").known);
}

#[tokio::test]
async fn the_address_map_holds_virtual_and_instance_addresses() {
    let c = Catalog::in_memory(config());
    c.apply(
        &parse_documents(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  \
             addresses: [10.96.0.10]\n  opaquePorts: [3306]\n",
        )
        .expect("valid"),
    );
    let _web = connect(&c, "web", "w-1", 1);
    let mut caller = hello("client", "c-1", 2);
    caller.no_app = true;
    let _client = c.connect(caller, BTreeSet::new(), 0);
    let map = c.address_map();
    assert_eq!(
        map.len(),
        1,
        "a callers-only instance maps nothing: {map:?}"
    );
    assert_eq!(map[0].service.as_str(), "web");
    let ips: Vec<String> = map[0].addresses.iter().map(|a| a.to_string()).collect();
    assert_eq!(ips, ["10.96.0.10", "127.0.0.1"]);
    assert_eq!(map[0].opaque_ports, [3306]);
}
