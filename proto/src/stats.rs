//! Percentiles of timings, the one definition every report uses.

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
    }
}
