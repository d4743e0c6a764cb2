//! `weftctl top`: live traffic per service and instance, redrawn every
//! interval, or one answer as a table, JSON or YAML.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use weft_proto::duration::{DurationError, parse_duration};
use weft_proto::stats::MAX_WINDOW;
use weft_proto::v1 as pb;

use super::output::structured;
use super::{CliError, Client, Format};

/// Moves the cursor home and clears the screen (ANSI), so each frame
/// replaces the last one on a terminal.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// The shortest `--interval`: faster redraws only load the control plane.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// A `--window` or `--interval` that `weftctl top` refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    /// Not a duration at all.
    #[error(transparent)]
    Duration(#[from] DurationError),
    #[error("{0:?}: the window is whole seconds from 1s to {max}s", max = MAX_WINDOW.as_secs())]
    Window(String),
    #[error("{0:?}: the interval is at least {min}ms", min = MIN_INTERVAL.as_millis())]
    Interval(String),
}

/// `--window`: whole seconds, 1s to 300s (what `Top` accepts).
pub fn parse_window(s: &str) -> Result<Duration, FlagError> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 || d.is_zero() || d > MAX_WINDOW {
        return Err(FlagError::Window(s.to_string()));
    }
    Ok(d)
}

/// `--interval`: at least [`MIN_INTERVAL`].
pub fn parse_interval(s: &str) -> Result<Duration, FlagError> {
    let d = parse_duration(s)?;
    if d < MIN_INTERVAL {
        return Err(FlagError::Interval(s.to_string()));
    }
    Ok(d)
}

/// What `weftctl top` was asked for.
#[derive(Debug, Clone)]
pub struct TopArgs {
    pub url: String,
    pub request: pb::TopRequest,
    pub interval: Duration,
    pub once: bool,
    pub output: Format,
    /// Whether stdout is a terminal: then frames clear the screen.
    pub tty: bool,
}

/// Runs `weftctl top`. The first answer must succeed (an unreachable
/// control plane or an unknown service is an error); after that the live
/// view shows a failed refresh in its frame and keeps trying until Ctrl-C.
pub async fn run(client: &mut Client, args: &TopArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let first = client.top(args.request.clone()).await?.into_inner();
    if args.output != Format::Table {
        let _ = out.write_all(structured(to_json(&first), args.output).as_bytes());
        return Ok(());
    }
    if args.once {
        let _ = out
            .write_all(frame(&args.url, &args.request, &Ok(first), SystemTime::now()).as_bytes());
        return Ok(());
    }
    let ctrl_c = async {
        // Without a signal handler there is no Ctrl-C to wait for; the
        // default disposition still ends the process.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(ctrl_c);
    let mut tick = tokio::time::interval(args.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut latest: Result<pb::TopResponse, CliError> = Ok(first);
    let mut drawn = false;
    loop {
        let text = frame(&args.url, &args.request, &latest, SystemTime::now());
        let separator = match (args.tty, drawn) {
            (true, _) => CLEAR,
            (false, true) => "\n",
            (false, false) => "",
        };
        drawn = true;
        // A closed stdout (e.g. `| head`) ends the view quietly.
        if out
            .write_all(format!("{separator}{text}").as_bytes())
            .is_err()
            || out.flush().is_err()
        {
            return Ok(());
        }
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            r = client.top(args.request.clone()) => {
                latest = r.map(tonic::Response::into_inner).map_err(CliError::from);
            }
        }
    }
}

/// The answer as JSON, with the proto's field names.
pub fn to_json(r: &pb::TopResponse) -> Value {
    let services: Vec<Value> = r
        .services
        .iter()
        .map(|s| {
            let instances: Vec<Value> = s
                .instances
                .iter()
                .map(|i| {
                    json!({
                        "instance_id": i.instance_id,
                        "health": i.health,
                        "rps": i.rps,
                        "requests": i.requests,
                        "failures": i.failures,
                        "success_rate": i.success_rate,
                        "p50_ms": i.p50_ms,
                        "p99_ms": i.p99_ms,
                        "reporting": i.reporting,
                    })
                })
                .collect();
            json!({
                "service": s.service,
                "rps": s.rps,
                "requests": s.requests,
                "failures": s.failures,
                "success_rate": s.success_rate,
                "p50_ms": s.p50_ms,
                "p99_ms": s.p99_ms,
                "endpoints": s.endpoints,
                "healthy_endpoints": s.healthy_endpoints,
                "instances": instances,
            })
        })
        .collect();
    json!({
        "window_seconds": r.window_seconds,
        "services": services,
    })
}

/// `2025-06-01 12:00:03 UTC`.
fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    match time::OffsetDateTime::from_unix_timestamp(secs) {
        Ok(d) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            d.year(),
            u8::from(d.month()),
            d.day(),
            d.hour(),
            d.minute(),
            d.second()
        ),
        Err(_) => format!("{secs} (unix)"),
    }
}

/// One screenful: a header line, then per service its row and its
/// instances, indented; or the error of the last refresh.
pub fn frame(
    url: &str,
    request: &pb::TopRequest,
    answer: &Result<pb::TopResponse, CliError>,
    now: SystemTime,
) -> String {
    let window = match answer {
        Ok(r) => r.window_seconds,
        Err(_) => request.window_seconds,
    };
    let mut out = format!("weftctl top   {url}   window {window}s   {}\n\n", utc(now));
    match answer {
        Err(e) => out.push_str(&format!("error: {e}\n(retrying)\n")),
        Ok(r) if r.services.is_empty() => out.push_str("no services with instances\n"),
        Ok(r) => out.push_str(&services_table(&r.services)),
    }
    out
}

/// Right-aligned (numbers) or left-aligned (names) cells.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Align {
    Left,
    Right,
}

/// One table: each service's row, then its instances indented under it.
const COLUMNS: [(&str, Align); 7] = [
    ("SERVICE / INSTANCE", Align::Left),
    ("HEALTH", Align::Left),
    ("RPS", Align::Right),
    ("SUCCESS", Align::Right),
    ("P50", Align::Right),
    ("P99", Align::Right),
    ("ENDPOINTS", Align::Right),
];

/// Widths over every row of every service, so that the blocks line up
/// and numbers stay put from frame to frame as far as possible.
fn widths<const N: usize>(columns: &[(&str, Align); N], rows: &[[String; N]]) -> [usize; N] {
    let mut w = columns.map(|(h, a)| {
        if a == Align::Right {
            h.len().max(7)
        } else {
            h.len()
        }
    });
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    w
}

fn line<const N: usize>(
    cells: &[String; N],
    columns: &[(&str, Align); N],
    w: &[usize; N],
) -> String {
    let mut l = String::new();
    for (i, c) in cells.iter().enumerate() {
        if i > 0 {
            l.push_str("   ");
        }
        match columns[i].1 {
            Align::Left => l.push_str(&format!("{c:<width$}", width = w[i])),
            Align::Right => l.push_str(&format!("{c:>width$}", width = w[i])),
        }
    }
    format!("{}\n", l.trim_end())
}

fn services_table(services: &[pb::ServiceTop]) -> String {
    let mut rows: Vec<[String; 7]> = Vec::new();
    for svc in services {
        rows.push(service_row(svc));
        rows.extend(svc.instances.iter().map(instance_row));
    }
    let w = widths(&COLUMNS, &rows);
    let mut out = line(&COLUMNS.map(|(h, _)| h.to_string()), &COLUMNS, &w);
    for r in &rows {
        out.push_str(&line(r, &COLUMNS, &w));
    }
    out
}

fn service_row(s: &pb::ServiceTop) -> [String; 7] {
    let reporting = s.instances.iter().any(|i| i.reporting);
    [
        s.service.clone(),
        String::new(),
        if reporting { rps(s.rps) } else { "-".into() },
        success(s.requests, s.failures),
        latency(s.requests, s.p50_ms),
        latency(s.requests, s.p99_ms),
        format!("{}/{}", s.healthy_endpoints, s.endpoints),
    ]
}

fn instance_row(i: &pb::InstanceTop) -> [String; 7] {
    let name = format!("  {}", i.instance_id);
    if !i.reporting {
        let dash = || "-".to_string();
        return [
            name,
            i.health.clone(),
            dash(),
            dash(),
            dash(),
            dash(),
            String::new(),
        ];
    }
    [
        name,
        i.health.clone(),
        rps(i.rps),
        success(i.requests, i.failures),
        latency(i.requests, i.p50_ms),
        latency(i.requests, i.p99_ms),
        String::new(),
    ]
}

fn rps(r: f64) -> String {
    format!("{r:.1}")
}

/// `99.50%`, from the counts (no float rounding on the way), rounded to
/// the nearest hundredth except that any failure shows below 100%; `-`
/// without requests.
fn success(requests: u64, failures: u64) -> String {
    if requests == 0 {
        return "-".into();
    }
    let failures = failures.min(requests);
    let (ok, all) = (u128::from(requests - failures), u128::from(requests));
    let mut hundredths = (ok * 20_000 + all) / (2 * all);
    if failures > 0 {
        hundredths = hundredths.min(9_999);
    }
    format!("{}.{:02}%", hundredths / 100, hundredths % 100)
}

/// `0.84ms`, `12.3ms`, `1.20s`; `-` without requests.
fn latency(requests: u64, ms: f64) -> String {
    if requests == 0 {
        return "-".into();
    }
    // Thresholds after rounding, so 9.996 ms reads 10.0ms, not 10.00ms.
    if ms < 9.995 {
        format!("{ms:.2}ms")
    } else if ms < 999.95 {
        format!("{ms:.1}ms")
    } else {
        format!("{:.2}s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer() -> pb::TopResponse {
        pb::TopResponse {
            window_seconds: 10,
            services: vec![
                pb::ServiceTop {
                    service: "orders".into(),
                    rps: 0.0,
                    success_rate: 1.0,
                    endpoints: 1,
                    healthy_endpoints: 0,
                    instances: vec![pb::InstanceTop {
                        instance_id: "o-1".into(),
                        health: "unknown".into(),
                        success_rate: 1.0,
                        reporting: false,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                pb::ServiceTop {
                    service: "users".into(),
                    rps: 20.0,
                    requests: 200,
                    failures: 1,
                    success_rate: 0.995,
                    p50_ms: 0.84,
                    p99_ms: 12.34,
                    endpoints: 2,
                    healthy_endpoints: 2,
                    instances: vec![
                        pb::InstanceTop {
                            instance_id: "u-1".into(),
                            health: "healthy".into(),
                            rps: 20.0,
                            requests: 200,
                            failures: 1,
                            success_rate: 0.995,
                            p50_ms: 0.84,
                            p99_ms: 12.34,
                            reporting: true,
                        },
                        pb::InstanceTop {
                            instance_id: "u-2".into(),
                            health: "healthy".into(),
                            success_rate: 1.0,
                            reporting: true,
                            ..Default::default()
                        },
                    ],
                },
            ],
        }
    }

    #[test]
    fn formats() {
        assert_eq!(rps(12.345), "12.3");
        assert_eq!(success(200, 1), "99.50%");
        assert_eq!(success(130, 20), "84.62%");
        assert_eq!(success(3, 1), "66.67%");
        assert_eq!(
            success(1_000_000, 1),
            "99.99%",
            "a failure never shows 100%"
        );
        assert_eq!(success(5, 0), "100.00%");
        assert_eq!(success(0, 0), "-");
        assert_eq!(latency(1, 0.84), "0.84ms");
        assert_eq!(latency(1, 12.34), "12.3ms");
        assert_eq!(latency(1, 9.999), "10.0ms");
        assert_eq!(latency(1, 1200.0), "1.20s");
        assert_eq!(latency(0, 3.0), "-");
    }

    #[test]
    fn a_frame_shows_services_and_their_instances() {
        let req = pb::TopRequest::default();
        let now = UNIX_EPOCH + Duration::from_secs(1_748_779_203);
        let f = frame("https://cp:15012", &req, &Ok(answer()), now);
        let expected = "\
weftctl top   https://cp:15012   window 10s   2025-06-01 12:00:03 UTC

SERVICE / INSTANCE   HEALTH        RPS   SUCCESS       P50       P99   ENDPOINTS
orders                               -         -         -         -         0/1
  o-1                unknown         -         -         -         -
users                             20.0    99.50%    0.84ms    12.3ms         2/2
  u-1                healthy      20.0    99.50%    0.84ms    12.3ms
  u-2                healthy       0.0         -         -         -
";
        assert_eq!(f, expected, "\n{f}");
    }

    #[test]
    fn a_failed_refresh_is_shown_in_the_frame() {
        let req = pb::TopRequest {
            service: String::new(),
            window_seconds: 30,
        };
        let err = Err(CliError::Api("control plane unavailable: gone".into()));
        let f = frame("https://cp:15012", &req, &err, UNIX_EPOCH);
        assert!(
            f.starts_with(
                "weftctl top   https://cp:15012   window 30s   1970-01-01 00:00:00 UTC\n"
            ),
            "{f}"
        );
        assert!(f.contains("error: control plane unavailable: gone"), "{f}");
        let empty = pb::TopResponse {
            window_seconds: 10,
            services: Vec::new(),
        };
        assert!(frame("u", &req, &Ok(empty), UNIX_EPOCH).contains("no services with instances"));
    }

    #[test]
    fn json_uses_the_proto_field_names() {
        let v = to_json(&answer());
        assert_eq!(v["window_seconds"], 10);
        let users = &v["services"][1];
        assert_eq!(users["service"], "users");
        for key in [
            "rps",
            "requests",
            "failures",
            "success_rate",
            "p50_ms",
            "p99_ms",
            "endpoints",
            "healthy_endpoints",
        ] {
            assert!(users.get(key).is_some(), "{key}");
        }
        let u1 = &users["instances"][0];
        assert_eq!(u1["instance_id"], "u-1");
        assert_eq!(u1["health"], "healthy");
        assert_eq!(u1["requests"], 200);
        assert_eq!(u1["success_rate"], 0.995);
        assert_eq!(u1["reporting"], true);
        assert_eq!(v["services"][0]["instances"][0]["reporting"], false);
    }

    #[test]
    fn window_and_interval_flags() {
        assert_eq!(parse_window("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_window("5m"), Ok(Duration::from_secs(300)));
        for bad in ["0s", "1500ms", "301s", "6m", "ten"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
        assert!(
            parse_window("301s")
                .expect_err("too long")
                .to_string()
                .contains("300s")
        );
        assert!(matches!(parse_window("ten"), Err(FlagError::Duration(_))));
        assert_eq!(
            parse_interval("10ms").expect_err("too short").to_string(),
            "\"10ms\": the interval is at least 100ms"
        );
        assert_eq!(parse_interval("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("10ms").is_err());
    }
}
