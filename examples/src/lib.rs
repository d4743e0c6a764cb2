//! Shared pieces of the restaurant example: the user API, the users it
//! knows, logging, tracing, serving gRPC and REST on one port, the
//! `order.created` queue (publisher and consumer) and a RabbitMQ broker of
//! our own for the quick start and the tests.

pub mod broker;
pub mod otel;
pub mod queue;
pub mod serve;

/// Generated code of `proto/user.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs, unreachable_pub)]
    tonic::include_proto!("restaurant.v1");
}

/// The descriptor set of `proto/user.proto` with its imports: the gateway
/// transcodes REST calls by its `google.api.http` rules (`--transcode`).
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/restaurant.binpb"));

/// A user of the restaurant.
#[derive(Debug, Clone, serde::Serialize)]
pub struct User {
    pub id: i64,
    pub name: &'static str,
    pub email: &'static str,
}

/// The users the example knows (ids 1 to 5).
pub fn find_user(id: i64) -> Option<User> {
    const USERS: [(&str, &str); 5] = [
        ("Ada Lovelace", "ada@example.com"),
        ("Grace Hopper", "grace@example.com"),
        ("Alan Turing", "alan@example.com"),
        ("Barbara Liskov", "barbara@example.com"),
        ("Edsger Dijkstra", "edsger@example.com"),
    ];
    let i = usize::try_from(id).ok()?.checked_sub(1)?;
    USERS.get(i).map(|(name, email)| User { id, name, email })
}

/// JSON logs on stderr, filtered by `RUST_LOG` (default info).
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
