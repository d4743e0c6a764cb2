//! order-service: `GET /orders?userId=N` answers a user's orders, with the
//! user looked up from user-service over gRPC through the local sidecar.

use std::sync::Arc;

use clap::Parser;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use weft_examples::otel::Otel;
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
    let otel = Arc::new(Otel::init("order-service")?);
    // One HTTP/2 connection to the sidecar; the sidecar spreads the calls.
    let channel = tonic::transport::Endpoint::from_shared(args.user_service.clone())?
        .tcp_nodelay(true)
        .connect_lazy();
    let users = UserServiceClient::new(channel);
    let tracing = otel.clone();
    let rest: Rest = Arc::new(move |req| {
        let mut users = users.clone();
        let otel = tracing.clone();
        Box::pin(async move {
            if req.uri().path() == "/health" {
                return json(http::StatusCode::OK, &serde_json::json!({"status": "ok"}));
            }
            // This app's span, a child of its sidecar's, for the whole request.
            let cx = otel.start(
                &otel.extract(req.headers()),
                SpanKind::Server,
                format!("{} {}", req.method(), req.uri().path()),
                vec![
                    KeyValue::new("http.request.method", req.method().to_string()),
                    KeyValue::new("url.path", req.uri().path().to_string()),
                ],
            );
            let resp = orders(&mut users, &otel, &cx, req).await;
            let status = resp.status();
            otel.end(
                &cx,
                status.is_server_error().then(|| format!("HTTP {status}")),
            );
            resp
        })
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, user_service = %args.user_service, "order-service listening");
    serve(listener, None, rest, shutdown_signal()).await;
    otel.shutdown().await;
    Ok(())
}

/// `GET /orders?userId=N`: the user from user-service, and their orders.
async fn orders(
    users: &mut UserServiceClient<tonic::transport::Channel>,
    otel: &Otel,
    parent: &opentelemetry::Context,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<weft_examples::serve::Body> {
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
    // The call to user-service: a client span, its context sent on.
    let cx = otel.start(
        parent,
        SpanKind::Client,
        "restaurant.v1.UserService/GetUser",
        vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", "restaurant.v1.UserService"),
            KeyValue::new("rpc.method", "GetUser"),
        ],
    );
    let mut headers = http::HeaderMap::new();
    otel.inject(&cx, &mut headers);
    let mut call = tonic::Request::new(UserRequest { id });
    *call.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
    let result = users.get_user(call).await;
    otel.end(
        &cx,
        result
            .as_ref()
            .err()
            .map(|s| format!("{:?}: {}", s.code(), s.message())),
    );
    match result {
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
}
