//! A tiny per-thread random number generator for balancing and jitter: fast,
//! lock-free, and good enough where no security is at stake.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish() | 1
}

/// xorshift64*: the next pseudo-random number.
pub fn next_u64() -> u64 {
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        s.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// A number in `0..n` (`n` > 0).
pub fn below(n: usize) -> usize {
    ((next_u64() >> 32) as usize * n) >> 32
}

/// A float in `[0, 1)`.
pub fn unit() -> f64 {
    (next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    #[test]
    fn below_stays_in_range_and_spreads() {
        let mut counts = [0u32; 3];
        for _ in 0..30_000 {
            counts[super::below(3)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
        assert!(
            (0..1000)
                .map(|_| super::unit())
                .all(|u| (0.0..1.0).contains(&u))
        );
    }
}
