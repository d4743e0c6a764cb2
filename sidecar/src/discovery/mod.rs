//! The sidecar's side of the discovery stream: say who we are, apply each
//! update (or reject it with a reason), keep the last good config through
//! control-plane outages, and reconnect with jittered backoff. Every
//! message from the wire becomes model types in [`convert`] first.

mod client;
pub mod convert;
mod state;

pub use client::{DiscoveryClient, Member};
pub use convert::{ConvertError, convert_update};
pub use state::ConfigState;

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::watch;

/// The stream's state, as `/config`, `/ready` and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamState {
    /// No stream yet, or reconnecting before the first config.
    Connecting,
    /// Has applied the control plane's current state.
    Synced,
    /// Lost the stream; serving the last good config while reconnecting.
    Stale,
    /// Running from a static file: no control plane.
    Static,
}

impl StreamState {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Connecting => "connecting",
            StreamState::Synced => "synced",
            StreamState::Stale => "stale",
            StreamState::Static => "static",
        }
    }
}

/// What the admin endpoint reports about config.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub state: StreamState,
    /// The last version applied (0: none yet).
    pub version: u64,
    /// Whether a first config was ever applied (the sidecar is ready).
    pub has_config: bool,
    pub last_nack: Option<String>,
    pub reconnects: u64,
    /// The control-plane replica the stream last synced with.
    pub replica: Option<String>,
}

/// The shared [`Status`]: read by the admin endpoint, written by the
/// discovery client, and followed (gRPC health turns SERVING on the first
/// config) without polling.
pub struct StatusCell(watch::Sender<Status>);

impl StatusCell {
    pub fn new(state: StreamState) -> Arc<Self> {
        Arc::new(StatusCell(watch::Sender::new(Status {
            state,
            version: 0,
            has_config: state == StreamState::Static,
            last_nack: None,
            reconnects: 0,
            replica: None,
        })))
    }

    pub fn get(&self) -> Status {
        self.0.borrow().clone()
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        self.0.send_modify(f);
    }

    /// Follows the status: woken by every update.
    pub fn watch(&self) -> watch::Receiver<Status> {
        self.0.subscribe()
    }
}
