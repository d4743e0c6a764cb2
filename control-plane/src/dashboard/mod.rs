//! The dashboard: a small web page served by the control plane, from
//! assets compiled into the binary, and the JSON it polls — the service
//! graph, one service's page, the connected sidecars.
//!
//! Served on its own listener (`--dashboard`, loopback by default). Bound
//! elsewhere, every JSON read needs the admin credential
//! (`authorization: Bearer …`, which the page sends from the URL's
//! fragment: `weftctl dashboard` prints it). The page itself holds no data
//! and is served to anyone. Nothing served is a secret: no tokens, no
//! keys.

mod json;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::auth::AdminAuth;
use crate::catalog::{Catalog, DEFAULT_WINDOW, EDGE_HORIZON};
use crate::resource::Name;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// What the dashboard serves from.
#[derive(Clone)]
pub struct Dashboard {
    catalog: Arc<Catalog>,
    /// `None`: bound to loopback, reads are open.
    auth: Option<AdminAuth>,
}

impl Dashboard {
    /// Reads need `auth` unless `addr` is a loopback address.
    pub fn new(catalog: Arc<Catalog>, auth: AdminAuth, addr: SocketAddr) -> Self {
        Dashboard {
            catalog,
            auth: (!addr.ip().is_loopback()).then_some(auth),
        }
    }

    /// Whether reads need the admin credential.
    pub fn needs_credential(&self) -> bool {
        self.auth.is_some()
    }

    /// Answers one request.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                JSON,
                json::error("the dashboard only reads: use GET"),
            );
        }
        let path = req.uri().path();
        let asset = match path {
            "/" | "/index.html" => Some((HTML, INDEX_HTML)),
            "/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
            "/style.css" => Some(("text/css; charset=utf-8", STYLE_CSS)),
            _ => None,
        };
        if let Some((ctype, body)) = asset {
            return reply(StatusCode::OK, ctype, body.to_string());
        }
        let Some(api) = path.strip_prefix("/api/") else {
            return reply(
                StatusCode::NOT_FOUND,
                JSON,
                json::error("not found: the page is at /, its data under /api/"),
            );
        };
        if let Some(auth) = &self.auth {
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !token.is_some_and(|t| auth.accepts(t)) {
                return reply(
                    StatusCode::UNAUTHORIZED,
                    JSON,
                    json::error(
                        "this dashboard is not on loopback: reads need the admin credential (open the URL `weftctl dashboard` prints)",
                    ),
                );
            }
        }
        let window = match window(req.uri().query()) {
            Ok(w) => w,
            Err(e) => return reply(StatusCode::BAD_REQUEST, JSON, json::error(&e.to_string())),
        };
        match api.split_once('/').unwrap_or((api, "")) {
            ("graph", "") => reply(
                StatusCode::OK,
                JSON,
                json::graph(&self.catalog.graph(window)),
            ),
            ("sidecars", "") => reply(
                StatusCode::OK,
                JSON,
                json::sidecars(&self.catalog.sidecar_rows()),
            ),
            ("services", name) => {
                let Ok(name) = Name::parse(name) else {
                    return reply(
                        StatusCode::BAD_REQUEST,
                        JSON,
                        json::error(&format!("{name:?} is not a service name")),
                    );
                };
                match self.catalog.service_page(&name, window) {
                    Some(page) => reply(StatusCode::OK, JSON, json::service_page(&page)),
                    None => reply(
                        StatusCode::NOT_FOUND,
                        JSON,
                        json::error(&format!("service {:?} not found", name.as_str())),
                    ),
                }
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                JSON,
                json::error("not found: try /api/graph, /api/sidecars or /api/services/NAME"),
            ),
        }
    }
}

const JSON: &str = "application/json";
const HTML: &str = "text/html; charset=utf-8";

/// A `?window=` that is not a whole number of seconds the graph keeps.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window={0:?}: a whole number of seconds from 1 to {max}", max = EDGE_HORIZON.as_secs())]
struct BadWindow(String);

/// `?window=N` (seconds, 1 to the edges' horizon); the default without.
fn window(query: Option<&str>) -> Result<Duration, BadWindow> {
    let Some(v) = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("window="))
    else {
        return Ok(DEFAULT_WINDOW);
    };
    match v.parse::<u64>() {
        Ok(s) if (1..=EDGE_HORIZON.as_secs()).contains(&s) => Ok(Duration::from_secs(s)),
        _ => Err(BadWindow(v.to_string())),
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    // Live data: never from a cache.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if ctype == HTML {
        // Our own script and style only; nothing from elsewhere.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        );
    }
    resp
}

/// Serves the dashboard on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    dashboard: Dashboard,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(dashboard = %addr, credential = dashboard.needs_credential(), "dashboard listening");
    let respond = move |req: Request<Incoming>| {
        let answer = dashboard.respond(&req);
        async move { answer }
    };
    crate::http::serve(listener, "dashboard", respond, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AdminCredential;
    use crate::catalog::CatalogConfig;

    fn dashboard(addr: &str) -> Dashboard {
        let cred = AdminCredential {
            token: "s3cret".into(),
            trust_domain: "weft.local".into(),
            ca: String::new(),
        };
        let auth = AdminAuth::from_hash(AdminAuth::hash_of(&cred));
        let catalog = Catalog::in_memory(CatalogConfig::default());
        Dashboard::new(catalog, auth, addr.parse().expect("an address"))
    }

    fn get(d: &Dashboard, path: &str, token: Option<&str>) -> Response<Full<Bytes>> {
        let mut req = Request::get(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        d.respond(&req.body(()).expect("a request"))
    }

    #[test]
    fn off_loopback_reads_need_the_admin_token_and_the_page_does_not() {
        let open = dashboard("127.0.0.1:15015");
        assert!(!open.needs_credential());
        assert_eq!(get(&open, "/api/graph", None).status(), StatusCode::OK);
        let v6 = dashboard("[::1]:15015");
        assert!(!v6.needs_credential());

        let wide = dashboard("0.0.0.0:15015");
        assert!(wide.needs_credential());
        for token in [None, Some("wrong"), Some("")] {
            for path in ["/api/graph", "/api/sidecars", "/api/services/x"] {
                let r = get(&wide, path, token);
                assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path} {token:?}");
            }
        }
        assert_eq!(
            get(&wide, "/api/graph", Some("s3cret")).status(),
            StatusCode::OK
        );
        // The page and its assets hold no data: served to anyone.
        for path in ["/", "/app.js", "/style.css"] {
            assert_eq!(get(&wide, path, None).status(), StatusCode::OK, "{path}");
        }
        let page = get(&wide, "/", None);
        let csp = page.headers().get(header::CONTENT_SECURITY_POLICY);
        assert!(csp.is_some_and(|v| v.to_str().is_ok_and(|v| v.contains("default-src 'none'"))));
    }

    #[test]
    fn windows_are_bounded_whole_seconds() {
        assert_eq!(window(None), Ok(DEFAULT_WINDOW));
        assert_eq!(window(Some("x=1")), Ok(DEFAULT_WINDOW));
        assert_eq!(window(Some("a=b&window=30")), Ok(Duration::from_secs(30)));
        for bad in [
            "window=0",
            "window=61",
            "window=1.5",
            "window=",
            "window=-3",
        ] {
            let e = window(Some(bad)).expect_err(bad).to_string();
            assert!(e.contains("from 1 to 60"), "{e}");
        }
    }
}
