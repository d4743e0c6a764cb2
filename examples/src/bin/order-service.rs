//! order-service: `GET /orders?userId=N` answers a user's orders, with the
//! user looked up from user-service over gRPC through the local sidecar;
//! `POST /orders` with `{"userId": N}` places an order and publishes
//! `order.created` to RabbitMQ through the sidecar (email-service sends the
//! confirmation).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http_body_util::BodyExt;

use clap::Parser;
use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use weft_examples::otel::Otel;
use weft_examples::pb::UserRequest;
use weft_examples::pb::user_service_client::UserServiceClient;
use weft_examples::queue::{OrderCreated, Publisher};
use weft_examples::serve::{Body, Rest, json, serve};
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
    /// The broker for `order.created` events: the sidecar's upstream port
    /// for the `rabbitmq` service. Without it, POST /orders answers 503.
    #[arg(long, env = "AMQP_URL")]
    amqp: Option<String>,
    /// How long placing an order waits for the broker to confirm its event
    /// (reconnecting meanwhile) before it answers 503.
    #[arg(long, default_value = "15s", value_parser = parse_secs)]
    publish_timeout: Duration,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    s.strip_suffix('s')
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is not a whole number of seconds such as 15s"))
}

/// The largest order a client may send.
const MAX_BODY: usize = 64 * 1024;

/// What the order handlers share.
struct Shop {
    users: UserServiceClient<tonic::transport::Channel>,
    otel: Arc<Otel>,
    publisher: Option<Publisher>,
    next_order: AtomicU64,
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
    let shop = Arc::new(Shop {
        users: UserServiceClient::new(channel),
        otel: otel.clone(),
        publisher: args
            .amqp
            .as_ref()
            .map(|url| Publisher::new(url.clone(), args.publish_timeout)),
        // Ids from the clock at start, so a restarted instance does not
        // hand out the ids of the one before.
        next_order: AtomicU64::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_millis() as u64),
        ),
    });
    let handlers = shop.clone();
    let rest: Rest = Arc::new(move |req| {
        let shop = handlers.clone();
        Box::pin(async move {
            let otel = &shop.otel;
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
            let resp = orders(&shop, &cx, req).await;
            let status = resp.status();
            otel.end(
                &cx,
                status.is_server_error().then(|| format!("HTTP {status}")),
            );
            resp
        })
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, user_service = %args.user_service, amqp = ?args.amqp, "order-service listening");
    serve(listener, None, rest, shutdown_signal()).await;
    if let Some(p) = &shop.publisher {
        p.close().await;
    }
    otel.shutdown().await;
    Ok(())
}

/// `/orders`: GET lists a user's orders, POST places one.
async fn orders(
    shop: &Shop,
    parent: &opentelemetry::Context,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<Body> {
    if req.uri().path() != "/orders" {
        return json(
            http::StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "try GET /orders?userId=1"}),
        );
    }
    match *req.method() {
        http::Method::GET => list_orders(shop, parent, req.uri().query()).await,
        http::Method::POST => place_order(shop, parent, req).await,
        _ => json(
            http::StatusCode::METHOD_NOT_ALLOWED,
            &serde_json::json!({"error": "GET or POST /orders"}),
        ),
    }
}

/// `GET /orders?userId=N`: the user from user-service, and their orders.
async fn list_orders(
    shop: &Shop,
    parent: &opentelemetry::Context,
    query: Option<&str>,
) -> http::Response<Body> {
    let Some(id) = query_user_id(query) else {
        return json(
            http::StatusCode::BAD_REQUEST,
            &serde_json::json!({"error": "userId is required"}),
        );
    };
    match get_user(shop, parent, id).await {
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
        Err(s) => user_error(s),
    }
}

/// `POST /orders` with `{"userId": N}`: checks the user with user-service,
/// publishes `order.created` and answers 201 once the broker confirmed it.
async fn place_order(
    shop: &Shop,
    parent: &opentelemetry::Context,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<Body> {
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return json(
                http::StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": format!("cannot read the body: {e}")}),
            );
        }
    };
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase", deny_unknown_fields)]
    struct NewOrder {
        user_id: i64,
    }
    let order = match serde_json::from_slice::<NewOrder>(&body) {
        Ok(o) => o,
        Err(e) => {
            return json(
                http::StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": format!("the body must be {{\"userId\": N}}: {e}")}),
            );
        }
    };
    if let Err(s) = get_user(shop, parent, order.user_id).await {
        return user_error(s);
    }
    let Some(publisher) = &shop.publisher else {
        return json(
            http::StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"error": "no message broker: order-service runs without --amqp"}),
        );
    };
    let event = OrderCreated {
        order_id: shop.next_order.fetch_add(1, Ordering::Relaxed),
        user_id: order.user_id,
    };
    match publisher.publish(&shop.otel, parent, event).await {
        Ok(()) => {
            tracing::info!(
                order_id = event.order_id,
                user_id = event.user_id,
                "order placed"
            );
            json(
                http::StatusCode::CREATED,
                &serde_json::json!({"orderId": event.order_id, "userId": event.user_id}),
            )
        }
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "order.created not published");
            json(
                http::StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": format!("{e:#}")}),
            )
        }
    }
}

/// user-service's answer for user `id`, under a client span whose context
/// is sent on.
async fn get_user(
    shop: &Shop,
    parent: &opentelemetry::Context,
    id: i64,
) -> Result<tonic::Response<weft_examples::pb::UserResponse>, tonic::Status> {
    let otel = &shop.otel;
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
    let result = shop.users.clone().get_user(call).await;
    otel.end(
        &cx,
        result
            .as_ref()
            .err()
            .map(|s| format!("{:?}: {}", s.code(), s.message())),
    );
    result
}

fn user_error(s: tonic::Status) -> http::Response<Body> {
    if s.code() == tonic::Code::NotFound {
        return json(
            http::StatusCode::NOT_FOUND,
            &serde_json::json!({"error": s.message()}),
        );
    }
    tracing::warn!(code = ?s.code(), message = s.message(), "user-service call failed");
    json(
        http::StatusCode::BAD_GATEWAY,
        &serde_json::json!({"error": format!("user-service: {:?}: {}", s.code(), s.message())}),
    )
}
