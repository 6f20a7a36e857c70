//! The load benchmark's results: what is kept (JSON), the table printed at the end, and
//! the chart (an SVG written here, no plotting crate).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// Everything one run of the load benchmark measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Results {
    /// When the run started (UTC, RFC 3339).
    pub started: String,
    /// The command line that produced these results.
    pub command: String,
    /// Load generator and proxy placement, durations, connection counts.
    pub settings: serde_json::Value,
    pub scenarios: Vec<Scenario>,
    pub scale: Scale,
    /// What did not run, and why.
    pub notes: Vec<String>,
}

/// One scenario: the same load against each target.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Scenario {
    /// Short name (`http1-keepalive`).
    pub name: String,
    /// What the load is, in words.
    pub description: String,
    /// Unit of `throughput`: `req/s`, `msg/s`, `MiB/s`.
    pub unit: String,
    pub rows: Vec<Row>,
}

/// One target's figures in a scenario.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Row {
    /// `direct`, `router`, `nginx`, `haproxy`, or a variant (`router+churn`).
    pub target: String,
    pub throughput: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    /// Operations completed (requests, messages; bytes for TCP).
    pub count: u64,
    pub errors: u64,
    /// Throughput of every round (with `--repeat`), in run order; the row is the median.
    #[serde(default)]
    pub rounds: Vec<f64>,
    /// CPU time per operation during the measured window (the median round's by CPU).
    #[serde(default)]
    pub cpu: Option<CpuPerOp>,
}

/// CPU time per operation (request, message; MiB for TCP) over a measured window, read
/// from `/proc` before and after it: what each target costs, whatever else the machine
/// was doing meanwhile (a slow stretch lowers throughput but not the work per request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuPerOp {
    /// The proxy's user-space microseconds per operation (all its processes and
    /// threads); `None` for `direct`.
    pub proxy_user_us: Option<f64>,
    /// The proxy's kernel microseconds per operation.
    pub proxy_system_us: Option<f64>,
    /// The backend's microseconds per operation (user and kernel): it shares the
    /// proxy's CPU, so what it costs is taken from the proxy's share.
    pub backend_us: f64,
}

impl CpuPerOp {
    /// The proxy's user and kernel time together.
    pub fn proxy_us(&self) -> Option<f64> {
        Some(self.proxy_user_us? + self.proxy_system_us?)
    }
}

/// The scale figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Scale {
    pub routes_rss: Option<RoutesRss>,
    pub idle_connections: Vec<IdleConnections>,
    pub register_to_serving: Option<RegisterLatency>,
}

/// Router memory with many routes registered over NATS.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RoutesRss {
    pub routes: usize,
    /// RSS with the benchmark's static routes only.
    pub baseline_kib: u64,
    pub loaded_kib: u64,
    /// Seconds from the first publish until the last route served.
    pub load_seconds: f64,
}

/// Memory held by idle keep-alive connections (each has served one request).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleConnections {
    pub target: String,
    pub connections: usize,
    pub before_kib: u64,
    pub after_kib: u64,
}

impl IdleConnections {
    /// Bytes of RSS per connection.
    pub fn per_connection_bytes(&self) -> f64 {
        (self.after_kib as f64 - self.before_kib as f64) * 1024.0 / self.connections.max(1) as f64
    }
}

/// Time from a `router.register` publish to the route serving, under load.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegisterLatency {
    pub samples: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The load the router was under meanwhile.
    pub background: String,
}

impl Scenario {
    fn row(&self, target: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.target == target)
    }

    /// `row`'s throughput over `other`'s, if both ran. With rounds (`--repeat`), the
    /// median of the ratios within each round: a round runs every target in turn, seconds
    /// apart, so a machine that slows down for a while moves both sides of a ratio alike,
    /// where the ratio of two medians could pair a fast round with a slow one.
    pub fn ratio(&self, row: &Row, other: &str) -> Option<f64> {
        let other = self.row(other)?;
        if row.rounds.len() >= 2 && row.rounds.len() == other.rounds.len() {
            let mut ratios: Vec<f64> = row
                .rounds
                .iter()
                .zip(&other.rounds)
                .filter(|(_, theirs)| **theirs > 0.0)
                .map(|(ours, theirs)| ours / theirs)
                .collect();
            ratios.sort_by(f64::total_cmp);
            // The upper median of an even count, as for the rows.
            if let Some(&median) = ratios.get(ratios.len() / 2) {
                return Some(median);
            }
        }
        (other.throughput > 0.0).then(|| row.throughput / other.throughput)
    }

    /// `row`'s proxy CPU per operation over `other`'s (below 1: less work per request).
    pub fn cpu_ratio(&self, row: &Row, other: &str) -> Option<f64> {
        let ours = row.cpu?.proxy_us()?;
        let theirs = self.row(other)?.cpu?.proxy_us()?;
        (theirs > 0.0).then(|| ours / theirs)
    }
}

/// `12.3 (4.1+8.2)`: total, user + kernel microseconds.
fn cpu_cell(cpu: Option<&CpuPerOp>) -> String {
    match cpu.and_then(|c| Some((c.proxy_us()?, c.proxy_user_us?, c.proxy_system_us?))) {
        Some((total, user, system)) => format!("{total:.1} ({user:.1}+{system:.1})"),
        None => "-".to_owned(),
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

fn ratio(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"))
}

/// A human number: 123456 -> `123.5k`.
pub fn human(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

impl Results {
    /// The results as a Markdown table (printed at the end and pasted in the README).
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "| scenario | target | throughput | p50 ms | p99 ms | mean ms | errors | vs direct | vs nginx | vs haproxy | proxy CPU µs/op (user+sys) | CPU/op vs nginx | backend CPU µs/op |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for scenario in &self.scenarios {
            for row in &scenario.rows {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    scenario.name,
                    row.target,
                    human(row.throughput),
                    scenario.unit,
                    ms(row.p50_ms),
                    ms(row.p99_ms),
                    ms(row.mean_ms),
                    row.errors,
                    ratio(scenario.ratio(row, "direct")),
                    ratio(scenario.ratio(row, "nginx")),
                    ratio(scenario.ratio(row, "haproxy")),
                    cpu_cell(row.cpu.as_ref()),
                    ratio(scenario.cpu_ratio(row, "nginx")),
                    row.cpu
                        .map_or_else(|| "-".to_owned(), |c| format!("{:.1}", c.backend_us)),
                );
            }
        }
        out.push('\n');
        out.push_str(&self.scale_table());
        if !self.notes.is_empty() {
            out.push_str("\nNotes:\n");
            for note in &self.notes {
                let _ = writeln!(out, "- {note}");
            }
        }
        out
    }

    fn scale_table(&self) -> String {
        let mut out = String::from("| scale figure | value |\n|---|---|\n");
        if let Some(r) = &self.scale.routes_rss {
            let _ = writeln!(
                out,
                "| router RSS with {} routes (NATS) | {:.1} MiB ({:.1} MiB over {:.1} MiB at start; {:.0} bytes/route; all serving after {:.1} s) |",
                r.routes,
                r.loaded_kib as f64 / 1024.0,
                (r.loaded_kib as f64 - r.baseline_kib as f64) / 1024.0,
                r.baseline_kib as f64 / 1024.0,
                (r.loaded_kib as f64 - r.baseline_kib as f64) * 1024.0 / r.routes.max(1) as f64,
                r.load_seconds,
            );
        }
        for idle in &self.scale.idle_connections {
            let _ = writeln!(
                out,
                "| {} RSS per idle keep-alive connection ({} connections) | {:.0} bytes ({:.1} -> {:.1} MiB) |",
                idle.target,
                idle.connections,
                idle.per_connection_bytes(),
                idle.before_kib as f64 / 1024.0,
                idle.after_kib as f64 / 1024.0,
            );
        }
        if let Some(r) = &self.scale.register_to_serving {
            let _ = writeln!(
                out,
                "| register-to-serving latency ({} samples, {} timed out; {}) | p50 {} ms, p99 {} ms |",
                r.samples,
                r.errors,
                r.background,
                ms(r.p50_ms),
                ms(r.p99_ms),
            );
        }
        out
    }

    /// A chart of the scenarios: throughput per target (bars scaled to the best target
    /// of each scenario, labelled with the absolute figure), and p99 latency below.
    pub fn svg(&self) -> String {
        const TARGETS: [(&str, &str); 6] = [
            ("direct", "#9e9e9e"),
            ("router", "#d84315"),
            ("nginx", "#2e7d32"),
            ("haproxy", "#1565c0"),
            ("router-quiet", "#ff8a65"),
            ("router+churn", "#6a1b9a"),
        ];
        let color = |target: &str| {
            TARGETS
                .iter()
                .find(|(t, _)| *t == target)
                .map_or("#555555", |(_, c)| *c)
        };
        let bar_w = 20.0;
        let group_gap = 44.0;
        let groups: Vec<&Scenario> = self
            .scenarios
            .iter()
            .filter(|s| !s.rows.is_empty())
            .collect();
        let group_w = |s: &Scenario| s.rows.len() as f64 * bar_w + group_gap;
        let left = 60.0;
        let width = left + groups.iter().map(|s| group_w(s)).sum::<f64>() + 150.0;
        let panel_h = 220.0;
        let top1 = 50.0;
        let top2 = top1 + panel_h + 90.0;
        let height = top2 + panel_h + 90.0;
        let mut svg = String::new();
        let _ = writeln!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(
            svg,
            r#"<rect width="100%" height="100%" fill="white"/><text x="{left}" y="20" font-size="15" font-weight="bold">Router load benchmark {}</text>"#,
            escape(&self.started)
        );
        let _ = writeln!(
            svg,
            r#"<text x="{left}" y="{:.0}" font-size="12">Throughput (bar: share of the best target in the scenario; label: absolute)</text>"#,
            top1 - 8.0
        );
        let _ = writeln!(
            svg,
            r#"<text x="{left}" y="{:.0}" font-size="12">p99 latency, ms (bar: share of the worst target in the scenario; lower is better)</text>"#,
            top2 - 8.0
        );
        for (top, _) in [(top1, 0), (top2, 1)] {
            let _ = writeln!(
                svg,
                r##"<line x1="{left}" y1="{:.0}" x2="{:.0}" y2="{:.0}" stroke="#333"/>"##,
                top + panel_h,
                width - 140.0,
                top + panel_h
            );
        }
        let mut x = left;
        for scenario in &groups {
            let best = scenario
                .rows
                .iter()
                .map(|r| r.throughput)
                .fold(0.0, f64::max);
            let worst_p99 = scenario
                .rows
                .iter()
                .filter_map(|r| r.p99_ms)
                .fold(0.0, f64::max);
            for (i, row) in scenario.rows.iter().enumerate() {
                let bx = x + i as f64 * bar_w;
                let fill = color(&row.target);
                if best > 0.0 {
                    let h = (row.throughput / best) * (panel_h - 45.0);
                    let y = top1 + panel_h - h;
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{bx:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{fill}"><title>{} {}: {} {}</title></rect>"#,
                        bar_w - 2.0,
                        escape(&scenario.name),
                        escape(&row.target),
                        human(row.throughput),
                        escape(&scenario.unit)
                    );
                    let _ = writeln!(
                        svg,
                        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="9">{}</text>"#,
                        bx + bar_w / 2.0 + 3.0,
                        y - 3.0,
                        human(row.throughput)
                    );
                }
                if let (Some(p99), true) = (row.p99_ms, worst_p99 > 0.0) {
                    let h = (p99 / worst_p99) * (panel_h - 45.0);
                    let y = top2 + panel_h - h;
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{bx:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{fill}"><title>{} {}: p99 {p99:.2} ms</title></rect>"#,
                        bar_w - 2.0,
                        escape(&scenario.name),
                        escape(&row.target),
                    );
                    let _ = writeln!(
                        svg,
                        r#"<text transform="translate({:.1},{:.1}) rotate(-90)" font-size="9">{p99:.2}</text>"#,
                        bx + bar_w / 2.0 + 3.0,
                        y - 3.0,
                    );
                }
            }
            let label_x = x + (scenario.rows.len() as f64 * bar_w) / 2.0;
            for (top, unit) in [(top1, scenario.unit.as_str()), (top2, "")] {
                let _ = writeln!(
                    svg,
                    r#"<text x="{label_x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
                    top + panel_h + 14.0,
                    escape(&scenario.name)
                );
                if !unit.is_empty() {
                    let _ = writeln!(
                        svg,
                        r##"<text x="{label_x:.1}" y="{:.1}" text-anchor="middle" fill="#666">{}</text>"##,
                        top + panel_h + 27.0,
                        escape(unit)
                    );
                }
            }
            x += group_w(scenario);
        }
        let mut ly = top1;
        for (target, fill) in TARGETS {
            if !groups
                .iter()
                .any(|s| s.rows.iter().any(|r| r.target == target))
            {
                continue;
            }
            let lx = width - 130.0;
            let _ = writeln!(
                svg,
                r#"<rect x="{lx:.0}" y="{ly:.0}" width="12" height="12" fill="{fill}"/><text x="{:.0}" y="{:.0}">{target}</text>"#,
                lx + 18.0,
                ly + 10.0
            );
            ly += 18.0;
        }
        svg.push_str("</svg>\n");
        svg
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Results {
        let row = |target: &str, throughput: f64| Row {
            target: target.to_owned(),
            throughput,
            p50_ms: Some(0.4),
            p99_ms: Some(1.5),
            ..Default::default()
        };
        Results {
            started: "2026-11-21T00:00:00Z".into(),
            scenarios: vec![Scenario {
                name: "http1-keepalive".into(),
                unit: "req/s".into(),
                rows: vec![
                    row("direct", 200_000.0),
                    row("router", 120_000.0),
                    row("nginx", 100_000.0),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn table_has_ratios_to_direct_and_peers() {
        let table = sample().table();
        let router = table.lines().find(|l| l.contains("| router |")).unwrap();
        assert!(router.contains("| 120.0k req/s |"), "{router}");
        assert!(router.contains("| 0.60x | 1.20x | - |"), "{router}");
    }

    #[test]
    fn table_has_cpu_per_request_and_its_ratio_to_nginx() {
        let mut results = sample();
        let cpu = |proxy: Option<(f64, f64)>, backend_us| {
            Some(CpuPerOp {
                proxy_user_us: proxy.map(|p| p.0),
                proxy_system_us: proxy.map(|p| p.1),
                backend_us,
            })
        };
        let rows = &mut results.scenarios[0].rows;
        rows[0].cpu = cpu(None, 3.0);
        rows[1].cpu = cpu(Some((2.0, 6.0)), 3.5);
        rows[2].cpu = cpu(Some((3.0, 7.0)), 3.5);
        let table = results.table();
        let router = table.lines().find(|l| l.contains("| router |")).unwrap();
        assert!(
            router.ends_with("| 8.0 (2.0+6.0) | 0.80x | 3.5 |"),
            "{router}"
        );
        let direct = table.lines().find(|l| l.contains("| direct |")).unwrap();
        assert!(direct.ends_with("| - | - | 3.0 |"), "{direct}");
    }

    #[test]
    fn ratios_pair_the_rounds_of_a_repeated_run() {
        let mut results = sample();
        let rows = &mut results.scenarios[0].rows;
        // Round 2 was slow for everyone: its pair still counts 1.2x, and the median of
        // the per-round ratios (1.1, 1.2, 1.3) is 1.2x, where the medians' ratio
        // (100 / 100) would say 1.0x.
        rows[1].rounds = vec![110.0, 60.0, 130.0];
        rows[1].throughput = 110.0;
        rows[2].rounds = vec![100.0, 50.0, 100.0];
        rows[2].throughput = 100.0;
        let scenario = &results.scenarios[0];
        let ratio = scenario.ratio(&scenario.rows[1], "nginx").unwrap();
        assert!((ratio - 1.2).abs() < 1e-9, "{ratio}");
        // Unequal round counts (a failed round) fall back to the medians.
        results.scenarios[0].rows[2].rounds.pop();
        let scenario = &results.scenarios[0];
        let ratio = scenario.ratio(&scenario.rows[1], "nginx").unwrap();
        assert!((ratio - 1.1).abs() < 1e-9, "{ratio}");
    }

    #[test]
    fn chart_is_an_svg_with_one_bar_per_row() {
        let svg = sample().svg();
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<title>").count(), 6);
    }
}
