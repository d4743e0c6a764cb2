//! Load on the echo service: an open loop at a fixed rate (each call sent
//! on its tick in a task of its own, so a slow answer never delays the
//! next send) with a bound on the calls in flight, and a closed loop for
//! the maximum rate. Calls are spread over several HTTP/2 connections, as
//! several callers would make them. Every outcome goes to a [`Recorder`],
//! which the caller empties window by window.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::echo::client;
use crate::pb::EchoRequest;
use crate::pb::echo_client::EchoClient;

/// The payload of every call, both ways (the benchmark size).
pub const PAYLOAD: usize = 64;

/// One client per connection.
#[derive(Clone)]
pub struct Clients(Vec<EchoClient<Channel>>);

impl Clients {
    pub async fn connect(addr: SocketAddr, connections: usize) -> anyhow::Result<Self> {
        let mut all = Vec::new();
        for _ in 0..connections.max(1) {
            all.push(client(addr).await?);
        }
        Ok(Clients(all))
    }

    fn pick(&self, i: u64) -> EchoClient<Channel> {
        self.0[(i % self.0.len() as u64) as usize].clone()
    }
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Refused by a sidecar at a limit: UNAVAILABLE with `x-weft-error:
    /// overloaded`.
    Shed,
    /// Anything else, named (gRPC code, or `timeout`).
    Failed(String),
}

/// One call, bounded by `timeout`.
pub async fn call(c: &mut EchoClient<Channel>, timeout: Duration) -> Outcome {
    let req = EchoRequest {
        payload: vec![7; PAYLOAD],
        ..Default::default()
    };
    match tokio::time::timeout(timeout, c.unary(req)).await {
        Ok(Ok(_)) => Outcome::Ok,
        Ok(Err(s)) => {
            let weft_error = s
                .metadata()
                .get("x-weft-error")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if s.code() == tonic::Code::Unavailable && weft_error == "overloaded" {
                Outcome::Shed
            } else {
                // The message names what failed (a reset, a connection
                // lost, a status of the sidecar's), and its sources what
                // lies under it (an h2 GOAWAY's reason and debug data), so
                // a failure in a CI log can be told apart without a rerun.
                let mut why = format!("{:?} {weft_error}", s.code()).trim().to_string();
                let mut parts = vec![s.message().to_string()];
                let mut source = std::error::Error::source(&s);
                while let Some(e) = source {
                    parts.push(format!("{e:?}"));
                    source = e.source();
                }
                let parts: Vec<_> = parts.into_iter().filter(|p| !p.is_empty()).collect();
                if !parts.is_empty() {
                    let told = parts.join(" / ");
                    why = format!("{why}: {}", told.chars().take(200).collect::<String>());
                }
                Outcome::Failed(why)
            }
        }
        Err(_) => Outcome::Failed("timeout".into()),
    }
}

/// What completed in one window.
#[derive(Debug, Default, Clone)]
pub struct Bucket {
    /// Latencies of the successful calls, µs.
    pub ok_us: Vec<u32>,
    pub shed: u64,
    pub failed: u64,
    /// Sends skipped because the bound on calls in flight was reached.
    pub skipped: u64,
    /// Failures by kind (at most a few kinds are expected).
    pub errors: BTreeMap<String, u64>,
    /// Latencies of shed calls, µs (how fast a refusal comes back).
    pub shed_us: Vec<u32>,
    /// Successes whose latencies were let go ([`Bucket::forget_latencies`]).
    pub ok_dropped: u64,
}

impl Bucket {
    pub fn ok(&self) -> u64 {
        self.ok_us.len() as u64 + self.ok_dropped
    }

    /// Every call that did not succeed, skipped sends included.
    pub fn not_ok(&self) -> u64 {
        self.shed + self.failed + self.skipped
    }

    /// Keeps the counts, frees the latencies.
    pub fn forget_latencies(&mut self) {
        self.ok_dropped += self.ok_us.len() as u64;
        self.ok_us = Vec::new();
        self.shed_us = Vec::new();
    }

    pub fn merge(&mut self, other: Bucket) {
        self.ok_dropped += other.ok_dropped;
        self.ok_us.extend(other.ok_us);
        self.shed_us.extend(other.shed_us);
        self.shed += other.shed;
        self.failed += other.failed;
        self.skipped += other.skipped;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

/// The `p` quantile (0..=1) of `v`, sorting it; 0 when empty.
pub fn pct(v: &mut [u32], p: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

/// Collects outcomes as they complete.
#[derive(Default)]
pub struct Recorder(Mutex<Bucket>);

impl Recorder {
    fn record(&self, took: Duration, o: Outcome) {
        let us = took.as_micros().min(u128::from(u32::MAX)) as u32;
        let mut b = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match o {
            Outcome::Ok => b.ok_us.push(us),
            Outcome::Shed => {
                b.shed += 1;
                b.shed_us.push(us);
            }
            Outcome::Failed(why) => {
                b.failed += 1;
                *b.errors.entry(why).or_default() += 1;
            }
        }
    }

    fn skip(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).skipped += 1;
    }

    /// What completed since the last take.
    pub fn take(&self) -> Bucket {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The shape of an open loop.
#[derive(Debug, Clone, Copy)]
pub struct OpenLoop {
    pub rate: f64,
    pub duration: Duration,
    /// Calls in flight at most; a tick that finds this many skips its send
    /// (counted) rather than queue it.
    pub max_in_flight: usize,
    pub timeout: Duration,
}

/// Sends at `l.rate` for `l.duration` (and never past it by more than a
/// second: a generator that falls behind stops on time, its shortfall
/// seen in the achieved rate); returns the calls sent, once all of them
/// have completed.
pub async fn open_loop(clients: &Clients, l: OpenLoop, rec: &Arc<Recorder>) -> u64 {
    let rate = l.rate.max(1.0);
    let total = (rate * l.duration.as_secs_f64()) as u64;
    let stop = Instant::now() + l.duration + Duration::from_secs(1);
    let gate = Arc::new(Semaphore::new(l.max_in_flight.max(1)));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0;
    for i in 0..total {
        tick.tick().await;
        if Instant::now() >= stop {
            break;
        }
        let Ok(permit) = gate.clone().try_acquire_owned() else {
            rec.skip();
            continue;
        };
        let (mut c, rec) = (clients.pick(i), rec.clone());
        tasks.spawn(async move {
            let t = Instant::now();
            let o = call(&mut c, l.timeout).await;
            rec.record(t.elapsed(), o);
            drop(permit);
        });
        sent += 1;
        // Finished tasks are reaped as we go, so the set stays as small
        // as the calls in flight.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    sent
}

/// `concurrency` workers calling back to back for `duration`; returns the
/// successful calls per second.
pub async fn closed_loop(
    clients: &Clients,
    concurrency: usize,
    duration: Duration,
    timeout: Duration,
    rec: &Arc<Recorder>,
) -> f64 {
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let (mut c, rec) = (clients.pick(w as u64), rec.clone());
        workers.spawn(async move {
            let mut ok = 0u64;
            while Instant::now() < deadline {
                let t = Instant::now();
                let o = call(&mut c, timeout).await;
                ok += u64::from(o == Outcome::Ok);
                rec.record(t.elapsed(), o);
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(r) = workers.join_next().await {
        ok += r.unwrap_or(0);
    }
    ok as f64 / started.elapsed().as_secs_f64()
}
