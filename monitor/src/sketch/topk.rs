//! The heaviest workloads and destinations in bounded memory, for the only metrics that carry
//! addresses.

use prometheus::IntGaugeVec;

use crate::metrics::TOP_K;

/// The heavy hitters of a stream in bounded memory (the Misra-Gries algorithm with batched
/// decrements): at most `capacity` counters; when they are full, the median count is taken
/// off every counter and those left at zero are dropped. Every key whose total exceeds
/// total/(capacity/2) stays, each estimate is low by at most the decrements so far, and an
/// update costs O(1) amortised however many distinct keys pass.
#[derive(Clone, Debug)]
pub struct TopK {
    capacity: usize,
    counters: rustc_hash::FxHashMap<std::net::IpAddr, u64>,
    /// Taken off every surviving counter so far: the most any estimate is low by.
    decremented: u64,
}

impl TopK {
    pub fn new(capacity: usize) -> Self {
        TopK {
            capacity: capacity.max(2),
            counters: Default::default(),
            decremented: 0,
        }
    }

    pub fn add(&mut self, key: std::net::IpAddr, amount: u64) {
        if let Some(c) = self.counters.get_mut(&key) {
            // Amounts are bytes from the input: a record may claim nearly 2^64 of them.
            *c = c.saturating_add(amount);
            return;
        }
        if self.counters.len() >= self.capacity {
            let mut counts: Vec<u64> = self.counters.values().copied().collect();
            let mid = counts.len() / 2;
            let (_, median, _) = counts.select_nth_unstable(mid);
            let cut = (*median).max(1);
            self.counters.retain(|_, c| {
                *c = c.saturating_sub(cut);
                *c > 0
            });
            self.decremented = self.decremented.saturating_add(cut);
        }
        self.counters.insert(key, amount);
    }

    /// The `n` largest, largest first: (key, estimated total, how much it may be low by).
    pub fn top(&self, n: usize) -> Vec<(std::net::IpAddr, u64, u64)> {
        let mut v: Vec<_> = self
            .counters
            .iter()
            .map(|(k, c)| (*k, *c, self.decremented))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// Replaces `gauge`'s series with the current top `TOP_K`.
    pub fn export(&self, gauge: &IntGaugeVec) {
        gauge.reset();
        for (key, count, _) in self.top(TOP_K) {
            gauge
                .with_label_values(&[&key.to_string()])
                .set(count.min(i64::MAX as u64) as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn top_k_keeps_the_heavy_hitters_in_bounded_memory() {
        let mut t = TopK::new(20);
        // Two heavy destinations among 10,000 light ones.
        for i in 0..10_000u32 {
            t.add(std::net::IpAddr::V4((0x0b00_0000 + i).into()), 1_000);
            if i.is_multiple_of(10) {
                t.add("203.0.113.9".parse().unwrap(), 50_000);
                t.add("198.51.100.7".parse().unwrap(), 20_000);
            }
        }
        let top = t.top(2);
        assert_eq!(top[0].0, "203.0.113.9".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(
            top[1].0,
            "198.51.100.7".parse::<std::net::IpAddr>().unwrap()
        );
        // Estimates are low by at most the recorded decrements.
        assert!(top[0].1 <= 50_000_000 && top[0].1 + top[0].2 >= 50_000_000);
        assert!(t.counters.len() <= 20);
        let m = Metrics::new();
        t.export(&m.top_remotes);
        let text = m.render();
        assert_eq!(
            text.matches("egresswatch_top_remote_egress_bytes{").count(),
            TOP_K
        );
    }
}
