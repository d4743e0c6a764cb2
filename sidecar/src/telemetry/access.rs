//! The access log (`--access-log`): one JSON line per request on stdout,
//! apart from the diagnostic logs on stderr, so that each can be shipped
//! and kept on its own terms. One `write` per line: lines from concurrent
//! requests never interleave.

use std::io::Write;
use std::time::SystemTime;

use serde::Serialize;

/// One request, as the access log records it.
#[derive(Debug, Serialize)]
pub struct AccessLine<'a> {
    /// RFC 3339, UTC, when the request arrived.
    pub timestamp: String,
    pub direction: &'static str,
    /// The service called (outbound) or this sidecar's own (inbound).
    pub service: &'a str,
    /// The calling service, when known (inbound, mTLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<&'a str>,
    pub protocol: &'static str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u16>,
    /// The mesh's error code when the mesh answered, or how the stream broke.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// The endpoint that answered (outbound) or the local app (inbound).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<&'a str>,
    /// The route (`HTTPRoute/name`, `GRPCRoute/name`) and rule taken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_route: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<usize>,
    pub duration_ms: f64,
    pub retries: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

/// Writes one line to stdout; a failed write (closed stdout) is dropped, as
/// a log line must never fail a request.
pub fn write(line: &AccessLine<'_>) {
    let Ok(mut buf) = serde_json::to_vec(line) else {
        return;
    };
    buf.push(b'\n');
    let _ = std::io::stdout().lock().write_all(&buf);
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-26T11:23:03.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_000_000_123);
        assert_eq!(rfc3339(t), "2026-11-18T11:06:40.123Z");
    }
}
