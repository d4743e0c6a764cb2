//! Opaque TCP: bytes copied both ways, for protocols the mesh does not parse
//! (AMQP to a broker, databases). Balanced per connection, through the same
//! route and endpoint choice as requests: a failed connect is tried on
//! another endpoint (nothing was sent yet), and every connect tells the
//! endpoint's outlier detection how it went.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use weft_proto::name::ServiceName;

use super::inbound::{Inbound, Peer};
use super::outbound::{Destination, Outbound};
use crate::endpoint::{Alpn, ConnectTarget};
use crate::error::ProxyError;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::Direction;

/// At most this many endpoints are tried for one connection.
const MAX_CONNECT_ATTEMPTS: usize = 3;

impl Outbound {
    /// Carries one connection from the local app to `service`; `port` is
    /// the app port it dialled when it was intercepted (the peer's app gets
    /// it on that port), `None` for the service's `--app`.
    pub async fn tcp<T>(
        &self,
        mut io: T,
        service: &ServiceName,
        port: Option<u16>,
    ) -> Result<(), ProxyError>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let route = Destination::service(service.clone())
            .route(&self.routes, self.discovery_timeout, None)
            .await?;
        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut last = ProxyError::NoEndpoints(service.to_string());
        // Each endpoint once, up to the cap.
        let attempts = route
            .backends
            .primary()
            .map_or(1, |t| t.ready_count().clamp(1, MAX_CONNECT_ATTEMPTS));
        for _ in 0..attempts {
            let Some((target, pick)) = route.pick(&tried, &self.telemetry.metrics) else {
                break;
            };
            let endpoint = pick.endpoint.clone();
            let _load = endpoint.peer.load.start();
            let ct = ConnectTarget {
                addr: endpoint.spec.addr.clone(),
                service: target.name.clone(),
                alpn: port.map_or(Alpn::Tcp, Alpn::TcpTo),
            };
            match self.connector.connect(&ct).await {
                Ok(mut upstream) => {
                    target.report(&pick, true);
                    copy(
                        &self.telemetry,
                        &mut io,
                        &mut upstream,
                        Direction::outbound,
                        service,
                    )
                    .await;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(%service, addr = %endpoint.spec.addr, error = %e, "TCP connect failed");
                    target.report(&pick, false);
                    tried.push(endpoint.spec.addr.clone());
                    last = e;
                }
            }
        }
        Err(last)
    }
}

impl Inbound {
    /// Carries one connection from `peer` (`None`: a plaintext caller) to
    /// the app's `port` (the one the caller named; `None`: `--app`), if
    /// the inbound policy lets `peer` open one.
    pub async fn tcp<T>(
        &self,
        mut io: T,
        peer: Option<&Peer>,
        port: Option<u16>,
    ) -> Result<(), ProxyError>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        self.authorize_connection(peer)?;
        let app = self.apps.get(port).map_err(|e| self.count_refused(e))?;
        let mut upstream = match self.app_connector.connect_tcp(&app.name).await {
            Ok(s) => s,
            Err(e) => return Err(self.count_refused(app.connect_error(e.to_string()))),
        };
        copy(
            &self.telemetry,
            &mut io,
            &mut upstream,
            Direction::inbound,
            &self.service,
        )
        .await;
        Ok(())
    }
}

async fn copy<A, B>(
    telemetry: &Telemetry,
    a: &mut A,
    b: &mut B,
    direction: Direction,
    service: &ServiceName,
) where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let m = &telemetry.metrics;
    let _open = m.open_tcp_connection(direction, service);
    let (sent, received) = match tokio::io::copy_bidirectional(a, b).await {
        Ok(n) => n,
        Err(e) => {
            tracing::debug!(%service, error = %e, "TCP connection ended with an error");
            (0, 0)
        }
    };
    m.count_tcp_bytes(direction, service, sent, received);
}
