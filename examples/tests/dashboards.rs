//! The monitoring files shipped with the example mesh agree with what they
//! monitor:
//!
//! - `examples/grafana-dashboard.json` queries only metrics (and labels)
//!   that `docs/metrics.md` documents, and
//! - `examples/prometheus.yml` scrapes exactly the admin ports the quick
//!   start (`examples/src/bin/quickstart.rs`) gives the control plane and
//!   each sidecar by default, under the right job and `service` label.
//!
//! The doc's tables, the dashboard, the scrape config and the quick start's
//! source are all read at test time, so the test fails when any of them
//! drifts from the others.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

fn repo_file(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("examples/ has a parent")
        .to_path_buf();
    let file = root.join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
}

// ---------------------------------------------------------------------------
// docs/metrics.md

#[derive(Debug, Clone)]
struct Documented {
    kind: String,
    labels: BTreeSet<String>,
}

/// Every row of docs/metrics.md's tables: name → type and label names.
fn documented_metrics(doc: &str) -> BTreeMap<String, Documented> {
    let mut metrics = BTreeMap::new();
    for line in doc.lines() {
        let line = line.trim();
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 3 {
            continue;
        }
        // Header and separator rows have no backticked name.
        let Some(name) = cells[0].strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
            continue;
        };
        metrics.insert(
            name.to_string(),
            Documented {
                kind: cells[1].to_string(),
                labels: backticked(cells[2]).map(str::to_string).collect(),
            },
        );
    }
    metrics
}

fn backticked(s: &str) -> impl Iterator<Item = &str> {
    s.split('`').skip(1).step_by(2)
}

#[test]
fn the_doc_tables_parse() {
    let metrics = documented_metrics(&repo_file("docs/metrics.md"));
    let requests = metrics
        .get("weft_requests_total")
        .expect("docs/metrics.md lists weft_requests_total");
    assert_eq!(requests.kind, "counter");
    assert!(requests.labels.contains("direction") && requests.labels.contains("service"));
    assert_eq!(
        metrics
            .get("weft_request_duration_seconds")
            .map(|m| m.kind.as_str()),
        Some("histogram")
    );
    assert!(
        metrics.contains_key("weft_control_plane_sidecars_connected"),
        "the control plane's table is read too"
    );
}

// ---------------------------------------------------------------------------
// PromQL, just enough of it

/// `expr` with the contents of its string literals removed (`"a,b"` → `""`),
/// so that label values are never taken for names.
fn without_strings(expr: &str) -> String {
    let mut out = String::with_capacity(expr.len());
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    out.push(c);
                }
            }
            None => {
                if c == '"' || c == '\'' || c == '`' {
                    quote = Some(c);
                }
                out.push(c);
            }
        }
    }
    out
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The metric names in `expr`: every token starting `weft_` (taken up to the
/// end of the name, digits and colons included, so that nothing is cut
/// short), with its byte range.
fn metric_tokens(expr: &str) -> Vec<(&str, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(off) = expr[i..].find("weft_") {
        let start = i + off;
        let boundary = expr[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !is_name_char(c));
        let len = expr[start..]
            .find(|c: char| !is_name_char(c))
            .unwrap_or(expr.len() - start);
        if boundary {
            out.push((&expr[start..start + len], start + len));
        }
        i = start + len;
    }
    out
}

/// A referenced name resolved against the doc: the documented metric, and
/// whether it was a histogram's `_bucket` series.
fn resolve<'a>(
    token: &str,
    metrics: &'a BTreeMap<String, Documented>,
) -> Option<(&'a str, &'a Documented, bool)> {
    if let Some((name, m)) = metrics.get_key_value(token) {
        return Some((name, m, false));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = token.strip_suffix(suffix)
            && let Some((name, m)) = metrics.get_key_value(base)
            && m.kind == "histogram"
        {
            return Some((name, m, suffix == "_bucket"));
        }
    }
    None
}

/// The identifiers in a comma-separated list, `s` starting just after `(`
/// or `{`; for a selector, the label name before each matcher.
fn names_in_list(s: &str, close: char) -> Vec<String> {
    let inner = &s[..s.find(close).unwrap_or(s.len())];
    inner
        .split(',')
        .map(|item| {
            item.trim()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .filter(|n| !n.is_empty())
        .collect()
}

/// The problems in one query: unknown metrics, labels no metric in it has,
/// unbalanced brackets.
fn check_expr(
    expr: &str,
    metrics: &BTreeMap<String, Documented>,
    target_labels: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if expr.trim().is_empty() {
        return vec!["an empty expr".to_string()];
    }
    // Names inside string literals are label values, not metrics.
    let bare = without_strings(expr);
    for (token, _) in metric_tokens(&bare) {
        if resolve(token, metrics).is_none() {
            problems.push(format!(
                "unknown metric `{token}` (not in docs/metrics.md's tables)"
            ));
        }
    }

    let mut stack = Vec::new();
    for c in bare.chars() {
        match c {
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    problems.push(format!("unbalanced `{c}`"));
                    break;
                }
            }
            _ => {}
        }
    }
    if !stack.is_empty() {
        problems.push("unclosed bracket".to_string());
    }

    // Labels: a selector's belong to its metric; a grouping clause's to
    // some metric of the query. Target labels (job, instance and those the
    // scrape config adds) are on every series.
    let mut any_labels: BTreeSet<String> = target_labels.clone();
    for (token, end) in metric_tokens(&bare) {
        let Some((name, m, bucket)) = resolve(token, metrics) else {
            continue;
        };
        let mut allowed: BTreeSet<String> = m.labels.union(target_labels).cloned().collect();
        if bucket {
            allowed.insert("le".to_string());
        }
        any_labels.extend(allowed.iter().cloned());
        let rest = bare[end..].trim_start();
        if let Some(sel) = rest.strip_prefix('{') {
            for label in names_in_list(sel, '}') {
                if !allowed.contains(&label) {
                    problems.push(format!("label `{label}` is not documented for {name}"));
                }
            }
        }
    }
    let words = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let mut i = 0;
    while i < bare.len() {
        let start = i;
        let len = bare[start..]
            .find(|c: char| !is_name_char(c))
            .unwrap_or(bare.len() - start);
        if len == 0 {
            i += bare[i..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        i = start + len;
        let word = &bare[start..start + len];
        if !words.contains(&word) {
            continue;
        }
        let Some(list) = bare[i..].trim_start().strip_prefix('(') else {
            continue;
        };
        for label in names_in_list(list, ')') {
            if !any_labels.contains(&label) {
                problems.push(format!(
                    "`{word} ({label})`: no metric in the query has a `{label}` label"
                ));
            }
        }
    }
    // label_values(metric, label)
    if let Some(args) = bare.split("label_values(").nth(1) {
        let args = &args[..args.find(')').unwrap_or(args.len())];
        if let Some((_, label)) = args.rsplit_once(',') {
            let label = label.trim();
            if !any_labels.contains(label) {
                problems.push(format!("label_values: no metric has a `{label}` label"));
            }
        }
    }
    problems
}

#[test]
fn the_expression_checks_catch_what_they_should() {
    let metrics = documented_metrics(
        "| name | type | labels | meaning |\n|---|---|---|---|\n\
         | `weft_a_total` | counter | `service` | a |\n\
         | `weft_b_seconds` | histogram | `direction` | b |\n",
    );
    let targets: BTreeSet<String> = ["job", "instance"].map(String::from).into();
    let ok = |e: &str| check_expr(e, &metrics, &targets);
    assert_eq!(
        ok(r#"sum by (service) (rate(weft_a_total{service=~"$service"}[1m]))"#),
        Vec::<String>::new()
    );
    assert_eq!(
        ok(
            "histogram_quantile(0.99, sum by (le, direction, instance) (rate(weft_b_seconds_bucket[1m])))"
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        ok("weft_b_seconds_sum / weft_b_seconds_count"),
        Vec::<String>::new()
    );
    assert_eq!(
        ok(r#"weft_a_total{service="weft_zzz"}"#),
        Vec::<String>::new()
    );
    assert_eq!(ok("rate(weft_c_total[1m])").len(), 1);
    assert_eq!(
        ok("weft_a_total_bucket").len(),
        1,
        "a counter has no buckets"
    );
    assert_eq!(ok("weft_a_total2").len(), 1, "names are not cut short");
    assert_eq!(ok("sum by (route) (weft_a_total)").len(), 1);
    assert_eq!(ok(r#"weft_a_total{direction="in"}"#).len(), 1);
    assert_eq!(ok("sum(rate(weft_a_total[1m])").len(), 1);
}

// ---------------------------------------------------------------------------
// examples/prometheus.yml

#[derive(Debug)]
struct ScrapeTarget {
    job: String,
    host: String,
    port: u16,
    labels: BTreeMap<String, String>,
    line: usize,
}

#[derive(Debug, Default)]
struct ScrapeConfig {
    targets: Vec<ScrapeTarget>,
    /// `honor_labels` per job.
    honor_labels: BTreeMap<String, bool>,
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .unwrap_or(s)
}

/// The static targets of prometheus.yml, read line by line: `job_name:`,
/// `honor_labels:`, `- targets: [...]` in flow style, and `labels:` for the
/// targets just before it, as a flow map or a block map. Anything the
/// reader does not understand about targets is an error, not a skip.
fn scrape_config(yaml: &str) -> Result<ScrapeConfig, String> {
    let mut config = ScrapeConfig::default();
    let mut job: Option<String> = None;
    // The targets of the current static_configs entry, and the indentation
    // of a block-style `labels:` being read.
    let mut group = 0..0;
    let mut labels_indent: Option<usize> = None;
    for (n, raw) in yaml.lines().enumerate() {
        let line_no = n + 1;
        let code = raw.split(" #").next().unwrap_or("");
        if code.trim_start().starts_with('#') || code.trim().is_empty() {
            continue;
        }
        let indent = code.len() - code.trim_start().len();
        let line = code.trim().trim_start_matches("- ").trim();
        if let Some(li) = labels_indent {
            if indent > li {
                let (k, v) = line
                    .split_once(':')
                    .ok_or(format!("line {line_no}: expected `label: value`"))?;
                for t in &mut config.targets[group.clone()] {
                    t.labels
                        .insert(k.trim().to_string(), unquote(v).to_string());
                }
                continue;
            }
            labels_indent = None;
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "job_name" => job = Some(unquote(value).to_string()),
            "honor_labels" => {
                let job = job
                    .clone()
                    .ok_or(format!("line {line_no}: honor_labels outside a job"))?;
                config.honor_labels.insert(job, value == "true");
            }
            "targets" => {
                let job = job
                    .clone()
                    .ok_or(format!("line {line_no}: targets outside a job"))?;
                let list = value
                    .strip_prefix('[')
                    .and_then(|v| v.strip_suffix(']'))
                    .ok_or(format!(
                        "line {line_no}: write targets as a flow list: [\"host:port\", ...]"
                    ))?;
                let first = config.targets.len();
                for t in list.split(',').map(unquote).filter(|t| !t.is_empty()) {
                    let (host, port) = t
                        .rsplit_once(':')
                        .ok_or(format!("line {line_no}: target `{t}` has no port"))?;
                    let port = port
                        .parse()
                        .map_err(|e| format!("line {line_no}: target `{t}`: {e}"))?;
                    config.targets.push(ScrapeTarget {
                        job: job.clone(),
                        host: host.to_string(),
                        port,
                        labels: BTreeMap::new(),
                        line: line_no,
                    });
                }
                group = first..config.targets.len();
            }
            "labels" if value.is_empty() => labels_indent = Some(indent),
            "labels" => {
                let map = value
                    .strip_prefix('{')
                    .and_then(|v| v.strip_suffix('}'))
                    .ok_or(format!("line {line_no}: labels: expected {{k: v, ...}}"))?;
                for pair in map.split(',').filter(|p| !p.trim().is_empty()) {
                    let (k, v) = pair
                        .split_once(':')
                        .ok_or(format!("line {line_no}: expected `label: value`"))?;
                    for t in &mut config.targets[group.clone()] {
                        t.labels
                            .insert(k.trim().to_string(), unquote(v).to_string());
                    }
                }
            }
            "file_sd_configs" | "dns_sd_configs" | "http_sd_configs" | "kubernetes_sd_configs" => {
                return Err(format!(
                    "line {line_no}: {key} is not checked by this test; list static targets"
                ));
            }
            _ => {}
        }
    }
    Ok(config)
}

// ---------------------------------------------------------------------------
// examples/src/bin/quickstart.rs

#[derive(Debug)]
struct QuickstartSidecar {
    /// The quick start's name for it (`user-1`, `order-service`, `client`).
    name: String,
    /// Its `--service`.
    service: String,
    /// Its `--admin` port.
    admin: u16,
}

#[derive(Debug)]
struct QuickstartPorts {
    control_plane_admin: u16,
    sidecars: Vec<QuickstartSidecar>,
}

/// The index just after the bracket closing the one `s` starts after:
/// `s` begins inside the brackets.
fn close_of(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut prev = ' ';
    for (i, c) in s.char_indices() {
        if in_str {
            if c == '"' && prev != '\\' {
                in_str = false;
            }
        } else {
            match c {
                '"' => in_str = true,
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => return Some(i),
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            }
        }
        prev = c;
    }
    None
}

/// Splits at the commas outside brackets and strings.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut in_str, mut prev, mut from) = (0usize, false, ' ', 0);
    for (i, c) in s.char_indices() {
        if in_str {
            if c == '"' && prev != '\\' {
                in_str = false;
            }
        } else {
            match c {
                '"' => in_str = true,
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    out.push(&s[from..i]);
                    from = i + 1;
                }
                _ => {}
            }
        }
        prev = c;
    }
    if from < s.len() {
        out.push(&s[from..]);
    }
    out
}

fn string_literal(s: &str) -> Option<&str> {
    s.strip_prefix('"')?.strip_suffix('"')
}

/// The admin ports the quick start uses by default, read from its source
/// with whitespace removed (so formatting does not matter). The reader
/// knows the source's current shape; when that changes it fails, saying
/// what it could not find, instead of guessing.
fn quickstart_ports(source: &str) -> Result<QuickstartPorts, String> {
    let src: String = source.chars().filter(|c| !c.is_whitespace()).collect();
    let find = |what: &str, from: usize| -> Result<usize, String> {
        src[from..]
            .find(what)
            .map(|i| from + i)
            .ok_or(format!("quickstart.rs no longer contains `{what}`"))
    };
    let port = |expr: &str| -> Result<u16, String> {
        expr.parse()
            .map_err(|_| format!("quickstart.rs: `{expr}` is not a port number"))
    };

    // Ports::get hands out the well-known port unless --free-ports.
    find("if!self.free{returnOk(well_known);}", 0)?;

    // The control plane: `let cp_admin = p.get(N)?;` passed as --admin.
    let at = find("letcp_admin=p.get(", 0)? + "letcp_admin=p.get(".len();
    let control_plane_admin = port(&src[at..at + close_of(&src[at..]).ok_or("unclosed p.get(")?])?;
    find(r#""--admin",&format!("127.0.0.1:{cp_admin}")"#, 0)?;

    // The sidecar closure: `let (inbound, outbound, admin) = (p.get(base + 6)?, …)`
    // and `--admin 127.0.0.1:{admin}`: admin = base + offset.
    let closure = find("letsidecar=|", 0)?;
    let names_at = find("let(", closure)? + "let(".len();
    let names_end = find(")=(", names_at)?;
    let names: Vec<&str> = src[names_at..names_end].split(',').collect();
    let values_at = names_end + ")=(".len();
    let values = split_top(
        &src[values_at..values_at + close_of(&src[values_at..]).ok_or("unclosed tuple")?],
    );
    let admin_expr = names
        .iter()
        .position(|n| *n == "admin")
        .and_then(|i| values.get(i))
        .ok_or("quickstart.rs: the sidecar closure no longer binds `admin`")?;
    let inner = admin_expr
        .strip_prefix("p.get(")
        .and_then(|e| e.strip_suffix(")?"))
        .ok_or(format!(
            "quickstart.rs: sidecar admin is `{admin_expr}`, not p.get(base…)?"
        ))?;
    let admin_offset: u16 = match inner.strip_prefix("base") {
        Some("") => 0,
        Some(off) => port(off.strip_prefix('+').unwrap_or("?"))?,
        None => return Err(format!("quickstart.rs: sidecar admin is p.get({inner})")),
    };
    find(r#""--admin",&format!("127.0.0.1:{admin}")"#, closure)?;

    // The calls: sidecar(&mut procs, NAME, "SERVICE", BASE, …), BASE either a
    // number or `A + B * i as u16` inside `for (i, (NAME, …)) in [(…), …]`.
    let mut sidecars = Vec::new();
    let call = "sidecar(&mutprocs,";
    let mut from = closure;
    while let Some(i) = src[from..].find(call) {
        let at = from + i + call.len();
        from = at;
        let end = at + close_of(&src[at..]).ok_or("unclosed sidecar(")?;
        let args = split_top(&src[at..end]);
        let [name, service, base, ..] = args[..] else {
            return Err(format!(
                "quickstart.rs: sidecar call with {} arguments",
                args.len()
            ));
        };
        let service = string_literal(service)
            .ok_or(format!(
                "quickstart.rs: sidecar service `{service}` is not a literal"
            ))?
            .to_string();
        if let Ok(base) = base.parse::<u16>() {
            let name = string_literal(name).ok_or(format!(
                "quickstart.rs: sidecar name `{name}` is not a literal"
            ))?;
            sidecars.push(QuickstartSidecar {
                name: name.to_string(),
                service,
                admin: base + admin_offset,
            });
            continue;
        }
        // In a loop over (name, …) tuples.
        let (a, rest) = base.split_once('+').ok_or(format!(
            "quickstart.rs: sidecar base `{base}` not understood"
        ))?;
        let (b, index) = rest.split_once('*').ok_or(format!(
            "quickstart.rs: sidecar base `{base}` not understood"
        ))?;
        let (index, _) = index.split_once("as").unwrap_or((index, ""));
        let pattern = format!("for({index},({name},");
        let for_at = src[..at].rfind(&pattern).ok_or(format!(
            "quickstart.rs: no `{pattern}` loop around the sidecar call"
        ))?;
        let list_at = find("in[", for_at)? + "in[".len();
        let list =
            &src[list_at..list_at + close_of(&src[list_at..]).ok_or("unclosed loop list")?];
        for (i, tuple) in split_top(list).into_iter().enumerate() {
            let first = tuple
                .strip_prefix('(')
                .and_then(|t| split_top(t).into_iter().next())
                .and_then(string_literal)
                .ok_or(format!("quickstart.rs: loop item `{tuple}` not understood"))?;
            let i = u16::try_from(i).map_err(|e| e.to_string())?;
            sidecars.push(QuickstartSidecar {
                name: first.to_string(),
                service: service.clone(),
                admin: port(a)? + port(b)? * i + admin_offset,
            });
        }
    }
    if sidecars.is_empty() {
        return Err("quickstart.rs: no sidecar(&mut procs, …) calls found".to_string());
    }
    Ok(QuickstartPorts {
        control_plane_admin,
        sidecars,
    })
}

#[test]
fn the_quickstart_reader_follows_the_source() {
    let ports = quickstart_ports(&repo_file("examples/src/bin/quickstart.rs"))
        .unwrap_or_else(|e| panic!("{e}"));
    // 2 × user-service, order-service and the gateway; with RabbitMQ, the
    // broker's sidecar and email-service's.
    assert_eq!(ports.sidecars.len(), 6, "{ports:#?}");
    assert_eq!(
        ports
            .sidecars
            .iter()
            .filter(|s| s.service == "user-service")
            .count(),
        2,
        "{ports:#?}"
    );
    let all: BTreeSet<u16> = ports
        .sidecars
        .iter()
        .map(|s| s.admin)
        .chain([ports.control_plane_admin])
        .collect();
    assert_eq!(all.len(), 7, "every admin port is different: {ports:#?}");
}

// ---------------------------------------------------------------------------
// The checks

fn panel_title(panel: &serde_json::Value) -> String {
    let title = panel["title"].as_str().unwrap_or("(untitled)");
    match panel["id"].as_u64() {
        Some(id) => format!("panel {id} \"{title}\""),
        None => format!("panel \"{title}\""),
    }
}

/// Every panel, the ones inside (collapsed) rows included.
fn all_panels(panels: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    let mut out = Vec::new();
    for p in panels {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(all_panels(inner));
        }
    }
    out
}

/// The labels every scraped series has: Prometheus's own (`job`,
/// `instance`) and the scrape config's target labels.
fn target_labels(scrape: &ScrapeConfig) -> BTreeSet<String> {
    let mut labels: BTreeSet<String> = ["job", "instance"].map(String::from).into();
    for t in &scrape.targets {
        labels.extend(t.labels.keys().cloned());
    }
    labels
}

fn query_of(variable: &serde_json::Value) -> &str {
    variable["query"]["query"]
        .as_str()
        .or_else(|| variable["query"].as_str())
        .unwrap_or_default()
}

/// Everything wrong with the dashboard, each naming the panel (or
/// variable) and what is wrong.
fn dashboard_problems(
    dashboard: &serde_json::Value,
    metrics: &BTreeMap<String, Documented>,
    target_labels: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    if dashboard["schemaVersion"] != 39 {
        problems.push(format!(
            "schemaVersion is {}, not 39",
            dashboard["schemaVersion"]
        ));
    }
    let no_variables = Vec::new();
    let templating = dashboard["templating"]["list"]
        .as_array()
        .unwrap_or(&no_variables);
    if !templating.iter().any(|v| {
        v["type"] == "datasource" && v["query"] == "prometheus" && v["name"] == "DS_PROMETHEUS"
    }) {
        problems.push("no DS_PROMETHEUS data source variable".to_string());
    }
    if !templating.iter().any(|v| {
        v["name"] == "service" && query_of(v).contains("label_values(weft_requests_total, service)")
    }) {
        problems.push(
            "no `service` variable from label_values(weft_requests_total, service)".to_string(),
        );
    }
    for v in templating.iter().filter(|v| v["type"] == "query") {
        for p in check_expr(query_of(v), metrics, target_labels) {
            problems.push(format!("template variable {}: {p}", v["name"]));
        }
    }

    let Some(top) = dashboard["panels"].as_array() else {
        problems.push("no panels".to_string());
        return problems;
    };
    let panels = all_panels(top);
    let mut ids = BTreeSet::new();
    let mut queries = 0;
    for panel in &panels {
        if let Some(id) = panel["id"].as_u64()
            && !ids.insert(id)
        {
            problems.push(format!("{}: id {id} is used twice", panel_title(panel)));
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("{}: no targets", panel_title(panel)));
        }
        for target in targets {
            let Some(expr) = target["expr"].as_str() else {
                problems.push(format!("{}: a target without expr", panel_title(panel)));
                continue;
            };
            queries += 1;
            for p in check_expr(expr, metrics, target_labels) {
                problems.push(format!(
                    "{} target {}: {p}\n    in: {expr}",
                    panel_title(panel),
                    target["refId"]
                ));
            }
        }
    }
    if queries == 0 {
        problems.push("no panel has a query".to_string());
    }
    problems
}

#[test]
fn the_dashboard_queries_only_documented_metrics() {
    let metrics = documented_metrics(&repo_file("docs/metrics.md"));
    let scrape = scrape_config(&repo_file("examples/prometheus.yml"))
        .unwrap_or_else(|e| panic!("examples/prometheus.yml: {e}"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo_file("examples/grafana-dashboard.json"))
            .expect("examples/grafana-dashboard.json is JSON");
    let problems = dashboard_problems(&dashboard, &metrics, &target_labels(&scrape));
    assert!(
        problems.is_empty(),
        "examples/grafana-dashboard.json does not match docs/metrics.md:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_dashboard_check_fails_on_drift() {
    let metrics = documented_metrics(&repo_file("docs/metrics.md"));
    let scrape = scrape_config(&repo_file("examples/prometheus.yml"))
        .unwrap_or_else(|e| panic!("examples/prometheus.yml: {e}"));
    let text = repo_file("examples/grafana-dashboard.json");
    assert!(text.contains("weft_hedges_total"));
    // A renamed metric, in a panel's query.
    let drifted: serde_json::Value =
        serde_json::from_str(&text.replace("weft_hedges_total", "weft_hedged_total"))
            .expect("still JSON");
    let problems = dashboard_problems(&drifted, &metrics, &target_labels(&scrape));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("\"Hedges\"") && p.contains("`weft_hedged_total`")),
        "{problems:#?}"
    );
    // A metric the doc drops.
    let mut fewer = metrics.clone();
    fewer.remove("weft_overloaded_total");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let problems = dashboard_problems(&dashboard, &fewer, &target_labels(&scrape));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("\"Overloaded\"") && p.contains("`weft_overloaded_total`")),
        "{problems:#?}"
    );
}

/// Everything on which prometheus.yml and the quick start disagree.
fn scrape_problems(quickstart: &QuickstartPorts, scrape: &ScrapeConfig) -> Vec<String> {
    // port → (job, the sidecar's service, what it is)
    let mut expected: BTreeMap<u16, (&str, Option<&str>, String)> = BTreeMap::new();
    let mut problems = Vec::new();
    let processes = std::iter::once((
        quickstart.control_plane_admin,
        "weft-control-plane",
        None,
        "the control plane's --admin".to_string(),
    ))
    .chain(quickstart.sidecars.iter().map(|s| {
        (
            s.admin,
            "weft-sidecar",
            Some(s.service.as_str()),
            format!("the {} sidecar's --admin ({})", s.name, s.service),
        )
    }));
    for (port, job, service, what) in processes {
        if let Some((_, _, other)) = expected.get(&port) {
            problems.push(format!(
                "quickstart.rs gives port {port} to both {other} and {what}"
            ));
            continue;
        }
        expected.insert(port, (job, service, what));
    }
    let known = expected
        .iter()
        .map(|(p, (_, _, what))| format!("{p} ({what})"))
        .collect::<Vec<_>>()
        .join(", ");

    let mut scraped = BTreeSet::new();
    for t in &scrape.targets {
        let at = format!("prometheus.yml line {}: {}:{}", t.line, t.host, t.port);
        if t.host != "127.0.0.1" && t.host != "localhost" {
            problems.push(format!("{at}: the quick start listens on 127.0.0.1 only"));
        }
        if !scraped.insert(t.port) {
            problems.push(format!("{at}: scraped twice"));
        }
        let Some((job, service, what)) = expected.get(&t.port) else {
            problems.push(format!(
                "{at}: not a port the quick start uses; it uses {known}"
            ));
            continue;
        };
        if t.job != *job {
            problems.push(format!("{at}: is {what}, so job {job}, not {}", t.job));
        }
        let label = t.labels.get("service").map(String::as_str);
        if let Some(service) = service
            && label != Some(service)
        {
            problems.push(format!(
                "{at}: is {what}, so service=\"{service}\", not {label:?}"
            ));
        }
    }
    for (port, (_, _, what)) in &expected {
        if !scraped.contains(port) {
            problems.push(format!("{what}, port {port}, is not scraped"));
        }
    }
    // The dashboard groups by the metrics' own `service` (the service
    // called, for outbound); without honor_labels the target's `service`
    // would replace it.
    if scrape.honor_labels.get("weft-sidecar") != Some(&true) {
        problems.push(
            "job weft-sidecar needs honor_labels: true, or its `service` target label \
             overwrites the metrics' own `service`"
                .to_string(),
        );
    }
    problems
}

#[test]
fn prometheus_scrapes_the_ports_the_quickstart_uses() {
    let quickstart = quickstart_ports(&repo_file("examples/src/bin/quickstart.rs"))
        .unwrap_or_else(|e| panic!("{e}"));
    let scrape = scrape_config(&repo_file("examples/prometheus.yml"))
        .unwrap_or_else(|e| panic!("examples/prometheus.yml: {e}"));
    let problems = scrape_problems(&quickstart, &scrape);
    assert!(
        problems.is_empty(),
        "examples/prometheus.yml does not match the quick start:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_scrape_check_fails_on_drift() {
    let source = repo_file("examples/src/bin/quickstart.rs");
    let yaml = repo_file("examples/prometheus.yml");
    let scrape = scrape_config(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let check = |source: &str| {
        scrape_problems(
            &quickstart_ports(source).unwrap_or_else(|e| panic!("{e}")),
            &scrape,
        )
    };
    let ours = quickstart_ports(&source).unwrap_or_else(|e| panic!("{e}"));
    let order = ours
        .sidecars
        .iter()
        .find(|s| s.service == "order-service")
        .expect("an order-service sidecar")
        .admin;
    // The quick start moves order-service's sidecar, or the control plane's admin.
    let moved = source.replacen(&format!("{order},"), &format!("{},", order + 50), 1);
    assert_ne!(
        moved, source,
        "the order-service sidecar's base is a literal"
    );
    let problems = check(&moved);
    assert!(
        problems
            .iter()
            .any(|p| p.contains(&format!(":{order}: not a port")))
            && problems
                .iter()
                .any(|p| p.contains(&format!("port {}, is not scraped", order + 50))),
        "{problems:#?}"
    );
    let cp = ours.control_plane_admin;
    let moved = source.replacen(&format!("p.get({cp})"), &format!("p.get({})", cp + 1), 1);
    assert!(!check(&moved).is_empty());
    // The quick start grows a user-service instance.
    let grown = source.replacen(
        r#"("user-2", "v2")]"#,
        r#"("user-2", "v2"), ("user-3", "v3")]"#,
        1,
    );
    assert_ne!(
        grown, source,
        "the user-service instances are listed as tuples"
    );
    assert!(
        check(&grown).iter().any(|p| p.contains("user-3")),
        "{:#?}",
        check(&grown)
    );
    // prometheus.yml labels a sidecar with the wrong service.
    let relabelled =
        scrape_config(&yaml.replacen("{service: order-service}", "{service: user-service}", 1))
            .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        scrape_problems(&ours, &relabelled)
            .iter()
            .any(|p| p.contains("so service=\"order-service\"")),
    );
}

#[test]
fn the_scrape_config_reader_understands_both_label_styles() {
    let config = scrape_config(
        "scrape_configs:\n  - job_name: a\n    honor_labels: true\n    static_configs:\n\
         \x20     - targets: [\"127.0.0.1:1\", '127.0.0.1:2']  # two\n\
         \x20       labels: {service: x}\n\
         \x20     - targets: [\"127.0.0.1:3\"]\n\
         \x20       labels:\n\
         \x20         service: \"y\"\n\
         \x20 - job_name: b\n    static_configs:\n      - targets: [\"localhost:4\"]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<_> = config
        .targets
        .iter()
        .map(|t| {
            (
                t.job.as_str(),
                t.port,
                t.labels.get("service").map(String::as_str),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a", 1, Some("x")),
            ("a", 2, Some("x")),
            ("a", 3, Some("y")),
            ("b", 4, None)
        ]
    );
    assert_eq!(config.honor_labels.get("a"), Some(&true));
}
