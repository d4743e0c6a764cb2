//! The static mesh file (`--config`), for running a sidecar without a
//! control plane:
//!
//! ```yaml
//! services:
//!   - name: user-service
//!     protocol: grpc              # grpc | http | tcp (default grpc)
//!     loadBalancer: round-robin   # p2c-ewma | round-robin (default p2c-ewma)
//!     endpoints:
//!       - address: 10.0.0.5:15006
//!         id: user-1              # default: the address
//!         labels: {version: v1}
//!         weight: 1
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use weft_proto::labels::{Labels, validate_labels};
use weft_proto::name::{ServiceName, validate_address};
use weft_proto::protocol::{LoadBalancer, Protocol};

use crate::model::{EndpointSpec, Health, ServicePolicy, ServiceState};

#[derive(Debug, thiserror::Error)]
pub enum StaticFileError {
    #[error("--config {path}: cannot read: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("--config {path}: {problem}")]
    Invalid { path: PathBuf, problem: FileProblem },
}

/// What is wrong in the file, and where (`services[0].endpoints[1].address`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path_in_file}: {reason}")]
pub struct FileProblem {
    pub path_in_file: String,
    pub reason: String,
}

/// A problem at `path_in_file`.
fn at(path_in_file: String, reason: impl ToString) -> FileProblem {
    FileProblem {
        path_in_file,
        reason: reason.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    services: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawService {
    name: String,
    protocol: Option<String>,
    load_balancer: Option<String>,
    #[serde(default)]
    endpoints: Vec<RawEndpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    address: String,
    id: Option<String>,
    #[serde(default)]
    labels: Labels,
    weight: Option<u32>,
}

pub fn load_static_file(path: &Path) -> Result<Vec<(ServiceName, ServiceState)>, StaticFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| StaticFileError::Read {
        path: path.to_owned(),
        error,
    })?;
    parse_static(&text).map_err(|problem| StaticFileError::Invalid {
        path: path.to_owned(),
        problem,
    })
}

/// Parses the file's text; a problem names the field.
pub fn parse_static(text: &str) -> Result<Vec<(ServiceName, ServiceState)>, FileProblem> {
    let value: serde_json::Value = serde_saphyr::from_str(text)
        .map_err(|e| at("(file)".into(), format!("not valid YAML: {e}")))?;
    let raw: RawFile = serde_path_to_error::deserialize(value)
        .map_err(|e| at(e.path().to_string(), e.into_inner()))?;
    let mut out: Vec<(ServiceName, ServiceState)> = Vec::new();
    for (i, s) in raw.services.into_iter().enumerate() {
        let field = |f: &str| format!("services[{i}].{f}");
        let name = ServiceName::parse(&s.name).map_err(|e| at(field("name"), e))?;
        if out.iter().any(|(n, _)| n == &name) {
            return Err(at(field("name"), format!("service {name} is listed twice")));
        }
        let protocol = match s.protocol.as_deref() {
            None => Protocol::Grpc,
            Some(p) => Protocol::parse(p).map_err(|e| at(field("protocol"), e))?,
        };
        let balance = match s.load_balancer.as_deref() {
            None => LoadBalancer::default(),
            Some(b) => LoadBalancer::parse(b).map_err(|e| at(field("loadBalancer"), e))?,
        };
        let mut endpoints = BTreeMap::new();
        for (j, e) in s.endpoints.into_iter().enumerate() {
            let field = |f: &str| format!("services[{i}].endpoints[{j}].{f}");
            validate_address(&e.address).map_err(|r| at(field("address"), r))?;
            validate_labels(&e.labels).map_err(|r| at(field("labels"), r))?;
            let id: Arc<str> = e.id.unwrap_or_else(|| e.address.clone()).into();
            if endpoints.contains_key(&id) {
                return Err(at(field("id"), format!("endpoint {id} is listed twice")));
            }
            let weight = e.weight.unwrap_or(1);
            if weight == 0 {
                return Err(at(field("weight"), "must be at least 1"));
            }
            endpoints.insert(
                id.clone(),
                EndpointSpec {
                    id,
                    addr: e.address.into(),
                    labels: e.labels,
                    health: Health::Unknown,
                    weight,
                },
            );
        }
        out.push((
            name,
            ServiceState {
                policy: ServicePolicy {
                    protocol,
                    balance,
                    subsets: Vec::new(),
                    resilience: Default::default(),
                },
                endpoints,
                routes: Vec::new(),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        let s = parse_static(
            "services:\n  - name: user-service\n    loadBalancer: round-robin\n    endpoints:\n      - address: 127.0.0.1:1\n        labels: {version: v1}\n",
        )
        .expect("valid");
        assert_eq!(s[0].0.as_str(), "user-service");
        assert_eq!(s[0].1.policy.balance, LoadBalancer::RoundRobin);
        assert_eq!(s[0].1.endpoints.len(), 1);

        let e = parse_static("services:\n  - name: a\n    endpoints:\n      - address: nope\n")
            .expect_err("bad");
        assert_eq!(e.path_in_file, "services[0].endpoints[0].address");
        let e = parse_static("services:\n  - name: a\n    protcol: grpc\n").expect_err("bad");
        assert!(e.reason.contains("unknown field"), "{e:?}");
        let e = parse_static("services:\n  - name: a\n    protocol: udp\n").expect_err("bad");
        assert_eq!(e.path_in_file, "services[0].protocol");
    }
}
