//! slow_drip: data sent a little at a time stays under every per-window threshold, so it is
//! added up over hours.

use serde::{Deserialize, Serialize};

use super::{hours, human_bytes, restore, through_the_nat, Rule, SavedState, Snapshot};
use crate::classify::Flow;
use crate::finding::{Evidence, Finding, Severity};
use crate::sketch::bounded::BoundedMap;
use crate::sketch::learning::LearningClock;
use crate::sketch::network::{key_of, network_cidr, network_key, network_pair_key, Audience};

/// Cumulative bytes to one remote over a long horizon, below any per-window threshold.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct SlowDripRule {
    pub enabled: bool,
    pub horizon_seconds: u64,
    pub bytes: u64,
    pub upload_ratio: f64,
    /// Destinations more workloads than this talk to are shared services, not a drop point.
    pub max_workloads: usize,
    /// Upload flows within the horizon before it is a drip: one large upload is a bulk
    /// transfer (traffic-volume's and rare-destination's to judge), not a drip.
    pub min_flows: u64,
    /// Event-time seconds from the first flow during which which networks the fleet shares is
    /// only learnt: a team's first morning would otherwise make every shared service look
    /// like one workload's drop point.
    pub learning_seconds: u64,
}

impl Default for SlowDripRule {
    fn default() -> Self {
        SlowDripRule {
            enabled: true,
            horizon_seconds: 21_600,
            bytes: 100_000_000,
            upload_ratio: 4.0,
            max_workloads: 2,
            min_flows: 4,
            learning_seconds: 86_400,
        }
    }
}

/// Bytes sent to one remote over a sliding horizon, estimated from two fixed buckets (the
/// current one and the previous one weighted by how much of it still overlaps the horizon).
pub struct SlowDrip {
    rule: SlowDripRule,
    state: DripState,
}

#[derive(Serialize, Deserialize)]
struct DripState {
    pairs: BoundedMap<u64, Drip>,
    /// Remote network -> the workloads that talked to it (up to max-workloads + 1).
    audience: BoundedMap<u64, Audience>,
    /// Event time of the first flow seen: the learning period runs from it.
    first_flow: LearningClock,
}

impl Snapshot for DripState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.pairs.set_capacity(configured.pairs.capacity());
        self.audience.set_capacity(configured.audience.capacity());
        Ok(())
    }
}

#[derive(Serialize, Deserialize, Default)]
struct Drip {
    bucket: u64,
    sent: [u64; 2],
    received: [u64; 2],
    flows: u64,
    first_seen: u64,
    alerted_bucket: Option<u64>,
}

impl SlowDrip {
    pub fn new(rule: SlowDripRule, entries: usize) -> Self {
        SlowDrip {
            rule,
            state: DripState {
                pairs: BoundedMap::new(entries),
                audience: BoundedMap::new(entries),
                first_flow: LearningClock::default(),
            },
        }
    }
}

impl Rule for SlowDrip {
    fn state_evictions(&self) -> u64 {
        self.state.pairs.evicted + self.state.audience.evicted
    }

    fn name(&self) -> &'static str {
        "slow_drip"
    }

    fn learning_ends(&self) -> Option<u64> {
        self.state.first_flow.ends(self.rule.learning_seconds)
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        let Some((sending, w, r)) = through_the_nat(f) else {
            return;
        };
        let horizon = self.rule.horizon_seconds;
        // Per network, not per address: a drip spread over many hosts of one network is one
        // drip, and a storage service answering from ever new addresses is still shared.
        let shared = self
            .state
            .audience
            .touch(network_key(r), f.end, Audience::default)
            .add(key_of(w))
            > self.rule.max_workloads;
        let bucket = f.end / horizon;
        let d = self
            .state
            .pairs
            .touch(network_pair_key(w, r), f.end, || Drip {
                bucket,
                first_seen: f.start,
                ..Drip::default()
            });
        if bucket > d.bucket {
            let keep = bucket == d.bucket + 1;
            d.sent = [if keep { d.sent[1] } else { 0 }, 0];
            d.received = [if keep { d.received[1] } else { 0 }, 0];
            d.bucket = bucket;
        }
        // [0] is the previous bucket, [1] the current one; a record older than both is
        // counted with the previous bucket, which can only make the estimate larger.
        let slot = usize::from(bucket >= d.bucket);
        if sending {
            d.sent[slot] = d.sent[slot].saturating_add(f.bytes);
            d.flows += 1;
        } else {
            d.received[slot] = d.received[slot].saturating_add(f.bytes);
        }
        d.first_seen = d.first_seen.min(f.start);
        let learning = self
            .state
            .first_flow
            .learning(f.start, f.end, self.rule.learning_seconds);
        if !sending
            || shared
            || learning
            || d.alerted_bucket == Some(d.bucket)
            || d.flows < self.rule.min_flows
        {
            return;
        }
        let overlap = 1.0 - (f.end % horizon) as f64 / horizon as f64;
        let sent = d.sent[1] as f64 + d.sent[0] as f64 * overlap;
        let received = d.received[1] as f64 + d.received[0] as f64 * overlap;
        if sent < self.rule.bytes as f64 || sent < self.rule.upload_ratio * received {
            return;
        }
        d.alerted_bucket = Some(d.bucket);
        let summary = format!(
            "sent about {} to {r}'s network {} over the last {} (received {}) in {} flows since {}; no more than {} workload(s) talk to that network; threshold {} per {}",
            human_bytes(sent),
            network_cidr(r),
            hours(horizon),
            human_bytes(received),
            d.flows,
            crate::alert::rfc3339(d.first_seen),
            self.rule.max_workloads,
            human_bytes(self.rule.bytes as f64),
            hours(horizon)
        );
        let mut finding = Finding::from_flow("slow_drip", Severity::High, summary, f);
        finding.bytes = sent as u64;
        finding.first_seen = d.first_seen;
        finding.records = d.flows;
        out.push(finding.with_evidence(Evidence {
            observed: sent,
            baseline: None,
            threshold: self.rule.bytes as f64,
            unit: "bytes per horizon".into(),
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
    use std::net::IpAddr;

    use super::*;
    use crate::classify::Path;
    use crate::rules::testing::{flow, run, W};

    #[test]
    fn slow_drip_over_the_horizon() {
        let rule = SlowDripRule {
            learning_seconds: 0,
            ..SlowDripRule::default()
        };
        let mut d = SlowDrip::new(rule.clone(), 1_000);
        // 3 MB every 5 minutes, far below any per-window threshold: 100 MB after 34 drips.
        let flows: Vec<Flow> = (0..60)
            .map(|i| {
                flow(
                    Path::NatEgress,
                    "203.0.113.9",
                    443,
                    3_000_000,
                    21_600 * 10 + i * 300,
                )
            })
            .collect();
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].records, 34);
        assert!(found[0].bytes >= 100_000_000 && found[0].bytes < 103_000_000);
        // The same volume to a remote three workloads share is not a drip.
        let mut d = SlowDrip::new(rule, 1_000);
        let mut flows = flows;
        for (i, f) in flows.iter_mut().enumerate() {
            f.workload = Some(format!("10.0.1.{}", 5 + i % 3).parse().unwrap());
            f.bytes *= 3;
        }
        assert!(run(&mut d, &flows).is_empty());
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

        // Both buckets' sums, and the estimate the finding reports.
        let r: IpAddr = "203.0.113.5".parse().unwrap();
        let rule = SlowDripRule {
            learning_seconds: 0,
            min_flows: 1,
            ..SlowDripRule::default()
        };
        let mut s = SlowDrip::new(rule, 1_000);
        let found = run(&mut s, &[up("203.0.113.5"), up("203.0.113.5")]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].bytes, u64::MAX);
        run(&mut s, &[down("203.0.113.5"), down("203.0.113.5")]);
        let drip = s.state.pairs.get(&network_pair_key(w, r)).unwrap();
        assert_eq!((drip.sent[1], drip.received[1]), (u64::MAX, u64::MAX));
    }
}
