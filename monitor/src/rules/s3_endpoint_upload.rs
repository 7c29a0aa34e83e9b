//! s3_endpoint_upload: a workload's bytes to S3 through the gateway endpoint in an hour,
//! against its own history. Flow logs cannot name the bucket, so an upload to an attacker's
//! bucket shows only as a jump in what the workload sends on this path, the decision
//! record's residual exfiltration route past the NAT.

use serde::{Deserialize, Serialize};

use super::{encode, hours, human_bytes, restore, Rule, Snapshot};
use crate::classify::{Flow, Path};
use crate::finding::{Evidence, Finding, Severity};
use crate::sketch::bounded::BoundedMap;
use crate::sketch::network::key_of;
use crate::sketch::window_sum::{Thresholds, WindowSum, STEPS};

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
        }
    }
}

pub struct S3EndpointUpload {
    rule: S3EndpointUploadRule,
    state: S3State,
}

#[derive(Serialize, Deserialize)]
struct S3State {
    workloads: BoundedMap<u64, WindowSum>,
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
            rule,
            state: S3State {
                workloads: BoundedMap::new(entries),
            },
        }
    }

    fn step_seconds(&self) -> u64 {
        (self.rule.window_seconds / STEPS).max(1)
    }

    fn thresholds(&self) -> Thresholds {
        Thresholds {
            min_bytes: self.rule.min_bytes,
            deviations: self.rule.deviations,
            peak_factor: self.rule.peak_factor,
            history_steps: self.rule.history_seconds / self.step_seconds(),
            no_history_bytes: self.rule.no_history_bytes,
        }
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
        if f.path != Path::S3Endpoint || !f.outbound {
            return;
        }
        let Some(w) = f.workload else { return };
        let step_seconds = self.step_seconds();
        let step = f.end / step_seconds;
        let late_steps = self.rule.late_seconds.div_ceil(step_seconds);
        let thresholds = self.thresholds();
        let s = self
            .state
            .workloads
            .touch(key_of(w), f.end, WindowSum::default);
        let Some(sum) = s.add(step, late_steps, f.bytes) else {
            return;
        };
        let threshold = s.threshold(&thresholds);
        if (sum as f64) < threshold {
            return;
        }
        s.found(step);
        let b = s.baseline;
        let summary = format!(
            "sent {} to S3 through the gateway endpoint within {} ({}); threshold {}. Flow logs do not show the bucket: check CloudTrail data events for this workload's role",
            human_bytes(sum as f64),
            hours(self.rule.window_seconds),
            s.usual_text(),
            human_bytes(threshold)
        );
        // Under the no-history floor a jump is also what a dataset of gigabytes saved now
        // and then looks like (the benign profile the old 8 GB floor was there for): worth a
        // look in the daily channel, not a page. Over it, or far over the habit, it pages.
        let severity = if sum >= self.rule.no_history_bytes {
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
            baseline: (b.samples > 0).then_some(b.mean),
            threshold,
            unit: "bytes sent through the S3 endpoint per window".into(),
        }));
    }

    fn save_state(&self) -> Option<Vec<u8>> {
        encode(&self.state)
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
        // Records older than the kept steps are too late to add to anything.
        let mut d = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        let flows = [put(1_000, T0 + 10 * 3_600), put(20 * GB, T0)];
        assert!(run(&mut d, &flows).is_empty());
    }

    #[test]
    fn state_survives_a_restart_and_sums_saturate() {
        let mut d = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        run(&mut d, &steady(3 * GB, 24));
        let mut restored = S3EndpointUpload::new(S3EndpointUploadRule::default(), 100);
        restored.load_state(&d.save_state().unwrap()).unwrap();
        let w = key_of(crate::rules::testing::W.parse().unwrap());
        let b = restored.state.workloads.get(&w).unwrap().baseline;
        assert!(b.samples > 100 && (b.mean - 3e9).abs() < 0.2e9, "{b:?}");
        let t = T0 + 24 * 3_600;
        let found = run(&mut restored, &[put(u64::MAX - 1, t), put(u64::MAX - 1, t)]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].bytes, u64::MAX);
    }
}
