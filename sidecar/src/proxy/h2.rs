//! HTTP/2 from callers (the app, or a peer sidecar over mutual TLS), served
//! with `h2` directly rather than through hyper's server.
//!
//! Every stream's future is polled inside its connection's task, and the
//! connection is polled right after the streams, so what a stream sends
//! leaves in the same wake-up. hyper's server spawns a task per stream:
//! one more task to wake on each hop of a call, in both directions, and
//! its per-stream machinery (the stream task, the body pipe, the
//! keep-alive's recorder). Without them a call costs 3–7% less CPU at
//! load (docs/performance.md, "HTTP/2 callers served in their
//! connection's task").
//!
//! Settings are hyper's server's, which this replaced: 1 MiB windows, 200
//! concurrent streams per connection from a peer sidecar (4,096 from the
//! app: see [`APP_STREAMS`]), a 16 KiB header list, a 400 KiB send
//! buffer; a PING every 20 s that must be answered within 20 s.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};

use super::HttpFuture;
use super::headers::strip_hop_by_hop;
use crate::body::{BoxBody, BoxError};
use crate::drain;
use crate::endpoint::{H2Body, Pump, RESET_STREAM_MEMORY, RESET_STREAMS_REMEMBERED, keepalive};

const STREAM_WINDOW: u32 = 1024 * 1024;
const CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Streams a connection from a peer sidecar may have open at once:
/// hyper's server's 200 (a peer's calls are bounded by its own limits
/// before they get here, and past 200 it opens another connection:
/// `endpoint::h2`).
pub const PEER_STREAMS: u32 = 200;
/// The same from the app. More than a service's limit on calls in flight
/// (`--max-concurrent-requests`, 1,024 by default), and than a few
/// services' together: most gRPC clients keep one connection per target,
/// and the sidecar is every service's, so at HTTP/2's limit a caller's
/// excess calls would wait in its own client, without bound and unseen,
/// rather than meet the mesh's limit and its prompt `overloaded`. Still
/// bounded: a shed call's stream stays open only until its body ends
/// (`drain`: at most 1 s).
pub const APP_STREAMS: u32 = 4096;
const MAX_HEADER_LIST: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 400 * 1024;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// How much of a request body let go before its end is still read (and
/// discarded), and for how long: see [`drain`].
const DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// A caller's request body: from hyper's HTTP/1 server, or from a stream
/// of ours.
pub enum CallerBody {
    Http1(Incoming),
    H2(H2Request),
}

impl Body for CallerBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            CallerBody::Http1(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            CallerBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            CallerBody::Http1(b) => b.is_end_stream(),
            CallerBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            CallerBody::Http1(b) => b.size_hint(),
            CallerBody::H2(b) => b.size_hint(),
        }
    }
}

/// A request body from one of our HTTP/2 streams. Dropped before its end
/// (its call was answered without it: a shed, a refusal, an error), the
/// rest is read in a task of its own rather than reset: see [`drain`].
/// (`None` only once handed over.)
pub struct H2Request(Option<H2Body>);

impl Body for H2Request {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        match &mut self.get_mut().0 {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(H2Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), H2Body::size_hint)
    }
}

impl Drop for H2Request {
    fn drop(&mut self) {
        let Some(body) = self.0.take() else { return };
        if body.is_end_stream() {
            return;
        }
        // Outside a runtime (nothing of ours drops one there) h2 resets the
        // stream as it would have.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body));
        }
    }
}

/// Reads a request body that its call let go of to its end, discarding
/// it, for at most [`DRAIN_BYTES`] and [`DRAIN_TIME`]; past either, drops
/// it (h2 then resets the stream, NO_ERROR).
///
/// Why not reset at once, as h2 does when the body drops: a caller whose
/// call was answered before its body arrived (a shed, at overload: many
/// of them) has that body on its way, typically one small DATA frame and
/// the end. Each small frame that arrives for a stream whose body was let
/// go costs the connection part of a budget h2 never gives back (it gives
/// back only what is read), and each one for a reset stream it has
/// forgotten is counted as the caller's error; a few thousand such calls
/// on one long-lived connection and h2 ends the connection with
/// ENHANCE_YOUR_CALM (`too_many_data_frames`, `too_many_internal_resets`),
/// failing every call on it. Read, those frames cost nothing, and the
/// caller's own end closes the stream, on both sides at once. The stream
/// stays counted against the connection's concurrent streams while this
/// runs, so a caller cannot make more of these than it may have streams.
async fn drain(mut body: H2Body) {
    let read = async {
        let mut left = DRAIN_BYTES;
        while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
            let n = frame.data_ref().map_or(0, Bytes::len);
            if n > left {
                return;
            }
            left -= n;
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}

/// What serves each request: either half of the sidecar.
pub trait Handler: Clone + Send + 'static {
    fn call(&mut self, req: Request<CallerBody>) -> HttpFuture;
}

impl<S> Handler for S
where
    S: tower::Service<
            Request<CallerBody>,
            Response = Response<BoxBody>,
            Error = Infallible,
            Future = HttpFuture,
        > + Clone
        + Send
        + 'static,
{
    fn call(&mut self, req: Request<CallerBody>) -> HttpFuture {
        tower::Service::call(self, req)
    }
}

/// The connection's settings (see the module's doc).
fn settings(max_streams: u32) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(max_streams)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
        .reset_stream_duration(RESET_STREAM_MEMORY);
    b
}

/// Serves one HTTP/2 connection until it closes, its peer stops answering
/// PINGs, or draining ends it gracefully (GOAWAY, then its open streams
/// finish).
pub async fn serve<I, S>(
    io: I,
    svc: S,
    drain: drain::Watch,
    max_streams: u32,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Handler,
{
    let mut conn = settings(max_streams).handshake::<_, Bytes>(io).await?;
    let mut keepalive = pin!(keepalive(
        conn.ping_pong(),
        KEEPALIVE_INTERVAL,
        KEEPALIVE_TIMEOUT,
    ));
    let mut drain = drain;
    let mut signaled = pin!(drain.signaled());
    let mut draining = false;
    let mut streams = FuturesUnordered::new();
    // What ended streams leave to drop: dropped after the connection's
    // poll has written their answers (see `stream`).
    let mut ended: Vec<Leftover> = Vec::new();
    let mut svc = svc;
    poll_fn(|cx| {
        // Once per wake-up, not per stream accepted: each registers its
        // waker, and neither can change while this poll runs.
        if !draining && signaled.as_mut().poll(cx).is_ready() {
            draining = true;
            conn.graceful_shutdown();
        }
        if keepalive.as_mut().poll(cx).is_ready() {
            tracing::debug!(
                timeout = ?KEEPALIVE_TIMEOUT,
                "HTTP/2 caller did not answer a PING; closing the connection",
            );
            return Poll::Ready(Ok(()));
        }
        loop {
            // The streams first: what they send goes out in the poll of the
            // connection below, in this same wake-up.
            while let Poll::Ready(Some(left)) = streams.poll_next_unpin(cx) {
                ended.extend(left);
            }
            match conn.poll_accept(cx) {
                Poll::Ready(Some(Ok((req, respond)))) => {
                    let req = req.map(|recv: RecvStream| {
                        CallerBody::H2(H2Request(Some(H2Body::incoming(recv))))
                    });
                    // A panic ends its stream only (the stream's handle,
                    // dropped with it, resets it), as a task per stream did.
                    let one = std::panic::AssertUnwindSafe(stream(svc.call(req), respond));
                    streams.push(one.catch_unwind().map(|left| {
                        left.unwrap_or_else(|_| {
                            tracing::error!("a stream's handler panicked; the stream was reset");
                            None
                        })
                    }));
                    // Polled at once, at the top of the loop.
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                // Closed, or drained with every stream done.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    // The answers are written: now the end-of-call work.
                    ended.clear();
                    return Poll::Pending;
                }
            }
        }
    })
    .await
}

/// What a stream leaves when it ends: its answer's body, whose drop does
/// the end-of-call work (the exchange's metrics and span, the endpoint's
/// latency and outlier report, the upstream stream's release). Not the
/// stream's h2 handle: see `stream`.
type Leftover = BoxBody;

/// One stream: the handler's answer, then its body as the caller's window
/// allows. A reset from the caller drops the handler's future, which
/// cancels whatever it was waiting for upstream.
///
/// The answer's body is handed back rather than dropped here, so that the
/// work its drop does comes after the connection's write: on a call's
/// critical path, that write is what the caller waits for.
async fn stream(mut call: HttpFuture, mut respond: SendResponse<Bytes>) -> Option<Leftover> {
    let answered = poll_fn(|cx| {
        match call.as_mut().poll(cx) {
            Poll::Ready(Ok(resp)) => return Poll::Ready(Some(resp)),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => {}
        }
        match respond.poll_reset(cx) {
            Poll::Ready(reason) => {
                tracing::debug!(?reason, "caller reset the stream before the answer");
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    drop(call);
    let resp = answered?;
    let (mut parts, body) = resp.into_parts();
    // HTTP/2 forbids them, and h2 would refuse the whole response.
    strip_hop_by_hop(&mut parts.headers);
    let eos = body.is_end_stream();
    let send = match respond.send_response(Response::from_parts(parts, ()), eos) {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "could not answer the caller");
            return None;
        }
    };
    // The stream's handle is let go as soon as the answer's last frame is
    // in h2's queue, before the connection writes it: if the caller's
    // request is still open (an answer made before its body was read: a
    // shed, a refusal), h2 then resets the stream (NO_ERROR, RFC 9113
    // §8.1) in the same write as the answer, and counts it closed there.
    // Let go after the write, the reset waits for the connection's next
    // poll, which reads first: a caller at its stream limit, which
    // opens a stream as soon as it has the answer, would find the old one
    // still counted and be refused (REFUSED_STREAM; a caller's gRPC sees
    // UNAVAILABLE from no limit of ours, and 1,024 refusals end the
    // connection). (A body let go is mostly still being read by `drain`,
    // and the caller's own end closes the stream; this covers the rest.)
    if eos {
        drop(send);
        return Some(body);
    }
    let mut pump = Pump::new(body, send, Reason::INTERNAL_ERROR);
    poll_fn(|cx| pump.poll_pump(cx)).await;
    Some(pump.into_body())
}

#[cfg(test)]
mod tests {
    //! Against h2's own client over an in-memory pipe: no sockets, so
    //! paused time is exact.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{HeaderMap, HeaderValue};
    use http_body_util::{BodyExt, StreamBody};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::oneshot;

    use super::*;
    use crate::body::full;
    use crate::testing::{Counted, frame, frames_until};

    /// A handler from a closure.
    fn handler<F>(f: F) -> impl Handler
    where
        F: Fn(Request<CallerBody>) -> HttpFuture + Clone + Send + 'static,
    {
        tower::service_fn(f)
    }

    /// A gRPC-like answer: one message and `grpc-status: 0` in trailers,
    /// all at hand.
    fn answer(message: Bytes) -> Response<BoxBody> {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = [Ok(Frame::data(message)), Ok(Frame::trailers(trailers))];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        Response::new(BoxBody::new(body))
    }

    /// Hands `value` to the first caller only (a handler's one-shot end).
    fn once<T>(value: T) -> impl Fn() -> Option<T> + Clone {
        let slot = Arc::new(std::sync::Mutex::new(Some(value)));
        move || slot.lock().expect("lock").take()
    }

    /// Echoes the request's body, read whole.
    fn echo() -> impl Handler {
        handler(|req: Request<CallerBody>| -> HttpFuture {
            Box::pin(async move {
                let body = req.into_body().collect().await.expect("request body");
                Ok(answer(body.to_bytes()))
            })
        })
    }

    /// Serves `svc` on one end of a pipe (its writes counted) and returns
    /// an h2 client on the other, the drain signal and the server's task.
    async fn start(
        svc: impl Handler,
    ) -> (
        h2::client::SendRequest<Bytes>,
        crate::drain::Signal,
        tokio::task::JoinHandle<Result<(), BoxError>>,
        Arc<AtomicUsize>,
    ) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (io, writes) = Counted::new(ours);
        let (signal, watch) = crate::drain::channel();
        let server = tokio::spawn(serve(io, svc, watch, PEER_STREAMS));
        let (client, conn) = h2::client::handshake(theirs).await.expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        (client, signal, server, writes)
    }

    fn post() -> Request<()> {
        Request::post("http://echo/weft.test.v1.Echo/Unary")
            .body(())
            .expect("request")
    }

    /// Sends `body` as one request and reads the whole answer.
    async fn call(client: &mut h2::client::SendRequest<Bytes>, body: Bytes) -> (Bytes, HeaderMap) {
        let mut ready = client.clone().ready().await.expect("ready");
        let (resp, mut send) = ready.send_request(post(), false).expect("send");
        send.send_data(body, true).expect("data");
        let resp = resp.await.expect("response");
        let mut recv = resp.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.expect("chunk");
            let _ = recv.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        let trailers = recv.trailers().await.expect("trailers").unwrap_or_default();
        (Bytes::from(got), trailers)
    }

    #[tokio::test]
    async fn a_unary_answer_leaves_in_one_write() {
        let (mut client, _signal, _server, writes) = start(echo()).await;
        // The first call also settles the connection's settings.
        let (got, trailers) = call(&mut client, Bytes::from_static(b"ping")).await;
        assert_eq!(&got[..], b"ping");
        assert_eq!(
            trailers.get("grpc-status").map(|v| v.as_bytes()),
            Some(&b"0"[..])
        );
        let before = writes.load(Ordering::Relaxed);
        let (got, _) = call(&mut client, Bytes::from_static(b"again")).await;
        assert_eq!(&got[..], b"again");
        assert_eq!(
            writes.load(Ordering::Relaxed) - before,
            1,
            "the answer's headers, message and trailers in one write"
        );
    }

    /// An answer's body that notes, when dropped, how many writes the
    /// server had made.
    struct DropProbe {
        inner: BoxBody,
        writes: Arc<AtomicUsize>,
        seen: Arc<AtomicUsize>,
    }

    impl Body for DropProbe {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Pin::new(&mut self.inner).poll_frame(cx)
        }

        fn is_end_stream(&self) -> bool {
            self.inner.is_end_stream()
        }
    }

    impl Drop for DropProbe {
        fn drop(&mut self) {
            self.seen
                .store(self.writes.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_end_of_call_work_comes_after_the_answer_is_written() {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (io, writes) = Counted::new(ours);
        let seen = Arc::new(AtomicUsize::new(usize::MAX));
        let svc = {
            let (writes, seen) = (writes.clone(), seen.clone());
            handler(move |_req: Request<CallerBody>| -> HttpFuture {
                let body = DropProbe {
                    inner: answer(Bytes::from_static(b"pong")).into_body(),
                    writes: writes.clone(),
                    seen: seen.clone(),
                };
                Box::pin(async move { Ok(Response::new(BoxBody::new(body))) })
            })
        };
        let (_signal, watch) = crate::drain::channel();
        let _server = tokio::spawn(serve(io, svc, watch, PEER_STREAMS));
        let (mut client, conn) = h2::client::handshake(theirs).await.expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // The first call also settles the connection's settings.
        call(&mut client, Bytes::from_static(b"ping")).await;
        assert_ne!(seen.load(Ordering::SeqCst), usize::MAX, "the body was kept");
        seen.store(usize::MAX, Ordering::SeqCst);
        let before = writes.load(Ordering::SeqCst);
        let (got, _) = call(&mut client, Bytes::from_static(b"ping")).await;
        assert_eq!(&got[..], b"pong");
        assert_eq!(
            seen.load(Ordering::SeqCst),
            before + 1,
            "the body was dropped after the answer's one write, not before it"
        );
    }

    #[tokio::test]
    async fn bodies_larger_than_the_windows_cross_whole_both_ways() {
        // 3 MiB: three times the server's window, 48 times the client's.
        let (client, _signal, _server, _) = start(echo()).await;
        let body: Bytes = (0..3 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let sent = body.clone();
        let mut ready = client.clone().ready().await.expect("ready");
        let (resp, mut send) = ready.send_request(post(), false).expect("send");
        let writer = tokio::spawn(async move {
            let mut rest = sent;
            while !rest.is_empty() {
                send.reserve_capacity(rest.len().min(64 * 1024));
                let cap = std::future::poll_fn(|cx| send.poll_capacity(cx))
                    .await
                    .expect("capacity")
                    .expect("capacity");
                let chunk = rest.split_to(cap.min(rest.len()));
                send.send_data(chunk, rest.is_empty()).expect("data");
            }
        });
        let resp = resp.await.expect("response");
        let mut recv = resp.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = recv.data().await {
            let chunk = chunk.expect("chunk");
            let _ = recv.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        writer.await.expect("writer");
        assert_eq!(got.len(), body.len());
        assert!(got == body[..], "the echo came back changed");
    }

    #[tokio::test]
    async fn a_callers_reset_drops_the_handlers_future() {
        let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
        let dropped_tx = once(dropped_tx);
        let svc = handler(move |_req: Request<CallerBody>| -> HttpFuture {
            // Sends nothing: the receiver sees the sender dropped with the
            // future.
            let guard = dropped_tx();
            Box::pin(async move {
                let _guard = guard;
                std::future::pending().await
            })
        });
        let (client, _signal, _server, _) = start(svc).await;
        let mut ready = client.ready().await.expect("ready");
        let (resp, mut send) = ready.send_request(post(), false).expect("send");
        send.send_data(Bytes::from_static(b"x"), false)
            .expect("data");
        // Give the server the stream, then go away from it.
        tokio::task::yield_now().await;
        send.send_reset(Reason::CANCEL);
        drop(resp);
        tokio::time::timeout(Duration::from_secs(5), dropped_rx)
            .await
            .expect("the handler's future was not dropped within 5 s")
            .expect_err("the handler answered");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_let_go_is_read_to_its_end_within_bounds_then_reset() {
        // Answered before its body, a call's body is still read (see
        // `drain`): the caller's end closes the stream, with no reset. One
        // that sends on past DRAIN_BYTES, or stops without ending within
        // DRAIN_TIME, is reset (NO_ERROR) there.
        let shed = handler(|_req: Request<CallerBody>| -> HttpFuture {
            Box::pin(async { Ok(Response::new(crate::body::empty())) })
        });
        let (client, _signal, _server, _) = start(shed).await;
        let answered = |client: h2::client::SendRequest<Bytes>| async move {
            let mut ready = client.ready().await.expect("ready");
            let (resp, send) = ready.send_request(post(), false).expect("send");
            let resp = resp.await.expect("answer");
            assert!(resp.body().is_end_stream(), "a trailers-only answer");
            send
        };
        let reset = |mut send: h2::SendStream<Bytes>| async move {
            let waited = tokio::time::Instant::now();
            let reason = poll_fn(|cx| send.poll_reset(cx)).await.expect("reset");
            (reason, waited.elapsed())
        };

        // Ends its body after the answer: taken whole, never reset.
        let mut send = answered(client.clone()).await;
        send.send_data(Bytes::from_static(&[0; 69]), false)
            .expect("data");
        send.send_data(Bytes::new(), true).expect("end");
        let none = tokio::time::timeout(DRAIN_TIME * 3, reset(send)).await;
        assert!(none.is_err(), "a body that ended was reset: {none:?}");

        // Sends nothing more: reset once DRAIN_TIME has passed.
        let (reason, after) = reset(answered(client.clone()).await).await;
        assert_eq!(reason, Reason::NO_ERROR);
        assert!(
            after >= DRAIN_TIME && after < DRAIN_TIME * 2,
            "after {after:?}"
        );

        // Sends on: reset once more than DRAIN_BYTES came, before the time.
        let mut send = answered(client.clone()).await;
        let chunk = Bytes::from(vec![0; 16 * 1024]);
        for _ in 0..DRAIN_BYTES / chunk.len() + 2 {
            send.reserve_capacity(chunk.len());
            let got = poll_fn(|cx| send.poll_capacity(cx)).await;
            if got.is_none() {
                break;
            }
            send.send_data(chunk.clone(), false).expect("data");
        }
        let (reason, after) = reset(send).await;
        assert_eq!(reason, Reason::NO_ERROR);
        assert!(
            after < DRAIN_TIME,
            "reset after {after:?}, by the time, not the bytes"
        );
    }

    #[tokio::test]
    async fn draining_lets_an_open_stream_finish_then_ends_the_connection() {
        let (go_tx, go_rx) = oneshot::channel::<()>();
        let go_rx = once(go_rx);
        let svc = handler(move |_req: Request<CallerBody>| -> HttpFuture {
            let go = go_rx();
            Box::pin(async move {
                if let Some(go) = go {
                    let _ = go.await;
                }
                Ok(answer(Bytes::from_static(b"late")))
            })
        });
        let (client, signal, server, _) = start(svc).await;
        let mut ready = client.ready().await.expect("ready");
        let (resp, _send) = ready.send_request(post(), true).expect("send");
        tokio::task::yield_now().await;
        let drained = tokio::spawn(signal.drain(Duration::from_secs(10)));
        // Draining began; the stream is still answered.
        tokio::task::yield_now().await;
        go_tx.send(()).expect("go");
        let resp = resp.await.expect("the open stream was answered");
        let mut recv = resp.into_body();
        let chunk = recv.data().await.expect("data").expect("chunk");
        assert_eq!(&chunk[..], b"late");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the connection did not end after draining")
            .expect("server task")
            .expect("a clean end");
        assert!(drained.await.expect("drain"), "the watch was kept");
    }

    #[tokio::test]
    async fn connection_specific_headers_in_an_answer_are_dropped_not_fatal() {
        let svc = handler(|_req: Request<CallerBody>| -> HttpFuture {
            Box::pin(async move {
                let mut resp = Response::new(full(Bytes::from_static(b"ok")));
                let h = resp.headers_mut();
                h.insert("connection", HeaderValue::from_static("keep-alive"));
                h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
                h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
                h.insert("x-kept", HeaderValue::from_static("1"));
                Ok(resp)
            })
        });
        let (client, _signal, _server, _) = start(svc).await;
        let mut ready = client.ready().await.expect("ready");
        let (resp, _send) = ready.send_request(post(), true).expect("send");
        let resp = resp.await.expect("an answer, not a reset");
        assert!(resp.headers().get("connection").is_none());
        assert!(resp.headers().get("transfer-encoding").is_none());
        assert_eq!(
            resp.headers().get("x-kept").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
    }

    #[tokio::test]
    async fn a_panicking_handler_ends_its_stream_only() {
        let svc = handler(|req: Request<CallerBody>| -> HttpFuture {
            Box::pin(async move {
                assert!(req.uri().path() != "/panic", "the handler panics");
                let body = req.into_body().collect().await.expect("request body");
                Ok(answer(body.to_bytes()))
            })
        });
        let (mut client, _signal, server, _) = start(svc).await;
        let mut ready = client.clone().ready().await.expect("ready");
        let req = Request::post("http://echo/panic")
            .body(())
            .expect("request");
        let (resp, _send) = ready.send_request(req, true).expect("send");
        let reset = resp.await.expect_err("a reset, not an answer");
        assert!(reset.reason().is_some(), "{reset}");
        // The connection, and its other streams, go on.
        let (got, _) = call(&mut client, Bytes::from_static(b"still here")).await;
        assert_eq!(&got[..], b"still here");
        assert!(!server.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_answers_no_ping_is_dropped() {
        let (ours, mut theirs) = tokio::io::duplex(1 << 20);
        let (_signal, watch) = crate::drain::channel();
        let started = tokio::time::Instant::now();
        let server = tokio::spawn(serve(ours, echo(), watch, PEER_STREAMS));
        // The client's preface and an empty SETTINGS frame, then silence:
        // everything the server sends is read and nothing answered.
        theirs
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .expect("preface");
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while theirs.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
        server
            .await
            .expect("server task")
            .expect("a clean end after the unanswered PING");
        let waited = started.elapsed();
        assert!(
            waited >= KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT
                && waited < KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT + Duration::from_secs(1),
            "dropped after {waited:?}"
        );
        reader.abort();
    }

    /// A request's header block (POST to the echo service's unary method)
    /// in literal fields without indexing: no HPACK state, so any number
    /// of HEADERS frames may carry it.
    fn request_block() -> Vec<u8> {
        let mut block = Vec::new();
        for (name, value) in [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/weft.test.v1.Echo/Unary"),
            (":authority", "echo"),
        ] {
            block.push(0);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        block
    }

    /// Reads frames until `want` answers (HEADERS with END_STREAM) have
    /// come; fails on a GOAWAY.
    async fn read_answers(io: &mut tokio::io::DuplexStream, buf: &mut Vec<u8>, want: usize) {
        let mut answers = 0;
        frames_until(io, buf, |kind, flags, _| {
            answers += usize::from(kind == 0x1 && flags & 0x1 != 0);
            answers == want
        })
        .await;
    }

    #[tokio::test]
    async fn request_bodies_that_arrive_after_early_answers_do_not_end_the_connection() {
        // An overloaded or unknown service is answered before the request's
        // body is read; the caller's DATA, already on its way, then arrives
        // for streams the answer reset. Thousands of them, in bursts as wide
        // as the streams allowed at once, must not read as a peer's errors.
        let (ours, mut theirs) = tokio::io::duplex(1 << 22);
        let (_signal, watch) = crate::drain::channel();
        let answer_at_once = handler(|_req: Request<CallerBody>| -> HttpFuture {
            Box::pin(async { Ok(Response::new(crate::body::empty())) })
        });
        let server = tokio::spawn(serve(ours, answer_at_once, watch, PEER_STREAMS));
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        theirs.write_all(&out).await.expect("preface");
        let block = request_block();
        let mut buf = Vec::new();
        let burst = PEER_STREAMS;
        let bursts = 9;
        for b in 0..bursts {
            let ids: Vec<u32> = (0..burst).map(|i| 1 + 2 * (b * burst + i)).collect();
            let mut out = Vec::new();
            for id in &ids {
                out.extend(frame(0x1, 0x4, *id, &block));
            }
            theirs.write_all(&out).await.expect("headers");
            read_answers(&mut theirs, &mut buf, burst as usize).await;
            // Each request's body, after its answer.
            let mut out = Vec::new();
            for id in &ids {
                out.extend(frame(0x0, 0x1, *id, &[0, 0, 0, 0, 0]));
            }
            theirs.write_all(&out).await.expect("data");
        }
        // Still served: one more call is answered.
        let id = 1 + 2 * bursts * burst;
        theirs
            .write_all(&frame(0x1, 0x5, id, &block))
            .await
            .expect("last");
        read_answers(&mut theirs, &mut buf, 1).await;
        assert!(!server.is_finished());
        server.abort();
    }

    /// A caller at the other end of an in-memory connection that answers
    /// the instant the server writes: what the server writes is parsed
    /// frame by frame, and when `script` is handed the count of answers
    /// (HEADERS with END_STREAM, or a refusal) so far, the bytes it returns are there
    /// for the server's very next read. So the server reads them before
    /// anything it does after that write, as it does when a fast caller's
    /// frames are in the socket by then.
    struct Prompt<F> {
        inbox: Vec<u8>,
        reader: Option<std::task::Waker>,
        out: Vec<u8>,
        answers: usize,
        /// RST_STREAM frames with REFUSED_STREAM (7).
        refused: Arc<AtomicUsize>,
        /// A GOAWAY's debug data.
        goaway: Arc<std::sync::Mutex<Option<String>>>,
        script: F,
    }

    impl<F: FnMut(usize) -> Vec<u8> + Unpin> AsyncRead for Prompt<F> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            if self.inbox.is_empty() {
                self.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let n = self.inbox.len().min(buf.remaining());
            buf.put_slice(&self.inbox[..n]);
            self.inbox.drain(..n);
            Poll::Ready(Ok(()))
        }
    }

    impl<F: FnMut(usize) -> Vec<u8> + Unpin> AsyncWrite for Prompt<F> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let this = &mut *self;
            this.out.extend_from_slice(buf);
            let before = this.answers;
            while this.out.len() >= 9 {
                let len = u32::from_be_bytes([0, this.out[0], this.out[1], this.out[2]]) as usize;
                if this.out.len() < 9 + len {
                    break;
                }
                let (kind, flags) = (this.out[3], this.out[4]);
                if kind == 0x7 {
                    let debug = String::from_utf8_lossy(&this.out[17..9 + len]).into_owned();
                    *this.goaway.lock().expect("lock") = Some(debug);
                }
                this.answers += usize::from(kind == 0x1 && flags & 0x1 != 0);
                if kind == 0x3 && this.out[9..13] == [0, 0, 0, 7] {
                    // A refused stream is answered by its refusal.
                    this.answers += 1;
                    this.refused.fetch_add(1, Ordering::Relaxed);
                }
                this.out.drain(..9 + len);
            }
            if this.answers != before {
                let next = (this.script)(this.answers);
                this.inbox.extend(next);
                if let Some(w) = this.reader.take() {
                    w.wake();
                }
            }
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_caller_at_the_stream_limit_is_never_refused_a_stream() {
        // A conforming client that keeps its limit of streams open opens
        // a stream the moment one closes on its side: when it has the
        // answer's END_STREAM and has sent its own. Its END_STREAM and the
        // next HEADERS arrive together; the server must have closed the
        // old stream by then, or it refuses the new one (REFUSED_STREAM,
        // an error the caller did not cause, and after 1,024 of them h2
        // ends the connection with ENHANCE_YOUR_CALM). Answers made before
        // the request's body is read, both kinds: trailers-only (a shed)
        // and with a body.
        let last_frame = |id| frame(0x0, 0x1, id, &[0, 0, 0, 0, 0]);
        let trailers_only = handler(|_req: Request<CallerBody>| -> HttpFuture {
            Box::pin(async { Ok(Response::new(crate::body::empty())) })
        });
        let run = calls_in_bursts(trailers_only, 6, last_frame).await;
        assert_eq!(run, Bursts::default(), "trailers-only answers");
        let with_a_body = handler(|_req: Request<CallerBody>| -> HttpFuture {
            Box::pin(async { Ok(answer(Bytes::from_static(b"early"))) })
        });
        let run = calls_in_bursts(with_a_body, 6, last_frame).await;
        assert_eq!(run, Bursts::default(), "answers with a body");
    }

    /// How a [`calls_in_bursts`] run ended.
    #[derive(Debug, Default, PartialEq, Eq)]
    struct Bursts {
        /// Streams refused.
        refused: usize,
        /// The connection's end before the last burst's answers, with its
        /// GOAWAY's debug data if it sent one.
        ended: Option<Option<String>>,
    }

    /// `bursts` bursts of PEER_STREAMS calls (the limit) from a [`Prompt`]
    /// caller: each burst answered whole, then its request bodies
    /// (`body(id)`, sent after the answers) and the next burst's HEADERS,
    /// in one write.
    async fn calls_in_bursts(
        svc: impl Handler,
        bursts: usize,
        body: impl Fn(u32) -> Vec<u8> + Unpin + Send + 'static,
    ) -> Bursts {
        let block = request_block();
        let burst = PEER_STREAMS as usize;
        let ids = move |b: usize| (0..burst).map(move |i| (1 + 2 * (b * burst + i)) as u32);
        let opens = move |b: usize| {
            let mut out = Vec::new();
            for id in ids(b) {
                out.extend(frame(0x1, 0x4, id, &block));
            }
            out
        };
        let mut inbox = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        inbox.extend(frame(0x4, 0, 0, &[]));
        inbox.extend(opens(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let goaway = Arc::new(std::sync::Mutex::new(None));
        let (done_tx, done_rx) = oneshot::channel();
        let mut done_tx = Some(done_tx);
        let caller = Prompt {
            inbox,
            reader: None,
            out: Vec::new(),
            answers: 0,
            refused: refused.clone(),
            goaway: goaway.clone(),
            script: move |answers: usize| {
                if !answers.is_multiple_of(burst) {
                    return Vec::new();
                }
                let b = answers / burst;
                if b == bursts {
                    if let Some(tx) = done_tx.take() {
                        let _ = tx.send(());
                    }
                    return Vec::new();
                }
                let mut out = Vec::new();
                for id in ids(b - 1) {
                    out.extend(body(id));
                }
                out.extend(opens(b));
                out
            },
        };
        let (_signal, watch) = crate::drain::channel();
        let mut server = tokio::spawn(serve(caller, svc, watch, PEER_STREAMS));
        let ended = tokio::select! {
            _ = done_rx => None,
            _ = &mut server => Some(goaway.lock().expect("lock").take()),
        };
        server.abort();
        Bursts {
            refused: refused.load(Ordering::Relaxed),
            ended,
        }
    }

    #[tokio::test]
    async fn request_bodies_in_small_frames_after_early_answers_do_not_end_the_connection() {
        // h2 charges a connection-wide budget for each small DATA frame
        // that is not the last of its stream, and gives it back when the
        // frame is read; a frame that arrives for a stream whose body was
        // let go is never read, and its charge is never given back. A
        // gRPC caller's message (here 69 bytes, a 64-byte payload) comes
        // in such a frame, with the end of the body after it. Answered
        // before their bodies arrive (sheds, refusals), enough calls on
        // one long-lived connection would spend the budget, and h2 would
        // end the connection (ENHANCE_YOUR_CALM, too_many_data_frames):
        // the 1 MiB connection window's budget of 512 KiB is ~2,800 such
        // frames. 4,000 calls here.
        let message_then_end = |id| {
            let mut out = frame(0x0, 0x0, id, &[0; 69]);
            out.extend(frame(0x0, 0x1, id, &[]));
            out
        };
        let shed = handler(|_req: Request<CallerBody>| -> HttpFuture {
            Box::pin(async { Ok(Response::new(crate::body::empty())) })
        });
        let run = calls_in_bursts(shed, 20, message_then_end).await;
        assert_eq!(run, Bursts::default());
    }
}
