//! Outbound: the local app's calls to other services. Find the service (by
//! the listener's upstream binding, or by Host / :authority), pick an
//! endpoint per request, and send over that peer's pooled HTTP/2 connection.

use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::Proxy;
use super::exchange::Exchange;
use super::headers::{HTTP11, ORIG_PROTO, host_of, is_grpc, strip_hop_by_hop};
use crate::body::{BoxBody, boxed};
use crate::error::ProxyError;
use crate::metrics::Direction;
use crate::model::ServiceName;

/// The authority a request was sent to: the URI's (HTTP/2, absolute form) or
/// the Host header's (HTTP/1.1).
fn authority(req: &Request<Incoming>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
}

impl Proxy {
    /// Handles one request from the local app. `fixed` is the service of an
    /// upstream port; `None` routes by authority.
    pub async fn outbound(
        &self,
        req: Request<Incoming>,
        fixed: Option<&ServiceName>,
    ) -> Response<BoxBody> {
        let grpc = is_grpc(req.headers());
        let authority = authority(&req);
        let name = match (fixed, &authority) {
            (Some(s), _) => s.as_str().to_string(),
            (None, Some(a)) => host_of(a).to_string(),
            (None, None) => {
                let ex = Exchange::begin(
                    self.metrics.clone(),
                    Direction::outbound,
                    ServiceName::unresolved(),
                );
                return ex.fail(
                    ProxyError::NoRoute(
                        "the request names no service (no Host or :authority)".into(),
                    ),
                    grpc,
                );
            }
        };
        let label = fixed
            .cloned()
            .or_else(|| ServiceName::parse(&name).ok())
            .unwrap_or_else(ServiceName::unresolved);
        let mut ex = Exchange::begin(self.metrics.clone(), Direction::outbound, label);
        let target = match self.routes.resolve(&name, self.timeouts.discovery).await {
            Ok(t) => t,
            Err(e) => return ex.fail(e, grpc),
        };
        let Some(endpoint) = target.pick().cloned() else {
            return ex.fail(ProxyError::NoEndpoints(name), grpc);
        };
        let req = match to_mesh_request(req, authority.as_deref(), &name) {
            Ok(r) => r,
            Err(e) => return ex.fail(e, grpc),
        };
        ex.hold(endpoint.peer.load.start());
        match endpoint.peer.client.send(req).await {
            Ok((resp, rtt)) => {
                endpoint.peer.load.observe(rtt, tokio::time::Instant::now());
                ex.respond(resp)
            }
            Err(e) => ex.fail(e, grpc),
        }
    }
}

/// Rewrites an app's request for the hop between sidecars, which is always
/// HTTP/2: absolute URI with the original authority (or the service name when
/// the app sent none), no hop-by-hop headers, and a marker when the app spoke
/// HTTP/1.1.
fn to_mesh_request(
    req: Request<Incoming>,
    authority: Option<&str>,
    name: &str,
) -> Result<Request<BoxBody>, ProxyError> {
    let (mut parts, body) = req.into_parts();
    let was_h1 = parts.version < Version::HTTP_2;
    strip_hop_by_hop(&mut parts.headers);
    if was_h1 {
        parts.headers.remove(http::header::HOST);
        parts.headers.insert(ORIG_PROTO, HTTP11);
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let build = |authority: &str| {
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(path.as_str())
            .build()
    };
    parts.uri = authority
        .and_then(|a| build(a).ok())
        .map_or_else(|| build(name), Ok)
        .map_err(|e| ProxyError::NoRoute(format!("cannot forward to {name:?}: {e}")))?;
    parts.version = Version::HTTP_2;
    Ok(Request::from_parts(parts, boxed(body)))
}
