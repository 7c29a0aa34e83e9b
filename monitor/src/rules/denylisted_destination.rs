//! denylisted_destination: known-bad addresses (deny lists the team loads) are worth an alert
//! whether or not the connection got through.

use std::path::PathBuf;

use super::Rule;
use crate::classify::{Flow, Path};
use crate::denylist::Denylist;
use crate::finding::{Finding, Severity};

/// Egress to an address on a deny list (plain CIDRs, Spamhaus DROP, Tor exit lists).
pub struct DenylistedDestination {
    pub list: Denylist,
    pub files: Vec<PathBuf>,
}

impl Rule for DenylistedDestination {
    fn name(&self) -> &'static str {
        "denylisted_destination"
    }
    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if !matches!(f.path, Path::NatEgress | Path::RejectedEgress) {
            return;
        }
        let Some(remote) = f.remote else { return };
        if let Some(source) = self.list.lookup(remote) {
            let severity = if f.path == Path::NatEgress {
                Severity::Critical
            } else {
                Severity::High
            };
            let verb = if f.path == Path::NatEgress {
                "reached"
            } else {
                "tried to reach"
            };
            let summary = format!("workload {verb} {remote}, on the deny list {source}");
            out.push(Finding::from_flow(self.name(), severity, summary, f));
        }
    }
}
