//! Renewal: at about 70% of a certificate's lifetime (spread by jitter so
//! that sidecars started together do not renew together), retried with
//! backoff until it works. From files: the files are checked every
//! [`FILE_CHECK`] and loaded again when they change.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Identity;
use crate::backoff::Backoff;
use crate::drain;
use crate::metrics::{Metrics, RenewalLabels};

/// When to renew a certificate valid from `issued` to `expires`: at a
/// fraction of its lifetime drawn from [0.65, 0.75) by `r` in [0, 1).
pub fn renew_at(issued: SystemTime, expires: SystemTime, r: f64) -> SystemTime {
    let life = expires.duration_since(issued).unwrap_or_default();
    issued + life.mul_f64(0.65 + 0.10 * r.clamp(0.0, 1.0))
}

/// How often certificate files are looked at for a change.
pub const FILE_CHECK: Duration = Duration::from_secs(2);

impl Identity {
    /// Renews the certificate for as long as the sidecar runs.
    pub async fn run_renewal(self: Arc<Self>, metrics: Arc<Metrics>, mut drain: drain::Watch) {
        if self.files().is_some() {
            return self.watch_files(metrics, drain).await;
        }
        loop {
            let Some(current) = self.current() else {
                return;
            };
            let at = renew_at(current.issued, current.expires, crate::rand::unit());
            let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = drain.signaled() => return,
            }
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
            loop {
                match self.obtain().await {
                    Ok(_) => {
                        metrics
                            .renewals
                            .get_or_create(&RenewalLabels { result: "ok" })
                            .inc();
                        break;
                    }
                    Err(e) => {
                        metrics
                            .renewals
                            .get_or_create(&RenewalLabels { result: "failed" })
                            .inc();
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "certificate renewal failed");
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = drain.signaled() => return,
                        }
                    }
                }
            }
        }
    }
}

impl Identity {
    /// Loads the files again whenever one changes. A set that does not load
    /// (half written, wrong key, another service) is refused and counted;
    /// the current certificate stays until a good set arrives.
    async fn watch_files(self: Arc<Self>, metrics: Arc<Metrics>, mut drain: drain::Watch) {
        let Some(files) = self.files() else { return };
        let mut seen = files.stamp();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FILE_CHECK) => {}
                _ = drain.signaled() => return,
            }
            let now = files.stamp();
            if now == seen {
                continue;
            }
            seen = now;
            let result = match self.obtain().await {
                Ok(_) => "ok",
                Err(e) => {
                    tracing::warn!(error = %e, "the certificate files changed but cannot be used; keeping the current certificate");
                    "failed"
                }
            };
            metrics
                .renewals
                .get_or_create(&RenewalLabels { result })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_between_65_and_75_percent_of_the_lifetime() {
        let issued = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let expires = issued + Duration::from_secs(100);
        assert_eq!(
            renew_at(issued, expires, 0.0),
            issued + Duration::from_secs(65)
        );
        assert_eq!(
            renew_at(issued, expires, 0.5),
            issued + Duration::from_secs(70)
        );
        let late = renew_at(issued, expires, 0.999_999);
        assert!(late < issued + Duration::from_secs(75) && late > issued + Duration::from_secs(74));
        // An already expired certificate is renewed at once (no panic on time going backwards).
        assert_eq!(renew_at(expires, issued, 0.5), expires);
    }
}
