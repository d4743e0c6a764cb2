//! `weftctl explain --from SERVICE METHOD URL [-H name:value]...` (or
//! `--gateway NAME`, for a request arriving at a gateway): asks the
//! control plane which route, rule and backends the request would take,
//! and prints its answer. Nothing is matched here: the control plane runs
//! its stored routes through the sidecars' matcher.

use serde_json::{Map, Value, json};
use weft_proto::routing::{RouteKind, request_host};
use weft_proto::v1 as pb;

use super::output::{structured, table};
use super::{CliError, Format};
use crate::api::convert::rule_from_proto;
use crate::resource::{rule_to_value, value_to_yaml};

/// The request as the command line gives it.
#[derive(Debug, Clone)]
pub struct ExplainArgs<'a> {
    /// The caller; `None` with a gateway (the gateway is the caller).
    pub from: Option<&'a str>,
    /// The request arrives at this gateway.
    pub gateway: Option<&'a str>,
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [String],
    pub service: Option<&'a str>,
}

/// The `ExplainRequest` for the command line's request: the URL's host
/// names the destination unless `--service` does; a bare path needs
/// `--service`. At a gateway, the host is the one its routes match.
pub fn request(a: &ExplainArgs<'_>) -> Result<pb::ExplainRequest, CliError> {
    let bad = |why: String| CliError::Input(why);
    if let Some(gateway) = a.gateway {
        if a.service.is_some() {
            return Err(bad(
                "--service names a destination; at a gateway the routes choose it".into(),
            ));
        }
        let (host, path) = split_url(a.url)?;
        return Ok(pb::ExplainRequest {
            from: a.from.unwrap_or(gateway).to_string(),
            service: gateway.to_string(),
            method: a.method.to_string(),
            path,
            headers: headers(a.headers)?,
            host: host.map(|h| request_host(&h)).unwrap_or_default(),
            gateway: true,
        });
    }
    let Some(from) = a.from else {
        return Err(bad("name the caller with --from (or a --gateway)".into()));
    };
    let (host, path) = split_url(a.url)?;
    let service = match (a.service, host) {
        (Some(s), _) => s.to_string(),
        (None, Some(h)) => h,
        (None, None) => {
            return Err(bad(
                "name the destination: http://SERVICE/path, or --service".into(),
            ));
        }
    };
    Ok(pb::ExplainRequest {
        from: from.to_string(),
        service,
        method: a.method.to_string(),
        path,
        headers: headers(a.headers)?,
        host: String::new(),
        gateway: false,
    })
}

/// The URL's host (with its port, if any) and its path with the query;
/// a bare path has no host.
fn split_url(url: &str) -> Result<(Option<String>, String), CliError> {
    let bad = |why: String| CliError::Input(why);
    if url.starts_with('/') {
        return Ok((None, url.to_string()));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| bad(format!("{url}: not a URL ({e})")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(bad(format!(
            "{url}: expected http://HOST/path?query, or a path with --service"
        )));
    }
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.as_str().to_string());
    Ok((uri.host().map(str::to_string), path))
}

fn headers(hs: &[String]) -> Result<Vec<pb::Header>, CliError> {
    let bad = |why: String| CliError::Input(why);
    hs.iter()
        .map(|h| {
            let (name, value) = h
                .split_once(':')
                .ok_or_else(|| bad(format!("-H {h:?}: expected name:value")))?;
            Ok(pb::Header {
                name: name.trim().to_string(),
                value: value.trim().to_string(),
            })
        })
        .collect()
}

fn place(rule: u32, matched: Option<u32>) -> String {
    match matched {
        Some(m) => format!("rules[{rule}].matches[{m}]"),
        None => format!("rules[{rule}]"),
    }
}

/// The taken rule as its YAML value (the Gateway API's shape).
fn rule_value(t: &pb::TakenRule) -> Option<Value> {
    let kind = RouteKind::from_wire(t.kind).ok()?;
    let rule = rule_from_proto(t.rule.as_ref()?, kind).ok()?;
    Some(rule_to_value(kind, &rule))
}

fn share(weight: u32, total: u64) -> String {
    if total == 0 {
        return "-".into();
    }
    format!("{:.1}%", f64::from(weight) * 100.0 / total as f64)
}

/// The answer for people (a table and the rule's settings) or programs.
pub fn print(req: &pb::ExplainRequest, r: &pb::ExplainResponse, format: Format) -> String {
    if format != Format::Table {
        return structured(json_of(req, r), format);
    }
    let protocol = if r.grpc { "gRPC" } else { "HTTP" };
    let mut out = if req.gateway {
        let host = if req.host.is_empty() {
            "(no host)"
        } else {
            &req.host
        };
        format!(
            "{} {host}{} at gateway {} ({protocol})\n",
            req.method, req.path, r.service
        )
    } else {
        format!(
            "{} {} from {} to {} ({protocol})\n",
            req.method, req.path, req.from, r.service
        )
    };
    let parent = if req.gateway { "gateway " } else { "" };
    if r.routes.is_empty() {
        out.push_str(&format!("no routes attached to {parent}{}\n", r.service));
    } else {
        out.push_str(&format!("routes attached: {}\n", r.routes.join(", ")));
        out.push_str("\ncandidates, in precedence order:\n");
        let rows = r
            .candidates
            .iter()
            .map(|c| {
                vec![
                    format!("  {}", c.route),
                    place(c.rule, c.r#match),
                    if c.mismatch.is_empty() {
                        "matched".into()
                    } else {
                        format!("no: {}", c.mismatch)
                    },
                ]
            })
            .collect();
        out.push_str(&table(&["  ROUTE", "RULE", "RESULT"], rows));
    }
    out.push('\n');
    match &r.taken {
        Some(t) => out.push_str(&format!(
            "rule taken: {} {}\n",
            t.route,
            place(t.index, t.r#match)
        )),
        None if req.gateway => {
            out.push_str("no route matches: the gateway has nowhere to send it\n")
        }
        None => out.push_str("no route matches: the service's default (all endpoints)\n"),
    }
    out.push_str("backends:\n");
    let total: u64 = r.backends.iter().map(|b| u64::from(b.weight)).sum();
    let rows = r
        .backends
        .iter()
        .map(|b| {
            vec![
                format!("  {}", b.service),
                if b.subset.is_empty() {
                    "-".into()
                } else {
                    b.subset.clone()
                },
                b.weight.to_string(),
                share(b.weight, total),
                b.path.clone(),
                b.authorization.clone(),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "  BACKEND",
            "SUBSET",
            "WEIGHT",
            "SHARE",
            "PATH",
            "AUTHORIZATION",
        ],
        rows,
    ));
    if let Some(t) = &r.taken {
        let rule = rule_value(t).unwrap_or(Value::Null);
        for (key, what) in [
            ("filters", "filters"),
            ("timeouts", "timeouts"),
            ("retry", "retry"),
            ("fault", "fault"),
        ] {
            match rule.get(key) {
                Some(v) => {
                    out.push_str(&format!("{what}:\n"));
                    for line in value_to_yaml(v).lines() {
                        out.push_str(&format!("  {line}\n"));
                    }
                }
                None if key == "filters" => out.push_str("filters: none\n"),
                None => out.push_str(&format!("{what}: the service's\n")),
            }
        }
    }
    out
}

fn json_of(req: &pb::ExplainRequest, r: &pb::ExplainResponse) -> Value {
    let candidates: Vec<Value> = r
        .candidates
        .iter()
        .map(|c| {
            json!({
                "route": c.route,
                "rule": c.rule,
                "match": c.r#match,
                "matched": c.mismatch.is_empty(),
                "mismatch": (!c.mismatch.is_empty()).then_some(&c.mismatch),
            })
        })
        .collect();
    let backends: Vec<Value> = r
        .backends
        .iter()
        .map(|b| {
            json!({
                "service": b.service,
                "subset": (!b.subset.is_empty()).then_some(&b.subset),
                "weight": b.weight,
                "path": b.path,
                "allowed": b.allowed,
                "authorization": b.authorization,
            })
        })
        .collect();
    let taken = r.taken.as_ref().map(|t| {
        let mut m = Map::new();
        m.insert("route".into(), json!(t.route));
        m.insert("rule".into(), json!(t.index));
        m.insert("match".into(), json!(t.r#match));
        if let Some(v) = rule_value(t) {
            m.insert("spec".into(), v);
        }
        Value::Object(m)
    });
    json!({
        "from": req.from,
        "gateway": req.gateway.then_some(&r.service),
        "host": (!req.host.is_empty()).then_some(&req.host),
        "service": r.service,
        "method": req.method,
        "path": req.path,
        "grpc": r.grpc,
        "routes": r.routes,
        "candidates": candidates,
        "taken": taken,
        "backends": backends,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(url: &'a str, headers: &'a [String], service: Option<&'a str>) -> ExplainArgs<'a> {
        ExplainArgs {
            from: Some("orders"),
            gateway: None,
            method: "GET",
            url,
            headers,
            service,
        }
    }

    #[test]
    fn the_url_names_the_destination_unless_service_does() {
        let h = vec!["x-canary: 1".to_string()];
        let r = request(&args("http://users:8080/api/users/1?v=2", &h, None)).expect("valid");
        assert_eq!(
            (r.service.as_str(), r.path.as_str()),
            ("users", "/api/users/1?v=2")
        );
        assert_eq!(
            (r.headers[0].name.as_str(), r.headers[0].value.as_str()),
            ("x-canary", "1")
        );
        let r = request(&args("/x", &[], Some("users"))).expect("valid");
        assert_eq!((r.service.as_str(), r.path.as_str()), ("users", "/x"));
        let r = request(&args("http://localhost/x", &[], Some("users"))).expect("valid");
        assert_eq!(r.service, "users");
        assert!(request(&args("/x", &[], None)).is_err());
        assert!(request(&args("ftp://users/x", &[], None)).is_err());
        let bad = vec!["no-colon".to_string()];
        assert!(request(&args("http://users/", &bad, None)).is_err());
    }

    #[test]
    fn at_a_gateway_the_url_gives_the_host_and_the_gateway_is_the_caller() {
        let a = ExplainArgs {
            from: None,
            gateway: Some("gw"),
            method: "GET",
            url: "https://API.Example.com:8443/api/users?id=1",
            headers: &[],
            service: None,
        };
        let r = request(&a).expect("valid");
        assert_eq!(
            (
                r.from.as_str(),
                r.service.as_str(),
                r.host.as_str(),
                r.path.as_str()
            ),
            ("gw", "gw", "api.example.com", "/api/users?id=1")
        );
        assert!(r.gateway);
        assert!(
            request(&ExplainArgs {
                service: Some("users"),
                ..a.clone()
            })
            .is_err()
        );
        assert!(
            request(&ExplainArgs { gateway: None, ..a }).is_err(),
            "no caller"
        );
    }
}
