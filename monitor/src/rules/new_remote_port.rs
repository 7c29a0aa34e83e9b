//! new_remote_port: a workload that starts using a remote port it never used before may be
//! running something it was not set up to run.

use serde::{Deserialize, Serialize};

use super::{hours, proto_name, restore, Rule, SavedState, Snapshot};
use crate::classify::{Flow, Path};
use crate::finding::{Evidence, Finding, Severity};
use crate::sketch::bounded::BoundedMap;
use crate::sketch::network::key_of;

/// A workload reaching a remote port it never used (GuardDuty's NetworkPortUnusual).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct NewRemotePortRule {
    pub enabled: bool,
    /// Event-time seconds from a workload's first flow during which its ports are learnt.
    pub learning_seconds: u64,
}

impl Default for NewRemotePortRule {
    fn default() -> Self {
        NewRemotePortRule {
            enabled: true,
            learning_seconds: 86_400,
        }
    }
}

/// A workload reaching a remote port for the first time after its learning period.
pub struct NewRemotePort {
    rule: NewRemotePortRule,
    state: PortState,
}

#[derive(Serialize, Deserialize)]
struct PortState {
    workloads: BoundedMap<u64, PortHistory>,
}

impl Snapshot for PortState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.workloads.set_capacity(configured.workloads.capacity());
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct PortHistory {
    since: u64,
    /// (protocol << 16 | port), sorted.
    ports: Vec<u32>,
}

/// Ports remembered per workload; beyond this every further new port is reported.
const MAX_PORTS_PER_WORKLOAD: usize = 256;

impl NewRemotePort {
    pub fn new(rule: NewRemotePortRule, entries: usize) -> Self {
        NewRemotePort {
            rule,
            state: PortState {
                workloads: BoundedMap::new(entries),
            },
        }
    }
}

impl Rule for NewRemotePort {
    fn state_evictions(&self) -> u64 {
        self.state.workloads.evicted
    }

    fn name(&self) -> &'static str {
        "new_remote_port"
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if f.path != Path::NatEgress {
            return;
        }
        let (Some(w), Some(port)) = (f.workload, f.remote_port) else {
            return;
        };
        let key = (u32::from(f.protocol.unwrap_or(0)) << 16) | u32::from(port);
        let h = self
            .state
            .workloads
            .touch(key_of(w), f.end, || PortHistory {
                since: f.start,
                ports: Vec::new(),
            });
        h.since = h.since.min(f.start);
        let Err(at) = h.ports.binary_search(&key) else {
            return;
        };
        if h.ports.len() < MAX_PORTS_PER_WORKLOAD {
            h.ports.insert(at, key);
        }
        let history = f.end.saturating_sub(h.since);
        if history < self.rule.learning_seconds {
            return;
        }
        let known: Vec<String> = h
            .ports
            .iter()
            .filter(|k| **k != key)
            .take(12)
            .map(|k| (k & 0xffff).to_string())
            .collect();
        let summary = format!(
            "{} port {port} is new for this workload: in {} of history it used only remote ports [{}]",
            proto_name(f.protocol),
            hours(history),
            known.join(", ")
        );
        out.push(
            Finding::from_flow("new_remote_port", Severity::Medium, summary, f).with_evidence(
                Evidence {
                    observed: f64::from(port),
                    baseline: Some((h.ports.len() - 1) as f64),
                    threshold: 0.0,
                    unit: "port (baseline: ports known)".into(),
                },
            ),
        );
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

    #[test]
    fn new_remote_port_after_learning_and_across_a_restart() {
        let rule = NewRemotePortRule {
            enabled: true,
            learning_seconds: 3_600,
        };
        let mut d = NewRemotePort::new(rule.clone(), 100);
        let learning: Vec<Flow> = (0..60)
            .map(|i| {
                flow(
                    Path::NatEgress,
                    "198.51.100.1",
                    if i == 5 { 8443 } else { 443 },
                    10,
                    1_000 + i * 60,
                )
            })
            .collect();
        assert!(run(&mut d, &learning).is_empty());
        // After the learning hour: 443 and 8443 are known, 4444 is new, and new only once.
        let later = [
            flow(Path::NatEgress, "198.51.100.2", 443, 10, 9_000),
            flow(Path::NatEgress, "198.51.100.2", 8443, 10, 9_000),
            flow(Path::NatEgress, "198.51.100.2", 4444, 10, 9_060),
            flow(Path::NatEgress, "198.51.100.3", 4444, 10, 9_120),
        ];
        // State survives a snapshot into a fresh detector.
        let mut restored = NewRemotePort::new(rule, 100);
        restored
            .load_state(&crate::rules::encoded_state(&d).unwrap())
            .unwrap();
        let found = run(&mut restored, &later);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].rule, "new_remote_port");
        assert_eq!(found[0].remote_port, Some(4444));
        assert!(
            found[0].summary.contains("[443, 8443]"),
            "{}",
            found[0].summary
        );
        assert!(restored
            .load_state(b"junk")
            .unwrap_err()
            .contains("new_remote_port"));
    }
}
