//! The transcoder on whole HTTP messages, as the gateway calls it.

use bytes::Bytes;
use http::{Method, StatusCode};
use prost_reflect::{DynamicMessage, ReflectMessage};
use serde_json::json;

use super::{RESTAURANT, binding, body_json, reply_frame, to_json};

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
