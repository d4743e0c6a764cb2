//! Loading a descriptor set: every binding read, bad ones refused naming
//! the method and the problem.

use super::{compile, root};
use crate::edge::transcode::{RuleError, TranscodeError, Transcoder};

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

/// A file of a syntax prost-reflect does not know (protoc writes
/// `editions` for `edition = "2023"`) is refused by name; prost-reflect
/// itself panicked on one.
#[test]
fn a_file_of_another_syntax_is_refused_by_name() {
    use prost::Message as _;
    use prost_reflect::prost_types::FileDescriptorSet;

    let set = compile(&root().join("tests/proto"), "restaurant.proto");
    let mut decoded = FileDescriptorSet::decode(set.as_slice()).expect("decodes");
    let last = decoded.file.last_mut().expect("files");
    last.syntax = Some("editions".into());
    let name = last.name().to_string();
    match Transcoder::from_bytes(&decoded.encode_to_vec()).expect_err("refused") {
        TranscodeError::Syntax { file, syntax } => {
            assert_eq!((file, syntax.as_str()), (name, "editions"))
        }
        e => panic!("not a syntax error: {e}"),
    }
}
