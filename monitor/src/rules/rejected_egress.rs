//! rejected_egress: an attempt the security group or a network ACL stopped still says what a
//! workload tried to reach.

use super::{proto_name, Rule, HIGH_RISK_PORTS};
use crate::classify::{Flow, Path};
use crate::finding::{Finding, Severity};

/// Outbound attempts the security group or a network ACL rejected.
pub struct RejectedEgress;

impl Rule for RejectedEgress {
    fn name(&self) -> &'static str {
        "rejected_egress"
    }
    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if f.path != Path::RejectedEgress {
            return;
        }
        let port = f.remote_port.unwrap_or(0);
        let severity = if HIGH_RISK_PORTS.contains(&port) {
            Severity::Medium
        } else {
            Severity::Low
        };
        let summary = format!(
            "outbound {} to port {port} was rejected by the security group or network ACL",
            proto_name(f.protocol)
        );
        out.push(Finding::from_flow(self.name(), severity, summary, f));
    }
}
