//! `weftctl inject`, the real binary, against golden files
//! (`tests/inject/NAME.in.yaml` → `NAME.out.yaml`, or `NAME.err` for what
//! it must refuse): the output is exactly the expected file, injecting the
//! output again changes nothing, and every output and every manifest in
//! `deploy/kubernetes/` validates offline against the Kubernetes schemas
//! (`kubernetes-validate`, PyPI, with its bundled schemas); and each meshed
//! Kubernetes Service's fixed clusterIP is its Weft Service's address. Set
//! `UPDATE_GOLDEN=1` to rewrite the expected files after a deliberate
//! change, and read the diff.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use weft_control_plane::resource::{Resource, parse_documents};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// `weftctl inject -f FILE`: (exit code, stdout, stderr).
fn inject(file: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weftctl"))
        .args(["inject", "-f"])
        .arg(file)
        .output()
        .expect("run weftctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn golden(expected: &Path, actual: &str) {
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(expected, actual).expect("write golden");
        return;
    }
    let want = std::fs::read_to_string(expected)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", expected.display()));
    assert!(
        want == actual,
        "{} differs from weftctl's output:\n{actual}",
        expected.display()
    );
}

/// The inputs that inject, with their expected outputs.
fn cases() -> Vec<(PathBuf, PathBuf)> {
    vec![
        (
            dir().join("workloads.in.yaml"),
            dir().join("workloads.out.yaml"),
        ),
        (
            repo().join("deploy/kubernetes/restaurant.yaml"),
            dir().join("restaurant.out.yaml"),
        ),
    ]
}

#[test]
fn inject_gives_the_golden_output_and_twice_is_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (input, expected) in cases() {
        let (code, out, err) = inject(&input);
        assert_eq!(code, 0, "{}: {err}", input.display());
        golden(&expected, &out);
        let again = tmp.path().join("again.yaml");
        std::fs::write(&again, &out).expect("write");
        let (code, twice, err) = inject(&again);
        assert_eq!(code, 0, "{err}");
        assert!(
            twice == out,
            "injecting {} twice changed it:\n{twice}",
            input.display()
        );
    }
}

#[test]
fn a_workload_that_is_not_meshed_comes_out_as_it_went_in() {
    // The control plane's StatefulSet says weft.dev/inject: disabled.
    let input = repo().join("deploy/kubernetes/control-plane.yaml");
    let (code, out, err) = inject(&input);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, std::fs::read_to_string(&input).expect("read"));
}

#[test]
fn what_cannot_be_injected_is_refused_with_every_reason_and_no_output() {
    for name in ["hostnetwork", "other-mesh"] {
        let (code, out, err) = inject(&dir().join(format!("{name}.in.yaml")));
        assert_eq!(code, 1, "{name}: {out}");
        assert!(out.is_empty(), "{name}: a refused file gives no output");
        let want = std::fs::read_to_string(dir().join(format!("{name}.err"))).expect("read");
        for line in want.lines() {
            assert!(err.contains(line), "{name}: stderr lacks {line:?}:\n{err}");
        }
    }
}

#[test]
fn a_bad_annotation_is_named() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let text = std::fs::read_to_string(dir().join("workloads.in.yaml"))
        .expect("read")
        .replace("weft.dev/protocol: tcp", "weft.dev/protocol: udp");
    let file = tmp.path().join("bad.yaml");
    std::fs::write(&file, text).expect("write");
    let (code, _, err) = inject(&file);
    assert_eq!(code, 1);
    assert!(
        err.contains("document 2 (StatefulSet/db-proxy): cannot inject: annotation weft.dev/protocol: unknown protocol \"udp\""),
        "{err}"
    );
}

#[test]
fn every_manifest_and_every_inject_output_validates_against_the_kubernetes_schemas() {
    let probe = Command::new("kubernetes-validate")
        .arg("--version")
        .output();
    if probe.is_err() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "kubernetes-validate is missing (pip install kubernetes-validate; .ci/run installs it)"
            );
        }
        eprintln!("skipping: kubernetes-validate is missing (pip install kubernetes-validate)");
        return;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("deploy/kubernetes"))
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    // The inject outputs, as weftctl writes them now.
    let tmp = tempfile::tempdir().expect("tempdir");
    for (i, (input, _)) in cases().iter().enumerate() {
        let (code, out, err) = inject(input);
        assert_eq!(code, 0, "{err}");
        let path = tmp.path().join(format!("out-{i}.yaml"));
        std::fs::write(&path, out).expect("write");
        files.push(path);
    }
    files.sort();
    assert!(files.len() >= 5, "manifests found: {files:?}");
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--kubernetes-version", "1.29.0"])
        .args(&files)
        .output()
        .expect("run kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate:\n{text}");
    // Each document was checked (one "passed" line per resource).
    assert!(text.matches("passed").count() >= 20, "{text}");
}

/// Each Kubernetes `Service` of `text` by name: its `clusterIP`, if fixed.
fn cluster_ips(text: &str) -> BTreeMap<String, Option<IpAddr>> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).expect("manifest YAML");
    docs.iter()
        .filter(|d| d["apiVersion"] == "v1" && d["kind"] == "Service")
        .map(|d| {
            let name = d["metadata"]["name"].as_str().expect("a name").to_string();
            let ip = d["spec"]["clusterIP"].as_str().map(|ip| {
                ip.parse::<IpAddr>()
                    .unwrap_or_else(|e| panic!("Service/{name} clusterIP {ip:?}: {e}"))
            });
            (name, ip)
        })
        .collect()
}

/// With interception an app dials a service's ClusterIP (its DNS name
/// resolves to it), and the sidecar maps that address to the service by
/// `spec.addresses`: for every meshed service the two files must list the
/// same address, and the mesh file for Kubernetes must be
/// `examples/mesh.yaml` plus those addresses, nothing else.
#[test]
fn every_meshed_kubernetes_service_has_its_cluster_ip_in_the_mesh_resources() {
    let read = |p: &str| std::fs::read_to_string(repo().join(p)).expect(p);
    let k8s = cluster_ips(&read("deploy/kubernetes/restaurant.yaml"));
    let mesh = parse_documents(&read("deploy/kubernetes/mesh/restaurant.yaml"))
        .unwrap_or_else(|e| panic!("deploy/kubernetes/mesh/restaurant.yaml: {e}"));
    let mut meshed = Vec::new();
    for r in &mesh {
        let Resource::Service(s) = r else { continue };
        let name = s.name.to_string();
        match k8s.get(&name) {
            Some(Some(ip)) => {
                assert_eq!(
                    s.addresses,
                    vec![*ip],
                    "Service/{name}: spec.addresses must be its clusterIP {ip}"
                );
                meshed.push(name);
            }
            Some(None) => panic!("the Kubernetes Service {name} has no fixed clusterIP"),
            // No Kubernetes Service (a consumer nobody dials): nothing to map.
            None => assert!(
                s.addresses.is_empty(),
                "Service/{name} lists addresses no Kubernetes Service has"
            ),
        }
    }
    assert_eq!(
        meshed,
        ["user-service", "order-service", "rabbitmq"],
        "the meshed Kubernetes Services"
    );

    let mut stripped = mesh.clone();
    for r in &mut stripped {
        if let Resource::Service(s) = r {
            s.addresses.clear();
        }
    }
    let example = parse_documents(&read("examples/mesh.yaml")).expect("examples/mesh.yaml");
    assert!(
        stripped == example,
        "deploy/kubernetes/mesh/restaurant.yaml differs from examples/mesh.yaml in more than spec.addresses"
    );
}
