//! Knowing when an HTTP/2 peer's SETTINGS are in force. A server's
//! preface is its SETTINGS frame (RFC 9113 §3.4); until h2 has applied
//! it, h2 lets this end open only `INITIAL_MAX_SEND_STREAMS`, a guess and
//! not the peer's limit. The pool of connections to a peer
//! (`endpoint::h2`) opens another connection when one is at the peer's
//! limit, so it must know that limit before it hands a connection out: a
//! burst of long-lived calls on a new connection would otherwise be put
//! past the peer's limit, where h2 holds them until a stream ends.
//!
//! [`Preface`] wraps the connection's IO and tells the moment this end
//! writes its acknowledgement of the peer's SETTINGS (a SETTINGS frame
//! with the ACK flag). h2 applies the peer's settings as it queues that
//! acknowledgement, before it writes it, so once told, on any number of
//! threads, h2's limit is the peer's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::connector::BoxedIo;

/// What a client writes before its first frame (RFC 9113 §3.4).
const CLIENT_PREFACE: usize = 24;
/// An HTTP/2 frame's header: 24-bit length, type, flags, stream id.
const FRAME_HEADER: usize = 9;
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;

/// The connection's IO, reading the frames this end writes until the
/// acknowledgement of the peer's SETTINGS has gone out.
pub(crate) struct Preface {
    io: BoxedIo,
    frames: Frames,
    /// Told when the acknowledgement is written; then gone.
    seen: Option<oneshot::Sender<()>>,
}

impl Preface {
    /// The IO, and what is told once this end has acknowledged the peer's
    /// SETTINGS (or dropped untold, when the connection ends first).
    pub(crate) fn new(io: BoxedIo) -> (Self, oneshot::Receiver<()>) {
        let (seen, told) = oneshot::channel();
        let io = Preface {
            io,
            frames: Frames::default(),
            seen: Some(seen),
        };
        (io, told)
    }

    /// Reads `written`, the bytes just written, if still watching.
    fn watch<'a>(&mut self, written: impl IntoIterator<Item = &'a [u8]>) {
        if self.seen.is_none() {
            return;
        }
        if written.into_iter().any(|bytes| self.frames.acked_in(bytes))
            && let Some(seen) = self.seen.take()
        {
            let _ = seen.send(());
        }
    }
}

/// Where the written bytes are: in the client's preface or a frame's
/// payload (`skip` more bytes of them), or in a frame's header.
struct Frames {
    skip: usize,
    head: [u8; FRAME_HEADER],
    have: usize,
}

impl Default for Frames {
    fn default() -> Self {
        Frames {
            skip: CLIENT_PREFACE,
            head: [0; FRAME_HEADER],
            have: 0,
        }
    }
}

impl Frames {
    /// Whether `bytes`, the next written, hold the header of a SETTINGS
    /// acknowledgement.
    fn acked_in(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (FRAME_HEADER - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == FRAME_HEADER {
                self.have = 0;
                let [a, b, c, kind, flags, ..] = self.head;
                if kind == SETTINGS && flags & ACK != 0 {
                    return true;
                }
                self.skip = u32::from_be_bytes([0, a, b, c]) as usize;
            }
        }
        false
    }
}

/// The first `n` bytes of `bufs`, slice by slice (empty ones among them).
fn first<'a>(bufs: &'a [io::IoSlice<'a>], n: usize) -> impl Iterator<Item = &'a [u8]> {
    bufs.iter().scan(n, |left, b| {
        if *left == 0 {
            return None;
        }
        let take = b.len().min(*left);
        *left -= take;
        Some(&b[..take])
    })
}

impl AsyncRead for Preface {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Preface {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.watch([&buf[..n]]);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            this.watch(first(bufs, n));
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::testing::frame;

    /// What a client writes first: its preface, its SETTINGS (one
    /// setting), a WINDOW_UPDATE; then the acknowledgement of the peer's
    /// SETTINGS and a HEADERS. Returns where the acknowledgement ends.
    fn client_writes() -> (Vec<u8>, usize) {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]));
        bytes.extend(frame(0x8, 0, 0, &[0, 0, 0x10, 0]));
        // A SETTINGS ACK's header inside a payload is not one.
        bytes.extend(frame(0x0, 0, 1, &[0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0]));
        bytes.extend(frame(SETTINGS, ACK, 0, &[]));
        let acked = bytes.len();
        bytes.extend(frame(0x1, 0x5, 1, &[0x82]));
        (bytes, acked)
    }

    /// Writes `client_writes` in pieces of `piece` bytes (plain or
    /// vectored, two slices a write): whether told after each.
    async fn told_after_each_write(piece: usize, vectored: bool) -> Vec<(usize, bool)> {
        let (ours, mut theirs) = tokio::io::duplex(4096);
        let (mut io, mut told) = Preface::new(Box::new(ours));
        let (bytes, _) = client_writes();
        let mut written = 0;
        let mut seen = false;
        let mut log = Vec::new();
        for chunk in bytes.chunks(piece) {
            if vectored {
                let (a, b) = chunk.split_at(chunk.len() / 2);
                let mut done = 0;
                while done < chunk.len() {
                    let (a, b) = (&a[done.min(a.len())..], &b[done.saturating_sub(a.len())..]);
                    let bufs = [io::IoSlice::new(a), io::IoSlice::new(b)];
                    done += io.write_vectored(&bufs).await.expect("write");
                }
            } else {
                io.write_all(chunk).await.expect("write");
            }
            written += chunk.len();
            seen |= told.try_recv().is_ok();
            log.push((written, seen));
        }
        let mut echoed = vec![0; bytes.len()];
        theirs.read_exact(&mut echoed).await.expect("read");
        assert_eq!(echoed, bytes, "the bytes went through unchanged");
        log
    }

    #[tokio::test]
    async fn told_once_the_settings_acknowledgement_is_written() {
        let (_, acked) = client_writes();
        for piece in [1, 2, 5, 9, 24, 50, 200] {
            for vectored in [false, true] {
                for (written, seen) in told_after_each_write(piece, vectored).await {
                    assert_eq!(
                        seen,
                        written >= acked,
                        "{piece}-byte writes (vectored: {vectored}), {written} written"
                    );
                }
            }
        }
    }

    #[tokio::test]
    async fn a_connection_that_ends_first_is_told_nothing() {
        let (ours, theirs) = tokio::io::duplex(1024);
        let (mut io, told) = Preface::new(Box::new(ours));
        drop(theirs);
        let mut buf = Vec::new();
        io.read_to_end(&mut buf).await.expect("read");
        drop(io);
        assert!(told.await.is_err());
    }
}
