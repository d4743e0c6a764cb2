//! gRPC-Web at the gateway: browsers' gRPC (the gRPC-Web protocol,
//! github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md) turned into gRPC
//! for the mesh, and the answer back.
//!
//! A request with `application/grpc-web[+fmt]` (binary) or
//! `application/grpc-web-text[+fmt]` (base64) becomes `application/grpc[+fmt]`
//! with `te: trailers`; its messages are the same length-prefixed frames,
//! only base64-decoded in text mode. The response's HTTP/2 trailers, which
//! a browser cannot read, become one more frame in the body (flag `0x80`,
//! then `name: value\r\n` lines); a trailers-only response keeps its status
//! in the headers. Both directions are body wrappers that pass each chunk
//! on as it comes, so server streaming streams.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};

use crate::body::BoxError;

/// How a gRPC-Web client's bodies are encoded; its response is encoded the
/// same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/grpc-web`: frames as gRPC sends them.
    Binary,
    /// `application/grpc-web-text`: the frames in base64.
    Text,
}

/// A gRPC-Web body that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum GrpcWebError {
    #[error("a grpc-web-text body is not base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("a grpc-web-text body ends in the middle of a base64 group")]
    Truncated,
}

/// The encoding of a gRPC-Web request and what follows the media type
/// (`+proto`, or nothing), or `None` for anything else.
fn parse(content_type: &HeaderValue) -> Option<(Encoding, &str)> {
    let media = content_type.to_str().ok()?.split(';').next()?.trim();
    let rest = strip_prefix_ignore_case(media, "application/grpc-web")?;
    let (encoding, fmt) = match strip_prefix_ignore_case(rest, "-text") {
        Some(fmt) => (Encoding::Text, fmt),
        None => (Encoding::Binary, rest),
    };
    (fmt.is_empty() || fmt.starts_with('+')).then_some((encoding, fmt))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Whether `headers` are those of a gRPC-Web request, and in which encoding.
pub fn detect(headers: &HeaderMap) -> Option<Encoding> {
    headers.get(CONTENT_TYPE).and_then(parse).map(|(e, _)| e)
}

/// The gRPC request for a gRPC-Web one in `encoding` (what [`detect`]
/// said of it; its response goes back in the same encoding).
pub fn into_grpc_request<B>(req: Request<B>, encoding: Encoding) -> Request<WebRequestBody<B>> {
    let fmt = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(parse)
        .map_or("", |(_, fmt)| fmt);
    let content_type = HeaderValue::from_str(&format!("application/grpc{fmt}"))
        .unwrap_or(HeaderValue::from_static("application/grpc"));
    let (mut parts, body) = req.into_parts();
    parts.headers.insert(CONTENT_TYPE, content_type);
    parts
        .headers
        .insert(TE, HeaderValue::from_static("trailers"));
    // Decoding changes the length; gRPC over HTTP/2 does not need one.
    parts.headers.remove(CONTENT_LENGTH);
    let body = WebRequestBody {
        inner: body,
        text: (encoding == Encoding::Text).then(Base64Decoder::default),
    };
    Request::from_parts(parts, body)
}

/// The gRPC-Web response for a gRPC one, in `encoding`. A response that is
/// not gRPC (a plain HTTP error on the way) passes unchanged.
pub fn into_web_response<B>(resp: Response<B>, encoding: Encoding) -> Response<WebResponseBody<B>> {
    let (mut parts, body) = resp.into_parts();
    let fmt = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| strip_prefix_ignore_case(v, "application/grpc"))
        .filter(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
        .map(str::to_string);
    let web = fmt.map(|fmt| {
        let media = match encoding {
            Encoding::Binary => "application/grpc-web",
            Encoding::Text => "application/grpc-web-text",
        };
        if let Ok(v) = HeaderValue::from_str(&format!("{media}{fmt}")) {
            parts.headers.insert(CONTENT_TYPE, v);
        }
        parts.headers.remove(CONTENT_LENGTH);
        encoding
    });
    let body = WebResponseBody {
        inner: body,
        web,
        done: false,
    };
    Response::from_parts(parts, body)
}

/// The trailers as gRPC-Web sends them: a frame with flag `0x80`, a
/// big-endian length, and one `name: value\r\n` line per value.
pub fn trailer_frame(trailers: &HeaderMap) -> Bytes {
    let len: usize = trailers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0x80);
    out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    for (name, value) in trailers {
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    out.freeze()
}

/// Base64 that arrives in chunks cut anywhere: whole 4-character groups are
/// decoded, the rest waits for the next chunk. Padding may end any group,
/// since clients send each message encoded on its own, one after another.
#[derive(Debug, Default)]
struct Base64Decoder {
    carry: Vec<u8>,
}

impl Base64Decoder {
    fn feed(&mut self, input: &[u8]) -> Result<Bytes, GrpcWebError> {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend(input.iter().filter(|b| !b.is_ascii_whitespace()));
        let whole = buf.len() / 4 * 4;
        let mut out = Vec::with_capacity(whole / 4 * 3);
        // Runs of groups, each ending at a padded group (or the end).
        let mut start = 0;
        for g in (0..whole).step_by(4) {
            if buf[g + 3] == b'=' {
                STANDARD.decode_vec(&buf[start..g + 4], &mut out)?;
                start = g + 4;
            }
        }
        if start < whole {
            STANDARD.decode_vec(&buf[start..whole], &mut out)?;
        }
        self.carry = buf.split_off(whole);
        Ok(out.into())
    }

    fn finish(&self) -> Result<(), GrpcWebError> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            Err(GrpcWebError::Truncated)
        }
    }
}

pin_project_lite::pin_project! {
    /// A gRPC-Web request body as gRPC: the same bytes, or in text mode
    /// their base64 decoded.
    pub struct WebRequestBody<B> {
        #[pin]
        inner: B,
        // `None`: binary, passed through.
        text: Option<Base64Decoder>,
    }
}

impl<B> Body for WebRequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        loop {
            let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(f)) => f,
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => {
                    let end = this.text.as_ref().map_or(Ok(()), Base64Decoder::finish);
                    return Poll::Ready(end.err().map(|e| Err(e.into())));
                }
            };
            let Some(decoder) = this.text.as_mut() else {
                return Poll::Ready(Some(Ok(frame)));
            };
            match frame.into_data() {
                Ok(data) => match decoder.feed(&data) {
                    // Less than a group: wait for more.
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                },
                Err(other) => return Poll::Ready(Some(Ok(other))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A text body with bytes left still owes the error.
        self.inner.is_end_stream() && self.text.as_ref().is_none_or(|d| d.carry.is_empty())
    }

    fn size_hint(&self) -> SizeHint {
        match self.text {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A gRPC response body as gRPC-Web: the messages as they come, then
    /// the trailers as a frame; each chunk base64-encoded (and padded) on
    /// its own in text mode, so nothing waits for the next chunk.
    pub struct WebResponseBody<B> {
        #[pin]
        inner: B,
        // `None`: not a gRPC response, passed through.
        web: Option<Encoding>,
        done: bool,
    }
}

fn encode(encoding: Encoding, data: Bytes) -> Bytes {
    match encoding {
        Encoding::Binary => data,
        Encoding::Text => STANDARD.encode(&data).into(),
    }
}

impl<B> Body for WebResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        loop {
            let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                Some(Ok(f)) => f,
                other => return Poll::Ready(other),
            };
            let Some(encoding) = *this.web else {
                return Poll::Ready(Some(Ok(frame)));
            };
            let frame = match frame.into_data() {
                Ok(data) => data,
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        *this.done = true;
                        trailer_frame(&trailers)
                    }
                    // A kind of frame http-body may add later: not ours.
                    Err(_) => continue,
                },
            };
            return Poll::Ready(Some(Ok(Frame::data(encode(encoding, frame)))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.web {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::StatusCode;
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    /// A gRPC message frame: flag 0, length, bytes.
    fn message(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&u32::try_from(payload.len()).expect("len").to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    type Frames = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    fn frames(chunks: &[&[u8]], trailers: Option<HeaderMap>) -> Frames {
        let mut v: Vec<Result<Frame<Bytes>, Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        if let Some(t) = trailers {
            v.push(Ok(Frame::trailers(t)));
        }
        StreamBody::new(futures_util::stream::iter(v))
    }

    fn ok_trailers() -> HeaderMap {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        t.insert("grpc-message", HeaderValue::from_static("fine"));
        t
    }

    fn web_request(content_type: &str, body: Frames) -> Request<Frames> {
        Request::builder()
            .method("POST")
            .uri("/users.Users/Get")
            .header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, "99")
            .body(body)
            .expect("request")
    }

    #[test]
    fn content_types() {
        let d = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            detect(&h)
        };
        assert_eq!(d("application/grpc-web"), Some(Encoding::Binary));
        assert_eq!(d("application/grpc-web+proto"), Some(Encoding::Binary));
        assert_eq!(d("application/grpc-web-text"), Some(Encoding::Text));
        assert_eq!(d("Application/gRPC-Web-Text+proto"), Some(Encoding::Text));
        assert_eq!(d("application/grpc"), None);
        assert_eq!(d("application/grpc-webx"), None);
        assert_eq!(d("application/json"), None);
    }

    #[tokio::test]
    async fn a_binary_request_becomes_grpc_byte_for_byte() {
        let m = message(b"hello");
        let req = web_request(
            "application/grpc-web+proto",
            frames(&[&m[..3], &m[3..]], None),
        );
        assert_eq!(detect(req.headers()), Some(Encoding::Binary));
        let req = into_grpc_request(req, Encoding::Binary);
        assert_eq!(req.headers()[CONTENT_TYPE], "application/grpc+proto");
        assert_eq!(req.headers()[TE], "trailers");
        assert!(req.headers().get(CONTENT_LENGTH).is_none());
        let body = req.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], &m[..]);
    }

    #[tokio::test]
    async fn a_text_request_is_decoded_whatever_its_chunks() {
        // Two messages, each base64-encoded and padded on its own, as
        // clients send them: padding in the middle of the stream.
        let (m1, m2) = (message(b"ab"), message(b"second message"));
        let text = format!("{}{}", STANDARD.encode(&m1), STANDARD.encode(&m2));
        assert!(
            text[..text.len() - 2].contains('='),
            "padding mid-stream: {text}"
        );
        let want = [m1, m2].concat();
        for size in 1..=text.len() {
            let chunks: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
            let req = web_request("application/grpc-web-text", frames(&chunks, None));
            assert_eq!(detect(req.headers()), Some(Encoding::Text));
            let req = into_grpc_request(req, Encoding::Text);
            assert_eq!(req.headers()[CONTENT_TYPE], "application/grpc");
            let body = req.into_body().collect().await.expect("body").to_bytes();
            assert_eq!(&body[..], &want[..], "chunks of {size}");
        }
    }

    #[tokio::test]
    async fn a_bad_or_cut_text_body_is_an_error() {
        for bad in [&b"AAA*"[..], b"AAAAA", b"AA=A"] {
            let req = web_request("application/grpc-web-text", frames(&[bad], None));
            let req = into_grpc_request(req, Encoding::Text);
            assert!(req.into_body().collect().await.is_err(), "{bad:?}");
        }
    }

    fn grpc_response(body: Frames, content_type: &str) -> Response<Frames> {
        Response::builder()
            .status(StatusCode::OK)
            .header(CONTENT_TYPE, content_type)
            .body(body)
            .expect("response")
    }

    #[tokio::test]
    async fn a_binary_response_carries_its_trailers_as_the_last_frame() {
        let m = message(b"reply");
        let resp = grpc_response(frames(&[&m], Some(ok_trailers())), "application/grpc+proto");
        let resp = into_web_response(resp, Encoding::Binary);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/grpc-web+proto");
        let got = resp.into_body().collect().await.expect("body");
        assert!(got.trailers().is_none(), "no HTTP trailers for a browser");
        let lines = b"grpc-status: 0\r\ngrpc-message: fine\r\n";
        let mut want = m.clone();
        want.push(0x80);
        want.extend_from_slice(&u32::try_from(lines.len()).expect("len").to_be_bytes());
        want.extend_from_slice(lines);
        assert_eq!(&got.to_bytes()[..], &want[..]);
    }

    #[tokio::test]
    async fn a_text_response_is_base64_chunk_by_chunk() {
        let (m1, m2) = (message(b"x"), message(b"yz"));
        let resp = grpc_response(frames(&[&m1, &m2], Some(ok_trailers())), "application/grpc");
        let mut body = into_web_response(resp, Encoding::Text);
        assert_eq!(body.headers()[CONTENT_TYPE], "application/grpc-web-text");
        let body = body.body_mut();
        let mut chunks = Vec::new();
        while let Some(f) = body.frame().await {
            chunks.push(f.expect("frame").into_data().expect("data"));
        }
        assert_eq!(chunks[0], "AAAAAAF4");
        assert_eq!(chunks[1], "AAAAAAJ5eg==");
        assert_eq!(
            STANDARD.decode(&chunks[2]).expect("base64"),
            trailer_frame(&ok_trailers())
        );
        assert_eq!(chunks.len(), 3);
    }

    #[tokio::test]
    async fn a_trailers_only_response_keeps_its_status_in_the_headers() {
        let resp = Response::builder()
            .header(CONTENT_TYPE, "application/grpc")
            .header("grpc-status", "8")
            .header("grpc-message", "over the limit")
            .body(Full::new(Bytes::new()))
            .expect("response");
        let resp = into_web_response(resp, Encoding::Text);
        assert_eq!(resp.headers()[CONTENT_TYPE], "application/grpc-web-text");
        assert_eq!(resp.headers()["grpc-status"], "8");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert!(body.is_empty(), "{body:?}");
    }

    #[tokio::test]
    async fn a_response_that_is_not_grpc_passes_unchanged() {
        let resp = grpc_response(frames(&[b"no route\n"], None), "text/plain");
        let resp = into_web_response(resp, Encoding::Text);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/plain");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"no route\n");
    }

    #[tokio::test]
    async fn server_streaming_streams() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        let resp = Response::builder()
            .header(CONTENT_TYPE, "application/grpc")
            .body(body)
            .expect("response");
        let mut resp = into_web_response(resp, Encoding::Text);
        let body = resp.body_mut();
        let m = message(b"tick");
        for _ in 0..3 {
            tx.send(Ok(Frame::data(Bytes::from(m.clone()))))
                .await
                .expect("send");
            // Each message comes out before the next goes in.
            let out = body.frame().await.expect("frame").expect("ok");
            let out = out.into_data().expect("data");
            assert_eq!(STANDARD.decode(&out).expect("base64"), m);
        }
        tx.send(Ok(Frame::trailers(ok_trailers())))
            .await
            .expect("send");
        let last = body.frame().await.expect("frame").expect("ok");
        assert_eq!(
            STANDARD
                .decode(last.into_data().expect("data"))
                .expect("base64"),
            trailer_frame(&ok_trailers())
        );
        drop(tx);
        assert!(body.frame().await.is_none());
    }
}
