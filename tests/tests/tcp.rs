//! Opaque TCP through two sidecars, over mutual TLS with ALPN `weft-tcp`:
//! client-speaks-first and server-speaks-first protocols both pass.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_tests::mesh::{ControlPlane, Sidecar, SidecarSpec};
use weft_tests::util::{init_logs, metric, wait_for};

/// A TCP app that greets first ("HELLO\n"), then echoes what it receives.
async fn greeting_echo() -> anyhow::Result<std::net::SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                if s.write_all(b"HELLO\n").await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// The `broker` service (a greeting echo behind its sidecar, protocol tcp).
async fn broker(cp: &ControlPlane) -> anyhow::Result<Sidecar> {
    let app = greeting_echo().await?;
    SidecarSpec::new("broker")
        .arg("--protocol", "tcp")
        .control_plane(cp)
        .app(app)
        .start()
        .await
}

/// A sidecar of service `name` with an upstream port for the broker, once
/// it knows the broker's instance.
async fn broker_client(cp: &ControlPlane, name: &str) -> anyhow::Result<Sidecar> {
    let client = SidecarSpec::new(name)
        .control_plane(cp)
        .upstream("broker")
        .start()
        .await?;
    client
        .wait_endpoints("broker", "the broker", |e| e.len() == 1)
        .await?;
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opaque_tcp_flows_both_ways_over_mtls() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let server = broker(&cp).await?;
    let client = broker_client(&cp, "worker").await?;

    let mut s = TcpStream::connect(client.upstream("broker")).await?;
    // The server speaks first: its greeting arrives without our sending anything.
    let mut greeting = [0u8; 6];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut greeting)).await??;
    assert_eq!(&greeting, b"HELLO\n");
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (mut r, mut w) = s.into_split();
    let send = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&send).await?;
        w.shutdown().await?;
        anyhow::Ok(())
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_to_end(&mut back)).await??;
    writer.await??;
    assert!(
        back == payload,
        "{} bytes came back of {}",
        back.len(),
        payload.len()
    );

    // Byte counts are recorded when the sidecar's copy ends, just after ours.
    let m = wait_for("the byte counts", Duration::from_secs(5), || async {
        let m = client.metrics().await.ok()?;
        metric(
            &m,
            "weft_tcp_sent_bytes_total",
            &[("direction", "outbound")],
        )
        .map(|_| m)
    })
    .await?;
    assert_eq!(
        metric(
            &m,
            "weft_tcp_connections_total",
            &[("direction", "outbound"), ("service", "broker")]
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "weft_tcp_sent_bytes_total",
            &[("direction", "outbound")]
        ),
        Some(200_000.0),
        "{m}"
    );
    let m = server.metrics().await?;
    assert_eq!(
        metric(
            &m,
            "weft_tls_handshakes_total",
            &[("direction", "inbound"), ("result", "ok")]
        ),
        Some(1.0),
        "the TCP connection came over mutual TLS: {m}"
    );
    Ok(())
}

/// Reads the broker's greeting through `addr`, or `None` when the
/// connection is closed without one (a refused caller).
async fn greeting_through(addr: std::net::SocketAddr) -> anyhow::Result<Option<[u8; 6]>> {
    let mut s = TcpStream::connect(addr).await?;
    let mut greeting = [0u8; 6];
    match tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut greeting)).await? {
        Ok(_) => Ok(Some(greeting)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(None),
        Err(e) => Err(e.into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_applies_to_opaque_tcp_connections() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let server = broker(&cp).await?;
    let worker = broker_client(&cp, "worker").await?;
    let intruder = broker_client(&cp, "intruder").await?;
    // No policy: every mesh caller may connect.
    assert_eq!(
        greeting_through(intruder.upstream("broker")).await?,
        Some(*b"HELLO\n")
    );

    // Only `worker` may connect; a rule narrowed to HTTP paths allows no
    // opaque connection, so `intruder`'s rule does not count.
    cp.apply_yaml(
        "apiVersion: weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: broker-clients}\nspec:\n  service: broker\n  rules:\n    - from: [worker]\n    - from: [intruder]\n      http: [{pathPrefix: /}]\n",
    )
    .await?;
    wait_for(
        "the policy on the broker's sidecar",
        Duration::from_secs(10),
        || async {
            let g = greeting_through(intruder.upstream("broker")).await.ok()?;
            g.is_none().then_some(())
        },
    )
    .await?;
    assert_eq!(
        greeting_through(worker.upstream("broker")).await?,
        Some(*b"HELLO\n"),
        "the allowed caller still connects"
    );
    let m = server.metrics().await?;
    assert!(
        metric(
            &m,
            "weft_authorization_denied_total",
            &[("service", "broker"), ("caller", "intruder")]
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
    Ok(())
}
