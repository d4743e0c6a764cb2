//! The control plane on etcd: several replicas sharing one real etcd
//! (a single member, or three for the failure tests), started as real
//! processes with real sidecars and real traffic on 127.0.0.1.
//!
//! - an apply on one replica reaches a sidecar connected to another, and
//!   an instance registered through one replica is seen through all;
//! - a killed replica's instances expire with its lease, while a sidecar
//!   that re-registered on another replica stays, never absent;
//! - one replica is elected to sweep, and another takes over when it dies;
//! - two replicas cannot interleave applies (the store's compare);
//! - an apply larger than one etcd transaction (in operations or bytes)
//!   is refused whole, naming the limit (whether this replica or etcd
//!   found it);
//! - with one etcd member of three down nothing is noticed; with all down
//!   traffic flows, writes are refused naming etcd, and accepted again
//!   (reaching the sidecars) when etcd is back;
//! - three replicas on three etcd members: an apply on one reaches the
//!   sidecars on every replica; the replica two sidecars are on is killed
//!   under ~1000 requests a second through them: not one fails, the
//!   server's instance is never absent from the caller's view or the
//!   catalog, both move to another replica (given all three addresses),
//!   `weftctl status` shows them there within 5 s, and their streams
//!   resume unchanged (nothing resent);
//! - a sidecar whose first-choice replica died returns to it when it is
//!   back, under load, without a failed call or a gap in the catalog.
//!
//! Under `CI=true` a missing etcd binary fails these tests.

use std::path::PathBuf;
use std::time::Duration;

use weft_control_plane::auth::CREDENTIAL_FILE;
use weft_control_plane::ca::{CA_CERT_FILE, CA_KEY_FILE, Ca, CaSource};
use weft_control_plane::resource::parse_documents;
use weft_control_plane::store::{EtcdConfig, EtcdStore, Store, StoreConfig};
use weft_proto::addresses::{Candidate, preference_order};
use weft_proto::v1::ListInstancesRequest;
use weft_tests::echo::{client, start_echo};
use weft_tests::etcd::{self, EtcdCluster};
use weft_tests::mesh::{Sidecar, SidecarSpec};
use weft_tests::pb::EchoRequest;
use weft_tests::process::{ControlPlaneProc, free_port, run};
use weft_tests::util::{http_get, init_logs, metric, wait_for};

/// A replica's lease in these tests: a killed replica's instances go
/// within seconds, and a sidecar still has time to move.
const LEASE_TTL: &str = "5s";

/// etcd, the mesh's CA (the same files on every replica, as the docs say),
/// and a directory per replica.
struct Ha {
    etcd: EtcdCluster,
    dir: tempfile::TempDir,
    ca: (PathBuf, PathBuf),
}

impl Ha {
    /// `None`: etcd is not installed and CI is not set (said loudly).
    async fn start(members: usize) -> anyhow::Result<Option<Self>> {
        Self::start_with(members, &[]).await
    }

    /// The same, every etcd member with `etcd_flags`.
    async fn start_with(members: usize, etcd_flags: &[&str]) -> anyhow::Result<Option<Self>> {
        init_logs();
        let Some(binary) = etcd::binary()? else {
            return Ok(None);
        };
        let etcd = EtcdCluster::start_with(binary, members, etcd_flags).await?;
        let dir = tempfile::tempdir()?;
        let ca_dir = dir.path().join("ca");
        std::fs::create_dir_all(&ca_dir)?;
        Ca::load_or_create(
            &CaSource::DataDir(ca_dir.clone()),
            "weft.local",
            Duration::from_secs(3600),
        )?;
        Ok(Some(Ha {
            etcd,
            dir,
            ca: (ca_dir.join(CA_CERT_FILE), ca_dir.join(CA_KEY_FILE)),
        }))
    }

    /// Starts replica `name`. Replicas after `a` get a copy of `a`'s admin
    /// credential, as the README says to do.
    async fn replica(&self, name: &str) -> anyhow::Result<ControlPlaneProc> {
        self.replica_with(name, &[]).await
    }

    /// The same with more flags.
    async fn replica_with(&self, name: &str, extra: &[&str]) -> anyhow::Result<ControlPlaneProc> {
        self.replica_at(name, (free_port()?, free_port()?), extra)
            .await
    }

    /// The same on given ports (gRPC, admin): a replica back where it was.
    async fn replica_at(
        &self,
        name: &str,
        (grpc, admin): (u16, u16),
        extra: &[&str],
    ) -> anyhow::Result<ControlPlaneProc> {
        let data = self.dir.path().join(name);
        std::fs::create_dir_all(&data)?;
        let first = self.dir.path().join("a").join(CREDENTIAL_FILE);
        if name != "a" && first.exists() {
            std::fs::copy(&first, data.join(CREDENTIAL_FILE))?;
        }
        let store = self.etcd.store_flag();
        let (cert, key) = (
            self.ca.0.display().to_string(),
            self.ca.1.display().to_string(),
        );
        let mut flags = vec![
            "--store",
            &store,
            "--ca-cert",
            &cert,
            "--ca-key",
            &key,
            "--etcd-lease-ttl",
            LEASE_TTL,
            "--instance-grace",
            "500ms",
            "--replica-name",
            name,
        ];
        flags.extend_from_slice(extra);
        ControlPlaneProc::start(grpc, admin, &data, &flags).await
    }
}

fn weftctl(
    cp: &ControlPlaneProc,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<(i32, String, String)> {
    let url = cp.url();
    let credential = cp.data_dir.join(CREDENTIAL_FILE).display().to_string();
    let mut all = vec!["--control-plane", &url, "--credential", &credential];
    all.extend_from_slice(args);
    run("weftctl", &all, stdin)
}

fn echo_service(balance: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: echo}}\nspec: {{protocol: grpc, loadBalancer: {balance}}}\n"
    )
}

async fn instance_ids(cp: &ControlPlaneProc) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<String> = cp
        .access()?
        .admin_client()
        .await?
        .list_instances(ListInstancesRequest::default())
        .await?
        .into_inner()
        .instances
        .into_iter()
        .map(|i| i.instance_id)
        .collect();
    ids.sort();
    Ok(ids)
}

async fn calls(caller: &Sidecar, n: usize) -> anyhow::Result<()> {
    let mut c = client(caller.upstream("echo")).await?;
    for _ in 0..n {
        c.unary(EchoRequest::default()).await?;
    }
    Ok(())
}

async fn wait_balance(caller: &Sidecar, balance: &str) -> anyhow::Result<()> {
    wait_for(
        &format!("loadBalancer {balance} on the caller"),
        Duration::from_secs(10),
        || async {
            let c = caller.config().await.ok()?;
            (c["services"]["echo"]["policy"]["balance"] == balance).then_some(())
        },
    )
    .await
}

async fn is_leader(cp: &ControlPlaneProc) -> Option<bool> {
    let m = http_get(&format!("http://{}/metrics", cp.admin))
        .await
        .ok()?;
    Some(metric(&m.body, "weft_control_plane_leader", &[])? == 1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_on_one_replica_reaches_a_sidecar_on_another() -> anyhow::Result<()> {
    let Some(ha) = Ha::start(1).await? else {
        return Ok(());
    };
    let (a, b) = (ha.replica("a").await?, ha.replica("b").await?);
    let echo = start_echo("e1").await?;
    let _server = SidecarSpec::new("echo")
        .access(&a.access()?)
        .app(echo.addr)
        .arg("--instance-id", "echo-a")
        .start()
        .await?;
    let caller = SidecarSpec::new("caller")
        .access(&b.access()?)
        .upstream("echo")
        .start()
        .await?;
    // Registered through A, pushed by B.
    caller
        .wait_endpoints(
            "echo",
            "the instance registered on A, on B's sidecar",
            |e| e.iter().any(|(id, _)| id == "echo-a"),
        )
        .await?;
    calls(&caller, 5).await?;
    assert_eq!(echo.calls(), 5);
    let on_b = instance_ids(&b).await?;
    assert!(on_b.contains(&"echo-a".to_string()), "{on_b:?}");
    assert_eq!(on_b, instance_ids(&a).await?, "both replicas list the same");

    let (code, _, err) = weftctl(
        &a,
        &["apply", "-f", "-"],
        Some(&echo_service("round-robin")),
    )?;
    assert_eq!(code, 0, "{err}");
    wait_balance(&caller, "round-robin").await?;
    let (code, out, err) = weftctl(&b, &["get", "services", "echo", "-o", "json"], None)?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("round-robin"), "{out}");
    // And the other way round: deleted on B, gone from A.
    let (code, _, err) = weftctl(&b, &["delete", "service", "echo"], None)?;
    assert_eq!(code, 0, "{err}");
    // The service stays (its instance is registered), its resource goes.
    wait_for("the delete on A", Duration::from_secs(10), || async {
        let (code, out, _) = weftctl(&a, &["get", "services", "echo", "-o", "json"], None).ok()?;
        (code == 0 && !out.contains("round-robin")).then_some(())
    })
    .await?;

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_instances_expire_but_a_sidecar_that_moved_stays() -> anyhow::Result<()> {
    let Some(ha) = Ha::start(1).await? else {
        return Ok(());
    };
    let (mut a, b) = (ha.replica("a").await?, ha.replica("b").await?);
    let (e1, e2) = (start_echo("e1").await?, start_echo("e2").await?);
    let moving = SidecarSpec::new("echo")
        .access(&a.access()?)
        .app(e1.addr)
        .arg("--instance-id", "echo-1")
        .start()
        .await?;
    let _staying = SidecarSpec::new("echo")
        .access(&a.access()?)
        .app(e2.addr)
        .arg("--instance-id", "echo-2")
        .start()
        .await?;
    let caller = SidecarSpec::new("caller")
        .access(&b.access()?)
        .upstream("echo")
        .start()
        .await?;
    caller
        .wait_endpoints("echo", "both instances on B's sidecar", |e| e.len() == 2)
        .await?;
    let access_b = b.access()?;

    a.proc.signal(libc::SIGKILL);
    a.proc.wait(Duration::from_secs(10))?;
    // echo-1's sidecar reconnects to B (failover across addresses is the
    // sidecar's, tested elsewhere): same instance, same app, B's lease.
    moving.stop().await?;
    let _moved = SidecarSpec::new("echo")
        .access(&access_b)
        .app(e1.addr)
        .arg("--instance-id", "echo-1")
        .start()
        .await?;
    // Polled until A's lease took echo-2 away; echo-1 must be there at
    // every look.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ids = instance_ids(&b).await?;
        assert!(
            ids.contains(&"echo-1".to_string()),
            "echo-1 absent: {ids:?}"
        );
        if !ids.contains(&"echo-2".to_string()) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "A's lease did not take echo-2 away: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    caller
        .wait_endpoints("echo", "only echo-1 on the caller", |e| {
            e.len() == 1 && e[0].0 == "echo-1"
        })
        .await?;
    calls(&caller, 3).await?;
    assert_eq!(e1.calls(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_sweeps_and_another_takes_over_when_it_dies() -> anyhow::Result<()> {
    let Some(ha) = Ha::start(1).await? else {
        return Ok(());
    };
    let mut replicas = vec![ha.replica("a").await?, ha.replica("b").await?];
    let leader = wait_for("one elected replica", Duration::from_secs(10), || async {
        let (x, y) = (
            is_leader(&replicas[0]).await?,
            is_leader(&replicas[1]).await?,
        );
        match (x, y) {
            (true, false) => Some(0),
            (false, true) => Some(1),
            _ => None,
        }
    })
    .await?;
    let mut dead = replicas.remove(leader);
    dead.proc.signal(libc::SIGKILL);
    dead.proc.wait(Duration::from_secs(10))?;
    let survivor = &replicas[0];
    wait_for(
        "the other replica to be elected after the lease expired",
        Duration::from_secs(15),
        || async { is_leader(survivor).await.filter(|l| *l) },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}; the survivor's log:\n{}", survivor.proc.log_text()))?;

    // The sweep it now runs forgets an expired join token in etcd.
    let access = survivor.access()?;
    access.token("users", Duration::from_secs(1)).await?;
    let etcd = etcd_client::Client::connect(ha.etcd.urls(), None).await?;
    let count = || {
        let mut etcd = etcd.clone();
        async move {
            let tokens = etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only();
            let get = etcd.get("/weft/tokens/", Some(tokens));
            tokio::time::timeout(Duration::from_secs(2), get)
                .await
                .ok()?
                .ok()
                .map(|r| r.count())
        }
    };
    assert_eq!(count().await, Some(1));
    let swept = wait_for(
        "the expired token swept",
        Duration::from_secs(15),
        || async { (count().await? == 0).then_some(()) },
    )
    .await;
    if let Err(e) = swept {
        anyhow::bail!("{e}; the survivor's log:\n{}", survivor.proc.log_text());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_cannot_interleave_applies() -> anyhow::Result<()> {
    let Some(ha) = Ha::start(1).await? else {
        return Ok(());
    };
    let open = || async {
        let StoreConfig::Etcd(config) = StoreConfig::parse(&ha.etcd.store_flag())? else {
            anyhow::bail!("not etcd");
        };
        let store = EtcdStore::connect(EtcdConfig {
            request_timeout: Duration::from_millis(500),
            ..config
        })
        .await?;
        store.load().await?;
        anyhow::Ok(store)
    };
    let (one, two) = (open().await?, open().await?);
    let v1 = parse_documents(&echo_service("round-robin"))?;
    let v2 = parse_documents(&echo_service("p2c-ewma"))?;
    // Both checked their apply against the same resources…
    let (seen_one, seen_two) = (one.revision(), two.revision());
    assert_eq!(seen_one, seen_two);
    one.apply(&v1, seen_one).await?;
    // …so the second must check again.
    let e = two.apply(&v2, seen_two).await.expect_err("a conflict");
    assert!(e.is_conflict(), "{e}");
    assert!(
        e.to_string().contains("another control-plane replica"),
        "{e}"
    );
    // Once it has seen the first apply, it goes through.
    let reloaded = open().await?;
    assert_eq!(reloaded.load().await?.resources, v1);
    reloaded.apply(&v2, reloaded.revision()).await?;
    assert_eq!(open().await?.load().await?.resources, v2);
    Ok(())
}

/// `n` Services named `svc-000`… in one YAML stream.
fn many_services(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: svc-{i:03}}}\nspec: {{protocol: grpc}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// How many `svc-…` services `weftctl get services` lists.
fn services_listed(cp: &ControlPlaneProc) -> anyhow::Result<usize> {
    let (code, out, err) = weftctl(cp, &["get", "services"], None)?;
    anyhow::ensure!(code == 0, "weftctl get services: {err}");
    Ok(out.lines().filter(|l| l.starts_with("svc-")).count())
}

/// Applies `n` services through `cp`, expecting a refusal whose message
/// says each of `said`.
fn apply_refused(cp: &ControlPlaneProc, n: usize, said: &[&str]) -> anyhow::Result<()> {
    let (code, _, err) = weftctl(cp, &["apply", "-f", "-"], Some(&many_services(n)))?;
    anyhow::ensure!(
        code != 0,
        "an apply of {n} services on {} went through",
        cp.url()
    );
    for said in said {
        anyhow::ensure!(err.contains(said), "the refusal says {said:?}: {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_larger_than_one_etcd_transaction_is_refused_whole_naming_the_limit()
-> anyhow::Result<()> {
    let Some(ha) = Ha::start(1).await? else {
        return Ok(());
    };
    // etcd runs with its default --max-txn-ops (128). Replica a knows it;
    // b was told etcd takes more than it does.
    let a = ha.replica("a").await?;
    let b = ha
        .replica_with("b", &["--etcd-max-txn-ops", "1000"])
        .await?;

    apply_refused(
        &a,
        200,
        &[
            "200 resources",
            "201 operations",
            "at most 128",
            "at most 127 resources",
            "--max-txn-ops",
            "--etcd-max-txn-ops",
            "Nothing was applied",
        ],
    )?;
    assert_eq!(
        counter(
            &a,
            "weft_control_plane_applies_total",
            &[("outcome", "invalid")]
        )
        .await,
        1.0,
        "counted as the caller's to mend"
    );
    // Refused by etcd itself, the error is as clear.
    apply_refused(
        &b,
        200,
        &[
            "200 resources",
            "etcd refused it as too many",
            "(1000)",
            "Nothing was applied",
        ],
    )?;
    assert_eq!(services_listed(&a)?, 0, "nothing of the refused applies");
    assert_eq!(services_listed(&b)?, 0, "nothing of the refused applies");

    // The largest apply etcd takes goes through whole, on both replicas.
    let (code, _, err) = weftctl(&a, &["apply", "-f", "-"], Some(&many_services(127)))?;
    assert_eq!(code, 0, "127 resources and the revision make 128: {err}");
    assert_eq!(services_listed(&a)?, 127);
    wait_for("the apply on b", Duration::from_secs(10), || async {
        (services_listed(&b).ok()? == 127).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_larger_than_etcd_takes_in_bytes_is_refused_whole() -> anyhow::Result<()> {
    // etcd with a small request limit: 40 services (~4 KiB) are over it,
    // well under the operations limit.
    let Some(ha) = Ha::start_with(1, &["--max-request-bytes", "2048"]).await? else {
        return Ok(());
    };
    let a = ha.replica("a").await?;
    apply_refused(
        &a,
        40,
        &[
            "40 resources",
            "bytes)",
            "--max-request-bytes",
            "Nothing was applied",
        ],
    )?;
    assert_eq!(services_listed(&a)?, 0, "nothing of the refused apply");
    let (code, _, err) = weftctl(&a, &["apply", "-f", "-"], Some(&many_services(5)))?;
    assert_eq!(code, 0, "a small apply still goes through: {err}");
    assert_eq!(services_listed(&a)?, 5);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_members_dying_leave_traffic_alone_and_writes_wait_for_etcd() -> anyhow::Result<()> {
    let Some(mut ha) = Ha::start(3).await? else {
        return Ok(());
    };
    let (a, b) = (ha.replica("a").await?, ha.replica("b").await?);
    let echo = start_echo("e1").await?;
    let _server = SidecarSpec::new("echo")
        .access(&a.access()?)
        .app(echo.addr)
        .start()
        .await?;
    let caller = SidecarSpec::new("caller")
        .access(&b.access()?)
        .upstream("echo")
        .start()
        .await?;
    caller
        .wait_endpoints("echo", "the echo instance on the caller", |e| e.len() == 1)
        .await?;

    // One member of three down: nothing noticed.
    ha.etcd.kill(0)?;
    let (code, _, err) = weftctl(
        &a,
        &["apply", "-f", "-"],
        Some(&echo_service("round-robin")),
    )?;
    assert_eq!(code, 0, "an apply with one etcd member down: {err}");
    wait_balance(&caller, "round-robin").await?;
    calls(&caller, 10).await?;

    // All down: traffic and reads go on, writes are refused naming etcd.
    let traffic = tokio::spawn(load(caller.upstream("echo"), 200, Duration::from_secs(2)));
    ha.etcd.kill(1)?;
    ha.etcd.kill(2)?;
    let seen = traffic.await??;
    assert_eq!(seen.failed, 0, "calls failed while etcd died: {seen:?}");
    calls(&caller, 50).await?;
    let (code, out, err) = weftctl(&b, &["get", "services", "echo", "-o", "json"], None)?;
    assert_eq!(code, 0, "reads are served from the catalog: {err}");
    assert!(out.contains("round-robin"), "{out}");
    let (code, _, err) = weftctl(&a, &["apply", "-f", "-"], Some(&echo_service("p2c-ewma")))?;
    assert_ne!(code, 0, "an apply without etcd");
    assert!(
        err.contains("etcd") && err.contains("unavailable"),
        "the refusal names etcd: {err}"
    );
    let (code, _, err) = weftctl(&b, &["token", "create", "echo"], None)?;
    assert_ne!(code, 0);
    assert!(err.contains("etcd"), "{err}");
    calls(&caller, 10).await?;

    // Back: the apply is accepted again and reaches the sidecars.
    for i in 0..3 {
        ha.etcd.restart(i)?;
    }
    wait_for(
        "an apply to be accepted again",
        Duration::from_secs(30),
        || async {
            let (code, _, _) =
                weftctl(&a, &["apply", "-f", "-"], Some(&echo_service("p2c-ewma"))).ok()?;
            (code == 0).then_some(())
        },
    )
    .await?;
    wait_balance(&caller, "p2c-ewma").await?;
    calls(&caller, 10).await?;
    assert_eq!(echo.calls(), 80 + seen.ok);
    Ok(())
}

/// Three replicas on a three-member etcd, named a, b and c.
async fn three_replicas(ha: &Ha) -> anyhow::Result<Vec<ControlPlaneProc>> {
    Ok(vec![
        ha.replica("a").await?,
        ha.replica("b").await?,
        ha.replica("c").await?,
    ])
}

fn urls(replicas: &[ControlPlaneProc]) -> Vec<String> {
    replicas.iter().map(ControlPlaneProc::url).collect()
}

/// `weftctl` given every replica's address (`urls`), with the first
/// replica's credential (every replica accepts it).
fn weftctl_any(
    urls: &[String],
    ha: &Ha,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<(i32, String, String)> {
    let list = urls.join(",");
    let credential = ha
        .dir
        .path()
        .join("a")
        .join(CREDENTIAL_FILE)
        .display()
        .to_string();
    let mut all = vec!["--control-plane", &list, "--credential", &credential];
    all.extend_from_slice(args);
    run("weftctl", &all, stdin)
}

/// A counter on a replica's /metrics (0 when not there yet).
async fn counter(cp: &ControlPlaneProc, name: &str, labels: &[(&str, &str)]) -> f64 {
    match http_get(&format!("http://{}/metrics", cp.admin)).await {
        Ok(m) => metric(&m.body, name, labels).unwrap_or(0.0),
        Err(_) => 0.0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apply_on_one_of_three_replicas_reaches_sidecars_on_every_replica() -> anyhow::Result<()>
{
    let Some(ha) = Ha::start(3).await? else {
        return Ok(());
    };
    let replicas = three_replicas(&ha).await?;
    let echo = start_echo("e1").await?;
    let _server = SidecarSpec::new("echo")
        .access(&replicas[0].access()?)
        .app(echo.addr)
        .start()
        .await?;
    // One caller pinned to each replica.
    let mut callers = Vec::new();
    for r in &replicas {
        let caller = SidecarSpec::new("caller")
            .access(&r.access()?)
            .upstream("echo")
            .start()
            .await?;
        caller
            .wait_endpoints("echo", "the echo instance", |e| e.len() == 1)
            .await?;
        callers.push(caller);
    }
    let (code, _, err) = weftctl(
        &replicas[1],
        &["apply", "-f", "-"],
        Some(&echo_service("round-robin")),
    )?;
    assert_eq!(code, 0, "{err}");
    for caller in &callers {
        wait_balance(caller, "round-robin").await?;
        calls(caller, 3).await?;
    }
    assert_eq!(echo.calls(), 9);
    // Status through all three: each caller on its own replica.
    let (code, out, err) = weftctl_any(&urls(&replicas), &ha, &["status", "-o", "json"], None)?;
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out)?;
    let mut on: Vec<String> = listed
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|s| s["service"] == "caller")
                .filter_map(|s| s["replica"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    on.sort();
    assert_eq!(on, vec!["a", "b", "c"], "{out}");

    // A sidecar whose first choice is an address nothing answers on gets
    // its certificate and its config from the next one.
    let dead = format!("https://127.0.0.1:{}", free_port()?);
    let list = [dead.clone(), replicas[2].url()];
    let candidates: Vec<Candidate> = list
        .iter()
        .map(|u| {
            let addr = u.trim_start_matches("https://").parse()?;
            anyhow::Ok(Candidate {
                addr,
                entry: u.clone(),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let seed = (0u64..)
        .find(|&s| {
            let mut c = candidates.clone();
            preference_order(&mut c, s);
            c[0].entry == dead
        })
        .ok_or_else(|| anyhow::anyhow!("no seed"))?;
    let late = SidecarSpec::new("caller")
        .access_any(&replicas[0].access()?, &list)
        .seed(seed)
        .upstream("echo")
        .start()
        .await?;
    wait_balance(&late, "round-robin").await?;
    assert_eq!(
        late.config().await?["controlPlane"]["replica"],
        serde_json::json!(replicas[2].url())
    );
    calls(&late, 1).await?;
    Ok(())
}

/// Fails unless echo-1 is in `caller`'s view and in every replica's
/// catalog now.
async fn echo_1_everywhere<'a>(
    caller: &Sidecar,
    replicas: impl IntoIterator<Item = &'a ControlPlaneProc>,
) -> anyhow::Result<()> {
    let endpoints = caller.endpoints("echo").await?;
    anyhow::ensure!(
        endpoints.iter().any(|(id, _)| id == "echo-1"),
        "echo-1 absent from the caller's view: {endpoints:?}"
    );
    for r in replicas {
        let ids = instance_ids(r).await?;
        anyhow::ensure!(
            ids.contains(&"echo-1".to_string()),
            "echo-1 absent from {}'s catalog: {ids:?}",
            r.url()
        );
    }
    Ok(())
}

/// What a bounded load saw.
#[derive(Debug, Default)]
struct Load {
    ok: u64,
    failed: u64,
    first_error: Option<String>,
}

/// About `rps` unary calls a second through `addr` for `span`, from
/// several workers on one HTTP/2 connection; each call has 2 s.
async fn load(addr: std::net::SocketAddr, rps: u64, span: Duration) -> anyhow::Result<Load> {
    const WORKERS: u64 = 10;
    let channel = client(addr).await?;
    let period = Duration::from_micros(1_000_000 * WORKERS / rps);
    let until = tokio::time::Instant::now() + span;
    let max_per_worker = rps * span.as_secs().max(1) / WORKERS + 1;
    let mut tasks = Vec::new();
    for _ in 0..WORKERS {
        let mut c = channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Load::default();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            for _ in 0..max_per_worker {
                tick.tick().await;
                if tokio::time::Instant::now() >= until {
                    break;
                }
                let call = c.unary(EchoRequest::default());
                match tokio::time::timeout(Duration::from_secs(2), call).await {
                    Ok(Ok(_)) => seen.ok += 1,
                    Ok(Err(e)) => {
                        seen.failed += 1;
                        seen.first_error.get_or_insert(format!("{e:?}"));
                    }
                    Err(_) => {
                        seen.failed += 1;
                        seen.first_error.get_or_insert("timed out".into());
                    }
                }
            }
            seen
        }));
    }
    let mut all = Load::default();
    for t in tasks {
        let l = t.await?;
        all.ok += l.ok;
        all.failed += l.failed;
        if all.first_error.is_none() {
            all.first_error = l.first_error;
        }
    }
    Ok(all)
}

/// The replica each listed sidecar of `service` is on, from `weftctl
/// status -o json` given every address.
fn replicas_of(urls: &[String], ha: &Ha, service: &str) -> Option<Vec<String>> {
    let (code, out, _) = weftctl_any(urls, ha, &["status", "-o", "json"], None).ok()?;
    if code != 0 {
        return None;
    }
    let listed: serde_json::Value = serde_json::from_str(&out).ok()?;
    Some(
        listed
            .as_array()?
            .iter()
            .filter(|s| s["service"] == service)
            .filter_map(|s| s["replica"].as_str().map(str::to_string))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_replica_sidecars_are_on_under_load_fails_no_request() -> anyhow::Result<()> {
    let Some(ha) = Ha::start(3).await? else {
        return Ok(());
    };
    let mut replicas = three_replicas(&ha).await?;
    let all = urls(&replicas);
    // A seed whose first choice is replica a, for both sidecars, so that
    // killing a moves the server's instance and the caller's stream at once.
    let candidates: Vec<Candidate> = replicas
        .iter()
        .map(|r| Candidate {
            addr: r.grpc,
            entry: r.url(),
        })
        .collect();
    let seed = (0u64..)
        .find(|&s| {
            let mut c = candidates.clone();
            preference_order(&mut c, s);
            c[0].addr == replicas[0].grpc
        })
        .ok_or_else(|| anyhow::anyhow!("no seed"))?;
    let echo = start_echo("e1").await?;
    let access = replicas[0].access()?;
    let _server = SidecarSpec::new("echo")
        .access_any(&access, &all)
        .seed(seed)
        .app(echo.addr)
        .arg("--instance-id", "echo-1")
        .start()
        .await?;
    let caller = SidecarSpec::new("caller")
        .access_any(&access, &all)
        .seed(seed)
        .upstream("echo")
        .arg("--instance-id", "caller-1")
        .start()
        .await?;
    caller
        .wait_endpoints("echo", "the echo instance on the caller", |e| e.len() == 1)
        .await?;
    let on = caller.config().await?["controlPlane"]["replica"].clone();
    assert_eq!(
        on,
        serde_json::json!(replicas[0].url()),
        "the seed's first choice"
    );
    assert_eq!(
        replicas_of(&all, &ha, "caller"),
        Some(vec!["a".to_string()])
    );

    // ~1000 calls a second for 5 s; the replica dies a second in.
    let traffic = tokio::spawn(load(caller.upstream("echo"), 1000, Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_secs(1)).await; // let the load get going
    let killed_at = tokio::time::Instant::now();
    let mut a = replicas.remove(0);
    a.proc.signal(libc::SIGKILL);
    a.proc.wait(Duration::from_secs(10))?;
    // Until both moved: the server's instance is in the caller's view and
    // in the surviving replicas' catalogs at every look.
    let mut looks = 0;
    let moved = loop {
        echo_1_everywhere(&caller, replicas.iter()).await?;
        looks += 1;
        let caller_on = replicas_of(&all, &ha, "caller").unwrap_or_default();
        let echo_on = replicas_of(&all, &ha, "echo").unwrap_or_default();
        if caller_on.len() == 1 && echo_on.len() == 1 && caller_on[0] != "a" && echo_on[0] != "a" {
            break caller_on[0].clone();
        }
        anyhow::ensure!(
            killed_at.elapsed() < Duration::from_secs(5),
            "not on another replica 5 s after the kill: caller {caller_on:?}, echo {echo_on:?}"
        );
    };
    let took = killed_at.elapsed();
    // And on until a's lease has surely expired (what would take echo-1
    // away had it not been put under its new replica's lease).
    let lease = Duration::from_secs(5) + Duration::from_millis(1500);
    while killed_at.elapsed() < lease {
        echo_1_everywhere(&caller, replicas.iter()).await?;
        looks += 1;
        tokio::time::sleep(Duration::from_millis(50)).await; // a polling interval
    }
    let seen = traffic.await??;
    tracing::info!(
        ok = seen.ok,
        looks,
        took_ms = took.as_millis() as u64,
        "load through the failover"
    );
    assert_eq!(seen.failed, 0, "failed calls: {seen:?}");
    assert!(
        seen.ok >= 1000,
        "too little load to mean anything: {seen:?}"
    );
    // Its new replica resumed it without resending anything.
    let to = replicas
        .iter()
        .find(|r| r.data_dir.ends_with(&moved))
        .ok_or_else(|| anyhow::anyhow!("no replica {moved}"))?;
    let name = "weft_control_plane_resumes_total";
    assert!(
        counter(to, name, &[("result", "unchanged")]).await >= 1.0,
        "no unchanged resume on {moved}: {:?}",
        http_get(&format!("http://{}/metrics", to.admin))
            .await
            .map(|m| m.body)
    );
    for r in &replicas {
        assert_eq!(counter(r, name, &[("result", "full")]).await, 0.0);
    }
    // And it ACKed what the new replica sent: status shows it synced.
    let (code, out, err) = weftctl_any(&all, &ha, &["status"], None)?;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("left out of the status"),
        "the dead replica is named: {err}"
    );
    let line = out
        .lines()
        .find(|l| l.contains("caller-1"))
        .ok_or_else(|| anyhow::anyhow!("{out}"))?;
    assert!(line.contains("(synced)") && line.contains(&moved), "{line}");
    calls(&caller, 5).await?;
    // Any command goes to a replica that answers.
    let (code, _, err) = weftctl_any(
        &all,
        &ha,
        &["apply", "-f", "-"],
        Some(&echo_service("round-robin")),
    )?;
    assert_eq!(code, 0, "an apply with replica a down: {err}");
    wait_balance(&caller, "round-robin").await?;
    Ok(())
}

/// A seed whose first choice among `replicas` is `first`.
fn seed_preferring(
    replicas: &[&ControlPlaneProc],
    first: &ControlPlaneProc,
) -> anyhow::Result<u64> {
    let candidates: Vec<Candidate> = replicas
        .iter()
        .map(|r| Candidate {
            addr: r.grpc,
            entry: r.url(),
        })
        .collect();
    (0u64..10_000)
        .find(|&s| {
            let mut c = candidates.clone();
            preference_order(&mut c, s);
            c[0].addr == first.grpc
        })
        .ok_or_else(|| anyhow::anyhow!("no seed prefers {}", first.url()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_renews_its_certificate_through_another_replica() -> anyhow::Result<()> {
    let Some(ha) = Ha::start(1).await? else {
        return Ok(());
    };
    // Certificates of 4 s: renewed every 2.6 to 3 s.
    let ttl = ["--cert-ttl", "4s"];
    let mut a = ha.replica_with("a", &ttl).await?;
    let b = ha.replica_with("b", &ttl).await?;
    let echo = start_echo("e1").await?;
    let sidecar = SidecarSpec::new("echo")
        .access_any(&a.access()?, &[a.url(), b.url()])
        .seed(seed_preferring(&[&a, &b], &a)?)
        .app(echo.addr)
        .start()
        .await?;
    let renewals = || async {
        let m = sidecar.metrics().await.ok()?;
        metric(&m, "weft_certificate_renewals_total", &[("result", "ok")])
    };
    a.proc.signal(libc::SIGKILL);
    a.proc.wait(Duration::from_secs(10))?;
    let before = renewals().await.unwrap_or(0.0);
    let expiry = || async {
        let m = sidecar.metrics().await.ok()?;
        metric(&m, "weft_certificate_expiry_timestamp_seconds", &[])
    };
    let first_expiry = expiry().await.unwrap_or(0.0);
    // Two renewals after the kill: both went to b (a is gone).
    wait_for(
        "two renewals through b",
        Duration::from_secs(10),
        || async { (renewals().await? >= before + 2.0).then_some(()) },
    )
    .await?;
    assert!(expiry().await.unwrap_or(0.0) > first_expiry);
    let m = sidecar.metrics().await?;
    assert_eq!(
        metric(
            &m,
            "weft_certificate_renewals_total",
            &[("result", "failed")]
        )
        .unwrap_or(0.0),
        0.0,
        "a renewal failed instead of moving on: {m}"
    );
    assert_eq!(
        sidecar.config().await?["controlPlane"]["replica"],
        serde_json::json!(b.url())
    );
    Ok(())
}

/// Renewal needs the CA (files on every replica), not the store: with
/// every etcd member down, certificates are still renewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_renewed_while_etcd_is_down() -> anyhow::Result<()> {
    let Some(mut ha) = Ha::start(1).await? else {
        return Ok(());
    };
    // Certificates of 4 s: renewed every 2.6 to 3 s.
    let a = ha.replica_with("a", &["--cert-ttl", "4s"]).await?;
    let echo = start_echo("e1").await?;
    let sidecar = SidecarSpec::new("echo")
        .access(&a.access()?)
        .app(echo.addr)
        .start()
        .await?;
    let renewals = |result: &'static str| {
        let sidecar = &sidecar;
        async move {
            let m = sidecar.metrics().await.ok()?;
            metric(&m, "weft_certificate_renewals_total", &[("result", result)])
        }
    };
    ha.etcd.kill(0)?;
    let before = renewals("ok").await.unwrap_or(0.0);
    wait_for(
        "two renewals with etcd down",
        Duration::from_secs(10),
        || async { (renewals("ok").await? >= before + 2.0).then_some(()) },
    )
    .await?;
    assert_eq!(renewals("failed").await.unwrap_or(0.0), 0.0);
    // And the replica knows etcd is gone: a write is refused, naming it.
    let (code, _, err) = weftctl(&a, &["apply", "-f", "-"], Some(&echo_service("p2c-ewma")))?;
    assert_ne!(code, 0, "an apply without etcd");
    assert!(err.contains("etcd"), "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_returns_to_its_first_choice_replica_when_it_is_back() -> anyhow::Result<()> {
    let Some(ha) = Ha::start(1).await? else {
        return Ok(());
    };
    let mut a = ha.replica("a").await?;
    let b = ha.replica("b").await?;
    let all = vec![a.url(), b.url()];
    let echo = start_echo("e1").await?;
    let server = SidecarSpec::new("echo")
        .access_any(&a.access()?, &all)
        .seed(seed_preferring(&[&a, &b], &a)?)
        .app(echo.addr)
        .arg("--instance-id", "echo-1")
        .arg("--control-plane-rebalance", "500ms")
        .start()
        .await?;
    // The caller stays on b throughout: it sees the move from outside.
    let caller = SidecarSpec::new("caller")
        .access_any(&a.access()?, &all)
        .seed(seed_preferring(&[&a, &b], &b)?)
        .upstream("echo")
        .start()
        .await?;
    caller
        .wait_endpoints("echo", "the echo instance on the caller", |e| e.len() == 1)
        .await?;
    let replica = || async {
        let c = server.config().await.ok()?;
        c["controlPlane"]["replica"].as_str().map(str::to_string)
    };
    assert_eq!(replica().await, Some(a.url()), "the seed's first choice");

    let ports = (a.grpc.port(), a.admin.port());
    a.proc.signal(libc::SIGKILL);
    a.proc.wait(Duration::from_secs(10))?;
    wait_for(
        "the server's sidecar on b",
        Duration::from_secs(10),
        || async { (replica().await? == b.url()).then_some(()) },
    )
    .await?;

    // ~300 calls a second while a comes back and the sidecar returns to it.
    let traffic = tokio::spawn(load(caller.upstream("echo"), 300, Duration::from_secs(6)));
    let a = ha.replica_at("a", ports, &[]).await?;
    let back = tokio::time::Instant::now();
    let mut looks = 0;
    loop {
        echo_1_everywhere(&caller, [&a, &b]).await?;
        looks += 1;
        if replica().await == Some(a.url()) {
            break;
        }
        // Probes every 250 ms to 750 ms, from once the stream on b synced.
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(10),
            "the sidecar did not return to a within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // polling interval
    }
    assert!(looks > 1, "the return was watched, not assumed");
    let m = server.metrics().await?;
    assert_eq!(
        metric(&m, "weft_control_plane_rebalances_total", &[]),
        Some(1.0),
        "one return"
    );
    let seen = traffic.await??;
    assert_eq!(seen.failed, 0, "failed calls: {seen:?}");
    assert!(seen.ok >= 300, "too little load to mean anything: {seen:?}");
    // a resumed it from what it held: nothing resent.
    assert!(
        counter(
            &a,
            "weft_control_plane_resumes_total",
            &[("result", "unchanged")]
        )
        .await
            >= 1.0
    );
    assert_eq!(replicas_of(&all, &ha, "echo"), Some(vec!["a".to_string()]));
    calls(&caller, 5).await?;
    Ok(())
}
