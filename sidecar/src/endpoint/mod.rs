//! Endpoints: one peer sidecar (or the local app) reached over pooled,
//! multiplexed HTTP/2 connections (one, and more only while each is at
//! the peer's stream limit), with the load figures the balancer reads.

mod connector;
mod h2;
mod load;
mod preface;

pub use connector::{Alpn, BoxedIo, ConnectFuture, ConnectTarget, Connector, TcpConnector};
pub use h2::{H2Body, H2Client};
pub(crate) use h2::{Pump, RESET_STREAM_MEMORY, RESET_STREAMS_REMEMBERED, keepalive};
pub use load::{Load, PendingGuard, prefer_second};

use std::sync::Arc;

use crate::model::EndpointSpec;

/// A peer: its connection and its load. Kept across config updates as long
/// as the endpoint stays, so that an update drops no connection and forgets
/// no latency history.
pub struct Peer {
    pub addr: Arc<str>,
    pub load: Arc<Load>,
    pub client: H2Client,
    /// Outlier detection: kept with the peer across config updates.
    pub outlier: crate::resilience::breaker::Outlier,
}

impl Peer {
    pub fn new(target: ConnectTarget, connector: Arc<dyn Connector>) -> Self {
        Peer {
            addr: target.addr.clone(),
            load: Arc::new(Load::new()),
            client: H2Client::new(target, connector),
            outlier: Default::default(),
        }
    }
}

/// An endpoint as the balancer sees it: what the config says, and its peer.
pub struct Endpoint {
    pub spec: EndpointSpec,
    pub peer: Arc<Peer>,
}
