//! gRPC through two sidecars: every call kind, metadata and trailers intact,
//! large messages.

use std::time::Duration;

use tonic::Code;
use weft_tests::echo::{client, start_echo};
use weft_tests::mesh::{ControlPlane, SidecarSpec};
use weft_tests::pb::EchoRequest;
use weft_tests::util::{init_logs, metric, wait_for};

struct Mesh {
    _cp: ControlPlane,
    server_side: weft_tests::mesh::Sidecar,
    client_side: weft_tests::mesh::Sidecar,
    _app: weft_tests::echo::EchoServerHandle,
}

async fn mesh() -> anyhow::Result<Mesh> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let app = start_echo("echo-1").await?;
    let server_side = SidecarSpec::new("echo")
        .control_plane(&cp)
        .app(app.addr)
        .start()
        .await?;
    let client_side = SidecarSpec::new("caller")
        .control_plane(&cp)
        .upstream("echo")
        .start()
        .await?;
    client_side
        .wait_endpoints("echo", "the echo endpoint", |e| e.len() == 1)
        .await?;
    Ok(Mesh {
        _cp: cp,
        server_side,
        client_side,
        _app: app,
    })
}

fn req(message: &str) -> EchoRequest {
    EchoRequest {
        message: message.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_with_metadata() -> anyhow::Result<()> {
    let m = mesh().await?;
    let mut c = client(m.client_side.upstream("echo")).await?;
    let mut r = tonic::Request::new(req("hello"));
    r.metadata_mut().insert("x-test-color", "blue".parse()?);
    let resp = c.unary(r).await?;
    assert_eq!(
        resp.metadata().get("x-test-color").map(|v| v.to_str().ok()),
        Some(Some("blue"))
    );
    assert_eq!(resp.get_ref().message, "hello");
    assert_eq!(resp.get_ref().instance, "echo-1");
    // It went out through one sidecar and in through the other. Each
    // counts a call when it ends, which is after the answer is written:
    // the caller may have it a moment before the count.
    let ok = [("grpc_status", "0"), ("status", "200")];
    for (side, direction) in [(&m.client_side, "outbound"), (&m.server_side, "inbound")] {
        let labels = [&ok[..], &[("direction", direction), ("service", "echo")]].concat();
        let counted = || async {
            let text = side.metrics().await.ok()?;
            (metric(&text, "weft_responses_total", &labels) == Some(1.0)).then_some(())
        };
        if wait_for(
            "the call's response counted",
            Duration::from_secs(5),
            counted,
        )
        .await
        .is_err()
        {
            let text = side.metrics().await?;
            panic!("{direction}: one completed response expected\n{text}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_status_and_its_metadata_pass_through() -> anyhow::Result<()> {
    let m = mesh().await?;
    let mut c = client(m.client_side.upstream("echo")).await?;
    let err = c
        .unary(EchoRequest {
            fail_code: Code::ResourceExhausted as u32,
            ..req("x")
        })
        .await
        .expect_err("the server fails it");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "failure requested by the test");
    assert_eq!(
        err.metadata().get("x-test-detail").map(|v| v.to_str().ok()),
        Some(Some("requested"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_streaming_with_trailers() -> anyhow::Result<()> {
    let m = mesh().await?;
    let mut c = client(m.client_side.upstream("echo")).await?;
    let mut stream = c
        .server_stream(EchoRequest {
            count: 50,
            ..req("s")
        })
        .await?
        .into_inner();
    let mut seqs = Vec::new();
    while let Some(r) = stream.message().await? {
        seqs.push(r.seq);
    }
    assert_eq!(seqs, (0..50).collect::<Vec<_>>());
    let trailers = stream.trailers().await?.expect("trailers");
    assert_eq!(
        trailers.get("x-test-trailer").map(|v| v.to_str().ok()),
        Some(Some("done"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_streaming() -> anyhow::Result<()> {
    let m = mesh().await?;
    let mut c = client(m.client_side.upstream("echo")).await?;
    let msgs = (0..20).map(|i| EchoRequest {
        payload: vec![7; 1000],
        ..req(&i.to_string())
    });
    let r = c
        .client_stream(futures_util::stream::iter(msgs))
        .await?
        .into_inner();
    assert_eq!(
        r.message,
        (0..20).map(|i| i.to_string()).collect::<Vec<_>>().join(",")
    );
    assert_eq!(r.seq, 20_000);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_long_lived_streams_than_one_connection_takes_are_all_served() -> anyhow::Result<()> {
    // A sidecar takes 200 streams on a connection from a peer sidecar, and
    // one app: 450 streams that stay open (a feed each) need three
    // connections on each hop after the caller's. On one, the 201st call
    // would wait for a stream until another ended: here, never.
    let m = mesh().await?;
    let c = client(m.client_side.upstream("echo")).await?;
    let open = |i: usize| {
        let mut c = c.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let mut replies = c
                .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            tx.send(req(&format!("feed {i}"))).await?;
            let r = replies.message().await?.expect("a reply");
            anyhow::ensure!(r.message == format!("feed {i}"), "got {:?}", r.message);
            anyhow::Ok((tx, replies))
        }
    };
    let feeds = futures_util::future::join_all((0..450).map(open));
    let feeds = tokio::time::timeout(Duration::from_secs(20), feeds)
        .await
        .map_err(|_| {
            anyhow::anyhow!("not every stream was answered while the others stayed open")
        })?;
    // Three connections to the instance's sidecar (its /config says how
    // many) while all 450 are open.
    let config = m.client_side.config().await?;
    let endpoint = &config["services"]["echo"]["endpoints"][0];
    assert_eq!(endpoint["connections"], 3, "{endpoint}");
    let mut ended = 0;
    for feed in feeds {
        let (tx, mut replies) = feed?;
        drop(tx);
        assert!(replies.message().await?.is_none());
        ended += usize::from(replies.trailers().await?.is_some());
    }
    assert_eq!(ended, 450);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidirectional_streaming_interleaves() -> anyhow::Result<()> {
    let m = mesh().await?;
    let mut c = client(m.client_side.upstream("echo")).await?;
    // Send one message at a time and wait for its echo before the next:
    // proves the bodies stream through both sidecars rather than buffer.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = c
        .bidi(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    for i in 0..10u32 {
        tx.send(req(&format!("m{i}"))).await?;
        let r = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await??
            .expect("a reply");
        assert_eq!((r.message.as_str(), r.seq), (format!("m{i}").as_str(), i));
    }
    drop(tx);
    assert!(replies.message().await?.is_none());
    let trailers = replies.trailers().await?.expect("trailers");
    assert_eq!(
        trailers.get("x-test-trailer").map(|v| v.to_str().ok()),
        Some(Some("done"))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_both_ways() -> anyhow::Result<()> {
    let m = mesh().await?;
    let mut c = client(m.client_side.upstream("echo")).await?;
    for size in [4 * 1024 * 1024, 9 * 1024 * 1024 + 17] {
        let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let r = c
            .unary(EchoRequest {
                payload: payload.clone(),
                ..req("big")
            })
            .await?
            .into_inner();
        assert_eq!(r.payload.len(), size);
        assert!(
            r.payload == payload,
            "payload of {size} bytes changed on the way"
        );
    }
    Ok(())
}
