//! What `weftctl inject` adds to one pod template: the init step
//! (`weft-sidecar init`, as root with NET_ADMIN and NET_RAW) and the
//! sidecar as a native sidecar (an init container with `restartPolicy:
//! Always`, Kubernetes ≥ 1.29), its join token from a Secret, resources,
//! and probes on the admin port. What a pod says about itself (its service
//! name, protocol, app port, exclusions) is read from its annotations and
//! labels and checked here, before anything is written.

use serde_json::{Map, Value, json};
use weft_proto::labels::validate_label;
use weft_proto::name::ServiceName;
use weft_proto::protocol::Protocol;

/// The annotation that names the pod's service; without it, the label
/// `app.kubernetes.io/name`, then `app`.
pub const SERVICE_ANNOTATION: &str = "weft.dev/service";
/// `disabled` leaves the workload as it is.
pub const INJECT_ANNOTATION: &str = "weft.dev/inject";
const PROTOCOL_ANNOTATION: &str = "weft.dev/protocol";
const APP_PORT_ANNOTATION: &str = "weft.dev/app-port";
/// Annotations passed to `weft-sidecar init` as the flag of the same name.
const EXCLUSIONS: [&str; 4] = [
    "exclude-inbound-ports",
    "exclude-outbound-ports",
    "exclude-inbound-cidrs",
    "exclude-outbound-cidrs",
];

pub const INIT_NAME: &str = "weft-init";
pub const SIDECAR_NAME: &str = "weft-sidecar";
const TOKEN_VOLUME: &str = "weft-token";
const TOKEN_DIR: &str = "/var/run/weft/token";
/// The uid and gid the sidecar runs as, which the init rules exclude.
const PROXY_ID: u32 = 1337;
const ADMIN_PORT: u16 = 15000;
const INBOUND_PORT: u16 = 15006;

/// Containers and annotations of other meshes: a pod with one is refused.
const OTHER_SIDECARS: [&str; 6] = [
    "linkerd-proxy",
    "linkerd-init",
    "istio-proxy",
    "istio-init",
    "consul-dataplane",
    "envoy-sidecar",
];
const OTHER_MESH_ANNOTATIONS: [&str; 3] = [
    "sidecar.istio.io/status",
    "linkerd.io/proxy-version",
    "consul.hashicorp.com/connect-inject-status",
];

/// How the injected containers are made (`weftctl inject` flags).
#[derive(Debug, Clone)]
pub struct InjectOptions {
    pub image: String,
    /// The control plane as pods reach it.
    pub control_plane: String,
    /// The Secret with the join token; `{service}` is replaced.
    pub token_secret: String,
}

/// Why a pod cannot be injected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "hostNetwork pods share the node's network namespace: the init step would redirect \
         the node's traffic (set {INJECT_ANNOTATION}: disabled to leave it out)"
    )]
    HostNetwork,
    #[error("it already has another mesh's sidecar ({0}): remove it first")]
    OtherSidecar(String),
    #[error(
        "it has a {SIDECAR_NAME} container that is not a native sidecar: remove it, inject \
         adds its own"
    )]
    PlainWeftContainer,
    #[error(
        "cannot tell its service: set the annotation {SERVICE_ANNOTATION} or the label \
         app.kubernetes.io/name or app on the pod template"
    )]
    NoServiceName,
    #[error("{source_of}: {reason}")]
    Invalid { source_of: String, reason: String },
    #[error("{0} is missing or not a mapping")]
    NoPodSpec(&'static str),
    #[error("the pod has no containers")]
    NoContainers,
}

/// What was read from a pod template, checked.
struct Pod {
    service: ServiceName,
    protocol: Option<Protocol>,
    app_port: Option<u16>,
    version: Option<String>,
    exclusions: Vec<(&'static str, String)>,
}

/// The `metadata` and `spec` of a pod (a Pod, or a workload's template).
pub struct Template<'a> {
    pub metadata: Option<&'a Map<String, Value>>,
    pub spec: &'a mut Map<String, Value>,
}

fn annotation<'a>(metadata: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a str> {
    metadata?.get("annotations")?.get(key)?.as_str()
}

fn label<'a>(metadata: Option<&'a Map<String, Value>>, key: &str) -> Option<&'a str> {
    metadata?.get("labels")?.get(key)?.as_str()
}

fn invalid(source_of: impl Into<String>, reason: impl ToString) -> Refusal {
    Refusal::Invalid {
        source_of: source_of.into(),
        reason: reason.to_string(),
    }
}

fn names(list: Option<&Value>) -> Vec<&str> {
    list.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|c| c.get("name")?.as_str()).collect())
        .unwrap_or_default()
}

/// Whether the workload asked to be left alone.
pub fn disabled(
    workload: Option<&Map<String, Value>>,
    template: Option<&Map<String, Value>>,
) -> bool {
    [template, workload]
        .into_iter()
        .any(|m| annotation(m, INJECT_ANNOTATION) == Some("disabled"))
}

/// Reads and checks what the pod says about itself.
fn read(workload: Option<&Map<String, Value>>, t: &Template<'_>) -> Result<Pod, Refusal> {
    if t.spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(Refusal::HostNetwork);
    }
    let containers = names(t.spec.get("containers"));
    if containers.is_empty() {
        return Err(Refusal::NoContainers);
    }
    let inits = names(t.spec.get("initContainers"));
    if let Some(other) = containers
        .iter()
        .chain(&inits)
        .find(|n| OTHER_SIDECARS.contains(n))
    {
        return Err(Refusal::OtherSidecar(format!("container {other}")));
    }
    if let Some(a) = OTHER_MESH_ANNOTATIONS
        .iter()
        .find(|a| annotation(t.metadata, a).is_some())
    {
        return Err(Refusal::OtherSidecar(format!("annotation {a}")));
    }
    if containers.contains(&SIDECAR_NAME) {
        return Err(Refusal::PlainWeftContainer);
    }

    let (from, name) = [
        (t.metadata, "annotation", SERVICE_ANNOTATION),
        (workload, "annotation", SERVICE_ANNOTATION),
        (t.metadata, "label", "app.kubernetes.io/name"),
        (t.metadata, "label", "app"),
    ]
    .into_iter()
    .find_map(|(m, what, key)| {
        let v = if what == "annotation" {
            annotation(m, key)
        } else {
            label(m, key)
        };
        v.map(|v| (format!("{what} {key}"), v))
    })
    .ok_or(Refusal::NoServiceName)?;
    let service = ServiceName::parse(name).map_err(|e| invalid(from, e))?;

    let protocol = annotation(t.metadata, PROTOCOL_ANNOTATION)
        .map(|p| {
            Protocol::parse(p).map_err(|e| invalid(format!("annotation {PROTOCOL_ANNOTATION}"), e))
        })
        .transpose()?;
    let app_port = match annotation(t.metadata, APP_PORT_ANNOTATION) {
        Some(p) => {
            Some(port(p).map_err(|e| invalid(format!("annotation {APP_PORT_ANNOTATION}"), e))?)
        }
        None => first_container_port(t.spec),
    };
    let version = label(t.metadata, "version")
        .map(|v| {
            validate_label("version", v)
                .map(|()| v.to_string())
                .map_err(|e| invalid("label version", e))
        })
        .transpose()?;
    let mut exclusions = Vec::new();
    for flag in EXCLUSIONS {
        let key = format!("weft.dev/{flag}");
        if let Some(v) = annotation(t.metadata, &key) {
            let check = if flag.ends_with("ports") {
                check_list(v, |p| port(p).map(|_| ()))
            } else {
                check_list(v, cidr)
            };
            check.map_err(|e| invalid(format!("annotation {key}"), e))?;
            exclusions.push((flag, v.replace(' ', "")));
        }
    }
    Ok(Pod {
        service,
        protocol,
        app_port,
        version,
        exclusions,
    })
}

/// Why an exclusion annotation's list is refused.
#[derive(Debug, thiserror::Error)]
enum ListError {
    #[error("{0:?} is not a port (1-65535)")]
    Port(String),
    #[error("{0:?} is not a CIDR (e.g. 10.0.0.0/8)")]
    Cidr(String),
    #[error("{0:?} has an empty item")]
    Empty(String),
}

fn port(p: &str) -> Result<u16, ListError> {
    match p.trim().parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ListError::Port(p.to_string())),
    }
}

fn cidr(c: &str) -> Result<(), ListError> {
    let bad = || ListError::Cidr(c.to_string());
    let (ip, len) = c.split_once('/').ok_or_else(bad)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len.parse::<u8>() {
        Ok(n) if n <= max => Ok(()),
        _ => Err(bad()),
    }
}

fn check_list(v: &str, each: impl Fn(&str) -> Result<(), ListError>) -> Result<(), ListError> {
    v.split(',').map(str::trim).try_for_each(|item| {
        if item.is_empty() {
            Err(ListError::Empty(v.to_string()))
        } else {
            each(item)
        }
    })
}

/// The first TCP port the first container declares: the app's.
fn first_container_port(spec: &Map<String, Value>) -> Option<u16> {
    let first = spec.get("containers")?.as_array()?.first()?;
    first
        .get("ports")?
        .as_array()?
        .iter()
        .filter(|p| p.get("protocol").and_then(Value::as_str).unwrap_or("TCP") == "TCP")
        .find_map(|p| u16::try_from(p.get("containerPort")?.as_u64()?).ok())
}

/// Removes what an earlier inject added, so that injecting again gives
/// the same result as injecting once.
fn strip(spec: &mut Map<String, Value>) {
    let ours = |v: &Value, names: &[&str]| {
        v.get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| names.contains(&n))
    };
    if let Some(Value::Array(inits)) = spec.get_mut("initContainers") {
        inits.retain(|c| !ours(c, &[INIT_NAME, SIDECAR_NAME]));
    }
    if let Some(Value::Array(volumes)) = spec.get_mut("volumes") {
        volumes.retain(|v| !ours(v, &[TOKEN_VOLUME]));
    }
}

/// Adds the init step and the sidecar to `t`; `workload` is the
/// enclosing resource's metadata (for its annotations).
pub fn inject(
    workload: Option<&Map<String, Value>>,
    t: Template<'_>,
    opts: &InjectOptions,
) -> Result<(), Refusal> {
    let pod = read(workload, &t)?;
    strip(t.spec);
    let inits = t
        .spec
        .entry("initContainers")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(inits) = inits else {
        return Err(Refusal::NoPodSpec("spec.initContainers"));
    };
    // First the rules, then the sidecar (it must be ready before any other
    // init container's traffic is redirected to it), then the pod's own.
    inits.insert(0, init_container(&pod, opts));
    inits.insert(1, sidecar_container(&pod, opts));
    let volumes = t
        .spec
        .entry("volumes")
        .or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(volumes) = volumes else {
        return Err(Refusal::NoPodSpec("spec.volumes"));
    };
    let secret = opts.token_secret.replace("{service}", pod.service.as_str());
    volumes.push(json!({"name": TOKEN_VOLUME, "secret": {"secretName": secret}}));
    Ok(())
}

fn init_container(pod: &Pod, opts: &InjectOptions) -> Value {
    let mut args = vec![
        "init".to_string(),
        format!("--proxy-uid={PROXY_ID}"),
        format!("--proxy-gid={PROXY_ID}"),
    ];
    args.extend(
        pod.exclusions
            .iter()
            .map(|(flag, v)| format!("--{flag}={v}")),
    );
    json!({
        "name": INIT_NAME,
        "image": opts.image,
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        // iptables needs root with these two capabilities, nothing more.
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"memory": "64Mi"},
        },
    })
}

fn sidecar_container(pod: &Pod, opts: &InjectOptions) -> Value {
    let mut env = vec![
        json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": "WEFT_SERVICE", "value": pod.service.as_str()}),
        json!({"name": "WEFT_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "WEFT_ADVERTISE", "value": format!("$(POD_IP):{INBOUND_PORT}")}),
        json!({"name": "WEFT_CONTROL_PLANE", "value": opts.control_plane}),
        // The kubelet probes the admin port from outside the pod.
        json!({"name": "WEFT_ADMIN", "value": format!("0.0.0.0:{ADMIN_PORT}")}),
    ];
    if let Some(p) = pod.protocol {
        env.push(json!({"name": "WEFT_PROTOCOL", "value": p.as_str()}));
    }
    if let Some(port) = pod.app_port {
        env.push(json!({"name": "WEFT_APP", "value": format!("127.0.0.1:{port}")}));
    }
    if let Some(v) = &pod.version {
        env.push(json!({"name": "WEFT_LABELS", "value": format!("version={v}")}));
    }
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": ADMIN_PORT},
            "periodSeconds": period,
            "failureThreshold": failures,
        })
    };
    json!({
        "name": SIDECAR_NAME,
        "image": opts.image,
        "imagePullPolicy": "IfNotPresent",
        // A native sidecar: started before the app containers, kept running
        // beside them, stopped after them (so a Job's pod completes).
        "restartPolicy": "Always",
        "args": ["--intercept", format!("--token-file={TOKEN_DIR}/token")],
        "env": env,
        "ports": [
            {"name": "weft-inbound", "containerPort": INBOUND_PORT},
            {"name": "weft-admin", "containerPort": ADMIN_PORT},
        ],
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}],
        "resources": {
            "requests": {"cpu": "50m", "memory": "32Mi"},
            "limits": {"memory": "128Mi"},
        },
        // The app containers start once this passes: certificate and config.
        "startupProbe": probe("/ready", 1, 120),
        "livenessProbe": probe("/live", 10, 3),
        "readinessProbe": probe("/ready", 5, 3),
        "securityContext": {
            "runAsUser": PROXY_ID,
            "runAsGroup": PROXY_ID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
    })
}
