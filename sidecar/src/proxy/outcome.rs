//! How an exchange ended, decided once: the HTTP status, the gRPC status
//! (from the response headers of a trailers-only answer, or the trailers),
//! and whether it failed short of a complete answer, and how. Retries,
//! outlier ejection, metrics, spans and the access log all read this one
//! value; none of them looks at headers or error text again.

use http::{HeaderMap, StatusCode};
use weft_proto::grpc::{GRPC_STATUS, GrpcCode};

use crate::error::{ErrorKind, ProxyError};

/// How one exchange (or one attempt of it) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: StatusCode,
    /// The gRPC status, when the response carried one.
    pub grpc: Option<GrpcCode>,
    /// Set when the exchange did not complete as the service answered it.
    pub failure: Option<Failure>,
}

/// Why an exchange did not complete as the service answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The mesh answered instead of the service.
    Mesh(ErrorKind),
    /// The response broke off mid-stream.
    StreamError,
    /// The caller went away before the response ended.
    Cancelled,
}

impl Failure {
    /// The `error` metrics label and the access log's `error` field.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Mesh(kind) => kind.code(),
            Failure::StreamError => "stream-error",
            Failure::Cancelled => "cancelled",
        }
    }
}

impl Outcome {
    /// From response headers; a trailers-only gRPC response already carries
    /// its status here.
    pub fn from_headers(status: StatusCode, headers: &HeaderMap) -> Self {
        Outcome {
            status,
            grpc: grpc_status(headers),
            failure: None,
        }
    }

    /// The mesh's own answer for `err`, as the caller will get it.
    pub fn from_error(err: &ProxyError, grpc: bool) -> Self {
        Outcome {
            status: err.http_status(grpc),
            grpc: grpc.then(|| err.grpc_code()),
            failure: Some(Failure::Mesh(err.kind())),
        }
    }

    /// Reads a status from trailers (or a first frame's trailers).
    pub fn read_trailers(&mut self, trailers: &HeaderMap) {
        if let Some(code) = grpc_status(trailers) {
            self.grpc = Some(code);
        }
    }

    /// Whether the endpoint failed (outlier ejection counts it): it could
    /// not be reached or broke off, answered 5xx, or a gRPC status that
    /// says it is failing. A caller that went away is not its fault.
    pub fn is_endpoint_failure(&self) -> bool {
        match self.failure {
            Some(Failure::Cancelled) => false,
            Some(_) => true,
            None => match self.grpc {
                Some(code) => code.is_endpoint_failure(),
                None => self.status.is_server_error(),
            },
        }
    }

    /// Whether the exchange failed by the server's fault (or the mesh's):
    /// what `weftctl top`'s success rate and server spans count.
    pub fn is_server_fault(&self) -> bool {
        self.failure.is_some()
            || match self.grpc {
                Some(code) => code.is_server_fault(),
                None => self.status.is_server_error(),
            }
    }

    /// The `error` label: empty for a complete exchange.
    pub fn error_label(&self) -> &'static str {
        self.failure.map_or("", Failure::label)
    }
}

/// `grpc-status` of headers or trailers.
pub fn grpc_status(headers: &HeaderMap) -> Option<GrpcCode> {
    headers.get(GRPC_STATUS).and_then(GrpcCode::from_header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_status(code: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", http::HeaderValue::from_static(code));
        h
    }

    #[test]
    fn grpc_status_from_headers_or_trailers() {
        let mut o = Outcome::from_headers(StatusCode::OK, &HeaderMap::new());
        assert_eq!(o.grpc, None);
        o.read_trailers(&with_status("14"));
        assert_eq!(o.grpc, Some(GrpcCode::Unavailable));
        assert!(o.is_endpoint_failure() && o.is_server_fault());
        let o = Outcome::from_headers(StatusCode::OK, &with_status("5"));
        assert!(
            !o.is_endpoint_failure() && !o.is_server_fault(),
            "NOT_FOUND"
        );
        let o = Outcome::from_headers(StatusCode::OK, &with_status("4"));
        assert!(
            !o.is_endpoint_failure() && o.is_server_fault(),
            "a deadline"
        );
    }

    #[test]
    fn http_statuses() {
        let o = |s: u16| {
            Outcome::from_headers(StatusCode::from_u16(s).expect("status"), &HeaderMap::new())
        };
        assert!(o(502).is_endpoint_failure() && o(502).is_server_fault());
        assert!(!o(404).is_endpoint_failure() && !o(404).is_server_fault());
        assert_eq!(o(200).error_label(), "");
    }

    #[test]
    fn failures() {
        let cancelled = Outcome {
            failure: Some(Failure::Cancelled),
            ..Outcome::from_headers(StatusCode::OK, &HeaderMap::new())
        };
        assert!(!cancelled.is_endpoint_failure(), "the caller left");
        assert!(cancelled.is_server_fault());
        assert_eq!(cancelled.error_label(), "cancelled");
        let e = ProxyError::NoEndpoints("x".into());
        let o = Outcome::from_error(&e, true);
        assert_eq!(
            (o.status, o.grpc, o.error_label()),
            (
                StatusCode::OK,
                Some(GrpcCode::Unavailable),
                "no-healthy-endpoints"
            )
        );
        assert!(o.is_endpoint_failure());
        let o = Outcome::from_error(&e, false);
        assert_eq!((o.status.as_u16(), o.grpc), (503, None));
    }
}
