//! Local rate limits: token buckets kept per key (every request, a client
//! address, a header's value, a caller's identity), in this process only.
//!
//! Each bucket is one number, its "theoretical arrival time" (GCRA, the
//! token bucket's equivalent that needs no refill loop): a request is let
//! through when, after adding one emission interval (`period / requests`),
//! the bucket's time is at most `burst` intervals ahead of now. Time is
//! counted in nanoseconds × `requests`, so the interval is exactly
//! `period` nanoseconds and no rate rounds. The map of buckets is bounded:
//! when it is full, buckets that have refilled are forgotten (losing
//! nothing), then those closest to full.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::{HeaderMap, Response};
use tokio::time::Instant;
use weft_proto::name::ServiceName;
use weft_proto::routing::{RateKey, RateLimit};

use crate::body::BoxBody;
use crate::error::ProxyError;

/// How many keys one limiter tracks at most.
pub const MAX_KEYS: usize = 10_000;

/// Keys longer than this (a long header value) are kept as a prefix and a
/// hash, so that a flood of huge values cannot hold much memory.
const MAX_KEY_LEN: usize = 128;

/// A request over the limit, and how long until the next one would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

/// The bucket a request draws from, borrowed from the request: looking up
/// an existing bucket allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a>(KeyBytes<'a>);

#[derive(Debug, Clone, Copy)]
enum KeyBytes<'a> {
    Borrowed(&'a [u8]),
    /// An IP address's octets (4 or 16).
    Ip([u8; 16], usize),
}

impl Key<'_> {
    /// The one bucket of requests without a key (every request for
    /// `RateKey::All`; those without the header, or without a mesh
    /// identity, otherwise).
    pub const SHARED: Key<'static> = Key(KeyBytes::Borrowed(b""));

    fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            KeyBytes::Borrowed(b) => b,
            KeyBytes::Ip(b, len) => &b[..*len],
        }
    }
}

/// The key of a request under `limit`: `client` is the connection's peer
/// (at a gateway) and `caller` the mesh identity mutual TLS proved.
pub fn key_of<'a>(
    limit: &RateLimit,
    client: IpAddr,
    headers: &'a HeaderMap,
    caller: Option<&'a ServiceName>,
) -> Key<'a> {
    match &limit.key {
        RateKey::All => Key::SHARED,
        RateKey::ClientIp => {
            let mut buf = [0u8; 16];
            // An IPv4 client seen over an IPv6 socket is the same client.
            let len = match client.to_canonical() {
                IpAddr::V4(v4) => {
                    buf[..4].copy_from_slice(&v4.octets());
                    4
                }
                IpAddr::V6(v6) => {
                    buf.copy_from_slice(&v6.octets());
                    16
                }
            };
            Key(KeyBytes::Ip(buf, len))
        }
        RateKey::Header(name) => headers
            .get(name)
            .map_or(Key::SHARED, |v| Key(KeyBytes::Borrowed(v.as_bytes()))),
        RateKey::Caller => caller.map_or(Key::SHARED, |c| {
            Key(KeyBytes::Borrowed(c.as_str().as_bytes()))
        }),
    }
}

/// One limit's buckets.
#[derive(Debug)]
pub struct Limiter {
    limit: RateLimit,
    /// Nanoseconds per emission interval, in the scaled unit: `period`.
    interval: u128,
    /// How far ahead of now a bucket may run: `burst` intervals.
    tolerance: u128,
    max_keys: usize,
    hasher: RandomState,
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    /// Time zero of the scaled clock: the first request seen.
    epoch: Option<Instant>,
    /// The theoretical arrival time of each key, scaled.
    tat: HashMap<Box<[u8]>, u128>,
}

impl Limiter {
    pub fn new(limit: &RateLimit) -> Self {
        Self::with_max_keys(limit, MAX_KEYS)
    }

    /// A limiter tracking at most `max_keys` keys (at least 1).
    pub fn with_max_keys(limit: &RateLimit, max_keys: usize) -> Self {
        let interval = limit.period.as_nanos();
        Limiter {
            limit: limit.clone(),
            interval,
            tolerance: interval * u128::from(limit.burst.max(1)),
            max_keys: max_keys.max(1),
            hasher: RandomState::new(),
            buckets: Mutex::new(Buckets::default()),
        }
    }

    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Takes one token from `key`'s bucket at `now`, or says how long
    /// until one is there.
    pub fn check(&self, key: Key<'_>, now: Instant) -> Result<(), RetryAfter> {
        let long;
        let mut bytes = key.as_bytes();
        if bytes.len() > MAX_KEY_LEN {
            long = self.shorten(bytes);
            bytes = &long;
        }
        // A poisoned lock only means a panic elsewhere mid-update; the
        // numbers are still numbers.
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let epoch = *b.epoch.get_or_insert(now);
        let now = now.saturating_duration_since(epoch).as_nanos() * u128::from(self.limit.requests);
        if let Some(tat) = b.tat.get_mut(bytes) {
            let next = (*tat).max(now) + self.interval;
            if next - now > self.tolerance {
                return Err(self.retry_after(next - now - self.tolerance));
            }
            *tat = next;
            return Ok(());
        }
        if b.tat.len() >= self.max_keys {
            self.evict(&mut b.tat, now);
        }
        // A new bucket is full: this request takes its first token.
        b.tat.insert(bytes.into(), now + self.interval);
        Ok(())
    }

    fn retry_after(&self, scaled: u128) -> RetryAfter {
        let nanos = scaled.div_ceil(u128::from(self.limit.requests));
        RetryAfter(Duration::from_nanos(
            u64::try_from(nanos).unwrap_or(u64::MAX),
        ))
    }

    /// A long key as its first bytes and a hash of the whole: longer than
    /// any key kept as it is, so the two kinds never meet.
    fn shorten(&self, bytes: &[u8]) -> Vec<u8> {
        let mut h = self.hasher.build_hasher();
        h.write(bytes);
        let mut out = Vec::with_capacity(MAX_KEY_LEN + 8);
        out.extend_from_slice(&bytes[..MAX_KEY_LEN]);
        out.extend_from_slice(&h.finish().to_be_bytes());
        out
    }

    /// Makes room for a tenth of the keys at once, so that a flood of new
    /// keys pays for a sweep only every `max_keys / 10` requests: first
    /// the buckets that have refilled (forgetting them changes nothing),
    /// then those closest to full (their keys start over with a full
    /// bucket: at most `burst` more requests each).
    fn evict(&self, tat: &mut HashMap<Box<[u8]>, u128>, now: u128) {
        tat.retain(|_, t| *t > now);
        let target = self.max_keys - (self.max_keys / 10).max(1);
        if tat.len() <= target {
            return;
        }
        let mut times: Vec<u128> = tat.values().copied().collect();
        let excess = tat.len() - target;
        let (_, cut, _) = times.select_nth_unstable(excess - 1);
        let cut = *cut;
        let mut left = excess;
        tat.retain(|_, t| {
            if left > 0 && *t <= cut {
                left -= 1;
                false
            } else {
                true
            }
        });
    }

    /// How many keys are tracked now.
    pub fn keys(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .tat
            .len()
    }
}

/// The answer to a request over a limit: HTTP `429 Too Many Requests` with
/// `Retry-After` (whole seconds, rounded up), or for gRPC a trailers-only
/// `RESOURCE_EXHAUSTED` with a message; both carry
/// `x-weft-error: rate-limited`. `what` names what is limited (a service,
/// a route) in the message.
pub fn rejection(what: &str, retry: RetryAfter, grpc: bool) -> Response<BoxBody> {
    rejection_error(what, retry).into_response(grpc)
}

/// The same as an error, for paths that record failures through
/// `Exchange::fail`.
pub fn rejection_error(what: &str, retry: RetryAfter) -> ProxyError {
    ProxyError::RateLimited {
        what: what.to_string(),
        retry_after: retry.0,
    }
}

/// A limiter that outlives policy pushes: the same buckets as long as the
/// limit stays the same, new ones when it changes, none when it is gone.
#[derive(Debug, Default)]
pub struct SharedLimiter {
    current: ArcSwapOption<Limiter>,
}

impl SharedLimiter {
    /// The limiter for `limit` as the policy in force says it.
    pub fn get(&self, limit: Option<&RateLimit>) -> Option<Arc<Limiter>> {
        let Some(limit) = limit else {
            if self.current.load().is_some() {
                self.current.store(None);
            }
            return None;
        };
        let cur = self.current.load_full();
        if let Some(l) = &cur
            && l.limit() == limit
        {
            return cur;
        }
        let new = Arc::new(Limiter::new(limit));
        // Two requests that both saw the change keep whichever limiter was
        // stored first, so no token is counted in a bucket thrown away.
        let prev = self.current.compare_and_swap(&cur, Some(new.clone()));
        let same = match (&*prev, &cur) {
            (Some(p), Some(c)) => Arc::ptr_eq(p, c),
            (None, None) => true,
            _ => false,
        };
        if same {
            Some(new)
        } else {
            self.current.load_full()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn limit(requests: u32, period: Duration, burst: u32, key: RateKey) -> RateLimit {
        RateLimit::new(requests, period, burst, key).expect("limit")
    }

    #[tokio::test(start_paused = true)]
    async fn ten_at_once_then_one_every_hundred_ms() {
        let l = Limiter::new(&limit(10, Duration::from_secs(1), 10, RateKey::All));
        let t0 = Instant::now();
        for i in 0..10 {
            assert_eq!(l.check(Key::SHARED, t0), Ok(()), "request {i}");
        }
        assert_eq!(
            l.check(Key::SHARED, t0),
            Err(RetryAfter(Duration::from_millis(100)))
        );
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(
            l.check(Key::SHARED, Instant::now()),
            Err(RetryAfter(Duration::from_millis(1)))
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(l.check(Key::SHARED, Instant::now()), Ok(()));
        assert!(
            l.check(Key::SHARED, Instant::now()).is_err(),
            "one per 100 ms"
        );
        // Over ten seconds at a steady 100 rps exactly 100 pass.
        let mut passed = 0;
        for _ in 0..1000 {
            tokio::time::advance(Duration::from_millis(10)).await;
            passed += u32::from(l.check(Key::SHARED, Instant::now()).is_ok());
        }
        assert_eq!(passed, 100);
    }

    #[test]
    fn a_rate_that_does_not_divide_evenly_does_not_drift() {
        // 3 per second: intervals of 333.33 ms, exact over a long run.
        let l = Limiter::new(&limit(3, Duration::from_secs(1), 3, RateKey::All));
        let t0 = Instant::now();
        let mut passed = 0;
        for ms in 0..=60_000u64 {
            passed += u32::from(l.check(Key::SHARED, t0 + Duration::from_millis(ms)).is_ok());
        }
        assert_eq!(passed, 183, "the burst of 3, then three a second for 60 s");
    }

    #[test]
    fn buckets_are_per_key() {
        let rl = limit(1, Duration::from_secs(60), 2, RateKey::ClientIp);
        let l = Limiter::new(&rl);
        let h = HeaderMap::new();
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "::ffff:10.0.0.2".parse().expect("ip");
        let t = Instant::now();
        for _ in 0..2 {
            assert!(l.check(key_of(&rl, a, &h, None), t).is_ok());
        }
        assert!(l.check(key_of(&rl, a, &h, None), t).is_err());
        assert!(l.check(key_of(&rl, b, &h, None), t).is_ok());
        let b4: IpAddr = "10.0.0.2".parse().expect("ip");
        assert!(l.check(key_of(&rl, b4, &h, None), t).is_ok());
        assert!(
            l.check(key_of(&rl, b4, &h, None), t).is_err(),
            "an IPv4-mapped address is the IPv4 client"
        );

        let rl = limit(1, Duration::from_secs(60), 1, RateKey::Caller);
        let l = Limiter::new(&rl);
        let orders = ServiceName::parse("orders").expect("name");
        let users = ServiceName::parse("users").expect("name");
        assert!(l.check(key_of(&rl, a, &h, Some(&orders)), t).is_ok());
        assert!(l.check(key_of(&rl, a, &h, Some(&orders)), t).is_err());
        assert!(l.check(key_of(&rl, a, &h, Some(&users)), t).is_ok());
        assert!(
            l.check(key_of(&rl, a, &h, None), t).is_ok(),
            "no identity: the shared bucket"
        );

        let rl = limit(
            1,
            Duration::from_secs(60),
            1,
            RateLimit::header_key("x-api-key").expect("key"),
        );
        let l = Limiter::new(&rl);
        let mut h1 = HeaderMap::new();
        h1.insert("x-api-key", HeaderValue::from_static("k1"));
        let long = "k".repeat(10_000);
        let mut h2 = HeaderMap::new();
        h2.insert("x-api-key", HeaderValue::from_str(&long).expect("v"));
        assert!(l.check(key_of(&rl, a, &h1, None), t).is_ok());
        assert!(l.check(key_of(&rl, a, &h1, None), t).is_err());
        assert!(l.check(key_of(&rl, a, &h2, None), t).is_ok());
        assert!(
            l.check(key_of(&rl, a, &h2, None), t).is_err(),
            "a long value is one key too"
        );
        assert!(l.check(key_of(&rl, a, &HeaderMap::new(), None), t).is_ok());
    }

    #[test]
    fn a_flood_of_new_keys_stays_bounded_and_keeps_busy_buckets() {
        let rl = limit(1, Duration::from_secs(60), 1, RateKey::ClientIp);
        let l = Limiter::with_max_keys(&rl, 100);
        let h = HeaderMap::new();
        let t = Instant::now();
        let busy: IpAddr = "192.0.2.1".parse().expect("ip");
        assert!(l.check(key_of(&rl, busy, &h, None), t).is_ok());
        // Later keys are further from full than the busy one's bucket...
        for i in 0..10_000u32 {
            let ip = IpAddr::from(i.to_be_bytes().map(|b| b | 0x80));
            let at = t + Duration::from_millis(u64::from(i) + 1);
            let _ = l.check(key_of(&rl, ip, &h, None), at);
            assert!(l.keys() <= 100);
        }
        // ...so the busy one was forgotten first, and only gets a new burst.
        let later = t + Duration::from_secs(11);
        assert!(l.check(key_of(&rl, busy, &h, None), later).is_ok());
        assert!(l.check(key_of(&rl, busy, &h, None), later).is_err());

        // Refilled buckets go first.
        let l = Limiter::with_max_keys(&rl, 10);
        for i in 0..10u8 {
            let ip = IpAddr::from([10, 0, 0, i]);
            assert!(l.check(key_of(&rl, ip, &h, None), t).is_ok());
        }
        let fresh = t + Duration::from_secs(61);
        assert!(l.check(key_of(&rl, busy, &h, None), fresh).is_ok());
        assert_eq!(l.keys(), 1, "every refilled bucket was dropped");
    }

    #[test]
    fn the_shared_limiter_keeps_its_buckets_until_the_limit_changes() {
        let s = SharedLimiter::default();
        let a = limit(1, Duration::from_secs(60), 1, RateKey::All);
        let t = Instant::now();
        let l = s.get(Some(&a)).expect("limiter");
        assert!(l.check(Key::SHARED, t).is_ok());
        let again = s.get(Some(&a.clone())).expect("limiter");
        assert!(Arc::ptr_eq(&l, &again));
        assert!(again.check(Key::SHARED, t).is_err(), "the same bucket");
        let b = limit(2, Duration::from_secs(60), 1, RateKey::All);
        let other = s.get(Some(&b)).expect("limiter");
        assert!(!Arc::ptr_eq(&l, &other));
        assert!(other.check(Key::SHARED, t).is_ok());
        assert!(s.get(None).is_none());
        assert!(
            s.get(Some(&b))
                .expect("limiter")
                .check(Key::SHARED, t)
                .is_ok()
        );
    }

    #[tokio::test]
    async fn rejections_for_http_and_grpc() {
        let r = rejection("route api", RetryAfter(Duration::from_millis(100)), false);
        assert_eq!(r.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "1");
        let r = rejection("route api", RetryAfter(Duration::from_millis(100)), true);
        assert_eq!(r.status(), http::StatusCode::OK);
        assert_eq!(r.headers()["grpc-status"], "8");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert!(
            r.headers()["grpc-message"]
                .to_str()
                .expect("ascii")
                .contains("route api is over its rate limit")
        );
    }
}
