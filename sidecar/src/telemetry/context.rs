//! W3C Trace Context (`traceparent`): parsed once per request into ids and
//! a sampled flag, and written back with this hop's span id. `tracestate`
//! is vendor data: it passes through untouched and is recorded on the span.

use std::str::FromStr;

use http::{HeaderName, HeaderValue};
use opentelemetry::trace::TraceState;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Where a span sits in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceContext {
    /// Reads a `traceparent` value: `00-<32 hex>-<16 hex>-<2 hex>`. Later
    /// versions are read by their first four fields, as the spec asks; the
    /// invalid version `ff`, all-zero ids, upper-case hex and wrong lengths
    /// are refused (the request then starts a new trace).
    pub fn parse(v: &HeaderValue) -> Option<Self> {
        let b = v.as_bytes();
        if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let version = hex(&b[0..2])? as u8;
        match version {
            0xff => return None,
            0 if b.len() != 55 => return None,
            0 => {}
            _ if b.len() > 55 && b[55] != b'-' => return None,
            _ => {}
        }
        let trace_id = hex(&b[3..35])?;
        let span_id = hex(&b[36..52])? as u64;
        let flags = hex(&b[53..55])? as u8;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` value for this context (version 00), written
    /// digit by digit into one buffer: every request carries one, and
    /// `format!` cost a growing `String` and a second copy.
    pub fn to_header(self) -> HeaderValue {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut b = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, d) in b[3..35].iter_mut().enumerate() {
            *d = HEX[(self.trace_id >> (124 - 4 * i)) as usize & 0xf];
        }
        for (i, d) in b[36..52].iter_mut().enumerate() {
            *d = HEX[(self.span_id >> (60 - 4 * i)) as usize & 0xf];
        }
        b[54] = if self.sampled { b'1' } else { b'0' };
        // Only hex digits and dashes: always a valid header value. Owned
        // by a shared buffer from the start: a value made from a copied
        // slice allocates again on its first clone (the outbound side's
        // template is cloned for each attempt that may be retried).
        let mut v = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(b))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        // New on every request: sent as a literal HPACK never indexes.
        // Indexed, each one would be inserted into both ends' dynamic
        // tables, searched against the ones before it and evict the
        // headers that repeat (content-type, user-agent), which would then
        // be sent again in full.
        v.set_sensitive(true);
        v
    }
}

/// Reads a `tracestate` value for the span; one that breaks the spec's
/// rules (list members, key and value characters) is dropped whole, as the
/// spec allows, rather than passed on half-read.
pub fn trace_state(v: &HeaderValue) -> TraceState {
    v.to_str()
        .ok()
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default()
}

/// Lower-case hex to a number (at most 32 digits).
fn hex(b: &[u8]) -> Option<u128> {
    let mut n: u128 = 0;
    for &c in b {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        n = (n << 4) | u128::from(d);
    }
    Some(n)
}

/// A new, random, non-zero span id.
pub fn new_span_id() -> u64 {
    loop {
        let id = crate::rand::next_u64();
        if id != 0 {
            return id;
        }
    }
}

/// A new, random, non-zero trace id.
pub fn new_trace_id() -> u128 {
    (u128::from(crate::rand::next_u64()) << 64) | u128::from(new_span_id())
}

/// The trace-id-ratio decision of OpenTelemetry's samplers: the low 63 bits
/// of the id against the ratio, so that every hop that has to decide about
/// the same trace decides alike.
pub fn sample(trace_id: u128, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    ((trace_id as u64) >> 1) < bound
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("header")
    }

    #[test]
    fn writes_what_the_spec_format_says() {
        for (trace_id, span_id, sampled) in [
            (1u128, 1u64, false),
            (u128::MAX, u64::MAX, true),
            (
                0x0123_4567_89ab_cdef_0000_0000_0000_0001,
                0x00f0_67aa_0ba9_02b7,
                true,
            ),
        ] {
            let c = TraceContext {
                trace_id,
                span_id,
                sampled,
            };
            let want = format!(
                "00-{trace_id:032x}-{span_id:016x}-{:02x}",
                u8::from(sampled)
            );
            let v = c.to_header();
            assert_eq!(v.to_str().expect("ascii"), want);
            assert!(v.is_sensitive(), "HPACK must not index a traceparent");
        }
    }

    #[test]
    fn reads_and_writes_the_spec_example() {
        let v = hv("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let c = TraceContext::parse(&v).expect("valid");
        assert_eq!(c.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(c.span_id, 0x00f067aa0ba902b7);
        assert!(c.sampled);
        assert_eq!(c.to_header(), v);
        let c = TraceContext::parse(&hv(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ))
        .expect("valid");
        assert!(!c.sampled);
    }

    #[test]
    fn refuses_what_the_spec_refuses() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(&hv(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let c = TraceContext::parse(&hv(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next",
        ))
        .expect("future version");
        assert_eq!(c.span_id, 0x00f067aa0ba902b7);
        assert!(
            TraceContext::parse(&hv(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"
            ))
            .is_none()
        );
    }

    #[test]
    fn the_ratio_decides_by_trace_id() {
        let ids: Vec<u128> = (0..10_000).map(|_| new_trace_id()).collect();
        let share = |r: f64| ids.iter().filter(|&&id| sample(id, r)).count();
        assert_eq!(share(0.0), 0);
        assert_eq!(share(1.0), 10_000);
        let tenth = share(0.1);
        assert!((800..1200).contains(&tenth), "{tenth} of 10000 at 0.1");
        // The same id, the same decision, at every hop.
        assert!(ids.iter().all(|&id| sample(id, 0.3) == sample(id, 0.3)));
        // A higher ratio keeps every trace a lower one kept.
        assert!(ids.iter().all(|&id| !sample(id, 0.1) || sample(id, 0.2)));
    }
}
