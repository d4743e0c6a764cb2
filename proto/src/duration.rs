//! Human durations: `250ms`, `10s`, `5m`, `1h`. Parsed the same way for
//! every flag and YAML field in the mesh, and printed the same way wherever
//! a duration is shown to a person (`/config`), so what is shown can be
//! pasted back.

use std::time::Duration;

/// Text that is not a duration; says what was given and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// No whole number in front (or one too large for 64 bits).
    #[error("{0:?} is not a duration (e.g. 250ms, 10s, 5m, 1h)")]
    NotANumber(String),
    /// A number without one of the units.
    #[error("{0:?} needs a unit: ms, s, m or h (e.g. 10s)")]
    NoUnit(String),
}

/// Parses `<whole number><unit>` with unit `ms`, `s`, `m` or `h`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| DurationError::NotANumber(s.to_string()))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(DurationError::NoUnit(s.to_string())),
    };
    Ok(d)
}

/// The largest of `h`, `m`, `s`, `ms` that states `d` exactly; below a
/// millisecond (which no setting takes) `us`, or `ns`.
pub fn format_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    const MS: u128 = 1_000_000;
    for (unit, size) in [
        ("h", 3600 * 1000 * MS),
        ("m", 60 * 1000 * MS),
        ("s", 1000 * MS),
        ("ms", MS),
        ("us", 1000),
    ] {
        if ns != 0 && ns.is_multiple_of(size) {
            return format!("{}{unit}", ns / size);
        }
    }
    if ns == 0 {
        return "0s".into();
    }
    format!("{ns}ns")
}

/// For `#[serde(serialize_with = "…")]`: a duration as its human text.
pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// For `#[serde(serialize_with = "…")]` on an `Option<Duration>`: the text,
/// or null.
pub fn serialize_opt<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "10", "s", "1.5s", "-1s", "10x", "10 s"] {
            let e = parse_duration(bad).expect_err(bad).to_string();
            assert!(e.contains(&format!("{:?}", bad.trim())), "{bad}: {e}");
        }
        assert!(matches!(
            parse_duration("10"),
            Err(DurationError::NoUnit(_))
        ));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::NotANumber(_))
        ));
    }

    #[test]
    fn formats_in_the_largest_exact_unit_and_parses_back() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(7200), "2h"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
        assert_eq!(format_duration(Duration::from_micros(1500)), "1500us");
        assert_eq!(format_duration(Duration::from_nanos(7)), "7ns");
    }

    #[test]
    fn serializes_as_text() {
        #[derive(serde::Serialize)]
        struct T {
            #[serde(serialize_with = "serialize")]
            a: Duration,
            #[serde(serialize_with = "serialize_opt")]
            b: Option<Duration>,
            #[serde(serialize_with = "serialize_opt")]
            c: Option<Duration>,
        }
        let t = T {
            a: Duration::from_secs(300),
            b: Some(Duration::from_millis(300)),
            c: None,
        };
        assert_eq!(
            serde_json::to_string(&t).expect("serializes"),
            r#"{"a":"5m","b":"300ms","c":null}"#
        );
    }
}
