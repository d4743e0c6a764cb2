//! A `Service`'s resilience settings: retries, timeouts, circuit breaking,
//! hedging and fault injection. The control plane only validates and pushes
//! them (as the wire messages, which callers' sidecars turn into their own
//! types); unset fields take the defaults documented in `mesh.proto`.
//!
//! ```yaml
//! spec:
//!   retries:
//!     attempts: 3
//!     on: [unavailable, connect-failure, refused-stream, gateway-error]
//!     perTryTimeout: 500ms
//!     backoff: {base: 25ms, max: 250ms}
//!     budget: {ratio: 0.2, minPerSecond: 10}
//!     nonIdempotent: false
//!     maxReplayBytes: 65536
//!   timeouts: {request: 5s, idle: 5m}
//!   circuitBreaker:
//!     consecutiveFailures: 5
//!     baseEjection: 30s
//!     maxEjection: 5m
//!     maxEjectedPercent: 50
//!     maxConcurrentRequests: 1000
//!     maxPendingRequests: 100
//!   hedging: {grpcMethods: ["/pkg.Service/Get*"], delay: 20ms}
//!   faults:
//!     delay: {percent: 10, duration: 100ms}
//!     abort: {percent: 5, grpcStatus: 14, httpStatus: 503}
//! ```

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};
use weft_proto::duration::{format_duration, parse_duration};
use weft_proto::grpc::GrpcCode;
use weft_proto::pattern::MethodPattern;
use weft_proto::retry::RetryCondition;
use weft_proto::v1 as pb;

/// The settings as pushed; `None`: all defaults.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Resilience {
    pub retry: Option<pb::RetryPolicy>,
    pub timeouts: Option<pb::TimeoutPolicy>,
    pub circuit_breaker: Option<pb::CircuitBreakerPolicy>,
    pub hedge: Option<pb::HedgePolicy>,
    pub fault: Option<pb::FaultPolicy>,
}

/// Checks the settings; errors are (field path under `spec`, reason).
pub fn validate(r: &Resilience) -> Vec<(String, String)> {
    let mut e = Vec::new();
    if let Some(p) = &r.retry {
        if p.attempts > 10 {
            e.push(("retries.attempts".into(), "at most 10 tries".into()));
        }
        for (i, c) in p.on.iter().enumerate() {
            if let Err(err) = RetryCondition::parse(c) {
                e.push((format!("retries.on[{i}]"), err.to_string()));
            }
        }
        if !(0.0..=1.0).contains(&p.budget_ratio) || p.budget_ratio.is_nan() {
            e.push((
                "retries.budget.ratio".into(),
                "must be between 0 and 1".into(),
            ));
        }
        if p.backoff_base_ms > 0 && p.backoff_max_ms > 0 && p.backoff_base_ms > p.backoff_max_ms {
            e.push(("retries.backoff".into(), "base must not exceed max".into()));
        }
    }
    if let Some(c) = &r.circuit_breaker {
        if c.max_ejected_percent > 100 {
            e.push((
                "circuitBreaker.maxEjectedPercent".into(),
                "at most 100".into(),
            ));
        }
        if c.base_ejection_ms > 0 && c.max_ejection_ms > 0 && c.base_ejection_ms > c.max_ejection_ms
        {
            e.push((
                "circuitBreaker".into(),
                "baseEjection must not exceed maxEjection".into(),
            ));
        }
    }
    if let Some(h) = &r.hedge {
        if h.grpc_methods.is_empty() {
            e.push((
                "hedging.grpcMethods".into(),
                "name the idempotent methods to hedge".into(),
            ));
        }
        for (i, m) in h.grpc_methods.iter().enumerate() {
            if let Err(err) = MethodPattern::parse(m) {
                e.push((format!("hedging.grpcMethods[{i}]"), err.to_string()));
            }
        }
    }
    if let Some(f) = &r.fault {
        for (field, pct) in [
            ("faults.delay.percent", f.delay_percent),
            ("faults.abort.percent", f.abort_percent),
        ] {
            if pct > 100 {
                e.push((field.into(), "a percentage, at most 100".into()));
            }
        }
        // 0 is unset (the sidecar's default, UNAVAILABLE).
        let code = u16::try_from(f.abort_grpc_status)
            .ok()
            .and_then(GrpcCode::from_u16);
        if code.is_none() {
            e.push((
                "faults.abort.grpcStatus".into(),
                "a gRPC status code, 1 to 16".into(),
            ));
        }
        if f.abort_http_status != 0 && !(400..600).contains(&f.abort_http_status) {
            e.push((
                "faults.abort.httpStatus".into(),
                "an HTTP error status, 400 to 599".into(),
            ));
        }
    }
    e
}

fn ms(s: &Option<String>, path: &str, errs: &mut Vec<(String, String)>) -> u64 {
    match s {
        None => 0,
        Some(text) => match parse_duration(text) {
            Ok(d) if d.is_zero() => {
                errs.push((path.into(), "must be more than 0".into()));
                0
            }
            Ok(d) => d.as_millis() as u64,
            Err(e) => {
                errs.push((path.into(), e.to_string()));
                0
            }
        },
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawResilience {
    pub retries: Option<RawRetries>,
    pub timeouts: Option<RawTimeouts>,
    pub circuit_breaker: Option<RawBreaker>,
    pub hedging: Option<RawHedge>,
    pub faults: Option<RawFaults>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawRetries {
    attempts: Option<u32>,
    #[serde(default)]
    on: Vec<String>,
    per_try_timeout: Option<String>,
    backoff: Option<RawBackoff>,
    budget: Option<RawBudget>,
    #[serde(default)]
    non_idempotent: bool,
    max_replay_bytes: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    base: Option<String>,
    max: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawBudget {
    ratio: Option<f64>,
    min_per_second: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    request: Option<String>,
    idle: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawBreaker {
    consecutive_failures: Option<u32>,
    base_ejection: Option<String>,
    max_ejection: Option<String>,
    max_ejected_percent: Option<u32>,
    max_concurrent_requests: Option<u32>,
    max_pending_requests: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawHedge {
    grpc_methods: Vec<String>,
    delay: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFaults {
    delay: Option<RawDelay>,
    abort: Option<RawAbort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelay {
    percent: u32,
    duration: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAbort {
    percent: u32,
    grpc_status: Option<u32>,
    http_status: Option<u32>,
}

impl RawResilience {
    /// Turns the YAML form into the pushed form; errors are (path under `spec`, reason).
    pub fn convert(self) -> Result<Resilience, Vec<(String, String)>> {
        let mut e = Vec::new();
        let retry = self.retries.map(|r| {
            let base = ms(
                &r.backoff.as_ref().and_then(|b| b.base.clone()),
                "retries.backoff.base",
                &mut e,
            );
            let max = ms(
                &r.backoff.as_ref().and_then(|b| b.max.clone()),
                "retries.backoff.max",
                &mut e,
            );
            if r.attempts == Some(0) {
                e.push((
                    "retries.attempts".into(),
                    "at least 1 (1: no retries)".into(),
                ));
            }
            pb::RetryPolicy {
                attempts: r.attempts.unwrap_or(0),
                on: r.on,
                per_try_timeout_ms: ms(&r.per_try_timeout, "retries.perTryTimeout", &mut e),
                backoff_base_ms: base,
                backoff_max_ms: max,
                budget_ratio: r.budget.as_ref().and_then(|b| b.ratio).unwrap_or(0.0),
                budget_min_per_second: r
                    .budget
                    .as_ref()
                    .and_then(|b| b.min_per_second)
                    .unwrap_or(0),
                non_idempotent: r.non_idempotent,
                max_replay_bytes: r.max_replay_bytes.unwrap_or(0),
            }
        });
        let timeouts = self.timeouts.map(|t| pb::TimeoutPolicy {
            request_ms: ms(&t.request, "timeouts.request", &mut e),
            idle_ms: ms(&t.idle, "timeouts.idle", &mut e),
        });
        let circuit_breaker = self.circuit_breaker.map(|c| pb::CircuitBreakerPolicy {
            consecutive_failures: c.consecutive_failures.unwrap_or(0),
            base_ejection_ms: ms(&c.base_ejection, "circuitBreaker.baseEjection", &mut e),
            max_ejection_ms: ms(&c.max_ejection, "circuitBreaker.maxEjection", &mut e),
            max_ejected_percent: c.max_ejected_percent.unwrap_or(0),
            max_concurrent_requests: c.max_concurrent_requests.unwrap_or(0),
            max_pending_requests: c.max_pending_requests.unwrap_or(0),
        });
        let hedge = self.hedging.map(|h| pb::HedgePolicy {
            grpc_methods: h.grpc_methods,
            delay_ms: ms(&h.delay, "hedging.delay", &mut e),
        });
        let fault = self.faults.map(|f| pb::FaultPolicy {
            delay_percent: f.delay.as_ref().map_or(0, |d| d.percent),
            delay_ms: ms(
                &f.delay.as_ref().map(|d| d.duration.clone()),
                "faults.delay.duration",
                &mut e,
            ),
            abort_percent: f.abort.as_ref().map_or(0, |a| a.percent),
            abort_grpc_status: f.abort.as_ref().and_then(|a| a.grpc_status).unwrap_or(0),
            abort_http_status: f.abort.as_ref().and_then(|a| a.http_status).unwrap_or(0),
        });
        let r = Resilience {
            retry,
            timeouts,
            circuit_breaker,
            hedge,
            fault,
        };
        e.extend(validate(&r));
        if e.is_empty() { Ok(r) } else { Err(e) }
    }
}

/// A duration in milliseconds as the text users write, printed as
/// everywhere else in the mesh (`/config` too).
fn dur(ms: u64) -> Value {
    json!(format_duration(Duration::from_millis(ms)))
}

/// Puts a key in `m` unless the value is a default (0, empty).
fn put(m: &mut Map<String, Value>, key: &str, set: bool, v: Value) {
    if set {
        m.insert(key.into(), v);
    }
}

/// The YAML/JSON form, only what was set (reads back the same).
pub fn to_value(r: &Resilience, spec: &mut Map<String, Value>) {
    if let Some(p) = &r.retry {
        let mut m = Map::new();
        put(&mut m, "attempts", p.attempts != 0, json!(p.attempts));
        put(&mut m, "on", !p.on.is_empty(), json!(p.on));
        put(
            &mut m,
            "perTryTimeout",
            p.per_try_timeout_ms != 0,
            dur(p.per_try_timeout_ms),
        );
        let mut b = Map::new();
        put(
            &mut b,
            "base",
            p.backoff_base_ms != 0,
            dur(p.backoff_base_ms),
        );
        put(&mut b, "max", p.backoff_max_ms != 0, dur(p.backoff_max_ms));
        put(&mut m, "backoff", !b.is_empty(), Value::Object(b));
        let mut g = Map::new();
        put(
            &mut g,
            "ratio",
            p.budget_ratio != 0.0,
            json!(p.budget_ratio),
        );
        put(
            &mut g,
            "minPerSecond",
            p.budget_min_per_second != 0,
            json!(p.budget_min_per_second),
        );
        put(&mut m, "budget", !g.is_empty(), Value::Object(g));
        put(&mut m, "nonIdempotent", p.non_idempotent, json!(true));
        put(
            &mut m,
            "maxReplayBytes",
            p.max_replay_bytes != 0,
            json!(p.max_replay_bytes),
        );
        spec.insert("retries".into(), Value::Object(m));
    }
    if let Some(t) = &r.timeouts {
        let mut m = Map::new();
        put(&mut m, "request", t.request_ms != 0, dur(t.request_ms));
        put(&mut m, "idle", t.idle_ms != 0, dur(t.idle_ms));
        spec.insert("timeouts".into(), Value::Object(m));
    }
    if let Some(c) = &r.circuit_breaker {
        let mut m = Map::new();
        put(
            &mut m,
            "consecutiveFailures",
            c.consecutive_failures != 0,
            json!(c.consecutive_failures),
        );
        put(
            &mut m,
            "baseEjection",
            c.base_ejection_ms != 0,
            dur(c.base_ejection_ms),
        );
        put(
            &mut m,
            "maxEjection",
            c.max_ejection_ms != 0,
            dur(c.max_ejection_ms),
        );
        put(
            &mut m,
            "maxEjectedPercent",
            c.max_ejected_percent != 0,
            json!(c.max_ejected_percent),
        );
        put(
            &mut m,
            "maxConcurrentRequests",
            c.max_concurrent_requests != 0,
            json!(c.max_concurrent_requests),
        );
        put(
            &mut m,
            "maxPendingRequests",
            c.max_pending_requests != 0,
            json!(c.max_pending_requests),
        );
        spec.insert("circuitBreaker".into(), Value::Object(m));
    }
    if let Some(h) = &r.hedge {
        let mut m = Map::new();
        m.insert("grpcMethods".into(), json!(h.grpc_methods));
        put(&mut m, "delay", h.delay_ms != 0, dur(h.delay_ms));
        spec.insert("hedging".into(), Value::Object(m));
    }
    if let Some(f) = &r.fault {
        let mut m = Map::new();
        if f.delay_percent != 0 || f.delay_ms != 0 {
            m.insert(
                "delay".into(),
                json!({"percent": f.delay_percent, "duration": dur(f.delay_ms)}),
            );
        }
        if f.abort_percent != 0 || f.abort_grpc_status != 0 || f.abort_http_status != 0 {
            let mut a = Map::new();
            a.insert("percent".into(), json!(f.abort_percent));
            put(
                &mut a,
                "grpcStatus",
                f.abort_grpc_status != 0,
                json!(f.abort_grpc_status),
            );
            put(
                &mut a,
                "httpStatus",
                f.abort_http_status != 0,
                json!(f.abort_http_status),
            );
            m.insert("abort".into(), Value::Object(a));
        }
        spec.insert("faults".into(), Value::Object(m));
    }
}
