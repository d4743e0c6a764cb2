//! Request bodies that can be sent again: frames are kept (up to a limit)
//! as the first try streams them, so that a retry replays what was sent and
//! then continues with what was not read yet. A body over the limit is
//! streamed as usual and simply not retried.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use std::task::{Context, Poll};
use tokio::sync::Notify;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};

use crate::body::{BoxBody, BoxError};

struct State {
    /// The original body, until it has been read to its end.
    inner: Option<BoxBody>,
    data: Kept,
    trailers: Option<HeaderMap>,
    size: usize,
    max: usize,
    /// Went over `max`: the buffer is gone and no new try can be made.
    capped: bool,
}

/// The data frames kept. The first is held inline: a unary call's body is
/// one frame, and keeping it then allocates nothing.
#[derive(Default)]
struct Kept {
    first: Option<Bytes>,
    rest: Vec<Bytes>,
}

impl Kept {
    fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// Frame `i`, if kept; a clone of `Bytes` is a reference count.
    fn get(&self, i: usize) -> Option<Bytes> {
        match i.checked_sub(1) {
            None => self.first.clone(),
            Some(r) => self.rest.get(r).cloned(),
        }
    }

    fn push(&mut self, frame: Bytes) {
        if self.first.is_none() {
            self.first = Some(frame);
        } else {
            self.rest.push(frame);
        }
    }
}

/// What every try of one request shares, in one allocation.
struct Shared {
    state: Mutex<State>,
    /// Told whenever a frame (or the end) is read from the caller's body.
    read: Notify,
}

/// Shared by every try of one request.
#[derive(Clone)]
pub struct Replay(Arc<Shared>);

impl Replay {
    pub fn new(body: BoxBody, max: usize) -> Self {
        let state = State {
            inner: Some(body),
            data: Kept::default(),
            trailers: None,
            size: 0,
            max,
            capped: false,
        };
        Replay(Arc::new(Shared {
            state: Mutex::new(state),
            read: Notify::new(),
        }))
    }

    /// Waits until the tries have read the caller's body to its end, and
    /// says whether it was all kept. A copy made then (a mirror) reads only
    /// the buffer: it never polls the caller's body, so it cannot take the
    /// tries' place in its wake-ups or hold them back.
    pub async fn settled(&self) -> bool {
        loop {
            let notified = self.0.read.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            match self.0.state.lock() {
                Ok(st) if st.capped => return false,
                Ok(st) if st.inner.as_ref().is_none_or(|b| b.is_end_stream()) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
            notified.await;
        }
    }

    /// Whether the caller's body has been read to its end (the request is
    /// complete: no more to come from the caller).
    pub fn finished(&self) -> bool {
        self.0
            .state
            .lock()
            .map(|s| s.inner.as_ref().is_none_or(|b| b.is_end_stream()))
            .unwrap_or(false)
    }

    /// A body for the next try; `None` once the request has outgrown the
    /// replay limit.
    pub fn body(&self) -> Option<ReplayBody> {
        let st = self.0.state.lock().ok()?;
        (!st.capped).then(|| ReplayBody {
            shared: self.0.clone(),
            pos: 0,
            trailers_sent: false,
        })
    }
}

pub struct ReplayBody {
    shared: Arc<Shared>,
    /// How many kept frames this try has sent.
    pos: usize,
    trailers_sent: bool,
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let Ok(mut st) = this.shared.state.lock() else {
            return Poll::Ready(Some(Err("request body lock poisoned".into())));
        };
        if !st.capped
            && let Some(d) = st.data.get(this.pos)
        {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        let Some(inner) = st.inner.as_mut() else {
            // Read to its end by an earlier try: replay the trailers, then end.
            if !this.trailers_sent
                && let Some(t) = st.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(t))));
            }
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if polled.is_ready() {
            this.shared.read.notify_waiters();
        }
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    if !st.capped {
                        st.size += d.len();
                        if st.size > st.max {
                            st.capped = true;
                            st.data = Kept::default();
                        } else if !d.is_empty() {
                            // An empty frame (a client that learns of the
                            // end after its last message, as hyper's does,
                            // ends with one) has nothing to replay: a
                            // replay ends with its last data frame.
                            st.data.push(d.clone());
                            this.pos += 1;
                        }
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    st.trailers = Some(t.clone());
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                st.inner = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                // The caller's body broke: nothing can be replayed.
                st.capped = true;
                st.inner = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// Exact, so that the last data frame carries END_STREAM: an empty
    /// DATA frame after every request would trip HTTP/2 servers' limits on
    /// empty frames (h2 answers ENHANCE_YOUR_CALM).
    fn is_end_stream(&self) -> bool {
        let Ok(st) = self.shared.state.lock() else {
            return true;
        };
        if !st.capped && self.pos < st.data.len() {
            return false;
        }
        match &st.inner {
            Some(inner) => inner.is_end_stream(),
            None => self.trailers_sent || st.trailers.is_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    fn body(chunks: &[&'static [u8]], trailers: bool) -> BoxBody {
        let mut frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        if trailers {
            let mut t = HeaderMap::new();
            t.insert("x-t", "1".parse().expect("value"));
            frames.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    }

    async fn collect(b: ReplayBody) -> (Bytes, Option<HeaderMap>) {
        let c = b.collect().await.expect("collect");
        let t = c.trailers().cloned();
        (c.to_bytes(), t)
    }

    #[tokio::test]
    async fn a_retry_replays_everything_with_trailers() {
        let r = Replay::new(body(&[b"ab", b"cd"], true), 100);
        let (first, t1) = collect(r.body().expect("first")).await;
        let (second, t2) = collect(r.body().expect("replay")).await;
        assert_eq!(
            (first.as_ref(), second.as_ref()),
            (&b"abcd"[..], &b"abcd"[..])
        );
        assert!(t1.is_some() && t2.is_some());
    }

    #[tokio::test]
    async fn an_empty_last_frame_is_not_kept_and_a_replay_ends_with_the_data() {
        let r = Replay::new(body(&[b"ab", b""], false), 100);
        assert_eq!(collect(r.body().expect("first")).await.0, "ab");
        let kept =
            r.0.state
                .lock()
                .map(|st| (st.data.len(), st.data.rest.capacity()));
        assert_eq!(kept.ok(), Some((1, 0)), "held inline");
        let mut again = r.body().expect("second");
        let f = again.frame().await.expect("a frame").expect("data");
        assert_eq!(f.data_ref().map(|d| d.as_ref()), Some(&b"ab"[..]));
        assert!(again.is_end_stream(), "END_STREAM on the data frame");
        assert!(again.frame().await.is_none());
    }

    #[tokio::test]
    async fn a_try_cut_short_is_completed_from_the_original() {
        let r = Replay::new(body(&[b"ab", b"cd", b"ef"], false), 100);
        let mut first = r.body().expect("first");
        let f = first.frame().await.expect("a frame").expect("ok");
        assert_eq!(f.data_ref().map(|d| d.as_ref()), Some(&b"ab"[..]));
        drop(first); // the try failed after one frame
        let (second, _) = collect(r.body().expect("replay")).await;
        assert_eq!(second.as_ref(), b"abcdef");
    }

    #[tokio::test]
    async fn a_copy_waits_until_the_tries_have_read_the_body() {
        let r = Replay::new(body(&[b"ab", b"cd"], true), 100);
        let waiting = tokio::spawn({
            let r = r.clone();
            async move { r.settled().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "nothing read yet");
        let (first, _) = collect(r.body().expect("first")).await;
        assert_eq!(first.as_ref(), b"abcd");
        assert!(waiting.await.expect("joined"), "all kept");
        let (copy, t) = collect(r.body().expect("copy")).await;
        assert_eq!((copy.as_ref(), t.is_some()), (&b"abcd"[..], true));
        let over = Replay::new(body(&[b"abc", b"def"], false), 4);
        let _ = collect(over.body().expect("first")).await;
        assert!(!over.settled().await, "outgrown: no copy");
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_not_replayed() {
        let r = Replay::new(body(&[b"abc", b"def"], false), 4);
        let (first, _) = collect(r.body().expect("first")).await;
        assert_eq!(first.as_ref(), b"abcdef", "the first try gets it all");
        assert!(r.body().is_none());
    }
}
