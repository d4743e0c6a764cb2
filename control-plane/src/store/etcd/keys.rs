//! The key layout under the prefix (`/weft/` by default), and the values'
//! encodings: the same protobuf records and JSON as the embedded store.
//!
//! ```text
//! <p>resources/<Kind>/<name>  pb::Resource
//! <p>meta/resources           empty; its mod revision is the resources' revision
//! <p>tokens/<id>              TokenRecord (JSON, the secret's SHA-256 only)
//! <p>instances/<id>           pb::InstanceInfo, under the holding replica's lease
//! <p>admin/credential-sha256  the admin token's SHA-256
//! <p>leader/…                 the election of the replica that runs the sweeps
//! ```

use prost::Message;
use weft_proto::v1 as pb;

use crate::api::convert::{record_from_proto, resources_from_proto};
use crate::auth::TokenRecord;
use crate::catalog::InstanceRecord;
use crate::resource::{Kind, Name, Resource};

/// Keys under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// What a key under the prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `<Kind>/<name>`, as the store key says.
    Resource(String),
    ResourcesRevision,
    Token(String),
    Instance(String),
    /// The election's and the credential's keys, or anything unknown.
    Other,
}

/// A value that does not decode.
#[derive(Debug, Clone, thiserror::Error)]
#[error("etcd key {key}: {reason}")]
pub struct BadValue {
    pub key: String,
    pub reason: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn all(&self) -> String {
        self.prefix.clone()
    }

    pub fn resource(&self, r: &Resource) -> String {
        format!("{}resources/{}", self.prefix, r.key())
    }

    pub fn resource_of(&self, kind: Kind, name: &Name) -> String {
        format!("{}resources/{}/{name}", self.prefix, kind.as_str())
    }

    pub fn resources_revision(&self) -> String {
        format!("{}meta/resources", self.prefix)
    }

    pub fn token(&self, id: &str) -> String {
        format!("{}tokens/{id}", self.prefix)
    }

    pub fn instances(&self) -> String {
        format!("{}instances/", self.prefix)
    }

    pub fn instance(&self, id: &str) -> String {
        format!("{}instances/{id}", self.prefix)
    }

    pub fn admin_hash(&self) -> String {
        format!("{}admin/credential-sha256", self.prefix)
    }

    pub fn election(&self) -> String {
        format!("{}leader", self.prefix)
    }

    pub fn entry(&self, key: &[u8]) -> Entry {
        let Some(rest) = std::str::from_utf8(key)
            .ok()
            .and_then(|k| k.strip_prefix(&self.prefix))
        else {
            return Entry::Other;
        };
        if let Some(r) = rest.strip_prefix("resources/") {
            Entry::Resource(r.to_string())
        } else if rest == "meta/resources" {
            Entry::ResourcesRevision
        } else if let Some(id) = rest.strip_prefix("tokens/") {
            Entry::Token(id.to_string())
        } else if let Some(id) = rest.strip_prefix("instances/") {
            Entry::Instance(id.to_string())
        } else {
            Entry::Other
        }
    }
}

fn bad(key: &str, reason: impl ToString) -> BadValue {
    BadValue {
        key: key.to_string(),
        reason: reason.to_string(),
    }
}

pub fn encode_resource(r: &Resource) -> Vec<u8> {
    pb::Resource::from(r).encode_to_vec()
}

pub fn decode_resource(key: &str, value: &[u8]) -> Result<Resource, BadValue> {
    let p = pb::Resource::decode(value).map_err(|e| bad(key, e))?;
    let mut rs = resources_from_proto(std::slice::from_ref(&p)).map_err(|e| bad(key, e))?;
    rs.pop().ok_or_else(|| bad(key, "no resource"))
}

/// `Kind/name` of a resource key back to the kind and name, for a delete.
pub fn resource_id(key: &str, kind_name: &str) -> Result<(Kind, Name), BadValue> {
    let (kind, name) = kind_name
        .split_once('/')
        .ok_or_else(|| bad(key, "not <Kind>/<name>"))?;
    let kind = Kind::parse(kind).ok_or_else(|| bad(key, "unknown kind"))?;
    let name = Name::parse(name).map_err(|e| bad(key, e))?;
    Ok((kind, name))
}

pub fn encode_token(r: &TokenRecord) -> Result<Vec<u8>, BadValue> {
    serde_json::to_vec(r).map_err(|e| bad("token", e))
}

pub fn decode_token(key: &str, value: &[u8]) -> Result<TokenRecord, BadValue> {
    serde_json::from_slice(value).map_err(|e| bad(key, e))
}

pub fn encode_instance(r: &InstanceRecord) -> Vec<u8> {
    pb::InstanceInfo::from(r).encode_to_vec()
}

pub fn decode_instance(key: &str, value: &[u8]) -> Result<InstanceRecord, BadValue> {
    let p = pb::InstanceInfo::decode(value).map_err(|e| bad(key, e))?;
    record_from_proto(&p).map_err(|e| bad(key, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_say_what_they_hold() {
        let k = Keys::new("/weft/");
        assert_eq!(
            k.entry(b"/weft/resources/Service/a"),
            Entry::Resource("Service/a".into())
        );
        assert_eq!(k.entry(b"/weft/meta/resources"), Entry::ResourcesRevision);
        assert_eq!(k.entry(b"/weft/tokens/ab"), Entry::Token("ab".into()));
        assert_eq!(
            k.entry(k.instance("i-1").as_bytes()),
            Entry::Instance("i-1".into())
        );
        assert_eq!(k.entry(b"/weft/leader/x"), Entry::Other);
        assert_eq!(k.entry(b"/other/tokens/ab"), Entry::Other);
        let (kind, name) = resource_id("k", "HTTPRoute/r").expect("valid");
        assert_eq!((kind, name.as_str()), (Kind::HttpRoute, "r"));
        assert!(resource_id("k", "Nope/r").is_err());
    }
}
