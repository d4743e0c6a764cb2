//! The transcoder against the restaurant's annotated protos
//! (tests/proto/restaurant.proto), compiled with protox as a user's
//! descriptor set would be: loading, binding requests, rendering replies,
//! and both on whole HTTP messages.

mod http_messages;
mod load;
mod reply;
mod request;

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http::Method;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use serde_json::Value as Json;

use super::{Binding, RequestError, TranscodeError, Transcoded, Transcoder};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A descriptor set with its imports, from `file` in `dir` (and
/// google/api/*.proto from the repository's proto/). Encoded by protox
/// itself: `protox::compile` returns prost-types structs, which drop the
/// extension options (the `google.api.http` rules among them).
fn compile(dir: &Path, file: &str) -> Vec<u8> {
    let mut compiler =
        protox::Compiler::new([dir.to_owned(), root().join("proto")]).expect("includes");
    compiler
        .include_imports(true)
        .open_file(file)
        .expect("protos compile");
    compiler.encode_file_descriptor_set()
}

static RESTAURANT: LazyLock<Transcoder> = LazyLock::new(|| {
    let set = compile(&root().join("tests/proto"), "restaurant.proto");
    Transcoder::from_bytes(&set).expect("restaurant bindings load")
});

/// The gRPC path and the request message as JSON (defaults shown, proto
/// names) for a REST call.
fn call(method: Method, path_and_query: &str, body: &str) -> (String, Json) {
    let t = try_call(method.clone(), path_and_query, body)
        .unwrap_or_else(|e| panic!("{method} {path_and_query}: {e}"))
        .unwrap_or_else(|| panic!("{method} {path_and_query}: no binding"));
    let framed = t.message.as_ref();
    assert_eq!(framed[0], 0, "uncompressed");
    let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
    assert_eq!(len, framed.len() - 5, "one whole message");
    let msg = DynamicMessage::decode(t.binding.method.input(), &framed[5..]).expect("decodes");
    (t.grpc_path().to_owned(), to_json(&msg))
}

fn try_call(
    method: Method,
    path_and_query: &str,
    body: &str,
) -> Result<Option<Transcoded>, TranscodeError> {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    RESTAURANT.request(&method, path, query, body.as_bytes())
}

fn request_error(method: Method, path_and_query: &str, body: &str) -> RequestError {
    match try_call(method, path_and_query, body) {
        Err(TranscodeError::Request(e)) => e,
        Err(e) => panic!("{path_and_query}: not a request error: {e}"),
        Ok(_) => panic!("{path_and_query}: transcoded"),
    }
}

fn to_json(msg: &DynamicMessage) -> Json {
    let options = prost_reflect::SerializeOptions::new()
        .skip_default_fields(true)
        .use_proto_field_name(true);
    msg.serialize_with_options(serde_json::value::Serializer, &options)
        .expect("json")
}

fn binding(method: Method, path: &str) -> Arc<Binding> {
    RESTAURANT
        .request(&method, path, None, b"")
        .expect("transcodes")
        .expect("matches")
        .binding
}

/// A message of the binding's output type from JSON, framed.
fn reply_frame(binding: &Binding, reply: Json) -> Vec<u8> {
    let msg = DynamicMessage::deserialize(binding.method.output(), reply).expect("reply");
    let bytes = msg.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&u32::try_from(bytes.len()).expect("small").to_be_bytes());
    out.extend_from_slice(&bytes);
    out
}

fn body_json(body: &Bytes) -> Json {
    serde_json::from_slice(body).expect("a JSON body")
}
