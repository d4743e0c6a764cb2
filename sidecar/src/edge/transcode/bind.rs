//! Builds a request message from what a REST call carries: the JSON body
//! first (the protobuf JSON mapping, by prost-reflect), then the path
//! variables, then the query parameters (`?userId=1&page.size=2&tags=a&tags=b`).
//!
//! A value from the path or the query is a string; it becomes the field's
//! JSON form (a bool, an enum number, or the string itself) and goes
//! through the same JSON mapping as the body, so an `int64`, an enum by
//! name, a `Timestamp` or a wrapper reads the same wherever it comes from.

use std::collections::HashMap;

use prost_reflect::{DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, Value};
use serde_json::Value as Json;

use super::error::RequestError;
use super::percent::{self, Mode};
use super::rules::{self, Binding, Body, FieldPath};
use super::template::Capture;

/// The request message for `binding` from the captures of its template,
/// the raw query string and the body.
pub fn message(
    binding: &Binding,
    captures: &[Capture<'_>],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, RequestError> {
    let input = binding.method.input();
    let mut msg = body_message(&input, &binding.body, body)?;
    for (field, capture) in binding.path_fields.iter().zip(captures) {
        let Some(leaf) = field.0.last() else { continue };
        let value =
            single_value(leaf, &capture.value).map_err(|source| RequestError::PathValue {
                field: field.name(),
                source,
            })?;
        if binding.body != Body::None && get_path(&msg, &field.0).is_some_and(|set| set != value) {
            return Err(RequestError::BodyConflictsWithPath(field.name()));
        }
        set_path(&mut msg, &field.0, value);
    }
    for (field, name, values) in query_params(&input, query.unwrap_or(""))? {
        if binding.path_fields.iter().any(|p| p.overlaps(&field)) {
            return Err(RequestError::QueryConflictsWithPath(name));
        }
        match &binding.body {
            Body::All => return Err(RequestError::QueryConflictsWithBody(name)),
            Body::Field(b) if field.0.first() == Some(b) => {
                return Err(RequestError::QueryConflictsWithBody(name));
            }
            _ => {}
        }
        let Some(leaf) = field.0.last() else { continue };
        let value = if leaf.is_list() {
            list_value(leaf, &values)
        } else if let [one] = values.as_slice() {
            single_value(leaf, one)
        } else {
            return Err(RequestError::RepeatedQueryParameter(name));
        };
        set_path(
            &mut msg,
            &field.0,
            value.map_err(|e| RequestError::QueryValue(name, e))?,
        );
    }
    Ok(msg)
}

fn body_message(
    input: &MessageDescriptor,
    body: &Body,
    bytes: &[u8],
) -> Result<DynamicMessage, RequestError> {
    // An empty body sets nothing, whatever the binding says: a client may
    // POST with no fields to send.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(DynamicMessage::new(input.clone()));
    }
    match body {
        Body::None => Ok(DynamicMessage::new(input.clone())),
        Body::All => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let msg = DynamicMessage::deserialize(input.clone(), &mut de)
                .and_then(|m| de.end().map(|()| m))
                .map_err(RequestError::Body)?;
            Ok(msg)
        }
        Body::Field(field) => {
            let json: Json = serde_json::from_slice(bytes).map_err(RequestError::Body)?;
            let value = field_from_json(field, json).map_err(RequestError::Body)?;
            let mut msg = DynamicMessage::new(input.clone());
            msg.set_field(field, value);
            Ok(msg)
        }
    }
}

/// The named query parameters resolved to fields, in first-seen order,
/// with every value given for each.
fn query_params(
    input: &MessageDescriptor,
    query: &str,
) -> Result<Vec<(FieldPath, String, Vec<String>)>, RequestError> {
    let mut params: Vec<(FieldPath, String, Vec<String>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = percent::decode(name, Mode::Form).map_err(RequestError::QueryEncoding)?;
        let value = percent::decode(value, Mode::Form).map_err(RequestError::QueryEncoding)?;
        if let Some(&i) = index.get(&name) {
            params[i].2.push(value);
            continue;
        }
        let field = query_field(input, &name)?;
        index.insert(name.clone(), params.len());
        params.push((field, name, vec![value]));
    }
    Ok(params)
}

/// Resolves `page.size` (proto or JSON names) to a scalar or a list of
/// scalars.
fn query_field(input: &MessageDescriptor, name: &str) -> Result<FieldPath, RequestError> {
    let unknown = || RequestError::UnknownQueryParameter(name.to_owned());
    let not_scalar = || RequestError::NotScalarQueryParameter(name.to_owned());
    let mut message = input.clone();
    let mut fields = Vec::new();
    let mut parts = name.split('.').peekable();
    while let Some(part) = parts.next() {
        let field = message
            .get_field_by_name(part)
            .or_else(|| message.get_field_by_json_name(part))
            .ok_or_else(unknown)?;
        let last = parts.peek().is_none();
        match field.kind() {
            _ if field.is_map() => return Err(not_scalar()),
            Kind::Message(m) if !last && !field.is_list() => message = m,
            kind if last && rules::is_scalar(&kind) => {}
            _ => return Err(not_scalar()),
        }
        fields.push(field);
    }
    Ok(FieldPath(fields))
}

/// One string as the value of a singular field.
fn single_value(field: &FieldDescriptor, s: &str) -> Result<Value, serde_json::Error> {
    field_from_json(field, scalar_json(&field.kind(), s))
}

/// Several strings as the value of a repeated field.
fn list_value(field: &FieldDescriptor, values: &[String]) -> Result<Value, serde_json::Error> {
    let kind = field.kind();
    let items = values.iter().map(|s| scalar_json(&kind, s)).collect();
    field_from_json(field, Json::Array(items))
}

/// The JSON a string stands for in a field of this kind: the JSON mapping
/// takes numbers, enum names and well-known types as strings already, but
/// a bool only as `true`/`false` and an enum's number only as a number.
fn scalar_json(kind: &Kind, s: &str) -> Json {
    let bool_like = match kind {
        Kind::Bool => true,
        Kind::Message(m) => m.full_name() == "google.protobuf.BoolValue",
        _ => false,
    };
    if bool_like && let Ok(b) = s.parse::<bool>() {
        return Json::Bool(b);
    }
    if matches!(kind, Kind::Enum(_))
        && let Ok(n) = s.parse::<i32>()
    {
        return Json::from(n);
    }
    Json::String(s.to_owned())
}

/// A field's value from its JSON form, by the protobuf JSON mapping: the
/// field alone, in an object of its message, read by prost-reflect.
fn field_from_json(field: &FieldDescriptor, json: Json) -> Result<Value, serde_json::Error> {
    let mut object = serde_json::Map::new();
    object.insert(field.json_name().to_owned(), json);
    let msg = DynamicMessage::deserialize(field.parent_message().clone(), Json::Object(object))?;
    Ok(msg.get_field(field).into_owned())
}

/// The value at a field path, if every step of it is set.
fn get_path(msg: &DynamicMessage, path: &[FieldDescriptor]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    if !msg.has_field(first) {
        return None;
    }
    let value = msg.get_field(first);
    match (rest, value.as_ref()) {
        ([], v) => Some(v.clone()),
        (rest, Value::Message(m)) => get_path(m, rest),
        _ => None,
    }
}

fn set_path(msg: &mut DynamicMessage, path: &[FieldDescriptor], value: Value) {
    match path {
        [] => {}
        [leaf] => msg.set_field(leaf, value),
        [first, rest @ ..] => {
            // Only singular message fields lead to a leaf (rules::path_field
            // and query_field check it), so this is always a message.
            if let Value::Message(m) = msg.get_field_mut(first) {
                set_path(m, rest, value);
            }
        }
    }
}
