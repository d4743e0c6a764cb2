//! The local app as the inbound half reaches it: one [`App`] (HTTP/1.1
//! pooled, HTTP/2 multiplexed) per port. The `--app` port's is made at
//! start; another port, named by a caller whose connection was intercepted
//! (the port its app dialled is kept end to end), gets its own at first
//! use, kept for the next request. [`AppPorts`] decides which.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::Uri;
use http::uri::{Authority, PathAndQuery};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use weft_proto::name::ServiceName;

use crate::body::BoxBody;
use crate::endpoint::{ConnectTarget, Connector, H2Client, TcpConnector};
use crate::error::{AppPortRefusal, ProxyError};

/// Connections to the local app on one port.
pub struct App {
    pub addr: SocketAddr,
    /// `addr` as text, for the access log, spans and connects.
    pub(super) name: Arc<str>,
    authority: Authority,
    pub(super) h1: Client<HttpConnector, BoxBody>,
    pub(super) h2: H2Client,
    /// A port a caller named rather than `--app`: nothing listening there
    /// is the caller's mistake (`no-app-port`), not a failing app.
    named: bool,
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
            alpn: crate::endpoint::Alpn::H2,
        };
        let authority = Authority::from_maybe_shared(bytes::Bytes::from(addr.to_string()))
            .unwrap_or_else(|_| Authority::from_static("127.0.0.1"));
        App {
            addr,
            name: Arc::from(addr.to_string()),
            authority,
            h1,
            h2: H2Client::new(target, connector as Arc<dyn Connector>),
            named: false,
        }
    }

    /// `http://<app>/<path and query of uri>`.
    pub(super) fn uri(&self, uri: &Uri) -> Result<Uri, ProxyError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(http::uri::Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).map_err(|e| self.error(e.to_string()))
    }

    pub(super) fn error(&self, reason: String) -> ProxyError {
        ProxyError::App {
            addr: self.addr.to_string(),
            reason,
        }
    }

    /// A connection to the app that could not be made: on a port a caller
    /// named, nothing listens there.
    pub(super) fn connect_error(&self, reason: String) -> ProxyError {
        if self.named {
            ProxyError::NoAppPort {
                port: self.addr.port(),
                reason: AppPortRefusal::NotListening,
            }
        } else {
            self.error(reason)
        }
    }
}

/// The app's ports: `--app`'s, and the others callers name.
pub struct AppPorts {
    /// `--app`; `None` for a sidecar that only makes calls.
    default: Option<Arc<App>>,
    /// Where the app's other ports are: `--app`'s IP, else loopback.
    host: IpAddr,
    /// The sidecar's own listening ports, which a caller never reaches
    /// through this path (its admin port would let it stop the sidecar).
    sidecar_ports: Box<[u16]>,
    /// Ports named so far. Written once per new port, read per request
    /// without a lock.
    others: ArcSwap<HashMap<u16, Arc<App>>>,
    service: ServiceName,
    connector: Arc<TcpConnector>,
}

impl AppPorts {
    pub fn new(
        app: Option<SocketAddr>,
        service: ServiceName,
        connector: Arc<TcpConnector>,
        sidecar_ports: Vec<u16>,
    ) -> Self {
        AppPorts {
            default: app.map(|a| Arc::new(App::new(a, service.clone(), connector.clone()))),
            host: app.map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip()),
            sidecar_ports: sidecar_ports.into(),
            others: ArcSwap::default(),
            service,
            connector,
        }
    }

    /// `--app`, if there is one.
    pub fn default_app(&self) -> Option<&Arc<App>> {
        self.default.as_ref()
    }

    /// The app on `port` (the one the caller named), or `--app` when the
    /// caller named none.
    pub fn get(&self, port: Option<u16>) -> Result<Arc<App>, ProxyError> {
        let Some(port) = port else {
            return self.default.clone().ok_or(ProxyError::NoApp);
        };
        if let Some(d) = &self.default
            && d.addr.port() == port
        {
            return Ok(d.clone());
        }
        if port == 0 || self.sidecar_ports.contains(&port) {
            let reason = if port == 0 {
                AppPortRefusal::Invalid
            } else {
                AppPortRefusal::SidecarPort
            };
            return Err(ProxyError::NoAppPort { port, reason });
        }
        if let Some(app) = self.others.load().get(&port) {
            return Ok(app.clone());
        }
        let app = Arc::new(App {
            named: true,
            ..App::new(
                SocketAddr::new(self.host, port),
                self.service.clone(),
                self.connector.clone(),
            )
        });
        // Two first requests for one port at once: the first stored wins,
        // so that both go on sharing one pool.
        self.others.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.entry(port).or_insert_with(|| app.clone());
            m
        });
        Ok(self.others.load().get(&port).cloned().unwrap_or(app))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::error::ErrorKind;

    fn ports(app: Option<&str>) -> AppPorts {
        AppPorts::new(
            app.map(|a| a.parse().expect("addr")),
            ServiceName::parse("web").expect("name"),
            Arc::new(TcpConnector {
                timeout: Duration::from_secs(1),
            }),
            vec![15000, 15001, 15006],
        )
    }

    #[test]
    fn a_named_port_reaches_that_port_of_the_app_and_unnamed_reaches_app() {
        let p = ports(Some("127.0.0.1:8080"));
        let addr = |port| p.get(port).map(|a| a.addr.to_string()).ok();
        assert_eq!(addr(None).as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(addr(Some(8080)).as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(addr(Some(9000)).as_deref(), Some("127.0.0.1:9000"));
        let (a, b) = (p.get(Some(9000)).expect("app"), p.get(Some(9000)));
        assert!(Arc::ptr_eq(&a, &b.expect("app")), "one pool per port");
        assert!(!p.get(None).expect("app").named && a.named);
    }

    #[test]
    fn the_sidecars_own_ports_and_port_zero_are_refused() {
        let p = ports(Some("127.0.0.1:8080"));
        for (port, reason) in [
            (15000, AppPortRefusal::SidecarPort),
            (15006, AppPortRefusal::SidecarPort),
            (0, AppPortRefusal::Invalid),
        ] {
            match p.get(Some(port)) {
                Err(e @ ProxyError::NoAppPort { .. }) => {
                    assert_eq!(e.kind(), ErrorKind::NoAppPort);
                    assert!(e.to_string().contains(&port.to_string()), "{e}");
                    assert!(matches!(e, ProxyError::NoAppPort { reason: r, .. } if r == reason));
                }
                other => panic!("port {port}: {:?}", other.map(|a| a.addr)),
            }
        }
    }

    #[test]
    fn without_app_only_named_ports_are_reached_on_loopback() {
        let p = ports(None);
        assert!(matches!(p.get(None), Err(ProxyError::NoApp)));
        let a = p.get(Some(9000)).expect("app");
        assert_eq!(a.addr.to_string(), "127.0.0.1:9000");
    }
}
