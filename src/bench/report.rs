//! The results: a table for the terminal (and the README), JSON for tools, and
//! an SVG chart of every figure as a ratio to its baseline.

use std::fmt::Write as _;

use serde::Serialize;

/// Which way is better for a metric.
#[derive(Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

/// A goal for the tunnelled figures.
#[derive(Clone, Serialize)]
pub struct Target {
    pub text: String,
    /// The tunnelled value divided by the baseline must reach this (Higher) or
    /// stay under it (Lower); or, with `absolute`, the value itself. One
    /// bound per column (QUIC, WebSocket).
    pub bound: [f64; 2],
    pub absolute: bool,
}

#[derive(Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub metric: String,
    pub unit: String,
    pub better: Better,
    /// Direct (or, for "vs raw" rows, the raw transport) value per column.
    pub baseline: [Option<f64>; 2],
    /// Through QUIC, through WebSocket.
    pub tunnel: [Option<f64>; 2],
    pub target: Option<Target>,
    /// Over several runs: the range (lowest, highest) behind each baseline
    /// and tunnel value, which are then medians.
    pub baseline_range: [Option<(f64, f64)>; 2],
    pub tunnel_range: [Option<(f64, f64)>; 2],
}

impl Row {
    pub fn new(scenario: &str, metric: &str, unit: &str, better: Better) -> Row {
        Row {
            scenario: scenario.into(),
            metric: metric.into(),
            unit: unit.into(),
            better,
            baseline: [None, None],
            tunnel: [None, None],
            target: None,
            baseline_range: [None, None],
            tunnel_range: [None, None],
        }
    }

    pub fn direct(mut self, v: f64) -> Row {
        self.baseline = [Some(v), Some(v)];
        self
    }

    pub fn baselines(mut self, quic: Option<f64>, ws: Option<f64>) -> Row {
        self.baseline = [quic, ws];
        self
    }

    pub fn tunnel(mut self, quic: Option<f64>, ws: Option<f64>) -> Row {
        self.tunnel = [quic, ws];
        self
    }

    pub fn target(self, text: &str, bound: f64, absolute: bool) -> Row {
        self.targets(text, [bound, bound], absolute)
    }

    /// A target with its own bound for each transport.
    pub fn targets(mut self, text: &str, bound: [f64; 2], absolute: bool) -> Row {
        self.target = Some(Target {
            text: text.into(),
            bound,
            absolute,
        });
        self
    }

    pub fn ratio(&self, i: usize) -> Option<f64> {
        match (self.tunnel[i], self.baseline[i]) {
            (Some(t), Some(b)) if b != 0.0 && b.is_finite() && t.is_finite() => Some(t / b),
            _ => None,
        }
    }

    pub fn met(&self, i: usize) -> Option<bool> {
        let target = self.target.as_ref()?;
        let value = if target.absolute {
            self.tunnel[i]?
        } else {
            self.ratio(i)?
        };
        Some(match self.better {
            Better::Higher => value >= target.bound[i],
            Better::Lower => value <= target.bound[i],
        })
    }
}

/// Rows of several runs (the same rows in the same order each run) as one
/// set: each value the median of its runs, with the range alongside. A target
/// is met only when the median meets it.
pub fn merge_runs(runs: Vec<Vec<Row>>) -> Vec<Row> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let median_range = |values: Vec<Option<f64>>| -> (Option<f64>, Option<(f64, f64)>) {
        let mut v: Vec<f64> = values
            .into_iter()
            .flatten()
            .filter(|x| x.is_finite())
            .collect();
        if v.is_empty() {
            return (None, None);
        }
        v.sort_by(|a, b| a.total_cmp(b));
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        (Some(median), Some((v[0], v[v.len() - 1])))
    };
    (0..first.len())
        .map(|i| {
            let mut row = first[i].clone();
            for col in 0..2 {
                let (m, r) = median_range(runs.iter().map(|run| run[i].baseline[col]).collect());
                row.baseline[col] = m;
                row.baseline_range[col] = r;
                let (m, r) = median_range(runs.iter().map(|run| run[i].tunnel[col]).collect());
                row.tunnel[col] = m;
                row.tunnel_range[col] = r;
            }
            row
        })
        .collect()
}

/// A value, with its range over several runs when they differed.
fn spread(v: Option<f64>, range: Option<(f64, f64)>) -> String {
    match range {
        Some((lo, hi)) if lo != hi => format!("{} ({}–{})", num(v), num(Some(lo)), num(Some(hi))),
        _ => num(v),
    }
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if !v.is_finite() => "–".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn ratio(v: Option<f64>) -> String {
    v.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "–".into())
}

fn verdict(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "",
    }
}

/// A Markdown table.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| scenario | metric | baseline | QUIC | WS | QUIC ÷ base | WS ÷ base | target | met (QUIC / WS) |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---|---|\n");
    for r in rows {
        let base = if r.baseline[0] == r.baseline[1] {
            spread(r.baseline[0], r.baseline_range[0])
        } else {
            format!(
                "{} / {}",
                spread(r.baseline[0], r.baseline_range[0]),
                spread(r.baseline[1], r.baseline_range[1])
            )
        };
        let met = match (r.met(0), r.met(1)) {
            (None, None) => String::new(),
            (q, w) => format!("{} / {}", verdict(q), verdict(w)),
        };
        let _ = writeln!(
            out,
            "| {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            r.metric,
            r.unit,
            base,
            spread(r.tunnel[0], r.tunnel_range[0]),
            spread(r.tunnel[1], r.tunnel_range[1]),
            ratio(r.ratio(0)),
            ratio(r.ratio(1)),
            r.target.as_ref().map(|t| t.text.as_str()).unwrap_or(""),
            met
        );
    }
    out
}

/// A horizontal bar chart of the ratios (QUIC and WS) of every row with a baseline.
pub fn svg(rows: &[Row], title: &str) -> String {
    let charted: Vec<&Row> = rows
        .iter()
        .filter(|r| r.ratio(0).is_some() || r.ratio(1).is_some())
        .collect();
    let max = charted
        .iter()
        .flat_map(|r| [r.ratio(0), r.ratio(1)])
        .flatten()
        .fold(1.0f64, f64::max)
        .min(4.0);
    let (label_w, bar_w, row_h) = (330.0, 420.0, 34.0);
    let height = 60.0 + row_h * charted.len() as f64 + 30.0;
    let width = label_w + bar_w + 90.0;
    let x = |r: f64| label_w + bar_w * (r.min(max) / max);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{label_w}" y="32" width="12" height="10" fill="#2b6cb0"/><text x="{}" y="41">QUIC</text><rect x="{}" y="32" width="12" height="10" fill="#dd6b20"/><text x="{}" y="41">WebSocket</text><text x="{}" y="41">ratio to baseline (1.0 = baseline; bars capped at {max:.0}×)</text>"##,
        label_w + 16.0,
        label_w + 70.0,
        label_w + 86.0,
        label_w + 170.0,
        max = max
    );
    let one = x(1.0);
    let _ = writeln!(
        s,
        r##"<line x1="{one}" y1="50" x2="{one}" y2="{}" stroke="#555" stroke-dasharray="4 3"/>"##,
        height - 25.0
    );
    for (i, r) in charted.iter().enumerate() {
        let y = 55.0 + row_h * i as f64;
        let label = format!("{}: {}", r.scenario, r.metric);
        let _ = writeln!(
            s,
            r#"<text x="10" y="{}">{}</text>"#,
            y + 17.0,
            escape(&label)
        );
        for (j, color) in [(0usize, "#2b6cb0"), (1, "#dd6b20")] {
            if let Some(v) = r.ratio(j) {
                let yy = y + 4.0 + 13.0 * j as f64;
                let _ = writeln!(
                    s,
                    r#"<rect x="{label_w}" y="{yy}" width="{:.1}" height="11" fill="{color}"/><text x="{:.1}" y="{}">{v:.2}×</text>"#,
                    (x(v) - label_w).max(1.0),
                    x(v) + 4.0,
                    yy + 10.0
                );
            }
        }
    }
    s.push_str("</svg>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Each figure of this run against the same row (scenario and metric) of an
/// earlier run's `tunnel.json`, as a Markdown table: a regression shows in
/// the change that causes it. Rows the earlier run did not have are left out.
pub fn compare(rows: &[Row], old: &serde_json::Value) -> String {
    let old_rows: Vec<&serde_json::Value> = old
        .get("rows")
        .and_then(|r| r.as_array())
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    let find = |r: &Row| {
        old_rows.iter().copied().find(|o| {
            o.get("scenario").and_then(|s| s.as_str()) == Some(r.scenario.as_str())
                && o.get("metric").and_then(|s| s.as_str()) == Some(r.metric.as_str())
        })
    };
    let value = |o: &serde_json::Value, i: usize| o.get("tunnel")?.get(i)?.as_f64();
    let mut out = String::new();
    out.push_str("| scenario | metric | QUIC before → now | change | WS before → now | change |\n");
    out.push_str("|---|---|---:|---:|---:|---:|\n");
    for r in rows {
        let Some(o) = find(r) else { continue };
        let cell = |i: usize| {
            let (before, now) = (value(o, i), r.tunnel[i]);
            let change = match (before, now) {
                (Some(b), Some(n)) if b != 0.0 && b.is_finite() && n.is_finite() => {
                    let pct = (n - b) / b.abs() * 100.0;
                    let better = match r.better {
                        Better::Higher => n >= b,
                        Better::Lower => n <= b,
                    };
                    // Within 3%: noise on a shared machine, not a verdict.
                    let word = if pct.abs() < 3.0 {
                        "same"
                    } else if better {
                        "better"
                    } else {
                        "**worse**"
                    };
                    format!("{pct:+.1}% {word}")
                }
                _ => String::new(),
            };
            (format!("{} → {}", num(before), num(now)), change)
        };
        let ((q, qc), (w, wc)) = (cell(0), cell(1));
        if qc.is_empty() && wc.is_empty() {
            continue;
        }
        let _ = writeln!(
            out,
            "| {} | {} ({}) | {q} | {qc} | {w} | {wc} |",
            r.scenario, r.metric, r.unit
        );
    }
    out
}
