//! The YAML form of resources, as users write them for `weftctl apply`:
//!
//! ```yaml
//! apiVersion: weft.dev/v1
//! kind: Service
//! metadata:
//!   name: user-service
//! spec:
//!   protocol: grpc            # grpc | http | tcp
//!   loadBalancer: p2c-ewma    # p2c-ewma | round-robin
//!   subsets:
//!     - name: v2
//!       labels: {version: v2}
//! ```
//!
//! Routes and gateways are written as the Kubernetes Gateway API writes
//! them, under its `apiVersion: gateway.networking.k8s.io/v1` (or
//! `weft.dev/v1`).
//!
//! A file is parsed whole into the validated resource types; every problem
//! is reported with its document, field path and reason, and a file with
//! any problem yields no resources at all. This module reads the document
//! around a spec; each kind's spec has its own file.

mod edge;
mod gateway;
mod policy;
mod resilience;
mod route;
mod service;

use serde::Deserialize;
use serde_json::{Map, Value};

use weft_proto::routing::RouteKind;

use super::{FieldError, InvalidResources, Kind, Name, Resource, check_unique};

pub const API_VERSION: &str = "weft.dev/v1";
/// The Gateway API's, which `HTTPRoute`, `GRPCRoute` and `Gateway` are
/// written in.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDocument {
    api_version: String,
    kind: String,
    metadata: RawMetadata,
    #[serde(default)]
    spec: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    name: String,
}

/// Collects the errors of one document.
struct DocErrors<'a> {
    document: usize,
    resource: Option<String>,
    errors: &'a mut Vec<FieldError>,
}

impl DocErrors<'_> {
    /// How many problems the file has so far: a part is good when parsing
    /// it added none.
    fn count(&self) -> usize {
        self.errors.len()
    }

    fn push(&mut self, path: impl Into<String>, reason: impl ToString) {
        self.errors.push(FieldError {
            document: self.document,
            resource: self.resource.clone(),
            path: path.into(),
            reason: reason.to_string(),
        });
    }
}

/// Deserializes `value` into `T`, reporting the failing field's path under `prefix`.
fn typed<T: for<'de> Deserialize<'de>>(value: Value, prefix: &str) -> Result<T, (String, String)> {
    serde_path_to_error::deserialize::<_, T>(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner.as_str()) {
            (_, ".") => prefix.to_string(),
            (true, _) => inner,
            (false, _) => format!("{prefix}.{inner}"),
        };
        (path, e.into_inner().to_string())
    })
}

/// Parses a YAML file of one or more `---`-separated documents.
pub fn parse_documents(text: &str) -> Result<Vec<Resource>, InvalidResources> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        InvalidResources(vec![FieldError {
            document: 1,
            resource: None,
            path: String::new(),
            reason: format!("not valid YAML: {e}"),
        }])
    })?;
    let mut errors = Vec::new();
    let mut resources = Vec::new();
    if docs.is_empty() {
        errors.push(FieldError {
            document: 1,
            resource: None,
            path: String::new(),
            reason: "the file holds no documents".into(),
        });
    }
    for (i, doc) in docs.into_iter().enumerate() {
        if let Some(r) = parse_document(i + 1, doc, &mut errors) {
            resources.push(r);
        }
    }
    if !errors.is_empty() {
        return Err(InvalidResources(errors));
    }
    check_unique(&resources)?;
    Ok(resources)
}

fn parse_document(document: usize, doc: Value, errors: &mut Vec<FieldError>) -> Option<Resource> {
    let mut errs = DocErrors {
        document,
        resource: None,
        errors,
    };
    if !doc.is_object() {
        errs.push(
            "",
            "a document must be a mapping with apiVersion, kind, metadata and spec",
        );
        return None;
    }
    let raw: RawDocument = match typed(doc, "") {
        Ok(r) => r,
        Err((path, reason)) => {
            errs.push(path, reason);
            return None;
        }
    };
    errs.resource = Some(format!("{}/{}", raw.kind, raw.metadata.name));
    let kind = match raw.kind.as_str() {
        "Service" => Kind::Service,
        "AuthorizationPolicy" => Kind::AuthorizationPolicy,
        "HTTPRoute" => Kind::HttpRoute,
        "GRPCRoute" => Kind::GrpcRoute,
        "Gateway" => Kind::Gateway,
        other => {
            errs.push(
                "kind",
                format!("unknown kind {other:?}, expected one of {}", Kind::CHOICES),
            );
            return None;
        }
    };
    let route = match kind {
        Kind::HttpRoute => Some(RouteKind::Http),
        Kind::GrpcRoute => Some(RouteKind::Grpc),
        Kind::Service | Kind::AuthorizationPolicy | Kind::Gateway => None,
    };
    let mut ok = true;
    let in_gateway_api = route.is_some() || kind == Kind::Gateway;
    let gateway_api = in_gateway_api && raw.api_version == GATEWAY_API_VERSION;
    if raw.api_version != API_VERSION && !gateway_api {
        let expected = if in_gateway_api {
            format!("{GATEWAY_API_VERSION} or {API_VERSION}")
        } else {
            API_VERSION.to_string()
        };
        errs.push(
            "apiVersion",
            format!("unsupported {:?}, expected {expected}", raw.api_version),
        );
        ok = false;
    }
    let name = match Name::parse(&raw.metadata.name) {
        Ok(n) => Some(n),
        Err(e) => {
            errs.push("metadata.name", e);
            None
        }
    };
    let spec = if raw.spec.is_null() {
        Value::Object(Map::new())
    } else {
        raw.spec
    };
    let name = name.filter(|_| ok)?;
    match (kind, route) {
        (_, Some(route)) => {
            route::parse(name, route, spec, &mut errs).map(|r| Resource::Route(Box::new(r)))
        }
        (Kind::Service, None) => {
            service::parse(name, spec, &mut errs).map(|s| Resource::Service(Box::new(s)))
        }
        (Kind::Gateway, None) => gateway::parse(name, spec, &mut errs).map(Resource::Gateway),
        (_, None) => policy::parse(name, spec, &mut errs).map(Resource::AuthorizationPolicy),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weft_proto::grpc::GrpcCode;
    use weft_proto::protocol::{LoadBalancer, Protocol};

    use super::*;
    use crate::resource::to_yaml_documents;

    const GOOD: &str = r#"
apiVersion: weft.dev/v1
kind: Service
metadata:
  name: user-service
spec:
  protocol: grpc
  loadBalancer: round-robin
  subsets:
    - name: v2
      labels: {version: v2}
---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: order-service}
"#;

    #[test]
    fn parses_good_file() {
        let rs = parse_documents(GOOD).expect("valid");
        assert_eq!(rs.len(), 2);
        let Resource::Service(s) = &rs[0] else {
            panic!("a service")
        };
        assert_eq!(s.name.as_str(), "user-service");
        assert_eq!(s.protocol, Some(Protocol::Grpc));
        assert_eq!(s.load_balancer, LoadBalancer::RoundRobin);
        assert_eq!(
            s.subsets[0].labels.get("version").map(String::as_str),
            Some("v2")
        );
        let Resource::Service(o) = &rs[1] else {
            panic!("a service")
        };
        assert_eq!(o.protocol, None);
        assert_eq!(o.load_balancer, LoadBalancer::P2cEwma);
    }

    #[test]
    fn interception_addresses_are_checked_and_kept() {
        let text = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  \
                    addresses: [10.96.0.10, \"fd00::10\"]\n  opaquePorts: [3306]\n";
        let rs = parse_documents(text).expect("valid");
        let Resource::Service(s) = &rs[0] else {
            panic!("a service")
        };
        assert_eq!(s.addresses.len(), 2);
        assert_eq!(s.opaque_ports, [3306]);
        assert_eq!(
            parse_documents(&to_yaml_documents(&rs)).expect("reparse"),
            rs
        );
        let e = errors(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  \
             addresses: [10.96.0.10, 10.96.0.10, nope, 127.0.0.1]\n  opaquePorts: [0, 70000]\n",
        );
        let all = e.join("\n");
        for want in [
            "spec.addresses[1]: 10.96.0.10 is listed twice",
            "spec.addresses[2]: \"nope\" is not an IP address",
            "spec.addresses[3]: 127.0.0.1 cannot be a service address",
            "spec.opaquePorts[0]: 0 is not a port",
            "spec.opaquePorts[1]: 70000 is not a port",
        ] {
            assert!(all.contains(want), "{want:?} not in:\n{all}");
        }
    }

    #[test]
    fn round_trips_through_yaml() {
        let rs = parse_documents(GOOD).expect("valid");
        let text = to_yaml_documents(&rs);
        assert_eq!(parse_documents(&text).expect("reparse"), rs, "{text}");
    }

    fn errors(text: &str) -> Vec<String> {
        parse_documents(text)
            .expect_err("must be rejected")
            .0
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn reports_document_path_and_reason() {
        let e = errors(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {protocol: grpc}\n---\n\
             apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: b}\nspec:\n  loadBalancer: random\n",
        );
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with(
                "document 2 (Service/b): spec.loadBalancer: unknown load balancer \"random\""
            ),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_field_is_named() {
        let e = errors(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {protcol: grpc}\n",
        );
        assert!(
            e[0].contains("spec") && e[0].contains("unknown field `protcol`"),
            "{e:?}"
        );
        let e = errors(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  subsets:\n    - name: v1\n      labels: {version: 2, x: [1]}\n",
        );
        assert!(e[0].contains("spec.subsets[0].labels"), "{e:?}");
    }

    #[test]
    fn other_errors() {
        assert!(errors("kind: Service\n")[0].contains("missing field `apiVersion`"));
        assert!(
            errors("apiVersion: v0\nkind: Service\nmetadata: {name: a}\n")[0]
                .contains("apiVersion")
        );
        assert!(
            errors("apiVersion: weft.dev/v1\nkind: Route\nmetadata: {name: a}\n")[0]
                .contains("unknown kind")
        );
        assert!(
            errors("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: A_b}\n")[0]
                .contains("metadata.name")
        );
        assert!(errors("a: [unclosed\n")[0].contains("not valid YAML"));
        assert!(errors("")[0].contains("no documents"));
        assert!(errors("- 1\n- 2\n")[0].contains("must be a mapping"));
        let dup = errors(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\n",
        );
        assert!(dup[0].contains("duplicate of document 1"), "{dup:?}");
    }

    #[test]
    fn authorization_policies() {
        let text = "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: users-callers}\nspec:\n  service: users\n  rules:\n    - from: [orders, \"*\"]\n      grpcMethods: [\"/restaurant.v1.UserService/*\"]\n      http: [{methods: [GET], pathPrefix: /users/}]\n";
        let rs = parse_documents(text).expect("valid");
        let Resource::AuthorizationPolicy(p) = &rs[0] else {
            panic!("a policy")
        };
        assert_eq!(p.service.as_str(), "users");
        assert_eq!(p.rules[0].http()[0].path_prefix(), "/users/");
        assert_eq!(
            parse_documents(&to_yaml_documents(&rs)).expect("reparse"),
            rs
        );
        let e = errors(
            "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  service: users\n  rules:\n    - from: []\n      http: [{methods: [get], pathPrefix: users}]\n",
        );
        let all = e.join("\n");
        assert!(all.contains("spec.rules[0].from"), "{all}");
        assert!(all.contains("spec.rules[0].http[0].methods[0]"), "{all}");
        assert!(all.contains("spec.rules[0].http[0].pathPrefix"), "{all}");
        assert!(errors("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec: {inboundMode: loose}\n")[0].contains("spec.inboundMode"));
    }

    #[test]
    fn resilience_settings_round_trip_and_are_checked() {
        let text = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec:\n  retries:\n    attempts: 3\n    on: [unavailable, reset]\n    perTryTimeout: 500ms\n    backoff: {base: 20ms, max: 1s}\n    budget: {ratio: 0.1, minPerSecond: 5}\n    nonIdempotent: true\n  timeouts: {request: 2s, idle: 5m}\n  circuitBreaker: {consecutiveFailures: 3, baseEjection: 10s, maxEjectedPercent: 30, maxConcurrentRequests: 100}\n  hedging: {grpcMethods: [\"/u.Users/Get*\"], delay: 15ms}\n  faults: {delay: {percent: 10, duration: 100ms}, abort: {percent: 5, grpcStatus: 14}}\n";
        let rs = parse_documents(text).expect("valid");
        let Resource::Service(s) = &rs[0] else {
            panic!("a service")
        };
        let r = s.resilience.retry.as_ref().expect("retries");
        assert_eq!(
            (
                r.attempts.map(|a| a.get()),
                r.per_try_timeout,
                r.backoff.max()
            ),
            (
                Some(3),
                Some(Duration::from_millis(500)),
                Some(Duration::from_secs(1))
            )
        );
        assert_eq!(
            s.resilience.timeouts.map(|t| (t.request, t.idle)),
            Some((Some(Duration::from_secs(2)), Some(Duration::from_secs(300))))
        );
        assert_eq!(
            s.resilience
                .fault
                .and_then(|f| f.abort)
                .and_then(|a| a.grpc_status),
            Some(GrpcCode::Unavailable)
        );
        assert_eq!(
            parse_documents(&to_yaml_documents(&rs)).expect("reparse"),
            rs
        );

        let e = errors("apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  retries: {attempts: 0, on: [sometimes], perTryTimeout: soon, budget: {ratio: 2}}\n  faults: {abort: {percent: 120, httpStatus: 200}}\n").join("\n");
        for path in [
            "spec.retries.attempts",
            "spec.retries.on[0]",
            "spec.retries.perTryTimeout",
            "spec.retries.budget.ratio",
            "spec.faults.abort.percent",
            "spec.faults.abort.httpStatus",
        ] {
            assert!(e.contains(path), "{path} missing in:\n{e}");
        }
    }

    #[test]
    fn every_resilience_problem_is_named_with_its_path_and_reason() {
        let e = errors(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  retries: {attempts: 11, backoff: {base: 2s, max: 1s}}\n  timeouts: {request: 0s, idle: \"5\"}\n  circuitBreaker: {baseEjection: 2m, maxEjection: 1m, maxEjectedPercent: 101}\n  hedging: {grpcMethods: [], delay: 0ms}\n  faults: {delay: {percent: 101, duration: 1s}, abort: {percent: 1, grpcStatus: 17}}\n",
        );
        assert_eq!(
            e,
            [
                "document 1 (Service/a): spec.retries.attempts: at most 10 tries",
                "document 1 (Service/a): spec.retries.backoff: base must not exceed max",
                "document 1 (Service/a): spec.timeouts.request: must be more than 0",
                "document 1 (Service/a): spec.timeouts.idle: \"5\" needs a unit: ms, s, m or h (e.g. 10s)",
                "document 1 (Service/a): spec.circuitBreaker.maxEjectedPercent: at most 100",
                "document 1 (Service/a): spec.circuitBreaker: baseEjection must not exceed maxEjection",
                "document 1 (Service/a): spec.hedging.delay: must be more than 0",
                "document 1 (Service/a): spec.hedging.grpcMethods: name the idempotent methods to hedge",
                "document 1 (Service/a): spec.faults.delay.percent: a percentage, at most 100",
                "document 1 (Service/a): spec.faults.abort.grpcStatus: a gRPC status code, 1 to 16",
            ]
        );
    }
}
