//! port_scan and port_sweep: a compromised workload maps what it can reach, many ports on one
//! host or one port on many hosts; one rule counts both.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{proto_name, restore, Rule, SavedState, Snapshot};
use crate::classify::{Flow, Path};
use crate::finding::{Evidence, Finding, Severity};
use crate::sketch::bounded::BoundedMap;

/// Outbound scans: many ports on one host (Recon:EC2/Portscan) or one port on many hosts
/// (Impact:EC2/PortSweep) within a window. Counts are exact up to the thresholds, which
/// bounds the memory per key.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct PortScanRule {
    pub enabled: bool,
    pub window_seconds: u64,
    pub distinct_ports: usize,
    pub distinct_hosts: usize,
}

impl Default for PortScanRule {
    fn default() -> Self {
        PortScanRule {
            enabled: true,
            window_seconds: 300,
            distinct_ports: 24,
            distinct_hosts: 64,
        }
    }
}

/// Windows a scan key is kept after it closes: enough to cover fifteen minutes of lateness.
fn scan_late_windows(window_seconds: u64) -> u64 {
    900u64.div_ceil(window_seconds.max(1)) + 1
}

/// Outbound scanning within a window: many ports on one host, or one port on many hosts.
/// Attempts count whether the security group let them through or not.
pub struct PortScan {
    rule: PortScanRule,
    state: ScanState,
}

#[derive(Serialize, Deserialize)]
struct ScanState {
    /// The newest window seen; keys older than the few windows late records can still reach
    /// are dropped when it advances.
    newest_window: u64,
    /// (workload, host, window) -> distinct ports, exact up to the threshold.
    ports_per_host: BoundedMap<(IpAddr, IpAddr, u64), Vec<u16>>,
    /// (workload, port, window) -> distinct hosts, exact up to the threshold.
    hosts_per_port: BoundedMap<(IpAddr, u16, u64), Vec<IpAddr>>,
}

impl Snapshot for ScanState {
    fn adopt_limits(&mut self, configured: &Self) -> Result<(), String> {
        self.ports_per_host
            .set_capacity(configured.ports_per_host.capacity());
        self.hosts_per_port
            .set_capacity(configured.hosts_per_port.capacity());
        Ok(())
    }
}

impl PortScan {
    pub fn new(rule: PortScanRule, entries: usize) -> Self {
        PortScan {
            rule,
            state: ScanState {
                newest_window: 0,
                ports_per_host: BoundedMap::new(entries),
                hosts_per_port: BoundedMap::new(entries),
            },
        }
    }
}

impl Rule for PortScan {
    fn state_evictions(&self) -> u64 {
        self.state.ports_per_host.evicted + self.state.hosts_per_port.evicted
    }

    fn name(&self) -> &'static str {
        "port_scan"
    }

    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if !matches!(f.path, Path::NatEgress | Path::RejectedEgress) || !f.opens_connection {
            return;
        }
        let (Some(w), Some(r), Some(port)) = (f.workload, f.remote, f.remote_port) else {
            return;
        };
        let window = f.start / self.rule.window_seconds;
        if window > self.state.newest_window {
            self.state.newest_window = window;
            // Records arrive up to about ten minutes late; older windows are settled.
            let keep_from = window.saturating_sub(scan_late_windows(self.rule.window_seconds));
            self.state.ports_per_host.retain(|k| k.2 >= keep_from);
            self.state.hosts_per_port.retain(|k| k.2 >= keep_from);
        }
        let ports = self
            .state
            .ports_per_host
            .touch((w, r, window), f.end, Vec::new);
        if ports.len() < self.rule.distinct_ports && !ports.contains(&port) {
            ports.push(port);
            if ports.len() == self.rule.distinct_ports {
                let summary = format!(
                    "{} distinct ports on {r} within {} s (e.g. {:?}); threshold {}",
                    ports.len(),
                    self.rule.window_seconds,
                    &ports[..ports.len().min(8)],
                    self.rule.distinct_ports
                );
                let mut finding = Finding::from_flow("port_scan", Severity::Medium, summary, f);
                finding.remote_port = None;
                finding.first_seen = window * self.rule.window_seconds;
                out.push(finding.with_evidence(Evidence {
                    observed: ports.len() as f64,
                    baseline: None,
                    threshold: self.rule.distinct_ports as f64,
                    unit: "distinct ports on one host".into(),
                }));
            }
        }
        let hosts = self
            .state
            .hosts_per_port
            .touch((w, port, window), f.end, Vec::new);
        if hosts.len() < self.rule.distinct_hosts && !hosts.contains(&r) {
            hosts.push(r);
            if hosts.len() == self.rule.distinct_hosts {
                let summary = format!(
                    "{} {} port {port} on {} distinct hosts within {} s (e.g. {}); threshold {}",
                    proto_name(f.protocol),
                    if f.path == Path::RejectedEgress {
                        "attempts to"
                    } else {
                        "connections to"
                    },
                    hosts.len(),
                    self.rule.window_seconds,
                    hosts
                        .iter()
                        .take(4)
                        .map(|h| h.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    self.rule.distinct_hosts
                );
                let mut finding = Finding::from_flow("port_sweep", Severity::High, summary, f);
                finding.remote = None;
                finding.first_seen = window * self.rule.window_seconds;
                out.push(finding.with_evidence(Evidence {
                    observed: hosts.len() as f64,
                    baseline: None,
                    threshold: self.rule.distinct_hosts as f64,
                    unit: "distinct hosts on one port".into(),
                }));
            }
        }
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
    fn scans_and_sweeps_counted_exactly_up_to_the_threshold() {
        let mut d = PortScan::new(PortScanRule::default(), 1_000);
        let mut flows: Vec<Flow> = (0..40)
            .map(|p| {
                flow(
                    Path::RejectedEgress,
                    "203.0.113.9",
                    1_000 + p,
                    60,
                    600 + p as u64,
                )
            })
            .collect();
        // Repeats of the same port do not count twice.
        flows.extend((0..40).map(|_| flow(Path::RejectedEgress, "203.0.113.8", 22, 60, 610)));
        let found = run(&mut d, &flows);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].rule, found[0].remote_port), ("port_scan", None));
        assert_eq!(found[0].evidence.as_ref().unwrap().observed, 24.0);
        let sweep: Vec<Flow> = (0..100)
            .map(|h| {
                flow(
                    Path::NatEgress,
                    &format!("198.51.{}.{}", h / 50, h % 50 + 1),
                    443,
                    60,
                    900 + h,
                )
            })
            .collect();
        let found = run(&mut d, &sweep);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].rule, found[0].remote, found[0].remote_port),
            ("port_sweep", None, Some(443))
        );
    }
}
