//! The data path: listeners and protocol detection (`server`, `detect`),
//! the two halves of a sidecar — [`Outbound`] (the app's calls, a pipeline
//! in `outbound/`) and [`Inbound`] (calls to the app) — opaque TCP, and
//! what both share: the [`Outcome`] of an exchange, its observation
//! (`exchange`), and the one layered response body (`response`).
//!
//! ```text
//! app ─► outbound listener / upstream port ─► detect ─► h2 (ours) | hyper (h1)
//!     ─► Outbound: route ─► plan ─► attempts (P2C peak-EWMA | round robin)
//!     ─► pooled HTTP/2 over mutual TLS to the peer sidecar
//! peer ─► inbound listener ─► mutual TLS ─► detect ─► h2 (ours) | hyper (h1)
//!     ─► Inbound: authorization ─► local app (h1 or h2), on the port the
//!        caller named (`app`: interception keeps it) or `--app`
//! ```

mod app;
mod detect;
mod exchange;
pub mod gateway;
mod h2;
mod headers;
mod inbound;
mod intercept;
mod outbound;
mod outcome;
mod response;
mod server;
mod tcp;

pub use app::{App, AppPorts};
pub use detect::{Detected, classify as detect_protocol};
pub use h2::CallerBody;
pub use inbound::{Inbound, InboundService, Peer};
pub use intercept::Interception;
pub use outbound::{Outbound, OutboundService, Rewritten, Route, RoutePolicy};
pub use outcome::{Failure, Outcome};
pub use server::{Listener, serve};

/// The future of either half's tower service: boxed at this boundary, so
/// that listeners, hyper and any layer put in front see one type.
pub type HttpFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<http::Response<crate::body::BoxBody>, std::convert::Infallible>,
            > + Send,
    >,
>;
