//! A `Service`'s `spec` as users write it: protocol, load balancer, subsets,
//! inbound mode, the resilience settings (`resilience.rs` here) and the
//! local rate limit its own sidecars enforce (`rateLimit`), and what
//! transparent interception maps to it (`addresses`, `opaquePorts`).

use serde::Deserialize;
use serde_json::Value;
use weft_proto::labels::{Labels, validate_labels};
use weft_proto::protocol::{InboundMode, LoadBalancer, Protocol};
use weft_proto::routing::RateKey;

use super::edge::rate_limit;
use super::resilience::{RawBreaker, RawFaults, RawHedge, RawResilience, RawRetries, RawTimeouts};
use super::{DocErrors, typed};
use crate::resource::{Name, ServiceSpec, Subset};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServiceSpec {
    protocol: Option<String>,
    load_balancer: Option<String>,
    inbound_mode: Option<String>,
    // Listed rather than a flattened `RawResilience`: serde cannot deny
    // unknown fields through a flatten.
    retries: Option<RawRetries>,
    timeouts: Option<RawTimeouts>,
    circuit_breaker: Option<RawBreaker>,
    hedging: Option<RawHedge>,
    faults: Option<RawFaults>,
    #[serde(default)]
    subsets: Vec<RawSubset>,
    rate_limit: Option<RawServiceRateLimit>,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    opaque_ports: Vec<u32>,
}

/// `requests` per `period` (up to `burst` at once), for all callers
/// together or, with `perCaller`, for each caller identity.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawServiceRateLimit {
    requests: u32,
    period: String,
    burst: Option<u32>,
    #[serde(default)]
    per_caller: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubset {
    name: String,
    #[serde(default)]
    labels: Labels,
}

/// The spec of `Service/name`, or `None` with every problem pushed to `errs`.
pub(super) fn parse(name: Name, spec: Value, errs: &mut DocErrors<'_>) -> Option<ServiceSpec> {
    let raw: RawServiceSpec = match typed(spec, "spec") {
        Ok(r) => r,
        Err((path, reason)) => {
            errs.push(path, reason);
            return None;
        }
    };
    let before = errs.count();
    let protocol = match raw.protocol.as_deref() {
        None => None,
        Some(p) => Protocol::parse(p)
            .map_err(|e| errs.push("spec.protocol", e))
            .ok(),
    };
    let load_balancer = match raw.load_balancer.as_deref() {
        None => LoadBalancer::default(),
        Some(lb) => LoadBalancer::parse(lb).unwrap_or_else(|e| {
            errs.push("spec.loadBalancer", e);
            LoadBalancer::default()
        }),
    };
    let subsets = subsets(raw.subsets, errs);
    let inbound_mode = match raw.inbound_mode.as_deref() {
        None => InboundMode::default(),
        Some(m) => InboundMode::parse(m).unwrap_or_else(|e| {
            errs.push("spec.inboundMode", e);
            InboundMode::default()
        }),
    };
    let resilience = RawResilience {
        retries: raw.retries,
        timeouts: raw.timeouts,
        circuit_breaker: raw.circuit_breaker,
        hedging: raw.hedging,
        faults: raw.faults,
    }
    .parse(errs);
    let rate_limit = raw.rate_limit.and_then(|r| {
        let key = if r.per_caller {
            RateKey::Caller
        } else {
            RateKey::All
        };
        rate_limit("spec.rateLimit", r.requests, &r.period, r.burst, key, errs)
    });
    let mut problems = Vec::new();
    let addresses =
        crate::resource::check_addresses(&raw.addresses, "spec.addresses", &mut problems);
    let opaque_ports =
        crate::resource::check_ports(&raw.opaque_ports, "spec.opaquePorts", &mut problems);
    for (path, reason) in problems {
        errs.push(path, reason);
    }
    (errs.count() == before).then_some(ServiceSpec {
        name,
        protocol,
        load_balancer,
        subsets,
        inbound_mode,
        resilience: resilience?,
        rate_limit,
        addresses,
        opaque_ports,
    })
}

fn subsets(raw: Vec<RawSubset>, errs: &mut DocErrors<'_>) -> Vec<Subset> {
    let mut subsets = Vec::new();
    for (i, s) in raw.into_iter().enumerate() {
        let name = match Name::parse(&s.name) {
            Ok(n) => n,
            Err(e) => {
                errs.push(format!("spec.subsets[{i}].name"), e);
                continue;
            }
        };
        if subsets.iter().any(|x: &Subset| x.name == name) {
            errs.push(
                format!("spec.subsets[{i}].name"),
                format!("subset {name} is defined twice"),
            );
        }
        if let Err(e) = validate_labels(&s.labels) {
            errs.push(format!("spec.subsets[{i}].labels"), e);
        }
        if s.labels.is_empty() {
            errs.push(
                format!("spec.subsets[{i}].labels"),
                "a subset needs at least one label to select instances",
            );
        }
        subsets.push(Subset {
            name,
            labels: s.labels,
        });
    }
    subsets
}
