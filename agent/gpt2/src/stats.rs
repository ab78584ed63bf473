//! Summaries of timings: count, mean, percentiles (linear interpolation, as numpy), min, max.

use baton_proto::stats::summarize;
use baton_proto::v1::PhaseStats;

pub fn phase_stats(ms: &[f64]) -> PhaseStats {
    summarize(ms)
        .map(|s| PhaseStats {
            count: s.count as u64,
            mean_ms: s.mean,
            p10_ms: s.p10,
            p50_ms: s.p50,
            p90_ms: s.p90,
            p99_ms: s.p99,
            min_ms: s.min,
            max_ms: s.max,
            samples_ms: ms.to_vec(),
        })
        .unwrap_or_default()
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
