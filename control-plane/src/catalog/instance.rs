//! Instances: one per sidecar, registered over its discovery stream.

use std::collections::BTreeSet;

use tokio::time::Instant;
use weft_proto::labels::{Labels, validate_labels};
use weft_proto::name::{validate_address, validate_instance_id};
use weft_proto::protocol::Protocol;
use weft_proto::v1 as pb;

use crate::resource::Name;

/// A validated `Hello`: who a sidecar is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub service: Name,
    pub instance_id: String,
    pub address: String,
    pub protocol: Option<Protocol>,
    pub labels: Labels,
    pub health: pb::Health,
    pub sidecar_version: String,
    /// No app behind the sidecar: a caller only.
    pub no_app: bool,
}

/// The most services one sidecar may want (declared and subscribed). Far
/// more than any app calls; it bounds what one stream can make us keep.
pub const MAX_WANTED: usize = 10_000;

/// Text a sidecar reports (a NACK reason, a health detail, its version)
/// is kept and logged up to this many bytes.
pub const MAX_REPORTED_TEXT: usize = 1024;

/// `s` cut to at most `max` bytes on a character boundary, marked with `…`
/// when cut.
pub fn clip(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

impl Registration {
    /// Validates a hello; returns the registration and the services it wants.
    pub fn from_hello(h: &pb::Hello) -> Result<(Self, BTreeSet<String>), String> {
        let service = Name::parse(&h.service).map_err(|e| format!("hello.service: {e}"))?;
        validate_instance_id(&h.instance_id).map_err(|e| format!("hello.instance_id: {e}"))?;
        validate_address(&h.address).map_err(|e| format!("hello.address: {e}"))?;
        let protocol =
            Protocol::from_proto(h.protocol).map_err(|e| format!("hello.protocol: {e}"))?;
        let labels: Labels = h
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        validate_labels(&labels).map_err(|e| format!("hello.labels: {e}"))?;
        let health = pb::Health::try_from(h.health).unwrap_or(pb::Health::Unknown);
        if h.upstreams.len() > MAX_WANTED {
            return Err(format!(
                "hello.upstreams: {} services, at most {MAX_WANTED}",
                h.upstreams.len()
            ));
        }
        let wanted = h
            .upstreams
            .iter()
            .map(|u| {
                Name::parse(u)
                    .map(|n| n.to_string())
                    .map_err(|e| format!("hello.upstreams: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok((
            Registration {
                service,
                instance_id: h.instance_id.clone(),
                address: h.address.clone(),
                protocol,
                labels,
                health,
                sidecar_version: clip(h.sidecar_version.clone(), 64),
                no_app: h.no_app,
            },
            wanted,
        ))
    }
}

/// An instance in the catalog.
#[derive(Debug, Clone)]
pub struct Instance {
    pub service: Name,
    pub id: String,
    pub address: String,
    pub protocol: Option<Protocol>,
    pub labels: Labels,
    pub health: pb::Health,
    pub health_detail: String,
    pub sidecar_version: String,
    /// No app behind the sidecar: a caller only.
    pub no_app: bool,
    /// The stream that keeps it alive; `None` while it waits out a grace period.
    pub stream: Option<u64>,
    /// When a disconnected instance is removed.
    pub expires_at: Option<Instant>,
}

impl Instance {
    pub fn from_registration(r: Registration, stream: u64) -> Self {
        Instance {
            service: r.service,
            id: r.instance_id,
            address: r.address,
            protocol: r.protocol,
            labels: r.labels,
            health: r.health,
            health_detail: String::new(),
            sidecar_version: r.sidecar_version,
            no_app: r.no_app,
            stream: Some(stream),
            expires_at: None,
        }
    }

    /// An instance read back from the store after a restart: disconnected
    /// until its sidecar says hello again.
    pub fn restore(info: &pb::InstanceInfo, expires_at: Instant) -> Result<Self, String> {
        let hello = pb::Hello {
            service: info.service.clone(),
            instance_id: info.instance_id.clone(),
            address: info.address.clone(),
            protocol: info.protocol,
            labels: info.labels.clone(),
            health: info.health,
            no_app: info.no_app,
            ..Default::default()
        };
        let (r, _) = Registration::from_hello(&hello)?;
        let mut i = Instance::from_registration(r, 0);
        i.health_detail = info.health_detail.clone();
        i.stream = None;
        i.expires_at = Some(expires_at);
        Ok(i)
    }

    /// The record kept in the store and shown by `weftctl get instances`.
    pub fn to_info(&self) -> pb::InstanceInfo {
        pb::InstanceInfo {
            service: self.service.to_string(),
            instance_id: self.id.clone(),
            address: self.address.clone(),
            protocol: self
                .protocol
                .map_or(pb::Protocol::Unspecified, Protocol::to_proto) as i32,
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            health: self.health as i32,
            health_detail: self.health_detail.clone(),
            connected: self.stream.is_some(),
            expires_at_unix_ms: 0,
            ejected_by: Vec::new(),
            no_app: self.no_app,
        }
    }

    pub fn to_endpoint(&self) -> pb::Endpoint {
        pb::Endpoint {
            instance_id: self.id.clone(),
            address: self.address.clone(),
            labels: self
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            health: self.health as i32,
            weight: 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_validation_names_the_field() {
        let mut h = pb::Hello {
            service: "user-service".into(),
            instance_id: "u-1".into(),
            address: "127.0.0.1:1".into(),
            upstreams: vec!["a".into()],
            ..Default::default()
        };
        let (r, wanted) = Registration::from_hello(&h).expect("valid");
        assert_eq!(r.service.as_str(), "user-service");
        assert!(wanted.contains("a"));
        h.address = "nope".into();
        assert!(
            Registration::from_hello(&h)
                .expect_err("bad")
                .starts_with("hello.address")
        );
        h.address = "127.0.0.1:1".into();
        h.instance_id = "has space".into();
        assert!(
            Registration::from_hello(&h)
                .expect_err("bad")
                .starts_with("hello.instance_id")
        );
        h.instance_id = "u-1".into();
        h.upstreams = vec!["a".into(), "Not A Name".into()];
        let e = Registration::from_hello(&h).expect_err("bad upstream");
        assert!(
            e.starts_with("hello.upstreams") && e.contains("Not A Name"),
            "{e}"
        );
        h.upstreams = vec!["a".into(); MAX_WANTED + 1];
        let e = Registration::from_hello(&h).expect_err("too many");
        assert!(e.starts_with("hello.upstreams"), "{e}");
        h.upstreams = vec![];
        h.sidecar_version = "v".repeat(1000);
        let (r, _) = Registration::from_hello(&h).expect("valid");
        assert!(r.sidecar_version.len() <= 64 + '…'.len_utf8());
    }

    #[test]
    fn reported_text_is_clipped_on_a_character_boundary() {
        assert_eq!(clip("short".into(), 10), "short");
        assert_eq!(clip("abcdef".into(), 3), "abc…");
        // 'é' is two bytes: a cut inside it moves back to its start.
        assert_eq!(clip("aé".into(), 2), "a…");
        assert_eq!(
            clip("r".repeat(1 << 20), MAX_REPORTED_TEXT).len(),
            MAX_REPORTED_TEXT + 3
        );
    }
}
