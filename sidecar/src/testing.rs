//! Test helpers shared by more than one module's tests.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};

/// A pipe's end that counts the writes made to it: each is a `writev` on
/// a socket, so a test can say how many a call costs.
pub struct Counted {
    io: DuplexStream,
    writes: Arc<AtomicUsize>,
}

impl Counted {
    /// `io`, and the count of its writes.
    pub fn new(io: DuplexStream) -> (Self, Arc<AtomicUsize>) {
        let writes = Arc::new(AtomicUsize::new(0));
        let counted = Counted {
            io,
            writes: writes.clone(),
        };
        (counted, writes)
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = ready!(Pin::new(&mut self.io).poll_write(cx, buf));
        self.writes.fetch_add(1, Ordering::Relaxed);
        Poll::Ready(written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// One HTTP/2 frame, as a peer writes it by hand.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The kinds of the whole HTTP/2 frames in `bytes`, in order.
pub fn frame_kinds(mut bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        if bytes.len() < 9 + len {
            break;
        }
        kinds.push(bytes[3]);
        bytes = &bytes[9 + len..];
    }
    kinds
}

/// Reads whole HTTP/2 frames from `io` (skipping a client's preface),
/// buffering in `buf`, and hands each one's (kind, flags, stream) to
/// `done` until it says stop; fails on a GOAWAY or a closed pipe.
pub async fn frames_until(
    io: &mut DuplexStream,
    buf: &mut Vec<u8>,
    mut done: impl FnMut(u8, u8, u32) -> bool,
) {
    use tokio::io::AsyncReadExt;
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    loop {
        if buf.starts_with(PREFACE) {
            buf.drain(..PREFACE.len());
        }
        while buf.len() >= 9 && !PREFACE.starts_with(&buf[..9]) {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            assert_ne!(
                kind,
                0x7,
                "the peer sent GOAWAY: {:?}",
                String::from_utf8_lossy(&buf[17..9 + len])
            );
            buf.drain(..9 + len);
            if done(kind, flags, id) {
                return;
            }
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = io.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the peer closed the connection");
        buf.extend_from_slice(&chunk[..n]);
    }
}
