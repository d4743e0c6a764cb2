//! Endurance and overload, kept from rotting (issue 13): the soak and the
//! overload run of `weft-soak`, shortened for CI, on the debug build.
//!
//! The soak: 60 s at 500 rps through an mTLS pair (real control plane and
//! sidecar processes; resilience, 1% tracing to an OTLP receiver and
//! authorization on) with a certificate rotation every 15 s. 500 rps, not
//! the documented run's 5,000: a debug pair on this 2-core machine tops out
//! at a few thousand calls per second, and a soak must run well below its
//! maximum, or it measures queueing, not leaks. Judged: 0 failed calls,
//! no growth of descriptors, threads or tasks (medians, small slack), a
//! renewal of each sidecar in every 15 s, and RSS growth under 35%.
//!
//! Looser than the documented run on purpose, because CI's machine is
//! shared with its host: in one CI run a stall of five seconds (p99
//! 738 ms at 500 rps) queued calls, and RSS rose +22% in one step with
//! the stall, flat for the 40 s before and after it: the allocator's
//! high-water mark, not a leak. 35% of ~22 MB still fails a leak of
//! about 500 bytes a call (15,000 calls lie between the two spans).
//! Latency drift and each sidecar's CPU per call are printed (`INFO`),
//! not judged, for the same reason, and so is anonymous memory, of which
//! such a stall is a larger share; `weft-soak soak` judges all three on a
//! quiet machine, memory by its anonymous part (docs/performance.md).
//!
//! Overload: 3× the measured maximum for 10 s from callers on 4
//! connections that keep at most 3,200 calls outstanding: shed with UNAVAILABLE `overloaded`, no
//! failure but sheds and the policy's per-try timeouts, each sidecar's
//! peak RSS under 64 MB (measured 32 MB), and every call of the last
//! second watched after the load drops served. The time until p50 is
//! back within 1.5× of before (2 s in the documented run) is printed,
//! not judged, for the same reason as the soak's latency.
//!
//! Both run alone (`.config/nextest.toml`): other tests' load would be
//! measured with them, and theirs would be disturbed. Together about 90 s.

use std::time::Duration;

use weft_tests::soak::endurance::{SoakConfig, Tolerances, run_soak};
use weft_tests::soak::overload::{OverloadConfig, run_overload};
use weft_tests::soak::verdict::{all_pass, render};
use weft_tests::util::init_logs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minute_of_load_with_rotations_fails_nothing_and_grows_nothing() -> anyhow::Result<()> {
    init_logs();
    weft_proto::identity::install_provider();
    let report = run_soak(SoakConfig {
        rate: 500.0,
        duration: Duration::from_secs(60),
        interval: Duration::from_secs(5),
        warmup: Duration::from_secs(15),
        span: Duration::from_secs(15),
        rotation: Duration::from_secs(15),
        connections: 4,
        max_in_flight: 2000,
        timeout: Duration::from_secs(5),
        tolerances: Tolerances {
            anon_growth: None,
            rss_growth: Some(0.35),
            memory_floor_kb: 256,
            fd_slack: 2,
            thread_slack: 1,
            task_slack: 4,
            p50_ratio: 1.5,
            p99_ratio: 2.0,
            p50_floor_us: 1_000,
            p99_floor_us: 5_000,
            cpu_ratio: 1.5,
            judge_latency: false,
        },
        print: false,
    })
    .await?;
    let verdicts = report.verdicts();
    println!("{}\n\n{}", report.table(), render(&verdicts));
    assert!(all_pass(&verdicts), "{}", render(&verdicts));
    assert_eq!(report.rows.len(), 12, "a row every 5 s");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_times_the_maximum_rate_is_shed_bounded_and_recovered_from() -> anyhow::Result<()> {
    init_logs();
    weft_proto::identity::install_provider();
    let report = run_overload(OverloadConfig {
        measure: Duration::from_secs(3),
        concurrency: 64,
        normal_rate: 200.0,
        normal: Duration::from_secs(3),
        factor: 3.0,
        duration: Duration::from_secs(10),
        // Few connections, as gRPC clients keep (one per target), each
        // asked for hundreds of calls at once, most of them answered before
        // their bodies (sheds). With 32 connections, a CI run once saw 5
        // calls refused a stream (h2 still counted answered ones); with 4,
        // at the 200 streams a connection from the app could then have
        // open, thousands were, and h2 ended the connections (its reset
        // and small-frame budgets). Fixed in `proxy::h2` (its tests make
        // the race exact); the app's connections now take 4,096 streams,
        // so that such callers meet the sidecar's limit, not their own
        // clients' queues, and this checks they are shed, not failed.
        connections: 4,
        max_in_flight: 3200,
        timeout: Duration::from_secs(5),
        rss_bound_mb: 64.0,
        window: Duration::from_millis(250),
        watch: Duration::from_secs(4),
        ratio: 1.5,
        recover: Duration::from_secs(2),
        judge_recovery_time: false,
        // The default limit's mechanism (no maxConcurrentRequests in the
        // policy, the sidecar's own bound applies) at a value scaled to the
        // debug build: 128 calls at its ~1,600 rps is 80 ms of queue, as
        // the default 1024 is at the release build's 12,700 rps. At 1024 a
        // debug pair queues 1.3 s, past the policy's 1 s per-try timeout.
        sidecar_limit: Some(128),
    })
    .await?;
    let verdicts = report.verdicts();
    println!("{}\n\n{}", report.table(), render(&verdicts));
    assert!(all_pass(&verdicts), "{}", render(&verdicts));
    assert!(
        report.offered_rps > 2.0 * report.max_rps,
        "the generator offered {:.0} rps, not well over the maximum {:.0}",
        report.offered_rps,
        report.max_rps
    );
    Ok(())
}
