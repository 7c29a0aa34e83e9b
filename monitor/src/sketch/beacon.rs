//! Beacon scoring: how much a series of connection starts looks like a timer, tolerant of the
//! jitter C2 frameworks add to their sleep and of records delivered out of order.

/// Starts closer together than this are one contact (a client opening two connections at once).
const SAME_CONTACT_SECONDS: u64 = 5;

/// How periodic a series of connection starts is.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Periodicity {
    /// Gaps between contacts that were judged.
    pub gaps: usize,
    /// The median gap, seconds.
    pub period: f64,
    /// The share of gaps within half a period of the median: 1 for a timer, also with up to
    /// 50 % jitter either way or sleeps shortened by up to half; about 0.35 for connections
    /// at random (Poisson) times and lower for bursts.
    pub in_band: f64,
    /// Median absolute deviation of the gaps over the median gap: how tight the timer is.
    pub spread: f64,
}

fn median(sorted: &[f64]) -> f64 {
    sorted[sorted.len() / 2]
}

/// The periodicity of `starts` (any order, seconds); `None` with fewer than two contacts.
pub fn periodicity(starts: &[u64]) -> Option<Periodicity> {
    let mut starts = starts.to_vec();
    starts.sort_unstable();
    let mut contacts: Vec<u64> = Vec::with_capacity(starts.len());
    for s in starts {
        match contacts.last() {
            Some(last) if s.saturating_sub(*last) < SAME_CONTACT_SECONDS => {}
            _ => contacts.push(s),
        }
    }
    let mut gaps: Vec<f64> = contacts.windows(2).map(|w| (w[1] - w[0]) as f64).collect();
    if gaps.is_empty() {
        return None;
    }
    gaps.sort_by(f64::total_cmp);
    let period = median(&gaps);
    let in_band = gaps
        .iter()
        .filter(|g| (**g - period).abs() <= 0.5 * period)
        .count() as f64
        / gaps.len() as f64;
    let mut deviations: Vec<f64> = gaps.iter().map(|g| (g - period).abs()).collect();
    deviations.sort_by(f64::total_cmp);
    let spread = if period > 0.0 {
        median(&deviations) / period
    } else {
        1.0
    };
    Some(Periodicity {
        gaps: gaps.len(),
        period,
        in_band,
        spread,
    })
}

/// How alike the sizes are: 1 - MAD/median, 0 when they vary by their median or more.
pub fn size_regularity(sizes: &[u64]) -> f64 {
    if sizes.is_empty() {
        return 0.0;
    }
    let mut v: Vec<f64> = sizes.iter().map(|s| *s as f64).collect();
    v.sort_by(f64::total_cmp);
    let m = median(&v);
    if m <= 0.0 {
        return 0.0;
    }
    let mut dev: Vec<f64> = v.iter().map(|x| (x - m).abs()).collect();
    dev.sort_by(f64::total_cmp);
    (1.0 - median(&dev) / m).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so the tests need no randomness crate.
    struct Lcg(u64);
    impl Lcg {
        fn unit(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn a_timer_scores_one_with_jitter_either_way() {
        let mut rng = Lcg(7);
        for jitter in [0.0, 0.1, 0.3, 0.5] {
            // Sleeps shortened by up to `jitter` (Cobalt Strike's way).
            let mut t = 1_000.0;
            let starts: Vec<u64> = (0..16)
                .map(|_| {
                    let s = t as u64;
                    t += 300.0 * (1.0 - jitter * rng.unit());
                    s
                })
                .collect();
            let p = periodicity(&starts).unwrap();
            assert_eq!(p.gaps, 15);
            assert!(p.in_band >= 0.99, "jitter {jitter}: {p:?}");
            assert!(p.period >= 150.0 && p.period <= 300.0, "{p:?}");
        }
        // Out of order and with a doubled connection per contact: the same.
        let mut starts: Vec<u64> = (0..12).map(|i| 5_000 + i * 600).collect();
        starts.extend((0..12).map(|i| 5_002 + i * 600));
        starts.reverse();
        let p = periodicity(&starts).unwrap();
        assert_eq!((p.gaps, p.period, p.in_band), (11, 600.0, 1.0));
        assert_eq!(p.spread, 0.0);
    }

    #[test]
    fn random_and_bursty_times_score_low() {
        let mut rng = Lcg(11);
        // Poisson arrivals: exponential gaps.
        let mut t = 0.0;
        let starts: Vec<u64> = (0..200)
            .map(|_| {
                t += -300.0 * (1.0 - rng.unit()).ln();
                t as u64
            })
            .collect();
        let p = periodicity(&starts).unwrap();
        assert!(p.in_band < 0.5, "{p:?}");
        // Sessions: a few connections a minute apart, hours between sessions.
        let mut starts = Vec::new();
        for session in 0..12u64 {
            for k in 0..(1 + session % 5) {
                starts.push(session * 7_000 + (session * 131) % 900 + k * 60);
            }
        }
        let p = periodicity(&starts).unwrap();
        assert!(p.in_band < 0.8, "{p:?}");
    }

    #[test]
    fn sizes() {
        assert_eq!(size_regularity(&[500; 10]), 1.0);
        assert!(size_regularity(&[10, 90_000, 300, 7, 1_000_000, 45]) < 0.2);
        assert_eq!(size_regularity(&[]), 0.0);
    }
}
