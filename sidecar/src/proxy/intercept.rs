//! Connections the `init` rules redirected to the sidecar. Outbound, the
//! original destination decides: a mesh service's address makes the
//! connection that service's (as if it came in on an `--upstream` port), an
//! unknown one passes through or is refused. Inbound, a connection sent to
//! one of the app's ports goes to that port on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;
use weft_proto::protocol::InboundMode;

use super::inbound::Inbound;
use crate::body::BoxError;
use crate::intercept::{AddressMap, Mapped, UnknownDestinations, original_dst};
use crate::telemetry::metrics::Metrics;

/// What the outbound listener needs to take redirected connections.
pub struct Interception {
    /// Every service's addresses, as the control plane last pushed them.
    pub addresses: Arc<ArcSwap<AddressMap>>,
    pub unknown: UnknownDestinations,
    /// For passthrough connections.
    pub connect_timeout: Duration,
}

/// Where a connection accepted by the outbound listener was going.
pub(super) enum Decision {
    /// The app dialled the listener itself (or the kernel keeps no
    /// original address): routed by Host / :authority, as without
    /// interception.
    NotRedirected,
    /// A mesh service's address, on this port.
    Service(Arc<Mapped>, u16),
    /// An address the mesh does not know.
    Unknown(SocketAddr),
}

impl Interception {
    pub(super) fn decide(&self, stream: &TcpStream) -> Decision {
        let Some(original) = redirected(stream) else {
            return Decision::NotRedirected;
        };
        match self.addresses.load().get(&original) {
            Some(m) => Decision::Service(m.clone(), original.port()),
            None => Decision::Unknown(original),
        }
    }

    /// An unknown destination: dialled directly (the sidecar's own
    /// connections are not redirected again), or refused.
    pub(super) async fn unknown(
        &self,
        mut stream: TcpStream,
        original: SocketAddr,
        metrics: &Metrics,
    ) -> Result<(), BoxError> {
        match self.unknown {
            UnknownDestinations::Deny => {
                metrics.count_intercepted("outbound", "denied");
                tracing::debug!(%original, "refused a connection to an address outside the mesh");
                Ok(())
            }
            UnknownDestinations::Passthrough => {
                metrics.count_intercepted("outbound", "passthrough");
                let mut upstream =
                    tokio::time::timeout(self.connect_timeout, TcpStream::connect(original))
                        .await
                        .map_err(|_| format!("passthrough to {original}: connect timed out"))??;
                let _ = upstream.set_nodelay(true);
                tokio::io::copy_bidirectional(&mut stream, &mut upstream).await?;
                Ok(())
            }
        }
    }
}

/// The original destination, when the connection was redirected (it
/// differs from the address it was accepted on).
pub(super) fn redirected(stream: &TcpStream) -> Option<SocketAddr> {
    let original = original_dst(stream).ok()?;
    let local = stream.local_addr().ok()?;
    (original != local).then_some(original)
}

impl Inbound {
    /// A connection redirected from one of the app's ports. Peer sidecars
    /// dial the inbound port itself, so this one comes from outside the
    /// mesh: refused in STRICT mode like any plaintext caller, otherwise
    /// copied as opaque TCP to the port it was sent to on loopback (the
    /// app's host, with `--app`).
    pub(super) async fn redirected(&self, stream: TcpStream, port: u16) -> Result<(), BoxError> {
        let metrics = &self.telemetry.metrics;
        if self.policy.load().mode == InboundMode::Strict {
            metrics.count_handshake_failed("inbound", "plaintext-refused");
            tracing::debug!(
                port,
                "refused a redirected plaintext connection: the inbound mode is STRICT"
            );
            return Ok(());
        }
        metrics.count_intercepted("inbound", "app");
        // As a plaintext caller naming the port: never one of the
        // sidecar's own (an upstream port would send the outsider into the
        // mesh with this pod's identity).
        self.tcp(stream, None, Some(port)).await?;
        Ok(())
    }
}
