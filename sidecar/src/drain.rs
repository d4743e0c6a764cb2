//! Graceful shutdown: a signal that tells every connection to finish what it
//! is doing, and a way to wait until all of them have.

use std::time::Duration;

use tokio::sync::watch;

/// Held by whoever decides to shut down.
pub struct Signal(watch::Sender<bool>);

/// Held by each connection for as long as it runs.
#[derive(Clone)]
pub struct Watch(watch::Receiver<bool>);

pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    (Signal(tx), Watch(rx))
}

impl Signal {
    /// Tells every watcher to drain, then waits until all have dropped their
    /// `Watch` or `timeout` passes. Returns whether all finished in time.
    pub async fn drain(self, timeout: Duration) -> bool {
        let _ = self.0.send(true);
        tokio::time::timeout(timeout, self.0.closed()).await.is_ok()
    }
}

impl Watch {
    /// Resolves once draining has begun.
    pub async fn signaled(&mut self) {
        let _ = self.0.wait_for(|d| *d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_for_watchers_until_the_timeout() {
        let (signal, watch) = channel();
        let mut w = watch.clone();
        let conn = tokio::spawn(async move {
            w.signaled().await;
            tokio::time::sleep(Duration::from_secs(1)).await; // finishing its work
            drop(w);
        });
        drop(watch);
        assert!(signal.drain(Duration::from_secs(5)).await);
        let _ = conn.await;

        let (signal, watch) = channel();
        let stuck = tokio::spawn(async move {
            let _keep = watch;
            std::future::pending::<()>().await
        });
        assert!(!signal.drain(Duration::from_secs(5)).await);
        stuck.abort();
    }
}
