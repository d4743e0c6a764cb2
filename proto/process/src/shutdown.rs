//! The signal both programs stop on.

/// Resolves on SIGTERM or Ctrl-C (SIGINT), and logs that shutdown began.
/// If SIGTERM cannot be watched, only Ctrl-C ends it.
pub async fn on_signal() {
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    match term {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
