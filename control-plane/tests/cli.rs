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

#[test]
fn unreachable_control_plane_is_named() {
    let (code, _, err) = weftctl(
        &["--control-plane", "http://127.0.0.1:1", "get", "services"],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the control plane at http://127.0.0.1:1"),
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
}
