//! Spans, one per request on each side: the sampling decision when the
//! request arrives (parent-based, then the trace-id ratio), and at its end a
//! finished span handed to OpenTelemetry's batch processor, which exports
//! over OTLP/gRPC from its own thread, through a connection driven by a
//! runtime of its own.
//!
//! The data path never waits for export: spans beyond `--trace-queue` are
//! dropped and counted (`weft_spans_dropped_total`), as are spans whose
//! export failed. Unsampled requests cost a header parse and a header write;
//! no span object is ever built for them.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, SpanData, SpanEvents, SpanExporter, SpanLinks,
    SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;

use super::context::{TRACEPARENT, TRACESTATE, TraceContext, new_span_id, new_trace_id, sample};
use super::metrics::Metrics;

/// Trace export, validated (built from the flags by `config`).
#[derive(Debug, Clone)]
pub struct TracingConfig {
    /// The OTLP/gRPC collector.
    pub endpoint: http::Uri,
    /// The share of new traces recorded (0..=1).
    pub sampling: f64,
    /// Finished spans waiting for export, at most.
    pub queue: usize,
    /// For an https collector: the CA certificates (PEM) its certificate
    /// must chain to.
    pub ca_pem: Option<Vec<u8>>,
    /// For a collector that asks for one: the client certificate shown.
    pub client_identity: Option<PemIdentity>,
}

/// A certificate chain and its private key, PEM, checked to belong
/// together.
#[derive(Clone)]
pub struct PemIdentity {
    pub chain: Vec<u8>,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for PemIdentity {
    /// The key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemIdentity")
            .field("chain_bytes", &self.chain.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up trace export to {endpoint}: {reason}")]
pub struct TracerError {
    endpoint: String,
    reason: String,
}

/// This hop's place in a trace, decided when the request arrived.
#[derive(Debug, Clone)]
pub struct Started {
    /// This hop's span (its id goes on to the next hop).
    pub ctx: TraceContext,
    parent: Option<TraceContext>,
    tracestate: Option<HeaderValue>,
}

/// What the finished span says.
pub struct SpanRecord {
    pub kind: SpanKind,
    pub name: Cow<'static, str>,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// `Some(description)` marks the span as an error.
    pub error: Option<String>,
}

pub struct Tracer {
    ratio: f64,
    processor: Arc<BatchSpanProcessor>,
    /// Spans handed to the processor and not yet to the exporter.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
    scope: InstrumentationScope,
    dropped_queue_full: Counter,
    /// Ends the export thread's runtime, after the last export.
    stop_exporter: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

/// Builds the OTLP exporter on a thread with its own single-threaded tokio
/// runtime, which then drives the exporter's connection until told to stop.
/// Encoding and sending a batch (a thousand spans a second at 100%
/// sampling) so never runs on the threads that carry requests: the proxy
/// runs on one thread by default, where a batch being encoded would hold up
/// every request behind it.
fn export_thread(
    cfg: &TracingConfig,
) -> Result<
    (
        opentelemetry_otlp::SpanExporter,
        tokio::sync::oneshot::Sender<()>,
    ),
    TracerError,
> {
    let endpoint = cfg.endpoint.to_string();
    let error = |reason: String| TracerError {
        endpoint: endpoint.clone(),
        reason,
    };
    let ca_pem = cfg.ca_pem.clone();
    let client_identity = cfg.client_identity.clone();
    let (built_tx, built_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let target = endpoint.clone();
    std::thread::Builder::new()
        .name("weft-otlp".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = built_tx.send(Err(format!("cannot start its runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let mut builder = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(target.clone())
                    .with_timeout(Duration::from_secs(5));
                // https: our own channel, trusting exactly the given CAs,
                // and showing a client certificate when one is given.
                if let Some(pem) = ca_pem {
                    let mut tls = tonic::transport::ClientTlsConfig::new()
                        .ca_certificate(tonic::transport::Certificate::from_pem(pem));
                    if let Some(id) = client_identity {
                        tls = tls.identity(tonic::transport::Identity::from_pem(id.chain, id.key));
                    }
                    match tonic::transport::Endpoint::from_shared(target)
                        .and_then(|e| e.tls_config(tls))
                    {
                        Ok(e) => {
                            builder = builder.with_channel(
                                e.connect_timeout(Duration::from_secs(5))
                                    .timeout(Duration::from_secs(5))
                                    .connect_lazy(),
                            );
                        }
                        Err(e) => {
                            let _ = built_tx.send(Err(format!("TLS: {e}")));
                            return;
                        }
                    }
                }
                let built = builder.build().map_err(|e| e.to_string());
                let ok = built.is_ok();
                let _ = built_tx.send(built);
                if ok {
                    let _ = stop_rx.await;
                }
            });
        })
        .map_err(|e| error(format!("cannot start its thread: {e}")))?;
    let exporter = built_rx
        .recv()
        .map_err(|_| error("its thread ended".into()))?
        .map_err(error)?;
    Ok((exporter, stop_tx))
}

impl Tracer {
    /// Sets up export to the collector, on a thread of its own (see
    /// [`export_thread`]).
    pub fn new(
        cfg: &TracingConfig,
        service: &str,
        instance: &str,
        metrics: &Metrics,
    ) -> Result<Self, TracerError> {
        let (exporter, stop_exporter) = export_thread(cfg)?;
        let queued = Arc::new(AtomicUsize::new(0));
        let counters = metrics.span_counters();
        let exporter = Counting {
            inner: exporter,
            queued: queued.clone(),
            exported: counters.exported,
            failed: counters.export_failed,
            failing: AtomicBool::new(false),
            endpoint: cfg.endpoint.to_string(),
        };
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    // Our own bound is in front; the processor's is never hit.
                    .with_max_queue_size(cfg.queue + 1)
                    .with_max_export_batch_size(512.min(cfg.queue))
                    // Traces show up in Jaeger within a second or so.
                    .with_scheduled_delay(Duration::from_secs(1))
                    .build(),
            )
            .build();
        processor.set_resource(
            &Resource::builder_empty()
                .with_service_name(service.to_string())
                .with_attributes([
                    KeyValue::new("service.instance.id", instance.to_string()),
                    KeyValue::new("weft.component", "sidecar"),
                ])
                .build(),
        );
        Ok(Tracer {
            stop_exporter: std::sync::Mutex::new(Some(stop_exporter)),
            ratio: cfg.sampling,
            processor: Arc::new(processor),
            queued,
            max_queued: cfg.queue,
            scope: InstrumentationScope::builder("weft-sidecar")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            dropped_queue_full: counters.queue_full,
        })
    }

    /// Decides this hop's span for a request with `headers` and writes its
    /// `traceparent` there for the next hop. A caller's sampling decision
    /// stands; a request without (or with an invalid) traceparent starts a
    /// new trace, recorded at the configured ratio.
    pub fn start(&self, headers: &mut HeaderMap) -> Started {
        let parent = headers.get(TRACEPARENT).and_then(TraceContext::parse);
        let ctx = match parent {
            Some(p) => TraceContext {
                trace_id: p.trace_id,
                span_id: new_span_id(),
                sampled: p.sampled,
            },
            None => {
                let trace_id = new_trace_id();
                TraceContext {
                    trace_id,
                    span_id: new_span_id(),
                    sampled: sample(trace_id, self.ratio),
                }
            }
        };
        headers.insert(TRACEPARENT, ctx.to_header());
        let tracestate = if parent.is_some() && ctx.sampled {
            headers.get(TRACESTATE).cloned()
        } else {
            None
        };
        Started {
            ctx,
            parent,
            tracestate,
        }
    }

    /// Hands a finished, sampled span to the exporter (or drops it, counted,
    /// when the queue is full).
    pub fn finish(&self, started: &Started, span: SpanRecord) {
        if !started.ctx.sampled {
            return;
        }
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped_queue_full.inc();
            return;
        }
        let trace_state = started
            .tracestate
            .as_ref()
            .map(super::context::trace_state)
            .unwrap_or_default();
        let data = SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(started.ctx.trace_id.to_be_bytes()),
                SpanId::from_bytes(started.ctx.span_id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                trace_state,
            ),
            parent_span_id: started.parent.map_or(SpanId::INVALID, |p| {
                SpanId::from_bytes(p.span_id.to_be_bytes())
            }),
            parent_span_is_remote: started.parent.is_some(),
            span_kind: span.kind,
            name: span.name,
            start_time: span.start,
            end_time: span.end,
            attributes: span.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match span.error {
                Some(description) => Status::Error {
                    description: description.into(),
                },
                None => Status::Unset,
            },
            instrumentation_scope: self.scope.clone(),
        };
        self.processor.on_end(data);
    }

    /// Exports what is queued and stops the export thread (bounded by the
    /// exporter's timeout). The processor blocks, so it runs off the
    /// runtime's threads while the runtime drives the export.
    pub async fn shutdown(&self) {
        let p = self.processor.clone();
        let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        if let Some(stop) = self.stop_exporter.lock().ok().and_then(|mut s| s.take()) {
            let _ = stop.send(());
        }
    }
}

/// The OTLP exporter, counting what it sent and what it could not.
#[derive(Debug)]
struct Counting {
    inner: opentelemetry_otlp::SpanExporter,
    queued: Arc<AtomicUsize>,
    exported: Counter,
    failed: Counter,
    /// Whether the last export failed: one warning per outage, not per batch.
    failing: AtomicBool,
    endpoint: String,
}

impl SpanExporter for Counting {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => {
                self.exported.inc_by(n);
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "trace export works again");
                }
            }
            Err(e) => {
                self.failed.inc_by(n);
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(endpoint = %self.endpoint, error = %e, "trace export failed; spans are dropped until it works");
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
