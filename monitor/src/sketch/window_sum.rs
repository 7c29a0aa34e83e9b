//! A workload's bytes on one path summed over a sliding window, against the workload's own
//! history of such windows: the measure behind every rule that must see a workload's jump over
//! its own habits whatever the destination (the S3 endpoint, the NAT as a whole).

use serde::{Deserialize, Serialize};

use super::ewma::Ewma;

/// Steps per window: the sum slides in steps of a sixth of the window.
pub const STEPS: u64 = 6;
/// Steps kept: the window and the late wait (at most one window long).
const KEPT: usize = 2 * STEPS as usize;
/// The peak's decay per step: half in 700 steps (about five days at 10-minute steps).
const PEAK_DECAY: f64 = 0.999;

/// When a window is unusual for its workload.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Never flag less than this, whatever the history.
    pub min_bytes: u64,
    /// Above the usual window plus this many mean absolute deviations...
    pub deviations: f64,
    /// ...and above this multiple of the largest window of the last days.
    pub peak_factor: f64,
    /// Complete windows (in steps) the workload needs before its history is trusted; until
    /// then `no_history_bytes` is the floor.
    pub history_steps: u64,
    pub no_history_bytes: u64,
}

/// One workload's sliding sum and what it has learnt of earlier windows.
#[derive(Clone, Serialize, Deserialize, Default)]
pub struct WindowSum {
    /// (step, bytes in it), the newest KEPT steps, at index step % KEPT.
    steps: [(u64, u64); KEPT],
    /// Newest step whose window has joined the baseline.
    learnt_until: u64,
    pub baseline: Ewma,
    /// The largest window of the last days, fading.
    pub peak: f64,
    /// No second finding before this step: one per window.
    quiet_until: u64,
}

impl WindowSum {
    fn sum_ending(&self, step: u64) -> u64 {
        let first = step.saturating_sub(STEPS - 1);
        self.steps
            .iter()
            .filter(|(s, _)| *s >= first && *s <= step)
            .fold(0u64, |acc, (_, b)| acc.saturating_add(*b))
    }

    /// Adds `bytes` at `step`; windows old enough that no late record (`late_steps`) will
    /// change them join the baseline first. Returns the window ending at `step` when it may
    /// be judged: `None` when the record is older than anything kept or a finding was made
    /// for this window already.
    pub fn add(&mut self, step: u64, late_steps: u64, bytes: u64) -> Option<u64> {
        let complete = step.saturating_sub(late_steps.min(STEPS));
        if self.learnt_until == 0 {
            self.learnt_until = complete;
        }
        let mut next = self
            .learnt_until
            .saturating_add(1)
            .max(complete.saturating_sub(STEPS));
        while next <= complete {
            let sum = self.sum_ending(next) as f64;
            self.baseline.update(sum);
            self.peak = (self.peak * PEAK_DECAY).max(sum);
            next += 1;
        }
        self.learnt_until = self.learnt_until.max(complete);
        let slot = &mut self.steps[(step % KEPT as u64) as usize];
        if slot.0 != step {
            if slot.0 > step {
                return None;
            }
            *slot = (step, 0);
        }
        slot.1 = slot.1.saturating_add(bytes);
        if step < self.quiet_until {
            return None;
        }
        Some(self.sum_ending(step))
    }

    /// The bytes a window must reach to be unusual for this workload.
    pub fn threshold(&self, t: &Thresholds) -> f64 {
        let b = self.baseline;
        let floor = if b.samples < t.history_steps {
            t.no_history_bytes.max(t.min_bytes)
        } else {
            t.min_bytes
        };
        (floor as f64)
            .max(b.mean + t.deviations * b.deviation)
            .max(t.peak_factor * self.peak)
    }

    /// A finding was made for the window ending at `step`: none again within a window.
    pub fn found(&mut self, step: u64) {
        self.quiet_until = step + STEPS;
    }

    /// "usually 20.0 MB ± 3.0 MB per window, at most 40.0 MB in the last days".
    pub fn usual_text(&self) -> String {
        let b = self.baseline;
        if b.samples == 0 {
            "no history yet".to_string()
        } else {
            format!(
                "usually {} ± {} per window over {} steps, at most {} in the last days",
                crate::rules::human_bytes(b.mean),
                crate::rules::human_bytes(b.deviation),
                b.samples,
                crate::rules::human_bytes(self.peak)
            )
        }
    }
}
