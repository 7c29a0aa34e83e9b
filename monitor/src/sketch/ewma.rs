//! A learnt baseline in constant memory, for rules that judge a workload against its own
//! history.

use serde::{Deserialize, Serialize};

/// An exponentially weighted mean and mean absolute deviation: robust enough to a few
/// outliers, O(1) memory, and it follows a workload whose habits change.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Ewma {
    pub samples: u64,
    pub mean: f64,
    pub deviation: f64,
}

impl Ewma {
    const ALPHA: f64 = 0.02;

    pub fn update(&mut self, x: f64) {
        if self.samples == 0 {
            self.mean = x;
            self.deviation = 0.0;
        } else {
            // Early samples weigh more so the baseline settles quickly.
            let a = Self::ALPHA.max(1.0 / (self.samples as f64 + 1.0));
            let d = (x - self.mean).abs();
            self.mean += a * (x - self.mean);
            self.deviation += a * (d - self.deviation);
        }
        self.samples += 1;
    }
}
