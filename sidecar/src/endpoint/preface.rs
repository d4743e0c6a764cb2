//! Knowing when an HTTP/2 peer's SETTINGS have come. A server's preface
//! is its SETTINGS frame, sent first (RFC 9113 §3.4); until h2 has read
//! it, h2 lets this end open only `INITIAL_MAX_SEND_STREAMS`, a guess and
//! not the peer's limit. The pool of connections to a peer
//! (`endpoint::h2`) opens another connection when one is at the peer's
//! limit, so it must know that limit before it hands a connection out: a
//! burst of long-lived calls on a new connection would otherwise be put
//! past the peer's limit, where h2 holds them until a stream ends.
//!
//! [`Preface`] wraps the connection's IO and tells the moment the whole
//! first frame has been read. h2 applies a frame in the same poll that
//! reads it, so on the sidecar's one thread, a task told is woken after
//! h2's limit has become the peer's.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use super::connector::BoxedIo;

/// An HTTP/2 frame's header: 24-bit length, type, flags, stream id.
const FRAME_HEADER: usize = 9;

/// The connection's IO, counting the bytes of the peer's first frame.
pub(crate) struct Preface {
    io: BoxedIo,
    /// Bytes of the first frame read so far, its length's three bytes
    /// among them, until it is whole.
    read: usize,
    length: [u8; 3],
    /// Told when the first frame is whole; then gone.
    seen: Option<oneshot::Sender<()>>,
}

impl Preface {
    /// The IO, and what is told once the peer's first frame is read
    /// whole (or dropped untold, when the connection ends first).
    pub(crate) fn new(io: BoxedIo) -> (Self, oneshot::Receiver<()>) {
        let (seen, told) = oneshot::channel();
        let io = Preface {
            io,
            read: 0,
            length: [0; 3],
            seen: Some(seen),
        };
        (io, told)
    }

    /// Counts `bytes`, just read, towards the first frame.
    fn count(&mut self, bytes: &[u8]) {
        for (at, &b) in (self.read..3).zip(bytes) {
            self.length[at] = b;
        }
        self.read += bytes.len();
        if self.read >= 3 {
            let [a, b, c] = self.length;
            let whole = FRAME_HEADER + u32::from_be_bytes([0, a, b, c]) as usize;
            if self.read >= whole
                && let Some(seen) = self.seen.take()
            {
                let _ = seen.send(());
            }
        }
    }
}

impl AsyncRead for Preface {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if this.seen.is_some() && buf.filled().len() > before {
            let fresh = &buf.filled()[before..];
            this.count(fresh);
        }
        polled
    }
}

impl AsyncWrite for Preface {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
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

    /// The peer's first frame (a SETTINGS with one setting, 6 bytes of
    /// payload), then a second, written in pieces of `piece` bytes: told
    /// exactly when the first frame's last byte is read.
    async fn seen_after_each_read(piece: usize) -> Vec<(usize, bool)> {
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let (mut io, mut told) = Preface::new(Box::new(ours));
        let mut seen = false;
        let mut bytes = vec![0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 2];
        bytes.extend([0, 0, 0, 4, 1, 0, 0, 0, 0]);
        let mut read = 0;
        let mut log = Vec::new();
        for chunk in bytes.chunks(piece) {
            theirs.write_all(chunk).await.expect("write");
            let mut buf = vec![0; chunk.len()];
            io.read_exact(&mut buf).await.expect("read");
            read += chunk.len();
            seen |= told.try_recv().is_ok();
            log.push((read, seen));
        }
        log
    }

    #[tokio::test]
    async fn the_first_frame_is_told_when_its_last_byte_is_read() {
        for piece in [1, 2, 4, 5, 15, 24] {
            for (read, seen) in seen_after_each_read(piece).await {
                assert_eq!(seen, read >= 15, "{piece}-byte reads, {read} read");
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
