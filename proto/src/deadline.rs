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
    let candidates: [(u128, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    let (mut n, unit) = candidates
        .into_iter()
        .map(|(unit_ns, unit)| (ns.div_ceil(unit_ns), unit))
        .find(|(n, _)| *n <= MAX)
        .unwrap_or((MAX, b'H'));
    // At most 8 digits and the unit, written from the end: no `String`.
    let mut b = [0u8; 9];
    let mut at = b.len() - 1;
    b[at] = unit;
    loop {
        at -= 1;
        b[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Digits and a unit letter: always a valid header value.
    HeaderValue::from_bytes(&b[at..]).unwrap_or(HeaderValue::from_static("99999999H"))
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
        assert_eq!(format(Duration::ZERO), "0n");
        assert_eq!(format(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(format(Duration::from_nanos(100_000_000)), "100000u");
        assert_eq!(format(Duration::MAX), "99999999H");
    }

    #[test]
    fn a_formatted_timeout_reads_back_as_no_less() {
        for ns in (0..40u32).map(|i| 7u64.pow(i / 2) * (1 + u64::from(i % 2) * 4)) {
            let d = Duration::from_nanos(ns);
            let v = format(d);
            assert!(v.len() <= 9, "{v:?}");
            assert!(parse(&v).expect("parses") >= d, "{ns} ns as {v:?}");
        }
    }
}
