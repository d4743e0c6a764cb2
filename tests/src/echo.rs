//! The echo service: unary, server-streaming, client-streaming and
//! bidirectional calls. Every reply names its instance; request metadata
//! starting with `x-test-` comes back in the response headers, and streams
//! end with the trailer `x-test-trailer: done`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
        let md = echo_metadata(request.metadata());
        let req = request.into_inner();
        if req.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(req.sleep_ms.into())).await;
        }
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
        let md = echo_metadata(request.metadata());
        let req = request.into_inner();
        if let Some(s) = failure(&req) {
            return Err(s);
        }
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
        let s = replies.chain(futures_util::stream::once(async { Err(done_trailer()) }));
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
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let calls = Arc::new(AtomicU64::new(0));
    let svc = EchoService {
        instance: instance.to_string(),
        calls: calls.clone(),
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
