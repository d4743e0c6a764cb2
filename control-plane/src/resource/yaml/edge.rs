//! What a front door adds to the YAML, shared by the kinds that carry it:
//! a token bucket as users write it (`requests` per `period`, `burst`), for
//! a route rule's `RateLimit` filter and a `Service`'s `rateLimit`.

use weft_proto::routing::{RateKey, RateLimit};

use super::DocErrors;
use super::resilience::duration;

/// `requests` per `period` (a duration: `1s`, `1m`), up to `burst` at
/// once (unset: `requests`), one bucket per `key`; problems under `at`.
pub(super) fn rate_limit(
    at: &str,
    requests: u32,
    period: &str,
    burst: Option<u32>,
    key: RateKey,
    errs: &mut DocErrors<'_>,
) -> Option<RateLimit> {
    let period = duration(Some(period), &format!("{at}.period"), errs)?;
    if burst == Some(0) {
        errs.push(
            format!("{at}.burst"),
            "at least 1; leave it out for the rate itself",
        );
        return None;
    }
    RateLimit::new(requests, period, burst.unwrap_or(0), key)
        .map_err(|e| {
            let field = match e {
                weft_proto::routing::EdgeError::NoRequests => "requests",
                _ => "period",
            };
            errs.push(format!("{at}.{field}"), e)
        })
        .ok()
}
