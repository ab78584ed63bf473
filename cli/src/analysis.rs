//! The statistics behind reports and comparisons: power-law fits with confidence
//! intervals, bootstrap intervals of a ratio of medians, and the Mann–Whitney U test.

use baton_proto::stats::percentile;

/// `t = a·x^k`, fitted by least squares on log t against log x.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerLaw {
    pub a: f64,
    pub k: f64,
    /// Half the width of k's 95 % confidence interval; None with fewer than 3 points
    /// (two points fit any line exactly).
    pub k_ci95: Option<f64>,
    pub points: usize,
}

impl PowerLaw {
    /// Fits (x, t) pairs with x > 0 and t > 0 (others are left out); None without two
    /// distinct x.
    pub fn fit(points: &[(f64, f64)]) -> Option<PowerLaw> {
        let logs: Vec<(f64, f64)> =
            points.iter().filter(|(x, t)| *x > 0.0 && *t > 0.0).map(|(x, t)| (x.ln(), t.ln())).collect();
        let n = logs.len();
        let mean_x = logs.iter().map(|p| p.0).sum::<f64>() / n as f64;
        let mean_y = logs.iter().map(|p| p.1).sum::<f64>() / n as f64;
        let sxx: f64 = logs.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
        if n < 2 || sxx <= 1e-12 {
            return None;
        }
        let sxy: f64 = logs.iter().map(|(x, y)| (x - mean_x) * (y - mean_y)).sum();
        let k = sxy / sxx;
        let intercept = mean_y - k * mean_x;
        let k_ci95 = (n >= 3).then(|| {
            let residual: f64 = logs.iter().map(|(x, y)| (y - intercept - k * x).powi(2)).sum();
            let se = (residual / (n - 2) as f64 / sxx).sqrt();
            t_975(n - 2) * se
        });
        Some(PowerLaw { a: intercept.exp(), k, k_ci95, points: n })
    }

    pub fn at(&self, x: f64) -> f64 {
        self.a * x.powf(self.k)
    }

    /// `k = 1.98 ± 0.04` (or just `k = 1.98` without an interval).
    pub fn label(&self) -> String {
        match self.k_ci95 {
            Some(ci) => format!("k = {:.2} ± {:.2}", self.k, ci),
            None => format!("k = {:.2}", self.k),
        }
    }
}

/// Student's t, 97.5th percentile, for `dof` degrees of freedom (two-sided 95 %).
fn t_975(dof: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match dof {
        0 => f64::INFINITY,
        1..=30 => TABLE[dof - 1],
        31..=60 => 2.000 + (2.042 - 2.000) * (60 - dof) as f64 / 30.0,
        _ => 1.96,
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() { f64::NAN } else { percentile(&sorted, 0.5) }
}

/// The ratio of medians `b / a` and its bootstrap 95 % interval (percentile method,
/// `rounds` resamples of each side, a fixed seed so a report reads the same twice).
pub fn ratio_of_medians(a: &[f64], b: &[f64], rounds: usize) -> (f64, f64, f64) {
    let ratio = median(b) / median(a);
    let mut rng = SplitMix(0x9e37_79b9_7f4a_7c15);
    let mut resample = |v: &[f64]| -> f64 {
        let drawn: Vec<f64> = (0..v.len()).map(|_| v[rng.below(v.len())]).collect();
        median(&drawn)
    };
    let mut ratios: Vec<f64> = (0..rounds).map(|_| resample(b) / resample(a)).filter(|r| r.is_finite()).collect();
    ratios.sort_by(f64::total_cmp);
    if ratios.is_empty() {
        return (ratio, f64::NAN, f64::NAN);
    }
    (ratio, percentile(&ratios, 0.025), percentile(&ratios, 0.975))
}

/// The two-sided p-value of the Mann–Whitney U test (normal approximation with the tie
/// correction, and a continuity correction): how surprising samples this far apart would
/// be if both came from one distribution.
pub fn mann_whitney_p(a: &[f64], b: &[f64]) -> f64 {
    let (n1, n2) = (a.len() as f64, b.len() as f64);
    if a.is_empty() || b.is_empty() {
        return f64::NAN;
    }
    let mut all: Vec<(f64, bool)> = a.iter().map(|v| (*v, true)).chain(b.iter().map(|v| (*v, false))).collect();
    all.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Mid-ranks for ties.
    let (mut rank_sum_a, mut tie_term, mut i) = (0.0, 0.0, 0);
    while i < all.len() {
        let mut j = i;
        while j + 1 < all.len() && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        let tied = (j - i + 1) as f64;
        tie_term += tied.powi(3) - tied;
        rank_sum_a += rank * all[i..=j].iter().filter(|(_, in_a)| *in_a).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_a - n1 * (n1 + 1.0) / 2.0;
    let n = n1 + n2;
    let mean = n1 * n2 / 2.0;
    let variance = n1 * n2 / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0)));
    if variance <= 0.0 {
        return 1.0;
    }
    let z = ((u - mean).abs() - 0.5).max(0.0) / variance.sqrt();
    (2.0 * normal_sf(z)).min(1.0)
}

/// P(Z > z) for a standard normal Z (Abramowitz & Stegun 7.1.26; error below 1.5e-7).
fn normal_sf(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erfc = poly * (-x * x).exp();
    if x >= 0.0 { erfc / 2.0 } else { 1.0 - erfc / 2.0 }
}

/// A small, fixed-seed generator for resampling (SplitMix64).
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_square_law_is_fitted_with_k_2_and_a_narrow_interval() {
        // t = 3·x², with ±2 % multiplicative noise that does not depend on x.
        let noise = [1.02, 0.98, 1.01, 0.99, 1.0];
        let points: Vec<(f64, f64)> =
            [64.0, 128.0, 256.0, 512.0, 1024.0].iter().zip(noise).map(|(x, n)| (*x, 3.0 * x * x * n)).collect();
        let fit = PowerLaw::fit(&points).unwrap();
        assert!((fit.k - 2.0).abs() < 0.05, "{fit:?}");
        assert!(fit.k_ci95.unwrap() < 0.05, "{fit:?}");
        assert!((fit.at(100.0) / 30_000.0 - 1.0).abs() < 0.05);
        let exact = PowerLaw::fit(&[(1.0, 1.0), (2.0, 4.0)]).unwrap();
        assert_eq!((exact.k, exact.k_ci95), (2.0, None));
        assert!(PowerLaw::fit(&[(5.0, 1.0), (5.0, 2.0)]).is_none(), "one x fits nothing");
        assert_eq!(exact.label(), "k = 2.00");
    }

    #[test]
    fn mann_whitney_by_hand() {
        // Ranks of a: 1..4, then 5.5, 7.5, 9.5, 11.5 (ties with b): sum 44, U = 44 - 36 = 8;
        // mean 32; variance 64/12 · (17 - 4·6/240) = 90.13; z = (24 - 0.5)/9.494 = 2.475;
        // p = 2·P(Z > 2.475) = 0.01331 (scipy's asymptotic method computes the same).
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let b = [5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0];
        let p = mann_whitney_p(&a, &b);
        assert!((p - 0.01331).abs() < 1e-4, "{p}");
        assert!(mann_whitney_p(&a, &a) > 0.9);
        assert_eq!(mann_whitney_p(&[1.0, 1.0], &[1.0, 1.0]), 1.0);
    }

    #[test]
    fn the_bootstrap_interval_holds_the_true_ratio() {
        let a: Vec<f64> = (0..40).map(|i| 100.0 + (i % 7) as f64).collect();
        let b: Vec<f64> = a.iter().map(|v| v * 1.2).collect();
        let (ratio, lo, hi) = ratio_of_medians(&a, &b, 2000);
        assert!((ratio - 1.2).abs() < 1e-9);
        assert!(lo <= 1.2 && 1.2 <= hi && hi - lo < 0.1, "{lo} {hi}");
    }
}
