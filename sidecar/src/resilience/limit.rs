//! Request limits of a service: at most N requests in flight
//! (`maxConcurrentRequests`) and at most M waiting for a connection or a
//! stream (`maxPendingRequests`). Over a limit a request is refused at once
//! (`overloaded`), never queued: a queue in a sidecar only hides the
//! overload from the caller and adds its latency to every request.
//!
//! Why not tower's `ConcurrencyLimit`: it waits for a permit (a queue) and
//! is owned by one service stack, while these counts belong to a service
//! across every connection and live on through config updates, whose
//! limits may change under requests in flight. A counter read against the
//! limit in force does exactly that with one atomic add.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One count of requests, shared by every request to a service.
#[derive(Debug, Clone, Default)]
pub struct Limit(Arc<AtomicUsize>);

/// A request over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverLimit {
    pub limit: usize,
}

impl Limit {
    /// Counts one request while the permit lives, unless that would make
    /// more than `max`. Without a limit nothing is counted.
    pub fn acquire(&self, max: Option<usize>) -> Result<Option<Permit>, OverLimit> {
        let Some(limit) = max else {
            return Ok(None);
        };
        if self.0.fetch_add(1, Ordering::Relaxed) >= limit {
            self.0.fetch_sub(1, Ordering::Relaxed);
            return Err(OverLimit { limit });
        }
        Ok(Some(Permit(self.0.clone())))
    }

    /// Requests counted now.
    pub fn current(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// Holds one place under a limit until dropped.
#[derive(Debug)]
pub struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_over_the_limit_and_frees_on_drop() {
        let l = Limit::default();
        let a = l.acquire(Some(2)).expect("first");
        let b = l.acquire(Some(2)).expect("second");
        assert_eq!(l.acquire(Some(2)).err(), Some(OverLimit { limit: 2 }));
        assert_eq!(l.current(), 2, "a refusal leaves no count behind");
        drop(a);
        let c = l.acquire(Some(2)).expect("a place again");
        assert!(b.is_some() && c.is_some());
    }

    #[test]
    fn no_limit_counts_nothing_and_a_lower_limit_applies_at_once() {
        let l = Limit::default();
        assert!(l.acquire(None).expect("unlimited").is_none());
        assert_eq!(l.current(), 0);
        let held: Vec<_> = (0..3).map(|_| l.acquire(Some(10)).expect("ok")).collect();
        // The config now says 2: the next request is refused while 3 run.
        assert!(l.acquire(Some(2)).is_err());
        drop(held);
        assert!(l.acquire(Some(2)).is_ok());
    }
}
