//! Fault injection: a share of a route's requests delayed, and a share
//! answered by the mesh with the configured status instead of being sent,
//! to test how callers cope. Off unless the route's policy asks for it.

use weft_proto::name::ServiceName;

use crate::error::ProxyError;
use crate::resilience::FaultPolicy;

/// Delays the request if the dice say so, then says whether to abort it.
pub async fn inject(f: &FaultPolicy, service: &ServiceName) -> Option<ProxyError> {
    if roll(f.delay_percent) {
        tokio::time::sleep(f.delay).await;
    }
    roll(f.abort_percent).then(|| ProxyError::FaultInjected {
        service: service.to_string(),
        grpc_status: f.abort_grpc_status,
        http_status: f.abort_http_status,
    })
}

/// True for `percent` of calls.
fn roll(percent: u32) -> bool {
    percent > 0 && crate::rand::below(100) < percent as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use weft_proto::grpc::GrpcCode;

    #[tokio::test(start_paused = true)]
    async fn all_or_nothing_by_percent() {
        let svc = ServiceName::parse("echo").expect("name");
        let mut f = FaultPolicy {
            delay_percent: 100,
            delay: Duration::from_millis(30),
            abort_percent: 0,
            abort_grpc_status: GrpcCode::Unavailable,
            abort_http_status: 503,
        };
        let t = tokio::time::Instant::now();
        assert!(inject(&f, &svc).await.is_none());
        assert_eq!(t.elapsed(), Duration::from_millis(30));
        f.delay_percent = 0;
        f.abort_percent = 100;
        let e = inject(&f, &svc).await.expect("aborted");
        assert_eq!(e.grpc_code(), GrpcCode::Unavailable);
        assert_eq!(t.elapsed(), Duration::from_millis(30), "no delay at 0%");
    }
}
