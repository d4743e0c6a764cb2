//! What can go wrong, and whose fault it is: loading the descriptor set is
//! the operator's (the gateway refuses to start), a request that does not
//! fit its binding is the client's (`400` with a JSON body).

use std::path::PathBuf;

use bytes::Bytes;
use http::StatusCode;
use thiserror::Error;
use weft_proto::grpc::GrpcCode;

use super::percent::DecodeError;
use super::status::{error_body, http_status};
use super::template::TemplateError;

#[derive(Debug, Error)]
pub enum TranscodeError {
    #[error("reading the descriptor set {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the descriptor set does not load: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    #[error(
        "the descriptor set's {file} has syntax '{syntax}': only proto2 and proto3 files \
         can be transcoded"
    )]
    Syntax { file: String, syntax: String },
    #[error(
        "the descriptor set lacks the google.api.http option: build it with its imports \
         (google/api/annotations.proto and google/api/http.proto)"
    )]
    NoHttpExtension,
    #[error("no method in the descriptor set has a google.api.http option")]
    NoBindings,
    #[error("{method}: {problem}")]
    Rule { method: String, problem: RuleError },
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Why a method's `google.api.http` option cannot be served.
#[derive(Debug, Error)]
pub enum RuleError {
    #[error("the option does not decode: {0}")]
    Undecodable(#[from] prost::DecodeError),
    #[error("a binding without a pattern (get, put, post, delete, patch or custom)")]
    NoPattern,
    #[error("'{0}' is not an HTTP method")]
    BadMethod(String),
    #[error("the template '{template}': {problem}")]
    Template {
        template: String,
        problem: TemplateError,
    },
    #[error("the template '{template}': {message} has no field '{field}'")]
    UnknownPathField {
        template: String,
        message: String,
        field: String,
    },
    #[error(
        "the template '{template}': '{field}' cannot be bound from the path \
         (a singular scalar, enum or well-known scalar type is needed)"
    )]
    NotScalarPathField { template: String, field: String },
    #[error("body '{field}': {message} has no such top-level field")]
    UnknownBodyField { message: String, field: String },
    #[error("response_body '{field}': {message} has no such top-level field")]
    UnknownResponseField { message: String, field: String },
    #[error("an additional binding has additional bindings of its own")]
    NestedAdditionalBindings,
    #[error("'{0}' is not a URI path")]
    BadGrpcPath(String),
    #[error("client or bidirectional streaming cannot be transcoded")]
    ClientStreaming,
}

/// Why a request does not fit the binding it matched: the client's fault.
#[derive(Debug, Error)]
pub enum RequestError {
    #[error("the path variable '{field}': {source}")]
    PathEncoding { field: String, source: DecodeError },
    #[error("the path variable '{field}': {source}")]
    PathValue {
        field: String,
        source: serde_json::Error,
    },
    #[error("the query string: {0}")]
    QueryEncoding(DecodeError),
    #[error("the query parameter '{0}' names no field of the request")]
    UnknownQueryParameter(String),
    #[error("the query parameter '{0}' is not a scalar field (or a list of them)")]
    NotScalarQueryParameter(String),
    #[error("the query parameter '{0}' is given more than once for a single field")]
    RepeatedQueryParameter(String),
    #[error("the query parameter '{0}': {1}")]
    QueryValue(String, serde_json::Error),
    #[error("the query parameter '{0}' sets a field the path already binds")]
    QueryConflictsWithPath(String),
    #[error("the query parameter '{0}' sets a field the body already binds")]
    QueryConflictsWithBody(String),
    #[error("the body sets '{0}' to another value than the path")]
    BodyConflictsWithPath(String),
    #[error("the body is not the request's JSON: {0}")]
    Body(serde_json::Error),
}

impl TranscodeError {
    /// Whether the client sent something wrong (`400`), rather than the
    /// descriptor set being unusable.
    pub fn is_client_error(&self) -> bool {
        matches!(self, TranscodeError::Request(_))
    }

    /// The gRPC code the error stands for.
    pub fn grpc_code(&self) -> GrpcCode {
        if self.is_client_error() {
            GrpcCode::InvalidArgument
        } else {
            GrpcCode::Internal
        }
    }

    /// The HTTP answer: the status for the code and `{"code", "message"}`.
    pub fn to_http(&self) -> (StatusCode, Bytes) {
        let code = self.grpc_code();
        (http_status(code), error_body(code, &self.to_string()))
    }
}
