//! Time limits on a request whose response is streaming: the request's
//! deadline (the caller's `grpc-timeout` or the service's timeout), and an
//! idle limit (nothing moving either way) instead of a total one, so that
//! long-lived streams live as long as they are used. The response body
//! (`proxy::response`) asks the [`StreamTimer`] whether a limit has passed;
//! when one has, it drops the upstream stream (which cancels it) and a gRPC
//! caller gets a status in the trailers rather than a broken stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use weft_proto::grpc::GrpcCode;

use crate::body::BoxError;

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
pub struct ActiveBody<B> {
    inner: B,
    activity: Activity,
}

impl<B> ActiveBody<B> {
    pub fn new(inner: B, activity: Activity) -> Self {
        ActiveBody { inner, activity }
    }
}

impl<B> Body for ActiveBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
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
        r.map(|f| f.map(|f| f.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Which limit passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Deadline,
    Idle,
}

impl Expired {
    /// The status a gRPC caller gets in the trailers.
    pub fn grpc_code(self) -> GrpcCode {
        match self {
            Expired::Deadline => GrpcCode::DeadlineExceeded,
            Expired::Idle => GrpcCode::Unavailable,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Expired::Deadline => "the deadline passed (mesh)",
            Expired::Idle => "the stream was idle too long (mesh)",
        }
    }
}

/// The deadline and the idle limit of one streaming response.
pub struct StreamTimer {
    deadline: Option<Instant>,
    idle: Duration,
    activity: Activity,
    /// Made the first time the response waits: most unary answers arrive
    /// whole and never wait, and then neither a timer nor its allocation
    /// is needed.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl StreamTimer {
    /// Starts now: the response has just arrived, which is activity.
    pub fn new(deadline: Option<Instant>, idle: Duration, activity: Activity) -> Self {
        activity.touch();
        StreamTimer {
            deadline,
            idle,
            activity,
            sleep: None,
        }
    }

    fn next_wake(deadline: Option<Instant>, idle_at: Instant) -> Instant {
        deadline.map_or(idle_at, |d| d.min(idle_at))
    }

    /// Something moved on the response.
    pub fn touch(&self) {
        self.activity.touch();
    }

    /// Ready once a limit has passed; until then it re-arms itself for the
    /// next time a limit could pass (activity moves the idle limit).
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        let sleep = self.sleep.get_or_insert_with(|| {
            let first = Self::next_wake(self.deadline, self.activity.last() + self.idle);
            Box::pin(tokio::time::sleep_until(first))
        });
        loop {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            if self.deadline.is_some_and(|d| now >= d) {
                return Poll::Ready(Expired::Deadline);
            }
            let idle_at = self.activity.last() + self.idle;
            if now >= idle_at {
                return Poll::Ready(Expired::Idle);
            }
            // Something moved since: wait for the new idle limit.
            let next = Self::next_wake(self.deadline, idle_at);
            sleep.as_mut().reset(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn expiry(t: &mut StreamTimer) -> Expired {
        std::future::poll_fn(|cx| t.poll_expired(cx)).await
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_passes_first_when_it_is_sooner() {
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut t = StreamTimer::new(Some(deadline), Duration::from_secs(300), Activity::new());
        assert_eq!(expiry(&mut t).await, Expired::Deadline);
        assert!(Instant::now() >= deadline && Instant::now() < deadline + Duration::from_millis(5));
    }

    #[tokio::test(start_paused = true)]
    async fn activity_either_way_keeps_a_stream_open() {
        let activity = Activity::new();
        let mut t = StreamTimer::new(None, Duration::from_secs(10), activity.clone());
        let started = Instant::now();
        // The client sends something every 5 s for a minute: never idle.
        let keep = activity.clone();
        let client = tokio::spawn(async move {
            for _ in 0..12 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                keep.touch();
            }
        });
        assert_eq!(expiry(&mut t).await, Expired::Idle);
        let lived = started.elapsed();
        assert!(
            lived >= Duration::from_secs(70) && lived < Duration::from_secs(71),
            "{lived:?}"
        );
        let _ = client.await;
    }
}
