//! The transcoder against the restaurant's annotated protos
//! (tests/proto/restaurant.proto), compiled with protox as a user's
//! descriptor set would be.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use http::{Method, StatusCode};
use prost::Message as _;
use prost_reflect::{DynamicMessage, ReflectMessage};
use serde_json::{Value as Json, json};
use weft_proto::grpc::GrpcCode;

use super::{Binding, Options, RequestError, RuleError, TranscodeError, Transcoder};

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
) -> Result<Option<super::Transcoded>, TranscodeError> {
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

#[test]
fn every_annotated_binding_loads_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("restaurant.pb");
    std::fs::write(
        &file,
        compile(&root().join("tests/proto"), "restaurant.proto"),
    )
    .expect("write");
    let t = Transcoder::load(&file).expect("loads");
    let mut seen: Vec<String> = t
        .bindings()
        .map(|b| format!("{} {} {}", b.http_method(), b.template(), b.grpc_path()))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "DELETE /api/orders/{id} /restaurant.v1.Kitchen/DeleteOrder",
            "GET /api/files/{path=**} /restaurant.v1.Kitchen/GetDish",
            "GET /api/orders /restaurant.v1.Orders/ListOrders",
            "GET /api/orders/{id} /restaurant.v1.Orders/GetOrder",
            "GET /api/orders:watch /restaurant.v1.Kitchen/WatchOrders",
            "GET /api/{name=shops/*/dishes/*} /restaurant.v1.Kitchen/GetDish",
            "HEAD /api/dishes/* /restaurant.v1.Kitchen/GetDish",
            "PATCH /api/orders/{order.id} /restaurant.v1.Kitchen/UpdateOrder",
            "POST /api/orders /restaurant.v1.Orders/CreateOrder",
            "POST /api/orders/{id}:cancel /restaurant.v1.Kitchen/CancelOrder",
            "PUT /api/users/{order.user_id}/orders/{order.id} /restaurant.v1.Kitchen/UpdateOrder",
        ]
    );
    let missing = Transcoder::load(&dir.path().join("nope.pb")).expect_err("no file");
    assert!(matches!(missing, TranscodeError::Read { .. }), "{missing}");
}

#[test]
fn query_parameters_bind_scalars_lists_nested_fields_and_well_known_types() {
    let (path, msg) = call(
        Method::GET,
        "/api/orders?userId=1&page.size=2&tags=a&tags=b%20c&statuses=STATUS_PLACED&statuses=2\
         &since=2024-01-02T03:04:05Z&paid=true&include_cancelled=true&page.token=x+y",
        "",
    );
    assert_eq!(path, "/restaurant.v1.Orders/ListOrders");
    assert_eq!(
        msg,
        json!({
            "user_id": "1",
            "page": {"size": 2, "token": "x y"},
            "tags": ["a", "b c"],
            "statuses": ["STATUS_PLACED", "STATUS_COOKING"],
            "since": "2024-01-02T03:04:05Z",
            "paid": true,
            "include_cancelled": true,
        })
    );
    let (_, none) = call(Method::GET, "/api/orders", "");
    assert_eq!(none, json!({}));
}

#[test]
fn path_variables_bind_fields_and_the_query_the_rest() {
    let (path, msg) = call(Method::GET, "/api/orders/42?reason=late", "");
    assert_eq!(path, "/restaurant.v1.Orders/GetOrder");
    assert_eq!(msg, json!({"id": "42", "reason": "late"}));

    let (path, msg) = call(Method::GET, "/api/orders/a%2Fb", "");
    assert_eq!(path, "/restaurant.v1.Orders/GetOrder");
    assert_eq!(msg, json!({"id": "a/b"}));

    let (path, msg) = call(Method::DELETE, "/api/orders/42", "");
    assert_eq!(path, "/restaurant.v1.Kitchen/DeleteOrder");
    assert_eq!(msg, json!({"id": "42"}));
}

#[test]
fn a_star_body_is_the_whole_request_in_either_field_naming() {
    let (path, msg) = call(
        Method::POST,
        "/api/orders",
        r#"{"userId": "7", "items": ["soup", "tea"], "note": "no onions"}"#,
    );
    assert_eq!(path, "/restaurant.v1.Orders/CreateOrder");
    assert_eq!(
        msg,
        json!({"user_id": "7", "items": ["soup", "tea"], "note": "no onions"})
    );
    let (_, original_names) = call(Method::POST, "/api/orders", r#"{"user_id": 7}"#);
    assert_eq!(original_names, json!({"user_id": "7"}));
    let (_, empty) = call(Method::POST, "/api/orders", "  ");
    assert_eq!(empty, json!({}));
}

#[test]
fn a_field_body_nested_path_fields_and_additional_bindings() {
    let (path, msg) = call(
        Method::PATCH,
        "/api/orders/9?notify=true",
        r#"{"items": ["tea"], "status": "STATUS_COOKING", "createdAt": "2024-05-06T07:08:09.5Z"}"#,
    );
    assert_eq!(path, "/restaurant.v1.Kitchen/UpdateOrder");
    assert_eq!(
        msg,
        json!({
            "order": {
                "id": "9",
                "items": ["tea"],
                "status": "STATUS_COOKING",
                "created_at": "2024-05-06T07:08:09.500Z",
            },
            "notify": true,
        })
    );
    let (path, msg) = call(Method::PUT, "/api/users/7/orders/9", r#"{"total": 1250}"#);
    assert_eq!(path, "/restaurant.v1.Kitchen/UpdateOrder");
    assert_eq!(
        msg,
        json!({"order": {"id": "9", "user_id": "7", "total": "1250"}})
    );
}

#[test]
fn verbs_multi_segment_variables_wildcards_and_custom_methods() {
    let (path, msg) = call(
        Method::POST,
        "/api/orders/42:cancel",
        r#"{"reason": "late"}"#,
    );
    assert_eq!(path, "/restaurant.v1.Kitchen/CancelOrder");
    assert_eq!(msg, json!({"id": "42", "reason": "late"}));

    let (path, _) = call(Method::POST, "/api/orders", "{}");
    assert_eq!(path, "/restaurant.v1.Orders/CreateOrder");

    let (path, msg) = call(Method::GET, "/api/shops/s1/dishes/soup?withPrice=true", "");
    assert_eq!(path, "/restaurant.v1.Kitchen/GetDish");
    assert_eq!(
        msg,
        json!({"name": "shops/s1/dishes/soup", "with_price": true})
    );

    let (_, msg) = call(Method::GET, "/api/files/menus/2024/winter.pdf", "");
    assert_eq!(msg, json!({"path": "menus/2024/winter.pdf"}));

    let (path, msg) = call(Method::HEAD, "/api/dishes/soup", "");
    assert_eq!(path, "/restaurant.v1.Kitchen/GetDish");
    assert_eq!(msg, json!({}));

    let (path, msg) = call(Method::GET, "/api/orders:watch?userId=3", "");
    assert_eq!(path, "/restaurant.v1.Kitchen/WatchOrders");
    assert_eq!(msg, json!({"user_id": "3"}));
}

#[test]
fn requests_no_binding_takes_are_left_alone() {
    for (method, path) in [
        (Method::GET, "/api/users/1"),
        (Method::DELETE, "/api/orders"),
        (Method::GET, "/api/orders/1/items"),
        (Method::GET, "/api/orders/"),
        (Method::OPTIONS, "/api/orders"),
        (Method::GET, "/api/shops/s1/menus/soup"),
    ] {
        assert!(
            RESTAURANT
                .request(&method, path, None, b"")
                .expect("no error")
                .is_none(),
            "{method} {path}"
        );
        assert!(!RESTAURANT.matches(&method, path), "{method} {path}");
    }
    assert!(RESTAURANT.matches(&Method::GET, "/api/orders/1"));
}

#[test]
fn what_does_not_fit_is_the_clients_error() {
    use RequestError as E;
    let e = request_error(Method::GET, "/api/orders?userid=1", "");
    assert!(
        matches!(&e, E::UnknownQueryParameter(p) if p == "userid"),
        "{e}"
    );
    let e = request_error(Method::GET, "/api/orders?page.color=red", "");
    assert!(
        matches!(&e, E::UnknownQueryParameter(p) if p == "page.color"),
        "{e}"
    );
    let e = request_error(Method::GET, "/api/orders?page=1", "");
    assert!(matches!(&e, E::NotScalarQueryParameter(_)), "{e}");
    let e = request_error(Method::GET, "/api/orders?userId=1&userId=2", "");
    assert!(
        matches!(&e, E::RepeatedQueryParameter(p) if p == "userId"),
        "{e}"
    );
    let e = request_error(Method::GET, "/api/orders?userId=one", "");
    assert!(matches!(&e, E::QueryValue(p, _) if p == "userId"), "{e}");
    let e = request_error(Method::GET, "/api/orders?statuses=STATUS_EATEN", "");
    assert!(matches!(&e, E::QueryValue(..)), "{e}");
    let e = request_error(Method::GET, "/api/orders?includeCancelled=yes", "");
    assert!(matches!(&e, E::QueryValue(..)), "{e}");
    let e = request_error(Method::GET, "/api/orders?since=yesterday", "");
    assert!(matches!(&e, E::QueryValue(..)), "{e}");
    let e = request_error(Method::GET, "/api/orders?tags=%zz", "");
    assert!(matches!(&e, E::QueryEncoding(_)), "{e}");

    let e = request_error(Method::GET, "/api/orders/42?id=43", "");
    assert!(
        matches!(&e, E::QueryConflictsWithPath(p) if p == "id"),
        "{e}"
    );
    let e = request_error(Method::PATCH, "/api/orders/9?order.items=x", "");
    assert!(matches!(&e, E::QueryConflictsWithBody(_)), "{e}");
    let e = request_error(Method::POST, "/api/orders?note=x", "{}");
    assert!(matches!(&e, E::QueryConflictsWithBody(_)), "{e}");
    let e = request_error(Method::POST, "/api/orders/42:cancel", r#"{"id": "43"}"#);
    assert!(
        matches!(&e, E::BodyConflictsWithPath(p) if p == "id"),
        "{e}"
    );
    let e = request_error(Method::PATCH, "/api/orders/9", r#"{"id": "8"}"#);
    assert!(
        matches!(&e, E::BodyConflictsWithPath(p) if p == "order.id"),
        "{e}"
    );
    // The same value twice is no conflict.
    let (_, msg) = call(Method::POST, "/api/orders/42:cancel", r#"{"id": "42"}"#);
    assert_eq!(msg, json!({"id": "42"}));

    let e = request_error(Method::PUT, "/api/users/seven/orders/9", "");
    assert!(
        matches!(&e, E::PathValue { field, .. } if field == "order.user_id"),
        "{e}"
    );
    let e = request_error(Method::GET, "/api/orders/%E0%A4", "");
    assert!(
        matches!(&e, E::PathEncoding { field, .. } if field == "id"),
        "{e}"
    );

    for body in [
        "{",
        r#"{"color": "red"}"#,
        r#"{"userId": "x"}"#,
        "[]",
        "{} {}",
    ] {
        let e = request_error(Method::POST, "/api/orders", body);
        assert!(matches!(&e, E::Body(_)), "{body}: {e}");
    }

    let e = try_call(Method::GET, "/api/orders?userId=1&x=2", "").expect_err("unknown");
    assert!(e.is_client_error());
    let (status, body) = e.to_http();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body_json(&body),
        json!({"code": 3, "message": "the query parameter 'x' names no field of the request"})
    );
}

#[test]
fn replies_map_to_json_as_the_protobuf_mapping_says() {
    let b = binding(Method::GET, "/api/orders/1");
    let frame = reply_frame(
        &b,
        json!({
            "id": "1",
            "userId": "7",
            "items": ["soup"],
            "status": "STATUS_DELIVERED",
            "createdAt": "2024-01-02T03:04:05Z",
            "total": "0",
        }),
    );
    let (status, body) = RESTAURANT.response(&b, GrpcCode::Ok, "", &frame);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body_json(&body),
        json!({
            "id": "1",
            "userId": "7",
            "items": ["soup"],
            "status": "STATUS_DELIVERED",
            "createdAt": "2024-01-02T03:04:05Z",
        })
    );

    let set = compile(&root().join("tests/proto"), "restaurant.proto");
    let verbose = Transcoder::from_bytes(&set)
        .expect("loads")
        .with_options(Options {
            emit_defaults: true,
        });
    let (_, body) = verbose.response(&b, GrpcCode::Ok, "", &reply_frame(&b, json!({"id": "1"})));
    assert_eq!(
        body_json(&body),
        json!({
            "id": "1",
            "userId": "0",
            "items": [],
            "status": "STATUS_UNSPECIFIED",
            "total": "0",
        })
    );
}

#[test]
fn response_body_picks_one_field_of_the_reply() {
    let b = binding(Method::GET, "/api/shops/s/dishes/d");
    let frame = reply_frame(
        &b,
        json!({"dish": {"name": "soup", "price": 450}, "etag": "x"}),
    );
    let (status, body) = RESTAURANT.response(&b, GrpcCode::Ok, "", &frame);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body_json(&body), json!({"name": "soup", "price": 450}));
    // An unset field is shown as its default, not as nothing.
    let frame = reply_frame(&b, json!({"etag": "x"}));
    let (_, body) = RESTAURANT.response(&b, GrpcCode::Ok, "", &frame);
    assert_eq!(body_json(&body), json!({}));
}

#[test]
fn a_server_stream_is_one_json_array() {
    let b = binding(Method::GET, "/api/orders:watch");
    assert!(b.is_server_streaming());
    let mut frames = reply_frame(&b, json!({"id": "1"}));
    frames.extend(reply_frame(
        &b,
        json!({"id": "2", "status": "STATUS_PLACED"}),
    ));
    let (status, body) = RESTAURANT.response(&b, GrpcCode::Ok, "", &frames);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body_json(&body),
        json!([{"id": "1"}, {"id": "2", "status": "STATUS_PLACED"}])
    );
    let (_, empty) = RESTAURANT.response(&b, GrpcCode::Ok, "", &[]);
    assert_eq!(body_json(&empty), json!([]));
}

#[test]
fn failed_calls_and_bad_replies_map_to_http_statuses() {
    let b = binding(Method::GET, "/api/orders/1");
    let (status, body) = RESTAURANT.response(&b, GrpcCode::NotFound, "no order 1", &[]);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body_json(&body),
        json!({"code": 5, "message": "no order 1"})
    );
    let (status, body) = RESTAURANT.response(&b, GrpcCode::Unavailable, "", &[]);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body_json(&body), json!({"code": 14, "message": ""}));

    let one = reply_frame(&b, json!({"id": "1"}));
    let two = [one.clone(), one.clone()].concat();
    for bad in [
        &[][..],
        &two,
        &[0, 0, 0, 0, 2, 0xff, 0xff],
        &[0, 0, 0, 0, 9, 1],
        &[1, 0, 0, 0, 0],
    ] {
        let (status, body) = RESTAURANT.response(&b, GrpcCode::Ok, "", bad);
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{bad:?}");
        assert_eq!(body_json(&body)["code"], json!(13), "{bad:?}");
    }
}

#[test]
fn a_rest_request_becomes_a_grpc_request() {
    let req = http::Request::builder()
        .method(Method::GET)
        .uri("/api/orders/42?reason=late")
        .header("host", "shop.example:8080")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("authorization", "Bearer t")
        .header("grpc-timeout", "250m")
        .header("grpc-encoding", "gzip")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "1")
        .header("x-request-id", "r1")
        .body(Bytes::new())
        .expect("request");
    let call = RESTAURANT
        .grpc_request(&req)
        .expect("fits")
        .expect("matches");
    let out = &call.request;
    assert_eq!(out.method(), Method::POST);
    assert_eq!(out.version(), http::Version::HTTP_2);
    assert_eq!(
        out.uri().to_string(),
        "http://shop.example:8080/restaurant.v1.Orders/GetOrder"
    );
    let h = out.headers();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["te"], "trailers");
    assert_eq!(h["grpc-timeout"], "250m");
    assert_eq!(h["authorization"], "Bearer t");
    assert_eq!(h["x-request-id"], "r1");
    for gone in ["accept", "grpc-encoding", "connection", "x-hop", "host"] {
        assert!(!h.contains_key(gone), "{gone}");
    }
    let msg = DynamicMessage::decode(call.binding.method.input(), &out.body()[5..]).expect("msg");
    assert_eq!(to_json(&msg), json!({"id": "42", "reason": "late"}));
    assert_eq!(
        msg.descriptor().full_name(),
        "restaurant.v1.GetOrderRequest"
    );

    let req = http::Request::builder()
        .uri("https://shop.example/api/orders/42")
        .header("grpc-timeout", "soon")
        .body(Bytes::new())
        .expect("request");
    let call = RESTAURANT
        .grpc_request(&req)
        .expect("fits")
        .expect("matches");
    assert_eq!(
        call.request.uri().to_string(),
        "https://shop.example/restaurant.v1.Orders/GetOrder"
    );
    assert!(!call.request.headers().contains_key("grpc-timeout"));

    let other = http::Request::builder()
        .uri("/api/users/1")
        .body(Bytes::new())
        .expect("request");
    assert!(RESTAURANT.grpc_request(&other).expect("no error").is_none());

    let bad = http::Request::builder()
        .uri("/api/orders/42?nope=1")
        .body(Bytes::new())
        .expect("request");
    let res = RESTAURANT
        .grpc_request(&bad)
        .expect_err("unknown parameter")
        .to_http_response();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(body_json(res.body())["code"], json!(3));
}

#[test]
fn a_grpc_response_becomes_a_rest_response() {
    let b = binding(Method::GET, "/api/orders/1");
    let head = |status: u16, grpc: Option<(&str, &str)>| {
        let mut r = http::Response::builder().status(status);
        if let Some((code, message)) = grpc {
            r = r
                .header("grpc-status", code)
                .header("grpc-message", message);
        }
        r.body(()).expect("head").into_parts().0
    };
    let trailers = |code: &str, message: &str| {
        let mut t = http::HeaderMap::new();
        t.insert("grpc-status", code.parse().expect("value"));
        t.insert("grpc-message", message.parse().expect("value"));
        t
    };

    let frame = reply_frame(&b, json!({"id": "1"}));
    let res = RESTAURANT.http_response(&b, &head(200, None), &frame, Some(&trailers("0", "")));
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "application/json");
    assert_eq!(body_json(res.body()), json!({"id": "1"}));

    let t = trailers("5", "no%20order%201");
    let res = RESTAURANT.http_response(&b, &head(200, None), &[], Some(&t));
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        body_json(res.body()),
        json!({"code": 5, "message": "no order 1"})
    );

    // Trailers-Only: the status in the head.
    let res = RESTAURANT.http_response(&b, &head(200, Some(("16", "who"))), &[], None);
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // No gRPC status at all: from the HTTP status, as gRPC clients read it.
    let res = RESTAURANT.http_response(&b, &head(503, None), &[], None);
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body_json(res.body())["code"], json!(14));
    let res = RESTAURANT.http_response(&b, &head(200, None), &frame, None);
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body_json(res.body())["code"], json!(2));
}

/// Loads `service` (methods and messages in proto syntax) as a descriptor
/// set and returns what the transcoder says about it.
fn load_error(body: &str) -> TranscodeError {
    let dir = tempfile::tempdir().expect("tempdir");
    let proto = format!(
        "syntax = \"proto3\";\npackage t;\nimport \"google/api/annotations.proto\";\n\
         message Req {{ string id = 1; Inner inner = 2; repeated string tags = 3; }}\n\
         message Inner {{ string name = 1; }}\n\
         message Res {{ string id = 1; }}\n{body}\n"
    );
    std::fs::write(dir.path().join("t.proto"), proto).expect("write");
    let set = compile(dir.path(), "t.proto");
    Transcoder::from_bytes(&set).expect_err("refused")
}

fn rule_error(body: &str) -> (String, RuleError) {
    match load_error(body) {
        TranscodeError::Rule { method, problem } => (method, problem),
        e => panic!("not a rule error: {e}"),
    }
}

#[test]
fn bad_bindings_are_refused_naming_the_method_and_the_problem() {
    let svc = |option: &str| {
        format!(
            "service S {{ rpc M(Req) returns (Res) {{ option (google.api.http) = {{{option}}}; }} }}"
        )
    };
    let (method, e) = rule_error(&svc(r#"get: "/v1/{id""#));
    assert_eq!(method, "t.S.M");
    assert!(matches!(e, RuleError::Template { .. }), "{e}");
    let (_, e) = rule_error(&svc(r#"get: "/v1/{nope}""#));
    assert!(
        matches!(&e, RuleError::UnknownPathField { field, message, .. } if field == "nope" && message == "t.Req"),
        "{e}"
    );
    let (_, e) = rule_error(&svc(r#"get: "/v1/{inner.nope}""#));
    assert!(
        matches!(&e, RuleError::UnknownPathField { field, message, .. } if field == "nope" && message == "t.Inner"),
        "{e}"
    );
    let (_, e) = rule_error(&svc(r#"get: "/v1/{inner}""#));
    assert!(
        matches!(&e, RuleError::NotScalarPathField { field, .. } if field == "inner"),
        "{e}"
    );
    let (_, e) = rule_error(&svc(r#"get: "/v1/{tags}""#));
    assert!(
        matches!(&e, RuleError::NotScalarPathField { field, .. } if field == "tags"),
        "{e}"
    );
    let (_, e) = rule_error(&svc(r#"get: "/v1/{id.x}""#));
    assert!(
        matches!(&e, RuleError::NotScalarPathField { field, .. } if field == "id"),
        "{e}"
    );
    let (_, e) = rule_error(&svc(r#"post: "/v1" body: "nope""#));
    assert!(
        matches!(&e, RuleError::UnknownBodyField { field, .. } if field == "nope"),
        "{e}"
    );
    let (_, e) = rule_error(&svc(r#"get: "/v1" response_body: "nope""#));
    assert!(
        matches!(&e, RuleError::UnknownResponseField { field, message } if field == "nope" && message == "t.Res"),
        "{e}"
    );
    let (_, e) = rule_error(&svc(r#"custom: {kind: "NOT A METHOD" path: "/v1"}"#));
    assert!(matches!(&e, RuleError::BadMethod(_)), "{e}");
    let (_, e) = rule_error(&svc(r#"body: "*""#));
    assert!(matches!(&e, RuleError::NoPattern), "{e}");
    let (_, e) = rule_error(&svc(
        r#"get: "/v1" additional_bindings {get: "/v2" additional_bindings {get: "/v3"}}"#,
    ));
    assert!(matches!(&e, RuleError::NestedAdditionalBindings), "{e}");
    let (_, e) = rule_error(
        r#"service S { rpc M(stream Req) returns (Res) { option (google.api.http) = {post: "/v1" body: "*"}; } }"#,
    );
    assert!(matches!(&e, RuleError::ClientStreaming), "{e}");
    let e = rule_error(&svc(r#"get: "/v1/{nope}""#)).1.to_string();
    assert_eq!(e, "the template '/v1/{nope}': t.Req has no field 'nope'");

    let e = load_error("service S { rpc M(Req) returns (Res); }");
    assert!(matches!(e, TranscodeError::NoBindings), "{e}");
    assert!(!e.is_client_error());
}

#[test]
fn a_set_without_the_annotations_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("plain.proto"),
        "syntax = \"proto3\";\npackage p;\nmessage M {}\nservice S { rpc Call(M) returns (M); }\n",
    )
    .expect("write");
    let e = Transcoder::from_bytes(&compile(dir.path(), "plain.proto")).expect_err("refused");
    assert!(matches!(e, TranscodeError::NoHttpExtension), "{e}");
    let e = Transcoder::from_bytes(b"\x0a\x03abc").expect_err("garbage");
    assert!(matches!(e, TranscodeError::Descriptors(_)), "{e}");
}
