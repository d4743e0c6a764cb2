//! An `AuthorizationPolicy`'s `spec` as users write it: the service and its
//! allow rules, checked by `AuthorizationRule::parse`.

use serde::Deserialize;
use serde_json::Value;

use super::{DocErrors, typed};
use crate::resource::{AuthorizationPolicySpec, AuthorizationRule, Name, RawHttpMatch, RawRule};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicySpec {
    service: String,
    rules: Vec<RawRuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRuleSpec {
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

/// The spec of `AuthorizationPolicy/name`, or `None` with every problem
/// pushed to `errs`.
pub(super) fn parse(
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
    let before = errs.count();
    let service = Name::parse(&raw.service)
        .map_err(|e| errs.push("spec.service", e))
        .ok();
    let mut rules = Vec::with_capacity(raw.rules.len());
    for (i, r) in raw.rules.iter().enumerate() {
        let http: Vec<RawHttpMatch<'_>> = r
            .http
            .iter()
            .map(|h| RawHttpMatch {
                methods: &h.methods,
                path_prefix: &h.path_prefix,
            })
            .collect();
        let rule = AuthorizationRule::parse(RawRule {
            from: &r.from,
            grpc_methods: &r.grpc_methods,
            http: &http,
        });
        match rule {
            Ok(rule) => rules.push(rule),
            Err(es) => {
                for (path, e) in es {
                    errs.push(format!("spec.rules[{i}].{path}"), e);
                }
            }
        }
    }
    (errs.count() == before).then_some(AuthorizationPolicySpec {
        name,
        service: service?,
        rules,
    })
}
