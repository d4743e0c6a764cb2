//! Retry conditions: the failures after which a caller's sidecar may try a
//! request again (`retries.on` in a `Service`). The control plane checks
//! the names users write; the sidecar decides with the set.

use std::fmt;
use std::str::FromStr;

use serde::ser::SerializeStruct;

use crate::grpc::GrpcCode;
use crate::protocol::ChoiceError;

/// One condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryCondition {
    /// gRPC UNAVAILABLE.
    Unavailable,
    /// gRPC CANCELLED.
    Cancelled,
    /// gRPC RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// gRPC DEADLINE_EXCEEDED (of a try, not of the whole call).
    DeadlineExceeded,
    /// gRPC INTERNAL.
    Internal,
    /// Any HTTP 5xx (non-gRPC responses).
    Http5xx,
    /// HTTP 502, 503, 504 (non-gRPC responses).
    GatewayError,
    /// No connection to the endpoint: the request never left.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM, or a stream past a graceful GOAWAY's last
    /// stream id: the server did not process the request.
    RefusedStream,
    /// The connection or stream was reset before a response.
    Reset,
}

impl RetryCondition {
    pub const ALL: [RetryCondition; 10] = [
        RetryCondition::Unavailable,
        RetryCondition::Cancelled,
        RetryCondition::ResourceExhausted,
        RetryCondition::DeadlineExceeded,
        RetryCondition::Internal,
        RetryCondition::Http5xx,
        RetryCondition::GatewayError,
        RetryCondition::ConnectFailure,
        RetryCondition::RefusedStream,
        RetryCondition::Reset,
    ];

    pub const CHOICES: &'static str = "unavailable, cancelled, resource-exhausted, \
        deadline-exceeded, internal, 5xx, gateway-error, connect-failure, refused-stream, reset";

    pub fn parse(s: &str) -> Result<Self, ChoiceError> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| ChoiceError::Unknown {
                what: "condition",
                value: s.to_string(),
                choices: Self::CHOICES,
            })
    }

    /// The name users write.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryCondition::Unavailable => "unavailable",
            RetryCondition::Cancelled => "cancelled",
            RetryCondition::ResourceExhausted => "resource-exhausted",
            RetryCondition::DeadlineExceeded => "deadline-exceeded",
            RetryCondition::Internal => "internal",
            RetryCondition::Http5xx => "5xx",
            RetryCondition::GatewayError => "gateway-error",
            RetryCondition::ConnectFailure => "connect-failure",
            RetryCondition::RefusedStream => "refused-stream",
            RetryCondition::Reset => "reset",
        }
    }

    /// The field name in `/config` (which showed a struct of flags before
    /// this set existed; kept so that what reads it still works).
    fn field(self) -> &'static str {
        match self {
            RetryCondition::Unavailable => "unavailable",
            RetryCondition::Cancelled => "cancelled",
            RetryCondition::ResourceExhausted => "resource_exhausted",
            RetryCondition::DeadlineExceeded => "deadline_exceeded",
            RetryCondition::Internal => "internal",
            RetryCondition::Http5xx => "http_5xx",
            RetryCondition::GatewayError => "gateway_error",
            RetryCondition::ConnectFailure => "connect_failure",
            RetryCondition::RefusedStream => "refused_stream",
            RetryCondition::Reset => "reset",
        }
    }

    /// The condition a gRPC status falls under, if any.
    pub fn for_grpc(code: GrpcCode) -> Option<Self> {
        match code {
            GrpcCode::Cancelled => Some(RetryCondition::Cancelled),
            GrpcCode::DeadlineExceeded => Some(RetryCondition::DeadlineExceeded),
            GrpcCode::ResourceExhausted => Some(RetryCondition::ResourceExhausted),
            GrpcCode::Internal => Some(RetryCondition::Internal),
            GrpcCode::Unavailable => Some(RetryCondition::Unavailable),
            _ => None,
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl FromStr for RetryCondition {
    type Err = ChoiceError;

    fn from_str(s: &str) -> Result<Self, ChoiceError> {
        RetryCondition::parse(s)
    }
}

impl fmt::Display for RetryCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of conditions: when a failed try may be tried again.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetryConditions(u16);

impl RetryConditions {
    /// No condition: nothing is retried.
    pub fn empty() -> Self {
        RetryConditions(0)
    }

    /// gRPC UNAVAILABLE, HTTP 502/503/504, and failures before the request
    /// reached the service: always safe to try elsewhere.
    pub fn defaults() -> Self {
        [
            RetryCondition::Unavailable,
            RetryCondition::GatewayError,
            RetryCondition::ConnectFailure,
            RetryCondition::RefusedStream,
        ]
        .into_iter()
        .collect()
    }

    /// The set named by `names`; none named means [`Self::defaults`], as
    /// an unset `on` does in `mesh.proto`. The first unknown name is the
    /// error.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, ChoiceError> {
        if names.is_empty() {
            return Ok(Self::defaults());
        }
        names
            .iter()
            .map(|n| RetryCondition::parse(n.as_ref()))
            .collect()
    }

    pub fn insert(&mut self, c: RetryCondition) {
        self.0 |= c.bit();
    }

    pub fn contains(&self, c: RetryCondition) -> bool {
        self.0 & c.bit() != 0
    }

    pub fn iter(&self) -> impl Iterator<Item = RetryCondition> + '_ {
        RetryCondition::ALL
            .into_iter()
            .filter(|c| self.contains(*c))
    }

    /// Whether a gRPC status qualifies.
    pub fn grpc(&self, code: GrpcCode) -> bool {
        RetryCondition::for_grpc(code).is_some_and(|c| self.contains(c))
    }

    /// Whether an HTTP status qualifies (non-gRPC responses).
    pub fn http(&self, status: u16) -> bool {
        (self.contains(RetryCondition::Http5xx) && status >= 500)
            || (self.contains(RetryCondition::GatewayError) && matches!(status, 502..=504))
    }
}

impl FromIterator<RetryCondition> for RetryConditions {
    fn from_iter<I: IntoIterator<Item = RetryCondition>>(iter: I) -> Self {
        let mut set = RetryConditions::empty();
        for c in iter {
            set.insert(c);
        }
        set
    }
}

impl fmt::Debug for RetryConditions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl serde::Serialize for RetryConditions {
    /// `{"unavailable": true, "cancelled": false, …}`: every condition,
    /// by its `/config` field name.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("RetryConditions", RetryCondition::ALL.len())?;
        for c in RetryCondition::ALL {
            st.serialize_field(c.field(), &self.contains(c))?;
        }
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_are_listed() {
        for c in RetryCondition::ALL {
            assert_eq!(c.as_str().parse::<RetryCondition>(), Ok(c));
            assert!(RetryCondition::CHOICES.contains(c.as_str()), "{c}");
        }
        assert_eq!(
            RetryCondition::CHOICES.split(", ").count(),
            RetryCondition::ALL.len()
        );
        let e = RetryCondition::parse("never").expect_err("unknown");
        assert_eq!(
            e.to_string(),
            format!(
                "unknown condition \"never\", expected one of {}",
                RetryCondition::CHOICES
            )
        );
    }

    #[test]
    fn defaults_and_parsed_sets() {
        let d = RetryConditions::defaults();
        assert!(d.grpc(GrpcCode::Unavailable) && !d.grpc(GrpcCode::Internal));
        assert!(d.http(503) && !d.http(500));
        assert!(d.contains(RetryCondition::ConnectFailure));
        assert!(d.contains(RetryCondition::RefusedStream));
        assert!(!d.contains(RetryCondition::Reset));
        assert_eq!(RetryConditions::parse::<&str>(&[]), Ok(d));

        let s = RetryConditions::parse(&["internal", "5xx"]).expect("valid");
        assert!(s.grpc(GrpcCode::Internal) && !s.grpc(GrpcCode::Unavailable));
        assert!(s.http(500) && s.http(503) && !s.http(499));
        assert!(!s.contains(RetryCondition::ConnectFailure));
        assert!(RetryConditions::parse(&["internal", "never"]).is_err());
        assert!(!RetryConditions::empty().grpc(GrpcCode::Unavailable));
    }

    #[test]
    fn grpc_codes_map_to_their_condition_by_name() {
        // The gRPC conditions are exactly those named like a gRPC code.
        for code in (0..=16).filter_map(GrpcCode::from_u16) {
            assert_eq!(
                RetryCondition::for_grpc(code),
                RetryCondition::parse(code.name()).ok(),
                "{code:?}"
            );
        }
    }

    #[test]
    fn serializes_as_the_config_flags() {
        let v = serde_json::to_value(RetryConditions::defaults()).expect("serializes");
        assert_eq!(
            v,
            serde_json::json!({
                "unavailable": true,
                "cancelled": false,
                "resource_exhausted": false,
                "deadline_exceeded": false,
                "internal": false,
                "http_5xx": false,
                "gateway_error": true,
                "connect_failure": true,
                "refused_stream": true,
                "reset": false,
            })
        );
        let keys: Vec<String> = serde_json::to_string(&RetryConditions::empty())
            .expect("serializes")
            .split('"')
            .skip(1)
            .step_by(2)
            .map(String::from)
            .collect();
        assert_eq!(
            keys,
            [
                "unavailable",
                "cancelled",
                "resource_exhausted",
                "deadline_exceeded",
                "internal",
                "http_5xx",
                "gateway_error",
                "connect_failure",
                "refused_stream",
                "reset"
            ],
            "fields in the order /config always had"
        );
    }
}
