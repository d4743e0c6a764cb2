//! One request/response exchange as the metrics see it: counted when it
//! starts, classified once and recorded when it ends.

use std::sync::Arc;

use hyper::body::Incoming;
use tokio::time::Instant;

use super::classify::{Classification, ClassifiedBody};
use crate::body::{BoxBody, boxed};
use crate::error::ProxyError;
use crate::metrics::{Direction, Metrics, RequestLabels, ResponseLabels};
use crate::model::ServiceName;

/// Called with the final classification (outlier detection reads it).
pub type Report = Box<dyn FnOnce(&Classification) + Send>;

pub struct Exchange {
    metrics: Arc<Metrics>,
    labels: RequestLabels,
    start: Instant,
    report: Option<Report>,
}

impl Exchange {
    pub fn begin(metrics: Arc<Metrics>, direction: Direction, service: ServiceName) -> Self {
        let labels = RequestLabels { direction, service };
        metrics.requests.get_or_create(&labels).inc();
        Exchange {
            metrics,
            labels,
            start: Instant::now(),
            report: None,
        }
    }

    /// Also tells `report` how the exchange ended.
    pub fn report_to(&mut self, report: Report) {
        self.report = Some(report);
    }

    /// Wraps the response so that its end is classified and recorded.
    pub fn respond(self, resp: http::Response<Incoming>) -> http::Response<BoxBody> {
        self.respond_boxed(resp.map(boxed))
    }

    /// The same, for a body already boxed (replayed frames, deadlines).
    pub fn respond_boxed(self, resp: http::Response<BoxBody>) -> http::Response<BoxBody> {
        let class = Classification::from_headers(resp.status(), resp.headers());
        let (parts, body) = resp.into_parts();
        let body = ClassifiedBody::new(body, class, Box::new(move |c| self.record(c)));
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

    fn record(mut self, c: &Classification) {
        if let Some(r) = self.report.take() {
            r(c);
        }
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
