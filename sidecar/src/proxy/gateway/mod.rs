//! The gateway: the sidecar as the mesh's front door. Public clients'
//! requests (HTTP/1.1 or HTTP/2, cleartext or TLS: `listen.rs`, with the
//! certificates of `certs.rs`) are routed by the routes attached to the
//! `Gateway` this sidecar is — matched by host name first, then as any
//! route — and go into the mesh through the outbound pipeline, over mutual
//! TLS with the gateway's own identity. A request no route takes is
//! answered 404 (a gateway has no endpoints of its own to fall back to).
//!
//! ```text
//! client ─► listen (connection cap, TLS by SNI, header timeout, idle cut)
//!        ─► Gateway::handle: size limit, route by host and path
//!        ─► Outbound::send (the same pipeline a sidecar's app calls take)
//! ```

mod certs;
mod listen;

pub use certs::{CertError, Certificates, server_config};
pub use listen::{Public, serve};

use std::net::SocketAddr;
use std::sync::Arc;

use http::uri::Authority;
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use weft_proto::name::ServiceName;
use weft_proto::routing::{self, request_host};

use super::exchange::Exchange;
use super::headers::is_grpc;
use super::outbound::{Destination, Outbound};
use crate::body::{BoxBody, boxed};
use crate::config::EdgeLimits;
use crate::error::ProxyError;
use crate::resilience::timed::{ActiveBody, Activity};
use crate::telemetry::metrics::Direction;

/// The gateway's half of the sidecar.
pub struct Gateway {
    /// The `Gateway` resource this sidecar is (its mesh identity too).
    pub name: ServiceName,
    pub outbound: Arc<Outbound>,
    pub limits: EdgeLimits,
    /// Keep a client's X-Forwarded-For.
    pub trust_forwarded: bool,
}

/// Who sent a request, as the public listener saw the connection.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl Gateway {
    /// Handles one public request.
    pub async fn handle(&self, mut req: Request<Incoming>, client: Client) -> Response<BoxBody> {
        let grpc = is_grpc(req.headers());
        let ex = Exchange::begin(
            &self.outbound.telemetry,
            Direction::outbound,
            self.name.clone(),
            &mut req,
            grpc,
        );
        let limit = self.limits.max_request_bytes;
        let declared = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit) {
            return ex.fail(ProxyError::TooLarge { limit }, grpc);
        }
        let authority = authority_of(&req);
        let host = authority
            .as_ref()
            .map(|a| request_host(a.as_str()))
            .unwrap_or_default();
        let found = {
            let rreq = routing::Request {
                host: Some(&host),
                ..routing::Request::of(&req)
            };
            let dest = Destination::service(self.name.clone());
            let wait = self.outbound.discovery_timeout;
            dest.gateway_route(&self.outbound.routes, wait, &rreq).await
        };
        let route = match found {
            Ok(Some(r)) => r,
            Ok(None) => {
                let e = ProxyError::NotFound {
                    gateway: self.name.to_string(),
                    host,
                    path: req.uri().path().to_string(),
                };
                return ex.fail(e, grpc);
            }
            Err(e) => return ex.fail(e, grpc),
        };
        let dest = Destination::gateway(self.name.clone(), authority);
        // A body without a length (or one that lies) is cut at the limit.
        let activity = Activity::new();
        let req = req.map(|b| {
            let limited = Limited::new(b, usize::try_from(limit).unwrap_or(usize::MAX));
            boxed(ActiveBody::new(
                limited.map_err(|e| -> crate::body::BoxError { e }),
                activity.clone(),
            ))
        });
        let _ = client;
        self.outbound
            .send(req, &dest, route, ex, grpc, activity)
            .await
    }
}

/// The authority a client named: `:authority` (HTTP/2, absolute form) or
/// `Host` (HTTP/1.1).
fn authority_of<B>(req: &Request<B>) -> Option<Authority> {
    req.uri().authority().cloned().or_else(|| {
        let host = req.headers().get(http::header::HOST)?;
        Authority::try_from(host.as_bytes()).ok()
    })
}
