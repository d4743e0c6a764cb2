//! Balancing: which endpoint of a service takes one attempt. Round robin,
//! or power of two choices over peak-EWMA cost (`endpoint::load`): two
//! endpoints drawn at random, the cheaper per unit of weight wins. Either
//! way only admissible endpoints are drawn: not ejected (unless so many are
//! that ejection is ignored), not already tried by this request (unless all
//! were), and an ejected endpoint whose time is up takes the attempt as
//! its one probe.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;
use weft_proto::protocol::LoadBalancer;

use super::target::{Pick, Target};
use crate::endpoint::{Endpoint, prefer_second};
use crate::resilience::breaker::Admit;

/// How many random draws P2C makes before it looks at every endpoint.
const DRAWS: usize = 8;

/// Who may take this attempt.
struct Admission<'a> {
    tried: &'a [Arc<str>],
    endpoints: usize,
    /// So many are ejected that ejection is ignored.
    panic: bool,
    now: Instant,
}

impl Admission<'_> {
    /// May `e` take the attempt? (Marks a due probe as taken.)
    fn check(&self, e: &Endpoint) -> Admit {
        if self.tried.contains(&e.spec.addr) && self.tried.len() < self.endpoints {
            return Admit::No;
        }
        if self.panic {
            Admit::Yes
        } else {
            e.peer.outlier.admit(self.now)
        }
    }
}

fn pick(e: &Arc<Endpoint>, probe: bool) -> Pick {
    Pick {
        endpoint: e.clone(),
        probe,
    }
}

impl Target {
    /// Picks the endpoint for one request.
    pub fn pick(&self) -> Option<Pick> {
        self.pick_excluding(&[])
    }

    /// Picks an endpoint, avoiding `tried` (a retry goes elsewhere when it
    /// can) and ejected ones (unless in panic mode).
    pub fn pick_excluding(&self, tried: &[Arc<str>]) -> Option<Pick> {
        if self.ready.is_empty() {
            return None;
        }
        let admission = Admission {
            tried,
            endpoints: self.ready.len(),
            panic: self.panic(),
            now: Instant::now(),
        };
        Some(match self.policy.balance {
            LoadBalancer::RoundRobin => self.round_robin(&admission),
            LoadBalancer::P2cEwma => self.p2c(&admission),
        })
    }

    /// Whether so many endpoints are ejected that ejection is ignored (panic
    /// mode: better to spread over all than to overload the few left).
    fn panic(&self) -> bool {
        let n = self.ready.len();
        let ejected = self.ejected.load(Ordering::Relaxed).min(n);
        ejected == n
            || ejected * 100 > n * self.policy.resilience.breaker.max_ejected_percent as usize
    }

    /// The next admissible endpoint in turn; if none is, the next in turn.
    fn round_robin(&self, admission: &Admission<'_>) -> Pick {
        let n = self.ready.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let e = &self.ready[(start + k) % n];
            match admission.check(e) {
                Admit::Yes => return pick(e, false),
                Admit::Probe => return pick(e, true),
                Admit::No => {}
            }
        }
        pick(&self.ready[start % n], false)
    }

    /// Power of two choices among admissible endpoints.
    fn p2c(&self, admission: &Admission<'_>) -> Pick {
        let n = self.ready.len();
        // Two candidates, without a heap allocation per request.
        let mut found: [Option<&Arc<Endpoint>>; 2] = [None, None];
        let mut count = 0;
        let random = (0..DRAWS).map(|_| &self.ready[crate::rand::below(n)]);
        // Few admissible: after the random draws, every endpoint once.
        for e in random.chain(self.ready.iter()) {
            if count == 2 {
                break;
            }
            if found[..count].iter().flatten().any(|f| Arc::ptr_eq(f, e)) {
                continue;
            }
            match admission.check(e) {
                Admit::Yes => {
                    found[count] = Some(e);
                    count += 1;
                }
                Admit::Probe => return pick(e, true),
                Admit::No => {}
            }
        }
        match found {
            [Some(a), Some(b)] => {
                let second =
                    prefer_second((&a.peer.load, a.spec.weight), (&b.peer.load, b.spec.weight));
                pick(if second { b } else { a }, false)
            }
            [Some(one), None] => pick(one, false),
            _ => pick(&self.ready[crate::rand::below(n)], false),
        }
    }
}
