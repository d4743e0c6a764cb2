//! RabbitMQ through the mesh, with the real parts: a broker of the test's
//! own (Debian's `rabbitmq-server`, its own node, ports and data directory)
//! behind its sidecar as the `tcp` service `rabbitmq`; the restaurant's
//! publisher and consumer (the code order-service and email-service run),
//! each reaching the broker through an upstream port of its own sidecar, so
//! AMQP crosses the mesh as opaque TCP over mutual TLS; the real control
//! plane. A thousand events go through while the broker is stopped and
//! started again: none is lost, duplicates are counted, and every
//! consumer's span continues its publisher's trace.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry::KeyValue;
use opentelemetry::trace::SpanKind;
use tokio::sync::Semaphore;
use weft_examples::broker::{Broker, BrokerConfig, INSTALL_HINT, amqp_url, find_server};
use weft_examples::otel::Otel;
use weft_examples::queue::{ConsumerStats, OrderCreated, Publisher, Received, consume};
use weft_tests::mesh::{ControlPlane, SidecarSpec};
use weft_tests::otlp::{Collector, SpanKind as Kind};
use weft_tests::process::free_port;
use weft_tests::util::{init_logs, metric, wait_for};

const MESSAGES: u64 = 1000;
/// Published before the restart; the consumer handles [`BEFORE_STOP`] of
/// them and is held there, so the rest wait in the queue (on disk) while
/// the broker restarts.
const PUBLISHED_BEFORE_STOP: u64 = 400;
const BEFORE_STOP: usize = 100;
const PREFETCH: u16 = 20;

/// The broker's start script, or `None` (skip) outside CI; under `CI=true`
/// a missing broker fails the test.
fn rabbitmq_server() -> Option<PathBuf> {
    let found = find_server();
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "rabbitmq-server is not installed, and CI=true requires it (.ci/run installs it: {INSTALL_HINT})"
        );
        println!("SKIPPED: rabbitmq-server is not installed ({INSTALL_HINT})");
    }
    found
}

/// A broker on free ports with its own node name, data and epmd.
async fn start_broker(server: PathBuf, dir: &std::path::Path) -> anyhow::Result<Broker> {
    let started = Instant::now();
    let broker = Broker::start(BrokerConfig {
        server,
        dir: dir.join("rabbitmq"),
        node: format!("weft-queue-test-{}@localhost", std::process::id()),
        amqp_port: free_port()?,
        dist_port: free_port()?,
        epmd_port: Some(free_port()?),
    })
    .await?;
    println!(
        "the broker started in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_orders_cross_the_mesh_through_a_broker_restart() -> anyhow::Result<()> {
    let Some(server) = rabbitmq_server() else {
        return Ok(());
    };
    init_logs();
    let dir = tempfile::tempdir()?;
    let mut broker = start_broker(server, dir.path()).await?;

    // The mesh: the broker's sidecar, and one for each client.
    let cp = ControlPlane::start_fast().await?;
    cp.apply_yaml(include_str!("../mesh.yaml")).await?;
    let broker_sidecar = SidecarSpec::new("rabbitmq")
        .arg("--protocol", "tcp")
        .control_plane(&cp)
        .app(broker.addr())
        .start()
        .await?;
    let mut clients = Vec::new();
    for service in ["order-service", "email-service"] {
        let sc = SidecarSpec::new(service)
            .control_plane(&cp)
            .upstream("rabbitmq")
            .start()
            .await?;
        sc.wait_endpoints("rabbitmq", "the broker, healthy", |e| {
            e.len() == 1 && e[0].1 == "healthy"
        })
        .await?;
        clients.push(sc);
    }
    let [publisher_sidecar, consumer_sidecar] = clients.as_slice() else {
        unreachable!("two clients")
    };

    let collector = Collector::start().await?;
    let endpoint = collector.endpoint();
    let publisher_otel = Otel::init_with("order-service", Some(&endpoint))?;
    let consumer_otel = Arc::new(Otel::init_with("email-service", Some(&endpoint))?);
    let publisher = Arc::new(Publisher::new(
        amqp_url(publisher_sidecar.upstream("rabbitmq")),
        // Longer than a broker restart (stop ~3 s, boot ~7 s here).
        Duration::from_secs(60),
    ));

    // The consumer handles a message only with a permit: it is held after
    // BEFORE_STOP until the broker has restarted.
    let gate = Arc::new(Semaphore::new(BEFORE_STOP));
    let seen: Arc<Mutex<HashMap<u64, u32>>> = Arc::default();
    let stats = Arc::new(ConsumerStats::default());
    let (stop_consumer, consumer_stopped) = tokio::sync::oneshot::channel::<()>();
    let consumer = {
        let (gate, seen, stats, otel) = (
            gate.clone(),
            seen.clone(),
            stats.clone(),
            consumer_otel.clone(),
        );
        let url = amqp_url(consumer_sidecar.upstream("rabbitmq"));
        tokio::spawn(async move {
            let handle = |msg: Received| {
                let (gate, seen, otel) = (gate.clone(), seen.clone(), otel.clone());
                async move {
                    gate.acquire().await?.forget();
                    let cx = otel.start(
                        &msg.context(&otel),
                        SpanKind::Consumer,
                        "process order.created",
                        vec![KeyValue::new(
                            "messaging.message.id",
                            msg.event.order_id.to_string(),
                        )],
                    );
                    if let Ok(mut s) = seen.lock() {
                        *s.entry(msg.event.order_id).or_default() += 1;
                    }
                    otel.end(&cx, None);
                    anyhow::Ok(())
                }
            };
            consume(&url, PREFETCH, &stats, handle, async {
                let _ = consumer_stopped.await;
            })
            .await;
        })
    };
    let distinct = |seen: &Mutex<HashMap<u64, u32>>| seen.lock().map_or(0, |s| s.len());
    let publish = |ids: std::ops::Range<u64>| {
        let publisher = publisher.clone();
        let otel = &publisher_otel;
        async move {
            for id in ids {
                let event = OrderCreated {
                    order_id: id,
                    user_id: (id % 5 + 1) as i64,
                };
                publisher
                    .publish(otel, &opentelemetry::Context::new(), event)
                    .await?;
            }
            anyhow::Ok(())
        }
    };

    // Before the restart: every message confirmed; the consumer takes its
    // share and is held.
    publish(0..PUBLISHED_BEFORE_STOP).await?;
    wait_for(
        "the consumer to handle its share before the stop",
        Duration::from_secs(20),
        || async { (distinct(&seen) == BEFORE_STOP).then_some(()) },
    )
    .await?;

    // The broker stops with ~300 messages in its queue; the publisher goes
    // on (its next publish finds no broker and reconnects), the consumer is
    // let go (its ack of the message in hand fails: that one comes again).
    let status = broker.stop().await?;
    println!("the broker stopped ({status}) with messages in its queue");
    let rest = publish(PUBLISHED_BEFORE_STOP..MESSAGES);
    gate.add_permits(Semaphore::MAX_PERMITS / 2);
    let restarted = Instant::now();
    let (published, started) = tokio::join!(rest, async {
        broker.start_again().await?;
        println!(
            "the broker started again in {:.1} s, same node and data",
            restarted.elapsed().as_secs_f64()
        );
        anyhow::Ok(())
    });
    started?;
    published?;
    wait_for(
        "every message to be consumed",
        Duration::from_secs(30),
        || async { (distinct(&seen) as u64 == MESSAGES).then_some(()) },
    )
    .await?;
    let _ = stop_consumer.send(());
    consumer.await?;
    publisher.close().await;

    // None lost; duplicates only as at-least-once allows: a message is
    // delivered again only if it was unacknowledged when the connection
    // died (at most the prefetch window), or published again after its
    // confirm was lost.
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let missing: Vec<u64> = (0..MESSAGES).filter(|id| !seen.contains_key(id)).collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    println!(
        "{MESSAGES} published, {} consumed, {} distinct, {duplicates} duplicate(s); \
         publisher connections {}, consumer connections {}",
        stats.acked.load(Ordering::Relaxed),
        seen.len(),
        publisher.connects(),
        stats.connects.load(Ordering::Relaxed),
    );
    assert!(
        duplicates <= u32::from(PREFETCH) + 1,
        "{duplicates} duplicates is more than at-least-once explains"
    );
    assert!(publisher.connects() >= 2, "the publisher reconnected");
    assert!(
        stats.connects.load(Ordering::Relaxed) >= 2,
        "the consumer reconnected"
    );

    // It all went through the sidecars over mutual TLS.
    let m = broker_sidecar.metrics().await?;
    let handshakes = metric(
        &m,
        "weft_tls_handshakes_total",
        &[("direction", "inbound"), ("result", "ok")],
    )
    .unwrap_or(0.0);
    assert!(
        handshakes >= 4.0,
        "two clients, each connected at least twice, over mutual TLS: {m}"
    );
    for sc in [publisher_sidecar, consumer_sidecar] {
        let m = sc.metrics().await?;
        assert!(
            metric(
                &m,
                "weft_tcp_connections_total",
                &[("direction", "outbound"), ("service", "rabbitmq")]
            )
            .unwrap_or(0.0)
                >= 2.0,
            "{m}"
        );
    }

    // Every consumer span's parent is the publish span of the same message,
    // in the same trace.
    publisher_otel.shutdown().await;
    consumer_otel.shutdown().await;
    let spans = collector
        .wait_for(
            "a publish and a process span per message",
            Duration::from_secs(20),
            |s| s.len() as u64 >= 2 * MESSAGES,
        )
        .await?;
    let producers: HashMap<&str, _> = spans
        .iter()
        .filter(|s| s.kind == Kind::Producer)
        .map(|s| (s.span_id.as_str(), s))
        .collect();
    let consumers: Vec<_> = spans.iter().filter(|s| s.kind == Kind::Consumer).collect();
    assert!(consumers.len() as u64 >= MESSAGES, "{}", consumers.len());
    for c in consumers {
        let Some(p) = producers.get(c.parent_span_id.as_str()) else {
            panic!("the consumer span's parent is no publish span: {c:#?}")
        };
        assert_eq!(c.trace_id, p.trace_id);
        assert_eq!(p.service, "order-service");
        assert_eq!(c.service, "email-service");
        assert_eq!(
            c.attr("messaging.message.id"),
            p.attr("messaging.message.id")
        );
        assert_eq!(p.attr("messaging.system"), Some("rabbitmq"));
    }
    // Gracefully, so that the script reaps its Erlang VM (a kill on drop
    // would leave that to init).
    broker.stop().await?;
    Ok(())
}
