//! Outlier ejection for one endpoint: after N consecutive failures it is
//! ejected for a time that doubles with each ejection in a row (up to a
//! cap); then it is half-open, and exactly one request probes it. A success
//! restores it, a failure ejects it again for longer. The share of a
//! service's endpoints that may be ejected at once is enforced by the
//! caller (`Target`), which knows them all.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::policy::BreakerConfig;

/// May this endpoint take a request now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Half-open: this request is the one probe.
    Probe,
    No,
}

/// What a result did to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Wants ejecting (the caller decides whether the service can spare it).
    WouldEject,
    Restored,
    /// A failed probe: ejected again, for longer.
    Reejected(Instant),
}

#[derive(Default)]
struct State {
    failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections in a row, for the growing ejection time.
    ejections: u32,
    probing: bool,
    last_ejected: Option<Instant>,
}

#[derive(Default)]
pub struct Outlier {
    state: Mutex<State>,
}

impl Outlier {
    pub fn admit(&self, now: Instant) -> Admit {
        let Ok(mut s) = self.state.lock() else {
            return Admit::Yes;
        };
        match s.ejected_until {
            None => Admit::Yes,
            Some(until) if now < until || s.probing => Admit::No,
            Some(_) => {
                s.probing = true;
                Admit::Probe
            }
        }
    }

    /// Whether it is out of rotation (ejected, or half-open with its probe out).
    pub fn is_ejected(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.ejected_until.is_some())
            .unwrap_or(false)
    }

    /// Until when it is ejected (for /config and metrics).
    pub fn ejected_until(&self) -> Option<Instant> {
        self.state.lock().ok().and_then(|s| s.ejected_until)
    }

    fn duration(cfg: &BreakerConfig, ejections: u32) -> Duration {
        let factor = 1u32 << ejections.saturating_sub(1).min(16);
        cfg.base.saturating_mul(factor).min(cfg.max)
    }

    /// Ejects it now (the caller checked the service can spare it).
    pub fn eject(&self, now: Instant, cfg: &BreakerConfig) -> Instant {
        let Ok(mut s) = self.state.lock() else {
            return now;
        };
        // A long healthy spell since the last ejection starts the count over.
        if s.last_ejected
            .is_some_and(|t| now.saturating_duration_since(t) > cfg.max * 2)
        {
            s.ejections = 0;
        }
        s.ejections += 1;
        let until = now + Self::duration(cfg, s.ejections);
        s.ejected_until = Some(until);
        s.last_ejected = Some(now);
        s.probing = false;
        s.failures = 0;
        until
    }

    pub fn record(
        &self,
        success: bool,
        probe: bool,
        now: Instant,
        cfg: &BreakerConfig,
    ) -> Transition {
        let Ok(mut s) = self.state.lock() else {
            return Transition::None;
        };
        if probe {
            s.probing = false;
        }
        if success {
            s.failures = 0;
            if s.ejected_until.is_some() && probe {
                s.ejected_until = None;
                return Transition::Restored;
            }
            return Transition::None;
        }
        if probe {
            s.ejections += 1;
            let until = now + Self::duration(cfg, s.ejections);
            s.ejected_until = Some(until);
            s.last_ejected = Some(now);
            return Transition::Reejected(until);
        }
        s.failures += 1;
        if s.ejected_until.is_none() && s.failures >= cfg.consecutive_failures {
            Transition::WouldEject
        } else {
            Transition::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            base: Duration::from_secs(30),
            max: Duration::from_secs(300),
            max_ejected_percent: 50,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_after_consecutive_failures_then_probes_once() {
        let o = Outlier::default();
        let c = cfg();
        let now = Instant::now();
        assert_eq!(o.record(false, false, now, &c), Transition::None);
        assert_eq!(
            o.record(true, false, now, &c),
            Transition::None,
            "a success resets the count"
        );
        assert_eq!(o.record(false, false, now, &c), Transition::None);
        assert_eq!(o.record(false, false, now, &c), Transition::None);
        assert_eq!(o.record(false, false, now, &c), Transition::WouldEject);
        o.eject(now, &c);
        assert_eq!(o.admit(Instant::now()), Admit::No);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(o.admit(Instant::now()), Admit::No);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(o.admit(Instant::now()), Admit::Probe);
        assert_eq!(o.admit(Instant::now()), Admit::No, "one probe at a time");
        assert_eq!(
            o.record(true, true, Instant::now(), &c),
            Transition::Restored
        );
        assert_eq!(o.admit(Instant::now()), Admit::Yes);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_ejects_for_longer_up_to_the_cap() {
        let o = Outlier::default();
        let c = cfg();
        o.eject(Instant::now(), &c);
        let mut expected = Duration::from_secs(30);
        for _ in 0..6 {
            tokio::time::advance(expected).await;
            assert_eq!(o.admit(Instant::now()), Admit::Probe);
            expected = (expected * 2).min(c.max);
            assert_eq!(
                o.record(false, true, Instant::now(), &c),
                Transition::Reejected(Instant::now() + expected)
            );
        }
        assert_eq!(expected, Duration::from_secs(300));
    }
}
