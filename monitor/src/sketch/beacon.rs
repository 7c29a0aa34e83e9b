//! Beacon scoring after RITA: how regular a series of connection starts and sizes is, from 0
//! (irregular) to 1 (a timer sending the same thing).

/// Bowley's quartile skewness mapped to a regularity score: 1 for symmetric, 0 for fully
/// skewed. Like RITA, a spread under 10 units or a median sitting on a quartile counts as
/// symmetric.
fn bowley_score(sorted: &[f64]) -> f64 {
    let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
    let (q1, q2, q3) = (q(0.25), q(0.5), q(0.75));
    if q3 - q1 < 10.0 || q2 == q1 || q2 == q3 {
        return 1.0;
    }
    1.0 - ((q1 + q3 - 2.0 * q2) / (q3 - q1)).abs()
}

/// (median - MAD) / median: 1 when every value equals the median.
fn mad_score(sorted: &[f64]) -> f64 {
    let median = sorted[sorted.len() / 2];
    if median <= 0.0 {
        return 0.0;
    }
    let mut dev: Vec<f64> = sorted.iter().map(|x| (x - median).abs()).collect();
    dev.sort_by(f64::total_cmp);
    let mad = dev[dev.len() / 2];
    ((median - mad) / median).max(0.0)
}

/// The beacon score of a series: the mean of a timing score (inter-connection gaps) and a
/// size score (bytes sent per connection), each the mean of the Bowley and MAD scores.
pub fn beacon_score(starts: &[u64], sizes: &[u64]) -> Option<(f64, f64)> {
    let mut starts = starts.to_vec();
    starts.sort_unstable();
    let mut gaps: Vec<f64> = starts.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
    if gaps.len() < 3 {
        return None;
    }
    gaps.sort_by(f64::total_cmp);
    let mut sizes: Vec<f64> = sizes.iter().map(|s| *s as f64).collect();
    sizes.sort_by(f64::total_cmp);
    let timing = (bowley_score(&gaps) + mad_score(&gaps)) / 2.0;
    let size = (bowley_score(&sizes) + mad_score(&sizes)) / 2.0;
    Some(((timing + size) / 2.0, gaps[gaps.len() / 2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beacon_scores() {
        // A 300-s beacon with a few seconds of jitter and constant sizes scores near 1.
        let starts: Vec<u64> = (0..12).map(|i| 10_000 + i * 300 + (i * 7) % 11).collect();
        let sizes = vec![512; 12];
        let (score, period) = beacon_score(&starts, &sizes).unwrap();
        assert!(score > 0.95, "{score}");
        assert!((295.0..=305.0).contains(&period));
        // Irregular gaps and sizes score low.
        let starts = [0, 40, 45, 900, 2_000, 2_010, 7_000, 7_300, 12_000, 12_001];
        let sizes = [
            500, 90_000, 3_000, 12, 700_000, 4_000, 80, 55_000, 1_200, 9_999,
        ];
        let (score, _) = beacon_score(&starts, &sizes).unwrap();
        assert!(score < 0.6, "{score}");
        assert_eq!(beacon_score(&[1, 2, 3], &[1, 1, 1]), None);
    }
}
