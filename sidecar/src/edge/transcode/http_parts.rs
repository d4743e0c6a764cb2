//! The transcoder on whole HTTP messages, as the gateway holds them: a
//! buffered REST request in, the gRPC request out; the gRPC response's
//! head, body and trailers in, the REST response out.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri, Version};
use weft_proto::grpc::{GRPC_MESSAGE, GRPC_STATUS, GRPC_TIMEOUT, GrpcCode};

use super::Transcoder;
use super::error::TranscodeError;
use super::percent::{self, Mode};
use super::rules::Binding;
use weft_proto::deadline;

/// A REST request as the gRPC call to send upstream.
#[derive(Debug)]
pub struct GrpcCall {
    pub request: http::Request<Bytes>,
    /// The binding it matched: give it to [`Transcoder::http_response`].
    pub binding: Arc<Binding>,
}

/// Headers not passed on as gRPC metadata: hop-by-hop ones, those that
/// describe the JSON body, and gRPC's own (the client's `grpc-timeout` is
/// checked and set apart).
const NOT_METADATA: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "accept",
    "accept-encoding",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "grpc-status",
    "grpc-message",
];

impl Transcoder {
    /// The gRPC request for a buffered REST request; `Ok(None)` when no
    /// binding matches (route it unchanged), an error (`to_http()`) when it
    /// matches but does not fit.
    pub fn grpc_request(
        &self,
        req: &http::Request<Bytes>,
    ) -> Result<Option<GrpcCall>, TranscodeError> {
        let uri = req.uri();
        let Some(t) = self.request(req.method(), uri.path(), uri.query(), req.body())? else {
            return Ok(None);
        };
        let authority = uri.authority().cloned().or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse().ok())
        });
        let mut parts = http::uri::Parts::default();
        if authority.is_some() {
            parts.scheme = Some(uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP));
        }
        parts.authority = authority;
        parts.path_and_query = Some(t.binding.grpc_uri.clone());
        let grpc_uri =
            Uri::from_parts(parts).unwrap_or_else(|_| Uri::from(t.binding.grpc_uri.clone()));

        let mut out = http::Request::new(t.message);
        *out.method_mut() = http::Method::POST;
        *out.uri_mut() = grpc_uri;
        *out.version_mut() = Version::HTTP_2;
        let headers = out.headers_mut();
        for (name, value) in req.headers() {
            if !is_dropped(name, req.headers()) {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        if let Some(t) = req.headers().get(GRPC_TIMEOUT)
            && deadline::parse(t).is_some()
        {
            headers.insert(GRPC_TIMEOUT, t.clone());
        }
        Ok(Some(GrpcCall {
            request: out,
            binding: t.binding,
        }))
    }

    /// The REST response for a gRPC response: its head, its buffered body
    /// and its trailers (`None` for a Trailers-Only response, whose status
    /// is in the head).
    pub fn http_response(
        &self,
        binding: &Binding,
        head: &http::response::Parts,
        body: &[u8],
        trailers: Option<&HeaderMap>,
    ) -> http::Response<Bytes> {
        let (code, message) = grpc_status(head, trailers);
        let (status, json) = self.response(binding, code, &message, body);
        json_response(status, json)
    }
}

impl TranscodeError {
    /// The REST response for this error (a client's is `400`).
    pub fn to_http_response(&self) -> http::Response<Bytes> {
        let (status, json) = self.to_http();
        json_response(status, json)
    }
}

fn json_response(status: StatusCode, json: Bytes) -> http::Response<Bytes> {
    let mut res = http::Response::new(json);
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// Whether a REST header stays behind: the fixed list, and whatever the
/// `Connection` header names (RFC 9110 §7.6.1).
fn is_dropped(name: &HeaderName, headers: &HeaderMap) -> bool {
    NOT_METADATA.contains(&name.as_str())
        || headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// The call's status: from the trailers, else the head (Trailers-Only),
/// else from the HTTP status as the gRPC spec maps one
/// (doc/http-grpc-status-mapping.md).
fn grpc_status(head: &http::response::Parts, trailers: Option<&HeaderMap>) -> (GrpcCode, String) {
    let from = |map: &HeaderMap| {
        let code = map.get(GRPC_STATUS).and_then(GrpcCode::from_header)?;
        let message = map
            .get(GRPC_MESSAGE)
            .and_then(|m| m.to_str().ok())
            .map(|m| percent::decode(m, Mode::Segment).unwrap_or_else(|_| m.to_owned()))
            .unwrap_or_default();
        Some((code, message))
    };
    if let Some(found) = trailers.and_then(from).or_else(|| from(&head.headers)) {
        return found;
    }
    let code = match head.status {
        StatusCode::OK => {
            return (
                GrpcCode::Unknown,
                "the upstream's reply carries no grpc-status".to_owned(),
            );
        }
        StatusCode::BAD_REQUEST => GrpcCode::Internal,
        StatusCode::UNAUTHORIZED => GrpcCode::Unauthenticated,
        StatusCode::FORBIDDEN => GrpcCode::PermissionDenied,
        StatusCode::NOT_FOUND => GrpcCode::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => GrpcCode::Unavailable,
        _ => GrpcCode::Unknown,
    };
    (code, format!("the upstream answered HTTP {}", head.status))
}
