//! What the control plane pushes and prints for a few example resources,
//! pinned while the resources still held the wire messages: the sidecars
//! must receive the same `weft.v1` messages, the store must keep the same
//! records and `weftctl get` must print the same text, whatever shape the
//! domain types take.

use weft_proto::v1 as pb;

use super::resources_from_proto;
use crate::resource::{parse_documents, to_yaml_documents};

/// Every field set (`FULL`'s first document), the zeros that mean "the
/// default" (`sparse`), zero percentages that still carry a setting
/// (`delays`), and a policy with wildcards.
const FULL: &str = r#"
apiVersion: weft.dev/v1
kind: Service
metadata: {name: users}
spec:
  protocol: grpc
  loadBalancer: round-robin
  inboundMode: permissive
  addresses: [10.96.0.10]
  opaquePorts: [3306]
  subsets:
    - name: v2
      labels: {version: v2, zone: a}
  retries:
    attempts: 3
    on: [unavailable, gateway-error, connect-failure, reset]
    perTryTimeout: 500ms
    backoff: {base: 20ms, max: 1500ms}
    budget: {ratio: 0.1, minPerSecond: 5}
    nonIdempotent: true
    maxReplayBytes: 1024
  timeouts: {request: 2s, idle: 5m}
  circuitBreaker:
    consecutiveFailures: 3
    baseEjection: 10s
    maxEjection: 2h
    maxEjectedPercent: 30
    maxConcurrentRequests: 100
    maxPendingRequests: 10
  hedging: {grpcMethods: ["/u.Users/Get*", "/u.Users/List"], delay: 15ms}
  faults:
    delay: {percent: 10, duration: 100ms}
    abort: {percent: 5, grpcStatus: 8, httpStatus: 429}
---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: sparse}
spec:
  retries: {budget: {ratio: 0}, backoff: {}}
  timeouts: {idle: 1h}
  circuitBreaker: {maxEjectedPercent: 0, consecutiveFailures: 0}
  hedging: {grpcMethods: ["*"]}
  faults: {abort: {percent: 0, grpcStatus: 0, httpStatus: 0}}
---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: delays}
spec:
  faults: {delay: {percent: 0, duration: 1s}, abort: {percent: 0, httpStatus: 503}}
---
apiVersion: weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: users-callers}
spec:
  service: users
  rules:
    - from: [orders, "*"]
      grpcMethods: ["/u.Users/*", "*"]
      http: [{methods: [GET, POST], pathPrefix: /users/}, {}]
    - from: [billing]
"#;

fn strings(s: &[&str]) -> Vec<String> {
    s.iter().map(|s| s.to_string()).collect()
}

fn service(spec: pb::ServiceSpec) -> pb::Resource {
    pb::Resource {
        kind: Some(pb::resource::Kind::Service(spec)),
    }
}

fn expected_wire() -> Vec<pb::Resource> {
    let users = pb::ServiceSpec {
        name: "users".into(),
        protocol: pb::Protocol::Grpc as i32,
        load_balancer: pb::LoadBalancer::RoundRobin as i32,
        subsets: vec![pb::Subset {
            name: "v2".into(),
            labels: [("version", "v2"), ("zone", "a")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }],
        inbound_mode: pb::InboundMode::Permissive as i32,
        retry: Some(pb::RetryPolicy {
            attempts: 3,
            on: strings(&["unavailable", "gateway-error", "connect-failure", "reset"]),
            per_try_timeout_ms: 500,
            backoff_base_ms: 20,
            backoff_max_ms: 1500,
            budget_ratio: 0.1,
            budget_min_per_second: 5,
            non_idempotent: true,
            max_replay_bytes: 1024,
        }),
        timeouts: Some(pb::TimeoutPolicy {
            request_ms: 2000,
            idle_ms: 300_000,
        }),
        circuit_breaker: Some(pb::CircuitBreakerPolicy {
            consecutive_failures: 3,
            base_ejection_ms: 10_000,
            max_ejection_ms: 7_200_000,
            max_ejected_percent: 30,
            max_concurrent_requests: 100,
            max_pending_requests: 10,
        }),
        hedge: Some(pb::HedgePolicy {
            grpc_methods: strings(&["/u.Users/Get*", "/u.Users/List"]),
            delay_ms: 15,
        }),
        fault: Some(pb::FaultPolicy {
            delay_percent: 10,
            delay_ms: 100,
            abort_percent: 5,
            abort_grpc_status: 8,
            abort_http_status: 429,
        }),
        rate_limit: None,
        addresses: strings(&["10.96.0.10"]),
        opaque_ports: vec![3306],
    };
    let sparse = pb::ServiceSpec {
        name: "sparse".into(),
        protocol: pb::Protocol::Unspecified as i32,
        load_balancer: pb::LoadBalancer::P2cEwma as i32,
        inbound_mode: pb::InboundMode::Strict as i32,
        retry: Some(pb::RetryPolicy::default()),
        timeouts: Some(pb::TimeoutPolicy {
            request_ms: 0,
            idle_ms: 3_600_000,
        }),
        circuit_breaker: Some(pb::CircuitBreakerPolicy::default()),
        hedge: Some(pb::HedgePolicy {
            grpc_methods: strings(&["*"]),
            delay_ms: 0,
        }),
        fault: Some(pb::FaultPolicy::default()),
        ..Default::default()
    };
    let delays = pb::ServiceSpec {
        name: "delays".into(),
        protocol: pb::Protocol::Unspecified as i32,
        load_balancer: pb::LoadBalancer::P2cEwma as i32,
        inbound_mode: pb::InboundMode::Strict as i32,
        fault: Some(pb::FaultPolicy {
            delay_percent: 0,
            delay_ms: 1000,
            abort_percent: 0,
            abort_grpc_status: 0,
            abort_http_status: 503,
        }),
        ..Default::default()
    };
    let policy = pb::AuthorizationPolicySpec {
        name: "users-callers".into(),
        service: "users".into(),
        rules: vec![
            pb::AuthorizationRule {
                from: strings(&["orders", "*"]),
                grpc_methods: strings(&["/u.Users/*", "*"]),
                http: vec![
                    pb::HttpMatch {
                        methods: strings(&["GET", "POST"]),
                        path_prefix: "/users/".into(),
                    },
                    pb::HttpMatch::default(),
                ],
            },
            pb::AuthorizationRule {
                from: strings(&["billing"]),
                ..Default::default()
            },
        ],
    };
    vec![
        service(users),
        service(sparse),
        service(delays),
        pb::Resource {
            kind: Some(pb::resource::Kind::AuthorizationPolicy(policy)),
        },
    ]
}

/// `weftctl get -o yaml` of `FULL`.
const PRINTED: &str = r#"apiVersion: "weft.dev/v1"
kind: "Service"
metadata:
  name: "users"
spec:
  addresses:
    - "10.96.0.10"
  circuitBreaker:
    baseEjection: "10s"
    consecutiveFailures: 3
    maxConcurrentRequests: 100
    maxEjectedPercent: 30
    maxEjection: "2h"
    maxPendingRequests: 10
  faults:
    abort:
      grpcStatus: 8
      httpStatus: 429
      percent: 5
    delay:
      duration: "100ms"
      percent: 10
  hedging:
    delay: "15ms"
    grpcMethods:
      - "/u.Users/Get*"
      - "/u.Users/List"
  inboundMode: "permissive"
  loadBalancer: "round-robin"
  opaquePorts:
    - 3306
  protocol: "grpc"
  retries:
    attempts: 3
    backoff:
      base: "20ms"
      max: "1500ms"
    budget:
      minPerSecond: 5
      ratio: 0.1
    maxReplayBytes: 1024
    nonIdempotent: true
    on:
      - "unavailable"
      - "gateway-error"
      - "connect-failure"
      - "reset"
    perTryTimeout: "500ms"
  subsets:
    - labels:
        version: "v2"
        zone: "a"
      name: "v2"
  timeouts:
    idle: "5m"
    request: "2s"
---
apiVersion: "weft.dev/v1"
kind: "Service"
metadata:
  name: "sparse"
spec:
  circuitBreaker: {}
  faults: {}
  hedging:
    grpcMethods:
      - "*"
  inboundMode: "strict"
  loadBalancer: "p2c-ewma"
  retries: {}
  timeouts:
    idle: "1h"
---
apiVersion: "weft.dev/v1"
kind: "Service"
metadata:
  name: "delays"
spec:
  faults:
    abort:
      httpStatus: 503
      percent: 0
    delay:
      duration: "1s"
      percent: 0
  inboundMode: "strict"
  loadBalancer: "p2c-ewma"
---
apiVersion: "weft.dev/v1"
kind: "AuthorizationPolicy"
metadata:
  name: "users-callers"
spec:
  rules:
    - from:
        - "orders"
        - "*"
      grpcMethods:
        - "/u.Users/*"
        - "*"
      http:
        - methods:
            - "GET"
            - "POST"
          pathPrefix: "/users/"
        - methods: []
          pathPrefix: ""
    - from:
        - "billing"
  service: "users"
"#;

#[test]
fn the_same_yaml_pushes_and_stores_the_same_messages() {
    let rs = parse_documents(FULL).expect("valid");
    let wire: Vec<pb::Resource> = rs.iter().map(pb::Resource::from).collect();
    assert_eq!(wire, expected_wire());
}

#[test]
fn the_same_messages_read_back_as_the_same_resources() {
    // The store's records and Admin.Apply requests come in as these.
    let rs = parse_documents(FULL).expect("valid");
    assert_eq!(resources_from_proto(&expected_wire()).expect("valid"), rs);
}

#[test]
fn the_same_yaml_prints_the_same_text() {
    let rs = parse_documents(FULL).expect("valid");
    assert_eq!(to_yaml_documents(&rs), PRINTED);
    assert_eq!(parse_documents(PRINTED).expect("reparses"), rs);
}

/// The one difference from the pinned behaviour: `retries.on` is a set, so
/// the order and repeats written are not kept; the sidecar always read it
/// as a set, so what it does is the same.
#[test]
fn retry_conditions_go_out_as_a_set() {
    let yaml = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  retries: {on: [reset, unavailable, reset]}\n";
    let rs = parse_documents(yaml).expect("valid");
    let Some(pb::resource::Kind::Service(s)) = pb::Resource::from(&rs[0]).kind else {
        panic!("a service")
    };
    assert_eq!(
        s.retry.map(|r| r.on),
        Some(strings(&["unavailable", "reset"]))
    );
    assert!(
        to_yaml_documents(&rs).contains("    on:\n      - \"unavailable\"\n      - \"reset\"\n"),
        "{}",
        to_yaml_documents(&rs)
    );
}
