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

use std::sync::{Arc, Mutex};

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
    round: Mutex<Round>,
}

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
    pub fn new(list: ControlPlaneList) -> Arc<Self> {
        Self::with_seed(list, crate::rand::next_u64())
    }

    pub fn with_seed(list: ControlPlaneList, seed: u64) -> Arc<Self> {
        Arc::new(ControlPlanes {
            list,
            seed,
            round: Mutex::new(Round::default()),
        })
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::backoff::Backoff;

    fn planes(seed: u64) -> Arc<ControlPlanes> {
        let list = ControlPlaneList::parse(
            "https://127.0.0.1:1001,https://127.0.0.2:1002,https://127.0.0.3:1003",
        )
        .expect("valid");
        ControlPlanes::with_seed(list, seed)
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
}
