//! Sending one input and classifying what became of it: answered (the
//! server replied or closed cleanly), reset (an I/O or protocol error,
//! which is how servers refuse junk), or timed out (the server neither
//! answered nor closed in time: the failure this driver looks for).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::seeds::{Rng, UNARY, echo_body};

/// What became of one input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered,
    Reset,
    TimedOut,
}

/// Writes `bytes` on a new connection (inside TLS when `tls` is given),
/// half-closes, and reads until the server closes.
pub async fn raw(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
    bytes: &[u8],
    timeout: Duration,
) -> Outcome {
    let run = async {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        match tls {
            None => exchange(tcp, bytes).await,
            Some(c) => {
                let name = rustls::pki_types::ServerName::try_from("echo")
                    .map_err(std::io::Error::other)?;
                exchange(c.connect(name, tcp).await?, bytes).await
            }
        }
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Outcome::Answered,
        Ok(Err(_)) => Outcome::Reset,
        Err(_) => Outcome::TimedOut,
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    bytes: &[u8],
) -> std::io::Result<()> {
    // A server may close before reading everything: that is an answer.
    if s.write_all(bytes).await.is_ok() {
        let _ = s.shutdown().await;
    }
    let mut buf = vec![0u8; 16 * 1024];
    while s.read(&mut buf).await? > 0 {}
    Ok(())
}

/// How long an HTTP/1 input waits for a whole answer before it
/// half-closes (see [`http1`]).
const HTTP1_ANSWER_WAIT: Duration = Duration::from_millis(200);

/// Writes an HTTP/1 request on a new connection and reads one whole
/// answer (its head, then its `Content-Length` or chunked body). A server
/// that answers nothing within [`HTTP1_ANSWER_WAIT`] (the request was cut
/// short, or asks to keep the connection) is half-closed and read to its
/// end, as [`raw`] does. Half-closing at once, as `raw` does, would make
/// hyper drop a complete request's answer on the end of its input, and the
/// code that answers it would go untried. Gives the final answer's status
/// when the exchange ended well.
pub async fn http1(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> (Outcome, Option<u16>) {
    let (outcome, got) = http1_answer(addr, bytes, timeout).await;
    match outcome {
        Outcome::Answered => (outcome, status(&got)),
        _ => (outcome, None),
    }
}

/// The same, giving the bytes the server wrote however it ended.
pub async fn http1_answer(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> (Outcome, Vec<u8>) {
    let mut got = Vec::new();
    let run = async {
        let mut s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        if s.write_all(bytes).await.is_err() {
            // Closed before reading everything: an answer.
            return Ok(());
        }
        let mut buf = vec![0u8; 16 * 1024];
        let wait = tokio::time::sleep(HTTP1_ANSWER_WAIT);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                n = s.read(&mut buf) => {
                    let n = n?;
                    if n == 0 {
                        return Ok(());
                    }
                    got.extend_from_slice(&buf[..n]);
                    if whole_answer(&got) {
                        return Ok(());
                    }
                }
                () = &mut wait => break,
            }
        }
        let _ = s.shutdown().await;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return std::io::Result::Ok(());
            }
            got.extend_from_slice(&buf[..n]);
        }
    };
    let outcome = match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Outcome::Answered,
        Ok(Err(_)) => Outcome::Reset,
        Err(_) => Outcome::TimedOut,
    };
    (outcome, got)
}

/// The status of the answer that `got` begins with, if it has a head;
/// past interim (1xx) answers, the final one's.
fn status(got: &[u8]) -> Option<u16> {
    let line = got.split(|b| *b == b'\n').next()?;
    let code = line.strip_prefix(b"HTTP/1.1 ".as_slice())?.get(..3)?;
    let code: u16 = std::str::from_utf8(code).ok()?.parse().ok()?;
    match (code, head_end(got)) {
        (100..=199, Some(end)) => status(&got[end..]),
        _ => Some(code),
    }
}

/// Where the first head in `got` ends (past its blank line).
fn head_end(got: &[u8]) -> Option<usize> {
    got.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Whether `got` holds a whole HTTP/1 answer: past any interim (1xx) ones,
/// a head and, by its `Content-Length` or chunked framing, its whole body.
/// (A body framed by the end of the connection is whole only when the
/// server closes.)
fn whole_answer(got: &[u8]) -> bool {
    let Some(body_at) = head_end(got) else {
        return false;
    };
    let end = body_at - 4;
    if got.starts_with(b"HTTP/1.1 1") {
        return whole_answer(&got[body_at..]);
    }
    let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
    let body = &got[body_at..];
    if head
        .lines()
        .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
    {
        return body.ends_with(b"0\r\n\r\n");
    }
    let length = head.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<usize>().ok())
    });
    match length {
        Some(n) => body.len() >= n,
        // 204 and 304 have no body.
        None => matches!(status(got), Some(204 | 304)),
    }
}

/// An HTTP/2 connection for requests, over TCP or mutual TLS.
pub async fn h2_connect(
    addr: SocketAddr,
    tls: Option<&TlsConnector>,
) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let exec = TokioExecutor::new();
    let send = match tls {
        None => {
            let (send, conn) =
                hyper::client::conn::http2::handshake(exec, TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            send
        }
        Some(c) => {
            let name = rustls::pki_types::ServerName::try_from("echo")?;
            let io = TokioIo::new(c.connect(name, tcp).await?);
            let (send, conn) = hyper::client::conn::http2::handshake(exec, io).await?;
            tokio::spawn(conn);
            send
        }
    };
    Ok(send)
}

/// Headers a gRPC client sends, whose values are mutated.
const HEADERS: &[(&str, &str)] = &[
    ("grpc-timeout", "1S"),
    (
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    ),
    ("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
    ("grpc-encoding", "identity"),
    ("grpc-accept-encoding", "identity,gzip"),
    ("content-type", "application/grpc+proto"),
    ("x-request-id", "4bf92f35"),
    ("user-agent", "grpc-rust/0.14"),
    ("grpc-status", "0"),
    ("authorization", "Bearer x"),
];

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A gRPC call to `authority` with mutated path, headers and body; parts a
/// client could not even send (an invalid URI or header) stay valid.
pub fn request(rng: &mut Rng, authority: &str) -> http::Request<Full<Bytes>> {
    let path = if rng.below(4) == 0 {
        lossy(&rng.mutate(UNARY.as_bytes(), 3))
    } else {
        UNARY.to_string()
    };
    let auth = if rng.below(6) == 0 {
        lossy(&rng.mutate(authority.as_bytes(), 2))
    } else {
        authority.to_string()
    };
    let uri: http::Uri = format!("http://{auth}{path}")
        .parse()
        .or_else(|_| format!("http://{authority}{UNARY}").parse())
        .unwrap_or_else(|_| http::Uri::from_static("http://echo/weft.test.v1.Echo/Unary"));
    let mut req = http::Request::post(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for _ in 0..rng.below(4) {
        let (name, value) = HEADERS[rng.below(HEADERS.len())];
        let value = if rng.below(4) == 0 {
            value.as_bytes().to_vec()
        } else {
            rng.mutate(value.as_bytes(), 4)
        };
        if let Ok(v) = http::HeaderValue::from_bytes(&value) {
            req = req.header(name, v);
        }
    }
    let body = echo_body("fuzz");
    let body = if rng.below(2) == 0 {
        body
    } else {
        rng.mutate(&body, 4)
    };
    req.body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| http::Request::new(Full::new(Bytes::new())))
}

/// Sends one request on `send`, reading the whole response.
pub async fn call(
    send: &mut SendRequest<Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
    timeout: Duration,
) -> Outcome {
    let run = async {
        send.ready().await?;
        let resp = send.send_request(req).await?;
        resp.into_body().collect().await?;
        anyhow::Ok(())
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Outcome::Answered,
        Ok(Err(_)) => Outcome::Reset,
        Err(_) => Outcome::TimedOut,
    }
}

/// A codec that passes encoded messages through as they are: a discovery
/// stream can then carry bytes no prost type would produce.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// One discovery stream carrying `messages`, read until the control plane
/// ends it (it does when the sidecar's side ends, or at a bad message).
pub async fn discovery(
    channel: &tonic::transport::Channel,
    messages: Vec<Vec<u8>>,
    timeout: Duration,
) -> Outcome {
    let run = async {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await?;
        let path = http::uri::PathAndQuery::from_static("/weft.v1.Discovery/Stream");
        let req = tonic::Request::new(tokio_stream::iter(messages));
        let mut updates = grpc.streaming(req, path, RawCodec).await?.into_inner();
        while updates.message().await?.is_some() {}
        anyhow::Ok(())
    };
    match tokio::time::timeout(timeout, run).await {
        Ok(Ok(())) => Outcome::Answered,
        Ok(Err(_)) => Outcome::Reset,
        Err(_) => Outcome::TimedOut,
    }
}

/// A TLS client presenting `chain`/`key` that expects the server to be
/// `expected` (a mesh peer).
pub fn mesh_tls(
    roots: Arc<rustls::RootCertStore>,
    expected: weft_proto::identity::SpiffeId,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<TlsConnector> {
    let verifier = weft_proto::identity::SpiffeServerVerifier::new(roots, expected);
    let mut cfg = rustls::ClientConfig::builder_with_provider(weft_proto::identity::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsConnector::from(Arc::new(cfg)))
}

#[cfg(test)]
mod tests {
    use super::{status, whole_answer};

    #[test]
    fn an_answer_is_whole_by_its_framing() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n";
        assert!(!whole_answer(&head[..20]), "no head yet");
        assert!(!whole_answer(&[head.as_slice(), b"abc"].concat()));
        assert!(whole_answer(&[head.as_slice(), b"abcde"].concat()));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n";
        assert!(!whole_answer(chunked));
        assert!(whole_answer(&[chunked.as_slice(), b"0\r\n\r\n"].concat()));
        assert!(whole_answer(
            b"HTTP/1.1 204 No Content\r\nvary: origin\r\n\r\n"
        ));
        assert!(!whole_answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"));
        assert_eq!(status(head), Some(200));
        let interim = b"HTTP/1.1 100 Continue\r\n\r\n";
        assert!(!whole_answer(interim), "the final answer is still to come");
        let both = [interim.as_slice(), head.as_slice(), b"abcde"].concat();
        assert!(whole_answer(&both));
        assert_eq!(status(&both), Some(200));
        assert_eq!(status(b"HTTP/1.0 200"), None);
    }
}
