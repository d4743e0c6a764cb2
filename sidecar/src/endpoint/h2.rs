//! One multiplexed HTTP/2 connection to a peer, opened on first use and
//! reopened when it closes. Every request to that peer shares it.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::connector::{ConnectTarget, Connector};
use crate::body::BoxBody;
use crate::error::ProxyError;
use crate::resilience::limit::Limit;

pub struct H2Client {
    target: ConnectTarget,
    connector: Arc<dyn Connector>,
    /// The open connection. Read without a lock on every request.
    conn: ArcSwapOption<SendRequest<BoxBody>>,
    /// Only one task opens a connection at a time; the others wait for it.
    connecting: tokio::sync::Mutex<()>,
}

impl H2Client {
    pub fn new(target: ConnectTarget, connector: Arc<dyn Connector>) -> Self {
        H2Client {
            target,
            connector,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether a connection is open now (for `/config` and metrics).
    pub fn is_connected(&self) -> bool {
        self.conn.load().as_ref().is_some_and(|c| !c.is_closed())
    }

    /// The open connection, or a new one. Returned as the shared handle so
    /// that a caller that finds it broken can retire exactly that one.
    async fn sender(&self) -> Result<Arc<SendRequest<BoxBody>>, ProxyError> {
        if let Some(c) = self.conn.load_full()
            && !c.is_closed()
        {
            return Ok(c);
        }
        // Boxed: connecting (TLS and the HTTP/2 handshake) is rare, and its
        // future would otherwise be carried by every request's (1 KB).
        Box::pin(self.connect()).await
    }

    /// Opens the connection, unless another task did meanwhile.
    async fn connect(&self) -> Result<Arc<SendRequest<BoxBody>>, ProxyError> {
        let _guard = self.connecting.lock().await;
        if let Some(c) = self.conn.load_full()
            && !c.is_closed()
        {
            return Ok(c);
        }
        let io = self.connector.connect(&self.target).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            // Notice a dead peer even while no request is in flight.
            .keep_alive_interval(Duration::from_secs(20))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            .handshake::<_, BoxBody>(TokioIo::new(io))
            .await
            .map_err(|source| ProxyError::Handshake {
                addr: self.target.addr.to_string(),
                source,
            })?;
        let addr = self.target.addr.clone();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%addr, error = %e, "HTTP/2 connection ended");
            }
        });
        let sender = Arc::new(sender);
        self.conn.store(Some(sender.clone()));
        Ok(sender)
    }

    /// Forgets `broken`, unless another task already replaced it.
    fn retire(&self, broken: &Arc<SendRequest<BoxBody>>) {
        self.conn
            .compare_and_swap(broken, None::<Arc<SendRequest<BoxBody>>>);
    }

    /// Sends one request, with at most `limit.1` requests of the service
    /// waiting for a connection or a stream (counted in `limit.0`); over
    /// it, the request fails at once. A request the connection refused
    /// before sending anything (it had just closed) is sent once more on a
    /// new connection; that is not a retry in the policy sense, the peer
    /// never saw it.
    ///
    /// Also returns the time from handing the request to a ready connection
    /// to the response headers: the peer's latency without connection setup
    /// (which would make a new endpoint look slow to the balancer).
    pub async fn send(
        &self,
        mut req: http::Request<BoxBody>,
        limit: Option<(&Limit, usize)>,
    ) -> Result<(http::Response<Incoming>, Duration), ProxyError> {
        for attempt in 0..2 {
            let waiting = match limit {
                Some((count, max)) => {
                    count
                        .acquire(Some(max))
                        .map_err(|over| ProxyError::Overloaded {
                            service: self.target.service.to_string(),
                            what: "requests waiting for a connection",
                            limit: over.limit,
                        })?
                }
                None => None,
            };
            let ready = async {
                let shared = self.sender().await?;
                let mut sender = (*shared).clone();
                let ok = sender.ready().await.is_ok();
                Ok::<_, ProxyError>((shared, sender, ok))
            }
            .await;
            drop(waiting);
            let (shared, mut sender, ok) = ready?;
            if !ok {
                self.retire(&shared);
                continue;
            }
            let sent = tokio::time::Instant::now();
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((resp, sent.elapsed())),
                Err(mut e) => match e.take_message() {
                    Some(r) if attempt == 0 => {
                        self.retire(&shared);
                        req = r;
                    }
                    _ => {
                        return Err(ProxyError::Upstream {
                            addr: self.target.addr.to_string(),
                            source: e.into_error(),
                        });
                    }
                },
            }
        }
        Err(ProxyError::Connect {
            addr: self.target.addr.to_string(),
            source: std::io::Error::other("connection closed before the request was sent"),
        })
    }
}
