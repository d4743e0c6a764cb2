//! The quick start runs the whole example mesh from the real binaries,
//! sends traffic through its gateway, and stops cleanly.

use std::process::Command;

#[test]
fn quickstart_runs_the_restaurant_and_stops_cleanly() {
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
    assert_eq!(
        stdout.matches("stopped ").count(),
        8,
        "every process stopped on SIGTERM:\n{stdout}"
    );
    assert!(!stdout.contains("killed"), "{stdout}");
}
