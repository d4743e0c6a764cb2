//! Accept loops: each connection's protocol is detected from its first
//! bytes (unless the port says what it is), then served by hyper or copied
//! as opaque TCP. Draining stops accepting and lets each connection finish.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use weft_proto::identity::{SpiffeId, peer_id};
use weft_proto::name::ServiceName;
use weft_proto::protocol::{InboundMode, Protocol};

use super::Proxy;
use super::detect::{Detected, Prefixed, detect};
use crate::drain;
use crate::identity::tls::{self, handshake_reason};
use crate::metrics::HandshakeLabels;
use crate::table::Entry;

/// How long to wait for a client's first bytes before treating the
/// connection as opaque TCP (server-speaks-first protocols send nothing).
const DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What a listener is for.
#[derive(Clone, Debug)]
pub enum Listener {
    /// The app's calls, routed by Host / :authority.
    Outbound,
    /// The app's calls to one service (`--upstream NAME=ADDR`).
    Upstream(ServiceName),
    /// Calls from other sidecars to the local app.
    Inbound,
}

/// Accepts connections until draining begins.
pub async fn serve(listener: TcpListener, kind: Listener, proxy: Arc<Proxy>, drain: drain::Watch) {
    let mut stop = drain.clone();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.signaled() => break,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (proxy, kind, drain) = (proxy.clone(), kind.clone(), drain.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(stream, kind, proxy, drain).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn connection(
    mut stream: TcpStream,
    kind: Listener,
    proxy: Arc<Proxy>,
    drain: drain::Watch,
) -> Result<(), BoxError> {
    if matches!(kind, Listener::Inbound) && proxy.tls.is_some() {
        return inbound_connection(stream, proxy, drain).await;
    }
    // Ports that are known to carry opaque TCP skip detection, so that
    // server-speaks-first protocols are never stalled.
    let known_tcp = match &kind {
        Listener::Inbound => proxy.protocol == Protocol::Tcp,
        Listener::Upstream(s) => matches!(
            proxy.routes.load().get(s.as_str()),
            Some(Entry::Known(t)) if t.policy.protocol == Protocol::Tcp
        ),
        Listener::Outbound => false,
    };
    let (detected, prefix) = if known_tcp {
        (Detected::Tcp, bytes::Bytes::new())
    } else {
        match detect(&mut stream, DETECT_TIMEOUT).await? {
            Some(d) => d,
            None => return Ok(()),
        }
    };
    plain(Prefixed::new(prefix, stream), detected, kind, proxy, drain).await
}

/// A connection handled without TLS: HTTP or opaque TCP.
async fn plain<I>(
    io: I,
    detected: Detected,
    kind: Listener,
    proxy: Arc<Proxy>,
    drain: drain::Watch,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match detected {
        Detected::Tcp | Detected::Tls => {
            let _hold = drain; // counted until the copy ends
            match &kind {
                Listener::Inbound => proxy.tcp_inbound(io).await?,
                Listener::Upstream(s) => proxy.tcp_outbound(io, s).await?,
                Listener::Outbound => {
                    tracing::debug!(
                        "opaque TCP on the outbound listener has no destination; closing"
                    );
                }
            }
            Ok(())
        }
        Detected::Http1 | Detected::Http2 => {
            serve_http(io, detected, kind, proxy, drain, None).await
        }
    }
}

/// The inbound listener with mutual TLS: a TLS client (a peer sidecar) is
/// authenticated and served by ALPN; a plaintext one only in PERMISSIVE mode.
async fn inbound_connection(
    mut stream: TcpStream,
    proxy: Arc<Proxy>,
    drain: drain::Watch,
) -> Result<(), BoxError> {
    let Some((detected, prefix)) = detect(&mut stream, DETECT_TIMEOUT).await? else {
        return Ok(());
    };
    let io = Prefixed::new(prefix, stream);
    if detected != Detected::Tls {
        if proxy.inbound_policy.load().mode == InboundMode::Strict {
            proxy
                .telemetry
                .metrics
                .handshakes
                .get_or_create(&HandshakeLabels::failed("inbound", "plaintext-refused"))
                .inc();
            tracing::debug!("refused a plaintext connection: the inbound mode is STRICT");
            return Ok(());
        }
        let detected = if proxy.protocol == Protocol::Tcp {
            Detected::Tcp
        } else {
            detected
        };
        return plain(io, detected, Listener::Inbound, proxy, drain).await;
    }
    let Some(acceptor) = proxy.tls.as_ref().and_then(|t| t.get()) else {
        proxy
            .telemetry
            .metrics
            .handshakes
            .get_or_create(&HandshakeLabels::failed("inbound", "no-certificate"))
            .inc();
        return Ok(());
    };
    let tls = match acceptor.accept(io).await {
        Ok(t) => t,
        Err(e) => {
            proxy
                .telemetry
                .metrics
                .handshakes
                .get_or_create(&HandshakeLabels::failed("inbound", handshake_reason(&e)))
                .inc();
            tracing::debug!(error = %e, "inbound TLS handshake failed");
            return Ok(());
        }
    };
    proxy
        .telemetry
        .metrics
        .handshakes
        .get_or_create(&HandshakeLabels::ok("inbound"))
        .inc();
    let (_, session) = tls.get_ref();
    let peer = session.peer_certificates().and_then(peer_id);
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    match alpn.as_deref() {
        Some(tls::ALPN_H2) => {
            serve_http(tls, Detected::Http2, Listener::Inbound, proxy, drain, peer).await
        }
        Some(tls::ALPN_TCP) => {
            let _hold = drain;
            proxy.tcp_inbound(tls).await?;
            Ok(())
        }
        _ => {
            tracing::debug!("a TLS client offered no known ALPN; closing");
            Ok(())
        }
    }
}

async fn serve_http<I>(
    io: I,
    detected: Detected,
    kind: Listener,
    proxy: Arc<Proxy>,
    mut drain: drain::Watch,
    peer: Option<SpiffeId>,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The caller's identity, for authorization and for the app; only the
    // service name of our own trust domain counts.
    let peer: Option<Arc<(SpiffeId, Option<ServiceName>)>> = peer.map(|id| {
        let name = id.service_name().and_then(|n| ServiceName::parse(n).ok());
        Arc::new((id, name))
    });
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let (proxy, kind, peer) = (proxy.clone(), kind.clone(), peer.clone());
        async move {
            let resp = match &kind {
                Listener::Inbound => proxy.inbound(req, peer.as_deref()).await,
                Listener::Outbound => proxy.outbound(req, None).await,
                Listener::Upstream(s) => proxy.outbound(req, Some(s)).await,
            };
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(io);
    if detected == Detected::Http2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(20)))
            .serve_connection(io, svc);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => return r.map_err(Into::into),
            _ = drain.signaled() => conn.as_mut().graceful_shutdown(),
        }
        conn.await.map_err(Into::into)
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(io, svc);
        let mut conn = std::pin::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => return r.map_err(Into::into),
            _ = drain.signaled() => conn.as_mut().graceful_shutdown(),
        }
        conn.await.map_err(Into::into)
    }
}
