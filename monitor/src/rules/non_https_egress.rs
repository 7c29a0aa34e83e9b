//! non_https_egress: egress through the NAT is meant to be HTTPS (or the configured ports), so
//! anything else is worth a look.

use std::collections::BTreeSet;

use super::{proto_name, Rule, HIGH_RISK_PORTS};
use crate::classify::{Flow, Path};
use crate::finding::{Finding, Severity};

/// Accepted NAT egress to a port outside the allowed set (default {443}).
pub struct NonHttpsEgress {
    pub allowed_ports: BTreeSet<u16>,
}

impl Rule for NonHttpsEgress {
    fn name(&self) -> &'static str {
        "non_https_egress"
    }
    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if f.path != Path::NatEgress || f.action == Some("REJECT") {
            return;
        }
        // DNS has its own rule.
        let port = f.remote_port.unwrap_or(0);
        if self.allowed_ports.contains(&port) || port == 53 || port == 853 {
            return;
        }
        let severity = if HIGH_RISK_PORTS.contains(&port) {
            Severity::High
        } else {
            Severity::Medium
        };
        let summary = format!(
            "{} egress through the NAT to port {port} ({} bytes); allowed ports: {:?}",
            proto_name(f.protocol),
            f.bytes,
            self.allowed_ports
        );
        out.push(Finding::from_flow(self.name(), severity, summary, f));
    }
}
