//! Summaries of timings: count, mean, percentiles (linear interpolation, as numpy), min, max.

use baton_proto::stats::percentile;
use baton_proto::v1::PhaseStats;

pub fn phase_stats(ms: &[f64]) -> PhaseStats {
    if ms.is_empty() {
        return PhaseStats::default();
    }
    let mut sorted = ms.to_vec();
    sorted.sort_by(f64::total_cmp);
    PhaseStats {
        count: sorted.len() as u64,
        mean_ms: sorted.iter().sum::<f64>() / sorted.len() as f64,
        p50_ms: percentile(&sorted, 0.5),
        p90_ms: percentile(&sorted, 0.9),
        p99_ms: percentile(&sorted, 0.99),
        min_ms: sorted[0],
        max_ms: sorted[sorted.len() - 1],
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy() {
        let s = phase_stats(&[4.0, 1.0, 3.0, 2.0, 10.0]);
        assert_eq!((s.count, s.min_ms, s.max_ms), (5, 1.0, 10.0));
        assert_eq!(s.mean_ms, 4.0);
        assert_eq!(s.p50_ms, 3.0);
        assert!((s.p90_ms - 7.6).abs() < 1e-12); // numpy.percentile([1,2,3,4,10], 90)
        assert!((s.p99_ms - 9.76).abs() < 1e-12);
        assert_eq!(phase_stats(&[]).count, 0);
    }
}
