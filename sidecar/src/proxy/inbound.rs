//! Inbound: requests from other sidecars (and, in permissive mode, plain
//! clients) forwarded to the local app, in the protocol the app speaks.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::Proxy;
use super::exchange::Exchange;
use super::headers::{ORIG_PROTO, is_grpc, strip_hop_by_hop};
use crate::body::{BoxBody, boxed};
use crate::endpoint::{ConnectTarget, Connector, H2Client, TcpConnector};
use crate::error::ProxyError;
use crate::metrics::Direction;
use crate::model::{Protocol, ServiceName};

/// Connections to the local app: HTTP/1.1 pooled, HTTP/2 multiplexed.
pub struct App {
    pub addr: SocketAddr,
    h1: Client<HttpConnector, BoxBody>,
    h2: H2Client,
}

impl App {
    pub fn new(addr: SocketAddr, service: ServiceName, connector: Arc<TcpConnector>) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connector.timeout));
        let h1 = Client::builder(TokioExecutor::new()).build(http);
        let target = ConnectTarget {
            addr: addr.to_string().into(),
            service,
        };
        App {
            addr,
            h1,
            h2: H2Client::new(target, connector as Arc<dyn Connector>),
        }
    }
}

impl Proxy {
    pub async fn inbound(&self, req: Request<Incoming>) -> Response<BoxBody> {
        let grpc = is_grpc(req.headers());
        let ex = Exchange::begin(
            self.metrics.clone(),
            Direction::inbound,
            self.service.clone(),
        );
        let Some(app) = &self.app else {
            return ex.fail(ProxyError::NoApp, grpc);
        };
        let (mut parts, body) = req.into_parts();
        let orig_h1 = parts
            .headers
            .remove(ORIG_PROTO)
            .is_some_and(|v| v == "HTTP/1.1");
        strip_hop_by_hop(&mut parts.headers);
        let h1 = !grpc
            && (orig_h1 || parts.version < Version::HTTP_2 || self.protocol == Protocol::Http);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let result = if h1 {
            // The authority goes back into Host; the URI names the app.
            if let Some(a) = parts.uri.authority()
                && !parts.headers.contains_key(http::header::HOST)
                && let Ok(v) = HeaderValue::from_str(a.as_str())
            {
                parts.headers.insert(http::header::HOST, v);
            }
            parts.uri = match Uri::builder()
                .scheme("http")
                .authority(app.addr.to_string())
                .path_and_query(path)
                .build()
            {
                Ok(u) => u,
                Err(e) => {
                    return ex.fail(
                        ProxyError::App {
                            addr: app.addr.to_string(),
                            reason: e.to_string(),
                        },
                        grpc,
                    );
                }
            };
            parts.version = Version::HTTP_11;
            app.h1
                .request(Request::from_parts(parts, boxed(body)))
                .await
                .map_err(|e| ProxyError::App {
                    addr: app.addr.to_string(),
                    reason: error_chain(&e),
                })
        } else {
            if parts.uri.authority().is_none() {
                parts.uri = match Uri::builder()
                    .scheme("http")
                    .authority(app.addr.to_string())
                    .path_and_query(path)
                    .build()
                {
                    Ok(u) => u,
                    Err(e) => {
                        return ex.fail(
                            ProxyError::App {
                                addr: app.addr.to_string(),
                                reason: e.to_string(),
                            },
                            grpc,
                        );
                    }
                };
            }
            parts.version = Version::HTTP_2;
            app.h2
                .send(Request::from_parts(parts, boxed(body)))
                .await
                .map(|(r, _)| r)
                .map_err(|e| match e {
                    ProxyError::Connect { addr, source } => ProxyError::App {
                        addr,
                        reason: source.to_string(),
                    },
                    other => other,
                })
        };
        match result {
            Ok(resp) => ex.respond(resp),
            Err(e) => ex.fail(e, grpc),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}
