//! Small statistics and the result table.

use std::time::Duration;

pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Sorted copy.
fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

pub fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    let m = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[m - 1] + s[m]) / 2.0
    } else {
        s[m]
    }
}

pub fn percentile(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((s.len() as f64 - 1.0) * p / 100.0).round() as usize;
    s[i.min(s.len() - 1)]
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// `med [min–max]`.
pub fn spread(v: &[f64], decimals: usize) -> String {
    if v.len() == 1 {
        return format!("{:.*}", decimals, v[0]);
    }
    format!(
        "{:.*} [{:.*}–{:.*}]",
        decimals,
        median(v),
        decimals,
        min(v),
        decimals,
        max(v)
    )
}

/// Which way a target points.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// The value must be at most this.
    AtMost(f64),
    /// The value must be at least this.
    AtLeast(f64),
    /// Reported only, but any error fails.
    NoErrors,
}

impl Target {
    pub fn met(self, value: f64) -> bool {
        match self {
            Target::AtMost(t) => value <= t,
            Target::AtLeast(t) => value >= t,
            Target::NoErrors => value == 0.0,
        }
    }

    /// The regression guard of `--quick`: twice as far from the goal as the target
    /// allows (a ratio below half its target, a time or size above twice its limit).
    pub fn guard_ok(self, value: f64) -> bool {
        match self {
            Target::AtMost(t) => value <= 2.0 * t,
            Target::AtLeast(t) => value >= t / 2.0,
            Target::NoErrors => value == 0.0,
        }
    }

    pub fn text(self, unit: &str) -> String {
        match self {
            Target::AtMost(t) => format!("≤ {t}{unit}"),
            Target::AtLeast(t) => format!("≥ {t}{unit}"),
            Target::NoErrors => "no errors".into(),
        }
    }
}

/// One row of the result table.
pub struct Row {
    pub figure: String,
    pub value: String,
    pub reference: String,
    /// What is compared with the target (a ratio, seconds, MiB or an error count).
    pub judged: f64,
    pub judged_text: String,
    /// What `--quick` judges, if not `judged`: for throughput, the best rep. A regression
    /// slows every rep; a shared machine slows some (a 2-vCPU VM under load made single
    /// output reps 5× slower while the others ran at full speed).
    pub guarded: Option<f64>,
    pub target: Target,
    pub unit: &'static str,
}

pub fn print_table(rows: &[Row], quick: bool) -> bool {
    println!();
    println!("| figure | value | reference (same run) | ratio / result | target | met? |");
    println!("|---|---|---|---|---|---|");
    let mut ok = true;
    for r in rows {
        let met = r.target.met(r.judged);
        let guard = r.target.guard_ok(r.guarded.unwrap_or(r.judged));
        ok &= if quick { guard } else { true };
        let verdict = match (met, guard) {
            (true, _) => "yes",
            (false, true) => "no",
            (false, false) => "**no (below half the target)**",
        };
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.figure,
            r.value,
            r.reference,
            r.judged_text,
            r.target.text(r.unit),
            verdict
        );
    }
    ok
}
