//! A `Gateway`'s `spec` as the Kubernetes Gateway API writes it:
//! `gatewayClassName` (only `weft`) and `listeners` with a name, a port, a
//! protocol (`HTTP` or `HTTPS`), an optional `hostname` and, for HTTPS,
//! `tls: {mode: Terminate}`. Certificates are the gateway process's files,
//! so `certificateRefs` is refused with a message that says so.

use serde::Deserialize;
use serde_json::Value;
use weft_proto::routing::HostMatch;

use super::{DocErrors, typed};
use crate::resource::gateway::{GATEWAY_CLASS, GatewayError, GatewayPart};
use crate::resource::{GatewaySpec, Listener, ListenerProtocol, Name};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawGatewaySpec {
    gateway_class_name: Option<String>,
    #[serde(default)]
    listeners: Vec<RawListener>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawListener {
    name: String,
    /// Any integer, so that 0 or 70000 get our message, not serde's.
    port: i64,
    protocol: String,
    hostname: Option<String>,
    tls: Option<RawTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTls {
    mode: Option<String>,
    /// Refused: named only to say why.
    certificate_refs: Option<Value>,
}

/// The spec of `Gateway/name`, or `None` with every problem pushed to `errs`.
pub(super) fn parse(name: Name, spec: Value, errs: &mut DocErrors<'_>) -> Option<GatewaySpec> {
    let raw: RawGatewaySpec = match typed(spec, "spec") {
        Ok(r) => r,
        Err((path, reason)) => {
            errs.push(path, reason);
            return None;
        }
    };
    let before = errs.count();
    if let Some(c) = &raw.gateway_class_name
        && c != GATEWAY_CLASS
    {
        errs.push("spec.gatewayClassName", GatewayError::Class(c.clone()));
    }
    let listeners: Vec<Listener> = raw
        .listeners
        .into_iter()
        .enumerate()
        .filter_map(|(i, l)| listener(&format!("spec.listeners[{i}]"), l, errs))
        .collect();
    if errs.count() != before {
        return None;
    }
    GatewaySpec::new(name, raw.gateway_class_name.is_some(), listeners)
        .map_err(|es| {
            for (part, e) in es {
                let at = match part {
                    GatewayPart::Listeners => "spec.listeners".to_string(),
                    GatewayPart::ListenerName(i) => format!("spec.listeners[{i}].name"),
                    GatewayPart::Listener(i) => format!("spec.listeners[{i}]"),
                };
                errs.push(at, e);
            }
        })
        .ok()
}

fn listener(at: &str, l: RawListener, errs: &mut DocErrors<'_>) -> Option<Listener> {
    let before = errs.count();
    let name = Name::parse(&l.name)
        .map_err(|e| errs.push(format!("{at}.name"), e))
        .ok();
    let port = Listener::port(l.port)
        .map_err(|e| errs.push(format!("{at}.port"), e))
        .ok();
    let protocol = ListenerProtocol::parse(&l.protocol)
        .map_err(|e| errs.push(format!("{at}.protocol"), e))
        .ok();
    let hostname = l.hostname.as_deref().and_then(|h| {
        HostMatch::parse(h)
            .map_err(|e| errs.push(format!("{at}.hostname"), e))
            .ok()
    });
    if let Some(tls) = &l.tls {
        if protocol == Some(ListenerProtocol::Http) {
            errs.push(format!("{at}.tls"), GatewayError::TlsOnHttp);
        }
        if let Some(m) = tls.mode.as_deref()
            && m != "Terminate"
        {
            errs.push(format!("{at}.tls.mode"), GatewayError::TlsMode(m.into()));
        }
        if tls.certificate_refs.is_some() {
            errs.push(
                format!("{at}.tls.certificateRefs"),
                GatewayError::CertificateRefs,
            );
        }
    }
    if errs.count() != before {
        return None;
    }
    Some(Listener {
        name: name?,
        port: port?,
        protocol: protocol?,
        hostname,
        tls_terminate: l.tls.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use crate::resource::{Resource, parse_documents, to_yaml_documents};

    const GOOD: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gateway}
spec:
  gatewayClassName: weft
  listeners:
    - {name: http, port: 8080, protocol: HTTP}
    - name: https
      port: 8443
      protocol: HTTPS
      hostname: "*.Example.com"
      tls: {mode: Terminate}
    - {name: api, port: 8443, protocol: HTTPS, hostname: api.example.com}
"#;

    fn errors(spec: &str) -> Vec<String> {
        let text = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: gw}}\nspec:\n{spec}"
        );
        parse_documents(&text)
            .expect_err("must be rejected")
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn a_gateway_parses_and_round_trips() {
        let rs = parse_documents(GOOD).expect("valid");
        let Resource::Gateway(g) = &rs[0] else {
            panic!("a gateway")
        };
        assert_eq!(g.name.as_str(), "gateway");
        assert!(g.class_named);
        let l = &g.listeners()[1];
        assert_eq!(
            (l.port.get(), l.protocol.as_str(), l.host_text()),
            (8443, "HTTPS", "*.example.com".to_string())
        );
        assert!(l.tls_terminate && !g.listeners()[2].tls_terminate);
        let text = to_yaml_documents(&rs);
        assert!(text.contains("gatewayClassName: \"weft\""), "{text}");
        assert_eq!(parse_documents(&text).expect("reparse"), rs, "{text}");
        // weft.dev/v1 too, and the class may be left out.
        let plain = "apiVersion: weft.dev/v1\nkind: Gateway\nmetadata: {name: gw}\nspec:\n  listeners: [{name: http, port: 80, protocol: HTTP}]\n";
        let rs = parse_documents(plain).expect("valid");
        assert_eq!(
            parse_documents(&to_yaml_documents(&rs)).expect("reparse"),
            rs
        );
    }

    #[test]
    fn every_refusal_names_its_field() {
        let e = errors(
            "  gatewayClassName: istio\n  listeners:\n    - {name: a, port: 0, protocol: TCP}\n    - {name: B, port: 80, protocol: HTTP, hostname: \"*\", tls: {mode: Passthrough}}\n    - name: c\n      port: 443\n      protocol: HTTPS\n      tls: {certificateRefs: [{name: cert}]}\n",
        );
        assert_eq!(
            e,
            [
                "document 1 (Gateway/gw): spec.gatewayClassName: \"istio\": the only gateway class is \"weft\" (or leave it out)",
                "document 1 (Gateway/gw): spec.listeners[0].port: a port between 1 and 65535",
                "document 1 (Gateway/gw): spec.listeners[0].protocol: \"TCP\" is not a listener protocol: HTTP or HTTPS",
                "document 1 (Gateway/gw): spec.listeners[1].name: \"B\" is not a valid name: use lowercase letters, digits, '-' and '.', starting and ending with a letter or digit (e.g. user-service)",
                "document 1 (Gateway/gw): spec.listeners[1].hostname: \"*\" is not a host name (letters, digits, '-' and '.', optionally starting with '*.')",
                "document 1 (Gateway/gw): spec.listeners[1].tls: TLS is for HTTPS listeners; an HTTP listener takes none",
                "document 1 (Gateway/gw): spec.listeners[1].tls.mode: \"Passthrough\": the only TLS mode is Terminate",
                "document 1 (Gateway/gw): spec.listeners[2].tls.certificateRefs: certificates are files given to the gateway process, not Secrets: leave certificateRefs out",
            ]
        );
        let e = errors(
            "  listeners:\n    - {name: a, port: 80, protocol: HTTP}\n    - {name: a, port: 81, protocol: HTTP}\n    - {name: b, port: 80, protocol: HTTP}\n",
        );
        assert_eq!(
            e,
            [
                "document 1 (Gateway/gw): spec.listeners[1].name: listener a is named twice",
                "document 1 (Gateway/gw): spec.listeners[2]: listeners[0] already serves port 80 for any host",
            ]
        );
        assert_eq!(
            errors("  listeners: []\n"),
            ["document 1 (Gateway/gw): spec.listeners: a gateway needs at least one listener"]
        );
        let e =
            errors("  listeners:\n    - {name: a, port: 80, protocol: HTTP, allowedRoutes: {}}\n");
        assert!(
            e[0].contains("spec.listeners[0]") && e[0].contains("unknown field `allowedRoutes`"),
            "{e:?}"
        );
        let e = errors("  addresses: []\n  listeners: [{name: a, port: 80, protocol: HTTP}]\n");
        assert!(
            e[0].contains("spec.addresses: unknown field `addresses`"),
            "{e:?}"
        );
        let version = "apiVersion: v1\nkind: Gateway\nmetadata: {name: gw}\n";
        let e: Vec<String> = parse_documents(version)
            .expect_err("bad version")
            .0
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(e[0].contains("apiVersion: unsupported \"v1\", expected gateway.networking.k8s.io/v1 or weft.dev/v1"), "{e:?}");
    }
}
