//! Opaque TCP: bytes copied both ways, for protocols the mesh does not parse
//! (AMQP to a broker, databases). Balanced per connection.

use tokio::io::{AsyncRead, AsyncWrite};
use weft_proto::name::ServiceName;

use super::Proxy;
use crate::endpoint::ConnectTarget;
use crate::error::ProxyError;
use crate::metrics::{Direction, TcpLabels};

impl Proxy {
    /// Carries one connection from the local app to `service`. A failed
    /// connect is tried on another endpoint: nothing was sent yet.
    pub async fn tcp_outbound<T>(&self, mut io: T, service: &ServiceName) -> Result<(), ProxyError>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let target = self
            .routes
            .resolve(service.as_str(), self.timeouts.discovery)
            .await?;
        let attempts = target.ready_count().clamp(1, 3);
        let mut last = ProxyError::NoEndpoints(service.to_string());
        for _ in 0..attempts {
            let Some(pick) = target.pick() else { break };
            let endpoint = pick.endpoint.clone();
            let _pending = endpoint.peer.load.start();
            let ct = ConnectTarget {
                addr: endpoint.spec.addr.clone(),
                service: service.clone(),
                alpn: crate::endpoint::Alpn::Tcp,
            };
            match self.connector.connect(&ct).await {
                Ok(mut upstream) => {
                    self.copy(&mut io, &mut upstream, Direction::outbound, service)
                        .await;
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(%service, addr = %endpoint.spec.addr, error = %e, "TCP connect failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Carries one connection from a peer to the local app.
    pub async fn tcp_inbound<T>(&self, mut io: T) -> Result<(), ProxyError>
    where
        T: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(app) = &self.app else {
            return Err(ProxyError::NoApp);
        };
        let mut upstream = self
            .app_connector
            .connect_tcp(&app.addr.to_string())
            .await?;
        let service = self.service.clone();
        self.copy(&mut io, &mut upstream, Direction::inbound, &service)
            .await;
        Ok(())
    }

    async fn copy<A, B>(&self, a: &mut A, b: &mut B, direction: Direction, service: &ServiceName)
    where
        A: AsyncRead + AsyncWrite + Unpin + ?Sized,
        B: AsyncRead + AsyncWrite + Unpin + ?Sized,
    {
        let labels = TcpLabels {
            direction,
            service: service.clone(),
        };
        self.telemetry
            .metrics
            .tcp_connections
            .get_or_create(&labels)
            .inc();
        let (sent, received) = match tokio::io::copy_bidirectional(a, b).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(%service, error = %e, "TCP connection ended with an error");
                (0, 0)
            }
        };
        self.telemetry
            .metrics
            .tcp_bytes_sent
            .get_or_create(&labels)
            .inc_by(sent);
        self.telemetry
            .metrics
            .tcp_bytes_received
            .get_or_create(&labels)
            .inc_by(received);
    }
}
