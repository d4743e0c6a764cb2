//! Labels such as `version=v2`: what instances declare (`--label`) and
//! what subsets select on. One rule for keys and values, the one Kubernetes
//! uses, so labels copy over unchanged; the sidecar checks its flags with it
//! and the control plane each `Hello` and resource, so a sidecar never
//! starts with a label its control plane would refuse.

use std::collections::BTreeMap;

/// Labels, sorted so that equal maps compare and print equal.
pub type Labels = BTreeMap<String, String>;

/// The most bytes in a key or a value.
const MAX_LEN: usize = 63;

/// Why a label is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("{0:?} must be key=value, e.g. version=v2")]
    Syntax(String),
    #[error(
        "label key {0:?} is not valid: 1 to 63 letters, digits, '.', '_', '-' or '/', \
         starting with a letter or digit"
    )]
    Key(String),
    #[error("label {key}: value {value:?} is not valid: up to 63 letters, digits, '.', '_' or '-'")]
    Value { key: String, value: String },
}

/// Checks one label: a key of 1 to 63 of `[A-Za-z0-9._/-]` starting
/// alphanumeric, and a value of up to 63 of `[A-Za-z0-9._-]` (possibly
/// empty).
pub fn validate_label(key: &str, value: &str) -> Result<(), LabelError> {
    let key_ok = key
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
        && key.len() <= MAX_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
    if !key_ok {
        return Err(LabelError::Key(key.to_string()));
    }
    let value_ok = value.len() <= MAX_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !value_ok {
        return Err(LabelError::Value {
            key: key.to_string(),
            value: value.to_string(),
        });
    }
    Ok(())
}

/// Checks every label of a map; the first bad one is named.
pub fn validate_labels(labels: &Labels) -> Result<(), LabelError> {
    labels.iter().try_for_each(|(k, v)| validate_label(k, v))
}

/// Parses and checks `key=value` (the value may be empty; it ends at the
/// end of the text, so it may not hold another `=`, which the value rule
/// refuses anyway).
pub fn parse_label(text: &str) -> Result<(String, String), LabelError> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| LabelError::Syntax(text.to_string()))?;
    validate_label(k, v)?;
    Ok((k.to_string(), v.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_values() {
        for (k, v) in [
            ("version", "v2"),
            ("app.kubernetes.io/name", ""),
            ("a", "A-b_c.9"),
            ("9_", "x"),
        ] {
            assert_eq!(validate_label(k, v), Ok(()), "{k}={v}");
        }
        let long = "x".repeat(64);
        for k in [
            "",
            "bad key",
            "_a",
            ".a",
            "-a",
            "/a",
            "a=b",
            "é",
            long.as_str(),
        ] {
            assert_eq!(
                validate_label(k, "v"),
                Err(LabelError::Key(k.into())),
                "{k}"
            );
        }
        for v in ["bad value", "a/b", "a=b", "é", long.as_str()] {
            assert!(
                matches!(validate_label("k", v), Err(LabelError::Value { .. })),
                "{v}"
            );
        }
    }

    #[test]
    fn maps_name_the_first_bad_label() {
        let mut m = Labels::new();
        m.insert("version".into(), "v2".into());
        m.insert("app.kubernetes.io/name".into(), "".into());
        assert!(validate_labels(&m).is_ok());
        m.insert("bad key".into(), "x".into());
        assert_eq!(validate_labels(&m), Err(LabelError::Key("bad key".into())));
    }

    #[test]
    fn key_equals_value() {
        assert_eq!(
            parse_label("version=v2"),
            Ok(("version".into(), "v2".into()))
        );
        assert_eq!(parse_label("tier="), Ok(("tier".into(), String::new())));
        assert_eq!(parse_label("x"), Err(LabelError::Syntax("x".into())));
        assert!(matches!(parse_label("=v"), Err(LabelError::Key(_))));
        assert!(matches!(
            parse_label("a=b=c"),
            Err(LabelError::Value { .. })
        ));
        let e = parse_label("x").expect_err("no =").to_string();
        assert!(e.contains("key=value"), "{e}");
    }
}
