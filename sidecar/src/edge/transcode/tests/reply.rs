//! gRPC replies rendered as REST answers.

use http::{Method, StatusCode};
use serde_json::json;
use weft_proto::grpc::GrpcCode;

use super::{RESTAURANT, binding, body_json, compile, reply_frame, root};
use crate::edge::transcode::{Options, Transcoder};

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
