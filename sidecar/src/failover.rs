//! Which control-plane replica this sidecar talks to. `--control-plane`
//! is a list (and a name may resolve to several addresses); the sidecar
//! tries them in an order of its own (`weft_proto::addresses`: a
//! rendezvous hash with a seed drawn at start), so that a fleet spreads
//! over the replicas and a lost replica's sidecars spread over the rest.
//! The discovery stream and the certificate renewals share one position
//! in that order: a replica that failed one is not tried first by the
//! other. Past the last address, the list is resolved again (a name's
//! addresses may have changed) and the order starts over; the callers
//! wait with their jittered backoff between tries.
//!
//! Rebalancing: a sidecar that moved down its order (its first choice
//! died) checks now and then (`--control-plane-rebalance`, jittered so a
//! fleet does not return at once) whether a replica it prefers answers
//! again, and returns to it. Without this, a replica that restarts stays
//! empty while the others carry its share until they fail in turn; Consul's
//! clients rebalance their servers the same way. The move is cheap: the
//! sidecar resumes with what it holds, and its instance stays in the
//! catalog throughout (the new replica takes the registration over).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use weft_proto::addresses::{Candidate, ControlPlaneList, preference_order};

/// No address to try: every entry failed to resolve.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no control-plane address resolved: {}", .failed.iter().map(|(e, r)| format!("{e}: {r}")).collect::<Vec<_>>().join("; "))]
pub struct NoAddress {
    pub failed: Vec<(String, String)>,
}

/// The replicas, in this sidecar's order, and where it is in that order.
pub struct ControlPlanes {
    list: ControlPlaneList,
    seed: u64,
    /// How often a sidecar away from its first choice looks for a replica
    /// it prefers; `None`: it stays where it is.
    rebalance: Option<Duration>,
    round: Mutex<Round>,
}

/// `--control-plane-rebalance`'s default: a restarted replica gets its
/// sidecars back within about a minute, spread over that minute.
pub const DEFAULT_REBALANCE: Duration = Duration::from_secs(60);

/// One pass over the resolved addresses.
#[derive(Default)]
struct Round {
    order: Vec<Candidate>,
    at: usize,
}

impl std::fmt::Debug for ControlPlanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlanes")
            .field("list", &self.text())
            .finish_non_exhaustive()
    }
}

impl ControlPlanes {
    /// With a random seed: this sidecar's own order.
    pub fn new(list: ControlPlaneList, rebalance: Option<Duration>) -> Arc<Self> {
        Self::with_seed(list, crate::rand::next_u64(), rebalance)
    }

    pub fn with_seed(list: ControlPlaneList, seed: u64, rebalance: Option<Duration>) -> Arc<Self> {
        Arc::new(ControlPlanes {
            list,
            seed,
            rebalance,
            round: Mutex::new(Round::default()),
        })
    }

    /// How often it looks for a preferred replica (`None`: never).
    pub fn rebalance(&self) -> Option<Duration> {
        self.rebalance
    }

    /// The list as given.
    pub fn list(&self) -> &ControlPlaneList {
        &self.list
    }

    /// The list as given, for messages.
    pub fn text(&self) -> String {
        self.list
            .entries()
            .iter()
            .map(|e| e.text.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn round(&self) -> std::sync::MutexGuard<'_, Round> {
        self.round.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The addresses left in this round, the current one first (resolving
    /// the list when a round begins).
    pub async fn in_order(&self) -> Result<Vec<Candidate>, NoAddress> {
        {
            let r = self.round();
            if r.at < r.order.len() {
                return Ok(r.order[r.at..].to_vec());
            }
        }
        let (mut found, failed) = self.list.resolve().await;
        for (entry, reason) in &failed {
            tracing::warn!(%entry, %reason, "a control-plane address does not resolve");
        }
        if found.is_empty() {
            return Err(NoAddress { failed });
        }
        preference_order(&mut found, self.seed);
        let mut r = self.round();
        // Another caller may have begun the round meanwhile: keep theirs.
        if r.at >= r.order.len() {
            r.order = found;
            r.at = 0;
        }
        Ok(r.order[r.at..].to_vec())
    }

    /// The address to use now.
    pub async fn current(&self) -> Result<Candidate, NoAddress> {
        let mut all = self.in_order().await?;
        Ok(all.swap_remove(0))
    }

    /// `failed` could not be reached, or its stream ended: the next address
    /// takes its place, unless another caller moved on already.
    pub fn failed(&self, failed: &Candidate) {
        let mut r = self.round();
        if r.order.get(r.at) == Some(failed) {
            r.at += 1;
            if let Some(next) = r.order.get(r.at) {
                tracing::info!(from = %failed, to = %next, "moving to another control-plane replica");
            }
        }
    }

    /// Returns once a replica this sidecar prefers to `at` answers
    /// `probe`, looking every rebalance interval (jittered in [½, 1½] of
    /// it). Pending forever when `at` is its first choice (or rebalancing
    /// is off), so a session can always wait on it.
    pub async fn preferred_again<F, Fut>(&self, at: &Candidate, mut probe: F) -> Candidate
    where
        F: FnMut(Candidate) -> Fut,
        Fut: Future<Output = bool>,
    {
        let Some(every) = self.rebalance else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(every.mul_f64(0.5 + crate::rand::unit())).await;
            let earlier = {
                let r = self.round();
                match r.order.iter().position(|c| c == at) {
                    Some(i) => r.order[..i].to_vec(),
                    None => Vec::new(),
                }
            };
            if earlier.is_empty() {
                return std::future::pending().await;
            }
            for c in earlier {
                if probe(c.clone()).await {
                    return c;
                }
            }
        }
    }

    /// Makes `to` the current address (a preferred replica that answers
    /// again), so that the stream and the renewals both go there.
    pub fn move_to(&self, to: &Candidate) {
        let mut r = self.round();
        if let Some(i) = r.order.iter().position(|c| c == to) {
            r.at = i;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::backoff::Backoff;

    fn planes(seed: u64) -> Arc<ControlPlanes> {
        let list = ControlPlaneList::parse(
            "https://127.0.0.1:1001,https://127.0.0.2:1002,https://127.0.0.3:1003",
        )
        .expect("valid");
        ControlPlanes::with_seed(list, seed, Some(Duration::from_secs(60)))
    }

    #[tokio::test]
    async fn a_failed_replica_gives_way_to_the_next_then_the_round_starts_over() {
        let cps = planes(7);
        let order = cps.in_order().await.expect("resolved");
        assert_eq!(order.len(), 3);
        assert_eq!(cps.current().await.expect("one"), order[0]);
        cps.failed(&order[0]);
        assert_eq!(cps.current().await.expect("one"), order[1]);
        // A stale report (the stream and a renewal both saw it fail) moves once.
        cps.failed(&order[0]);
        assert_eq!(cps.current().await.expect("one"), order[1]);
        assert_eq!(cps.in_order().await.expect("rest"), order[1..].to_vec());
        cps.failed(&order[1]);
        cps.failed(&order[2]);
        // Resolved again, the same order (same seed).
        assert_eq!(cps.in_order().await.expect("again"), order);
    }

    #[tokio::test]
    async fn sidecars_with_other_seeds_start_on_other_replicas() {
        let mut first = std::collections::BTreeMap::new();
        for seed in 0..300u64 {
            let c = planes(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15))
                .current()
                .await
                .expect("one");
            *first.entry(c.addr.port()).or_insert(0) += 1;
        }
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(first.values().all(|&n| n > 60), "{first:?}");
    }

    /// The reconnect loop's timing: a replica dies, the sidecar moves to
    /// the next after one short jittered delay; every address failing
    /// backs off exponentially up to the cap, never in lockstep.
    #[tokio::test(start_paused = true)]
    async fn failing_over_waits_a_jittered_growing_delay() {
        let cps = planes(3);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let start = tokio::time::Instant::now();
        let mut tried = Vec::new();
        for _ in 0..8 {
            let c = cps.current().await.expect("one");
            tried.push((c.addr.port(), start.elapsed()));
            cps.failed(&c);
            tokio::time::sleep(backoff.next_delay()).await;
        }
        let ports: Vec<u16> = tried.iter().map(|t| t.0).collect();
        // Each round tries every replica once, in the same order.
        assert_eq!(ports[0..3], ports[3..6]);
        let mut distinct = ports[0..3].to_vec();
        distinct.sort_unstable();
        assert_eq!(distinct, vec![1001, 1002, 1003]);
        // Delays: in [d/2, d] for d = 100, 200, 400 … ms.
        let gaps: Vec<u128> = tried
            .windows(2)
            .map(|w| (w[1].1 - w[0].1).as_millis())
            .collect();
        for (i, gap) in gaps.iter().enumerate() {
            let d = (100u128 << i).min(5_000);
            assert!(*gap >= d / 2 && *gap <= d, "gap {i}: {gap} ms, d = {d}");
        }
    }

    /// After failing over, the sidecar looks for its first choice once per
    /// jittered interval, and returns only when it answers; on its first
    /// choice it never looks.
    #[tokio::test(start_paused = true)]
    async fn a_sidecar_returns_to_its_first_choice_once_it_answers_again() {
        let cps = planes(11);
        let order = cps.in_order().await.expect("resolved");
        cps.failed(&order[0]);
        let at = cps.current().await.expect("one");
        assert_eq!(at, order[1]);
        let probes = AtomicUsize::new(0);
        let start = tokio::time::Instant::now();
        let back = cps
            .preferred_again(&at, |c| {
                assert_eq!(c, order[0], "only a preferred replica is probed");
                // Down for the first two looks.
                let n = probes.fetch_add(1, Ordering::Relaxed);
                async move { n >= 2 }
            })
            .await;
        assert_eq!(back, order[0]);
        assert_eq!(probes.load(Ordering::Relaxed), 3);
        // Three jittered intervals of 60 s: each in [30 s, 90 s].
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(90) && waited <= Duration::from_secs(270),
            "{waited:?}"
        );
        cps.move_to(&back);
        assert_eq!(cps.current().await.expect("one"), order[0]);
        // On its first choice, nothing is probed, ever.
        let idle = cps.preferred_again(&order[0], |_| async { panic!("probed") });
        let r = tokio::time::timeout(Duration::from_secs(3600), idle).await;
        assert!(r.is_err(), "on the first choice it stays");
    }
}
