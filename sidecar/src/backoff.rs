//! Jittered exponential backoff: between retries of a request, renewals of
//! the certificate and reconnects to the control plane, so that many
//! callers (a fleet of sidecars after an outage) do not retry in lockstep.

use std::time::Duration;

pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniformly in [d/2, d], d = min(max, base × 2^attempt).
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(16));
        let d = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        d.mul_f64(0.5 + 0.5 * crate::rand::unit())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let expect = [100u64, 200, 400, 800, 1600, 3200, 5000, 5000];
        for e in expect {
            let d = b.next_delay().as_millis() as u64;
            assert!(d >= e / 2 && d <= e, "{d} not in [{}, {e}]", e / 2);
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
