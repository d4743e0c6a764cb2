//! gRPC deadlines on the wire: the `grpc-timeout` header (gRPC over HTTP/2
//! spec: at most 8 digits and a unit, H M S m u n).

use std::time::Duration;

use http::HeaderValue;

/// Reads a `grpc-timeout` value; `None` when malformed (then ignored, as
/// gRPC servers do).
pub fn parse(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?;
    if s.len() < 2 || s.len() > 9 {
        return None;
    }
    let (digits, unit) = s.split_at(s.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Writes `d` as a `grpc-timeout`, in the finest unit that fits 8 digits
/// (rounding up, so that the upstream never gets more time than is left).
pub fn format(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let ns = d.as_nanos();
    let candidates: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    for (unit_ns, unit) in candidates {
        let n = ns.div_ceil(unit_ns);
        if n <= MAX {
            return HeaderValue::from_str(&format!("{n}{unit}"))
                .unwrap_or(HeaderValue::from_static("99999999H"));
        }
    }
    HeaderValue::from_static("99999999H")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_junk() {
        let p = |s: &str| parse(&HeaderValue::from_str(s).expect("value"));
        assert_eq!(p("200m"), Some(Duration::from_millis(200)));
        assert_eq!(p("1S"), Some(Duration::from_secs(1)));
        assert_eq!(p("2M"), Some(Duration::from_secs(120)));
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("5u"), Some(Duration::from_micros(5)));
        assert_eq!(p("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "10", "10x", "123456789m", "-1m", "1.5S"] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn formats_in_8_digits_rounding_up() {
        assert_eq!(format(Duration::from_millis(200)), "200000u");
        assert_eq!(format(Duration::from_nanos(1500)), "1500n");
        assert_eq!(format(Duration::from_secs(3600 * 24)), "86400000m");
        let back = parse(&format(Duration::from_nanos(123_456_789_123))).expect("parse");
        assert!(back >= Duration::from_nanos(123_456_789_123));
        assert!(back - Duration::from_nanos(123_456_789_123) < Duration::from_millis(1));
    }
}
