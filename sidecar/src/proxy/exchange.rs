//! One request/response exchange as the metrics see it: counted when it
//! starts, classified once and recorded when it ends.

use std::sync::Arc;

use hyper::body::Incoming;
use tokio::time::Instant;

use super::classify::{Classification, ClassifiedBody};
use crate::body::{BoxBody, boxed};
use crate::endpoint::PendingGuard;
use crate::error::ProxyError;
use crate::metrics::{Direction, Metrics, RequestLabels, ResponseLabels};
use crate::model::ServiceName;

pub struct Exchange {
    metrics: Arc<Metrics>,
    labels: RequestLabels,
    start: Instant,
    /// Keeps the endpoint's in-flight count until the response ends.
    pending: Option<PendingGuard>,
}

impl Exchange {
    pub fn begin(metrics: Arc<Metrics>, direction: Direction, service: ServiceName) -> Self {
        let labels = RequestLabels { direction, service };
        metrics.requests.get_or_create(&labels).inc();
        Exchange {
            metrics,
            labels,
            start: Instant::now(),
            pending: None,
        }
    }

    pub fn hold(&mut self, guard: PendingGuard) {
        self.pending = Some(guard);
    }

    /// Wraps the response so that its end is classified and recorded.
    pub fn respond(self, resp: http::Response<Incoming>) -> http::Response<BoxBody> {
        let class = Classification::from_headers(resp.status(), resp.headers());
        let (parts, body) = resp.into_parts();
        let body = ClassifiedBody::new(boxed(body), class, Box::new(move |c| self.record(c)));
        http::Response::from_parts(parts, crate::body::boxed(body))
    }

    /// The mesh answers instead of the service.
    pub fn fail(self, err: ProxyError, grpc: bool) -> http::Response<BoxBody> {
        let code = err.code();
        tracing::debug!(direction = ?self.labels.direction, service = %self.labels.service, error = %err, "request failed in the mesh");
        let resp = err.into_response(grpc);
        let mut class = Classification::from_headers(resp.status(), resp.headers());
        class.error = Some(code);
        self.record(&class);
        resp
    }

    fn record(self, c: &Classification) {
        let m = &self.metrics;
        m.latency
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
        m.responses
            .get_or_create(&ResponseLabels {
                direction: self.labels.direction,
                service: self.labels.service.clone(),
                status: c.status.as_u16(),
                grpc_status: c.grpc_status.map(|s| s.to_string()).unwrap_or_default(),
                error: c.error.unwrap_or(""),
            })
            .inc();
    }
}
