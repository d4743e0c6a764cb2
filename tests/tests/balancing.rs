//! Per-request balancing: one HTTP/2 connection from the app is spread over
//! every healthy instance.

use std::collections::HashMap;

use weft_tests::echo::client;
use weft_tests::mesh::{ControlPlane, caller, echo_instances};
use weft_tests::pb::EchoRequest;
use weft_tests::util::init_logs;

async fn spread(balancer: Option<&str>) -> anyhow::Result<HashMap<String, u32>> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    if let Some(lb) = balancer {
        cp.apply_yaml(&format!(
            "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: echo}}\nspec: {{loadBalancer: {lb}}}\n"
        ))
        .await?;
    }
    let instances = echo_instances(&cp, "echo", &["a", "b"]).await?;
    let caller = caller(&cp, "echo", 2).await?;

    // One client, one HTTP/2 connection, 1000 calls, 8 in flight at a time.
    let c = client(caller.upstream("echo")).await?;
    let mut counts = HashMap::new();
    let mut calls = futures_util::stream::iter(0..1000)
        .map(|_| {
            let mut c = c.clone();
            async move {
                c.unary(EchoRequest::default())
                    .await
                    .map(|r| r.into_inner().instance)
            }
        })
        .buffer_unordered(8);
    use futures_util::StreamExt;
    while let Some(r) = calls.next().await {
        *counts.entry(r?).or_insert(0u32) += 1;
    }
    assert_eq!(
        instances.iter().map(|(app, _)| app.calls()).sum::<u64>(),
        1000
    );
    Ok(counts)
}

fn assert_balanced(counts: &HashMap<String, u32>) {
    eprintln!("spread: {counts:?}");
    for instance in ["a", "b"] {
        let n = counts.get(instance).copied().unwrap_or(0);
        assert!(
            (350..=650).contains(&n),
            "{instance} got {n} of 1000: {counts:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_ewma_spreads_one_connection_over_two_instances() -> anyhow::Result<()> {
    assert_balanced(&spread(None).await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_one_connection_over_two_instances() -> anyhow::Result<()> {
    assert_balanced(&spread(Some("round-robin")).await?);
    Ok(())
}
