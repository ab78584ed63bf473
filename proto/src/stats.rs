//! Summaries of timings (count, mean, percentiles, min, max): the one definition every
//! report uses.

/// What a series of measurements comes to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub p10: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

/// The summary of `values` in any order; None when there are none.
pub fn summarize(values: &[f64]) -> Option<Summary> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some(Summary {
        count: sorted.len(),
        mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        p10: percentile(&sorted, 0.1),
        p50: percentile(&sorted, 0.5),
        p90: percentile(&sorted, 0.9),
        p99: percentile(&sorted, 0.99),
        min: sorted[0],
        max: sorted[sorted.len() - 1],
    })
}

/// The q-th quantile (0..=1) of sorted values, interpolating linearly between neighbours
/// (numpy's default). Panics on an empty slice.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    let rank = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        assert_eq!(super::percentile(&v, 0.5), 3.0);
        assert!((super::percentile(&v, 0.9) - 7.6).abs() < 1e-12); // numpy.percentile(v, 90)
        assert_eq!(super::percentile(&[7.0], 0.99), 7.0);
        let s = super::summarize(&[10.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.count, s.mean, s.p50, s.min, s.max), (5, 4.0, 3.0, 1.0, 10.0));
        assert!(super::summarize(&[]).is_none());
    }
}
