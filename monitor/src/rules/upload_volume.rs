//! upload_volume_unusual: everything a workload sends through the NAT in a sliding hour,
//! against its own history, whatever the destination. The per-destination rules narrow what
//! they judge (a network the fleet shares, a pair with history, a floor); an attacker who
//! uploads to the cloud-storage network the team's training jobs use (MITRE T1567) hides in
//! those narrowings, but not in the workload's own jump: a notebook that sent 20 MB a day
//! and sends gigabytes in an hour stands out here.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{hours, human_bytes, restore, Rule, SavedState, Snapshot};
use crate::classify::{Flow, Path};
use crate::finding::{Evidence, Finding, Severity};
use crate::sketch::bounded::BoundedMap;
use crate::sketch::network::{key_of, network_cidr};
use crate::sketch::window_sum::{Thresholds, Unusual, WindowSum, STEPS};

/// Bytes one workload sends through the NAT in a sliding window, against its own windows.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct UploadVolumeRule {
    pub enabled: bool,
    /// The span summed, in seconds: the sum slides in steps of a sixth of it.
    pub window_seconds: u64,
    /// Never flag less than this many bytes in one window: the benign profile it serves is
    /// a burst of git pushes with large files, tens of megabytes to a few hundred.
    pub min_bytes: u64,
    /// Flag above the workload's usual window plus this many mean absolute deviations...
    pub deviations: f64,
    /// ...and above this multiple of its largest window of the last days (fading by half in
    /// about five days). Serves the benign profiles of nightly exports and checkpoint
    /// uploads, which vary by up to four times from one run to the next.
    pub peak_factor: f64,
    /// Seconds a step waits for late records before its sum joins the baseline.
    pub late_seconds: u64,
    /// History (event-time seconds of complete windows) a workload needs before `min-bytes`
    /// alone is its floor; until then `no-history-bytes` is. Serves a training job that
    /// starts writing checkpoints of gigabytes in the first hour the daemon sees it.
    pub history_seconds: u64,
    pub no_history_bytes: u64,
    /// Also flag an hour above this multiple of the workload's largest hour on the days
    /// before today (up to a week), at least `min-bytes`: the bar a slow ramp does not raise.
    /// Once a day at most, and not on a day the habit's bar already found, so a workload
    /// whose work changes today (a first training run) is told once.
    pub earlier_days_factor: f64,
}

impl Default for UploadVolumeRule {
    fn default() -> Self {
        UploadVolumeRule {
            enabled: true,
            window_seconds: 3_600,
            min_bytes: 1_000_000_000,
            deviations: 8.0,
            peak_factor: 5.0,
            late_seconds: 1_800,
            history_seconds: 6 * 3_600,
            no_history_bytes: 20_000_000_000,
            earlier_days_factor: 10.0,
        }
    }
}

pub struct UploadVolume {
    rule: UploadVolumeRule,
    state: UploadState,
}

#[derive(Serialize, Deserialize)]
struct UploadState {
    workloads: BoundedMap<u64, WorkloadUploads>,
}

impl Snapshot for UploadState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.workloads.set_capacity(configured.workloads.capacity());
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Default)]
struct WorkloadUploads {
    sum: WindowSum,
    /// The record that sent the most in the newest window: where most of it went.
    top: Option<(IpAddr, u64)>,
    top_step: u64,
}

impl UploadVolume {
    pub fn new(rule: UploadVolumeRule, entries: usize) -> Self {
        UploadVolume {
            rule,
            state: UploadState {
                workloads: BoundedMap::new(entries),
            },
        }
    }

    fn step_seconds(&self) -> u64 {
        (self.rule.window_seconds / STEPS).max(1)
    }
}

impl Rule for UploadVolume {
    fn state_evictions(&self) -> u64 {
        self.state.workloads.evicted
    }

    fn name(&self) -> &'static str {
        "upload_volume_unusual"
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if f.path != Path::NatEgress {
            return;
        }
        let (Some(w), Some(r)) = (f.workload, f.remote) else {
            return;
        };
        let step_seconds = self.step_seconds();
        let step = f.end / step_seconds;
        let thresholds = Thresholds {
            min_bytes: self.rule.min_bytes,
            deviations: self.rule.deviations,
            peak_factor: self.rule.peak_factor,
            history_steps: self.rule.history_seconds / step_seconds,
            no_history_bytes: self.rule.no_history_bytes,
            steps_per_day: (86_400 / step_seconds).max(1),
            earlier_days_factor: self.rule.earlier_days_factor,
        };
        let late_steps = self.rule.late_seconds.div_ceil(step_seconds);
        let u = self
            .state
            .workloads
            .touch(key_of(w), f.end, WorkloadUploads::default);
        if step.saturating_sub(u.top_step) >= STEPS {
            u.top = None;
        }
        if u.top.is_none_or(|(_, b)| f.bytes > b) {
            u.top = Some((r, f.bytes));
            u.top_step = step;
        }
        let Some(unusual) = u.sum.judge(step, late_steps, f.bytes, &thresholds) else {
            return;
        };
        let Unusual { sum, threshold, .. } = unusual;
        let b = u.sum.baseline;
        let (top, top_bytes) = u.top.unwrap_or((r, f.bytes));
        // A jump of a few gigabytes is also a training job's first checkpoints after a quiet
        // night (the same storage network, the same sizes): worth a look, not a page. Past
        // the no-history floor no workload's rhythm explains it.
        let severity = if sum >= self.rule.no_history_bytes {
            Severity::High
        } else {
            Severity::Medium
        };
        let summary = format!(
            "sent {} through the NAT within {} ({}); threshold {}; the largest part, {} in one record, went to {top} (network {})",
            human_bytes(sum as f64),
            hours(self.rule.window_seconds),
            u.sum.judged_text(&unusual),
            human_bytes(threshold),
            human_bytes(top_bytes as f64),
            network_cidr(top),
        );
        let mut finding = Finding::from_flow(self.name(), severity, summary, f);
        finding.remote = Some(top);
        finding.bytes = sum;
        finding.first_seen = step.saturating_sub(STEPS - 1).saturating_mul(step_seconds);
        out.push(finding.with_evidence(Evidence {
            observed: sum as f64,
            baseline: (b.samples > 0).then_some(b.mean),
            threshold,
            unit: "bytes sent through the NAT per window".into(),
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

    const T0: u64 = 1_764_547_200;

    /// The attack the per-destination rules' exemptions let through: a workload that sent at
    /// most 20 MB a day uploads 6 GB in two hours to the storage network everyone uses.
    #[test]
    fn an_upload_to_a_shared_network_is_found_by_the_workloads_own_jump() {
        let mut d = UploadVolume::new(UploadVolumeRule::default(), 100);
        // Two days of about 20 MB a day, in small API calls.
        let quiet: Vec<Flow> = (0..48 * 6)
            .map(|i| flow(Path::NatEgress, "192.0.2.10", 443, 140_000, T0 + i * 600))
            .collect();
        assert!(run(&mut d, &quiet).is_empty());
        let t = T0 + 48 * 3_600;
        let upload: Vec<Flow> = (0..120)
            .map(|i| flow(Path::NatEgress, "52.219.40.77", 443, 50_000_000, t + i * 60))
            .collect();
        let found = run(&mut d, &upload);
        assert!(!found.is_empty());
        let f = &found[0];
        assert_eq!(f.rule, "upload_volume_unusual");
        assert_eq!(f.severity, Severity::Medium);
        assert_eq!(f.remote, Some("52.219.40.77".parse().unwrap()));
        assert!(f.bytes >= 1_000_000_000, "{f:?}");
        assert!(
            f.summary.contains("network 52.219.40.0/24"),
            "{}",
            f.summary
        );
        // One finding per window: two hours make at most two.
        assert!(found.len() <= 2, "{found:?}");
    }

    /// A ramp: 20 MB in the first hour and 30 % more each hour after, to the storage network,
    /// by a workload that sent 10 MB an hour for two days. Each hour is a little over the
    /// last, so the habit's bar follows it; the earlier days' bar does not, and finds it once
    /// the hour passes ten times the workload's largest hour on the days before.
    #[test]
    fn a_slow_ramp_is_found_against_the_days_before_it() {
        let mut d = UploadVolume::new(UploadVolumeRule::default(), 100);
        let quiet: Vec<Flow> = (0..48 * 6)
            .map(|i| flow(Path::NatEgress, "192.0.2.10", 443, 1_700_000, T0 + i * 600))
            .collect();
        assert!(run(&mut d, &quiet).is_empty());
        let t = T0 + 48 * 3_600;
        let mut ramp = Vec::new();
        let mut hourly = 20e6f64;
        for hour in 0..20u64 {
            for part in 0..6 {
                let at = t + hour * 3_600 + part * 600;
                ramp.push(flow(
                    Path::NatEgress,
                    "52.219.40.7",
                    443,
                    (hourly / 6.0) as u64,
                    at,
                ));
            }
            hourly *= 1.3;
        }
        let found = run(&mut d, &ramp);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert!(f.summary.contains("days before today"), "{}", f.summary);
        assert!(f.bytes >= 1_000_000_000, "{f:?}");
    }

    #[test]
    fn a_heavy_writers_usual_hours_and_replies_are_not_flagged() {
        let mut d = UploadVolume::new(UploadVolumeRule::default(), 100);
        // Checkpoints of 2-5 GB an hour, every hour for two days.
        let flows: Vec<Flow> = (0..48 * 6)
            .map(|i| {
                let bytes = 350_000_000 + (i * 7_919 % 5) * 100_000_000;
                flow(Path::NatEgress, "52.219.40.9", 443, bytes, T0 + i * 600)
            })
            .collect();
        assert!(run(&mut d, &flows).is_empty());
        // A new workload's first hour: under the no-history floor.
        let mut first = flow(Path::NatEgress, "52.219.40.9", 443, 5_000_000_000, T0);
        first.workload = Some("10.0.1.99".parse().unwrap());
        // Downloads (the return leg) never count.
        let reply = flow(Path::NatReturn, "52.219.40.9", 443, 90_000_000_000, T0 + 60);
        let mut d = UploadVolume::new(UploadVolumeRule::default(), 100);
        assert!(run(&mut d, &[first, reply]).is_empty());
    }

    #[test]
    fn state_survives_a_restart() {
        let mut d = UploadVolume::new(UploadVolumeRule::default(), 100);
        let quiet: Vec<Flow> = (0..24 * 6)
            .map(|i| flow(Path::NatEgress, "192.0.2.10", 443, 1_000_000, T0 + i * 600))
            .collect();
        run(&mut d, &quiet);
        let mut restored = UploadVolume::new(UploadVolumeRule::default(), 100);
        restored
            .load_state(&crate::rules::encoded_state(&d).unwrap())
            .unwrap();
        let t = T0 + 24 * 3_600;
        let found = run(
            &mut restored,
            &[flow(Path::NatEgress, "198.51.100.3", 443, 3_000_000_000, t)],
        );
        assert_eq!(found.len(), 1, "{found:?}");
    }
}
