//! Spans, one per request on each side: the sampling decision when the
//! request arrives (parent-based, then the trace-id ratio), and at its end a
//! finished span put on a bounded queue, which one thread of the sidecar's
//! own (`weft-otlp`, with a runtime of its own) exports in batches over
//! OTLP/gRPC with OpenTelemetry's exporter.
//!
//! The data path never waits for export: spans beyond `--trace-queue` are
//! dropped and counted (`weft_spans_dropped_total`), as are spans whose
//! export failed. Unsampled requests cost a header parse and a header write;
//! no span object is ever built for them.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter, SpanLinks};
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
    queue: Arc<Queue>,
    scope: InstrumentationScope,
    dropped_queue_full: Counter,
    /// Tells the export thread to export what is queued and end.
    stop_exporter: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    /// Sent by the export thread once the last export is done.
    exporter_done: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

/// Spans exported per request to the collector, at most.
const BATCH: usize = 512;
/// How often what is queued is exported (a full batch goes at once):
/// traces show up in Jaeger within a fraction of a second, and a batch
/// stays small: a batch is held until it is sent, and at 1% of 26,000
/// calls a second one a second kept the production pair's sidecars
/// 0.3–0.9 MB higher at their peak than one every 200 ms
/// (docs/performance.md), for at most four more export calls a second,
/// of a few dozen spans each.
const EXPORT_EVERY: Duration = Duration::from_millis(200);
/// The exporter's own bound on one export, and so on the last one at
/// shutdown.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Finished spans waiting for export. The request path pushes under an
/// uncontended lock and wakes the export thread only when a batch is full;
/// otherwise the thread comes for them every [`EXPORT_EVERY`]. Beyond `max`
/// spans are dropped, counted.
struct Queue {
    spans: std::sync::Mutex<Vec<SpanData>>,
    batch_full: tokio::sync::Notify,
    max: usize,
}

impl Queue {
    /// Queues `span`; `false` when the queue is full (the span is dropped).
    fn push(&self, span: SpanData) -> bool {
        let Ok(mut spans) = self.spans.lock() else {
            return false;
        };
        if spans.len() >= self.max {
            return false;
        }
        spans.push(span);
        let full = spans.len() == BATCH.min(self.max);
        drop(spans);
        if full {
            self.batch_full.notify_one();
        }
        true
    }

    /// The oldest spans queued, a batch at most.
    fn take(&self) -> Vec<SpanData> {
        let Ok(mut spans) = self.spans.lock() else {
            return Vec::new();
        };
        if spans.len() <= BATCH {
            return std::mem::take(&mut *spans);
        }
        spans.drain(..BATCH).collect()
    }
}

/// The OTLP exporter and what it counts; lives on the export thread.
struct Export {
    exporter: opentelemetry_otlp::SpanExporter,
    exported: Counter,
    failed: Counter,
    /// Whether the last export failed: one warning per outage, not per batch.
    failing: bool,
    endpoint: String,
}

impl Export {
    /// Exports what `queue` holds, a batch at a time, until it is empty.
    async fn drain(&mut self, queue: &Queue) {
        loop {
            let batch = queue.take();
            if batch.is_empty() {
                return;
            }
            let n = batch.len() as u64;
            match self.exporter.export(batch).await {
                Ok(()) => {
                    self.exported.inc_by(n);
                    if std::mem::replace(&mut self.failing, false) {
                        tracing::info!(endpoint = %self.endpoint, "trace export works again");
                    }
                }
                Err(e) => {
                    self.failed.inc_by(n);
                    if !std::mem::replace(&mut self.failing, true) {
                        tracing::warn!(endpoint = %self.endpoint, error = %e, "trace export failed; spans are dropped until it works");
                    }
                }
            }
        }
    }

    /// Exports every [`EXPORT_EVERY`] or when a batch is full, until
    /// `stop` (sent, or dropped with the tracer); then exports the rest.
    async fn run(mut self, queue: Arc<Queue>, mut stop: tokio::sync::oneshot::Receiver<()>) {
        let mut tick = tokio::time::interval(EXPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopping = tokio::select! {
                _ = &mut stop => true,
                _ = queue.batch_full.notified() => false,
                _ = tick.tick() => false,
            };
            self.drain(&queue).await;
            if stopping {
                let _ = self.exporter.shutdown_with_timeout(EXPORT_TIMEOUT);
                return;
            }
        }
    }
}

/// What the export thread is told at its start.
struct ExportSetup {
    cfg: TracingConfig,
    resource: Resource,
    queue: Arc<Queue>,
    exported: Counter,
    failed: Counter,
}

/// Builds the OTLP exporter on a thread with its own single-threaded tokio
/// runtime, which then drives the exporter's connection and exports the
/// queue until told to stop. Encoding and sending a batch (a thousand spans
/// a second at 100% sampling) so never runs on the threads that carry
/// requests: the proxy runs on one thread by default, where a batch being
/// encoded would hold up every request behind it. One thread does both
/// (OpenTelemetry's batch processor would add a second, with its stack and
/// its own malloc arena, to every traced sidecar).
fn export_thread(
    setup: ExportSetup,
) -> Result<
    (
        tokio::sync::oneshot::Sender<()>,
        tokio::sync::oneshot::Receiver<()>,
    ),
    TracerError,
> {
    let ExportSetup {
        cfg,
        resource,
        queue,
        exported,
        failed,
    } = setup;
    let endpoint = cfg.endpoint.to_string();
    let error = |reason: String| TracerError {
        endpoint: endpoint.clone(),
        reason,
    };
    let (built_tx, built_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
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
                    let _ = built_tx.send(Err(TracerError {
                        endpoint: target,
                        reason: format!("cannot start its runtime: {e}"),
                    }));
                    return;
                }
            };
            rt.block_on(async move {
                let mut exporter = match build_exporter(&cfg, target.clone()) {
                    Ok(e) => e,
                    Err(e) => {
                        let _ = built_tx.send(Err(e));
                        return;
                    }
                };
                exporter.set_resource(&resource);
                let _ = built_tx.send(Ok(()));
                let export = Export {
                    exporter,
                    exported,
                    failed,
                    failing: false,
                    endpoint: target,
                };
                export.run(queue, stop_rx).await;
                let _ = done_tx.send(());
            });
        })
        .map_err(|e| error(format!("cannot start its thread: {e}")))?;
    built_rx
        .recv()
        .map_err(|_| error("its thread ended".into()))??;
    Ok((stop_tx, done_rx))
}

/// The OTLP/gRPC exporter to `target` (within the export thread's runtime:
/// the channel is made there).
fn build_exporter(
    cfg: &TracingConfig,
    target: String,
) -> Result<opentelemetry_otlp::SpanExporter, TracerError> {
    let error = |reason: String| TracerError {
        endpoint: target.clone(),
        reason,
    };
    let mut builder = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(target.clone())
        .with_timeout(EXPORT_TIMEOUT);
    // https: our own channel, trusting exactly the given CAs, and showing a
    // client certificate when one is given.
    if let Some(pem) = &cfg.ca_pem {
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(pem));
        if let Some(id) = &cfg.client_identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(&id.chain, &id.key));
        }
        let endpoint = tonic::transport::Endpoint::from_shared(target.clone())
            .and_then(|e| e.tls_config(tls))
            .map_err(|e| error(format!("TLS: {e}")))?;
        builder = builder.with_channel(
            endpoint
                .connect_timeout(EXPORT_TIMEOUT)
                .timeout(EXPORT_TIMEOUT)
                .connect_lazy(),
        );
    }
    builder.build().map_err(|e| error(e.to_string()))
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
        let counters = metrics.span_counters();
        let queue = Arc::new(Queue {
            spans: std::sync::Mutex::new(Vec::new()),
            batch_full: tokio::sync::Notify::new(),
            max: cfg.queue,
        });
        let resource = Resource::builder_empty()
            .with_service_name(service.to_string())
            .with_attributes([
                KeyValue::new("service.instance.id", instance.to_string()),
                KeyValue::new("weft.component", "sidecar"),
            ])
            .build();
        let (stop_exporter, exporter_done) = export_thread(ExportSetup {
            cfg: cfg.clone(),
            resource,
            queue: queue.clone(),
            exported: counters.exported,
            failed: counters.export_failed,
        })?;
        Ok(Tracer {
            stop_exporter: std::sync::Mutex::new(Some(stop_exporter)),
            exporter_done: std::sync::Mutex::new(Some(exporter_done)),
            ratio: cfg.sampling,
            queue,
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
        if !self.queue.push(data) {
            self.dropped_queue_full.inc();
        }
    }

    /// Exports what is queued and stops the export thread, waiting for
    /// it at most as long as one export may take.
    pub async fn shutdown(&self) {
        if let Some(stop) = self.stop_exporter.lock().ok().and_then(|mut s| s.take()) {
            let _ = stop.send(());
        }
        let done = self.exporter_done.lock().ok().and_then(|mut d| d.take());
        if let Some(done) = done {
            let _ = tokio::time::timeout(EXPORT_TIMEOUT + Duration::from_secs(1), done).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(n: u64) -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(1u128.to_be_bytes()),
                SpanId::from_bytes(n.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                Default::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Client,
            name: "s".into(),
            start_time: SystemTime::UNIX_EPOCH,
            end_time: SystemTime::UNIX_EPOCH,
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("t").build(),
        }
    }

    fn queue(max: usize) -> Queue {
        Queue {
            spans: std::sync::Mutex::new(Vec::new()),
            batch_full: tokio::sync::Notify::new(),
            max,
        }
    }

    fn ids(batch: &[SpanData]) -> Vec<u64> {
        batch
            .iter()
            .map(|s| u64::from_be_bytes(s.span_context.span_id().to_bytes()))
            .collect()
    }

    #[test]
    fn the_queue_is_bounded_and_gives_the_oldest_a_batch_at_a_time() {
        let q = queue(BATCH + 10);
        for n in 0..(BATCH + 10) as u64 {
            assert!(q.push(span(n)));
        }
        assert!(!q.push(span(9999)), "past the bound, a span is dropped");
        let first = q.take();
        assert_eq!(ids(&first), (0..BATCH as u64).collect::<Vec<_>>());
        assert_eq!(
            ids(&q.take()),
            (BATCH as u64..BATCH as u64 + 10).collect::<Vec<_>>()
        );
        assert!(q.take().is_empty());
        assert!(q.push(span(1)), "room again once taken");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_wakes_the_export_thread_and_a_partial_one_does_not() {
        let q = queue(4096);
        for n in 0..(BATCH - 1) as u64 {
            q.push(span(n));
        }
        let waited = tokio::time::timeout(Duration::from_secs(5), q.batch_full.notified()).await;
        assert!(waited.is_err(), "woken before a batch was full");
        q.push(span(BATCH as u64));
        tokio::time::timeout(Duration::from_millis(1), q.batch_full.notified())
            .await
            .expect("a full batch wakes the exporter at once");
    }
}
