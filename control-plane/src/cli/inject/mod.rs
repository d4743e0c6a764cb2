//! `weftctl inject -f deploy.yaml`: adds the mesh to Kubernetes workloads,
//! as `linkerd inject` does. Every Pod, Deployment, StatefulSet, DaemonSet,
//! ReplicaSet, Job and CronJob (and those in a `List`) gets the init step
//! and the sidecar ([`pod`]); other documents come out exactly as they went
//! in, comments and all. Injecting twice gives what injecting once gives.
//! A file with a workload that cannot be injected gives no output: every
//! such workload is named, with the reason.

pub mod pod;

use serde_json::{Map, Value};

pub use pod::{InjectOptions, Refusal};

/// Why a file was not injected.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("document {document}: not valid YAML: {reason}")]
    Yaml { document: usize, reason: String },
    #[error(
        "the documents could not be told apart: put each `---` separator on its own line \
         ({found} documents found, {expected} parsed)"
    )]
    Separators { found: usize, expected: usize },
    #[error("{}", .0.iter().map(|r| r.to_string()).collect::<Vec<_>>().join("\n"))]
    Refused(Vec<Refused>),
}

/// One workload that cannot be injected.
#[derive(Debug, thiserror::Error)]
#[error("document {document} ({kind}/{name}): cannot inject: {reason}")]
pub struct Refused {
    pub document: usize,
    pub kind: String,
    pub name: String,
    pub reason: Refusal,
}

/// The workload kinds and where their pod template is.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return None,
    })
}

/// A document of the input: the separator line before it (none for the
/// first) and its text.
struct Segment<'a> {
    separator: Option<&'a str>,
    text: String,
}

/// Splits at `---` lines. At column 0 such a line can only be a document
/// marker (block scalars are indented), so the text of documents left
/// alone can be written back byte for byte.
fn split(text: &str) -> Vec<Segment<'_>> {
    let mut out = vec![Segment {
        separator: None,
        text: String::new(),
    }];
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == "---" || bare.starts_with("--- #") {
            out.push(Segment {
                separator: Some(line),
                text: String::new(),
            });
        } else if let Some(last) = out.last_mut() {
            last.text.push_str(line);
        }
    }
    out
}

/// YAML as Kubernetes reads it (YAML 1.1: `0644` is octal, `yes` a
/// boolean), so that a re-written document means what it meant to kubectl.
fn yaml_options() -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.legacy_octal_numbers = true;
    o
}

/// Injects every workload of `text` (one or more YAML documents).
pub fn inject(text: &str, opts: &InjectOptions) -> Result<String, InjectError> {
    let segments = split(text);
    // The whole file parsed the same way, to check the split.
    let expected: Vec<Value> = serde_saphyr::from_multiple_with_options(text, yaml_options())
        .map_err(|e| InjectError::Yaml {
            document: 1,
            reason: e.to_string(),
        })?;
    let mut out = String::new();
    let mut refused = Vec::new();
    let mut found = 0;
    for (i, seg) in segments.iter().enumerate() {
        let docs: Vec<Value> = serde_saphyr::from_multiple_with_options(&seg.text, yaml_options())
            .map_err(|e| InjectError::Yaml {
                document: i + 1,
                reason: e.to_string(),
            })?;
        if let Some(s) = seg.separator {
            out.push_str(s);
        }
        let mut doc = match <[Value; 1]>::try_from(docs) {
            Ok([doc]) => doc,
            Err(docs) => {
                // Comments only, or an empty document: as it was.
                found += docs.len();
                out.push_str(&seg.text);
                continue;
            }
        };
        found += 1;
        match inject_document(&mut doc, opts) {
            Ok(false) => out.push_str(&seg.text),
            Ok(true) => out.push_str(&crate::resource::value_to_yaml(&doc)),
            Err(reason) => refused.push(Refused {
                document: found,
                kind: text_at(&doc, &["kind"]).unwrap_or("?").to_string(),
                name: text_at(&doc, &["metadata", "name"])
                    .unwrap_or("?")
                    .to_string(),
                reason,
            }),
        }
    }
    if found != expected.len() {
        return Err(InjectError::Separators {
            found,
            expected: expected.len(),
        });
    }
    if !refused.is_empty() {
        return Err(InjectError::Refused(refused));
    }
    Ok(out)
}

fn text_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Injects one document in place; `Ok(false)` when it is left as it was
/// (not a workload, or `weft.dev/inject: disabled`).
fn inject_document(doc: &mut Value, opts: &InjectOptions) -> Result<bool, Refusal> {
    let Some(kind) = doc.get("kind").and_then(Value::as_str).map(str::to_string) else {
        return Ok(false);
    };
    if kind == "List" {
        let mut any = false;
        if let Some(Value::Array(items)) = doc.get_mut("items") {
            for item in items {
                any |= inject_document(item, opts)?;
            }
        }
        return Ok(any);
    }
    let Some(path) = template_path(&kind) else {
        return Ok(false);
    };
    let Value::Object(root) = doc else {
        return Ok(false);
    };
    let workload_meta = root.get("metadata").and_then(Value::as_object).cloned();
    let template = walk(root, path).ok_or(Refusal::NoPodSpec("the pod template"))?;
    let meta = template.get("metadata").and_then(Value::as_object).cloned();
    if pod::disabled(workload_meta.as_ref(), meta.as_ref()) {
        return Ok(false);
    }
    let spec = match template.get_mut("spec") {
        Some(Value::Object(spec)) => spec,
        _ => return Err(Refusal::NoPodSpec("the pod's spec")),
    };
    pod::inject(
        workload_meta.as_ref(),
        pod::Template {
            metadata: meta.as_ref(),
            spec,
        },
        opts,
    )?;
    Ok(true)
}

fn walk<'a>(
    mut m: &'a mut Map<String, Value>,
    path: &[&str],
) -> Option<&'a mut Map<String, Value>> {
    for key in path {
        m = m.get_mut(*key)?.as_object_mut()?;
    }
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> InjectOptions {
        InjectOptions {
            image: "localhost/weft:dev".into(),
            control_plane: "https://weft-control-plane.weft.svc:15012".into(),
            token_secret: "weft-token-{service}".into(),
        }
    }

    const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web, version: v2}
      annotations: {weft.dev/exclude-outbound-ports: \"5432, 6379\"}
    spec:
      containers:
        - name: web
          image: web:1
          ports: [{containerPort: 8080}]
          volumeMounts: [{name: conf, mountPath: /etc/web}]
      volumes:
        - name: conf
          configMap: {name: web, defaultMode: 0644}
";

    #[test]
    fn a_deployment_gets_the_init_step_and_a_native_sidecar() {
        let out = inject(DEPLOYMENT, &opts()).expect("inject");
        let v: Value = serde_saphyr::from_str(&out).expect("yaml");
        let spec = &v["spec"]["template"]["spec"];
        let inits = spec["initContainers"].as_array().expect("inits");
        assert_eq!(inits[0]["name"], "weft-init");
        assert_eq!(inits[0]["args"][3], "--exclude-outbound-ports=5432,6379");
        assert_eq!(
            inits[0]["securityContext"]["capabilities"]["add"],
            serde_json::json!(["NET_ADMIN", "NET_RAW"])
        );
        assert_eq!(inits[1]["name"], "weft-sidecar");
        assert_eq!(inits[1]["restartPolicy"], "Always");
        let env = inits[1]["env"].as_array().expect("env");
        let get = |k: &str| {
            env.iter()
                .find(|e| e["name"] == k)
                .map(|e| e["value"].clone())
        };
        assert_eq!(get("WEFT_SERVICE"), Some("web".into()));
        assert_eq!(get("WEFT_APP"), Some("127.0.0.1:8080".into()));
        assert_eq!(get("WEFT_LABELS"), Some("version=v2".into()));
        // YAML 1.1 as kubectl reads it: 0644 is octal.
        assert_eq!(spec["volumes"][0]["configMap"]["defaultMode"], 420);
        assert_eq!(spec["volumes"][1]["secret"]["secretName"], "weft-token-web");
        // Twice is once.
        assert_eq!(inject(&out, &opts()).expect("again"), out);
    }

    #[test]
    fn other_kinds_pass_through_byte_for_byte() {
        let text = "# a comment\napiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 80}]\n";
        assert_eq!(inject(text, &opts()).expect("inject"), text);
    }

    #[test]
    fn what_cannot_be_injected_is_refused_with_the_reason() {
        let host = DEPLOYMENT.replace(
            "      containers:",
            "      hostNetwork: true\n      containers:",
        );
        let e = inject(&host, &opts()).expect_err("hostNetwork");
        assert!(
            e.to_string()
                .contains("document 1 (Deployment/web): cannot inject: hostNetwork"),
            "{e}"
        );
        let nameless = DEPLOYMENT.replace("labels: {app: web, version: v2}", "labels: {tier: web}");
        let e = inject(&nameless, &opts()).expect_err("no name");
        assert!(e.to_string().contains("cannot tell its service"), "{e}");
        let istio = DEPLOYMENT.replace(
            "        - name: web\n",
            "        - name: istio-proxy\n          image: x\n        - name: web\n",
        );
        let e = inject(&istio, &opts()).expect_err("istio");
        assert!(
            e.to_string()
                .contains("another mesh's sidecar (container istio-proxy)"),
            "{e}"
        );
        let bad = DEPLOYMENT.replace("\"5432, 6379\"", "\"5432,x\"");
        let e = inject(&bad, &opts()).expect_err("bad port");
        assert!(
            e.to_string()
                .contains("annotation weft.dev/exclude-outbound-ports: \"x\" is not a port"),
            "{e}"
        );
    }
}
