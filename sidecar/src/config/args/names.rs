//! Who this sidecar is: its service, its app's protocol, its instance id
//! and its labels, checked by the same rules the control plane applies.

use clap::Args;
use weft_proto::labels::{Labels, parse_label};
use weft_proto::name::{ServiceName, validate_instance_id};
use weft_proto::protocol::Protocol;

use crate::config::ConfigError;

#[derive(Debug, Args)]
pub struct NameArgs {
    /// The service this sidecar runs beside, e.g. order-service.
    #[arg(long, env = "WEFT_SERVICE")]
    pub service: String,

    /// The local app's protocol: grpc, http or tcp.
    #[arg(long, env = "WEFT_PROTOCOL", default_value = "grpc")]
    pub protocol: String,

    /// This instance's id; defaults to SERVICE-<random>.
    #[arg(long, env = "WEFT_INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// A label of this instance, k=v (e.g. version=v2). Repeatable.
    #[arg(long = "label", env = "WEFT_LABELS", value_delimiter = ',')]
    pub labels: Vec<String>,
}

/// Who this sidecar is, validated.
pub(super) struct Names {
    pub service: ServiceName,
    pub protocol: Protocol,
    pub instance_id: String,
    pub labels: Labels,
}

impl NameArgs {
    pub(super) fn validate(self) -> Result<Names, ConfigError> {
        let service = ServiceName::parse(&self.service).map_err(ConfigError::flag("service"))?;
        let protocol = Protocol::parse(&self.protocol).map_err(ConfigError::flag("protocol"))?;
        let mut labels = Labels::new();
        for l in &self.labels {
            let (k, v) = parse_label(l).map_err(ConfigError::flag("label"))?;
            labels.insert(k, v);
        }
        let instance_id = match self.instance_id {
            Some(id) => {
                validate_instance_id(&id).map_err(ConfigError::flag("instance-id"))?;
                id
            }
            None => format!("{service}-{}", random_suffix()),
        };
        Ok(Names {
            service,
            protocol,
            instance_id,
            labels,
        })
    }
}

/// A short random suffix for instance ids, without a random-number crate.
fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    format!("{:08x}", h.finish() as u32)
}
