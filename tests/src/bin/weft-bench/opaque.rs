//! The opaque TCP pair's backend and warm-up. Not measured: the round
//! trips put the sidecar's opaque TCP path (protocol detection, the mTLS
//! tunnel with ALPN `weft-tcp`, the byte copy) in the profile of a build
//! trained on this benchmark (deploy/pgo.sh).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP echo server on a fresh port, in this process.
pub async fn echo_backend() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// 20 connections through `addr` (the client sidecar's upstream port) of
/// 100 round trips of `payload` bytes each, every echo checked; first
/// waits until the client's sidecar knows the server's instance.
pub async fn warm_up(addr: SocketAddr, payload: usize) -> anyhow::Result<()> {
    let message: Vec<u8> = (0..payload.max(1)).map(|i| (i % 251) as u8).collect();
    weft_tests::util::wait_for(
        "a round trip through the opaque TCP pair",
        Duration::from_secs(20),
        || {
            let message = &message;
            async move { round_trips(addr, message, 1).await.ok() }
        },
    )
    .await?;
    for _ in 0..20 {
        round_trips(addr, &message, 100).await?;
    }
    Ok(())
}

/// One connection, `n` round trips of `message`.
async fn round_trips(addr: SocketAddr, message: &[u8], n: usize) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut back = vec![0; message.len()];
    for _ in 0..n {
        s.write_all(message).await?;
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .context("the opaque TCP pair echoed nothing within 5 s")??;
        anyhow::ensure!(back == message, "the opaque TCP pair changed the bytes");
    }
    Ok(())
}
