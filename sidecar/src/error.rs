//! The failures the mesh itself produces on the request path, and the one
//! place where each becomes an answer: a trailers-only gRPC response with a
//! meaningful status, or an HTTP status, plus `x-weft-error` naming the cause.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::{BoxBody, full};

/// The header that names why the mesh answered instead of the service.
pub const ERROR_HEADER: &str = "x-weft-error";

/// Who was at fault, for metrics and for deciding what may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The caller asked for something that does not exist.
    Caller,
    /// The mesh could not find or reach a healthy upstream.
    Upstream,
}

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
    Handshake { addr: String, source: hyper::Error },
    #[error("upstream {addr} failed the request: {source}")]
    Upstream { addr: String, source: hyper::Error },
    #[error("this sidecar has no local app (--app)")]
    NoApp,
    #[error("the local app at {addr} failed the request: {reason}")]
    App { addr: String, reason: String },
    #[error("the sidecar is shutting down")]
    ShuttingDown,
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
        grpc_status: u16,
        http_status: u16,
    },
    #[error("{caller} may not call {what} on {service}")]
    Forbidden {
        caller: String,
        service: String,
        what: String,
    },
}

impl ProxyError {
    /// For retries: what kind of failure to reach the service this was;
    /// `None` for failures that are not the upstream's.
    pub fn retry_kind(&self) -> Option<&'static str> {
        match self {
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Handshake { .. }
            | ProxyError::Tls { .. }
            | ProxyError::NoCertificate => Some("connect-failure"),
            ProxyError::Upstream { source, .. } => {
                // hyper reports an HTTP/2 REFUSED_STREAM (the server did not
                // process the request) in its error chain.
                if error_chain(source).to_ascii_lowercase().contains("refused") {
                    Some("refused-stream")
                } else {
                    Some("reset")
                }
            }
            ProxyError::Reset { .. } => Some("reset"),
            _ => None,
        }
    }

    /// The value of `x-weft-error`: short, stable, greppable.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::UnknownService(_) => "unknown-service",
            ProxyError::DiscoveryTimeout(_) => "discovery-timeout",
            ProxyError::NoRoute(_) => "no-route",
            ProxyError::NoEndpoints(_) => "no-healthy-endpoints",
            ProxyError::Connect { .. } => "connect-failed",
            ProxyError::ConnectTimeout { .. } => "connect-timeout",
            ProxyError::Handshake { .. } => "handshake-failed",
            ProxyError::Upstream { .. } => "upstream-failed",
            ProxyError::NoApp => "no-app",
            ProxyError::App { .. } => "app-failed",
            ProxyError::ShuttingDown => "shutting-down",
            ProxyError::NoCertificate => "no-certificate",
            ProxyError::Tls { .. } => "tls-failed",
            ProxyError::Forbidden { .. } => "forbidden",
            ProxyError::Reset { .. } => "upstream-reset",
            ProxyError::DeadlineExceeded(_) => "deadline-exceeded",
            ProxyError::PerTryTimeout { .. } => "per-try-timeout",
            ProxyError::Overloaded { .. } => "overloaded",
            ProxyError::FaultInjected { .. } => "fault-injected",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::UnknownService(_)
            | ProxyError::NoRoute(_)
            | ProxyError::Forbidden { .. } => Fault::Caller,
            _ => Fault::Upstream,
        }
    }

    fn http_status(&self) -> StatusCode {
        match self {
            ProxyError::Upstream { .. } | ProxyError::Reset { .. } | ProxyError::App { .. } => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::ConnectTimeout { .. }
            | ProxyError::DeadlineExceeded(_)
            | ProxyError::PerTryTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ProxyError::FaultInjected { http_status, .. } => {
                StatusCode::from_u16(*http_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status code: PERMISSION_DENIED (7) for authorization,
    /// UNAVAILABLE (14) for every failure to reach a service, which is what
    /// gRPC clients treat as "try again elsewhere".
    fn grpc_status(&self) -> u16 {
        match self {
            ProxyError::Forbidden { .. } => 7,
            ProxyError::DeadlineExceeded(_) | ProxyError::PerTryTimeout { .. } => 4,
            ProxyError::FaultInjected { grpc_status, .. } => *grpc_status,
            _ => 14,
        }
    }

    /// The response the caller gets.
    pub fn into_response(self, grpc: bool) -> Response<BoxBody> {
        let code = self.code();
        let message = self.to_string();
        let mut resp = if grpc {
            // Trailers-only: status and message in the headers, empty body.
            let mut r = Response::new(crate::body::empty());
            let h = r.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert("grpc-status", HeaderValue::from(self.grpc_status()));
            if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
                h.insert("grpc-message", v);
            }
            r
        } else {
            let mut r = Response::new(full(Bytes::from(format!("{message}\n"))));
            *r.status_mut() = self.http_status();
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        resp.headers_mut()
            .insert(ERROR_HEADER, HeaderValue::from_static(code));
        resp
    }
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
    fn percent_encoding() {
        assert_eq!(percent_encode("a b%ü"), "a b%25%C3%BC");
    }
}
