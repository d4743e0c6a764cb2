//! gRPC status codes and what they mean to the mesh, in one place: which
//! ones are the server's fault (for success rates and spans), which ones
//! say an endpoint is failing (for outlier ejection), and their names (for
//! retry conditions, metrics and logs).
//!
//! The codes are those of the gRPC spec (`doc/statuscodes.md`); a value
//! outside 0..=16 is read as `UNKNOWN`, as gRPC clients do. The header
//! names gRPC carries them in are built once here, so that no request
//! path looks them up by parsing a string.

use std::fmt;

use http::{HeaderName, HeaderValue};

pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// A gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u16)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The code for a number; `None` outside 0..=16 (see [`GrpcCode::lenient`]).
    pub fn from_u16(n: u16) -> Option<Self> {
        Self::ALL.get(usize::from(n)).copied()
    }

    /// The code for a number a peer sent: out of range reads as `UNKNOWN`.
    pub fn lenient(n: u16) -> Self {
        Self::from_u16(n).unwrap_or(GrpcCode::Unknown)
    }

    /// A `grpc-status` header or trailer value; `None` when it is not a
    /// number (then the response carries no status we can read).
    pub fn from_header(v: &HeaderValue) -> Option<Self> {
        let n: u32 = std::str::from_utf8(v.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(u16::try_from(n).map_or(GrpcCode::Unknown, Self::lenient))
    }

    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// The number as text (`"14"`), as `grpc-status` and metrics labels
    /// spell it, without formatting it each time.
    pub fn number(self) -> &'static str {
        const NUMBERS: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        NUMBERS[self as usize]
    }

    /// The code as `grpc-status` carries it.
    pub fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(self.number())
    }

    /// The name in lower kebab case (`unavailable`, `deadline-exceeded`),
    /// as retry conditions and logs spell it.
    pub fn name(self) -> &'static str {
        match self {
            GrpcCode::Ok => "ok",
            GrpcCode::Cancelled => "cancelled",
            GrpcCode::Unknown => "unknown",
            GrpcCode::InvalidArgument => "invalid-argument",
            GrpcCode::DeadlineExceeded => "deadline-exceeded",
            GrpcCode::NotFound => "not-found",
            GrpcCode::AlreadyExists => "already-exists",
            GrpcCode::PermissionDenied => "permission-denied",
            GrpcCode::ResourceExhausted => "resource-exhausted",
            GrpcCode::FailedPrecondition => "failed-precondition",
            GrpcCode::Aborted => "aborted",
            GrpcCode::OutOfRange => "out-of-range",
            GrpcCode::Unimplemented => "unimplemented",
            GrpcCode::Internal => "internal",
            GrpcCode::Unavailable => "unavailable",
            GrpcCode::DataLoss => "data-loss",
            GrpcCode::Unauthenticated => "unauthenticated",
        }
    }

    /// Whether a call that ended with this code failed by the server's
    /// fault (or the mesh's): UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED,
    /// INTERNAL, UNAVAILABLE, DATA_LOSS. A client's mistake (NOT_FOUND,
    /// INVALID_ARGUMENT, …) is no failure of the server. The OpenTelemetry
    /// conventions for server spans and `weftctl top`'s success rate use it.
    pub fn is_server_fault(self) -> bool {
        matches!(
            self,
            GrpcCode::Unknown
                | GrpcCode::DeadlineExceeded
                | GrpcCode::Unimplemented
                | GrpcCode::Internal
                | GrpcCode::Unavailable
                | GrpcCode::DataLoss
        )
    }

    /// Whether the code says the endpoint itself is failing (outlier
    /// ejection counts it): UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS. A
    /// deadline is the caller's choice and UNIMPLEMENTED a wrong method:
    /// another endpoint of the same service would answer the same.
    pub fn is_endpoint_failure(self) -> bool {
        matches!(
            self,
            GrpcCode::Unknown | GrpcCode::Internal | GrpcCode::Unavailable | GrpcCode::DataLoss
        )
    }
}

impl fmt::Display for GrpcCode {
    /// The number, as metrics labels and `grpc-status` show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.number())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_spelled_as_its_number() {
        for code in GrpcCode::ALL {
            assert_eq!(code.number(), code.as_u16().to_string());
            assert_eq!(code.header_value(), code.as_u16().to_string().as_str());
        }
    }

    #[test]
    fn numbers_round_trip_and_strays_read_as_unknown() {
        for n in 0..=16u16 {
            assert_eq!(GrpcCode::from_u16(n).map(GrpcCode::as_u16), Some(n));
        }
        assert_eq!(GrpcCode::from_u16(17), None);
        assert_eq!(GrpcCode::lenient(99), GrpcCode::Unknown);
        let h = |s: &'static str| GrpcCode::from_header(&HeaderValue::from_static(s));
        assert_eq!(h("14"), Some(GrpcCode::Unavailable));
        assert_eq!(h(" 0 "), Some(GrpcCode::Ok));
        assert_eq!(h("70000"), Some(GrpcCode::Unknown));
        assert_eq!(h("x"), None);
        assert_eq!(h(""), None);
        assert_eq!(GrpcCode::DeadlineExceeded.header_value(), "4");
        assert_eq!(GrpcCode::DeadlineExceeded.to_string(), "4");
    }

    #[test]
    fn meanings() {
        let fault: Vec<u16> = GrpcCode::ALL
            .iter()
            .filter(|c| c.is_server_fault())
            .map(|c| c.as_u16())
            .collect();
        assert_eq!(fault, [2, 4, 12, 13, 14, 15]);
        let failing: Vec<u16> = GrpcCode::ALL
            .iter()
            .filter(|c| c.is_endpoint_failure())
            .map(|c| c.as_u16())
            .collect();
        assert_eq!(failing, [2, 13, 14, 15]);
        assert_eq!(GrpcCode::ResourceExhausted.name(), "resource-exhausted");
    }
}
