//! Logs of Weft's programs: JSON lines on stderr, filtered like `RUST_LOG`
//! (`info`, `weft_sidecar=debug,info`, …), and the filter changeable while
//! the program runs (the admin ports' `/log-level`). Shared here because the
//! sidecar and the control plane must behave alike.

use std::sync::{Arc, Mutex};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "{filter:?} is not a valid log filter ({reason}); e.g. info, debug, or weft_sidecar=debug,info"
    )]
    Filter { filter: String, reason: String },
    #[error("logging is already set up in this process")]
    AlreadySet,
    #[error("the log filter cannot be changed now")]
    Reload,
}

/// The running process's log filter.
pub struct LogLevel {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl std::fmt::Debug for LogLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogLevel")
            .field("current", &self.get())
            .finish()
    }
}

fn parse(filter: &str) -> Result<EnvFilter, LogError> {
    let filter = filter.trim();
    EnvFilter::builder()
        .parse(filter)
        .map_err(|e| LogError::Filter {
            filter: filter.to_string(),
            reason: e.to_string(),
        })
}

impl LogLevel {
    /// The filter in force.
    pub fn get(&self) -> String {
        self.current.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Puts `filter` in force; an invalid one changes nothing.
    pub fn set(&self, filter: &str) -> Result<(), LogError> {
        let f = parse(filter)?;
        self.handle.reload(f).map_err(|_| LogError::Reload)?;
        if let Ok(mut c) = self.current.lock() {
            *c = filter.trim().to_string();
        }
        Ok(())
    }
}

/// The admin ports' `/log-level` (both programs answer it alike): GET
/// shows the filter in force, PUT or POST puts the body (at most 4 KiB) in
/// force, an invalid filter is refused with the reason and changes nothing.
/// `level` is `None` when the program runs inside another that owns
/// logging. Returns the status and a plain-text body.
pub async fn admin_request<B>(
    level: Option<&LogLevel>,
    req: http::Request<B>,
) -> (http::StatusCode, String)
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use http::StatusCode;
    use http_body_util::BodyExt;
    let Some(level) = level else {
        return (
            StatusCode::NOT_IMPLEMENTED,
            "this program runs inside another, which owns its logging\n".into(),
        );
    };
    match *req.method() {
        http::Method::GET => (StatusCode::OK, format!("{}\n", level.get())),
        http::Method::PUT | http::Method::POST => {
            let body = match http_body_util::Limited::new(req.into_body(), 4096)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return (
                        StatusCode::BAD_REQUEST,
                        format!("cannot read the filter: {e}\n"),
                    );
                }
            };
            match level.set(&String::from_utf8_lossy(&body)) {
                Ok(()) => {
                    tracing::info!(filter = %level.get(), "log filter changed");
                    (StatusCode::OK, format!("{}\n", level.get()))
                }
                Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
            }
        }
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "GET the log filter, or PUT a new one\n".into(),
        ),
    }
}

/// Installs JSON logging on stderr with `filter`, for the whole process.
pub fn init(filter: &str) -> Result<Arc<LogLevel>, LogError> {
    let (layer, handle) = reload::Layer::new(parse(filter)?);
    tracing_subscriber::registry()
        .with(layer)
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr),
        )
        .try_init()
        .map_err(|_| LogError::AlreadySet)?;
    Ok(Arc::new(LogLevel {
        handle,
        current: Mutex::new(filter.trim().to_string()),
    }))
}
