//! Protocol detection from a connection's first bytes: the HTTP/2 preface,
//! an HTTP/1 request line, or anything else (opaque TCP). Bytes read while
//! deciding are replayed to whoever handles the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http2,
    Http1,
    /// A TLS ClientHello (a handshake record).
    Tls,
    Tcp,
}

/// Decides from the bytes so far; `None` means more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    // TLS record type 22 (handshake): no HTTP method starts with it.
    if buf[0] == 0x16 {
        return Some(Detected::Tls);
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    let mut could_be_h1 = false;
    for m in METHODS {
        let k = buf.len().min(m.len());
        if buf[..k] == m[..k] {
            if k == m.len() {
                return Some(Detected::Http1);
            }
            could_be_h1 = true;
        }
    }
    if could_be_h1 {
        None
    } else {
        Some(Detected::Tcp)
    }
}

/// Reads until the protocol is known, the peer stops sending for `timeout`
/// (then it is opaque TCP: server-speaks-first protocols send nothing), or
/// the connection closes (`Ok(None)`).
pub async fn detect<T: AsyncRead + Unpin>(
    io: &mut T,
    timeout: Duration,
) -> io::Result<Option<(Detected, Bytes)>> {
    let mut buf = BytesMut::with_capacity(64);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(d) = classify(&buf) {
            return Ok(Some((d, buf.freeze())));
        }
        if buf.len() >= 64 {
            return Ok(Some((Detected::Tcp, buf.freeze())));
        }
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) => return Ok(Some((Detected::Tcp, buf.freeze()))),
            Ok(Ok(0)) if buf.is_empty() => return Ok(None),
            Ok(Ok(0)) => return Ok(Some((Detected::Tcp, buf.freeze()))),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// A stream whose first bytes come from a buffer already read.
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"POST /x"), Some(Detected::Http1));
        assert_eq!(classify(b"P"), None); // POST, PUT, PATCH or PRI
        assert_eq!(classify(b"AMQP\x00\x00\x09\x01"), Some(Detected::Tcp));
        assert_eq!(classify(b"\x16\x03\x01"), Some(Detected::Tls)); // a TLS ClientHello
        assert_eq!(classify(b"GETX"), Some(Detected::Tcp));
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peers_are_tcp_after_the_timeout() {
        let (mut a, _b) = tokio::io::duplex(64);
        let r = detect(&mut a, Duration::from_millis(100))
            .await
            .expect("io");
        assert_eq!(r.map(|x| x.0), Some(Detected::Tcp));
    }

    #[tokio::test]
    async fn replays_what_it_read() {
        let (mut a, mut b) = tokio::io::duplex(64);
        b.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        let (d, prefix) = detect(&mut a, Duration::from_secs(5))
            .await
            .expect("io")
            .expect("some");
        assert_eq!(d, Detected::Http1);
        let mut p = Prefixed::new(prefix, a);
        drop(b);
        let mut all = Vec::new();
        p.read_to_end(&mut all).await.expect("read");
        assert!(all.starts_with(b"GET / HTTP/1.1"));
    }
}
