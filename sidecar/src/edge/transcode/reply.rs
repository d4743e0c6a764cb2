//! The REST answer to a transcoded call: the gRPC reply message(s) as
//! JSON (the protobuf JSON mapping, `response_body` honoured; a server
//! stream as one JSON array), or the gRPC status as an HTTP status with
//! `{"code": <gRPC code>, "message": ...}`.

use bytes::{Buf, Bytes};
use http::StatusCode;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage, SerializeOptions};
use serde_json::Value as Json;
use thiserror::Error;
use weft_proto::grpc::GrpcCode;

use super::rules::Binding;
use super::status::{error_body, http_status};

/// Why a successful gRPC reply cannot be shown as JSON: the upstream's
/// fault, answered `502`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ReplyError {
    #[error("a gRPC message frame is cut short")]
    Truncated,
    #[error("a compressed gRPC message (the gateway asks for none)")]
    Compressed,
    #[error("the reply is not a {0}")]
    Undecodable(String),
    #[error("a unary call answered with {0} messages")]
    NotOne(usize),
    #[error("the reply does not map to JSON")]
    Json,
}

/// The HTTP status and JSON body for a finished call.
pub fn render(
    binding: &Binding,
    emit_defaults: bool,
    status: GrpcCode,
    message: &str,
    body: &[u8],
) -> (StatusCode, Bytes) {
    if status != GrpcCode::Ok {
        return (http_status(status), error_body(status, message));
    }
    match render_ok(binding, emit_defaults, body) {
        Ok(json) => (StatusCode::OK, json),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            error_body(GrpcCode::Internal, &e.to_string()),
        ),
    }
}

fn render_ok(binding: &Binding, emit_defaults: bool, body: &[u8]) -> Result<Bytes, ReplyError> {
    let output = binding.method.output();
    let messages = frames(body)?
        .into_iter()
        .map(|m| decode(&output, m))
        .collect::<Result<Vec<_>, _>>()?;
    let options = SerializeOptions::new().skip_default_fields(!emit_defaults);
    let json = |m: &DynamicMessage| match &binding.response_body {
        Some(field) => field_json(m, field, &options),
        None => to_json(m, &options),
    };
    let value = if binding.is_server_streaming() {
        Json::Array(messages.iter().map(json).collect::<Result<_, _>>()?)
    } else {
        match messages.as_slice() {
            [one] => json(one)?,
            other => return Err(ReplyError::NotOne(other.len())),
        }
    };
    serde_json::to_vec(&value)
        .map(Bytes::from)
        .map_err(|_| ReplyError::Json)
}

/// Splits a gRPC body into its length-prefixed messages.
pub fn frames(mut body: &[u8]) -> Result<Vec<&[u8]>, ReplyError> {
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            return Err(ReplyError::Truncated);
        }
        let compressed = body.get_u8();
        let len = body.get_u32() as usize;
        if compressed != 0 {
            return Err(ReplyError::Compressed);
        }
        if body.len() < len {
            return Err(ReplyError::Truncated);
        }
        let (message, rest) = body.split_at(len);
        out.push(message);
        body = rest;
    }
    Ok(out)
}

fn decode(output: &MessageDescriptor, bytes: &[u8]) -> Result<DynamicMessage, ReplyError> {
    DynamicMessage::decode(output.clone(), bytes)
        .map_err(|_| ReplyError::Undecodable(output.full_name().to_owned()))
}

fn to_json(m: &DynamicMessage, options: &SerializeOptions) -> Result<Json, ReplyError> {
    m.serialize_with_options(serde_json::value::Serializer, options)
        .map_err(|_| ReplyError::Json)
}

/// One field's JSON, as the whole body: serialised inside its message and
/// taken out, so it follows the same mapping; a default value left out of
/// the message's JSON is shown as what it is (`0`, `""`, `{}`, `[]`).
fn field_json(
    m: &DynamicMessage,
    field: &prost_reflect::FieldDescriptor,
    options: &SerializeOptions,
) -> Result<Json, ReplyError> {
    let mut alone = DynamicMessage::new(m.descriptor());
    alone.set_field(field, m.get_field(field).into_owned());
    let take = |json: Json| match json {
        Json::Object(mut o) => o.remove(field.json_name()),
        _ => None,
    };
    if let Some(v) = take(to_json(&alone, options)?) {
        return Ok(v);
    }
    let with_defaults = SerializeOptions::new().skip_default_fields(false);
    take(to_json(&alone, &with_defaults)?).ok_or(ReplyError::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_refuse_what_they_cannot_read() {
        let body = [0, 0, 0, 0, 2, 8, 1, 0, 0, 0, 0, 0];
        assert_eq!(frames(&body), Ok(vec![&[8u8, 1][..], &[][..]]));
        assert_eq!(frames(&[]), Ok(vec![]));
        assert_eq!(frames(&[0, 0, 0]), Err(ReplyError::Truncated));
        assert_eq!(frames(&[0, 0, 0, 0, 3, 1]), Err(ReplyError::Truncated));
        assert_eq!(frames(&[1, 0, 0, 0, 0]), Err(ReplyError::Compressed));
    }
}
