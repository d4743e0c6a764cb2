//! The one way the sidecar opens a connection to a peer: a [`Connector`].
//! [`TcpConnector`] is plain TCP (to the local app, and between sidecars
//! running plaintext from a static file); `identity::tls::MtlsConnector`
//! wraps it in mutual TLS, so nothing above this trait knows which.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use weft_proto::name::ServiceName;

use crate::error::ProxyError;

/// Any byte stream a connector returns.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

pub type BoxedIo = Box<dyn Io>;

/// What a connection will carry, told to the peer by ALPN under TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    H2,
    /// Opaque TCP to the peer's `--app`.
    Tcp,
    /// Opaque TCP to this port of the peer's app (an intercepted
    /// connection keeps the port its app dialled); the port travels in the
    /// TLS server name (`identity::tls::port_server_name`).
    TcpTo(u16),
}

/// What to connect to: an address, the service expected there (which TLS
/// verifies), and what the connection carries.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectTarget {
    pub addr: Arc<str>,
    pub service: ServiceName,
    pub alpn: Alpn,
}

pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = Result<BoxedIo, ProxyError>> + Send + 'a>>;

pub trait Connector: Send + Sync + 'static {
    fn connect<'a>(&'a self, target: &'a ConnectTarget) -> ConnectFuture<'a>;
}

/// Plain TCP with `TCP_NODELAY` (a proxy must not add Nagle delays) and a
/// connect timeout.
pub struct TcpConnector {
    pub timeout: Duration,
}

impl TcpConnector {
    pub async fn connect_tcp(&self, addr: &str) -> Result<TcpStream, ProxyError> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ProxyError::ConnectTimeout { addr: addr.into() })?
            .map_err(|source| ProxyError::Connect {
                addr: addr.into(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, target: &'a ConnectTarget) -> ConnectFuture<'a> {
        Box::pin(async move {
            let s = self.connect_tcp(&target.addr).await?;
            Ok(Box::new(s) as BoxedIo)
        })
    }
}
