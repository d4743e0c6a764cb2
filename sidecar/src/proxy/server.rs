//! Accept loops: each connection's protocol is detected from its first
//! bytes (unless the port says what it is), then served (HTTP/2 by
//! `proxy::h2`, HTTP/1.1 by hyper) or copied as opaque TCP. Draining stops accepting and lets each connection finish.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use weft_proto::identity::{SpiffeId, peer_id};
use weft_proto::name::ServiceName;
use weft_proto::protocol::{InboundMode, Protocol};

use super::detect::{Detected, Prefixed, detect};
use super::h2::{self as h2server, CallerBody, Handler};
use super::inbound::{Inbound, Peer};
use super::intercept::Decision;
use super::outbound::Outbound;
use crate::drain;
use crate::identity::tls::{self, handshake_reason};
use crate::table::Entry;

/// How long to wait for a client's first bytes before treating the
/// connection as opaque TCP (server-speaks-first protocols send nothing).
const DETECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The same for an intercepted connection: the app did not choose to talk
/// to a proxy, so a server-first protocol the mesh was not told about
/// (`opaquePorts`) should stall as briefly as a client's first bytes can
/// take to arrive on a pod's loopback.
const INTERCEPT_DETECT_TIMEOUT: Duration = Duration::from_millis(300);

/// What a listener is for, and the half of the sidecar that serves it.
#[derive(Clone)]
pub enum Listener {
    /// The app's calls, routed by Host / :authority.
    Outbound(Arc<Outbound>),
    /// The app's calls to one service (`--upstream NAME=ADDR`).
    Upstream(Arc<Outbound>, ServiceName),
    /// An intercepted connection to a service's address, and the port the
    /// app dialled there, which the peer's app gets it on.
    Intercepted(Arc<Outbound>, ServiceName, u16),
    /// Calls from other sidecars to the local app.
    Inbound(Arc<Inbound>),
}

/// Accepts connections until draining begins.
pub async fn serve(listener: TcpListener, kind: Listener, drain: drain::Watch) {
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
        let (kind, drain) = (kind.clone(), drain.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(stream, kind, drain).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

use crate::body::BoxError;

async fn connection(
    mut stream: TcpStream,
    kind: Listener,
    drain: drain::Watch,
) -> Result<(), BoxError> {
    if let Listener::Inbound(inbound) = &kind
        && inbound.intercept
        && let Some(original) = super::intercept::redirected(&stream)
    {
        let _hold = drain; // counted until the copy ends
        return inbound.redirected(stream, original.port()).await;
    }
    if let Listener::Inbound(inbound) = &kind
        && inbound.tls.is_some()
    {
        return inbound_connection(stream, inbound.clone(), drain).await;
    }
    // An intercepted connection to a mesh service is that service's, as if
    // the app had dialled an upstream port for it.
    let mut detect_timeout = DETECT_TIMEOUT;
    let mut opaque_port = false;
    let kind = match &kind {
        Listener::Outbound(o) if let Some(icpt) = &o.intercept => match icpt.decide(&stream) {
            Decision::NotRedirected => kind,
            Decision::Service(mapped, port) => {
                o.telemetry.metrics.count_intercepted("outbound", "service");
                detect_timeout = INTERCEPT_DETECT_TIMEOUT;
                opaque_port = mapped.is_opaque(port);
                Listener::Intercepted(o.clone(), mapped.service.clone(), port)
            }
            Decision::Unknown(original) => {
                let _hold = drain;
                return icpt.unknown(stream, original, &o.telemetry.metrics).await;
            }
        },
        _ => kind,
    };
    // Ports that are known to carry opaque TCP skip detection, so that
    // server-speaks-first protocols are never stalled.
    let known_tcp = opaque_port
        || match &kind {
            Listener::Inbound(inbound) => inbound.protocol == Protocol::Tcp,
            Listener::Upstream(outbound, s) | Listener::Intercepted(outbound, s, _) => matches!(
                outbound.routes.load().get(s.as_str()),
                Some(Entry::Known(t)) if t.policy.protocol == Protocol::Tcp
            ),
            Listener::Outbound(_) => false,
        };
    let (detected, prefix) = if known_tcp {
        (Detected::Tcp, bytes::Bytes::new())
    } else {
        match detect(&mut stream, detect_timeout).await? {
            Some(d) => d,
            None => return Ok(()),
        }
    };
    plain(Prefixed::new(prefix, stream), detected, kind, drain).await
}

/// A connection handled without TLS: HTTP or opaque TCP.
async fn plain<I>(
    io: I,
    detected: Detected,
    kind: Listener,
    drain: drain::Watch,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match detected {
        Detected::Tcp | Detected::Tls => {
            let _hold = drain; // counted until the copy ends
            match &kind {
                Listener::Inbound(inbound) => inbound.tcp(io, None, None).await?,
                Listener::Upstream(outbound, s) => outbound.tcp(io, s, None).await?,
                Listener::Intercepted(outbound, s, port) => {
                    outbound.tcp(io, s, Some(*port)).await?;
                }
                Listener::Outbound(_) => {
                    tracing::debug!(
                        "opaque TCP on the outbound listener has no destination; closing"
                    );
                }
            }
            Ok(())
        }
        Detected::Http1 | Detected::Http2 => serve_http(io, detected, kind, drain, None).await,
    }
}

/// The inbound listener with mutual TLS: a TLS client (a peer sidecar) is
/// authenticated and served by ALPN; a plaintext one only in PERMISSIVE mode.
async fn inbound_connection(
    mut stream: TcpStream,
    inbound: Arc<Inbound>,
    drain: drain::Watch,
) -> Result<(), BoxError> {
    let Some((detected, prefix)) = detect(&mut stream, DETECT_TIMEOUT).await? else {
        return Ok(());
    };
    let io = Prefixed::new(prefix, stream);
    let metrics = &inbound.telemetry.metrics;
    if detected != Detected::Tls {
        if inbound.policy.load().mode == InboundMode::Strict {
            metrics.count_handshake_failed("inbound", "plaintext-refused");
            tracing::debug!("refused a plaintext connection: the inbound mode is STRICT");
            return Ok(());
        }
        let detected = if inbound.protocol == Protocol::Tcp {
            Detected::Tcp
        } else {
            detected
        };
        return plain(io, detected, Listener::Inbound(inbound), drain).await;
    }
    let Some(acceptor) = inbound.tls.as_ref().and_then(|t| t.get()) else {
        metrics.count_handshake_failed("inbound", "no-certificate");
        return Ok(());
    };
    let tls = match acceptor.accept(io).await {
        Ok(t) => t,
        Err(e) => {
            metrics.count_handshake_failed("inbound", handshake_reason(&e));
            tracing::debug!(error = %e, "inbound TLS handshake failed");
            return Ok(());
        }
    };
    metrics.count_handshake_ok("inbound");
    let (_, session) = tls.get_ref();
    let peer = session.peer_certificates().and_then(peer_id);
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let port = tls::port_of_server_name(session.server_name());
    match alpn.as_deref() {
        Some(tls::ALPN_H2) => {
            serve_http(
                tls,
                Detected::Http2,
                Listener::Inbound(inbound),
                drain,
                peer,
            )
            .await
        }
        Some(tls::ALPN_TCP) => {
            let _hold = drain;
            let peer = peer.map(Peer::new);
            inbound.tcp(tls, peer.as_ref(), port).await?;
            Ok(())
        }
        _ => {
            tracing::debug!("a TLS client offered no known ALPN; closing");
            Ok(())
        }
    }
}

/// Serves HTTP on `io` with the half of the sidecar `kind` names.
async fn serve_http<I>(
    io: I,
    detected: Detected,
    kind: Listener,
    drain: drain::Watch,
    peer: Option<SpiffeId>,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = h2server::APP_STREAMS;
    match kind {
        Listener::Outbound(o) => serve_with(io, detected, o.service(None), drain, app).await,
        Listener::Upstream(o, s) => serve_with(io, detected, o.service(Some(s)), drain, app).await,
        Listener::Intercepted(o, s, port) => {
            let svc = o.service_to(Some(s), Some(port));
            serve_with(io, detected, svc, drain, app).await
        }
        Listener::Inbound(i) => {
            // The caller's identity, for authorization and for the app;
            // only the service name of our own trust domain counts.
            let peer = peer.map(|id| Arc::new(Peer::new(id)));
            let peers = h2server::PEER_STREAMS;
            serve_with(io, detected, i.service(peer), drain, peers).await
        }
    }
}

/// One connection served (HTTP/2 by `proxy::h2`, with at most
/// `max_streams` open at once; HTTP/1.1 by hyper) with `svc`, until it
/// closes or draining asks it to finish gracefully.
async fn serve_with<I, S>(
    io: I,
    detected: Detected,
    svc: S,
    mut drain: drain::Watch,
    max_streams: u32,
) -> Result<(), BoxError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Handler,
{
    if detected == Detected::Http2 {
        return h2server::serve(io, svc, drain, max_streams).await;
    }
    let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        svc.clone().call(req.map(CallerBody::Http1))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(io), svc);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r.map_err(Into::into),
        _ = drain.signaled() => conn.as_mut().graceful_shutdown(),
    }
    conn.await.map_err(Into::into)
}
