//! Shared helpers for the benchmark binaries: latency statistics, resident memory, and the
//! side-by-side table every benchmark prints (ours beside the Node reference, same run).

use std::time::Duration;

pub mod httpload;

/// Latency samples of one run.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    us: Vec<u64>,
}

impl Samples {
    /// An empty set with room for `n` samples.
    pub fn with_capacity(n: usize) -> Samples {
        Samples { us: Vec::with_capacity(n) }
    }
    /// Records one latency.
    pub fn push(&mut self, d: Duration) {
        self.us.push(d.as_micros() as u64);
    }
    /// Merges another set.
    pub fn extend(&mut self, other: Samples) {
        self.us.extend(other.us);
    }
    /// The `p`-th percentile (0..=100) in microseconds.
    pub fn percentile_us(&mut self, p: f64) -> u64 {
        if self.us.is_empty() {
            return 0;
        }
        self.us.sort_unstable();
        let idx = ((p / 100.0) * (self.us.len() - 1) as f64).round() as usize;
        self.us[idx.min(self.us.len() - 1)]
    }
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.us.len()
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.us.is_empty()
    }
}

/// Resident set size of a process in KiB (Linux `/proc/<pid>/status` `VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// One row of a comparison table.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub metric: String,
    /// Our figure.
    pub ours: f64,
    /// The Node reference's figure, measured in the same run.
    pub reference: f64,
    /// Unit, e.g. "req/s".
    pub unit: String,
    /// True when higher is better (ratio = ours / reference), else reference / ours.
    pub higher_is_better: bool,
}

/// Prints rows as a Markdown table with the speed-up column.
pub fn print_table(title: &str, rows: &[Row]) {
    println!("\n### {title}\n");
    println!("| metric | grenache-rs | Node reference | ratio |");
    println!("|---|---:|---:|---:|");
    for r in rows {
        let ratio = if r.higher_is_better { r.ours / r.reference } else { r.reference / r.ours };
        println!("| {} | {:.1} {} | {:.1} {} | {:.1}x |", r.metric, r.ours, r.unit, r.reference, r.unit, ratio);
    }
}
