//! Multiplexed HTTP/2 connections to a peer: one, opened on first use and
//! reopened when it closes, which every request to that peer shares; and
//! more only while every open one is at the streams the peer allows on a
//! connection (its SETTINGS_MAX_CONCURRENT_STREAMS), up to
//! [`MAX_CONNECTIONS`]. Without them, calls past that limit would wait in
//! this sidecar for a stream: for long-lived streams (a server stream that
//! follows a feed), until one of the others ends, which may be never.
//!
//! Driven with `h2` directly, not through hyper's client: the request's
//! own task opens the stream, writes a body that is already at hand (so a
//! unary call's headers and message leave in one write) and waits for
//! the response. hyper's client hands every request over a
//! channel to the connection's task, spawns a task per request that waits
//! for the response and answers over a oneshot: two task hops, a spawn
//! and two channels per request, about 6% of a sidecar's CPU in the
//! profile (docs/performance.md). Only a body that is still arriving (a
//! client stream) gets a task of its own to pump it ([`Pump`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Reason, RecvStream, SendStream};
use http_body::{Body, Frame, SizeHint};
use tokio::task::AbortHandle;

use super::connector::{ConnectTarget, Connector};
use super::preface::Preface;
use crate::body::BoxBody;
use crate::error::ProxyError;
use crate::resilience::limit::Limit;

/// A PING this often, to notice a dead peer even while nothing is in
/// flight...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// ...which must be answered within this, or the connection is dropped.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Windows and buffers as hyper's client sets them (h2's own defaults are
/// the protocol's 64 KiB windows, too small for a proxy carrying many
/// streams over one connection).
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams opened before the peer's SETTINGS say how many it takes (none:
/// a connection is handed out once they have come).
const INITIAL_MAX_SEND_STREAMS: usize = 100;
/// How long a new connection's peer may take to send its SETTINGS, the
/// first frame a server sends, once TLS is up.
const SETTINGS_TIMEOUT: Duration = Duration::from_secs(5);

/// How many streams this end reset are remembered, and for how long, so
/// that frames the peer had already sent for them are dropped quietly.
/// Both ends reset streams in bursts: a server answers a request before
/// reading its body (an `overloaded` or `unknown-service` answer) and
/// resets the rest of it (RFC 9113 §8.1, NO_ERROR) if it does not end
/// soon (`proxy::h2::drain`); a client resets the calls a deadline, a
/// hedge or its caller gave up on. h2 0.4.20's defaults, 50 for 1 s,
/// were below the 200 streams one connection may have open: past them a
/// reset is forgotten at once (0.4.21 forgets the oldest instead, and
/// sizes its default from the stream limit), a frame that was on its way
/// for it draws a STREAM_CLOSED reset that h2 counts as the peer's error,
/// and after 1,024 of those in a connection's life h2 ends it with GOAWAY
/// ENHANCE_YOUR_CALM, failing every call on it. (Found by the overload
/// test: at 3× the maximum rate, a few calls in 2,000 failed that way.
/// That budget is now the server's alone: see `H2Client::connect`.)
/// 2,048 for 200 ms keeps up with 10,000 resets a second per connection,
/// for at most a few hundred bytes each while they are remembered; 200 ms
/// is far longer than a frame already sent takes to arrive.
pub(crate) const RESET_STREAMS_REMEMBERED: usize = 2048;
pub(crate) const RESET_STREAM_MEMORY: Duration = Duration::from_millis(200);

/// An extra connection (one opened while the others were full) is let go
/// once two checks this far apart find it without a stream of ours.
const EXTRA_IDLE: Duration = Duration::from_secs(30);

/// Connections to one peer at most. A peer sidecar allows 200 streams on
/// each (`proxy::h2::PEER_STREAMS`), so 16 carry 3,200 calls at once: more
/// than a service's default limit on calls in flight (1,024), which sheds
/// before this is reached. Past it, calls wait for a stream on the least
/// busy connection, within the service's limit on waiting requests.
pub const MAX_CONNECTIONS: usize = 16;

pub struct H2Client {
    target: ConnectTarget,
    connector: Arc<dyn Connector>,
    /// The open connections, in the order they were opened: a request takes
    /// the first with a stream free. Read without a lock on every request;
    /// almost always one. Shared with the tasks of extra connections, which
    /// take theirs out when idle.
    conns: Arc<Conns>,
    /// Only one task opens a connection at a time; the others wait for it.
    connecting: tokio::sync::Mutex<()>,
}

/// An open connection: the handle streams are opened with, whether the
/// task driving it has ended, and how many of its streams are ours now.
type Conns = ArcSwap<Vec<Arc<Conn>>>;

struct Conn {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
    /// Streams opened and not yet ended (their response body ended or was
    /// dropped): [`Slot`]s. A request body still being written after its
    /// answer ended is not counted; h2 itself holds back a stream past the
    /// peer's limit, so a count that is low only delays a new connection.
    streams: Arc<AtomicUsize>,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Open, and below the streams the peer allows (as its latest SETTINGS
    /// say: a connection is handed out only once its first have come).
    fn has_room(&self) -> bool {
        !self.is_closed()
            && self.streams.load(Ordering::Relaxed) < self.send.current_max_send_streams()
    }

    fn slot(&self) -> Slot {
        self.streams.fetch_add(1, Ordering::Relaxed);
        Slot(self.streams.clone())
    }
}

/// One stream counted in its connection's [`Conn::streams`] until dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl H2Client {
    pub fn new(target: ConnectTarget, connector: Arc<dyn Connector>) -> Self {
        H2Client {
            target,
            connector,
            conns: Arc::new(ArcSwap::from_pointee(Vec::new())),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether a connection is open now (for `/config` and metrics).
    pub fn is_connected(&self) -> bool {
        self.connections() > 0
    }

    /// How many connections are open now.
    pub fn connections(&self) -> usize {
        self.conns.load().iter().filter(|c| !c.is_closed()).count()
    }

    /// The first open connection with a stream free, or a new one (while
    /// fewer than [`MAX_CONNECTIONS`] are open), or the open one with the
    /// fewest streams. Returned as the shared handle so that a caller that
    /// finds it broken can retire exactly that one.
    async fn conn(&self) -> Result<Arc<Conn>, ProxyError> {
        if let Some(c) = self.conns.load().iter().find(|c| c.has_room()) {
            return Ok(c.clone());
        }
        // Boxed: connecting (TLS and the HTTP/2 handshake) is rare, and its
        // future would otherwise be carried by every request's (1 KB).
        Box::pin(self.connect()).await
    }

    /// Opens a connection, unless another task opened one with room
    /// meanwhile, or enough are open.
    async fn connect(&self) -> Result<Arc<Conn>, ProxyError> {
        let _guard = self.connecting.lock().await;
        let open: Vec<Arc<Conn>> = self
            .conns
            .load()
            .iter()
            .filter(|c| !c.is_closed())
            .cloned()
            .collect();
        if let Some(c) = open.iter().find(|c| c.has_room()) {
            return Ok(c.clone());
        }
        if open.len() >= MAX_CONNECTIONS {
            let least = open
                .iter()
                .min_by_key(|c| c.streams.load(Ordering::Relaxed));
            return Ok(least.expect("MAX_CONNECTIONS is above 0").clone());
        }
        let (io, settings) = Preface::new(self.connector.connect(&self.target).await?);
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .max_concurrent_reset_streams(RESET_STREAMS_REMEMBERED)
            .reset_stream_duration(RESET_STREAM_MEMORY)
            // h2 counts each frame that comes for a stream this end reset
            // and has forgotten, and at 1,024 in the connection's life,
            // never refilled, ends it. On a server that budget stops a
            // client from making it reset streams on purpose (and so open
            // more than it may); a client's streams are bounded by its own
            // calls. Here it only limits how many calls a connection to a
            // peer sidecar or the app may give up over its life, before a
            // slow answer to one of them fails every call on it (as
            // tonic's and hyper's users met: hyperium/h2#856).
            .max_local_error_reset_streams(None)
            .enable_push(false)
            .handshake::<Preface, Bytes>(io)
            .await
            .map_err(|source| ProxyError::Handshake {
                addr: self.target.addr.to_string(),
                source,
            })?;
        let closed = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(AtomicUsize::new(0));
        let extra = (!open.is_empty()).then(|| Extra {
            conns: Arc::downgrade(&self.conns),
            streams: streams.clone(),
        });
        let addr = self.target.addr.clone();
        tokio::spawn(drive(connection, closed.clone(), extra, addr));
        // The peer's limit on streams is known once its SETTINGS are in
        // force: acknowledged (`endpoint::preface`). A server sends them
        // first, as soon as the connection is up; until then h2 guesses.
        let no_settings = |why: String| ProxyError::Connect {
            addr: self.target.addr.to_string(),
            source: std::io::Error::other(why),
        };
        match tokio::time::timeout(SETTINGS_TIMEOUT, settings).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                return Err(no_settings(
                    "the connection closed before the peer's HTTP/2 SETTINGS came".into(),
                ));
            }
            Err(_) => {
                return Err(no_settings(format!(
                    "no HTTP/2 SETTINGS from the peer within {SETTINGS_TIMEOUT:?}"
                )));
            }
        }
        let conn = Arc::new(Conn {
            send,
            closed,
            streams,
        });
        // Onto the pool as it is now, not as it was before connecting: an
        // idle extra connection or a broken one may have left meanwhile.
        self.conns.rcu(|conns| {
            let mut open: Vec<_> = conns.iter().filter(|c| !c.is_closed()).cloned().collect();
            open.push(conn.clone());
            open
        });
        Ok(conn)
    }

    /// Forgets `broken`.
    fn retire(&self, broken: &Arc<Conn>) {
        leave(&self.conns, |c| Arc::ptr_eq(c, broken));
    }

    /// Sends one request, with at most `limit.1` requests of the service
    /// waiting for a connection or a stream (counted in `limit.0`); over
    /// it, the request fails at once. A request the connection could not
    /// take (it had just closed) is sent once more on a new connection;
    /// that is not a retry in the policy sense, the peer never saw it.
    ///
    /// Also returns the time from handing the request to a ready connection
    /// to the response headers: the peer's latency without connection setup
    /// (which would make a new endpoint look slow to the balancer).
    pub async fn send(
        &self,
        req: http::Request<BoxBody>,
        limit: Option<(&Limit, usize)>,
    ) -> Result<(http::Response<H2Body>, Duration), ProxyError> {
        let (parts, body) = req.into_parts();
        let mut head = Some(http::Request::from_parts(parts, ()));
        for _ in 0..2 {
            let waiting = match limit {
                Some((count, max)) => {
                    count
                        .acquire(Some(max))
                        .map_err(|over| ProxyError::Overloaded {
                            service: self.target.service.to_string(),
                            what: "requests waiting for a connection",
                            limit: over.limit,
                        })?
                }
                None => None,
            };
            let ready = async {
                let shared = self.conn().await?;
                let ready = shared.send.clone().ready().await;
                Ok::<_, ProxyError>((shared, ready))
            }
            .await;
            drop(waiting);
            let (shared, ready) = ready?;
            let Ok(mut sender) = ready else {
                self.retire(&shared);
                continue;
            };
            // The same poll that found the connection ready opens the
            // stream: nothing can close it in between.
            let head = head.take().expect("a head until the stream is opened");
            let slot = shared.slot();
            let sent = tokio::time::Instant::now();
            let eos = body.is_end_stream();
            let upstream = |source| ProxyError::Upstream {
                addr: self.target.addr.to_string(),
                source,
            };
            let (response, stream) = sender.send_request(head, eos).map_err(upstream)?;
            let pump = if eos {
                PumpGuard(None)
            } else {
                start_pump(Pump::new(body, stream, Reason::CANCEL)).await
            };
            let response = response.await.map_err(upstream)?;
            let response = response.map(|recv| H2Body {
                recv,
                data_done: false,
                done: false,
                pump,
                slot: Some(slot),
            });
            return Ok((response, sent.elapsed()));
        }
        Err(ProxyError::Connect {
            addr: self.target.addr.to_string(),
            source: std::io::Error::other("connection closed before the request was sent"),
        })
    }
}

/// Drives the connection until it ends or stops answering PINGs; then
/// marks it closed, so the next request opens another. An extra one is
/// taken out of the pool when idle, and then ends once the streams and
/// handles a request may still hold are gone.
async fn drive(
    mut connection: h2::client::Connection<Preface, Bytes>,
    closed: Arc<AtomicBool>,
    extra: Option<Extra>,
    addr: Arc<str>,
) {
    let keepalive = keepalive(
        connection.ping_pong(),
        KEEPALIVE_INTERVAL,
        KEEPALIVE_TIMEOUT,
    );
    tokio::select! {
        ended = &mut connection => {
            if let Err(e) = ended {
                tracing::debug!(%addr, error = %e, "HTTP/2 connection ended");
            }
        }
        () = keepalive => {
            tracing::debug!(
                %addr,
                timeout = ?KEEPALIVE_TIMEOUT,
                "HTTP/2 peer did not answer a PING; closing the connection",
            );
        }
        () = let_go_when_idle(extra) => {}
    }
    closed.store(true, Ordering::Release);
}

/// What an extra connection's task needs to take it out of the pool.
struct Extra {
    conns: std::sync::Weak<Conns>,
    /// Its [`Conn::streams`], which also says which connection it is.
    streams: Arc<AtomicUsize>,
}

/// Takes an extra connection out of the pool once two checks
/// [`EXTRA_IDLE`] apart find it without a stream; never ready. Out of
/// the pool, no new request takes it, and h2 ends it (GOAWAY) when the
/// last handle and stream are gone: a request that took it just before
/// still gets its answer.
async fn let_go_when_idle(extra: Option<Extra>) {
    if let Some(extra) = extra {
        let mut idle = 0;
        while idle < 2 {
            tokio::time::sleep(EXTRA_IDLE).await;
            let none = extra.streams.load(Ordering::Relaxed) == 0;
            idle = if none { idle + 1 } else { 0 };
        }
        if let Some(conns) = extra.conns.upgrade() {
            leave(&conns, |c| Arc::ptr_eq(&c.streams, &extra.streams));
        }
    }
    std::future::pending().await
}

/// Takes the connections `gone` picks out of the pool, as it is then.
fn leave(conns: &Conns, gone: impl Fn(&Arc<Conn>) -> bool) {
    conns.rcu(|conns| {
        conns
            .iter()
            .filter(|c| !gone(c))
            .cloned()
            .collect::<Vec<_>>()
    });
}

/// Sends a PING every `interval`; ready when one goes unanswered for
/// `timeout`. Never ready when the connection is ending (its own poll says
/// why) or gives no PINGs. Both ends of HTTP/2 use it (`proxy::h2` too).
pub(crate) async fn keepalive(pings: Option<h2::PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, pings.ping(h2::Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

/// Writes what of the request body is at hand now; if the body goes on,
/// the rest is written by a task of its own, cancelled when the exchange
/// is dropped before it ends.
async fn start_pump(mut pump: Pump) -> PumpGuard {
    let first = std::future::poll_fn(|cx| Poll::Ready(pump.poll_pump(cx))).await;
    if first.is_ready() {
        return PumpGuard(None);
    }
    let task = tokio::spawn(std::future::poll_fn(move |cx| pump.poll_pump(cx)));
    PumpGuard(Some(task.abort_handle()))
}

/// Aborts a request body's pump when dropped before disarmed: the response
/// was dropped unfinished (the caller went away, or a timeout), so the
/// stream is reset rather than fed on.
struct PumpGuard(Option<AbortHandle>);

impl PumpGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for PumpGuard {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// A body written to its stream as the peer's flow-control window
/// allows: a request's here, a response's by the HTTP/2 server
/// (`proxy::h2`). The first chunk goes to h2 at once, window or not, so that it
/// leaves in the same write as the headers (a unary call or answer is one
/// write, not two, and needs no task of its own); later chunks wait for
/// the window. So at most two chunks (the first, buffered in h2, and one
/// held here) wait ahead of a slow peer, and a fast body cannot fill
/// memory.
pub(crate) struct Pump {
    body: BoxBody,
    stream: SendStream<Bytes>,
    /// What the stream is reset with when the body fails: `CANCEL` from a
    /// client, `INTERNAL_ERROR` from a server.
    failed: Reason,
    /// A chunk read and waiting for the window, and whether it is the last.
    held: Option<(Bytes, bool)>,
    /// A chunk has gone to h2: the next waits for the window.
    sent_first: bool,
}

impl Pump {
    pub(crate) fn new(body: BoxBody, stream: SendStream<Bytes>, failed: Reason) -> Self {
        Pump {
            body,
            stream,
            failed,
            held: None,
            sent_first: false,
        }
    }

    /// The body, the stream let go (see `proxy::h2::stream`).
    pub(crate) fn into_body(self) -> BoxBody {
        self.body
    }

    /// Ready when the body is written or the stream is gone. Failures end
    /// the stream; the response side sees them, so they are only logged.
    pub(crate) fn poll_pump(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            // Woken by a reset while waiting for the body or the window.
            if let Poll::Ready(reason) = self.stream.poll_reset(cx) {
                tracing::debug!(?reason, "peer reset the stream; body not sent on");
                return Poll::Ready(());
            }
            if let Some((chunk, last)) = self.held.take() {
                // An empty chunk (an explicit end) needs no window, nor
                // does the first (see `Pump`).
                while !chunk.is_empty() && self.sent_first && self.stream.capacity() == 0 {
                    match self.stream.poll_capacity(cx) {
                        Poll::Pending => {
                            self.held = Some((chunk, last));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => return fail(&e),
                        Poll::Ready(None) => return Poll::Ready(()),
                    }
                }
                self.sent_first |= !chunk.is_empty();
                if let Err(e) = self.stream.send_data(chunk, last) {
                    return fail(&e);
                }
                if last {
                    return Poll::Ready(());
                }
                continue;
            }
            let frame = match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "body failed; resetting the stream");
                    self.stream.send_reset(self.failed);
                    return Poll::Ready(());
                }
                None => {
                    // Ended without a last data frame or trailers.
                    if let Err(e) = self.stream.send_data(Bytes::new(), true) {
                        return fail(&e);
                    }
                    return Poll::Ready(());
                }
            };
            match frame.into_data() {
                Ok(chunk) => {
                    // A claim of one byte, not the chunk's length: h2 asks
                    // for the rest as it sends, and a large claim held
                    // while waiting would starve the connection's other
                    // streams of window. (The first chunk waits for none.)
                    if !chunk.is_empty() && self.sent_first {
                        self.stream.reserve_capacity(1);
                    }
                    self.held = Some((chunk, self.body.is_end_stream()));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        self.stream.reserve_capacity(0);
                        if let Err(e) = self.stream.send_trailers(trailers) {
                            return fail(&e);
                        }
                        return Poll::Ready(());
                    }
                }
            }
        }
    }
}

/// The pump's end on a stream error: logged only (a client's response
/// sees it; a server's caller has gone).
fn fail(e: &h2::Error) -> Poll<()> {
    tracing::debug!(error = %e, "body not sent on");
    Poll::Ready(())
}

/// A body read from its stream, giving the window back as the reader
/// takes the data: a response's here, a request's in the HTTP/2 server.
pub struct H2Body {
    recv: RecvStream,
    /// The data is read; trailers (or the end) are next.
    data_done: bool,
    done: bool,
    /// The request body's pump, if it still runs: cancelled if this body
    /// is dropped before its end.
    pump: PumpGuard,
    /// A response's stream, counted in its connection's until the body
    /// ends or is dropped.
    slot: Option<Slot>,
}

impl H2Body {
    /// A request body the HTTP/2 server received (no request of ours to
    /// pump).
    pub(crate) fn incoming(recv: RecvStream) -> Self {
        H2Body {
            recv,
            data_done: false,
            done: false,
            pump: PumpGuard(None),
            slot: None,
        }
    }

    /// The response ended well: a request body still being written may
    /// finish (the peer ends it if it wants no more).
    fn finish(&mut self) {
        self.done = true;
        self.pump.disarm();
        self.slot = None;
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Can only fail once the stream is gone; the next read
                    // says so.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => this.data_done = true,
            }
        }
        let trailers = ready!(this.recv.poll_trailers(cx));
        match trailers {
            Ok(Some(t)) => {
                this.finish();
                Poll::Ready(Some(Ok(Frame::trailers(t))))
            }
            Ok(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Err(e) => {
                this.done = true;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.is_end_stream() {
            SizeHint::with_exact(0)
        } else {
            SizeHint::default()
        }
    }
}

#[cfg(test)]
mod tests {
    //! Against h2's own server over an in-memory pipe: no sockets, so
    //! paused time is exact.

    use std::sync::Mutex;

    use http_body_util::{BodyExt, StreamBody};
    use tokio::io::DuplexStream;
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::endpoint::{Alpn, BoxedIo, ConnectFuture};
    use crate::testing::{Counted, frame, frames_until};

    /// Hands out one end of a pipe, once.
    struct Pipe(Mutex<Option<BoxedIo>>);

    impl Connector for Pipe {
        fn connect<'a>(&'a self, target: &'a ConnectTarget) -> ConnectFuture<'a> {
            let end = self.0.lock().expect("lock").take();
            Box::pin(async move {
                end.ok_or_else(|| ProxyError::Connect {
                    addr: target.addr.to_string(),
                    source: std::io::Error::other("the pipe was handed out already"),
                })
            })
        }
    }

    /// A client whose one connection is a pipe; the other end is returned.
    fn client() -> (H2Client, DuplexStream) {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        (client_over(Box::new(ours)), theirs)
    }

    fn client_over(io: BoxedIo) -> H2Client {
        H2Client::new(pipe_target(), Arc::new(Pipe(Mutex::new(Some(io)))))
    }

    fn pipe_target() -> ConnectTarget {
        ConnectTarget {
            addr: "peer:1".into(),
            service: weft_proto::name::ServiceName::parse("peer").expect("name"),
            alpn: Alpn::H2,
        }
    }

    /// A request whose body is whatever is sent on the returned channel.
    fn streaming() -> (http::Request<BoxBody>, mpsc::Sender<Bytes>) {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let frames =
            ReceiverStream::new(rx).map(|b| Ok::<_, crate::body::BoxError>(Frame::data(b)));
        let body = BodyExt::boxed_unsync(StreamBody::new(frames));
        let req = http::Request::post("http://peer/stream")
            .body(body)
            .expect("request");
        (req, tx)
    }

    use tokio_stream::StreamExt as _;

    #[tokio::test]
    async fn a_unary_calls_headers_and_message_leave_in_one_write() {
        let (ours, theirs) = tokio::io::duplex(1 << 20);
        let (ours, writes) = Counted::new(ours);
        let client = client_over(Box::new(ours));
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(theirs).await.expect("handshake");
            // Each stream answered by a task of its own: the connection is
            // driven by `accept` alone.
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    let mut len = 0;
                    while let Some(chunk) = body.data().await {
                        len += chunk.expect("chunk").len();
                    }
                    let mut send = respond
                        .send_response(http::Response::new(()), false)
                        .expect("respond");
                    send.send_data(Bytes::from(len.to_string()), true)
                        .expect("send");
                });
            }
        });
        let call = |n: usize| {
            let req = http::Request::post("http://peer/unary")
                .body(crate::body::full(Bytes::from(vec![7u8; n])))
                .expect("request");
            let client = &client;
            async move {
                let (resp, _) = client.send(req, None).await.expect("response");
                resp.into_body().collect().await.expect("body").to_bytes()
            }
        };
        // The first call also carries the preface and the settings.
        assert_eq!(&call(100).await[..], b"100");
        let before = writes.load(Ordering::Relaxed);
        assert_eq!(&call(100).await[..], b"100");
        assert_eq!(
            writes.load(Ordering::Relaxed) - before,
            1,
            "HEADERS and DATA of a unary call went out in separate writes"
        );
    }

    /// A peer written frame by frame: answers the preface with empty
    /// SETTINGS, reads until the client's first HEADERS, then sends a
    /// GOAWAY with `last_stream_id` and NO_ERROR and, if `close`, hangs
    /// up.
    async fn peer_going_away(mut io: DuplexStream, last_stream_id: u32, close: bool) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut preface = [0u8; 24];
        io.read_exact(&mut preface).await.expect("preface");
        io.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
            .await
            .expect("settings");
        loop {
            let mut head = [0u8; 9];
            io.read_exact(&mut head).await.expect("frame header");
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            io.read_exact(&mut payload).await.expect("frame payload");
            if head[3] == 1 {
                break;
            }
        }
        let mut goaway = vec![0, 0, 8, 7, 0, 0, 0, 0, 0];
        goaway.extend_from_slice(&last_stream_id.to_be_bytes());
        goaway.extend_from_slice(&0u32.to_be_bytes());
        io.write_all(&goaway).await.expect("goaway");
        if close {
            drop(io);
        } else {
            // Stay open, reading, until the client hangs up.
            let _ = tokio::io::copy(&mut io, &mut tokio::io::sink()).await;
        }
    }

    /// What a unary call to a peer going away (`peer_going_away`) ends
    /// with.
    async fn call_a_peer_going_away(last_stream_id: u32, close: bool) -> crate::error::ErrorKind {
        let (client, theirs) = client();
        tokio::spawn(peer_going_away(theirs, last_stream_id, close));
        let req = http::Request::post("http://peer/unary")
            .body(crate::body::full(Bytes::from_static(b"hello")))
            .expect("request");
        match client.send(req, None).await {
            Ok(_) => panic!("an answer from a peer going away"),
            Err(e) => e.kind(),
        }
    }

    #[tokio::test]
    async fn a_stream_past_a_graceful_goaway_counts_as_refused() {
        assert_eq!(
            call_a_peer_going_away(0, false).await,
            crate::error::ErrorKind::RefusedStream
        );
    }

    #[tokio::test]
    async fn a_stream_the_goaway_kept_then_lost_is_not_refused() {
        // Stream 1 is within the GOAWAY: the peer may have processed it.
        assert_eq!(
            call_a_peer_going_away(1, true).await,
            crate::error::ErrorKind::UpstreamFailed
        );
    }

    #[tokio::test]
    async fn a_client_stream_larger_than_the_peers_window_arrives_whole() {
        let (client, theirs) = client();
        // A 16 KiB stream window: half a megabyte needs 32 window updates.
        let server = tokio::spawn(async move {
            let mut conn = h2::server::Builder::new()
                .initial_window_size(16 * 1024)
                .handshake::<_, Bytes>(theirs)
                .await
                .expect("handshake");
            let (req, mut respond) = conn.accept().await.expect("a stream").expect("ok");
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            let mut body = req.into_body();
            let mut got = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.expect("chunk");
                body.flow_control()
                    .release_capacity(chunk.len())
                    .expect("release");
                got.extend_from_slice(&chunk);
            }
            let resp = http::Response::new(());
            let mut send = respond.send_response(resp, false).expect("respond");
            send.send_data(Bytes::from(got.len().to_string()), true)
                .expect("send");
            got
        });
        let (req, tx) = streaming();
        let writer = tokio::spawn(async move {
            for i in 0..64u8 {
                tx.send(Bytes::from(vec![i; 8 * 1024])).await.expect("send");
            }
        });
        let (resp, _) = client.send(req, None).await.expect("response");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"524288");
        writer.await.expect("writer");
        let got = server.await.expect("server");
        let want: Vec<u8> = (0..64u8).flat_map(|i| vec![i; 8 * 1024]).collect();
        assert!(got == want, "the body arrived altered or out of order");
    }

    #[tokio::test]
    async fn dropping_the_response_resets_a_stream_still_sending() {
        let (client, theirs) = client();
        let (reset_tx, reset_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut conn = h2::server::handshake(theirs).await.expect("handshake");
            let (req, mut respond) = conn.accept().await.expect("a stream").expect("ok");
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            respond
                .send_response(http::Response::new(()), false)
                .expect("respond");
            let mut body = req.into_body();
            // Data, then the reset when the client gives up.
            let ended = loop {
                match body.data().await {
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break e.reason(),
                    None => break None,
                }
            };
            let _ = reset_tx.send(ended);
        });
        let (req, tx) = streaming();
        tx.send(Bytes::from_static(b"first")).await.expect("send");
        let (resp, _) = client.send(req, None).await.expect("response");
        drop(resp);
        let ended = tokio::time::timeout(Duration::from_secs(5), reset_rx)
            .await
            .expect("the server saw no reset within 5 s")
            .expect("the server saw the stream end");
        assert_eq!(ended, Some(Reason::CANCEL));
        // And the body's pump is gone: nothing reads the caller's body on.
        tokio::time::timeout(Duration::from_secs(5), tx.closed())
            .await
            .expect("the request body was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_answers_no_ping_is_dropped_with_its_streams() {
        use tokio::io::AsyncWriteExt;
        let (client, theirs) = client();
        // The peer sends its SETTINGS, then reads everything and never
        // says another word.
        tokio::spawn(async move {
            let mut theirs = theirs;
            theirs
                .write_all(&frame(0x4, 0, 0, &[]))
                .await
                .expect("settings");
            let _ = tokio::io::copy(&mut theirs, &mut tokio::io::sink()).await;
        });
        let (failed, waited) = call_unanswered(&client).await;
        assert_eq!(
            failed.kind(),
            crate::error::ErrorKind::UpstreamFailed,
            "{failed}"
        );
        assert!(
            waited >= KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT
                && waited < KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT + Duration::from_secs(1),
            "dropped after {waited:?}"
        );
        assert!(!client.is_connected());
    }

    /// A call to a peer that never answers: how it failed, and when.
    async fn call_unanswered(client: &H2Client) -> (ProxyError, Duration) {
        let req = http::Request::get("http://peer/silent")
            .body(crate::body::empty())
            .expect("request");
        let started = tokio::time::Instant::now();
        let Err(failed) = client.send(req, None).await else {
            panic!("an answer from a silent peer");
        };
        (failed, started.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_sends_no_settings_is_a_connection_that_failed() {
        let (client, theirs) = client();
        // The peer reads everything and never says a word: not even the
        // SETTINGS an HTTP/2 server sends first. The call is never sent, so
        // it fails as a connection does (a retry may take it elsewhere).
        let (read, got) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut theirs = theirs;
            let mut all = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut theirs, &mut all).await;
            let _ = read.send(all);
        });
        let (failed, waited) = call_unanswered(&client).await;
        assert_eq!(waited, SETTINGS_TIMEOUT);
        assert_eq!(
            failed.kind(),
            crate::error::ErrorKind::ConnectFailed,
            "{failed}"
        );
        assert!(!client.is_connected());
        drop(client);
        let all = got.await.expect("what the peer read");
        let frames = crate::testing::frame_kinds(&all[24..]);
        assert!(!frames.contains(&0x1), "a request was sent: {frames:?}");
    }

    /// When the peer's answers to calls given up arrive.
    #[derive(Clone, Copy, PartialEq)]
    enum Late {
        /// Each burst's, right after its resets.
        EachBurst,
        /// All of them after the last burst's resets; then frames are read
        /// until more than 1,024 answers drew a second reset.
        AfterAll,
    }

    /// Gives up `bursts` bursts of 200 calls (each reset), then lets the
    /// peer's answers to them arrive (`late`); panics unless the next call
    /// is then answered on the same connection. Returns how many late
    /// answers drew a second reset (STREAM_CLOSED: the stream was
    /// forgotten) before that call.
    async fn late_answers_then_a_call(bursts: usize, late: Late) -> usize {
        use futures_util::stream::FuturesUnordered;
        use std::collections::HashSet;
        use tokio::io::AsyncWriteExt;
        let (client, mut theirs) = client();
        // The server's settings (none: no bound on streams) and its ACK of
        // the client's, ahead of everything.
        let mut out = frame(0x4, 0, 0, &[]);
        out.extend(frame(0x4, 0x1, 0, &[]));
        theirs.write_all(&out).await.expect("settings");
        let mut buf = Vec::new();
        let call = || {
            let req = http::Request::post("http://peer/unary")
                .body(crate::body::full(Bytes::from_static(b"x")))
                .expect("request");
            client.send(req, None)
        };
        let burst = 200;
        // Streams given up and answered late; a reset for one of them is
        // its second: the answer found it forgotten.
        let mut answered = HashSet::new();
        let mut held = Vec::new();
        let mut second = 0;
        for b in 0..bursts {
            let mut calls: FuturesUnordered<_> = (0..burst).map(|_| call()).collect();
            let mut ids = Vec::new();
            {
                let reading = frames_until(&mut theirs, &mut buf, |kind, _, id| {
                    second += usize::from(kind == 0x3 && answered.contains(&id));
                    if kind == 0x1 {
                        ids.push(id);
                    }
                    ids.len() == burst
                });
                tokio::pin!(reading);
                tokio::select! {
                    () = &mut reading => {}
                    r = calls.next() => panic!("a call ended unanswered: {:?}", r.map(|r| r.err())),
                }
            }
            // Given up: each is reset...
            drop(calls);
            let mut reset = 0;
            frames_until(&mut theirs, &mut buf, |kind, _, id| {
                second += usize::from(kind == 0x3 && answered.contains(&id));
                reset += usize::from(kind == 0x3 && ids.contains(&id));
                reset == burst
            })
            .await;
            // ...and then its answer arrives (":status: 200", END_STREAM).
            held.extend(ids);
            if late == Late::EachBurst || b + 1 == bursts {
                let mut out = Vec::new();
                for id in held.drain(..) {
                    out.extend(frame(0x1, 0x5, id, &[0x88]));
                    answered.insert(id);
                }
                theirs.write_all(&out).await.expect("late answers");
            }
        }
        if late == Late::AfterAll {
            // Fails on a GOAWAY.
            frames_until(&mut theirs, &mut buf, |kind, _, id| {
                second += usize::from(kind == 0x3 && answered.contains(&id));
                second > 1024
            })
            .await;
        }
        // The next call is answered on the same connection.
        let next = call();
        tokio::pin!(next);
        let mut id = 0;
        {
            let reading = frames_until(&mut theirs, &mut buf, |kind, _, i| {
                second += usize::from(kind == 0x3 && answered.contains(&i));
                id = i;
                kind == 0x1
            });
            tokio::pin!(reading);
            tokio::select! {
                () = &mut reading => {}
                r = &mut next => panic!("the call ended unanswered: {:?}", r.err()),
            }
        }
        theirs
            .write_all(&frame(0x1, 0x5, id, &[0x88]))
            .await
            .expect("answer");
        let (resp, _) = next.await.expect("answered");
        assert_eq!(resp.status(), http::StatusCode::OK);
        second
    }

    #[tokio::test]
    async fn answers_that_arrive_after_the_calls_were_given_up_are_dropped_quietly() {
        // Calls given up in bursts (a deadline, hedges, callers gone) are
        // reset; the peer's answers, already on their way, then arrive for
        // streams this end reset and still remembers: dropped, with no
        // second reset (with h2's memory of 50, most would draw one). The
        // connection stays up for the calls that follow.
        assert_eq!(late_answers_then_a_call(9, Late::EachBurst).await, 0);
    }

    #[tokio::test]
    async fn answers_for_resets_long_forgotten_do_not_end_the_connection() {
        // Over a connection's life more calls are given up than any memory
        // of resets holds: 3,400 here, all answered after the last was
        // given up, past the 2,048 remembered, so that at least 1,352
        // answers come for streams this end has forgotten. Each draws a
        // STREAM_CLOSED reset that h2 counts, and with its default budget
        // (1,024 in a connection's life, never refilled) it would end the
        // connection, failing every call on it.
        let second = late_answers_then_a_call(17, Late::AfterAll).await;
        assert!(
            second > 1024,
            "only {second} answers found their stream forgotten"
        );
    }

    /// Hands out a new pipe on every connect; the other ends go to the
    /// test.
    struct Pipes(mpsc::UnboundedSender<DuplexStream>);

    impl Connector for Pipes {
        fn connect<'a>(&'a self, _: &'a ConnectTarget) -> ConnectFuture<'a> {
            let (ours, theirs) = tokio::io::duplex(1 << 16);
            let sent = self.0.send(theirs);
            Box::pin(async move {
                sent.map(|()| Box::new(ours) as BoxedIo)
                    .map_err(|_| ProxyError::Connect {
                        addr: "peer:1".into(),
                        source: std::io::Error::other("the test ended"),
                    })
            })
        }
    }

    /// What [`peer_holding_streams`] saw on a connection (numbered in the
    /// order they came).
    #[derive(Debug, PartialEq)]
    enum Seen {
        Stream(usize),
        Ended(usize),
    }

    /// A peer allowing `max` streams a connection, answering each with
    /// headers and keeping it open (a server stream with nothing to say
    /// yet) until the test ends. Tells `accepted` of each stream and of
    /// each connection's end.
    async fn peer_holding_streams(
        mut pipes: mpsc::UnboundedReceiver<DuplexStream>,
        max: u32,
        accepted: mpsc::UnboundedSender<Seen>,
    ) {
        let mut n = 0;
        while let Some(pipe) = pipes.recv().await {
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let mut conn = h2::server::Builder::new()
                    .max_concurrent_streams(max)
                    .handshake::<_, Bytes>(pipe)
                    .await
                    .expect("handshake");
                let mut held = Vec::new();
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let send = respond
                        .send_response(http::Response::new(()), false)
                        .expect("respond");
                    held.push(send);
                    let _ = accepted.send(Seen::Stream(n));
                }
                let _ = accepted.send(Seen::Ended(n));
            });
            n += 1;
        }
    }

    /// A call to the feed, answered (its headers) within 10 s of paused
    /// time, or `None`.
    async fn feed(client: &H2Client) -> Option<H2Body> {
        let req = http::Request::post("http://peer/feed")
            .body(crate::body::full(Bytes::from_static(b"hello")))
            .expect("request");
        let answered = tokio::time::timeout(Duration::from_secs(10), client.send(req, None));
        let (resp, _) = answered.await.ok()?.expect("an answer");
        Some(resp.into_body())
    }

    #[tokio::test(start_paused = true)]
    async fn calls_past_a_connections_stream_limit_open_another_connection() {
        let (pipes, theirs) = mpsc::unbounded_channel();
        let client = H2Client::new(pipe_target(), Arc::new(Pipes(pipes)));
        let (accepted, mut on) = mpsc::unbounded_channel();
        tokio::spawn(peer_holding_streams(theirs, 2, accepted));
        // Five long-lived calls, two streams a connection: each is answered
        // while the others stay open, on three connections.
        let mut bodies = Vec::new();
        for n in 0..5 {
            let body = feed(&client).await;
            bodies.push(body.unwrap_or_else(|| panic!("call {n} waited for a stream")));
        }
        let mut per_connection = [0; 3];
        for _ in 0..5 {
            match on.recv().await.expect("accepted") {
                Seen::Stream(n) => per_connection[n] += 1,
                ended => panic!("{ended:?}"),
            }
        }
        assert_eq!(per_connection, [2, 2, 1]);
        assert_eq!(client.connections(), 3);
        // A stream that ends frees its place: the next call takes it, on
        // the connection it was on, and no fourth connection opens.
        bodies.swap_remove(0);
        let sixth = feed(&client).await.expect("the sixth call answered");
        assert_eq!(on.recv().await, Some(Seen::Stream(0)));
        assert_eq!(client.connections(), 3);
        // Once the calls end, the extra connections go, after two idle
        // checks; the first stays, and takes the next call.
        drop((bodies, sixth));
        tokio::time::sleep(EXTRA_IDLE * 2 + Duration::from_secs(1)).await;
        assert_eq!(client.connections(), 1);
        let mut ended = vec![on.recv().await, on.recv().await];
        ended.sort_by_key(|e| format!("{e:?}"));
        assert_eq!(ended, [Some(Seen::Ended(1)), Some(Seen::Ended(2))]);
        let _next = feed(&client).await.expect("the next call answered");
        assert_eq!(on.recv().await, Some(Seen::Stream(0)));
        assert_eq!(client.connections(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn connections_to_one_peer_are_bounded() {
        let (pipes, theirs) = mpsc::unbounded_channel();
        let client = H2Client::new(pipe_target(), Arc::new(Pipes(pipes)));
        let (accepted, _on) = mpsc::unbounded_channel();
        tokio::spawn(peer_holding_streams(theirs, 1, accepted));
        let mut bodies = Vec::new();
        for n in 0..MAX_CONNECTIONS {
            let body = feed(&client).await;
            bodies.push(body.unwrap_or_else(|| panic!("call {n} waited for a stream")));
        }
        assert_eq!(client.connections(), MAX_CONNECTIONS);
        // One stream a connection, and as many connections as may be: the
        // next call waits for a stream.
        assert!(
            feed(&client).await.is_none(),
            "a call past every stream was answered"
        );
        assert_eq!(client.connections(), MAX_CONNECTIONS);
        bodies.pop();
        assert!(feed(&client).await.is_some(), "a freed stream went unused");
    }
}
