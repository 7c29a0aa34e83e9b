//! beaconing: malware calls home on a timer with near-constant sizes, a regularity rare in
//! what one workload sends to one remote otherwise.

use serde::{Deserialize, Serialize};

use super::{encode, human_bytes, restore, Rule, Snapshot};
use crate::classify::{Flow, Path};
use crate::finding::{Evidence, Finding, Severity};
use crate::sketch::beacon::beacon_score;
use crate::sketch::bounded::BoundedMap;
use crate::sketch::network::{key_of, pair_key, Audience};

/// Regular connections to one remote: periodic start times and near-constant sizes, scored
/// like RITA's beacon score.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct BeaconingRule {
    pub enabled: bool,
    /// Connections needed before a pair is scored.
    pub min_connections: usize,
    /// Connection starts kept per pair.
    pub history: usize,
    /// Bursts (median gap below this) are not beacons.
    pub min_interval_seconds: u64,
    /// Score in [0, 1] at which a pair is a beacon.
    pub score: f64,
    /// A remote more workloads than this connect to is a shared service (telemetry, package
    /// mirrors), whose regular check-ins are expected; RITA discounts prevalent destinations
    /// the same way.
    pub max_workloads: usize,
}

impl Default for BeaconingRule {
    fn default() -> Self {
        BeaconingRule {
            enabled: true,
            min_connections: 8,
            history: 16,
            min_interval_seconds: 30,
            score: 0.9,
            max_workloads: 2,
        }
    }
}

/// Periodic connections with regular sizes from one workload to one remote port.
pub struct Beaconing {
    rule: BeaconingRule,
    state: BeaconState,
}

#[derive(Serialize, Deserialize)]
struct BeaconState {
    series: BoundedMap<u64, Series>,
    /// Remote -> the workloads that opened connections to it (up to max-workloads + 1).
    audience: BoundedMap<u64, Audience>,
}

impl Snapshot for BeaconState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.series.set_capacity(configured.series.capacity());
        self.audience.set_capacity(configured.audience.capacity());
        Ok(())
    }
}

/// Connection starts are kept as seconds since this instant (2020-09-13) in 32 bits, which
/// halves the rule's memory and lasts until the 2150s.
const SERIES_EPOCH: u64 = 1_600_000_000;

#[derive(Serialize, Deserialize, Default)]
struct Series {
    starts: Vec<u32>,
    sizes: Vec<u32>,
    alerted: bool,
}

impl Beaconing {
    pub fn new(rule: BeaconingRule, entries: usize) -> Self {
        Beaconing {
            rule,
            state: BeaconState {
                series: BoundedMap::new(entries),
                audience: BoundedMap::new(entries),
            },
        }
    }
}

impl Rule for Beaconing {
    fn state_evictions(&self) -> u64 {
        self.state.series.evicted + self.state.audience.evicted
    }

    fn name(&self) -> &'static str {
        "beaconing"
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if f.path != Path::NatEgress || !f.opens_connection {
            return;
        }
        let (Some(w), Some(r), Some(port)) = (f.workload, f.remote, f.remote_port) else {
            return;
        };
        let shared = self
            .state
            .audience
            .touch(key_of(r), f.end, Audience::default)
            .add(key_of(w))
            > self.rule.max_workloads;
        let s = self.state.series.touch(
            pair_key(w, r) ^ u64::from(port).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            f.end,
            Series::default,
        );
        if s.starts.len() >= self.rule.history {
            s.starts.remove(0);
            s.sizes.remove(0);
        }
        s.starts
            .push(u32::try_from(f.start.saturating_sub(SERIES_EPOCH)).unwrap_or(u32::MAX));
        s.sizes.push(u32::try_from(f.bytes).unwrap_or(u32::MAX));
        if s.alerted || shared || s.starts.len() < self.rule.min_connections {
            return;
        }
        let starts: Vec<u64> = s.starts.iter().map(|t| u64::from(*t)).collect();
        let sizes: Vec<u64> = s.sizes.iter().map(|b| u64::from(*b)).collect();
        let Some((score, period)) = beacon_score(&starts, &sizes) else {
            return;
        };
        if score < self.rule.score || period < self.rule.min_interval_seconds as f64 {
            return;
        }
        s.alerted = true;
        let median_size = {
            let mut v = s.sizes.clone();
            v.sort_unstable();
            v[v.len() / 2]
        };
        let first = starts.iter().min().map_or(f.start, |t| t + SERIES_EPOCH);
        let summary = format!(
            "beacon-like connections to {r}:{port}: {} connections about every {:.0} s with about {} sent each; regularity score {:.2} (threshold {:.2})",
            s.starts.len(),
            period,
            human_bytes(median_size as f64),
            score,
            self.rule.score
        );
        let severity = if score >= 0.95 {
            Severity::High
        } else {
            Severity::Medium
        };
        let mut finding = Finding::from_flow("beaconing", severity, summary, f);
        finding.first_seen = first;
        finding.records = s.starts.len() as u64;
        out.push(finding.with_evidence(Evidence {
            observed: score,
            baseline: Some(period),
            threshold: self.rule.score,
            unit: "beacon score (baseline: median period, s)".into(),
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

    #[test]
    fn beacons_found_at_the_eighth_connection_and_only_on_new_connections() {
        let mut d = Beaconing::new(BeaconingRule::default(), 1_000);
        let flows: Vec<Flow> = (0..12)
            .map(|i| {
                flow(
                    Path::NatEgress,
                    "203.0.113.9",
                    443,
                    512,
                    1_764_000_000 + i * 300 + (i * 7) % 11,
                )
            })
            .collect();
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].records, 8, "found at the eighth connection");
        assert_eq!(found[0].severity, Severity::High);
        // Records of a connection already open (no SYN) are not new beacons.
        let mut d = Beaconing::new(BeaconingRule::default(), 1_000);
        let mut flows = flows;
        flows.iter_mut().for_each(|f| f.opens_connection = false);
        assert!(run(&mut d, &flows).is_empty());
    }
}
