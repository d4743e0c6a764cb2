//! Time limits on a response that is streaming: the request's deadline
//! (the caller's `grpc-timeout` or the service's timeout), and an idle limit
//! (nothing moving either way) instead of a total one, so that long-lived
//! streams live as long as they are used. When a limit hits, the upstream
//! stream is dropped (cancelled) and a gRPC caller gets a status in the
//! trailers rather than a broken stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::{BoxBody, BoxError};
use crate::error::percent_encode;

/// When anything last moved either way on a request (ms since `origin`).
#[derive(Clone)]
pub struct Activity {
    origin: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    pub fn new() -> Self {
        Activity {
            origin: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn touch(&self) {
        let ms = self.origin.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

/// Marks activity whenever a request frame goes by.
pub struct ActiveBody {
    inner: BoxBody,
    activity: Activity,
}

impl ActiveBody {
    pub fn new(inner: BoxBody, activity: Activity) -> Self {
        ActiveBody { inner, activity }
    }
}

impl Body for ActiveBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(Some(Ok(_)))) {
            self.activity.touch();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The response side: enforces the deadline and the idle limit.
pub struct TimedBody {
    inner: Option<BoxBody>,
    deadline: Option<Instant>,
    idle: Duration,
    activity: Activity,
    timer: Pin<Box<Sleep>>,
    grpc: bool,
    done: bool,
}

impl TimedBody {
    pub fn new(
        inner: BoxBody,
        deadline: Option<Instant>,
        idle: Duration,
        activity: Activity,
        grpc: bool,
    ) -> Self {
        activity.touch();
        let first = Self::next_wake(deadline, activity.last() + idle);
        TimedBody {
            inner: Some(inner),
            deadline,
            idle,
            activity,
            timer: Box::pin(tokio::time::sleep_until(first)),
            grpc,
            done: false,
        }
    }

    fn next_wake(deadline: Option<Instant>, idle_at: Instant) -> Instant {
        deadline.map_or(idle_at, |d| d.min(idle_at))
    }

    /// Ends the stream: gRPC callers get `status` in trailers.
    fn expire(
        &mut self,
        status: u16,
        message: &str,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.inner = None; // cancels the upstream stream
        self.done = true;
        if self.grpc {
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from(status));
            if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
                t.insert("grpc-message", v);
            }
            Poll::Ready(Some(Ok(Frame::trailers(t))))
        } else {
            Poll::Ready(Some(Err(message.to_string().into())))
        }
    }
}

impl Body for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if let Some(inner) = this.inner.as_mut()
            && let Poll::Ready(r) = Pin::new(inner).poll_frame(cx)
        {
            if matches!(r, Some(Ok(_))) {
                this.activity.touch();
            }
            return Poll::Ready(r);
        }
        loop {
            if this.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if this.deadline.is_some_and(|d| now >= d) {
                return this.expire(4, "the deadline passed (mesh)");
            }
            let idle_at = this.activity.last() + this.idle;
            if now >= idle_at {
                return this.expire(14, "the stream was idle too long (mesh)");
            }
            // Something moved since: wait for the new idle limit.
            let next = Self::next_wake(this.deadline, idle_at);
            this.timer.as_mut().reset(next);
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.as_ref().is_some_and(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn endless() -> BoxBody {
        let s: futures_util::stream::Pending<Result<Frame<Bytes>, BoxError>> =
            futures_util::stream::pending();
        StreamBody::new(s).boxed_unsync()
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_a_grpc_stream_with_deadline_exceeded() {
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut b = TimedBody::new(
            endless(),
            Some(deadline),
            Duration::from_secs(300),
            Activity::new(),
            true,
        );
        let f = b.frame().await.expect("a frame").expect("trailers");
        assert_eq!(
            f.trailers_ref().map(|t| t["grpc-status"].clone()),
            Some(HeaderValue::from(4u16))
        );
        assert!(Instant::now() >= deadline && Instant::now() < deadline + Duration::from_millis(5));
        assert!(b.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn activity_either_way_keeps_a_stream_open() {
        let activity = Activity::new();
        let mut b = TimedBody::new(
            endless(),
            None,
            Duration::from_secs(10),
            activity.clone(),
            false,
        );
        let started = Instant::now();
        // The client sends something every 5 s for a minute: never idle.
        let keep = activity.clone();
        let client = tokio::spawn(async move {
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                keep.touch();
            }
        });
        let r = b.frame().await.expect("a frame");
        assert!(r.is_err(), "an idle HTTP stream is broken off");
        let lived = started.elapsed();
        assert!(
            lived >= Duration::from_secs(70) && lived < Duration::from_secs(71),
            "{lived:?}"
        );
        let _ = client.await;
    }
}
