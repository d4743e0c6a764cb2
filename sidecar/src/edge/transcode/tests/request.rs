//! REST requests bound to request messages: path, query and body.

use http::{Method, StatusCode};
use serde_json::json;

use super::{RESTAURANT, body_json, call, request_error, try_call};
use crate::edge::transcode::RequestError;

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
