//! The sidecar's side of the discovery stream: say who we are, apply each
//! update (or reject it with a reason), keep the last good config through
//! control-plane outages, and reconnect with jittered backoff.

mod client;
mod state;

pub use client::{DiscoveryClient, Member};
pub use state::{ConfigState, convert_update};

use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

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
}

/// Shared, lock-free view of [`Status`].
pub struct StatusCell(ArcSwap<Status>);

impl StatusCell {
    pub fn new(state: StreamState) -> Arc<Self> {
        Arc::new(StatusCell(ArcSwap::from_pointee(Status {
            state,
            version: 0,
            has_config: state == StreamState::Static,
            last_nack: None,
            reconnects: 0,
        })))
    }

    pub fn get(&self) -> Arc<Status> {
        self.0.load_full()
    }

    pub fn update(&self, f: impl Fn(&mut Status)) {
        self.0.rcu(|s| {
            let mut s = Status::clone(s);
            f(&mut s);
            s
        });
    }
}
