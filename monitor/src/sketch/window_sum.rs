//! A workload's bytes on one path summed over a sliding window, against the workload's own
//! history of such windows: the measure behind every rule that must see a workload's jump over
//! its own habits whatever the destination (the S3 endpoint, the NAT as a whole).

use serde::{Deserialize, Serialize};

use super::ewma::Ewma;

/// Steps per window: the sum slides in steps of a sixth of the window.
pub const STEPS: u64 = 6;
/// Steps kept: the window judged, the window before it and the late wait (at most one
/// window long), so the newest window that may join the baseline can still be summed.
const KEPT: usize = 3 * STEPS as usize;
/// The peak's decay per step: half in 700 steps (about five days at 10-minute steps).
const PEAK_DECAY: f64 = 0.999;

/// Days of window peaks kept: a week and the current day.
const DAYS: usize = 8;

/// When a window is unusual for its workload.
#[derive(Clone, Copy, Debug)]
pub struct Thresholds {
    /// Never flag less than this, whatever the history.
    pub min_bytes: u64,
    /// Above the usual window plus this many mean absolute deviations...
    pub deviations: f64,
    /// ...and above this multiple of the largest window of the last days.
    pub peak_factor: f64,
    /// Steps the workload must have been known (or windows it must have sent in) before its
    /// history is trusted; until then `no_history_bytes` is the floor.
    pub history_steps: u64,
    pub no_history_bytes: u64,
    /// Steps in a day: the unit of the second bar.
    pub steps_per_day: u64,
    /// The second bar, for a workload known a day or more: this multiple of its largest
    /// window on the days before today (up to a week), at least `min_bytes`. The first bar
    /// follows a ramp up (each hour a little over the last raises the mean, the deviation
    /// and the peak); this one does not, because today's windows are not in it.
    pub earlier_days_factor: f64,
}

/// Which bar a window crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bar {
    /// The workload's usual window, its deviation and its recent peak.
    Habit,
    /// Its largest window on the days before today.
    EarlierDays,
}

/// A window found unusual.
#[derive(Clone, Copy, Debug)]
pub struct Unusual {
    pub sum: u64,
    pub threshold: f64,
    pub bar: Bar,
    /// The largest window on the days before today, when the workload was known then.
    pub earlier_days_peak: Option<u64>,
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
    /// The step the workload was first seen on any path the rule watches (0: not yet).
    first_step: u64,
    /// (day, largest window learnt that day), at index day % DAYS.
    day_peaks: [(u64, u64); DAYS],
    /// No finding against the earlier days' bar before this day: one a day, and none on a
    /// day the habit's bar already found (the same rise told twice).
    earlier_days_quiet_until: u64,
}

impl WindowSum {
    fn sum_ending(&self, step: u64) -> u64 {
        let first = step.saturating_sub(STEPS - 1);
        self.steps
            .iter()
            .filter(|(s, _)| *s >= first && *s <= step)
            .fold(0u64, |acc, (_, b)| acc.saturating_add(*b))
    }

    /// The workload was seen at `step` (on any path the rule watches): its history is
    /// counted from the first such step, so a workload that has been quiet on this path for
    /// days is judged against that quiet, not as a stranger.
    pub fn seen(&mut self, step: u64) {
        if self.first_step == 0 {
            self.first_step = step.max(1);
        }
    }

    /// Adds `bytes` at `step`; windows that end a whole window and the late wait
    /// (`late_steps`) before it join the baseline first: old enough that no late record will
    /// change them, and none shares a step with the window judged, so an upload in progress
    /// never teaches the baseline to expect itself. Returns the window ending at `step` when it may
    /// be judged: `None` when the record is older than anything kept or a finding was made
    /// for this window already.
    fn add(&mut self, step: u64, late_steps: u64, bytes: u64, steps_per_day: u64) -> Option<u64> {
        self.seen(step);
        let newest = self.steps.iter().map(|(s, _)| *s).max().unwrap_or(0);
        if step.saturating_add(KEPT as u64) <= newest {
            return None;
        }
        let complete = step.saturating_sub(STEPS + late_steps.min(STEPS));
        if self.learnt_until == 0 {
            self.learnt_until = complete;
        }
        let mut next = self
            .learnt_until
            .saturating_add(1)
            .max(complete.saturating_sub(STEPS));
        while next <= complete {
            let sum = self.sum_ending(next);
            self.baseline.update(sum as f64);
            self.peak = (self.peak * PEAK_DECAY).max(sum as f64);
            let day = next / steps_per_day.max(1);
            let slot = &mut self.day_peaks[(day % DAYS as u64) as usize];
            if slot.0 != day {
                *slot = (day, 0);
            }
            slot.1 = slot.1.max(sum);
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

    /// Adds `bytes` at `step` and judges the window ending there against both bars; a window
    /// found is not judged again, and the earlier days' bar is quiet for the rest of the day.
    pub fn judge(
        &mut self,
        step: u64,
        late_steps: u64,
        bytes: u64,
        t: &Thresholds,
    ) -> Option<Unusual> {
        let sum = self.add(step, late_steps, bytes, t.steps_per_day)?;
        let habit = self.threshold(t, step);
        let earlier_days_peak = self.earlier_days_peak(step, t.steps_per_day);
        let day = step / t.steps_per_day.max(1);
        let earlier = earlier_days_peak
            .filter(|_| day >= self.earlier_days_quiet_until)
            .map(|p| (t.min_bytes as f64).max(t.earlier_days_factor * p as f64));
        let (threshold, bar) = match earlier {
            Some(e) if e < habit => (e, Bar::EarlierDays),
            _ => (habit, Bar::Habit),
        };
        if (sum as f64) < threshold {
            return None;
        }
        self.found(step, t.steps_per_day);
        // What was found is the workload's peak from now on: the windows of the same rise
        // that follow before this one joins the baseline are the same story, and only one
        // several times larger is news.
        self.peak = self.peak.max(sum as f64);
        Some(Unusual {
            sum,
            threshold,
            bar,
            earlier_days_peak,
        })
    }

    /// The largest window on the days before `step`'s (up to a week back), once the
    /// workload has been known a whole day.
    fn earlier_days_peak(&self, step: u64, steps_per_day: u64) -> Option<u64> {
        let per_day = steps_per_day.max(1);
        if self.first_step == 0 || step.saturating_sub(self.first_step) < per_day {
            return None;
        }
        let today = step / per_day;
        Some(
            self.day_peaks
                .iter()
                .filter(|(d, _)| *d < today && *d + DAYS as u64 > today)
                .map(|(_, p)| *p)
                .max()
                .unwrap_or(0),
        )
    }

    /// The bytes a window ending at `step` must reach to be unusual for this workload's habit.
    pub fn threshold(&self, t: &Thresholds, step: u64) -> f64 {
        let b = self.baseline;
        // Known long enough that complete windows of it have joined the baseline (a window,
        // then a window and the late wait before it is learnt): until then the baseline holds
        // only the partial windows of the daemon's or the workload's first hours.
        let known = self.first_step > 0
            && step.saturating_sub(self.first_step) >= t.history_steps.max(3 * STEPS);
        let floor = if !known {
            t.no_history_bytes.max(t.min_bytes)
        } else {
            t.min_bytes
        };
        (floor as f64)
            .max(b.mean + t.deviations * b.deviation)
            .max(t.peak_factor * self.peak)
    }

    /// A finding was made for the window ending at `step` (by this bar or another measure of
    /// the same rule): none again within a window, none against the earlier days today.
    pub fn found(&mut self, step: u64, steps_per_day: u64) {
        self.quiet_until = self.quiet_until.max(step + STEPS);
        self.earlier_days_quiet_until = step / steps_per_day.max(1) + 1;
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

    /// What the window was judged against, for a finding's summary.
    pub fn judged_text(&self, u: &Unusual) -> String {
        match (u.bar, u.earlier_days_peak) {
            (Bar::EarlierDays, Some(p)) => format!(
                "{}; at most {} in any window of the days before today, {:.0}x less",
                self.usual_text(),
                crate::rules::human_bytes(p as f64),
                u.sum as f64 / (p.max(1) as f64)
            ),
            _ => self.usual_text(),
        }
    }
}
