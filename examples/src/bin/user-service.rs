//! user-service: `UserService.GetUser` over gRPC and `GET /users/{id}` over
//! REST, on one port. Every answer says which instance gave it (`x-instance`).

use std::sync::Arc;

use clap::Parser;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use tonic::{Request, Response, Status};
use weft_examples::otel::Otel;
use weft_examples::pb::user_service_server::{UserService, UserServiceServer};
use weft_examples::pb::{UserRequest, UserResponse};
use weft_examples::serve::{Rest, json, serve};
use weft_examples::{find_user, init_logs, shutdown_signal};

#[derive(Debug, Parser)]
#[command(
    name = "user-service",
    about = "The restaurant's user service (gRPC and REST)"
)]
struct Args {
    /// Where to listen.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8081")]
    listen: std::net::SocketAddr,
    /// This instance's name, sent back in `x-instance`.
    #[arg(long, env = "INSTANCE", default_value = "user-1")]
    instance: String,
}

struct Users {
    instance: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
    otel: Arc<Otel>,
}

#[tonic::async_trait]
impl UserService for Users {
    async fn get_user(
        &self,
        request: Request<UserRequest>,
    ) -> Result<Response<UserResponse>, Status> {
        // This app's span, a child of its sidecar's.
        let cx = self.otel.start(
            &self
                .otel
                .extract(&request.metadata().clone().into_headers()),
            SpanKind::Server,
            "restaurant.v1.UserService/GetUser",
            vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "restaurant.v1.UserService"),
                KeyValue::new("rpc.method", "GetUser"),
            ],
        );
        let id = request.get_ref().id;
        let found = find_user(id);
        // NOT_FOUND is the caller's problem, not an error of this server.
        self.otel.end(&cx, None);
        let user = found.ok_or_else(|| Status::not_found(format!("no user {id}")))?;
        let mut resp = Response::new(UserResponse {
            id: user.id,
            name: user.name.into(),
            email: user.email.into(),
        });
        resp.metadata_mut()
            .insert("x-instance", self.instance.clone());
        Ok(resp)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let args = Args::parse();
    let otel = Arc::new(Otel::init("user-service")?);
    let instance: tonic::metadata::MetadataValue<_> = args.instance.parse()?;
    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_serving::<UserServiceServer<Users>>().await;
    let routes =
        tonic::service::Routes::new(health_svc).add_service(UserServiceServer::new(Users {
            instance,
            otel: otel.clone(),
        }));
    let name = args.instance.clone();
    let rest: Rest = Arc::new(move |req| {
        let name = name.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            let mut resp = match path.strip_prefix("/users/").map(str::parse::<i64>) {
                Some(Ok(id)) => match find_user(id) {
                    Some(u) => json(http::StatusCode::OK, &serde_json::json!(u)),
                    None => json(
                        http::StatusCode::NOT_FOUND,
                        &serde_json::json!({"error": format!("no user {id}")}),
                    ),
                },
                _ if path == "/health" => {
                    json(http::StatusCode::OK, &serde_json::json!({"status": "ok"}))
                }
                _ => json(
                    http::StatusCode::NOT_FOUND,
                    &serde_json::json!({"error": "try GET /users/{id}"}),
                ),
            };
            if let Ok(v) = http::HeaderValue::from_str(&name) {
                resp.headers_mut().insert("x-instance", v);
            }
            resp
        })
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, instance = %args.instance, "user-service listening");
    serve(listener, Some(routes), rest, shutdown_signal()).await;
    otel.shutdown().await;
    Ok(())
}
