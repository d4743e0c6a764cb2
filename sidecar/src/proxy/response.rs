//! The response body a caller reads, layered in one place. Whatever the
//! direction, one boxed body around the peer's stream:
//!
//! - gives back the first frame an attempt read early (the retry peek);
//! - enforces the request's deadline and idle limit (outbound);
//! - keeps the endpoint's in-flight count until the stream ends (the
//!   balancer's load);
//! - finishes the [`Outcome`] as the stream goes (`grpc-status` in the
//!   trailers, a broken stream, a caller that went away) and, exactly once
//!   at its end, hands it to the outlier detection of the endpoint that
//!   answered and to the exchange (metrics, span, access log).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use http_body::{Body, Frame, SizeHint};
use weft_proto::grpc::{GRPC_MESSAGE, GRPC_STATUS};

use super::exchange::Exchange;
use super::outcome::{Failure, Outcome};
use crate::body::{BoxBody, BoxError};
use crate::endpoint::PendingGuard;
use crate::error::percent_encode;
use crate::resilience::timed::{Expired, StreamTimer};
use crate::table::{Pick, Target};

/// What else a response carries besides its stream.
#[derive(Default)]
pub struct Layers {
    /// A frame read before the headers went to the caller.
    pub first: Option<Frame<Bytes>>,
    /// The stream already ended (the early read found its end).
    pub ended: bool,
    /// The deadline and idle limit.
    pub timer: Option<StreamTimer>,
    /// The endpoint's in-flight count.
    pub load: Option<PendingGuard>,
    /// The endpoint whose outlier detection learns how it went.
    pub endpoint: Option<(Arc<Target>, Pick)>,
}

/// Wraps `resp` so that the exchange is finished when its stream ends.
pub fn layer<B>(
    resp: Response<B>,
    outcome: Outcome,
    layers: Layers,
    exchange: Exchange,
    grpc: bool,
) -> Response<BoxBody>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = resp.into_parts();
    let body = ResponseBody {
        inner: (!layers.ended).then_some(body),
        first: layers.first,
        timer: layers.timer,
        _load: layers.load,
        grpc,
        outcome,
        end: Some(End {
            endpoint: layers.endpoint,
            exchange,
        }),
    };
    Response::from_parts(parts, BoxBody::new(body))
}

struct End {
    endpoint: Option<(Arc<Target>, Pick)>,
    exchange: Exchange,
}

struct ResponseBody<B: Body> {
    /// `None` once the stream ended or was cut off (which cancels it).
    inner: Option<B>,
    first: Option<Frame<Bytes>>,
    timer: Option<StreamTimer>,
    _load: Option<PendingGuard>,
    grpc: bool,
    outcome: Outcome,
    /// Taken when the exchange is finished.
    end: Option<End>,
}

impl<B: Body> ResponseBody<B> {
    fn finish(&mut self) {
        let Some(end) = self.end.take() else {
            return;
        };
        if let Some((target, pick)) = end.endpoint {
            target.report(&pick, !self.outcome.is_endpoint_failure());
        }
        end.exchange.finish(&self.outcome);
    }

    /// A frame goes to the caller: note a status in trailers.
    fn pass(&mut self, frame: Frame<Bytes>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(t) = &self.timer {
            t.touch();
        }
        if let Some(trailers) = frame.trailers_ref() {
            self.outcome.read_trailers(trailers);
        }
        Poll::Ready(Some(Ok(frame)))
    }

    /// A limit passed: the upstream stream is dropped (cancelled) and a
    /// gRPC caller gets the status in trailers, an HTTP caller a broken
    /// stream.
    fn expire(&mut self, why: Expired) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.inner = None;
        self._load = None;
        if !self.grpc {
            self.outcome.failure = Some(Failure::StreamError);
            self.finish();
            return Poll::Ready(Some(Err(why.message().into())));
        }
        let mut t = HeaderMap::new();
        t.insert(GRPC_STATUS, why.grpc_code().header_value());
        if let Ok(v) = HeaderValue::from_str(&percent_encode(why.message())) {
            t.insert(GRPC_MESSAGE, v);
        }
        self.pass(Frame::trailers(t))
    }
}

impl<B> Body for ResponseBody<B>
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
        let this = &mut *self;
        if let Some(frame) = this.first.take() {
            return this.pass(frame);
        }
        let Some(inner) = this.inner.as_mut() else {
            this.finish();
            return Poll::Ready(None);
        };
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => return this.pass(frame),
            Poll::Ready(Some(Err(e))) => {
                this.outcome.failure = Some(Failure::StreamError);
                this.finish();
                return Poll::Ready(Some(Err(e.into())));
            }
            Poll::Ready(None) => {
                this.inner = None;
                this.finish();
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        match this.timer.as_mut().map(|t| t.poll_expired(cx)) {
            Some(Poll::Ready(why)) => this.expire(why),
            _ => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.inner.as_ref().is_none_or(B::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.first, &self.inner) {
            (None, Some(b)) => b.size_hint(),
            _ => SizeHint::default(),
        }
    }
}

impl<B: Body> Drop for ResponseBody<B> {
    fn drop(&mut self) {
        if self.end.is_none() {
            return;
        }
        // Dropped before its end was read: either it had nothing more to
        // give (the server saw is_end_stream) or the caller went away.
        let ended = self.first.is_none() && self.inner.as_ref().is_none_or(B::is_end_stream);
        if !ended {
            self.outcome.failure = Some(Failure::Cancelled);
        }
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::timed::Activity;
    use crate::telemetry::Telemetry;
    use crate::telemetry::metrics::{Direction, Metrics};
    use http_body_util::{BodyExt, StreamBody};
    use std::time::Duration;
    use tokio::time::Instant;
    use weft_proto::name::ServiceName;

    type Frames = Vec<Result<Frame<Bytes>, BoxError>>;

    fn telemetry() -> Arc<Telemetry> {
        Arc::new(Telemetry::new(Arc::new(Metrics::new()), None, false))
    }

    fn exchange(tel: &Arc<Telemetry>) -> Exchange {
        let mut req = http::Request::new(());
        let svc = ServiceName::parse("echo").expect("name");
        Exchange::begin(tel, Direction::outbound, svc, &mut req, true)
    }

    /// The `weft_responses_total` line the exchange recorded.
    fn recorded(tel: &Telemetry) -> String {
        tel.metrics
            .render()
            .lines()
            .find(|l| l.starts_with("weft_responses_total{"))
            .unwrap_or("nothing recorded")
            .to_string()
    }

    fn body(frames: Frames, endless: bool) -> BoxBody {
        let s = futures_util::stream::iter(frames);
        if endless {
            let s = futures_util::StreamExt::chain(s, futures_util::stream::pending());
            StreamBody::new(s).boxed_unsync()
        } else {
            StreamBody::new(s).boxed_unsync()
        }
    }

    fn layered(b: BoxBody, tel: &Arc<Telemetry>, layers: Layers) -> BoxBody {
        let resp = Response::new(b);
        let o = Outcome::from_headers(resp.status(), resp.headers());
        layer(resp, o, layers, exchange(tel), true).into_body()
    }

    #[tokio::test]
    async fn a_status_in_the_trailers_is_the_outcome() {
        let tel = telemetry();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("14"));
        let frames: Frames = vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(trailers)),
        ];
        let b = layered(body(frames, false), &tel, Layers::default());
        let got = b.collect().await.expect("collect");
        assert_eq!(
            got.trailers().map(|t| t["grpc-status"].clone()),
            Some(HeaderValue::from(14u16))
        );
        assert!(
            recorded(&tel).contains(r#"grpc_status="14",error="""#),
            "{}",
            recorded(&tel)
        );
    }

    #[tokio::test]
    async fn a_frame_read_early_comes_first_and_an_early_end_ends() {
        let tel = telemetry();
        let rest: Frames = vec![Ok(Frame::data(Bytes::from_static(b"b")))];
        let layers = Layers {
            first: Some(Frame::data(Bytes::from_static(b"a"))),
            ..Layers::default()
        };
        let b = layered(body(rest, false), &tel, layers);
        assert_eq!(b.collect().await.expect("collect").to_bytes(), "ab");
        let tel = telemetry();
        let layers = Layers {
            ended: true,
            ..Layers::default()
        };
        let b = layered(body(vec![], true), &tel, layers);
        assert!(b.is_end_stream());
        drop(b);
        assert!(
            recorded(&tel).contains(r#"error="""#),
            "not cancelled: {}",
            recorded(&tel)
        );
    }

    #[tokio::test]
    async fn dropped_early_is_cancelled() {
        let tel = telemetry();
        let frames: Frames = vec![Ok(Frame::data(Bytes::from_static(b"x")))];
        let mut b = layered(body(frames, true), &tel, Layers::default());
        let _ = b.frame().await;
        drop(b);
        assert!(
            recorded(&tel).contains(r#"error="cancelled""#),
            "{}",
            recorded(&tel)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_ends_a_grpc_stream_with_deadline_exceeded() {
        let tel = telemetry();
        let deadline = Instant::now() + Duration::from_millis(200);
        let timer = StreamTimer::new(Some(deadline), Duration::from_secs(300), Activity::new());
        let layers = Layers {
            timer: Some(timer),
            ..Layers::default()
        };
        let mut b = layered(body(vec![], true), &tel, layers);
        let f = b.frame().await.expect("a frame").expect("trailers");
        assert_eq!(
            f.trailers_ref().map(|t| t["grpc-status"].clone()),
            Some(HeaderValue::from(4u16))
        );
        assert!(Instant::now() >= deadline && Instant::now() < deadline + Duration::from_millis(5));
        assert!(b.frame().await.is_none());
        assert!(
            recorded(&tel).contains(r#"grpc_status="4",error="""#),
            "{}",
            recorded(&tel)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_http_stream_is_broken_off() {
        let tel = telemetry();
        let timer = StreamTimer::new(None, Duration::from_secs(10), Activity::new());
        let resp = Response::new(body(vec![], true));
        let o = Outcome::from_headers(resp.status(), resp.headers());
        let layers = Layers {
            timer: Some(timer),
            ..Layers::default()
        };
        let mut b = layer(resp, o, layers, exchange(&tel), false).into_body();
        assert!(b.frame().await.expect("an end").is_err());
        assert!(
            recorded(&tel).contains(r#"error="stream-error""#),
            "{}",
            recorded(&tel)
        );
    }
}
