//! The side-by-side table issue 13 asks for: Weft's mTLS pairs against
//! an Envoy pair, Linkerd (estimated from Envoy), and the floor (two bare
//! TCP relays), from one run; then the targets, each with the
//! figure that meets it or not.
//!
//! Linkerd is not in the repo's bench (it is no package in the registries
//! this machine reaches). In the issue's own side-by-side run on this
//! machine, linkerd2-proxy's pair stood at 0.93× Envoy's added p50, 0.92×
//! its added p99 and 1.39× its maximum rate; the estimate applies those
//! factors to the Envoy pair of this run, and the table says so.

use std::time::Duration;

use super::{ENVOY, FLOOR, Path, Result, median, usage};

/// Linkerd's pair against Envoy's, from issue 13's measurement.
const LINKERD_P50: f64 = 0.93;
const LINKERD_P99: f64 = 0.92;
const LINKERD_MAX: f64 = 1.39;

/// The pair the targets are for: resilience, 1% tracing, authorization.
pub const FULL: &str = "mTLS pair";
const BARE: &str = "mTLS bare";
/// The same calls as opaque TCP through a pair: Weft's mTLS transport with
/// no HTTP/2 in either sidecar.
pub const OPAQUE: &str = "mTLS opaque TCP";

/// One pair's figures: medians over the rounds of its added p50 and p99
/// (minus direct in the same round), its ratios to the floor's and
/// Envoy's (medians of the per-round ratios), and at the maximum rate its
/// rps, its ratio to Envoy's and its CPU per request (both proxies),
/// likewise medians of the rounds; its proxies' peak RSS.
#[derive(Clone, Copy)]
struct Figures {
    p50: f64,
    p99: f64,
    per_floor: f64,
    per_envoy: Option<(f64, f64)>,
    max_rps: f64,
    max_per_envoy: Option<f64>,
    cpu_us: f64,
    rss_mb: f64,
}

/// Prints the table and the targets when the paths needed ran.
pub fn print(
    rows: &[(String, usize, Result)],
    cpu: &[(String, &'static str, Duration, u64)],
    paths: &[Path],
    rounds: u32,
) -> anyhow::Result<()> {
    let find = |label: &str, path: &str| {
        rows.iter()
            .find(|(l, i, _)| l == label && paths[*i].name == path)
            .map(|(_, _, r)| r)
    };
    let added = |label: &str, path: &str, p: f64| {
        let direct = find(label, "direct")?.pct(p).as_secs_f64();
        Some(find(label, path)?.pct(p).as_secs_f64() - direct)
    };
    let at_max = |round: u32, name: &str| -> Option<(f64, f64)> {
        let r = find(&format!("max round {round}"), name)?;
        let path = paths.iter().find(|p| p.name == name)?;
        let run_label = format!("max rate round {round}");
        let used: f64 = cpu
            .iter()
            .filter(|(run, label, _, _)| {
                *run == run_label && path.sidecars.iter().any(|(l, _)| l == label)
            })
            .map(|(_, _, t, _)| t.as_secs_f64())
            .sum();
        Some((r.rps(), used / r.latencies.len().max(1) as f64 * 1e6))
    };
    let rss = |name: &str| -> anyhow::Result<f64> {
        let Some(path) = paths.iter().find(|p| p.name == name) else {
            return Ok(f64::NAN);
        };
        let mut peak = 0u64;
        for (_, pid) in &path.sidecars {
            peak = peak.max(usage(*pid)?.0);
        }
        Ok(peak as f64 / 1024.0)
    };
    let labels: Vec<String> = (1..=rounds).map(|r| format!("round {r}")).collect();
    let figures = |name: &str| -> anyhow::Result<Option<Figures>> {
        let (mut p50, mut p99, mut floor, mut e50, mut e99) =
            (vec![], vec![], vec![], vec![], vec![]);
        for l in &labels {
            let (Some(a), Some(b), Some(f)) = (
                added(l, name, 0.5),
                added(l, name, 0.99),
                added(l, FLOOR, 0.5),
            ) else {
                continue;
            };
            p50.push(a);
            p99.push(b);
            floor.push(a / f);
            if let (Some(e), Some(e9)) = (added(l, ENVOY, 0.5), added(l, ENVOY, 0.99)) {
                e50.push(a / e);
                e99.push(b / e9);
            }
        }
        if p50.is_empty() {
            return Ok(None);
        }
        let (mut max_rps, mut cpu_us, mut max_e) = (vec![], vec![], vec![]);
        for round in 1..=rounds {
            let Some((rps, us)) = at_max(round, name) else {
                continue;
            };
            max_rps.push(rps);
            cpu_us.push(us);
            if let Some((e, _)) = at_max(round, ENVOY) {
                max_e.push(rps / e);
            }
        }
        Ok(Some(Figures {
            p50: median(&mut p50) * 1e6,
            p99: median(&mut p99) * 1e6,
            per_floor: median(&mut floor),
            per_envoy: (!e50.is_empty()).then(|| (median(&mut e50), median(&mut e99))),
            max_rps: median(&mut max_rps),
            max_per_envoy: (!max_e.is_empty()).then(|| median(&mut max_e)),
            cpu_us: median(&mut cpu_us),
            rss_mb: rss(name)?,
        }))
    };
    let Some(full) = figures(FULL)? else {
        return Ok(());
    };
    let mut table = vec![(
        "Weft mTLS pair (resilience, 1% traced, authorization)",
        Some(full),
    )];
    table.push(("Weft mTLS bare (one try, nothing else)", figures(BARE)?));
    table.push((
        "Weft mTLS opaque TCP (no HTTP/2 in the sidecars)",
        figures(OPAQUE)?,
    ));
    let envoy = figures(ENVOY)?;
    table.push(("Envoy 1.40 mTLS pair", envoy));
    table.push(("bare TCP relays (the floor)", figures(FLOOR)?));
    println!(
        "\nSide by side (medians of {rounds} rounds; added = minus direct in the same round; ratios are medians of the per-round ratios; each round ends with every path at its maximum rate):\n"
    );
    println!(
        "| pair | added p50 µs | added p99 µs | × floor p50 | × Envoy p50 | × Envoy p99 | max rps | CPU µs/req at max, both | peak RSS, larger of the two |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, f) in &table {
        let Some(f) = f else { continue };
        let (e50, e99) = f.per_envoy.map_or(("—".into(), "—".into()), |(a, b)| {
            (format!("{a:.2}"), format!("{b:.2}"))
        });
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {e50} | {e99} | {:.0} | {:.1} | {:.1} MB |",
            f.p50, f.p99, f.per_floor, f.max_rps, f.cpu_us, f.rss_mb
        );
    }
    let (Some(full), Some(envoy)) = (&table[0].1, &envoy) else {
        return Ok(());
    };
    let Some((e50, e99)) = full.per_envoy else {
        return Ok(());
    };
    let max_vs_envoy = full.max_per_envoy.unwrap_or(full.max_rps / envoy.max_rps);
    println!(
        "\nLinkerd estimated from this run's Envoy pair (its added p50 × {LINKERD_P50}, p99 × {LINKERD_P99}, max rps × {LINKERD_MAX}: issue 13's side-by-side measurement):\n"
    );
    println!("| target for Weft's mTLS pair (issue 13) | this run | met |");
    println!("|---|---:|---|");
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    let rows: [(&str, f64, bool); 6] = [
        (
            "added p50 ≤ 0.5× Linkerd's",
            e50 / LINKERD_P50,
            e50 / LINKERD_P50 <= 0.5,
        ),
        (
            "added p50 ≤ 2× the floor's",
            full.per_floor,
            full.per_floor <= 2.0,
        ),
        (
            "added p99 ≤ 0.5× Linkerd's",
            e99 / LINKERD_P99,
            e99 / LINKERD_P99 <= 0.5,
        ),
        (
            "max rps ≥ 1.5× Linkerd's",
            max_vs_envoy / LINKERD_MAX,
            max_vs_envoy / LINKERD_MAX >= 1.5,
        ),
        (
            "pair CPU per request at max ≤ 40 µs",
            full.cpu_us,
            full.cpu_us <= 40.0,
        ),
        (
            "peak RSS ≤ 10 MB per sidecar",
            full.rss_mb,
            full.rss_mb <= 10.0,
        ),
    ];
    for (what, figure, ok) in rows {
        println!("| {what} | {figure:.2} | {} |", yes(ok));
    }
    Ok(())
}
