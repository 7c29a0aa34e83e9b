//! s3_endpoint_upload: a workload's bytes to S3 through the gateway endpoint in an hour,
//! against its own history. Flow logs cannot name the bucket, so an upload to an attacker's
//! bucket shows only as a jump in what the workload sends on this path, the decision
//! record's residual exfiltration route past the NAT. Two windows are judged: an hour for a
//! burst, six hours for an upload paced under the hour's floor.

use serde::{Deserialize, Serialize};

use super::{hours, human_bytes, restore, Rule, SavedState, Snapshot};
use crate::classify::{Flow, Path};
use crate::finding::{Evidence, Finding, Severity};
use crate::sketch::bounded::BoundedMap;
use crate::sketch::network::key_of;
use crate::sketch::window_sum::{Thresholds, Unusual, WindowSum, STEPS};

/// Bytes one workload sends through the S3 gateway endpoint in a sliding hour.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct S3EndpointUploadRule {
    pub enabled: bool,
    /// The span summed, in seconds: the sum slides in steps of a sixth of it.
    pub window_seconds: u64,
    /// Never flag less than this many bytes in one window. Small on purpose: the benign
    /// profile it serves is a workload that writes a few hundred megabytes in an hour with
    /// no history to say so; what a workload usually writes is the multiple's to judge, so a
    /// 100x jump over a quiet workload's habit is found however small the habit.
    pub min_bytes: u64,
    /// Flag above the workload's usual window plus this many mean absolute deviations...
    pub deviations: f64,
    /// ...and above this multiple of its largest window of the last days (which fades by
    /// half in about five days). Serves the benign profile of datasets of gigabytes saved
    /// now and then: the last one vouches for the next of its size.
    pub peak_factor: f64,
    /// Seconds a step waits for late records before its sum joins the baseline: AWS
    /// delivers flow logs minutes late, so a sum judged at once would teach the baseline
    /// that windows are smaller than they are.
    pub late_seconds: u64,
    /// History (event-time seconds of complete windows) a workload needs before `min-bytes`
    /// alone is its floor. A workload first seen (a new Studio app, a daemon with no state)
    /// is judged against `no-history-bytes` meanwhile: the benign profile is a pipeline
    /// that writes gigabytes an hour from its first minute.
    pub history_seconds: u64,
    pub no_history_bytes: u64,
    /// The second, longer window, judged the same way against the workload's own windows of
    /// that length. An upload paced just under `min-bytes` an hour (450 MB an hour for four
    /// hours) is under the hour's floor every hour and over this window's.
    pub long_window_seconds: u64,
    /// The long window's floor: what an ordinary afternoon of reads and small writes sends
    /// in `long-window-seconds`, with room to spare.
    pub long_min_bytes: u64,
    /// Also flag a window above this multiple of the workload's largest window of the same
    /// length on the days before today (up to a week): the bar a ramp does not raise, since a
    /// workload that adds a little each hour teaches the hour's bar to expect it.
    pub earlier_days_factor: f64,
}

impl Default for S3EndpointUploadRule {
    fn default() -> Self {
        S3EndpointUploadRule {
            enabled: true,
            window_seconds: 3_600,
            min_bytes: 500_000_000,
            deviations: 6.0,
            peak_factor: 2.5,
            late_seconds: 1_800,
            history_seconds: 3_600,
            no_history_bytes: 8_000_000_000,
            long_window_seconds: 6 * 3_600,
            long_min_bytes: 1_200_000_000,
            earlier_days_factor: 10.0,
        }
    }
}

pub struct S3EndpointUpload {
    rule: S3EndpointUploadRule,
    state: S3State,
    /// Step length and thresholds of the hour's window and of the long one, from the rule's
    /// settings once: every record through the NAT passes here.
    hour: (u64, Thresholds),
    long: (u64, Thresholds),
}

#[derive(Serialize, Deserialize)]
struct S3State {
    workloads: BoundedMap<u64, S3Windows>,
}

/// One workload's two windows on the S3 path.
#[derive(Serialize, Deserialize, Default)]
struct S3Windows {
    hour: WindowSum,
    long: WindowSum,
}

impl Snapshot for S3State {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.workloads.set_capacity(configured.workloads.capacity());
        Ok(())
    }
}

impl S3EndpointUpload {
    pub fn new(rule: S3EndpointUploadRule, entries: usize) -> Self {
        S3EndpointUpload {
            hour: Self::measure(&rule, false),
            long: Self::measure(&rule, true),
            rule,
            state: S3State {
                workloads: BoundedMap::new(entries),
            },
        }
    }

    /// Step length and thresholds of the hour's window (`long == false`) or the long one.
    fn measure(rule: &S3EndpointUploadRule, long: bool) -> (u64, Thresholds) {
        let (window, min_bytes) = if long {
            (rule.long_window_seconds, rule.long_min_bytes)
        } else {
            (rule.window_seconds, rule.min_bytes)
        };
        let step_seconds = (window / STEPS).max(1);
        // The no-history floor is the hour's scaled to the window, and holds until the
        // workload has been known for a whole window (at least `history-seconds`).
        let scale = window as f64 / rule.window_seconds.max(1) as f64;
        let thresholds = Thresholds {
            min_bytes,
            deviations: rule.deviations,
            peak_factor: rule.peak_factor,
            history_steps: rule.history_seconds.max(window).div_ceil(step_seconds),
            no_history_bytes: ((rule.no_history_bytes as f64 * scale) as u64).max(min_bytes),
            steps_per_day: (86_400 / step_seconds).max(1),
            earlier_days_factor: rule.earlier_days_factor,
        };
        (step_seconds, thresholds)
    }
}

impl Rule for S3EndpointUpload {
    fn state_evictions(&self) -> u64 {
        self.state.workloads.evicted
    }

    fn name(&self) -> &'static str {
        "s3_endpoint_upload"
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        let Some(w) = f.workload else { return };
        let ((hour_step, hour), (long_step, long)) = (self.hour, self.long);
        if f.path != Path::S3Endpoint || !f.outbound {
            // The workload's history on the S3 path starts when it is first seen on any
            // path: one that wrote nothing to S3 for days is judged against that, not as a
            // stranger under the no-history floor.
            if f.path == Path::NatEgress
                && f.outbound
                && self.state.workloads.get(&key_of(w)).is_none()
            {
                let s = self
                    .state
                    .workloads
                    .touch(key_of(w), f.end, S3Windows::default);
                s.hour.seen(f.end / hour_step);
                s.long.seen(f.end / long_step);
            }
            return;
        }
        let late = self.rule.late_seconds;
        let s = self
            .state
            .workloads
            .touch(key_of(w), f.end, S3Windows::default);
        let (hour_at, long_at) = (f.end / hour_step, f.end / long_step);
        let found_hour = s
            .hour
            .judge(hour_at, late.div_ceil(hour_step), f.bytes, &hour);
        let found_long = s
            .long
            .judge(long_at, late.div_ceil(long_step), f.bytes, &long);
        // One rise, one finding: the hour's, when both windows cross.
        let (u, window, step_seconds, step, judged, baseline) = match (found_hour, found_long) {
            (Some(u), _) => {
                s.long.found(long_at, long.steps_per_day);
                (
                    u,
                    self.rule.window_seconds,
                    hour_step,
                    hour_at,
                    s.hour.judged_text(&u),
                    s.hour.baseline,
                )
            }
            (None, Some(u)) => {
                s.hour.found(hour_at, hour.steps_per_day);
                (
                    u,
                    self.rule.long_window_seconds,
                    long_step,
                    long_at,
                    s.long.judged_text(&u),
                    s.long.baseline,
                )
            }
            (None, None) => return,
        };
        let Unusual { sum, threshold, .. } = u;
        let summary = format!(
            "sent {} to S3 through the gateway endpoint within {} ({judged}); threshold {}. Flow logs do not show the bucket: check CloudTrail data events for this workload's role",
            human_bytes(sum as f64),
            hours(window),
            human_bytes(threshold)
        );
        // Under the no-history floor a jump is also what a dataset of gigabytes saved now
        // and then looks like (the benign profile the old 8 GB floor was there for): worth a
        // look in the daily channel, not a page. Over it, or far over the habit, it pages.
        let severity = if (sum as f64)
            >= self.rule.no_history_bytes as f64 * window as f64
                / self.rule.window_seconds.max(1) as f64
        {
            Severity::High
        } else {
            Severity::Low
        };
        let mut finding = Finding::from_flow(self.name(), severity, summary, f);
        finding.remote = None;
        finding.remote_port = None;
        finding.bytes = sum;
        finding.first_seen = step.saturating_sub(STEPS - 1).saturating_mul(step_seconds);
        out.push(finding.with_evidence(Evidence {
            observed: sum as f64,
            baseline: (baseline.samples > 0).then_some(baseline.mean),
            threshold,
            unit: format!("bytes sent through the S3 endpoint per {}", hours(window)),
        }));
    }

    fn state(&self) -> Option<&dyn SavedState> {
        Some(&self.state)
    }

    fn load_state(&mut self, bytes: &[u8]) -> Result<(), String> {
        restore(self.name(), &mut self.state, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::testing::{flow, run};

    const GB: u64 = 1_000_000_000;
    const T0: u64 = 1_764_547_200;

    /// `bytes` sent to S3 in one record at `t`.
    fn put(bytes: u64, t: u64) -> Flow<'static> {
        flow(Path::S3Endpoint, "52.216.8.61", 443, bytes, t)
    }

    /// A pipeline writing `per_hour` bytes every hour for `hours`, in 10-minute parts.
    fn steady(per_hour: u64, hours: u64) -> Vec<Flow<'static>> {
        (0..hours * 6)
            .map(|i| put(per_hour / 6, T0 + i * 600))
            .collect()
    }

    #[test]
    fn a_jump_over_the_workloads_own_habit_is_found_once() {
        let mut d = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        // Two days of 3 GB an hour is this workload's habit.
        assert!(run(&mut d, &steady(3 * GB, 48)).is_empty());
        // Then 16 GB within 40 minutes: found once, with the hour's total.
        let t = T0 + 48 * 3_600;
        let jump: Vec<Flow> = (0..8).map(|i| put(2 * GB, t + i * 300)).collect();
        let found = run(&mut d, &jump);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.rule, "s3_endpoint_upload");
        assert_eq!(f.severity, Severity::High);
        assert_eq!((f.remote, f.remote_port), (None, None));
        assert!(f.bytes >= 8 * GB, "{f:?}");
        let e = f.evidence.as_ref().unwrap();
        assert!(e.baseline.unwrap() > 2.0 * GB as f64, "{e:?}");
        assert!(f.summary.contains("usually 3.0 GB"), "{}", f.summary);
    }

    /// The floor is small: a quiet workload's 100x jump is found well under the gigabytes a
    /// busy pipeline writes, once the workload has an hour of history.
    #[test]
    fn a_quiet_workloads_jump_is_found_under_a_gigabyte() {
        let mut d = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        // 20 MB an hour for a day.
        assert!(run(&mut d, &steady(20_000_000, 24)).is_empty());
        // 2 GB within an hour: 100 times its habit.
        let t = T0 + 24 * 3_600;
        let jump: Vec<Flow> = (0..6).map(|i| put(GB / 3, t + i * 600)).collect();
        let found = run(&mut d, &jump);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].severity, Severity::Low);
        let usual = found[0].evidence.as_ref().unwrap().baseline.unwrap();
        assert!(usual > 15e6 && usual < 25e6, "{}", found[0].summary);
        // Just under the floor (450 MB) stays quiet: the floor is the named blind spot.
        let mut d = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        run(&mut d, &steady(20_000_000, 24));
        let under: Vec<Flow> = (0..6).map(|i| put(75_000_000, t + i * 600)).collect();
        assert!(run(&mut d, &under).is_empty());
    }

    /// Paced under the hour's floor: 450 MB an hour for four hours by a workload that wrote a
    /// few megabytes an hour for two days is found by the six-hour window, once.
    #[test]
    fn an_upload_paced_under_the_hours_floor_is_found_by_the_long_window() {
        let mut d = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        assert!(run(&mut d, &steady(5_000_000, 48)).is_empty());
        let t = T0 + 48 * 3_600;
        let paced: Vec<Flow> = (0..40).map(|i| put(45_000_000, t + i * 360)).collect();
        let found = run(&mut d, &paced);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].summary.contains("within 6.0 h"),
            "{}",
            found[0].summary
        );
        assert!(found[0].bytes >= 1_200_000_000, "{:?}", found[0]);
    }

    /// A workload seen on the NAT for a day and never on the S3 path is no stranger there:
    /// its first gigabyte to S3 is judged against the floor, not the no-history floor.
    #[test]
    fn a_workload_known_elsewhere_has_history_on_the_s3_path() {
        let mut d = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        let nat: Vec<Flow> = (0..24)
            .map(|i| flow(Path::NatEgress, "192.0.2.10", 443, 10_000, T0 + i * 3_600))
            .collect();
        assert!(run(&mut d, &nat).is_empty());
        let t = T0 + 24 * 3_600;
        let jump: Vec<Flow> = (0..6).map(|i| put(GB / 3, t + i * 600)).collect();
        let found = run(&mut d, &jump);
        assert_eq!(found.len(), 1, "{found:?}");
        // Never seen at all: the no-history floor (a new pipeline's first hour).
        let mut d = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        assert!(run(&mut d, &jump).is_empty());
    }

    #[test]
    fn ordinary_work_is_not_flagged() {
        let mut d = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        // A heavy writer at 5 GB an hour with a 6 GB hour now and then.
        let mut flows = steady(5 * GB, 72);
        flows.push(put(GB, T0 + 30 * 3_600));
        // Another workload saves a 5 GB dataset: big, but under the floor.
        let mut save = put(5 * GB, T0 + 40 * 3_600);
        save.workload = Some("10.0.1.6".parse().unwrap());
        flows.push(save);
        // Replies (bytes from S3) never count as sent.
        let mut read = put(50 * GB, T0 + 41 * 3_600);
        read.outbound = false;
        flows.push(read);
        assert!(run(&mut d, &flows).is_empty());
    }

    #[test]
    fn late_records_count_and_the_baseline_waits_for_them() {
        let mut d = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        // 9 GB in one 10-minute step, its records arriving out of order and 25 minutes late
        // (after newer ones): the hour still adds up.
        let t = T0 + 3_600;
        let mut flows = vec![put(1_000, t + 1_500)];
        flows.extend((0..3).map(|i| put(3 * GB, t + 100 * i)));
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        // Records older than the kept steps (two of the long window's) are too late to add
        // to anything.
        let mut d = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        let flows = [put(1_000, T0 + 30 * 3_600), put(20 * GB, T0)];
        assert!(run(&mut d, &flows).is_empty());
    }

    #[test]
    fn state_survives_a_restart_and_sums_saturate() {
        let mut d = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        run(&mut d, &steady(3 * GB, 24));
        let mut restored = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        restored
            .load_state(&crate::rules::encoded_state(&d).unwrap())
            .unwrap();
        let w = key_of(crate::rules::testing::W.parse().unwrap());
        let b = restored.state.workloads.get(&w).unwrap().hour.baseline;
        assert!(b.samples > 100 && (b.mean - 3e9).abs() < 0.2e9, "{b:?}");
        let t = T0 + 24 * 3_600;
        let found = run(&mut restored, &[put(u64::MAX - 1, t), put(u64::MAX - 1, t)]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].bytes, u64::MAX);
    }
}
