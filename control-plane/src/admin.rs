//! The `Admin` gRPC service that `weftctl` talks to: apply, get and delete
//! resources; list services, instances and sidecars; live traffic (`Top`);
//! and which route a request would take (`Explain`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::{Request, Response, Status};
use weft_proto::v1 as pb;
use weft_proto::v1::admin_server::Admin;

use weft_proto::identity::JoinToken;

use crate::api::convert::resources_from_proto;
use crate::auth::{TokenBook, TokenRecord, random_hex};
use crate::ca::Ca;
use crate::catalog::{Catalog, ExplainError, ExplainQuery, TopError, TopQuery};
use crate::metrics::{ApplyLabels, Metrics};
use crate::resource::route::{check_delete, check_routes};
use crate::resource::{Kind, Name, check_unique_addresses};
use crate::store::{Revision, Store, StoreError};

/// What applying one resource did, as kubectl reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Created,
    Configured,
    Unchanged,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::Configured => "configured",
            Outcome::Unchanged => "unchanged",
        }
    }
}

pub struct AdminService {
    catalog: Arc<Catalog>,
    store: Option<Arc<dyn Store>>,
    metrics: Arc<Metrics>,
    tokens: Arc<TokenBook>,
    ca: Arc<Ca>,
    /// Applies and deletes go to the store and then to memory one at a time,
    /// so the two never disagree.
    write: tokio::sync::Mutex<()>,
    /// This replica's name, given with every sidecar it lists.
    replica: String,
    /// Where the dashboard is; `None`: off.
    dashboard: Option<DashboardInfo>,
}

/// Where this replica serves its dashboard, and whether reads need the
/// admin credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DashboardInfo {
    pub addr: std::net::SocketAddr,
    pub needs_credential: bool,
}

impl AdminService {
    pub fn new(
        catalog: Arc<Catalog>,
        store: Option<Arc<dyn Store>>,
        metrics: Arc<Metrics>,
        tokens: Arc<TokenBook>,
        ca: Arc<Ca>,
    ) -> Self {
        AdminService {
            catalog,
            store,
            metrics,
            tokens,
            ca,
            write: tokio::sync::Mutex::new(()),
            replica: String::new(),
            dashboard: None,
        }
    }

    /// Tells `weftctl dashboard` where the dashboard is.
    pub fn with_dashboard(mut self, dashboard: Option<DashboardInfo>) -> Self {
        self.dashboard = dashboard;
        self
    }

    /// Names this replica in `ListSidecars`.
    pub fn with_replica(mut self, replica: String) -> Self {
        self.replica = replica;
        self
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .applies
            .get_or_create(&ApplyLabels { outcome })
            .inc();
    }
}

/// The one place store errors become statuses: etcd out of reach is
/// UNAVAILABLE (retry later), a concurrent apply on another replica is
/// ABORTED (retry now), a change larger than etcd takes at once
/// INVALID_ARGUMENT (make it smaller), anything else INTERNAL.
fn store_status(e: StoreError) -> Status {
    if e.is_too_big() {
        // The caller's to mend, not the store's.
        tracing::info!(error = %e, "change refused by the store");
        return Status::invalid_argument(e.to_string());
    }
    tracing::error!(error = %e, "store error");
    if e.is_unavailable() {
        Status::unavailable(e.to_string())
    } else if e.is_conflict() {
        Status::aborted(e.to_string())
    } else {
        Status::internal(e.to_string())
    }
}

impl AdminService {
    /// The resources' revision, read before the resources a change is
    /// checked against (see [`Store::revision`]).
    fn revision(&self) -> Revision {
        self.store
            .as_ref()
            .map(|s| s.revision())
            .unwrap_or_default()
    }

    fn shared(&self) -> bool {
        self.store.as_ref().is_some_and(|s| s.is_shared())
    }

    fn store_outcome(&self, e: &StoreError) {
        self.count(if e.is_unavailable() {
            "unavailable"
        } else if e.is_conflict() {
            "conflict"
        } else if e.is_too_big() {
            "invalid"
        } else {
            "error"
        });
    }
}

fn top_status(e: TopError) -> Status {
    match e {
        TopError::WindowTooLong | TopError::BadName(_) => Status::invalid_argument(e.to_string()),
        TopError::UnknownService(_) => Status::not_found(e.to_string()),
    }
}

fn parse_kind(kind: &str) -> Result<Kind, Status> {
    Kind::parse(kind).ok_or_else(|| {
        Status::invalid_argument(format!(
            "unknown resource kind {kind:?}, expected one of {}",
            Kind::CHOICES
        ))
    })
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = request.into_inner();
        let resources = match resources_from_proto(&req.resources) {
            Ok(r) => r,
            Err(e) => {
                self.count("invalid");
                return Err(Status::invalid_argument(e.to_string()));
            }
        };
        if resources.is_empty() {
            self.count("invalid");
            return Err(Status::invalid_argument("no resources to apply"));
        }
        let _guard = self.write.lock().await;
        let seen = self.revision();
        let existing = self.catalog.resources();
        // Routes are checked against what the resources would be: the
        // services they name, their subsets, the rules they would hide.
        if let Err(e) = check_routes(&resources, &existing, &self.catalog.discovered()) {
            self.count("invalid");
            return Err(Status::invalid_argument(e.to_string()));
        }
        // An address names one service, or interception could not tell.
        if let Err(e) = check_unique_addresses(&resources, &existing) {
            self.count("invalid");
            return Err(Status::invalid_argument(e.to_string()));
        }
        // By key, not a scan per resource: linear in a large catalog.
        let by_key: std::collections::HashMap<String, &crate::resource::Resource> =
            existing.iter().map(|x| (x.key(), x)).collect();
        let outcomes: Vec<Outcome> = resources
            .iter()
            .map(|r| match by_key.get(&r.key()).copied() {
                None => Outcome::Created,
                Some(x) if x == r => Outcome::Unchanged,
                Some(_) => Outcome::Configured,
            })
            .collect();
        if !req.dry_run {
            if let Some(store) = &self.store {
                store
                    .apply(&resources, seen)
                    .await
                    .inspect_err(|e| self.store_outcome(e))
                    .map_err(store_status)?;
            }
            // A shared store's watch feeds the catalog (in the store's
            // order, so that a later change from another replica is never
            // overwritten by this one arriving late).
            if !self.shared() {
                self.catalog.apply(&resources);
            }
        }
        self.count("ok");
        let results = resources
            .iter()
            .zip(outcomes)
            .map(|(r, o)| {
                tracing::info!(resource = %r.key(), outcome = o.as_str(), dry_run = req.dry_run, "applied");
                pb::ApplyResult {
                    kind: r.kind().as_str().into(),
                    name: r.name().to_string(),
                    outcome: o.as_str().into(),
                }
            })
            .collect();
        Ok(Response::new(pb::ApplyResponse { results }))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let req = request.into_inner();
        let kind = parse_kind(&req.kind)?;
        let resources: Vec<pb::Resource> = self
            .catalog
            .resources()
            .into_iter()
            .filter(|r| r.kind() == kind && (req.name.is_empty() || r.name().as_str() == req.name))
            .map(|r| pb::Resource::from(&r))
            .collect();
        if !req.name.is_empty() && resources.is_empty() {
            return Err(Status::not_found(format!(
                "{} {:?} not found",
                kind.as_str(),
                req.name
            )));
        }
        Ok(Response::new(pb::GetResponse { resources }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let req = request.into_inner();
        let kind = parse_kind(&req.kind)?;
        let name =
            Name::parse(&req.name).map_err(|e| Status::invalid_argument(format!("name: {e}")))?;
        let _guard = self.write.lock().await;
        let seen = self.revision();
        let exists = self
            .catalog
            .resources()
            .iter()
            .any(|r| r.kind() == kind && r.name() == &name);
        if !exists {
            return Err(Status::not_found(format!(
                "{} {name:?} not found",
                kind.as_str()
            )));
        }
        let broken = check_delete(
            kind,
            &name,
            &self.catalog.resources(),
            &self.catalog.discovered(),
        );
        if !broken.is_empty() {
            return Err(Status::failed_precondition(format!(
                "{}/{name} is in use; change or delete these first:\n  {}",
                kind.as_str(),
                broken.join("\n  ")
            )));
        }
        if let Some(store) = &self.store {
            store
                .delete(kind, &name, seen)
                .await
                .map_err(store_status)?;
        }
        if !self.shared() {
            self.catalog.remove(kind, &name);
        }
        tracing::info!(kind = kind.as_str(), %name, "deleted");
        Ok(Response::new(pb::DeleteResponse {}))
    }

    async fn list_services(
        &self,
        _: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let services = self.catalog.services();
        Ok(Response::new(pb::ListServicesResponse {
            services: services.iter().map(pb::ServiceInfo::from).collect(),
        }))
    }

    async fn list_instances(
        &self,
        request: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let service = request.into_inner().service;
        let instances = self
            .catalog
            .instances()
            .iter()
            .filter(|i| service.is_empty() || i.record.service.as_str() == service)
            .map(pb::InstanceInfo::from)
            .collect();
        Ok(Response::new(pb::ListInstancesResponse { instances }))
    }

    async fn list_sidecars(
        &self,
        _: Request<pb::ListSidecarsRequest>,
    ) -> Result<Response<pb::ListSidecarsResponse>, Status> {
        let sidecars = self
            .catalog
            .sidecars()
            .into_iter()
            .map(|s| pb::SidecarInfo {
                replica: self.replica.clone(),
                ..pb::SidecarInfo::from(s)
            })
            .collect();
        Ok(Response::new(pb::ListSidecarsResponse { sidecars }))
    }

    async fn top(
        &self,
        request: Request<pb::TopRequest>,
    ) -> Result<Response<pb::TopResponse>, Status> {
        let query = TopQuery::try_from(request.get_ref()).map_err(top_status)?;
        let top = self.catalog.top(&query).map_err(top_status)?;
        Ok(Response::new(pb::TopResponse::from(&top)))
    }

    async fn explain(
        &self,
        request: Request<pb::ExplainRequest>,
    ) -> Result<Response<pb::ExplainResponse>, Status> {
        let query = ExplainQuery::try_from(request.get_ref())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let explanation = self.catalog.explain(&query).map_err(|e| match e {
            ExplainError::UnknownService(_) | ExplainError::UnknownGateway(_) => {
                Status::not_found(e.to_string())
            }
        })?;
        Ok(Response::new(pb::ExplainResponse::from(&explanation)))
    }

    async fn dashboard(
        &self,
        _: Request<pb::DashboardRequest>,
    ) -> Result<Response<pb::DashboardResponse>, Status> {
        Ok(Response::new(match self.dashboard {
            Some(d) => pb::DashboardResponse {
                address: d.addr.to_string(),
                needs_credential: d.needs_credential,
            },
            None => pb::DashboardResponse::default(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let req = request.into_inner();
        let service = Name::parse(&req.service)
            .map_err(|e| Status::invalid_argument(format!("service: {e}")))?;
        let ttl = match req.ttl_seconds {
            0 => DEFAULT_TOKEN_TTL,
            s if s > MAX_TOKEN_TTL.as_secs() => {
                return Err(Status::invalid_argument(format!(
                    "ttl: at most {} days",
                    MAX_TOKEN_TTL.as_secs() / 86400
                )));
            }
            s => Duration::from_secs(s),
        };
        // Expired tokens are forgotten here, so the store does not grow
        // with every token ever made.
        let gone = self.tokens.remove_expired(SystemTime::now());
        if let Some(store) = &self.store
            && !gone.is_empty()
        {
            store.delete_tokens(&gone).await.map_err(store_status)?;
        }
        let id = random_hex(8)?;
        let secret = random_hex(32)?;
        let record = TokenRecord::new(service.as_str(), &secret, ttl);
        let expires = record.expires_unix_ms;
        if let Some(store) = &self.store {
            store.put_token(&id, &record).await.map_err(store_status)?;
        }
        self.tokens.insert(id.clone(), record);
        let token = JoinToken {
            td: self.ca.trust_domain().to_string(),
            id: id.clone(),
            secret,
            ca: self.ca.fingerprint(),
        };
        tracing::info!(%service, token = %id, ttl_s = ttl.as_secs(), "created a join token");
        Ok(Response::new(pb::CreateTokenResponse {
            token: token.encode(),
            expires_unix_ms: expires,
            id,
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let tokens = self
            .tokens
            .list(SystemTime::now())
            .into_iter()
            .map(|(id, r)| pb::TokenInfo {
                id,
                service: r.service,
                created_unix_ms: r.created_unix_ms,
                expires_unix_ms: r.expires_unix_ms,
            })
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let id = request.into_inner().id.trim().to_string();
        let Some(record) = self.tokens.get(&id, SystemTime::now()) else {
            return Err(Status::not_found(format!(
                "no join token {id:?} in date (weftctl token list shows them)"
            )));
        };
        // The store first: if it fails, the token still works and the
        // caller is told; never revoked in memory but back after a restart.
        if let Some(store) = &self.store {
            store
                .delete_tokens(std::slice::from_ref(&id))
                .await
                .map_err(store_status)?;
        }
        self.tokens.remove(&id);
        tracing::info!(service = %record.service, token = %id, "revoked a join token");
        Ok(Response::new(pb::RevokeTokenResponse {
            service: record.service,
        }))
    }
}

/// How long a join token admits sidecars unless told otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_TOKEN_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
