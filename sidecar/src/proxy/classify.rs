//! Response classification, in one place. Every exchange, whether the
//! service answered or the mesh did, is classified once: HTTP status, gRPC
//! status from the response headers (trailers-only) or the trailers, and
//! whether the stream failed. Metrics (and later retries, breakers and
//! traces) read only this.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxBody, BoxError};

/// What happened to one exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classification {
    pub status: StatusCode,
    /// The gRPC status, when the response carried one.
    pub grpc_status: Option<u16>,
    /// Set when the exchange did not complete: the mesh's error code, or
    /// `stream-error` / `cancelled` for a body that broke off.
    pub error: Option<&'static str>,
}

impl Classification {
    /// Starts from response headers; a trailers-only gRPC response already
    /// carries its status here.
    pub fn from_headers(status: StatusCode, headers: &HeaderMap) -> Self {
        Classification {
            status,
            grpc_status: grpc_status(headers),
            error: None,
        }
    }

    /// Whether the endpoint failed (for outlier detection): it could not
    /// be reached or broke off, answered 5xx, or a gRPC status that means a
    /// server fault. A caller that went away is not the endpoint's fault.
    pub fn is_endpoint_failure(&self) -> bool {
        match self.error {
            Some("cancelled") => false,
            Some(_) => true,
            None => match self.grpc_status {
                Some(code) => matches!(code, 2 | 13 | 14 | 15),
                None => self.status.is_server_error(),
            },
        }
    }

    pub fn is_success(&self) -> bool {
        self.error.is_none()
            && match self.grpc_status {
                Some(code) => code == 0,
                None => !self.status.is_server_error(),
            }
    }
}

pub fn grpc_status(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

/// Called once, when the exchange is over.
pub type OnEnd = Box<dyn FnOnce(&Classification) + Send>;

/// A response body that classifies the exchange as it streams through, and
/// reports once at the end of stream, on error, or when dropped early.
pub struct ClassifiedBody {
    inner: BoxBody,
    class: Classification,
    on_end: Option<OnEnd>,
}

impl ClassifiedBody {
    pub fn new(inner: BoxBody, class: Classification, on_end: OnEnd) -> Self {
        ClassifiedBody {
            inner,
            class,
            on_end: Some(on_end),
        }
    }

    fn finish(&mut self) {
        if let Some(f) = self.on_end.take() {
            f(&self.class);
        }
    }
}

impl Body for ClassifiedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref()
                    && let Some(code) = grpc_status(t)
                {
                    this.class.grpc_status = Some(code);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.class.error = Some("stream-error");
                this.finish();
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ClassifiedBody {
    fn drop(&mut self) {
        if self.on_end.is_some() {
            // Dropped before its end was read: either it had nothing more to
            // give (the server saw is_end_stream) or the caller went away.
            if !self.inner.is_end_stream() {
                self.class.error = Some("cancelled");
            }
            self.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::sync::{Arc, Mutex};

    fn capture() -> (Arc<Mutex<Option<Classification>>>, OnEnd) {
        let slot = Arc::new(Mutex::new(None));
        let s = slot.clone();
        (
            slot,
            Box::new(move |c: &Classification| *s.lock().expect("lock") = Some(c.clone())),
        )
    }

    #[tokio::test]
    async fn grpc_status_from_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().expect("value"));
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let (slot, on_end) = capture();
        let b = ClassifiedBody::new(
            body,
            Classification::from_headers(StatusCode::OK, &HeaderMap::new()),
            on_end,
        );
        let _ = b.collect().await.expect("collect");
        let c = slot.lock().expect("lock").clone().expect("reported");
        assert_eq!(c.grpc_status, Some(14));
        assert!(!c.is_success());
    }

    #[tokio::test]
    async fn trailers_only_and_http_statuses() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", "0".parse().expect("value"));
        assert!(Classification::from_headers(StatusCode::OK, &h).is_success());
        assert!(
            !Classification::from_headers(StatusCode::BAD_GATEWAY, &HeaderMap::new()).is_success()
        );
        assert!(
            Classification::from_headers(StatusCode::NOT_FOUND, &HeaderMap::new()).is_success()
        );
    }

    #[tokio::test]
    async fn dropped_early_is_cancelled() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> =
            vec![Ok(Frame::data(Bytes::from_static(b"x")))];
        let body = StreamBody::new(futures_util::StreamExt::chain(
            futures_util::stream::iter(frames),
            futures_util::stream::pending(),
        ))
        .boxed_unsync();
        let (slot, on_end) = capture();
        let b = ClassifiedBody::new(
            body,
            Classification::from_headers(StatusCode::OK, &HeaderMap::new()),
            on_end,
        );
        drop(b);
        assert_eq!(
            slot.lock().expect("lock").clone().expect("reported").error,
            Some("cancelled")
        );
    }
}
