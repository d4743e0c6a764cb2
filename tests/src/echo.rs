//! The echo service: unary, server-streaming, client-streaming and
//! bidirectional calls. Every reply names its instance; request metadata
//! starting with `x-test-` comes back in the response headers, and streams
//! end with the trailer `x-test-trailer: done`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::server::HealthReporter;

use crate::pb::echo_server::{Echo, EchoServer};
use crate::pb::{EchoReply, EchoRequest};

/// Messages up to this size pass (the tests send 4 MB and more).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct EchoService {
    pub instance: String,
    pub calls: Arc<AtomicU64>,
    pub state: Arc<EchoState>,
}

/// What a test can steer and observe on a running echo server.
#[derive(Default)]
pub struct EchoState {
    /// Non-zero: every call fails with this gRPC status.
    pub fail_all: std::sync::atomic::AtomicU32,
    /// Added to every unary call (a slow instance).
    pub delay_ms: AtomicU64,
    /// Unary calls that ran to their end (a cancelled call does not).
    pub completed: AtomicU64,
    /// The `grpc-timeout` each call arrived with.
    pub grpc_timeouts: std::sync::Mutex<Vec<String>>,
    /// The `traceparent` each call arrived with (empty: none).
    pub traceparents: std::sync::Mutex<Vec<String>>,
}

impl EchoState {
    fn observe(&self, md: &MetadataMap) -> Option<Status> {
        let header = |name: &str| {
            md.get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        if let Ok(mut t) = self.grpc_timeouts.lock() {
            t.push(header("grpc-timeout"));
        }
        if let Ok(mut t) = self.traceparents.lock() {
            t.push(header("traceparent"));
        }
        match self.fail_all.load(Ordering::Relaxed) {
            0 => None,
            code => Some(Status::new(
                tonic::Code::from(code as i32),
                "this instance fails every call",
            )),
        }
    }
}

fn echo_metadata(from: &MetadataMap) -> MetadataMap {
    let mut md = MetadataMap::new();
    for kv in from.iter() {
        if let tonic::metadata::KeyAndValueRef::Ascii(k, v) = kv
            && k.as_str().starts_with("x-test-")
        {
            md.insert(k.clone(), v.clone());
        }
    }
    md
}

fn with_instance(instance: &str, mut md: MetadataMap) -> MetadataMap {
    if let Ok(v) = instance.parse() {
        md.insert("x-instance", v);
    }
    md
}

fn failure(req: &EchoRequest) -> Option<Status> {
    (req.fail_code != 0).then(|| {
        let mut s = Status::new(
            tonic::Code::from(req.fail_code as i32),
            "failure requested by the test",
        );
        s.metadata_mut().insert(
            "x-test-detail",
            tonic::metadata::MetadataValue::from_static("requested"),
        );
        s
    })
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

fn done_trailer() -> Status {
    let mut md = MetadataMap::new();
    md.insert(
        "x-test-trailer",
        tonic::metadata::MetadataValue::from_static("done"),
    );
    Status::with_metadata(tonic::Code::Ok, "", md)
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = self.state.observe(request.metadata()) {
            return Err(s);
        }
        let md = echo_metadata(request.metadata());
        let req = request.into_inner();
        let sleep = u64::from(req.sleep_ms) + self.state.delay_ms.load(Ordering::Relaxed);
        if sleep > 0 {
            tokio::time::sleep(Duration::from_millis(sleep)).await;
        }
        self.state.completed.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = failure(&req) {
            return Err(s);
        }
        let mut resp = Response::new(EchoReply {
            message: req.message,
            payload: req.payload,
            instance: self.instance.clone(),
            seq: 0,
        });
        *resp.metadata_mut() = with_instance(&self.instance, md);
        Ok(resp)
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let failing = self.state.observe(request.metadata());
        let md = echo_metadata(request.metadata());
        let req = request.into_inner();
        // `count` replies, then the end: OK with a trailer, or the requested
        // failure (`fail_code`) in the trailers, or this instance's failure
        // before any reply (headers first, then a status in the trailers).
        let end = match (failing, failure(&req)) {
            (Some(s), _) => {
                let s = futures_util::stream::once(async move { Err(s) });
                return Ok(Response::new(Box::pin(s) as ReplyStream));
            }
            (None, Some(s)) => s,
            (None, None) => done_trailer(),
        };
        let instance = self.instance.clone();
        let sleep = Duration::from_millis(req.sleep_ms.into());
        let replies = futures_util::stream::iter(0..req.count).then(move |i| {
            let (instance, message) = (instance.clone(), req.message.clone());
            async move {
                if !sleep.is_zero() {
                    tokio::time::sleep(sleep).await;
                }
                Ok(EchoReply {
                    message,
                    payload: Vec::new(),
                    instance,
                    seq: i,
                })
            }
        });
        let s = replies.chain(futures_util::stream::once(async move { Err(end) }));
        let mut resp = Response::new(Box::pin(s) as ReplyStream);
        *resp.metadata_mut() = with_instance(&self.instance, md);
        Ok(resp)
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let md = echo_metadata(request.metadata());
        let mut stream = request.into_inner();
        let mut messages = Vec::new();
        let mut payload = 0u32;
        while let Some(m) = stream.message().await? {
            payload += m.payload.len() as u32;
            messages.push(m.message);
        }
        let mut resp = Response::new(EchoReply {
            message: messages.join(","),
            payload: Vec::new(),
            instance: self.instance.clone(),
            seq: payload,
        });
        *resp.metadata_mut() = with_instance(&self.instance, md);
        Ok(resp)
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let md = echo_metadata(request.metadata());
        let instance = self.instance.clone();
        let stream = request.into_inner();
        let replies = stream
            .enumerate()
            .map(move |(i, m)| {
                m.map(|m| EchoReply {
                    message: m.message,
                    payload: m.payload,
                    instance: instance.clone(),
                    seq: i as u32,
                })
            })
            .chain(futures_util::stream::once(async { Err(done_trailer()) }));
        let mut resp = Response::new(Box::pin(replies) as ReplyStream);
        *resp.metadata_mut() = with_instance(&self.instance, md);
        Ok(resp)
    }
}

/// A running echo server.
pub struct EchoServerHandle {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicU64>,
    pub state: Arc<EchoState>,
    pub health: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
}

impl EchoServerHandle {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Makes `grpc.health.v1` answer NOT_SERVING (or SERVING again).
    pub async fn set_serving(&self, serving: bool) {
        let s = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.health.set_service_status("", s).await;
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Drop for EchoServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts an echo server with gRPC health on 127.0.0.1, port 0.
pub async fn start_echo(instance: &str) -> anyhow::Result<EchoServerHandle> {
    start_echo_on(instance, "127.0.0.1:0".parse()?).await
}

/// Starts one on `addr` (e.g. where an instance that was stopped listened).
pub async fn start_echo_on(instance: &str, addr: SocketAddr) -> anyhow::Result<EchoServerHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let calls = Arc::new(AtomicU64::new(0));
    let state = Arc::new(EchoState::default());
    let svc = EchoService {
        instance: instance.to_string(),
        calls: calls.clone(),
        state: state.clone(),
    };
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health_svc)
            .add_service(
                EchoServer::new(svc)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = rx.await;
                },
            ),
    );
    Ok(EchoServerHandle {
        addr,
        calls,
        state,
        health,
        stop: Some(tx),
    })
}

/// A client for `addr` (an upstream port or a sidecar), one HTTP/2
/// connection, large messages allowed.
pub async fn client(
    addr: SocketAddr,
) -> anyhow::Result<crate::pb::echo_client::EchoClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(crate::pb::echo_client::EchoClient::new(ch)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// Unary calls to `addr` one after another with `pause` between them, until
/// stopped or `max_calls` were made, counting successes and failures: the
/// "steady load" under which instances die, certificates rotate and the
/// control plane restarts.
pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl SteadyLoad {
    /// Starts the load on its own task.
    pub fn start(addr: SocketAddr, pause: Duration, max_calls: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let task = {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let mut grpc = client(addr).await?;
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) && n < max_calls {
                    n += 1;
                    match grpc.unary(EchoRequest::default()).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            tracing::error!(error = %e, "a call of the steady load failed");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    tokio::time::sleep(pause).await;
                }
                anyhow::Ok(())
            })
        };
        Self {
            stop,
            ok,
            failed,
            task,
        }
    }

    /// Calls that succeeded so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Calls that failed so far.
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Stops the load and returns (succeeded, failed).
    pub async fn stop(self) -> anyhow::Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let counts = (self.ok, self.failed);
        self.task.await??;
        Ok((
            counts.0.load(Ordering::Relaxed),
            counts.1.load(Ordering::Relaxed),
        ))
    }
}

/// One unary gRPC call at the wire level (hyper's HTTP/2 client), for tests
/// that must control every header: tonic's own client enforces a
/// `grpc-timeout` it sends. Returns the gRPC status and how long it took.
pub async fn raw_unary(
    addr: SocketAddr,
    path: &str,
    msg: &impl prost::Message,
    headers: &[(&str, &str)],
) -> anyhow::Result<(Option<u16>, Duration)> {
    use http_body_util::BodyExt;
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await?);
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    let payload = msg.encode_to_vec();
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(0);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    let mut req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(http_body_util::Full::new(bytes::Bytes::from(frame)))?;
    let started = std::time::Instant::now();
    let resp = send.send_request(req).await?;
    let status = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse().ok())
    };
    if let Some(s) = status(resp.headers()) {
        return Ok((Some(s), started.elapsed()));
    }
    let collected = resp.into_body().collect().await?;
    Ok((collected.trailers().and_then(status), started.elapsed()))
}
