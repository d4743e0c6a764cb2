//! `weftctl` and `weft-control-plane` refuse bad input clearly: bad YAML is
//! rejected before anything is sent, with document, field path and reason;
//! an unreachable control plane is named; exit codes are non-zero.

use std::io::Write;
use std::process::{Command, Stdio};

fn weftctl(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weftctl runs");
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        i.write_all(text.as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("exit");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_yaml_is_rejected_with_document_path_and_reason() {
    // Nothing listens on port 1: the file must be rejected before any call.
    let yaml = "apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: ok}\n---\n\
                apiVersion: weft.dev/v1\nkind: Service\nmetadata: {name: users}\nspec:\n  loadBalancer: fastest\n";
    let (code, _, err) = weftctl(
        &["--control-plane", "http://127.0.0.1:1", "apply", "-f", "-"],
        Some(yaml),
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "document 2 (Service/users): spec.loadBalancer: unknown load balancer \"fastest\""
        ),
        "{err}"
    );
    assert!(err.contains("nothing was applied"), "{err}");
}

/// A real credential (a CA made here), as the control plane writes it.
fn credential(dir: &std::path::Path) -> String {
    let ca = weft_control_plane::ca::Ca::load_or_create(
        &weft_control_plane::ca::CaSource::DataDir(dir.to_path_buf()),
        "weft.local",
        std::time::Duration::from_secs(60),
    )
    .expect("a CA");
    let path = dir.join("admin.credential");
    weft_control_plane::auth::AdminAuth::load_or_create(&path, "weft.local", &ca.root_pem())
        .expect("a credential");
    path.display().to_string()
}

#[test]
fn unreachable_control_plane_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cred = credential(dir.path());
    let (code, _, err) = weftctl(
        &[
            "--control-plane",
            "https://127.0.0.1:1",
            "--credential",
            &cred,
            "get",
            "services",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the control plane at https://127.0.0.1:1"),
        "{err}"
    );
    // Plaintext URLs are refused with the reason.
    let (code, _, err) = weftctl(
        &[
            "--control-plane",
            "http://127.0.0.1:1",
            "--credential",
            &cred,
            "get",
            "services",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(
            "--control-plane: \"http://127.0.0.1:1\": the control plane serves TLS: use https://"
        ),
        "{err}"
    );
    // A list: every bad entry named; every unreachable replica named.
    let (code, _, err) = weftctl(
        &[
            "--control-plane",
            "https://a:1,,ftp://b",
            "--credential",
            &cred,
            "status",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("\"entry 2\": empty") && err.contains("\"ftp://b\": must be a URL"),
        "{err}"
    );
    let (code, _, err) = weftctl(
        &[
            "--control-plane",
            "https://127.0.0.1:1,https://127.0.0.1:2",
            "--credential",
            &cred,
            "get",
            "services",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("https://127.0.0.1:1: ") && err.contains("https://127.0.0.1:2: "),
        "{err}"
    );
}

#[test]
fn without_the_admin_credential_nothing_is_sent() {
    let (code, _, err) = weftctl(
        &[
            "--control-plane",
            "https://127.0.0.1:1",
            "--credential",
            "/nonexistent/admin.credential",
            "get",
            "services",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read the admin credential /nonexistent/admin.credential"),
        "{err}"
    );
}

#[test]
fn missing_file_and_bad_usage() {
    let (code, _, err) = weftctl(&["apply", "-f", "/nonexistent.yaml"], None);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read /nonexistent.yaml"), "{err}");
    let (code, _, err) = weftctl(&["get", "pods"], None);
    assert_eq!(code, 2, "usage errors exit 2 like clap: {err}");
}

#[test]
fn control_plane_rejects_bad_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-control-plane"))
        .args(["--instance-grace", "ten"])
        .output()
        .expect("runs");
    assert_ne!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--instance-grace"), "{err}");

    // A trust bundle that cannot be read, or holds no certificate: the
    // control plane does not start, and says which flag and file.
    let dir = tempfile::tempdir().expect("tempdir");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "junk").expect("write");
    for (bundle, why) in [
        (dir.path().join("missing.pem"), "No such file"),
        (junk, "no CERTIFICATE"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_weft-control-plane"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--dashboard",
                "off",
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .arg("--trust-bundle")
            .arg(&bundle)
            .output()
            .expect("runs");
        assert_ne!(out.status.code(), Some(0));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--trust-bundle")
                && err.contains(&bundle.display().to_string())
                && err.contains(why),
            "{err}"
        );
    }
}
