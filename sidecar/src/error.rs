//! The failures the mesh itself produces on the request path, and the one
//! place where each becomes an answer: a trailers-only gRPC response with a
//! meaningful status, or an HTTP status, plus `x-weft-error` naming the cause.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use weft_proto::grpc::{GRPC_MESSAGE, GRPC_STATUS, GrpcCode};

use crate::body::{BoxBody, full};

/// The header that names why the mesh answered instead of the service.
pub const ERROR_HEADER: &str = "x-weft-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("unknown service {0:?}: the control plane knows no such service")]
    UnknownService(String),
    #[error("service {0:?} could not be learned from the control plane in time")]
    DiscoveryTimeout(String),
    #[error("no route: {0}")]
    NoRoute(String),
    #[error("service {0:?} has no healthy endpoints")]
    NoEndpoints(String),
    #[error("connect to {addr} failed: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("connect to {addr} timed out")]
    ConnectTimeout { addr: String },
    #[error("HTTP/2 handshake with {addr} failed: {source}")]
    Handshake { addr: String, source: h2::Error },
    #[error("upstream {addr} failed the request: {source}")]
    Upstream { addr: String, source: h2::Error },
    #[error("this sidecar has no local app (--app)")]
    NoApp,
    #[error("the local app at {addr} failed the request: {reason}")]
    App { addr: String, reason: String },
    /// A caller named a port of this pod (interception keeps the port it
    /// dialled) where no app can be reached.
    #[error("nothing of this pod's app answers on port {port}: {reason}")]
    NoAppPort { port: u16, reason: AppPortRefusal },
    #[error("this sidecar has no certificate yet")]
    NoCertificate,
    #[error("mutual TLS with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("upstream {addr} broke off the response: {reason}")]
    Reset { addr: String, reason: String },
    #[error("the deadline passed before {0:?} answered")]
    DeadlineExceeded(String),
    #[error("every try of {service:?} timed out after {per_try:?}")]
    PerTryTimeout {
        service: String,
        per_try: std::time::Duration,
    },
    #[error("{service:?} is at its limit of {limit} {what}")]
    Overloaded {
        service: String,
        what: &'static str,
        limit: usize,
    },
    #[error("a fault injected by the mesh's policy for {service:?}")]
    FaultInjected {
        service: String,
        grpc_status: GrpcCode,
        http_status: u16,
    },
    #[error("{caller} may not call {what} on {service}")]
    Forbidden {
        caller: String,
        service: String,
        what: String,
    },
    #[error("no route of gateway {gateway:?} takes {host}{path}")]
    NotFound {
        gateway: String,
        host: String,
        path: String,
    },
    #[error("the request body is larger than the gateway's limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// A local rate limit's bucket is empty (`edge::ratelimit`).
    #[error("{what} is over its rate limit; retry after {}s", retry_after_secs(*retry_after))]
    RateLimited {
        what: String,
        retry_after: std::time::Duration,
    },
}

/// Why a port a caller named reaches no app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppPortRefusal {
    /// Connecting to it on loopback was refused: the app does not listen.
    #[error("the app does not listen on it")]
    NotListening,
    /// One of the sidecar's own listeners (admin, outbound, inbound,
    /// upstream ports): never a caller's to reach. Answered like a denial
    /// (403, PERMISSION_DENIED), as is `Invalid`: retrying cannot help,
    /// where another endpoint may well listen on a port this one does not.
    #[error("it is one of the sidecar's own ports")]
    SidecarPort,
    /// `x-weft-target-port` was no port number.
    #[error("the target port is not a port number")]
    Invalid,
}

impl AppPortRefusal {
    /// The `reason` label of `weft_app_port_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            AppPortRefusal::NotListening => "not-listening",
            AppPortRefusal::SidecarPort => "sidecar-port",
            AppPortRefusal::Invalid => "invalid",
        }
    }
}

/// What kind of failure a [`ProxyError`] is: a small copyable value that
/// retries, outlier ejection, metrics and logs decide on, so that none of
/// them reads error text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    UnknownService,
    DiscoveryTimeout,
    NoRoute,
    NoEndpoints,
    ConnectFailed,
    ConnectTimeout,
    HandshakeFailed,
    /// The peer refused the HTTP/2 stream (REFUSED_STREAM): it did not
    /// process the request.
    RefusedStream,
    UpstreamFailed,
    NoApp,
    AppFailed,
    NoAppPort,
    NoCertificate,
    TlsFailed,
    Forbidden,
    UpstreamReset,
    DeadlineExceeded,
    PerTryTimeout,
    Overloaded,
    FaultInjected,
    /// At a gateway: no route takes the request.
    NotFound,
    /// At a gateway: the body is over the limit.
    TooLarge,
    RateLimited,
}

/// How an attempt failed to reach the service, as retry conditions name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// No connection (TCP, TLS or HTTP/2 setup failed, or no certificate
    /// yet): the request never left.
    ConnectFailure,
    /// The peer refused the stream: it never processed the request.
    RefusedStream,
    /// The connection or stream broke after the request was sent.
    Reset,
    /// The try's own time limit passed.
    PerTryTimeout,
}

impl Transport {
    /// The `reason` label of retries.
    pub fn name(self) -> &'static str {
        match self {
            Transport::ConnectFailure => "connect-failure",
            Transport::RefusedStream => "refused-stream",
            Transport::Reset => "reset",
            Transport::PerTryTimeout => "per-try-timeout",
        }
    }
}

impl ErrorKind {
    /// The value of `x-weft-error`: short, stable, greppable.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::UnknownService => "unknown-service",
            ErrorKind::DiscoveryTimeout => "discovery-timeout",
            ErrorKind::NoRoute => "no-route",
            ErrorKind::NoEndpoints => "no-healthy-endpoints",
            ErrorKind::ConnectFailed => "connect-failed",
            ErrorKind::ConnectTimeout => "connect-timeout",
            ErrorKind::HandshakeFailed => "handshake-failed",
            // The same code as any failed request: a refused stream is told
            // apart for retries, not for the caller.
            ErrorKind::RefusedStream | ErrorKind::UpstreamFailed => "upstream-failed",
            ErrorKind::NoApp => "no-app",
            ErrorKind::AppFailed => "app-failed",
            ErrorKind::NoAppPort => "no-app-port",
            ErrorKind::NoCertificate => "no-certificate",
            ErrorKind::TlsFailed => "tls-failed",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::UpstreamReset => "upstream-reset",
            ErrorKind::DeadlineExceeded => "deadline-exceeded",
            ErrorKind::PerTryTimeout => "per-try-timeout",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::FaultInjected => "fault-injected",
            ErrorKind::NotFound => "no-route-matched",
            ErrorKind::TooLarge => "request-too-large",
            ErrorKind::RateLimited => "rate-limited",
        }
    }

    /// For retries: how the attempt failed to reach the service; `None`
    /// for failures that are not the upstream's (and never retried).
    pub fn transport(self) -> Option<Transport> {
        match self {
            ErrorKind::ConnectFailed
            | ErrorKind::ConnectTimeout
            | ErrorKind::HandshakeFailed
            | ErrorKind::TlsFailed
            | ErrorKind::NoCertificate => Some(Transport::ConnectFailure),
            ErrorKind::RefusedStream => Some(Transport::RefusedStream),
            ErrorKind::UpstreamFailed | ErrorKind::UpstreamReset => Some(Transport::Reset),
            ErrorKind::PerTryTimeout => Some(Transport::PerTryTimeout),
            _ => None,
        }
    }
}

impl ProxyError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::UnknownService(_) => ErrorKind::UnknownService,
            ProxyError::DiscoveryTimeout(_) => ErrorKind::DiscoveryTimeout,
            ProxyError::NoRoute(_) => ErrorKind::NoRoute,
            ProxyError::NoEndpoints(_) => ErrorKind::NoEndpoints,
            ProxyError::Connect { .. } => ErrorKind::ConnectFailed,
            ProxyError::ConnectTimeout { .. } => ErrorKind::ConnectTimeout,
            ProxyError::Handshake { .. } => ErrorKind::HandshakeFailed,
            ProxyError::Upstream { source, .. } if refused_stream(source) => {
                ErrorKind::RefusedStream
            }
            ProxyError::Upstream { .. } => ErrorKind::UpstreamFailed,
            ProxyError::NoApp => ErrorKind::NoApp,
            ProxyError::App { .. } => ErrorKind::AppFailed,
            ProxyError::NoAppPort { .. } => ErrorKind::NoAppPort,
            ProxyError::NoCertificate => ErrorKind::NoCertificate,
            ProxyError::Tls { .. } => ErrorKind::TlsFailed,
            ProxyError::Forbidden { .. } => ErrorKind::Forbidden,
            ProxyError::Reset { .. } => ErrorKind::UpstreamReset,
            ProxyError::DeadlineExceeded(_) => ErrorKind::DeadlineExceeded,
            ProxyError::PerTryTimeout { .. } => ErrorKind::PerTryTimeout,
            ProxyError::Overloaded { .. } => ErrorKind::Overloaded,
            ProxyError::FaultInjected { .. } => ErrorKind::FaultInjected,
            ProxyError::NotFound { .. } => ErrorKind::NotFound,
            ProxyError::TooLarge { .. } => ErrorKind::TooLarge,
            ProxyError::RateLimited { .. } => ErrorKind::RateLimited,
        }
    }

    /// The value of `x-weft-error`.
    pub fn code(&self) -> &'static str {
        self.kind().code()
    }

    /// The HTTP status of the mesh's answer: for gRPC callers always 200
    /// (the status travels in `grpc-status`).
    pub fn http_status(&self, grpc: bool) -> StatusCode {
        if grpc {
            return StatusCode::OK;
        }
        match self {
            ProxyError::Upstream { .. } | ProxyError::Reset { .. } | ProxyError::App { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::ConnectTimeout { .. }
            | ProxyError::DeadlineExceeded(_)
            | ProxyError::PerTryTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            // Asked for what is never served: no other endpoint or retry
            // would answer otherwise.
            ProxyError::NoAppPort { reason, .. } if *reason != AppPortRefusal::NotListening => {
                StatusCode::FORBIDDEN
            }
            ProxyError::NotFound { .. } => StatusCode::NOT_FOUND,
            ProxyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::FaultInjected { http_status, .. } => {
                StatusCode::from_u16(*http_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status: PERMISSION_DENIED for authorization,
    /// DEADLINE_EXCEEDED for time limits, RESOURCE_EXHAUSTED for a rate
    /// limit (what gRPC clients do not retry at once), UNAVAILABLE for every failure to
    /// reach a service, which is what gRPC clients treat as "try again
    /// elsewhere".
    pub fn grpc_code(&self) -> GrpcCode {
        match self {
            ProxyError::Forbidden { .. } => GrpcCode::PermissionDenied,
            ProxyError::NoAppPort { reason, .. } if *reason != AppPortRefusal::NotListening => {
                GrpcCode::PermissionDenied
            }
            // What a gRPC server answers for a method it does not have.
            ProxyError::NotFound { .. } => GrpcCode::Unimplemented,
            ProxyError::TooLarge { .. } => GrpcCode::ResourceExhausted,
            ProxyError::DeadlineExceeded(_) | ProxyError::PerTryTimeout { .. } => {
                GrpcCode::DeadlineExceeded
            }
            ProxyError::FaultInjected { grpc_status, .. } => *grpc_status,
            ProxyError::RateLimited { .. } => GrpcCode::ResourceExhausted,
            _ => GrpcCode::Unavailable,
        }
    }

    /// The response the caller gets.
    pub fn into_response(self, grpc: bool) -> Response<BoxBody> {
        let code = self.code();
        let message = self.to_string();
        // RFC 9110 §10.2.3: delay-seconds, so a fraction rounds up.
        let retry_after = match &self {
            ProxyError::RateLimited { retry_after, .. } => {
                Some(HeaderValue::from(retry_after_secs(*retry_after)))
            }
            _ => None,
        };
        let mut resp = if grpc {
            // Trailers-only: status and message in the headers, empty body.
            let mut r = Response::new(crate::body::empty());
            let h = r.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(GRPC_STATUS, self.grpc_code().header_value());
            if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
                h.insert(GRPC_MESSAGE, v);
            }
            r
        } else {
            let mut r = Response::new(full(Bytes::from(format!("{message}\n"))));
            *r.status_mut() = self.http_status(false);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        resp.headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static(code));
        if let Some(v) = retry_after {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        resp
    }
}

/// Whole seconds, rounded up: waiting 100 ms means `Retry-After: 1`.
pub fn retry_after_secs(d: std::time::Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Whether the peer did not process the request: it refused the stream
/// (REFUSED_STREAM, RFC 9113 §8.7), or it is shutting down gracefully and
/// the stream is past the last one its GOAWAY kept (§6.8). h2 fails only
/// those streams with the peer's GOAWAY itself; a stream the peer kept
/// and then lost ends with the connection's own error. A GOAWAY with an
/// error code fails kept and unkept streams alike, so only NO_ERROR says.
fn refused_stream(e: &h2::Error) -> bool {
    e.reason() == Some(h2::Reason::REFUSED_STREAM)
        || (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::NO_ERROR))
}

/// An error and its causes on one line, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2 spec): bytes outside
/// printable ASCII, and `%` itself.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refused_stream_is_told_apart_from_other_upstream_failures() {
        let upstream = |reason| ProxyError::Upstream {
            addr: "10.0.0.1:4143".into(),
            source: h2::Error::from(reason),
        };
        let refused = upstream(h2::Reason::REFUSED_STREAM);
        assert_eq!(refused.kind(), ErrorKind::RefusedStream);
        assert_eq!(refused.kind().transport(), Some(Transport::RefusedStream));
        assert_eq!(refused.code(), "upstream-failed");
        for other in [h2::Reason::CANCEL, h2::Reason::INTERNAL_ERROR] {
            let e = upstream(other);
            assert_eq!(e.kind(), ErrorKind::UpstreamFailed, "{other:?}");
            assert_eq!(e.kind().transport(), Some(Transport::Reset));
        }
    }

    #[test]
    fn grpc_errors_are_trailers_only() {
        let r = ProxyError::UnknownService("x".into()).into_response(true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()[ERROR_HEADER], "unknown-service");
        let r = ProxyError::NoEndpoints("x".into()).into_response(false);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[ERROR_HEADER], "no-healthy-endpoints");
    }

    #[test]
    fn rate_limited_is_429_or_resource_exhausted_with_retry_after() {
        let over = || ProxyError::RateLimited {
            what: "user-service".into(),
            retry_after: std::time::Duration::from_millis(1_100),
        };
        let r = over().into_response(false);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "2", "rounded up");
        assert_eq!(r.headers()[ERROR_HEADER], "rate-limited");
        let r = over().into_response(true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "8");
        assert_eq!(
            r.headers()["grpc-message"],
            "user-service is over its rate limit; retry after 2s"
        );
        assert_eq!(retry_after_secs(std::time::Duration::from_secs(3)), 3);
        assert_eq!(retry_after_secs(std::time::Duration::from_nanos(1)), 1);
    }

    #[test]
    fn percent_encoding() {
        assert_eq!(percent_encode("a b%ü"), "a b%25%C3%BC");
    }
}
