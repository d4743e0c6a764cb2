//! The `weft-sidecar` binary refuses bad flags and files with a message
//! naming what and why, and a non-zero exit code.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-sidecar"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_flags_name_the_flag_and_fail() {
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--service",
                "a",
                "--control-plane",
                "https://127.0.0.1:1",
                "--inbound",
                "127.0.0.1:0",
                "--upstream",
                "nope",
            ],
            "--upstream",
        ),
        (
            &[
                "--service",
                "a",
                "--control-plane",
                "https://127.0.0.1:1",
                "--inbound",
                "127.0.0.1:0",
                "--protocol",
                "udp",
            ],
            "--protocol",
        ),
        (
            &[
                "--service",
                "Not_A_Name",
                "--control-plane",
                "https://127.0.0.1:1",
            ],
            "--service",
        ),
        (&["--service", "a"], "--control-plane"),
        (
            &["--service", "a", "--control-plane", "https://127.0.0.1:1"],
            "--advertise",
        ),
        (
            &["--service", "a", "--config", "/nonexistent/mesh.yaml"],
            "/nonexistent/mesh.yaml",
        ),
        (
            &[
                "--service",
                "a",
                "--control-plane",
                "https://x:1",
                "--inbound",
                "not-an-addr",
            ],
            "--inbound",
        ),
        (
            &[
                "--service",
                "a",
                "--control-plane",
                "https://x:1",
                "--config",
                "f.yaml",
            ],
            "--config",
        ),
    ];
    for (args, expect) in cases {
        let (code, err) = run(args);
        assert_ne!(code, 0, "{args:?} must fail");
        assert!(
            err.contains(expect),
            "{args:?}: stderr does not name {expect}:\n{err}"
        );
    }
}

#[test]
fn a_bad_static_file_names_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mesh.yaml");
    std::fs::write(
        &path,
        "services:\n  - name: users\n    endpoints:\n      - address: 10.0.0.1\n",
    )
    .expect("write");
    let (code, err) = run(&[
        "--service",
        "a",
        "--inbound",
        "127.0.0.1:0",
        "--config",
        path.to_str().expect("utf-8"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("services[0].endpoints[0].address"), "{err}");
}

#[test]
fn help_lists_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_weft-sidecar"))
        .arg("--help")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--service",
        "--app",
        "--control-plane",
        "--inbound",
        "--outbound",
        "--admin",
        "--advertise",
        "--upstream",
        "--label",
        "--protocol",
        "--config",
        "WEFT_SERVICE",
    ] {
        assert!(text.contains(flag), "--help does not mention {flag}");
    }
}
