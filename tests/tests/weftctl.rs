//! `weftctl` against a running control plane: apply, get, delete, status,
//! and bad input that changes nothing.

use weft_proto::v1 as pb;
use weft_tests::echo::start_echo;
use weft_tests::mesh::{ControlPlane, SidecarSpec};
use weft_tests::util::init_logs;

const GOOD: &str = "apiVersion: weft.dev/v1
kind: Service
metadata:
  name: users
spec:
  protocol: grpc
  loadBalancer: round-robin
  subsets:
    - name: v2
      labels: {version: v2}
---
apiVersion: weft.dev/v1
kind: Service
metadata: {name: orders}
spec: {protocol: http}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_delete_and_status() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let (code, out, err) = cp.weftctl(&["apply", "-f", "-"], Some(GOOD))?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "service/users created\nservice/orders created\n");
    let (_, out, _) = cp.weftctl(&["apply", "-f", "-"], Some(GOOD))?;
    assert_eq!(out, "service/users unchanged\nservice/orders unchanged\n");
    let changed = GOOD.replace(
        "spec: {protocol: http}",
        "spec: {protocol: http, loadBalancer: round-robin}",
    );
    let (_, out, _) = cp.weftctl(&["apply", "-f", "-", "--dry-run"], Some(&changed))?;
    assert_eq!(
        out,
        "service/users unchanged (dry run)\nservice/orders configured (dry run)\n"
    );
    let (_, out, _) = cp.weftctl(&["get", "services", "orders", "-o", "json"], None)?;
    assert!(
        out.contains("\"loadBalancer\": \"p2c-ewma\""),
        "a dry run stores nothing: {out}"
    );

    // A discovered service next to the applied ones.
    let app = start_echo("e").await?;
    let _sidecar = SidecarSpec::new("echo")
        .control_plane(&cp)
        .app(app.addr)
        .arg("--label", "version=v1")
        .start()
        .await?;
    let (code, out, _) = cp.weftctl(&["get", "services"], None)?;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("PROTOCOL"),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("users") && l.contains("round-robin") && l.contains("resource")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("echo") && l.contains("grpc") && l.contains("discovered")),
        "{out}"
    );

    // YAML output is what apply takes back.
    let (_, yaml, _) = cp.weftctl(&["get", "services", "users", "-o", "yaml"], None)?;
    let back = weft_control_plane::resource::parse_documents(&yaml)?;
    let orig = weft_control_plane::resource::parse_documents(GOOD)?;
    assert_eq!(back[0], orig[0], "{yaml}");

    let (_, out, _) = cp.weftctl(&["get", "instances", "-o", "json"], None)?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(v[0]["service"], "echo");
    assert_eq!(v[0]["labels"]["version"], "v1");
    assert_eq!(v[0]["connected"], true);

    let (code, out, _) = cp.weftctl(&["status"], None)?;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .next()
            .is_some_and(|l| l.contains("APPLIED VERSION") && l.contains("LAST NACK")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("echo") && l.contains("(synced)")),
        "{out}"
    );

    let (code, out, _) = cp.weftctl(&["delete", "service", "orders"], None)?;
    assert_eq!((code, out.as_str()), (0, "service/orders deleted\n"));
    let (code, _, err) = cp.weftctl(&["delete", "service", "orders"], None)?;
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    let (code, _, err) = cp.weftctl(&["get", "services", "orders"], None)?;
    assert_eq!(code, 1, "{err}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_input_changes_nothing() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let (code, _, err) = cp.weftctl(&["apply", "-f", "-"], Some(GOOD))?;
    assert_eq!(code, 0, "{err}");
    let (_, before, _) = cp.weftctl(&["get", "services", "-o", "yaml"], None)?;

    // A file with one bad document: nothing of it is applied.
    let bad = GOOD.replace("spec: {protocol: http}", "spec: {protocol: http}\n---\napiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: new-one}\nspec: {protocol: quic}");
    let bad = bad.replace("loadBalancer: round-robin", "loadBalancer: p2c-ewma");
    let (code, _, err) = cp.weftctl(&["apply", "-f", "-"], Some(&bad))?;
    assert_eq!(code, 1);
    assert!(
        err.contains("document 3 (Service/new-one): spec.protocol: unknown protocol \"quic\""),
        "{err}"
    );
    let (_, after, _) = cp.weftctl(&["get", "services", "-o", "yaml"], None)?;
    assert_eq!(before, after);

    // The server validates too, for clients other than weftctl.
    let mut admin = cp.admin_client().await?;
    let e = admin
        .apply(pb::ApplyRequest {
            resources: vec![
                pb::Resource {
                    kind: Some(pb::resource::Kind::Service(pb::ServiceSpec {
                        name: "fine".into(),
                        ..Default::default()
                    })),
                },
                pb::Resource {
                    kind: Some(pb::resource::Kind::Service(pb::ServiceSpec {
                        name: "Not Valid".into(),
                        ..Default::default()
                    })),
                },
            ],
            dry_run: false,
        })
        .await
        .expect_err("invalid");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("service.name"), "{}", e.message());
    let (_, after, _) = cp.weftctl(&["get", "services", "-o", "yaml"], None)?;
    assert_eq!(before, after, "the valid half was not applied either");
    Ok(())
}

/// A `Service` document with these `spec.addresses`.
fn service_at(name: &str, addresses: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {{name: {name}}}\n\
         spec: {{protocol: tcp, addresses: [{addresses}]}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_services_cannot_claim_one_address() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let (code, _, err) = cp.weftctl(
        &["apply", "-f", "-"],
        Some(&service_at("web", "10.96.0.10")),
    )?;
    assert_eq!(code, 0, "{err}");
    let (_, before, _) = cp.weftctl(&["get", "services", "-o", "yaml"], None)?;

    // Against a service already applied: the whole file is refused, the
    // service without a clash too.
    let clash = [
        service_at("fine", "10.96.0.30"),
        service_at("smtp", "10.96.0.20, 10.96.0.10"),
    ]
    .join("---\n");
    let (code, _, err) = cp.weftctl(&["apply", "-f", "-"], Some(&clash))?;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "document 2 (Service/smtp): spec.addresses[1]: 10.96.0.10 is also \
             Service/web spec.addresses[0] (already applied)"
        ),
        "{err}"
    );
    let (_, after, _) = cp.weftctl(&["get", "services", "-o", "yaml"], None)?;
    assert_eq!(before, after, "a refused apply changed the services");

    // Two services of one file.
    let clash = [
        service_at("mysql", "10.96.0.40"),
        service_at("mariadb", "\"fd00::40\", 10.96.0.40"),
    ]
    .join("---\n");
    let (code, _, err) = cp.weftctl(&["apply", "-f", "-"], Some(&clash))?;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(
            "document 2 (Service/mariadb): spec.addresses[1]: 10.96.0.40 is also \
             Service/mysql spec.addresses[0] (document 1)"
        ),
        "{err}"
    );
    let (_, after, _) = cp.weftctl(&["get", "services", "-o", "yaml"], None)?;
    assert_eq!(before, after, "a refused apply changed the services");

    // An address moves when its owner gives it up in the same apply.
    let moved = [
        service_at("web", "10.96.0.11"),
        service_at("smtp", "10.96.0.10"),
    ]
    .join("---\n");
    let (code, _, err) = cp.weftctl(&["apply", "-f", "-"], Some(&moved))?;
    assert_eq!(code, 0, "{err}");
    let (_, now, _) = cp.weftctl(&["get", "service", "smtp", "-o", "yaml"], None)?;
    assert!(now.contains("10.96.0.10"), "{now}");
    Ok(())
}

/// `weftctl top` after known traffic: 130 calls to two instances, 20 of
/// them failing by the server's fault (INTERNAL) and 10 by the caller's
/// (NOT_FOUND, no failure of the service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_what_the_sidecars_carried() -> anyhow::Result<()> {
    init_logs();
    let cp = ControlPlane::start_fast().await?;
    let instances = weft_tests::mesh::echo_instances(&cp, "echo", &["echo-1", "echo-2"]).await?;
    let caller = weft_tests::mesh::caller(&cp, "echo", 2).await?;
    let mut c = weft_tests::echo::client(caller.upstream("echo")).await?;
    for i in 0..130 {
        let fail_code = match i % 13 {
            0 | 1 => 13,
            2 => 5,
            _ => 0,
        };
        let r = c
            .unary(weft_tests::pb::EchoRequest {
                fail_code,
                ..Default::default()
            })
            .await;
        assert_eq!(r.is_ok(), fail_code == 0, "call {i}: {r:?}");
    }

    // The sidecars report every second; wait until all 130 arrived.
    let top = weft_tests::util::wait_for(
        "weftctl top to count 130 requests",
        std::time::Duration::from_secs(10),
        || async {
            let (code, out, _) = cp
                .weftctl(
                    &["top", "echo", "--once", "-o", "json", "--window", "60s"],
                    None,
                )
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            (code == 0 && v["services"][0]["requests"] == 130).then_some(v)
        },
    )
    .await?;
    let echo = &top["services"][0];
    assert_eq!(echo["service"], "echo", "{top:#}");
    assert_eq!(echo["failures"], 20, "{top:#}");
    let success = echo["success_rate"].as_f64().unwrap_or(-1.0);
    assert!((success - 110.0 / 130.0).abs() < 1e-9, "{success}");
    assert_eq!(echo["endpoints"], 2);
    assert_eq!(echo["healthy_endpoints"], 2);
    let (p50, p99) = (
        echo["p50_ms"].as_f64().unwrap_or(0.0),
        echo["p99_ms"].as_f64().unwrap_or(0.0),
    );
    assert!(p50 > 0.0 && p99 >= p50, "p50 {p50} p99 {p99}");
    assert!(echo["rps"].as_f64().unwrap_or(0.0) > 0.0);
    let rows = echo["instances"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 2, "{top:#}");
    let mut sum = 0;
    for i in &rows {
        assert_eq!(i["reporting"], true, "{i:#}");
        assert_eq!(i["health"], "healthy", "{i:#}");
        let n = i["requests"].as_u64().unwrap_or(0);
        assert!(n > 0, "both instances served: {top:#}");
        sum += n;
    }
    assert_eq!(sum, 130);

    // The table a person reads.
    let (code, out, err) = cp.weftctl(&["top", "--once", "--window", "60s"], None)?;
    assert_eq!(code, 0, "{err}");
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("echo "))
        .unwrap_or_default();
    assert!(line.contains("84.62%"), "success rate in the row:\n{out}");
    assert!(
        line.contains("2/2"),
        "healthy/total endpoints in the row:\n{out}"
    );
    assert!(out.contains("caller"), "every service is listed:\n{out}");
    // The caller has no app: it is a caller, not a failed endpoint.
    let caller_rows: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("caller "))
        .take(2)
        .collect();
    assert!(
        caller_rows.len() == 2
            && caller_rows[0].contains("0/0")
            && caller_rows[1].contains("no app"),
        "the caller's rows:\n{out}"
    );
    let (_, instances_out, _) = cp.weftctl(&["get", "instances", "-o", "json"], None)?;
    let listed: serde_json::Value = serde_json::from_str(&instances_out)?;
    let caller_health = listed
        .as_array()
        .and_then(|a| a.iter().find(|i| i["service"] == "caller"))
        .map(|i| i["health"].clone());
    assert_eq!(caller_health, Some("no app".into()), "{instances_out}");
    for (_, sidecar) in &instances {
        let id = &sidecar.instance_id;
        assert!(out.contains(id.as_str()), "instance {id} listed:\n{out}");
    }

    // An unknown service is named.
    let (code, _, err) = cp.weftctl(&["top", "nosuch", "--once"], None)?;
    assert_ne!(code, 0);
    assert!(err.contains("nosuch"), "{err}");
    Ok(())
}

/// `weftctl token list` and `token revoke` against a real control plane: a
/// revoked token admits no sidecar, also after a restart; the others do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_are_listed_and_revoked_for_good() -> anyhow::Result<()> {
    use std::time::Duration;
    use weft_control_plane::catalog::CatalogConfig;
    init_logs();
    let data = tempfile::tempdir()?;
    let fast = || CatalogConfig {
        instance_grace: Duration::from_millis(300),
        startup_grace: Duration::from_secs(5),
    };
    let cp = ControlPlane::start(Some(data.path()), fast()).await?;
    let create = |service: &str| -> anyhow::Result<(String, String)> {
        let (code, out, err) = cp.weftctl(&["token", "create", service, "--ttl", "1h"], None)?;
        assert_eq!(code, 0, "{err}");
        let token = out.trim().to_string();
        let id = weft_proto::identity::JoinToken::decode(&token)
            .map(|t| t.id)
            .ok_or_else(|| anyhow::anyhow!("not a token: {token}"))?;
        Ok((id, token))
    };
    let (id_a, users_a) = create("users")?;
    let (id_b, users_b) = create("users")?;
    let (id_o, _) = create("orders")?;

    let listed = |cp: &ControlPlane| -> anyhow::Result<Vec<serde_json::Value>> {
        let (code, out, err) = cp.weftctl(&["token", "list", "-o", "json"], None)?;
        assert_eq!(code, 0, "{err}");
        Ok(serde_json::from_str(&out)?)
    };
    let ids = |l: &[serde_json::Value]| {
        let mut v: Vec<String> = l
            .iter()
            .filter_map(|t| t["id"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    let list = listed(&cp)?;
    assert_eq!(
        ids(&list),
        sorted(vec![id_a.clone(), id_b.clone(), id_o.clone()])
    );
    for t in &list {
        let want = if t["id"] == id_o.as_str() {
            "orders"
        } else {
            "users"
        };
        assert_eq!(t["service"], want, "{t}");
        let (created, expires) = (
            t["createdUnixMs"].as_u64().unwrap_or(0),
            t["expiresUnixMs"].as_u64().unwrap_or(0),
        );
        assert!(created > 0, "{t}");
        assert!((3_600_000..3_601_000).contains(&(expires - created)), "{t}");
    }
    let (_, table, _) = cp.weftctl(&["token", "list"], None)?;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["ID", "SERVICE", "AGE", "EXPIRES", "IN"]
    );
    assert_eq!(lines.len(), 4, "{table}");
    let row_a = lines
        .iter()
        .find(|l| l.starts_with(&id_a))
        .copied()
        .unwrap_or_default();
    assert!(row_a.contains("users") && row_a.contains("59m"), "{table}");

    // Revoked: gone from the list, refused for a first certificate.
    let (code, out, err) = cp.weftctl(&["token", "revoke", &id_a], None)?;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("token/{id_a} revoked (it admitted users)\n"));
    let (code, _, err) = cp.weftctl(&["token", "revoke", &id_a], None)?;
    assert_eq!(code, 1);
    assert!(err.contains(&id_a) && err.contains("token list"), "{err}");
    assert_eq!(ids(&listed(&cp)?), sorted(vec![id_b.clone(), id_o.clone()]));
    let refused = |cp: &ControlPlane, token: &str| -> anyhow::Result<String> {
        let path = weft_tests::mesh::write_temp(data.path(), "revoked.token", token)?;
        // The flags of an in-process sidecar, given to the real binary.
        let spec = SidecarSpec::new("users")
            .arg("--control-plane", cp.url())
            .arg("--token-file", path.display());
        let mut p = weft_tests::process::Proc::spawn("weft-sidecar", &spec.args[1..])?;
        let code = p.wait(Duration::from_secs(15))?;
        assert_ne!(code, 0, "a revoked token admitted a sidecar");
        Ok(p.log_text())
    };
    let log = tokio::task::block_in_place(|| refused(&cp, &users_a))?;
    assert!(log.contains("not known to this control plane"), "{log}");

    // After a restart on the same data: still revoked; the others still work.
    cp.stop().await?;
    let cp = ControlPlane::start(Some(data.path()), fast()).await?;
    assert_eq!(ids(&listed(&cp)?), sorted(vec![id_b, id_o]));
    let log = tokio::task::block_in_place(|| refused(&cp, &users_a))?;
    assert!(log.contains("not known to this control plane"), "{log}");
    let token_b = weft_tests::mesh::write_temp(data.path(), "b.token", &users_b)?;
    let s = SidecarSpec::new("users")
        .access(&cp.access)
        .arg("--token-file", token_b.display())
        .start()
        .await?;
    assert_eq!(
        s.config().await?["identity"]["spiffeId"],
        "spiffe://weft.local/service/users"
    );
    Ok(())
}
