//! The quick start runs the whole example mesh from the real binaries,
//! sends traffic through its gateway, places orders whose confirmation
//! emails go through RabbitMQ (when it is installed; required under
//! `CI=true`), and stops cleanly.

use std::process::Command;

#[test]
fn quickstart_runs_the_restaurant_and_stops_cleanly() {
    let rabbitmq = weft_examples::broker::find_server().is_some();
    assert!(
        rabbitmq || std::env::var("CI").as_deref() != Ok("true"),
        "rabbitmq-server is not installed, and CI=true requires it (.ci/run installs it)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .args([
            "--once",
            "--free-ports",
            "--requests",
            "100",
            "--rate",
            "200",
            "--workdir",
        ])
        .arg(dir.path())
        .output()
        .expect("quickstart runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // What happened, when run with --no-capture.
    println!("{stdout}");
    assert!(
        out.status.success(),
        "quickstart failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("succeeded 100, failed 0"), "{stdout}");
    for instance in ["user-1", "user-2"] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(instance)),
            "no calls counted for {instance}:\n{stdout}"
        );
    }
    // The canary's share is printed; the REST call to the gRPC user-service
    // went through the gateway's transcoding.
    assert!(stdout.contains("v1 90%, v2 10%"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("200 ") && l.contains("Ada Lovelace")),
        "GET /api/users/1 through the gateway:\n{stdout}"
    );
    assert!(
        stdout.contains("(synced)"),
        "weftctl status shows synced sidecars:\n{stdout}"
    );
    if rabbitmq {
        // Five orders, five events through the broker, five emails.
        assert!(stdout.contains("placed 5, failed 0"), "{stdout}");
        assert!(
            stdout.contains("emails sent by email-service: 5"),
            "{stdout}"
        );
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with("to ada@example.com")),
            "{stdout}"
        );
    } else {
        println!("RabbitMQ is not installed: the queue part was not run");
        assert!(
            stdout.contains("apt-get install rabbitmq-server"),
            "the quick start says how to install RabbitMQ:\n{stdout}"
        );
    }
    // The control plane, 4 apps and 5 sidecars and the broker with
    // RabbitMQ; without it, 3 apps and 4 sidecars.
    assert_eq!(
        stdout.matches("stopped ").count(),
        if rabbitmq { 12 } else { 8 },
        "every process stopped on SIGTERM:\n{stdout}"
    );
    assert!(!stdout.contains("killed"), "{stdout}");
}
