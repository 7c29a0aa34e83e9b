//! traffic_volume_unusual: a large upload to one remote stands out against what the workload
//! usually sends, even when each of its records looks ordinary.

use serde::{Deserialize, Serialize};

use super::{encode, human_bytes, restore, through_the_nat, Rule, Snapshot};
use crate::classify::Flow;
use crate::finding::{Evidence, Finding, Severity};
use crate::sketch::bounded::BoundedMap;
use crate::sketch::ewma::Ewma;
use crate::sketch::learning::LearningClock;
use crate::sketch::network::{key_of, network_key, pair_key, Audience};

/// Bytes sent to one remote in one window, against the workload's own history
/// (GuardDuty's TrafficVolumeUnusual).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct TrafficVolumeRule {
    pub enabled: bool,
    pub window_seconds: u64,
    /// Never flag less than this many bytes to one remote in one window.
    pub min_bytes: u64,
    /// How many mean absolute deviations above the workload's mean counts as unusual.
    pub deviations: f64,
    /// Active windows a workload needs before its baseline is trusted.
    pub learning_windows: u64,
    /// Event-time seconds from the first flow during which the fleet's networks and each
    /// workload's own networks are learnt before anything is judged.
    pub learning_seconds: u64,
    /// Bytes sent must be at least this multiple of bytes received (an upload).
    pub upload_ratio: f64,
    /// A remote network (/24, /48) more workloads than this use is shared; large transfers
    /// there are the team's work (checkpoints to object storage), not unusual.
    pub max_workloads: usize,
}

impl Default for TrafficVolumeRule {
    fn default() -> Self {
        TrafficVolumeRule {
            enabled: true,
            window_seconds: 60,
            min_bytes: 50_000_000,
            deviations: 10.0,
            learning_windows: 30,
            learning_seconds: 86_400,
            upload_ratio: 2.0,
            max_workloads: 2,
        }
    }
}

/// Bytes sent to one remote within one window, against what this workload usually sends to
/// one remote in one window.
pub struct TrafficVolume {
    rule: TrafficVolumeRule,
    state: VolumeState,
}

#[derive(Serialize, Deserialize)]
struct VolumeState {
    pairs: BoundedMap<u64, PairWindow>,
    workloads: BoundedMap<u64, VolumeBaseline>,
    /// Remote network -> the workloads that talked to it (up to max-workloads + 1).
    audience: BoundedMap<u64, Audience>,
    /// Event time of the first flow seen: the learning period runs from it.
    first_flow: LearningClock,
}

impl Snapshot for VolumeState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.pairs.set_capacity(configured.pairs.capacity());
        self.workloads.set_capacity(configured.workloads.capacity());
        self.audience.set_capacity(configured.audience.capacity());
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct PairWindow {
    window: u64,
    sent: u64,
    received: u64,
    alerted: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct VolumeBaseline {
    per_window: Ewma,
    window: u64,
    /// The largest amount sent to one remote in `window` so far.
    window_max: u64,
}

impl TrafficVolume {
    pub fn new(rule: TrafficVolumeRule, entries: usize) -> Self {
        TrafficVolume {
            rule,
            state: VolumeState {
                pairs: BoundedMap::new(entries),
                workloads: BoundedMap::new(entries),
                audience: BoundedMap::new(entries),
                first_flow: LearningClock::default(),
            },
        }
    }
}

impl Rule for TrafficVolume {
    fn state_evictions(&self) -> u64 {
        self.state.pairs.evicted + self.state.workloads.evicted + self.state.audience.evicted
    }

    fn name(&self) -> &'static str {
        "traffic_volume_unusual"
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        let Some((sending, w, r)) = through_the_nat(f) else {
            return;
        };
        let window = f.end / self.rule.window_seconds;
        // A network the fleet shares (object storage, a package CDN) is where large transfers
        // of the team's work go, a new training job's first checkpoints included; an upload
        // there is not unusual by volume. (An attacker's bucket at the same provider looks
        // the same in a flow log: the residual risk the decision record accepts.)
        let popular = self
            .state
            .audience
            .touch(network_key(r), f.end, Audience::default)
            .add(key_of(w))
            > self.rule.max_workloads;
        let b = self
            .state
            .workloads
            .touch(key_of(w), f.end, VolumeBaseline::default);
        if window > b.window {
            if b.window_max > 0 {
                b.per_window.update(b.window_max as f64);
            }
            b.window = window;
            b.window_max = 0;
        }
        let baseline = b.per_window;
        let p = self
            .state
            .pairs
            .touch(pair_key(w, r), f.end, || PairWindow {
                window,
                sent: 0,
                received: 0,
                alerted: false,
            });
        if window > p.window {
            *p = PairWindow {
                window,
                sent: 0,
                received: 0,
                alerted: false,
            };
        }
        // A late record for a window already closed is judged on its own bytes.
        let (sent, received, alerted) = if window < p.window {
            if sending {
                (f.bytes, 0, false)
            } else {
                return;
            }
        } else {
            // Byte counts come from the input and may each be near 2^64: sums saturate.
            if sending {
                p.sent = p.sent.saturating_add(f.bytes);
            } else {
                p.received = p.received.saturating_add(f.bytes);
            }
            (p.sent, p.received, p.alerted)
        };
        if window == b.window {
            b.window_max = b.window_max.max(sent);
        }
        let learning = self
            .state
            .first_flow
            .learning(f.start, f.end, self.rule.learning_seconds);
        if !sending
            || alerted
            || baseline.samples < self.rule.learning_windows
            || learning
            || popular
        {
            return;
        }
        let threshold = (self.rule.min_bytes as f64)
            .max(baseline.mean + self.rule.deviations * baseline.deviation);
        if (sent as f64) < threshold || (sent as f64) < self.rule.upload_ratio * received as f64 {
            return;
        }
        if window == p.window {
            p.alerted = true;
        }
        let summary = format!(
            "sent {} to {r} within one {}-s window (received {}); this workload usually sends {} ± {} to one remote per window (over {} active windows), threshold {}",
            human_bytes(sent as f64),
            self.rule.window_seconds,
            human_bytes(received as f64),
            human_bytes(baseline.mean),
            human_bytes(baseline.deviation),
            baseline.samples,
            human_bytes(threshold)
        );
        let mut finding = Finding::from_flow(self.name(), Severity::High, summary, f);
        finding.bytes = sent;
        out.push(finding.with_evidence(Evidence {
            observed: sent as f64,
            baseline: Some(baseline.mean),
            threshold,
            unit: "bytes per window".into(),
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
    use std::net::IpAddr;

    use super::*;
    use crate::classify::Path;
    use crate::rules::testing::{flow, run, W};

    #[test]
    fn traffic_volume_against_the_workloads_baseline() {
        let rule = TrafficVolumeRule {
            learning_seconds: 0,
            ..TrafficVolumeRule::default()
        };
        let mut d = TrafficVolume::new(rule, 1_000);
        // 40 windows of about 1 MB sent to a handful of remotes.
        let mut flows = Vec::new();
        for i in 0..40u64 {
            flows.push(flow(
                Path::NatEgress,
                "198.51.100.1",
                443,
                900_000 + i * 5_000,
                i * 60,
            ));
            flows.push(flow(
                Path::NatReturn,
                "198.51.100.1",
                443,
                20_000_000,
                i * 60,
            ));
        }
        assert!(run(&mut d, &flows).is_empty());
        // A big download is not an upload; a big upload is flagged once, with the numbers.
        let t = 40 * 60;
        let mut later = vec![
            flow(Path::NatReturn, "198.51.100.9", 443, 900_000_000, t),
            flow(Path::NatEgress, "198.51.100.9", 443, 60_000_000, t),
            flow(Path::NatEgress, "203.0.113.7", 443, 30_000_000, t),
            flow(Path::NatEgress, "203.0.113.7", 443, 30_000_000, t),
            flow(Path::NatEgress, "203.0.113.7", 443, 30_000_000, t),
        ];
        later[1].end = t + 59;
        let found = run(&mut d, &later);
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!(f.remote, Some("203.0.113.7".parse().unwrap()));
        assert_eq!(f.bytes, 60_000_000);
        let e = f.evidence.as_ref().unwrap();
        assert_eq!(e.threshold, 50_000_000.0);
        assert!(
            (e.baseline.unwrap() - 1_000_000.0).abs() < 200_000.0,
            "{e:?}"
        );
    }

    /// Bytes come from the input, and AWS's field is a u64: sums must stop at u64::MAX
    /// rather than wrap (a panic in debug builds, a small number in release builds).
    #[test]
    fn byte_sums_saturate_instead_of_wrapping() {
        const HUGE: u64 = u64::MAX - 1;
        let t = 1_764_150_000;
        let w: IpAddr = W.parse().unwrap();
        let up = |remote: &str| flow(Path::NatEgress, remote, 443, HUGE, t);
        let down = |remote: &str| flow(Path::NatReturn, remote, 443, HUGE, t);

        // The pair's window sums.
        let r: IpAddr = "203.0.113.5".parse().unwrap();
        let rule = TrafficVolumeRule {
            learning_windows: 0,
            learning_seconds: 0,
            ..TrafficVolumeRule::default()
        };
        let mut v = TrafficVolume::new(rule, 1_000);
        let found = run(
            &mut v,
            &[up("203.0.113.5"), up("203.0.113.5"), up("203.0.113.5")],
        );
        // Reported once for the window, when the first record crossed the threshold.
        assert_eq!(found.len(), 1, "{found:?}");
        run(&mut v, &[down("203.0.113.5"), down("203.0.113.5")]);
        let pair = v.state.pairs.get(&pair_key(w, r)).unwrap();
        assert_eq!((pair.sent, pair.received), (u64::MAX, u64::MAX));
    }
}
