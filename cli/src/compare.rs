//! `baton compare A B`: per figure, B's median over A's with a bootstrap 95 % interval
//! and the Mann–Whitney U test; a figure worse by more than the threshold, with p below
//! 0.05, is a regression.

use crate::analysis::{mann_whitney_p, median, ratio_of_medians};
use crate::tidy::{Row, Unit, factors};
use serde_json::Value as Json;
use std::collections::BTreeMap;

/// Resamples per bootstrap interval.
const ROUNDS: usize = 2000;
/// Differences this improbable under "same distribution" count.
const ALPHA: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Regression,
    Improvement,
    Same,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Regression => "REGRESSION",
            Verdict::Improvement => "improvement",
            Verdict::Same => "same",
        }
    }
}

/// One figure of one point, measured on both sides.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub point: String,
    pub step: String,
    pub figure: String,
    pub unit: Unit,
    pub a_median: f64,
    pub b_median: f64,
    pub a_count: usize,
    pub b_count: usize,
    /// b / a and its bootstrap 95 % interval.
    pub ratio: f64,
    pub ci: (f64, f64),
    pub p: f64,
    pub verdict: Verdict,
}

/// Whether a larger value is worse: times and memory yes, throughput and MFU no.
fn higher_is_worse(unit: Unit) -> bool {
    matches!(unit, Unit::Ms | Unit::Bytes)
}

/// Figures matched by point (the values of the factors both sides varied), step and
/// figure; those measured on one side only are left out.
pub fn compare(a: &[Row], b: &[Row], threshold: f64) -> Vec<Comparison> {
    let mut both: Vec<Row> = a.to_vec();
    both.extend(b.iter().cloned());
    let factors = factors(&both);
    let key = |r: &Row| -> (String, String, String) {
        let point: BTreeMap<&String, &Json> = r.point.iter().filter(|(k, _)| factors.contains(k)).collect();
        (serde_json::to_string(&point).unwrap_or_default(), r.step.clone(), r.figure.clone())
    };
    let b_rows: BTreeMap<_, &Row> = b.iter().map(|r| (key(r), r)).collect();
    a.iter()
        .filter_map(|ra| {
            let rb = b_rows.get(&key(ra))?;
            let (ratio, lo, hi) = ratio_of_medians(&ra.samples, &rb.samples, ROUNDS);
            let p = mann_whitney_p(&ra.samples, &rb.samples);
            let worse = if higher_is_worse(ra.unit) { ratio > 1.0 + threshold } else { ratio < 1.0 - threshold };
            let better = if higher_is_worse(ra.unit) { ratio < 1.0 - threshold } else { ratio > 1.0 + threshold };
            let verdict = match (worse, better, p < ALPHA) {
                (true, _, true) => Verdict::Regression,
                (_, true, true) => Verdict::Improvement,
                _ => Verdict::Same,
            };
            Some(Comparison {
                point: ra.label(&factors),
                step: ra.step.clone(),
                figure: ra.figure.clone(),
                unit: ra.unit,
                a_median: median(&ra.samples),
                b_median: median(&rb.samples),
                a_count: ra.samples.len(),
                b_count: rb.samples.len(),
                ratio,
                ci: (lo, hi),
                p,
                verdict,
            })
        })
        .collect()
}

/// The comparisons as JSON (for `-o json`).
pub fn json(found: &[Comparison]) -> Json {
    Json::Array(
        found
            .iter()
            .map(|c| {
                serde_json::json!({
                    "point": c.point, "step": c.step, "figure": c.figure, "unit": c.unit.name(),
                    "aMedian": c.a_median, "bMedian": c.b_median, "aCount": c.a_count, "bCount": c.b_count,
                    "ratio": c.ratio, "ci95": [c.ci.0, c.ci.1], "p": c.p, "verdict": c.verdict.name(),
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::html::tests::train_job;
    use crate::tidy::rows;

    /// Six runs of one point whose steps take `ms`, each run off by up to ±2.5 %.
    fn run(ms: f64, seed: u64) -> Vec<Row> {
        let jobs: Vec<_> = (0..6)
            .map(|i| {
                let wobble = 1.0 + 0.05 * (((seed * 7 + i * 13) % 11) as f64 / 10.0 - 0.5);
                train_job(&format!("{seed}-{i}"), &[], ms * wobble, "cpu")
            })
            .collect();
        rows(&jobs)
    }

    #[test]
    fn a_20_percent_slowdown_is_a_regression_and_the_same_build_is_not() {
        let base = run(100.0, 1);
        let same = run(100.0, 2);
        let slow = run(120.0, 3);
        let step = |c: &[Comparison]| c.iter().find(|c| c.figure == "stepMs").cloned().unwrap();
        let regressed = step(&compare(&base, &slow, 0.1));
        assert_eq!(regressed.verdict, Verdict::Regression, "{regressed:?}");
        assert!(regressed.ci.0 > 1.1 && regressed.ci.1 < 1.3, "{regressed:?}");
        let unchanged = step(&compare(&base, &same, 0.1));
        assert_eq!(unchanged.verdict, Verdict::Same, "{unchanged:?}");
        let faster = step(&compare(&slow, &base, 0.1));
        assert_eq!(faster.verdict, Verdict::Improvement);
    }
}
