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
