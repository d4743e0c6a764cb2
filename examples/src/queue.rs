//! The restaurant's message queue: order-service publishes an
//! `order.created` event to RabbitMQ for every order, and email-service
//! consumes it and sends the confirmation. Both apps speak plain AMQP to an
//! upstream port of their own sidecar; the sidecars carry it to the broker's
//! sidecar as opaque TCP over mutual TLS, so the apps hold no broker
//! address and no TLS settings.
//!
//! Nothing is lost while the broker comes and goes: the exchange and the
//! queue are durable and every message persistent; the publisher waits for
//! the broker's confirm of each message and publishes it again (on a new
//! connection, after a backoff) until one arrives; the consumer acknowledges
//! a message only after handling it, so what it held when its connection
//! died is delivered again. That is AMQP's at-least-once: a message whose
//! confirm or ack was lost with the connection can arrive twice, and the
//! consumer sees `redelivered` on the second copy when the broker knows.
//!
//! W3C trace context travels in the message headers (`traceparent`), so the
//! consumer's span continues the publisher's trace.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};
use tokio::sync::Mutex;

use crate::otel::Otel;

/// The durable topic exchange the restaurant's events go to.
pub const EXCHANGE: &str = "restaurant";
/// The routing key of a new order.
pub const ORDER_CREATED: &str = "order.created";
/// email-service's durable queue, bound to [`ORDER_CREATED`].
pub const EMAIL_QUEUE: &str = "email-service.order-created";

/// AMQP's delivery mode for a message the broker writes to disk.
const PERSISTENT: u8 = 2;
/// One try (connect, publish, confirm) may take this long before the
/// connection is given up and a new one tried: a broker that stopped
/// answering must not hold an order's request forever.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// The event order-service publishes: `{"orderId": …, "userId": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    pub order_id: u64,
    pub user_id: i64,
}

/// Jittered exponential backoff between reconnects, so that the clients of
/// a broker that just came back do not all reconnect in the same instant.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: uniformly in [d/2, d], d = min(max, base × 2^attempt).
    pub fn next_delay(&mut self) -> Duration {
        let d = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        d.mul_f64(0.5 + 0.5 * unit())
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    /// 100 ms, doubling to at most 2 s: a restarted broker is found within
    /// about 2 s of its coming back.
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
    }
}

/// A number in [0, 1) that differs between calls and processes.
fn unit() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let h = RandomState::new().hash_one(std::time::Instant::now());
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Declares the exchange, the email queue and its binding. Both sides
/// declare all three (declarations are idempotent), so that an event
/// published before email-service ever ran waits in its queue instead of
/// being dropped as unroutable.
async fn declare(channel: &Channel) -> lapin::Result<()> {
    channel
        .exchange_declare(
            EXCHANGE.into(),
            lapin::ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            EMAIL_QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            EMAIL_QUEUE.into(),
            EXCHANGE.into(),
            ORDER_CREATED.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    let conn = tokio::time::timeout(
        ATTEMPT_TIMEOUT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .context("timed out")??;
    Ok(conn)
}

/// An open connection and its channel; `generation` tells a failed caller
/// whether someone already replaced it.
struct Open {
    generation: u64,
    connection: Connection,
    channel: Channel,
}

/// Publishes events with publisher confirms, reconnecting as needed. Shared
/// by all of an app's requests (one connection, one channel).
pub struct Publisher {
    url: String,
    /// How long one `publish` keeps trying before it reports failure.
    give_up_after: Duration,
    open: Mutex<Option<Open>>,
    generation: AtomicU64,
    connects: AtomicU64,
}

impl Publisher {
    /// Connects lazily, at the first publish.
    pub fn new(url: impl Into<String>, give_up_after: Duration) -> Self {
        Publisher {
            url: url.into(),
            give_up_after,
            open: Mutex::new(None),
            generation: AtomicU64::new(0),
            connects: AtomicU64::new(0),
        }
    }

    /// How many connections it has opened (1 when the broker never went away).
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Publishes `event` under a producer span that is a child of `parent`,
    /// and returns once the broker has confirmed it (written it to disk
    /// and routed it to the email queue). Tries again on a new connection
    /// until `give_up_after`; a try whose confirm was lost may have been
    /// stored, so the event may be delivered twice.
    pub async fn publish(
        &self,
        otel: &Otel,
        parent: &Context,
        event: OrderCreated,
    ) -> anyhow::Result<()> {
        let cx = otel.start(
            parent,
            SpanKind::Producer,
            format!("publish {ORDER_CREATED}"),
            vec![
                KeyValue::new("messaging.system", "rabbitmq"),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.destination.name", EXCHANGE),
                KeyValue::new("messaging.rabbitmq.destination.routing_key", ORDER_CREATED),
                KeyValue::new("messaging.message.id", event.order_id.to_string()),
            ],
        );
        let mut headers = FieldTable::default();
        otel.inject_into(&cx, &mut Headers(&mut headers));
        let result = self.publish_with_retries(event, headers).await;
        otel.end(&cx, result.as_ref().err().map(|e| format!("{e:#}")));
        result
    }

    async fn publish_with_retries(
        &self,
        event: OrderCreated,
        headers: FieldTable,
    ) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(&event)?;
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(event.order_id.to_string().into())
            .with_headers(headers);
        let deadline = tokio::time::Instant::now() + self.give_up_after;
        let mut backoff = Backoff::default();
        loop {
            let generation = self.generation.load(Ordering::Acquire);
            let attempt = tokio::time::timeout(
                ATTEMPT_TIMEOUT,
                self.try_publish(&payload, properties.clone()),
            )
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("no confirm in {ATTEMPT_TIMEOUT:?}")));
            let error = match attempt {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            // Whatever failed, the next try starts on a new connection:
            // a channel that lost a confirm cannot be trusted with the next.
            self.discard(generation).await;
            let delay = backoff.next_delay();
            if tokio::time::Instant::now() + delay > deadline {
                return Err(error.context(format!(
                    "{ORDER_CREATED} not confirmed by the broker within {:?}",
                    self.give_up_after
                )));
            }
            tracing::warn!(error = %format!("{error:#}"), retry_in = ?delay, "publish failed");
            tokio::time::sleep(delay).await;
        }
    }

    async fn try_publish(&self, payload: &[u8], properties: BasicProperties) -> anyhow::Result<()> {
        let channel = self.channel().await?;
        let confirm = channel
            .basic_publish(
                EXCHANGE.into(),
                ORDER_CREATED.into(),
                // Mandatory: an event no queue takes comes back as an error
                // rather than vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload,
                properties,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => bail!(
                "the broker returned the message: {} {}",
                returned.reply_code,
                returned.reply_text
            ),
            Confirmation::Nack(_) => bail!("the broker refused the message (nack)"),
            Confirmation::NotRequested => bail!("publisher confirms are off on this channel"),
        }
    }

    /// The current channel, or a new connection's.
    async fn channel(&self) -> anyhow::Result<Channel> {
        let mut open = self.open.lock().await;
        if let Some(o) = open.as_ref()
            && o.connection.status().connected()
        {
            return Ok(o.channel.clone());
        }
        let connection = connect(&self.url).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare(&channel).await?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        tracing::info!(url = %self.url, "connected to the broker (publisher)");
        *open = Some(Open {
            generation,
            connection,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// Drops the connection a failed try used, unless it was replaced.
    async fn discard(&self, generation: u64) {
        let mut open = self.open.lock().await;
        if open.as_ref().is_some_and(|o| o.generation <= generation)
            && let Some(o) = open.take()
        {
            let _ = tokio::time::timeout(
                Duration::from_millis(200),
                o.connection
                    .close(200, "publish failed; reconnecting".into()),
            )
            .await;
        }
    }

    /// Closes the connection (at shutdown).
    pub async fn close(&self) {
        if let Some(o) = self.open.lock().await.take() {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                o.connection.close(200, "bye".into()),
            )
            .await;
        }
    }
}

/// One event taken from the queue.
#[derive(Debug)]
pub struct Received {
    pub event: OrderCreated,
    /// The broker delivered it before (to a consumer that did not ack it).
    pub redelivered: bool,
    headers: FieldTable,
}

impl Received {
    /// The publisher's trace context, from the message headers.
    pub fn context(&self, otel: &Otel) -> Context {
        otel.extract_from(&HeadersRef(&self.headers))
    }
}

/// What a consumer reports while it runs.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Connections opened (1 when the broker never went away).
    pub connects: AtomicU64,
    /// Messages handled and acknowledged.
    pub acked: AtomicU64,
    /// Messages that were not `OrderCreated` JSON: rejected, not requeued
    /// (they would come back forever).
    pub rejected: AtomicU64,
}

/// Consumes the email queue until `shutdown` resolves: each message is
/// handed to `handle` and acknowledged when it returns `Ok` (requeued when
/// it returns `Err`). The broker sends at most `prefetch` unacknowledged
/// messages at a time. When the connection fails it connects again, with
/// backoff, for as long as it runs.
pub async fn consume<H, F>(
    url: &str,
    prefetch: u16,
    stats: &ConsumerStats,
    handle: H,
    shutdown: impl Future<Output = ()>,
) where
    H: Fn(Received) -> F,
    F: Future<Output = anyhow::Result<()>>,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut backoff = Backoff::default();
    loop {
        let session = consume_once(url, prefetch, stats, &handle, &mut backoff);
        tokio::select! {
            _ = &mut shutdown => return,
            r = session => {
                if let Err(e) = r {
                    tracing::warn!(error = %format!("{e:#}"), "consumer disconnected");
                }
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection's worth of consuming; returns when it fails.
async fn consume_once<H, F>(
    url: &str,
    prefetch: u16,
    stats: &ConsumerStats,
    handle: &H,
    backoff: &mut Backoff,
) -> anyhow::Result<()>
where
    H: Fn(Received) -> F,
    F: Future<Output = anyhow::Result<()>>,
{
    let connection = connect(url).await?;
    let channel = connection.create_channel().await?;
    declare(&channel).await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            EMAIL_QUEUE.into(),
            ShortString::from("email-service"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    stats.connects.fetch_add(1, Ordering::Relaxed);
    backoff.reset();
    tracing::info!(%url, queue = EMAIL_QUEUE, "consuming");
    while let Some(delivery) = deliveries.next().await {
        let delivery = delivery?;
        // Deliveries already received when the connection died would be
        // handled with no way to ack them, and then delivered again:
        // leave them to that second delivery.
        if !channel.status().connected() {
            bail!("the channel closed");
        }
        let event = match serde_json::from_slice::<OrderCreated>(&delivery.data) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "not an order.created event; rejected");
                delivery
                    .nack(BasicNackOptions {
                        requeue: false,
                        ..Default::default()
                    })
                    .await?;
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let received = Received {
            event,
            redelivered: delivery.redelivered,
            headers: delivery.properties.headers().clone().unwrap_or_default(),
        };
        match handle(received).await {
            Ok(()) => {
                delivery.ack(BasicAckOptions::default()).await?;
                stats.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), order = event.order_id, "handling failed; requeued");
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?;
            }
        }
    }
    bail!("the broker ended the consumer")
}

/// Message headers as a trace-context carrier (written).
struct Headers<'a>(&'a mut FieldTable);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.to_string().into(), AMQPValue::LongString(value.into()));
    }
}

/// Message headers as a trace-context carrier (read).
struct HeadersRef<'a>(&'a FieldTable);

impl Extractor for HeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0.inner().keys().map(ShortString::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for want in [100u64, 200, 400, 800, 1600, 2000, 2000] {
            let d = b.next_delay().as_millis() as u64;
            assert!(
                d >= want / 2 && d <= want,
                "{d} not in [{}, {want}]",
                want / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn the_event_is_camel_case_json() {
        let e = OrderCreated {
            order_id: 7,
            user_id: 2,
        };
        let json = serde_json::to_string(&e).unwrap_or_default();
        assert_eq!(json, r#"{"orderId":7,"userId":2}"#);
        assert_eq!(serde_json::from_str::<OrderCreated>(&json).ok(), Some(e));
        assert!(serde_json::from_str::<OrderCreated>(r#"{"orderId":7}"#).is_err());
    }

    #[test]
    fn trace_context_survives_the_message_headers() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
        let otel = Otel::init_with("test", None).expect("no exporter to build");
        let sent = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap_or(TraceId::INVALID),
            SpanId::from_hex("00f067aa0ba902b7").unwrap_or(SpanId::INVALID),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = Context::new().with_remote_span_context(sent.clone());
        let mut headers = FieldTable::default();
        otel.inject_into(&cx, &mut Headers(&mut headers));
        assert!(
            matches!(
                headers.inner().get("traceparent"),
                Some(AMQPValue::LongString(v))
                    if v.as_bytes() == b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            ),
            "{headers:?}"
        );
        let received = Received {
            event: OrderCreated {
                order_id: 1,
                user_id: 1,
            },
            redelivered: false,
            headers,
        };
        let got = received.context(&otel);
        let got = got.span().span_context().clone();
        assert_eq!(got.trace_id(), sent.trace_id());
        assert_eq!(got.span_id(), sent.span_id());
        assert!(got.is_remote());
    }
}
