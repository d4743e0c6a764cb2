//! REST→gRPC transcoding from `google.api.http` annotations: a REST client
//! calls a gRPC service through the gateway without a hand-written REST
//! layer.
//!
//! [`Transcoder::load`] reads a binary `FileDescriptorSet` (what `protoc
//! --include_imports --descriptor_set_out` writes, or protox's
//! `Compiler::encode_file_descriptor_set` — not `protox::compile`, whose
//! prost-types structs drop the options' extensions, the rules with them).
//! It must hold google/api/annotations.proto and http.proto (ours are in
//! proto/google/api/). Every binding is checked whole: a bad template or an
//! unknown field names the method and refuses the set. Then, per request:
//!
//! - [`Transcoder::grpc_request`] takes the buffered REST request
//!   (`http::Request<Bytes>`). `Ok(None)`: no binding matches its method
//!   and path, and the gateway routes it unchanged. `Ok(Some(call))`:
//!   `call.request` is the gRPC request to send upstream — `POST` to
//!   `/package.Service/Method` on the same authority, HTTP/2, one framed
//!   message, `content-type: application/grpc`, `te: trailers`, the
//!   client's `grpc-timeout` if it sent a valid one, and the client's other
//!   end-to-end headers as metadata. Keep `call.binding` for the answer.
//!   `Err(e)`: the request matched but does not fit (`e.to_http()`: `400`
//!   and `{"code": 3, "message": ...}`).
//! - [`Transcoder::http_response`] takes the gRPC response's head, its
//!   buffered body and its trailers and gives the REST response: `200` and
//!   the reply as JSON, or the gRPC status mapped to HTTP (NOT_FOUND → 404,
//!   UNAVAILABLE → 503, ...) with `{"code", "message"}`.
//!
//! [`Transcoder::request`] and [`Transcoder::response`] are the same two
//! steps on bare parts. Which binding wins when several match: the most
//! specific template (literal before `*` before `**`, a verb before none),
//! then declaration order. The body is read first, then path variables
//! (a body that sets the same field to another value is refused), then
//! query parameters, which may name only fields neither the path nor the
//! body binds. A body sent to a binding without one is ignored. Unary and
//! server-streaming methods (the replies buffered, as one JSON array) are
//! served; client streaming is refused at load.

mod bind;
mod error;
mod http_parts;
mod percent;
mod reply;
mod rules;
mod status;
mod template;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::StatusCode;
use prost::Message as _;
use prost_reflect::DescriptorPool;
use weft_proto::grpc::GrpcCode;

pub use error::{RequestError, RuleError, TranscodeError};
pub use http_parts::GrpcCall;
pub use rules::Binding;
pub use status::http_status;
pub use template::TemplateError;

/// The bindings of a descriptor set, ready to match requests.
#[derive(Debug)]
pub struct Transcoder {
    /// Per HTTP method, the most specific template first.
    by_method: HashMap<http::Method, Vec<Arc<Binding>>>,
    options: Options,
}

/// The binding a request matched, and its template's captures.
type Found<'a> = (
    &'a Arc<Binding>,
    Result<Vec<template::Capture<'a>>, template::BadVariable<'a>>,
);

/// How replies are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// Show fields at their default value (`0`, `""`, `false`, `[]`); off
    /// by default, as the protobuf JSON mapping prescribes.
    pub emit_defaults: bool,
}

/// A REST request turned into a gRPC call.
#[derive(Debug, Clone)]
pub struct Transcoded {
    pub binding: Arc<Binding>,
    /// The request message, framed as one gRPC message (5-byte prefix).
    pub message: Bytes,
}

impl Transcoded {
    /// The gRPC path, `/package.Service/Method`.
    pub fn grpc_path(&self) -> &str {
        self.binding.grpc_path()
    }
}

impl Transcoder {
    /// Reads a binary `FileDescriptorSet` from a file.
    pub fn load(path: &Path) -> Result<Transcoder, TranscodeError> {
        let bytes = std::fs::read(path).map_err(|source| TranscodeError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(&bytes)
    }

    /// Reads a binary `FileDescriptorSet`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Transcoder, TranscodeError> {
        // prost-reflect (0.16.5) panics, rather than refuse, on a file
        // whose `syntax` is neither proto2 nor proto3: the error's label
        // points into the file list before that file is in it. protoc
        // writes `editions` for `edition = "2023"` files, so a user can
        // meet this; found by the gateway's property tests.
        // (Read here for the syntax alone: prost-types' structs drop the
        // options' extensions, so the pool decodes the bytes itself, and
        // reports what does not decode.)
        if let Ok(set) = prost_reflect::prost_types::FileDescriptorSet::decode(bytes)
            && let Some(file) = set
                .file
                .iter()
                .find(|f| !matches!(f.syntax.as_deref(), None | Some("proto2" | "proto3")))
        {
            return Err(TranscodeError::Syntax {
                file: file.name().to_string(),
                syntax: file.syntax().to_string(),
            });
        }
        Self::from_pool(&DescriptorPool::decode(bytes)?)
    }

    pub fn from_pool(pool: &DescriptorPool) -> Result<Transcoder, TranscodeError> {
        let mut by_method: HashMap<http::Method, Vec<Arc<Binding>>> = HashMap::new();
        for b in rules::read(pool)? {
            by_method
                .entry(b.http_method.clone())
                .or_default()
                .push(Arc::new(b));
        }
        for list in by_method.values_mut() {
            list.sort_by(|a, b| {
                a.template
                    .specificity(&b.template)
                    .then(a.order.cmp(&b.order))
            });
            for (i, b) in list.iter().enumerate() {
                if let Some(first) = list[..i]
                    .iter()
                    .find(|a| a.template.same_shape(&b.template))
                {
                    tracing::warn!(
                        method = %b.http_method,
                        template = b.template(),
                        shadowed = b.method_name(),
                        by = first.method_name(),
                        "a REST binding is shadowed by an earlier one with the same template",
                    );
                }
            }
        }
        Ok(Transcoder {
            by_method,
            options: Options::default(),
        })
    }

    pub fn with_options(mut self, options: Options) -> Self {
        self.options = options;
        self
    }

    /// Every binding, for logs and the admin page.
    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.by_method.values().flatten().map(|b| b.as_ref())
    }

    /// Whether a request with this method and path (no query) would be
    /// transcoded: lets the gateway decide before it buffers the body.
    pub fn matches(&self, method: &http::Method, path: &str) -> bool {
        self.find(method, path).is_some()
    }

    fn find<'a>(&'a self, method: &http::Method, path: &str) -> Option<Found<'a>> {
        self.by_method
            .get(method)?
            .iter()
            .find_map(|b| b.template.matches(path).transpose().map(|c| (b, c)))
    }

    /// The gRPC call for a REST request; `Ok(None)` when no binding
    /// matches (the request is routed unchanged).
    pub fn request(
        &self,
        method: &http::Method,
        path: &str,
        query: Option<&str>,
        body: &[u8],
    ) -> Result<Option<Transcoded>, TranscodeError> {
        let Some((binding, captures)) = self.find(method, path) else {
            return Ok(None);
        };
        let captures = captures.map_err(|bad| RequestError::PathEncoding {
            field: bad.variable.field_path.join("."),
            source: bad.error,
        })?;
        let msg = bind::message(binding, &captures, query, body)?;
        Ok(Some(Transcoded {
            binding: Arc::clone(binding),
            message: frame(&msg.encode_to_vec()),
        }))
    }

    /// The HTTP status and JSON body for a finished call: `grpc_message`
    /// as decoded from its header, `body` the gRPC messages as received.
    pub fn response(
        &self,
        binding: &Binding,
        grpc_status: GrpcCode,
        grpc_message: &str,
        body: &[u8],
    ) -> (StatusCode, Bytes) {
        reply::render(
            binding,
            self.options.emit_defaults,
            grpc_status,
            grpc_message,
            body,
        )
    }
}

/// One uncompressed gRPC message: flag 0, the length big-endian, the bytes.
fn frame(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(5 + message.len());
    out.put_u8(0);
    // A request message is built from a buffered HTTP body the gateway
    // caps far below 4 GiB.
    out.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    out.put_slice(message);
    out.freeze()
}
