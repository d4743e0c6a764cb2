//! Conversions between resources and their protobuf form (admin API, store,
//! and the policy pushed to sidecars). Protobuf in is validated like YAML in.

use weft_proto::labels::validate_labels;
use weft_proto::protocol::{InboundMode, LoadBalancer, Protocol};
use weft_proto::v1 as pb;

use super::resilience::{self, Resilience};
use super::{
    AuthorizationPolicySpec, AuthorizationRule, FieldError, HttpMatch, InvalidResources, Name,
    Resource, ServiceSpec, Subset, check_unique, validate_rule,
};

impl ServiceSpec {
    pub fn to_proto(&self) -> pb::ServiceSpec {
        pb::ServiceSpec {
            name: self.name.to_string(),
            protocol: self
                .protocol
                .map_or(pb::Protocol::Unspecified, Protocol::to_proto) as i32,
            load_balancer: self.load_balancer.to_proto() as i32,
            subsets: self
                .subsets
                .iter()
                .map(|s| pb::Subset {
                    name: s.name.to_string(),
                    labels: s
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                })
                .collect(),
            inbound_mode: self.inbound_mode.to_proto() as i32,
            retry: self.resilience.retry.clone(),
            timeouts: self.resilience.timeouts,
            circuit_breaker: self.resilience.circuit_breaker,
            hedge: self.resilience.hedge.clone(),
            fault: self.resilience.fault,
        }
    }

    /// Validates a protobuf service; errors carry proto field paths.
    pub fn from_proto(p: &pb::ServiceSpec) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let name = Name::parse(&p.name)
            .map_err(|e| errors.push(("name".into(), e.to_string())))
            .ok();
        let protocol = Protocol::from_proto(p.protocol)
            .map_err(|e| errors.push(("protocol".into(), e.to_string())))
            .ok()
            .flatten();
        let load_balancer = LoadBalancer::from_proto(p.load_balancer)
            .map_err(|e| errors.push(("load_balancer".into(), e.to_string())))
            .unwrap_or_default();
        let inbound_mode = InboundMode::from_proto(p.inbound_mode)
            .map_err(|e| errors.push(("inbound_mode".into(), e.to_string())))
            .unwrap_or_default();
        let mut subsets = Vec::new();
        for (i, s) in p.subsets.iter().enumerate() {
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Err(e) = validate_labels(&labels) {
                errors.push((format!("subsets[{i}].labels"), e.to_string()));
            }
            match Name::parse(&s.name) {
                Ok(name) => subsets.push(Subset { name, labels }),
                Err(e) => errors.push((format!("subsets[{i}].name"), e.to_string())),
            }
        }
        let resilience = Resilience {
            retry: p.retry.clone(),
            timeouts: p.timeouts,
            circuit_breaker: p.circuit_breaker,
            hedge: p.hedge.clone(),
            fault: p.fault,
        };
        errors.extend(resilience::validate(&resilience));
        match name {
            Some(name) if errors.is_empty() => Ok(ServiceSpec {
                name,
                protocol,
                load_balancer,
                subsets,
                inbound_mode,
                resilience,
            }),
            _ => Err(errors),
        }
    }
}

impl AuthorizationRule {
    pub fn to_proto(&self) -> pb::AuthorizationRule {
        pb::AuthorizationRule {
            from: self.from.clone(),
            grpc_methods: self.grpc_methods.clone(),
            http: self
                .http
                .iter()
                .map(|h| pb::HttpMatch {
                    methods: h.methods.clone(),
                    path_prefix: h.path_prefix.clone(),
                })
                .collect(),
        }
    }

    fn from_proto(p: &pb::AuthorizationRule) -> Self {
        AuthorizationRule {
            from: p.from.clone(),
            grpc_methods: p.grpc_methods.clone(),
            http: p
                .http
                .iter()
                .map(|h| HttpMatch {
                    methods: h.methods.clone(),
                    path_prefix: h.path_prefix.clone(),
                })
                .collect(),
        }
    }
}

impl AuthorizationPolicySpec {
    pub fn to_proto(&self) -> pb::AuthorizationPolicySpec {
        pb::AuthorizationPolicySpec {
            name: self.name.to_string(),
            service: self.service.to_string(),
            rules: self.rules.iter().map(AuthorizationRule::to_proto).collect(),
        }
    }

    /// Validates a protobuf policy; errors carry proto field paths.
    pub fn from_proto(p: &pb::AuthorizationPolicySpec) -> Result<Self, Vec<(String, String)>> {
        let mut errors = Vec::new();
        let name = Name::parse(&p.name)
            .map_err(|e| errors.push(("name".into(), e.to_string())))
            .ok();
        let service = Name::parse(&p.service)
            .map_err(|e| errors.push(("service".into(), e.to_string())))
            .ok();
        let rules: Vec<AuthorizationRule> =
            p.rules.iter().map(AuthorizationRule::from_proto).collect();
        for (i, r) in rules.iter().enumerate() {
            for (path, reason) in validate_rule(r) {
                errors.push((format!("rules[{i}].{path}"), reason));
            }
        }
        match (name, service) {
            (Some(name), Some(service)) if errors.is_empty() => Ok(AuthorizationPolicySpec {
                name,
                service,
                rules,
            }),
            _ => Err(errors),
        }
    }
}

impl Resource {
    pub fn to_proto(&self) -> pb::Resource {
        let kind = match self {
            Resource::Service(s) => pb::resource::Kind::Service(s.to_proto()),
            Resource::AuthorizationPolicy(p) => {
                pb::resource::Kind::AuthorizationPolicy(p.to_proto())
            }
        };
        pb::Resource { kind: Some(kind) }
    }

    /// Validates one protobuf resource; `index` is its place in the request.
    pub fn from_proto(index: usize, p: &pb::Resource) -> Result<Self, Vec<FieldError>> {
        let errs = |resource: String, prefix: &str, es: Vec<(String, String)>| {
            es.into_iter()
                .map(|(path, reason)| FieldError {
                    document: index,
                    resource: Some(resource.clone()),
                    path: format!("{prefix}.{path}"),
                    reason,
                })
                .collect::<Vec<_>>()
        };
        match &p.kind {
            None => Err(vec![FieldError {
                document: index,
                resource: None,
                path: "kind".into(),
                reason: "no resource kind set".into(),
            }]),
            Some(pb::resource::Kind::Service(s)) => ServiceSpec::from_proto(s)
                .map(Resource::Service)
                .map_err(|es| errs(format!("Service/{}", s.name), "service", es)),
            Some(pb::resource::Kind::AuthorizationPolicy(a)) => {
                AuthorizationPolicySpec::from_proto(a)
                    .map(Resource::AuthorizationPolicy)
                    .map_err(|es| {
                        errs(
                            format!("AuthorizationPolicy/{}", a.name),
                            "authorization_policy",
                            es,
                        )
                    })
            }
        }
    }
}

/// Validates every resource of a request; all or nothing.
pub fn resources_from_proto(ps: &[pb::Resource]) -> Result<Vec<Resource>, InvalidResources> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (i, p) in ps.iter().enumerate() {
        match Resource::from_proto(i, p) {
            Ok(r) => out.push(r),
            Err(es) => errors.extend(es),
        }
    }
    if !errors.is_empty() {
        return Err(InvalidResources(errors));
    }
    check_unique(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let text = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: a}\nspec:\n  protocol: http\n  inboundMode: permissive\n  subsets: [{name: v1, labels: {version: v1}}]\n---\napiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  service: a\n  rules:\n    - from: [b]\n      grpcMethods: [/x.Y/Z]\n      http: [{methods: [GET], pathPrefix: /users/}]\n";
        let rs = super::super::parse_documents(text).expect("valid");
        let ps: Vec<_> = rs.iter().map(Resource::to_proto).collect();
        assert_eq!(resources_from_proto(&ps).expect("valid"), rs);

        let mut bad = ps[0].clone();
        if let Some(pb::resource::Kind::Service(s)) = &mut bad.kind {
            s.name = "Bad Name".into();
            s.load_balancer = 99;
        }
        let e = resources_from_proto(&[bad]).expect_err("invalid");
        let text = e.to_string();
        assert!(
            text.contains("service.name") && text.contains("service.load_balancer"),
            "{text}"
        );
        assert!(resources_from_proto(&[pb::Resource { kind: None }]).is_err());

        let mut bad = ps[1].clone();
        if let Some(pb::resource::Kind::AuthorizationPolicy(a)) = &mut bad.kind {
            a.rules[0].from = vec![];
            a.rules[0].grpc_methods = vec!["GetUser".into()];
        }
        let text = resources_from_proto(&[bad])
            .expect_err("invalid")
            .to_string();
        assert!(
            text.contains("authorization_policy.rules[0].from")
                && text.contains("rules[0].grpcMethods[0]"),
            "{text}"
        );
    }
}
