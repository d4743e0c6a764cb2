//! The data path: listeners, protocol detection, and the outbound and
//! inbound request handlers.
//!
//! ```text
//! app ─► outbound listener / upstream port ─► detect ─► hyper (h1/h2)
//!     ─► resolve service ─► pick endpoint (P2C peak-EWMA | round robin)
//!     ─► pooled HTTP/2 to the peer sidecar ─► (mTLS: next issue)
//! peer ─► inbound listener ─► detect ─► hyper ─► local app (h1 or h2)
//! ```

mod classify;
mod detect;
mod exchange;
mod headers;
mod inbound;
mod outbound;
mod server;
mod tcp;

pub use classify::{Classification, ClassifiedBody};
pub use detect::{Detected, classify as detect_protocol};
pub use inbound::App;
pub use server::{Listener, serve};

use std::sync::Arc;

use weft_proto::name::ServiceName;
use weft_proto::protocol::Protocol;

use crate::config::Timeouts;
use crate::endpoint::{Connector, TcpConnector};
use crate::table::Routes;

/// What every listener of one sidecar shares.
pub struct Proxy {
    /// The local service.
    pub service: ServiceName,
    /// The local app's protocol.
    pub protocol: Protocol,
    pub routes: Arc<Routes>,
    /// Metrics, spans, the access log and route names.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    pub app: Option<App>,
    /// Connections to peers (TLS will wrap this).
    pub connector: Arc<dyn Connector>,
    /// Connections to the local app (always plain, on loopback).
    pub app_connector: Arc<TcpConnector>,
    pub timeouts: Timeouts,
    /// Mutual TLS on the inbound listener; `None` with a static config,
    /// which runs plaintext.
    pub tls: Option<Arc<crate::identity::tls::LazyAcceptor>>,
    /// What the inbound side enforces: mode and authorization.
    pub inbound_policy: Arc<arc_swap::ArcSwap<crate::authz::InboundPolicy>>,
}
