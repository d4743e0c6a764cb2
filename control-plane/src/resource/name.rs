//! Names and labels: the strings that identify things in the mesh.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// A validated name of a service or resource: a DNS subdomain (lowercase
/// letters, digits, `-` and `.`, starting and ending alphanumeric, at most
/// 253 characters), so that it can also be used as an HTTP authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s.len() > 253 {
            return Err(format!("{s:?} is longer than 253 characters"));
        }
        for label in s.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-');
            if !ok {
                return Err(format!(
                    "{s:?} is not a valid name: use lowercase letters, digits, '-' and '.', \
                     starting and ending with a letter or digit (e.g. user-service)"
                ));
            }
        }
        Ok(Name(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Labels such as `version=v2`, sorted so that equal maps compare and print equal.
pub type LabelMap = BTreeMap<String, String>;

/// Label keys: up to 63 of `[A-Za-z0-9._/-]`, starting alphanumeric; values up
/// to 63 of `[A-Za-z0-9._-]` (possibly empty). The same rule Kubernetes uses,
/// so labels copy over unchanged.
pub fn validate_labels(labels: &LabelMap) -> Result<(), String> {
    for (k, v) in labels {
        let key_ok = !k.is_empty()
            && k.len() <= 63
            && k.as_bytes()[0].is_ascii_alphanumeric()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !key_ok {
            return Err(format!("label key {k:?} is not valid"));
        }
        let value_ok = v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !value_ok {
            return Err(format!("label {k}: value {v:?} is not valid"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "user-service", "user-service.prod", "a1", "0abc"] {
            assert!(Name::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "User",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a b",
            &"x".repeat(64),
        ] {
            assert!(Name::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        let mut m = LabelMap::new();
        m.insert("version".into(), "v2".into());
        m.insert("app.kubernetes.io/name".into(), "".into());
        assert!(validate_labels(&m).is_ok());
        m.insert("bad key".into(), "x".into());
        assert!(validate_labels(&m).is_err());
        let mut m = LabelMap::new();
        m.insert("k".into(), "bad value".into());
        assert!(validate_labels(&m).is_err());
    }
}
