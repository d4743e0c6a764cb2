//! A gRPC status as REST shows it: the HTTP status google.rpc.Code gives
//! each code, and the `{"code", "message"}` body, in one place for the
//! transcoder's own errors and the upstream's.

use bytes::Bytes;
use http::StatusCode;
use weft_proto::grpc::GrpcCode;

/// The HTTP status for a gRPC code, as google.rpc.Code documents each
/// code's HTTP equivalent (CANCELLED is nginx's 499 "client closed
/// request").
pub fn http_status(code: GrpcCode) -> StatusCode {
    match code {
        GrpcCode::Ok => StatusCode::OK,
        GrpcCode::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        GrpcCode::Unknown | GrpcCode::Internal | GrpcCode::DataLoss => {
            StatusCode::INTERNAL_SERVER_ERROR
        }
        GrpcCode::InvalidArgument | GrpcCode::FailedPrecondition | GrpcCode::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        GrpcCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        GrpcCode::NotFound => StatusCode::NOT_FOUND,
        GrpcCode::AlreadyExists | GrpcCode::Aborted => StatusCode::CONFLICT,
        GrpcCode::PermissionDenied => StatusCode::FORBIDDEN,
        GrpcCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        GrpcCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        GrpcCode::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        GrpcCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `{"code": 5, "message": "..."}`.
pub fn error_body(code: GrpcCode, message: &str) -> Bytes {
    let json = serde_json::json!({ "code": code.as_u16(), "message": message });
    Bytes::from(serde_json::to_vec(&json).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_http_status() {
        let s = |c| http_status(c).as_u16();
        assert_eq!(s(GrpcCode::Ok), 200);
        assert_eq!(s(GrpcCode::Cancelled), 499);
        assert_eq!(s(GrpcCode::Unknown), 500);
        assert_eq!(s(GrpcCode::InvalidArgument), 400);
        assert_eq!(s(GrpcCode::DeadlineExceeded), 504);
        assert_eq!(s(GrpcCode::NotFound), 404);
        assert_eq!(s(GrpcCode::AlreadyExists), 409);
        assert_eq!(s(GrpcCode::PermissionDenied), 403);
        assert_eq!(s(GrpcCode::ResourceExhausted), 429);
        assert_eq!(s(GrpcCode::FailedPrecondition), 400);
        assert_eq!(s(GrpcCode::Aborted), 409);
        assert_eq!(s(GrpcCode::OutOfRange), 400);
        assert_eq!(s(GrpcCode::Unimplemented), 501);
        assert_eq!(s(GrpcCode::Internal), 500);
        assert_eq!(s(GrpcCode::Unavailable), 503);
        assert_eq!(s(GrpcCode::DataLoss), 500);
        assert_eq!(s(GrpcCode::Unauthenticated), 401);
    }

    #[test]
    fn error_bodies_carry_the_grpc_code() {
        let body = error_body(GrpcCode::NotFound, "no order \"7\"");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"code": 5, "message": "no order \"7\""})
        );
    }
}
