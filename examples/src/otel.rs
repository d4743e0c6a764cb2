//! OpenTelemetry in the example apps, set up the way a team's own service
//! would: spans exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set (the variable the sidecars read too), and W3C trace context read
//! from each incoming request and written into each outgoing one. That is
//! all an app must do for its spans and its sidecar's to join one trace:
//! the sidecar makes its own spans and passes the context on.
//!
//! Without an endpoint no spans are made, and an incoming context is still
//! passed on, so that the sidecars' spans stay connected.

use std::borrow::Cow;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The app's tracing: a tracer when an endpoint is configured.
pub struct Otel {
    provider: Option<SdkTracerProvider>,
    tracer: Option<SdkTracer>,
    propagator: TraceContextPropagator,
}

impl Otel {
    /// Reads `OTEL_EXPORTER_OTLP_ENDPOINT`; must run inside the tokio
    /// runtime (the exporter's connection lives there).
    pub fn init(service: &'static str) -> anyhow::Result<Otel> {
        Self::init_with(
            service,
            std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().as_deref(),
        )
    }

    /// The same with the endpoint given (`None` or empty: no spans).
    pub fn init_with(service: &'static str, endpoint: Option<&str>) -> anyhow::Result<Otel> {
        let endpoint = endpoint.filter(|e| !e.trim().is_empty());
        let (provider, tracer) = match endpoint {
            None => (None, None),
            Some(endpoint) => {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.trim())
                    .build()
                    .map_err(|e| {
                        anyhow::anyhow!("OTEL_EXPORTER_OTLP_ENDPOINT {endpoint:?}: {e}")
                    })?;
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder_empty()
                            .with_service_name(service)
                            .with_attribute(KeyValue::new("weft.component", "app"))
                            .build(),
                    )
                    .build();
                let tracer = provider.tracer(service);
                (Some(provider), Some(tracer))
            }
        };
        Ok(Otel {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
        })
    }

    /// Starts a span of `kind` under `parent` (ended by [`Otel::end`]).
    /// Without a tracer the parent's context is returned as it is.
    pub fn start(
        &self,
        parent: &Context,
        kind: SpanKind,
        name: impl Into<Cow<'static, str>>,
        attributes: Vec<KeyValue>,
    ) -> Context {
        match &self.tracer {
            Some(t) => {
                let span = t
                    .span_builder(name)
                    .with_kind(kind)
                    .with_attributes(attributes)
                    .start_with_context(t, parent);
                parent.with_span(span)
            }
            None => parent.clone(),
        }
    }

    /// The caller's context from an incoming request's headers.
    pub fn extract(&self, headers: &http::HeaderMap) -> Context {
        self.propagator.extract(&Headers(headers))
    }

    /// Writes `cx` into an outgoing request's headers.
    pub fn inject(&self, cx: &Context, headers: &mut http::HeaderMap) {
        self.propagator.inject_context(cx, &mut HeadersMut(headers));
    }

    /// The sender's context from any carrier (an AMQP message's headers).
    pub fn extract_from(&self, carrier: &dyn Extractor) -> Context {
        self.propagator.extract(carrier)
    }

    /// Writes `cx` into any carrier (an AMQP message's headers).
    pub fn inject_into(&self, cx: &Context, carrier: &mut dyn Injector) {
        self.propagator.inject_context(cx, carrier);
    }

    /// Ends the span `start` made, as an error when `error` says so.
    pub fn end(&self, cx: &Context, error: Option<String>) {
        if self.tracer.is_none() {
            return;
        }
        let span = cx.span();
        if let Some(e) = error {
            span.set_status(Status::error(e));
        }
        span.end();
    }

    /// Exports what is left (at shutdown).
    pub async fn shutdown(&self) {
        if let Some(p) = self.provider.clone() {
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}
