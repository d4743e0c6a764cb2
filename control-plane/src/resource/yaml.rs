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
//! A file is parsed and validated whole; every problem is reported with its
//! document, field path and reason, and a file with any problem yields no
//! resources at all.

use serde::Deserialize;
use serde_json::{Map, Value};
use weft_proto::labels::{Labels, validate_labels};
use weft_proto::protocol::{InboundMode, LoadBalancer, Protocol};

use super::resilience;
use super::{
    AuthorizationPolicySpec, AuthorizationRule, FieldError, HttpMatch, InvalidResources, Kind,
    Name, Resource, ServiceSpec, Subset, check_unique, validate_rule,
};

pub const API_VERSION: &str = "weft.dev/v1";

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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServiceSpec {
    protocol: Option<String>,
    load_balancer: Option<String>,
    inbound_mode: Option<String>,
    retries: Option<resilience::RawRetries>,
    timeouts: Option<resilience::RawTimeouts>,
    circuit_breaker: Option<resilience::RawBreaker>,
    hedging: Option<resilience::RawHedge>,
    faults: Option<resilience::RawFaults>,
    #[serde(default)]
    subsets: Vec<RawSubset>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubset {
    name: String,
    #[serde(default)]
    labels: Labels,
}

/// Collects the errors of one document.
struct DocErrors<'a> {
    document: usize,
    resource: Option<String>,
    errors: &'a mut Vec<FieldError>,
}

impl DocErrors<'_> {
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
    let mut ok = true;
    if raw.api_version != API_VERSION {
        errs.push(
            "apiVersion",
            format!("unsupported {:?}, expected {API_VERSION}", raw.api_version),
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
    let kind = match raw.kind.as_str() {
        "Service" => Kind::Service,
        "AuthorizationPolicy" => Kind::AuthorizationPolicy,
        other => {
            errs.push(
                "kind",
                format!("unknown kind {other:?}, expected one of {}", Kind::CHOICES),
            );
            return None;
        }
    };
    let spec = if raw.spec.is_null() {
        Value::Object(Map::new())
    } else {
        raw.spec
    };
    let name = name.filter(|_| ok)?;
    match kind {
        Kind::Service => parse_service_spec(name, spec, &mut errs).map(Resource::Service),
        Kind::AuthorizationPolicy => {
            parse_policy_spec(name, spec, &mut errs).map(Resource::AuthorizationPolicy)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicySpec {
    service: String,
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRule {
    from: Vec<String>,
    #[serde(default)]
    grpc_methods: Vec<String>,
    #[serde(default)]
    http: Vec<RawHttp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHttp {
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    path_prefix: String,
}

fn parse_policy_spec(
    name: Name,
    spec: Value,
    errs: &mut DocErrors<'_>,
) -> Option<AuthorizationPolicySpec> {
    let raw: RawPolicySpec = match typed(spec, "spec") {
        Ok(r) => r,
        Err((path, reason)) => {
            errs.push(path, reason);
            return None;
        }
    };
    let mut ok = true;
    let service = Name::parse(&raw.service)
        .map_err(|e| {
            errs.push("spec.service", e);
            ok = false;
        })
        .ok();
    let rules: Vec<AuthorizationRule> = raw
        .rules
        .into_iter()
        .map(|r| AuthorizationRule {
            from: r.from,
            grpc_methods: r.grpc_methods,
            http: r
                .http
                .into_iter()
                .map(|h| HttpMatch {
                    methods: h.methods,
                    path_prefix: h.path_prefix,
                })
                .collect(),
        })
        .collect();
    for (i, r) in rules.iter().enumerate() {
        for (path, reason) in validate_rule(r) {
            errs.push(format!("spec.rules[{i}].{path}"), reason);
            ok = false;
        }
    }
    let service = service?;
    ok.then_some(AuthorizationPolicySpec {
        name,
        service,
        rules,
    })
}

fn parse_service_spec(name: Name, spec: Value, errs: &mut DocErrors<'_>) -> Option<ServiceSpec> {
    let raw: RawServiceSpec = match typed(spec, "spec") {
        Ok(r) => r,
        Err((path, reason)) => {
            errs.push(path, reason);
            return None;
        }
    };
    let mut ok = true;
    let protocol = match raw.protocol.as_deref() {
        None => None,
        Some(p) => match Protocol::parse(p) {
            Ok(p) => Some(p),
            Err(e) => {
                errs.push("spec.protocol", e);
                ok = false;
                None
            }
        },
    };
    let load_balancer = match raw.load_balancer.as_deref() {
        None => LoadBalancer::default(),
        Some(lb) => LoadBalancer::parse(lb).unwrap_or_else(|e| {
            errs.push("spec.loadBalancer", e);
            ok = false;
            LoadBalancer::default()
        }),
    };
    let mut subsets = Vec::new();
    for (i, s) in raw.subsets.into_iter().enumerate() {
        let name = match Name::parse(&s.name) {
            Ok(n) => n,
            Err(e) => {
                errs.push(format!("spec.subsets[{i}].name"), e);
                ok = false;
                continue;
            }
        };
        if subsets.iter().any(|x: &Subset| x.name == name) {
            errs.push(
                format!("spec.subsets[{i}].name"),
                format!("subset {name} is defined twice"),
            );
            ok = false;
        }
        if let Err(e) = validate_labels(&s.labels) {
            errs.push(format!("spec.subsets[{i}].labels"), e);
            ok = false;
        }
        if s.labels.is_empty() {
            errs.push(
                format!("spec.subsets[{i}].labels"),
                "a subset needs at least one label to select instances",
            );
            ok = false;
        }
        subsets.push(Subset {
            name,
            labels: s.labels,
        });
    }
    let inbound_mode = match raw.inbound_mode.as_deref() {
        None => InboundMode::default(),
        Some(m) => InboundMode::parse(m).unwrap_or_else(|e| {
            errs.push("spec.inboundMode", e);
            ok = false;
            InboundMode::default()
        }),
    };
    let raw_resilience = resilience::RawResilience {
        retries: raw.retries,
        timeouts: raw.timeouts,
        circuit_breaker: raw.circuit_breaker,
        hedging: raw.hedging,
        faults: raw.faults,
    };
    let resilience = match raw_resilience.convert() {
        Ok(r) => r,
        Err(es) => {
            for (path, reason) in es {
                errs.push(format!("spec.{path}"), reason);
            }
            ok = false;
            Default::default()
        }
    };
    ok.then_some(ServiceSpec {
        name,
        protocol,
        load_balancer,
        subsets,
        inbound_mode,
        resilience,
    })
}

#[cfg(test)]
mod tests {
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
        assert_eq!(p.rules[0].http[0].path_prefix, "/users/");
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
            (r.attempts, r.per_try_timeout_ms, r.backoff_max_ms),
            (3, 500, 1000)
        );
        assert_eq!(
            s.resilience
                .timeouts
                .as_ref()
                .map(|t| (t.request_ms, t.idle_ms)),
            Some((2000, 300_000))
        );
        assert_eq!(
            s.resilience.fault.as_ref().map(|f| f.abort_grpc_status),
            Some(14)
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
}
