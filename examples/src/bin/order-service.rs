//! order-service: `GET /orders?userId=N` answers a user's orders, with the
//! user looked up from user-service over gRPC through the local sidecar.

use std::sync::Arc;

use clap::Parser;
use weft_examples::pb::UserRequest;
use weft_examples::pb::user_service_client::UserServiceClient;
use weft_examples::serve::{Rest, json, serve};
use weft_examples::{init_logs, shutdown_signal};

#[derive(Debug, Parser)]
#[command(
    name = "order-service",
    about = "The restaurant's order service (REST)"
)]
struct Args {
    /// Where to listen.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8090")]
    listen: std::net::SocketAddr,
    /// user-service's gRPC address: the sidecar's upstream port for it.
    #[arg(long, env = "USER_SERVICE", default_value = "http://127.0.0.1:9001")]
    user_service: String,
}

fn query_user_id(q: Option<&str>) -> Option<i64> {
    q?.split('&')
        .find_map(|kv| kv.strip_prefix("userId="))
        .and_then(|v| v.parse().ok())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let args = Args::parse();
    // One HTTP/2 connection to the sidecar; the sidecar spreads the calls.
    let channel = tonic::transport::Endpoint::from_shared(args.user_service.clone())?
        .tcp_nodelay(true)
        .connect_lazy();
    let users = UserServiceClient::new(channel);
    let rest: Rest = Arc::new(move |req| {
        let mut users = users.clone();
        Box::pin(async move {
            if req.uri().path() == "/health" {
                return json(http::StatusCode::OK, &serde_json::json!({"status": "ok"}));
            }
            if req.uri().path() != "/orders" {
                return json(
                    http::StatusCode::NOT_FOUND,
                    &serde_json::json!({"error": "try GET /orders?userId=1"}),
                );
            }
            let Some(id) = query_user_id(req.uri().query()) else {
                return json(
                    http::StatusCode::BAD_REQUEST,
                    &serde_json::json!({"error": "userId is required"}),
                );
            };
            match users.get_user(UserRequest { id }).await {
                Ok(resp) => {
                    let served_by = resp
                        .metadata()
                        .get("x-instance")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let u = resp.into_inner();
                    let orders: Vec<_> = (1..=2)
                        .map(|n| serde_json::json!({"id": id * 100 + n, "item": format!("dish #{}", (id + n) % 7 + 1)}))
                        .collect();
                    json(
                        http::StatusCode::OK,
                        &serde_json::json!({
                            "user": {"id": u.id, "name": u.name, "email": u.email},
                            "orders": orders,
                            "servedBy": served_by,
                        }),
                    )
                }
                Err(s) if s.code() == tonic::Code::NotFound => json(
                    http::StatusCode::NOT_FOUND,
                    &serde_json::json!({"error": s.message()}),
                ),
                Err(s) => {
                    tracing::warn!(code = ?s.code(), message = s.message(), "user-service call failed");
                    json(
                        http::StatusCode::BAD_GATEWAY,
                        &serde_json::json!({"error": format!("user-service: {:?}: {}", s.code(), s.message())}),
                    )
                }
            }
        })
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, user_service = %args.user_service, "order-service listening");
    serve(listener, None, rest, shutdown_signal()).await;
    Ok(())
}
