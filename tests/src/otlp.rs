//! A real OTLP/gRPC trace receiver in the test process: the server that
//! `opentelemetry-proto` generates, on 127.0.0.1 port 0, keeping every span
//! it is sent in a form tests can query (hex ids, attributes as strings).
//! It can also stall (accept exports and never answer) to stand in for a
//! collector that is down or overloaded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
pub use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tonic::{Request, Response, Status};

/// One received span.
#[derive(Debug, Clone)]
pub struct Span {
    /// `service.name` of the resource it came with.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// W3C `tracestate` carried with the span context.
    pub trace_state: String,
    pub name: String,
    pub kind: SpanKind,
    pub attributes: HashMap<String, String>,
    pub resource: HashMap<String, String>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

impl Span {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Shared {
    spans: Mutex<Vec<Span>>,
    arrived: Notify,
    exports: AtomicU64,
    stall: AtomicBool,
    /// Count spans without keeping them (the benchmark's sink).
    discard: AtomicBool,
    received: AtomicU64,
}

struct Receiver(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.0.exports.fetch_add(1, Ordering::Relaxed);
        if self.0.stall.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        let mut got = Vec::new();
        for rs in request.into_inner().resource_spans {
            let resource = rs
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Span {
                        service: service.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        trace_state: s.trace_state,
                        name: s.name,
                        kind: SpanKind::try_from(s.kind).unwrap_or(SpanKind::Unspecified),
                        attributes: attributes(&s.attributes),
                        resource: resource.clone(),
                        status_code: s.status.as_ref().map_or(0, |st| st.code),
                        status_message: s.status.map(|st| st.message).unwrap_or_default(),
                        start_unix_nano: s.start_time_unix_nano,
                        end_unix_nano: s.end_time_unix_nano,
                    });
                }
            }
        }
        self.0
            .received
            .fetch_add(got.len() as u64, Ordering::Relaxed);
        if !self.0.discard.load(Ordering::Relaxed)
            && let Ok(mut spans) = self.0.spans.lock()
        {
            spans.extend(got);
        }
        self.0.arrived.notify_waiters();
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
        .collect()
}

fn value(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// A running receiver; stops when dropped.
pub struct Collector {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

impl Collector {
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(None).await
    }

    /// A receiver on TLS with this certificate chain and key (PEM), as a
    /// collector behind https.
    pub async fn start_tls(cert_pem: &str, key_pem: &str) -> anyhow::Result<Self> {
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
        Self::start_with(Some(tls)).await
    }

    /// The same, and a client certificate from `client_ca` is required.
    pub async fn start_mtls(
        cert_pem: &str,
        key_pem: &str,
        client_ca: &str,
    ) -> anyhow::Result<Self> {
        let tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert_pem, key_pem))
            .client_ca_root(tonic::transport::Certificate::from_pem(client_ca));
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<tonic::transport::ServerTlsConfig>) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let svc = TraceServiceServer::new(Receiver(shared.clone()));
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            server = server.tls_config(tls)?;
        }
        tokio::spawn(async move {
            let _ = server
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        Ok(Collector {
            addr,
            shared,
            _stop: stop,
        })
    }

    /// The same on a thread with its own runtime, so that decoding spans
    /// never delays the caller's tasks (the benchmark measures latency on
    /// its runtime).
    pub fn start_on_thread() -> anyhow::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("otlp-receiver".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let (stopped_tx, stopped_rx) = oneshot::channel::<()>();
                    match Collector::start().await {
                        Ok(c) => {
                            // The collector's own stop is chained to the
                            // thread: it ends when the handle is dropped.
                            let shared = c.shared.clone();
                            let addr = c.addr;
                            let _ = tx.send(Ok(Collector {
                                addr,
                                shared,
                                _stop: stopped_tx,
                            }));
                            let _ = stopped_rx.await;
                            drop(c);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
        rx.recv()?
    }

    /// The value for `--otlp-endpoint` / `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, exports are accepted and never answered.
    pub fn stall(&self) {
        self.shared.stall.store(true, Ordering::Relaxed);
    }

    /// From now on spans are counted, not kept.
    pub fn discard(&self) {
        self.shared.discard.store(true, Ordering::Relaxed);
    }

    /// Spans received (kept or not).
    pub fn received(&self) -> u64 {
        self.shared.received.load(Ordering::Relaxed)
    }

    /// Export calls received (answered or not).
    pub fn exports(&self) -> u64 {
        self.shared.exports.load(Ordering::Relaxed)
    }

    pub fn spans(&self) -> Vec<Span> {
        self.shared
            .spans
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Waits until `done` holds for the spans received so far (woken by
    /// each export, not by polling), and returns them.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[Span]) -> bool,
    ) -> anyhow::Result<Vec<Span>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.shared.arrived.notified();
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                anyhow::bail!(
                    "timed out after {within:?} waiting for {what}; received {} spans: {:#?}",
                    spans.len(),
                    spans
                        .iter()
                        .map(|s| format!("{} {} {:?}", s.service, s.name, s.kind))
                        .collect::<Vec<_>>()
                );
            }
        }
    }
}
