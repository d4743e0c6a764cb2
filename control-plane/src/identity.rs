//! The `Identity` gRPC service: signs sidecars' certificates. A first
//! certificate needs a join token for the service; a renewal needs the
//! current certificate as the call's client certificate.

use std::sync::Arc;
use std::time::SystemTime;

use tonic::{Request, Response, Status};
use weft_proto::identity::{SpiffeId, peer_id};
use weft_proto::time::unix_ms;
use weft_proto::v1 as pb;
use weft_proto::v1::identity_server::Identity;

use crate::auth::TokenBook;
use crate::ca::{Ca, CaError};
use crate::metrics::{IssueLabels, Metrics};

pub struct IdentityService {
    ca: Arc<Ca>,
    tokens: Arc<TokenBook>,
    metrics: Arc<Metrics>,
}

impl IdentityService {
    pub fn new(ca: Arc<Ca>, tokens: Arc<TokenBook>, metrics: Arc<Metrics>) -> Self {
        IdentityService {
            ca,
            tokens,
            metrics,
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .issued
            .get_or_create(&IssueLabels { result })
            .inc();
    }
}

/// The service identity of a verified client certificate of this trust domain.
pub fn caller_id<T>(req: &Request<T>, trust_domain: &str) -> Option<SpiffeId> {
    let certs = req.peer_certs()?;
    let id = peer_id(&certs)?;
    (id.trust_domain() == trust_domain && id.service_name().is_some()).then_some(id)
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn issue(
        &self,
        request: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        let td = self.ca.trust_domain().to_string();
        let renewing = caller_id(&request, &td);
        let req = request.into_inner();
        let (allowed, how) = match renewing {
            Some(id) => (id, "renewal"),
            None if !req.token.is_empty() => {
                let service = self
                    .tokens
                    .admit(&req.token, SystemTime::now())
                    .map_err(|e| {
                        self.count("refused");
                        Status::unauthenticated(e.to_string())
                    })?;
                (SpiffeId::service(&td, &service), "join token")
            }
            None => {
                self.count("refused");
                return Err(Status::unauthenticated(
                    "a first certificate needs a join token (weftctl token create SERVICE)",
                ));
            }
        };
        let ca = self.ca.clone();
        let csr = req.csr;
        let id = allowed.clone();
        let (cert, expires) = tokio::task::spawn_blocking(move || ca.issue(&csr, &id))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| {
                self.count("refused");
                match e {
                    CaError::WrongIdentity { .. } => Status::permission_denied(e.to_string()),
                    CaError::BadCsr(_) => Status::invalid_argument(e.to_string()),
                    other => Status::internal(other.to_string()),
                }
            })?;
        self.count("issued");
        tracing::info!(identity = %allowed, authorised_by = how, expires_unix_ms = unix_ms(expires), "issued a certificate");
        Ok(Response::new(pb::IssueResponse {
            chain: vec![cert.to_vec()],
            roots: self.ca.roots().iter().map(|c| c.to_vec()).collect(),
            expires_unix_ms: unix_ms(expires),
            spiffe_id: allowed.to_string(),
        }))
    }
}
