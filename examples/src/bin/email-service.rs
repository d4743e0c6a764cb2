//! email-service: consumes `order.created` events from RabbitMQ (through
//! its sidecar's upstream port for the `rabbitmq` service) and "sends" each
//! order's confirmation email: it logs it and counts it. `GET /emails` lists
//! the last ones sent, `GET /metrics` counts them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanKind, TraceContextExt};
use weft_examples::otel::Otel;
use weft_examples::queue::{ConsumerStats, EMAIL_QUEUE, ORDER_CREATED, Received, consume};
use weft_examples::serve::{Rest, json, serve};
use weft_examples::{find_user, init_logs, shutdown_signal};

#[derive(Debug, Parser)]
#[command(
    name = "email-service",
    about = "The restaurant's email service: sends an order confirmation for every order.created event"
)]
struct Args {
    /// Where to serve /health, /emails and /metrics.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8095")]
    listen: std::net::SocketAddr,
    /// The broker: the sidecar's upstream port for the `rabbitmq` service.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:9006/%2f"
    )]
    amqp: String,
    /// How many unacknowledged messages the broker may send at a time.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    prefetch: u16,
}

/// How many sent emails `/emails` shows.
const KEEP: usize = 100;

#[derive(Default)]
struct Outbox {
    stats: ConsumerStats,
    sent: AtomicU64,
    redelivered: AtomicU64,
    last: Mutex<VecDeque<serde_json::Value>>,
}

impl Outbox {
    /// "Sends" the confirmation of one order.
    fn send(&self, otel: &Otel, msg: Received) -> anyhow::Result<()> {
        let e = msg.event;
        // The publisher's span is this one's parent: one order, one trace.
        let cx = otel.start(
            &msg.context(otel),
            SpanKind::Consumer,
            format!("process {ORDER_CREATED}"),
            vec![
                KeyValue::new("messaging.system", "rabbitmq"),
                KeyValue::new("messaging.operation.type", "process"),
                KeyValue::new("messaging.destination.name", EMAIL_QUEUE),
                KeyValue::new("messaging.message.id", e.order_id.to_string()),
            ],
        );
        // A real service would ask user-service; the example knows its users.
        let to = find_user(e.user_id).map_or("unknown user", |u| u.email);
        let trace_id = cx.span().span_context().trace_id().to_string();
        tracing::info!(
            order_id = e.order_id,
            user_id = e.user_id,
            to,
            redelivered = msg.redelivered,
            trace_id,
            "order confirmation sent"
        );
        self.sent.fetch_add(1, Ordering::Relaxed);
        if msg.redelivered {
            self.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut last) = self.last.lock() {
            if last.len() == KEEP {
                last.pop_front();
            }
            last.push_back(serde_json::json!({
                "orderId": e.order_id,
                "userId": e.user_id,
                "to": to,
                "subject": format!("Your order {} is confirmed", e.order_id),
                "redelivered": msg.redelivered,
            }));
        }
        otel.end(&cx, None);
        Ok(())
    }

    fn metrics(&self) -> String {
        let s = &self.stats;
        format!(
            "# HELP emails_sent_total Order confirmations sent.\n# TYPE emails_sent_total counter\nemails_sent_total {}\n\
             # HELP emails_redelivered_total Events the broker delivered again (sent again: at least once).\n# TYPE emails_redelivered_total counter\nemails_redelivered_total {}\n\
             # HELP events_rejected_total Messages that were not order.created events.\n# TYPE events_rejected_total counter\nevents_rejected_total {}\n\
             # HELP broker_connects_total Connections opened to the broker.\n# TYPE broker_connects_total counter\nbroker_connects_total {}\n",
            self.sent.load(Ordering::Relaxed),
            self.redelivered.load(Ordering::Relaxed),
            s.rejected.load(Ordering::Relaxed),
            s.connects.load(Ordering::Relaxed),
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs();
    let args = Args::parse();
    let otel = Arc::new(Otel::init("email-service")?);
    let outbox = Arc::new(Outbox::default());
    let (stop, stopped) = tokio::sync::watch::channel(false);

    let consumer = {
        let (otel, outbox, mut stopped) = (otel.clone(), outbox.clone(), stopped);
        let url = args.amqp.clone();
        tokio::spawn(async move {
            let handle = |msg: Received| {
                let result = outbox.send(&otel, msg);
                std::future::ready(result)
            };
            consume(&url, args.prefetch, &outbox.stats, handle, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .await;
        })
    };

    let view = outbox.clone();
    let rest: Rest = Arc::new(move |req| {
        let outbox = view.clone();
        Box::pin(async move {
            match req.uri().path() {
                "/health" => json(http::StatusCode::OK, &serde_json::json!({"status": "ok"})),
                "/emails" => {
                    let last: Vec<_> = outbox
                        .last
                        .lock()
                        .map(|l| l.iter().cloned().collect())
                        .unwrap_or_default();
                    json(
                        http::StatusCode::OK,
                        &serde_json::json!({
                            "sent": outbox.sent.load(Ordering::Relaxed),
                            "redelivered": outbox.redelivered.load(Ordering::Relaxed),
                            "last": last,
                        }),
                    )
                }
                "/metrics" => {
                    let mut r = http::Response::new(weft_examples::serve::text(outbox.metrics()));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    r
                }
                _ => json(
                    http::StatusCode::NOT_FOUND,
                    &serde_json::json!({"error": "try GET /emails"}),
                ),
            }
        })
    });
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(listen = %args.listen, queue = EMAIL_QUEUE, "email-service listening");
    serve(listener, None, rest, shutdown_signal()).await;
    let _ = stop.send(true);
    let _ = consumer.await;
    otel.shutdown().await;
    Ok(())
}
