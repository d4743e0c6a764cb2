//! `deploy/compose.yaml`, checked offline: `podman-compose config` (PyPI;
//! Docker's compose plugin is not on this machine) must accept it and
//! resolve every service (it checks the syntax, anchors and merges, and
//! dependency conditions), and what the file wires together must agree —
//! every dependency is a service,
//! each sidecar's join token is one the init step writes, each wrapped
//! app is a program the examples image holds, the images are the ones
//! `deploy/build-image.sh` builds.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

#[test]
fn the_compose_file_resolves_and_its_wiring_agrees() -> anyhow::Result<()> {
    let file = repo().join("deploy/compose.yaml");
    let out = match Command::new("podman-compose")
        .arg("-f")
        .arg(&file)
        .arg("config")
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                anyhow::bail!(
                    "podman-compose is missing ({e}): pip install podman-compose (.ci/run installs it)"
                );
            }
            eprintln!("skipping: podman-compose is missing (pip install podman-compose)");
            return Ok(());
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "podman-compose config refused deploy/compose.yaml:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let resolved = yaml(&text)?;
    let services = resolved["services"]
        .as_object()
        .ok_or_else(|| anyhow::anyhow!("no services in:\n{text}"))?;
    for name in [
        "control-plane",
        "mesh-init",
        "user-service-v1",
        "user-service-v2",
        "order-service",
        "email-service",
        "rabbitmq",
        "rabbitmq-sidecar",
        "gateway",
        "jaeger",
    ] {
        anyhow::ensure!(services.contains_key(name), "service {name} is missing");
    }

    // podman-compose checks a dependency's condition, not its name.
    for (name, s) in services {
        if let Some(deps) = s["depends_on"].as_object() {
            for dep in deps.keys() {
                anyhow::ensure!(
                    services.contains_key(dep),
                    "{name} depends on {dep}, which is not a service"
                );
            }
        }
    }

    // The tokens the init step writes, by service.
    let init = services["mesh-init"]["command"].to_string();
    let examples_apps = ["user-service", "order-service", "email-service"];
    let mut sidecars = 0;
    for (name, s) in services {
        let Some(args) = s["command"].as_array() else {
            continue;
        };
        let args: Vec<&str> = args.iter().filter_map(|a| a.as_str()).collect();
        if s["entrypoint"][0] != "/usr/local/bin/weft-sidecar" {
            continue;
        }
        sidecars += 1;
        let flag = |f: &str| {
            args.iter()
                .find_map(|a| a.strip_prefix(&format!("--{f}=")))
                .map(str::to_string)
        };
        let service = flag("service").ok_or_else(|| anyhow::anyhow!("{name}: no --service"))?;
        let token = flag("token-file").ok_or_else(|| anyhow::anyhow!("{name}: no --token-file"))?;
        anyhow::ensure!(
            token == format!("/home/weft/{service}.token"),
            "{name}: token {token} is not {service}'s"
        );
        anyhow::ensure!(
            init.contains(&service),
            "{name}: the init step makes no token for {service}"
        );
        if let Some(i) = args.iter().position(|a| *a == "--") {
            let app = args.get(i + 1).copied().unwrap_or_default();
            anyhow::ensure!(
                examples_apps
                    .iter()
                    .any(|a| app == format!("/usr/local/bin/{a}")),
                "{name}: wraps {app}, which the examples image does not hold"
            );
        }
        anyhow::ensure!(
            s["image"] == "localhost/weft-examples:dev",
            "{name}: image {}",
            s["image"]
        );
    }
    anyhow::ensure!(sidecars == 6, "{sidecars} sidecars found, expected 6");
    assert_eq!(services["control-plane"]["image"], "localhost/weft:dev");
    Ok(())
}

/// podman-compose prints the resolved file as YAML.
fn yaml(text: &str) -> anyhow::Result<serde_json::Value> {
    serde_saphyr::from_str(text).map_err(|e| anyhow::anyhow!("podman-compose's output: {e}"))
}
