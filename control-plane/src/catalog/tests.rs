//! Catalog rules: registration, grace periods (with paused time), leave,
//! health, restored instances, and the views and diffs pushed to sidecars.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;
use weft_proto::v1 as pb;

use super::*;
use crate::resource::parse_documents;

fn hello(service: &str, id: &str, port: u16) -> Registration {
    let h = pb::Hello {
        service: service.into(),
        instance_id: id.into(),
        address: format!("127.0.0.1:{port}"),
        protocol: pb::Protocol::Http as i32,
        ..Default::default()
    };
    Registration::from_hello(&h).expect("valid hello").0
}

fn config() -> CatalogConfig {
    CatalogConfig {
        instance_grace: Duration::from_secs(10),
        startup_grace: Duration::from_secs(30),
    }
}

fn wanted(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn view(c: &Catalog, name: &str) -> ServiceView {
    let (_, mut v) = c.views_since(&wanted(&[name]), &HashMap::new());
    v.pop().expect("a view").2
}

#[tokio::test(start_paused = true)]
async fn a_disconnected_instance_stays_for_the_grace_period() {
    let c = Catalog::in_memory(config());
    c.register(1, hello("users", "u-1", 1), BTreeSet::new(), 0);
    c.disconnect(1, false);
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
    c.register(1, hello("users", "u-1", 1), BTreeSet::new(), 0);
    c.register(2, hello("orders", "o-1", 2), BTreeSet::new(), 0);
    let far = u64::MAX;
    // Unknown instance, and a known instance under the wrong service: dropped.
    c.record_ejection(2, "users".into(), "nobody".into(), far);
    c.record_ejection(2, "orders".into(), "u-1".into(), far);
    c.record_ejection(2, "users".into(), "u-1".into(), far);
    let ejected = |c: &Catalog| -> Vec<(String, usize)> {
        c.instances()
            .into_iter()
            .map(|i| (i.instance_id, i.ejected_by.len()))
            .collect()
    };
    assert_eq!(
        ejected(&c),
        [("o-1".to_string(), 0), ("u-1".to_string(), 1)]
    );
    c.record_ejection(2, "users".into(), "u-1".into(), 0);
    assert_eq!(
        ejected(&c),
        [("o-1".to_string(), 0), ("u-1".to_string(), 0)]
    );
}

#[tokio::test(start_paused = true)]
async fn reconnecting_within_the_grace_keeps_the_instance() {
    let c = Catalog::in_memory(config());
    c.register(1, hello("users", "u-1", 1), BTreeSet::new(), 0);
    c.disconnect(1, false);
    tokio::time::advance(Duration::from_secs(5)).await;
    c.register(2, hello("users", "u-1", 1), BTreeSet::new(), 0);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(c.reap(Instant::now()), 0);
    assert!(c.instances()[0].connected);
}

#[tokio::test(start_paused = true)]
async fn an_old_stream_ending_does_not_evict_its_successor() {
    let c = Catalog::in_memory(config());
    c.register(1, hello("users", "u-1", 1), BTreeSet::new(), 0);
    c.register(2, hello("users", "u-1", 1), BTreeSet::new(), 0); // took over
    c.disconnect(1, false);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(c.reap(Instant::now()), 0);
    assert_eq!(c.connected(), 1);
}

#[tokio::test(start_paused = true)]
async fn leave_removes_at_once() {
    let c = Catalog::in_memory(config());
    c.register(1, hello("users", "u-1", 1), BTreeSet::new(), 0);
    c.disconnect(1, true);
    assert!(c.instances().is_empty());
}

#[tokio::test(start_paused = true)]
async fn health_changes_reach_the_view_and_wake_streams() {
    let c = Catalog::in_memory(config());
    let mut changed = c.subscribe();
    c.register(1, hello("users", "u-1", 1), BTreeSet::new(), 0);
    changed.borrow_and_update();
    c.set_health(1, pb::Health::Unhealthy, "down".into());
    assert!(changed.has_changed().unwrap_or(false));
    let v = view(&c, "users");
    assert_eq!(v.endpoints["u-1"].health, pb::Health::Unhealthy as i32);
    assert_eq!(c.services()[0].healthy_instances, 0);
}

#[tokio::test(start_paused = true)]
async fn restored_instances_wait_for_the_startup_grace() {
    let info = pb::InstanceInfo {
        service: "users".into(),
        instance_id: "u-1".into(),
        address: "127.0.0.1:1".into(),
        health: pb::Health::Healthy as i32,
        ..Default::default()
    };
    let c = Catalog::new(config(), None, Vec::new(), vec![info]);
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
    c.register(1, hello("users", "u-1", 1), BTreeSet::new(), 0);
    let v = view(&c, "users");
    assert_eq!(
        v.policy.as_ref().map(|p| p.protocol),
        Some(pb::Protocol::Http as i32)
    );
    let rs = parse_documents("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec: {protocol: grpc, loadBalancer: round-robin}\n")
        .expect("valid");
    c.set_resources(&rs);
    let v = view(&c, "users");
    let p = v.policy.expect("policy");
    assert_eq!(p.protocol, pb::Protocol::Grpc as i32);
    assert_eq!(p.load_balancer, pb::LoadBalancer::RoundRobin as i32);
}

#[test]
fn views_are_only_recomputed_for_services_that_changed() {
    let c = Catalog::in_memory(config());
    c.register(1, hello("users", "u-1", 1), BTreeSet::new(), 0);
    c.register(2, hello("orders", "o-1", 2), BTreeSet::new(), 0);
    let w = wanted(&["users", "orders"]);
    let (_, all) = c.views_since(&w, &HashMap::new());
    let seen: HashMap<String, u64> = all.iter().map(|(n, g, _)| (n.clone(), *g)).collect();
    c.set_health(1, pb::Health::Unhealthy, String::new());
    let (_, changed) = c.views_since(&w, &seen);
    assert_eq!(
        changed.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        vec!["users"]
    );
}

#[test]
fn diffs_carry_only_changes() {
    let ep = |id: &str, health: pb::Health| pb::Endpoint {
        instance_id: id.into(),
        address: "127.0.0.1:1".into(),
        health: health as i32,
        weight: 1,
        ..Default::default()
    };
    let mut old = ServiceView {
        known: true,
        policy: Some(pb::ServiceSpec::default()),
        endpoints: Default::default(),
        inbound: Default::default(),
    };
    old.endpoints
        .insert("a".into(), ep("a", pb::Health::Healthy));
    old.endpoints
        .insert("b".into(), ep("b", pb::Health::Healthy));
    assert_eq!(old.diff("s", Some(&old), false), None);
    let mut new = old.clone();
    new.endpoints.remove("a");
    new.endpoints
        .insert("b".into(), ep("b", pb::Health::Unhealthy));
    new.endpoints
        .insert("c".into(), ep("c", pb::Health::Healthy));
    let d = new.diff("s", Some(&old), false).expect("a change");
    assert!(!d.reset_endpoints && d.policy.is_none());
    assert_eq!(d.removed, vec!["a".to_string()]);
    let ids: Vec<_> = d.endpoints.iter().map(|e| e.instance_id.as_str()).collect();
    assert_eq!(ids, vec!["b", "c"]);
    let full = new.diff("s", None, false).expect("new");
    assert!(full.reset_endpoints && full.policy.is_some());
}

#[test]
fn the_inbound_policy_goes_to_the_service_own_sidecars_only() {
    let c = Catalog::in_memory(config());
    c.register(1, hello("users", "u-1", 1), BTreeSet::new(), 0);
    let rs = parse_documents(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec: {inboundMode: permissive}\n---\n\
         apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  service: users\n  rules: [{from: [orders]}]\n",
    )
    .expect("valid");
    c.set_resources(&rs);
    let v = view(&c, "users");
    assert_eq!(v.inbound.mode, pb::InboundMode::Permissive as i32);
    assert!(v.inbound.authorization);
    assert_eq!(v.inbound.rules[0].from, vec!["orders".to_string()]);
    assert!(v.full("users", true).inbound.is_some());
    assert!(
        v.full("users", false).inbound.is_none(),
        "callers never see it"
    );
    // A policy change alone is a change for the own sidecars, not for callers.
    let mut changed = v.clone();
    changed.inbound.rules.clear();
    assert!(changed.diff("users", Some(&v), false).is_none());
    assert!(
        changed
            .diff("users", Some(&v), true)
            .is_some_and(|u| u.inbound.is_some())
    );
    c.remove_resource(
        crate::resource::Kind::AuthorizationPolicy,
        &crate::resource::Name::parse("p").expect("name"),
    );
    assert!(!view(&c, "users").inbound.authorization);
}
