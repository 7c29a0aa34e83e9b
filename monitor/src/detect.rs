//! Detection rules. Each rule is one type behind the [`Detector`] trait: it observes Flows in
//! event time and emits [`Finding`]s that explain themselves.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::classify::{Flow, Path};
use crate::denylist::Denylist;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
    pub const ALL: [Severity; 4] = [
        Severity::Low,
        Severity::Medium,
        Severity::High,
        Severity::Critical,
    ];
}

/// Something a rule flagged, with the evidence behind it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    #[serde(deserialize_with = "known_rule")]
    pub rule: RuleName,
    pub severity: Severity,
    pub summary: String,
    pub workload: Option<IpAddr>,
    pub interface_id: Option<String>,
    pub instance_id: Option<String>,
    pub remote: Option<IpAddr>,
    pub remote_port: Option<u16>,
    pub protocol: Option<u8>,
    pub bytes: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    pub records: u64,
    /// For rules that compare against a learnt baseline or a threshold: the numbers behind
    /// the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// A rule's name, as every finding and metric carries it. (An alias, so that serde reads it
/// through `known_rule` rather than borrowing it from the input.)
pub type RuleName = &'static str;

/// The name a rule carries, for a name read back from a file; None for no rule's.
pub fn rule_name(name: &str) -> Option<RuleName> {
    RULES.iter().copied().find(|r| *r == name)
}

/// Reads a rule's name back (from the outbox) as the name the rule itself carries.
fn known_rule<'de, D: serde::Deserializer<'de>>(d: D) -> Result<&'static str, D::Error> {
    let name = String::deserialize(d)?;
    rule_name(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown rule `{name}`")))
}

/// The numbers a behavioural rule decided on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// What was observed (bytes, distinct ports, score...).
    pub observed: f64,
    /// What was expected from history, where the rule learns one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<f64>,
    /// The value `observed` had to reach.
    pub threshold: f64,
    pub unit: String,
}

/// Every rule the daemon has, by the name findings and metrics carry.
pub const RULES: [&str; 11] = [
    "non_https_egress",
    "rejected_egress",
    "denylisted_destination",
    "dns_bypass",
    "new_remote_port",
    "traffic_volume_unusual",
    "rare_destination",
    "slow_drip",
    "beaconing",
    "port_scan",
    "port_sweep",
];

impl Finding {
    /// Reads back a finding a sink wrote as JSON (for scoring); the rule must be one of
    /// [`RULES`].
    pub fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        let name = v["rule"].as_str().ok_or("no `rule`")?;
        let rule = RULES
            .iter()
            .find(|r| **r == name)
            .copied()
            .ok_or_else(|| format!("unknown rule `{name}`"))?;
        let ip = |k: &str| v[k].as_str().and_then(|s| s.parse().ok());
        let num = |k: &str| v[k].as_u64().unwrap_or(0);
        let severity =
            serde_json::from_value(v["severity"].clone()).map_err(|e| format!("severity: {e}"))?;
        Ok(Finding {
            rule,
            severity,
            summary: v["summary"].as_str().unwrap_or_default().to_string(),
            workload: ip("workload"),
            interface_id: v["interface_id"].as_str().map(String::from),
            instance_id: v["instance_id"].as_str().map(String::from),
            remote: ip("remote"),
            remote_port: v["remote_port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok()),
            protocol: v["protocol"].as_u64().and_then(|p| u8::try_from(p).ok()),
            bytes: num("bytes"),
            first_seen: num("first_seen"),
            last_seen: num("last_seen"),
            records: num("records"),
            evidence: serde_json::from_value(v["evidence"].clone()).ok(),
        })
    }

    pub fn from_flow(rule: &'static str, severity: Severity, summary: String, f: &Flow) -> Self {
        Finding {
            rule,
            severity,
            summary,
            workload: f.workload,
            interface_id: f.interface_id.map(String::from),
            instance_id: f.instance_id.map(String::from),
            remote: f.remote,
            remote_port: f.remote_port,
            protocol: f.protocol,
            bytes: f.bytes,
            first_seen: f.start,
            last_seen: f.end,
            records: 1,
            evidence: None,
        }
    }

    pub fn with_evidence(mut self, evidence: Evidence) -> Self {
        self.evidence = Some(evidence);
        self
    }
}

/// One detection rule.
pub trait Detector: Send {
    fn name(&self) -> &'static str;
    /// Looks at one flow; pushes what it finds.
    fn observe(&mut self, flow: &Flow, out: &mut Vec<Finding>);
    /// The rule's learnt state, for the snapshot in the state dir; `None` for stateless rules.
    fn save_state(&self) -> Option<Vec<u8>> {
        None
    }
    /// Entries the rule's bounded state has forgotten so far.
    fn state_evictions(&self) -> u64 {
        0
    }
    /// Restores what `save_state` returned in an earlier run.
    fn load_state(&mut self, _bytes: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Ports whose use through the NAT is high severity: remote shells, file shares, databases.
const HIGH_RISK_PORTS: [u16; 12] = [
    21, 22, 23, 445, 1433, 1521, 3306, 3389, 5432, 5900, 6379, 27017,
];

/// Human name of a protocol number for messages.
pub fn proto_name(p: Option<u8>) -> String {
    match p {
        Some(6) => "TCP".into(),
        Some(17) => "UDP".into(),
        Some(1) => "ICMP".into(),
        Some(n) => format!("protocol {n}"),
        None => "unknown protocol".into(),
    }
}

/// Accepted NAT egress to a port outside the allowed set (default {443}).
pub struct NonHttpsEgress {
    pub allowed_ports: BTreeSet<u16>,
}

impl Detector for NonHttpsEgress {
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

/// Outbound attempts the security group or a network ACL rejected.
pub struct RejectedEgress;

impl Detector for RejectedEgress {
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

/// Egress to an address on a deny list (plain CIDRs, Spamhaus DROP, Tor exit lists).
pub struct DenylistedDestination {
    pub list: Denylist,
    pub files: Vec<PathBuf>,
}

impl Detector for DenylistedDestination {
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
            let summary = format!("workload {verb} {remote}, listed in {source}");
            out.push(Finding::from_flow(self.name(), severity, summary, f));
        }
    }
}

/// DNS to a resolver outside the VPC: plain DNS (53) or DNS over TLS (853) to any address,
/// and DNS over HTTPS (443) to a known public resolver. Route 53 Resolver traffic never
/// appears in flow logs, so this is a workload resolving names past the VPC resolver, its
/// DNS Firewall and its query logs.
pub struct DnsBypass {
    /// Public resolvers that answer DNS over HTTPS on 443.
    pub resolvers: Denylist,
}

/// The public resolvers egresswatch knows without configuration.
pub const PUBLIC_RESOLVERS: &str = include_str!("../lists/public-resolvers.txt");

impl DnsBypass {
    /// The shipped list plus the files given; a file that does not parse is an error.
    pub fn new(extra: &[PathBuf]) -> Result<Self, String> {
        let mut resolvers = Denylist::default();
        resolvers.add_text(PUBLIC_RESOLVERS, "egresswatch's public resolver list")?;
        for f in extra {
            resolvers.load(f)?;
        }
        Ok(DnsBypass { resolvers })
    }
}

impl Detector for DnsBypass {
    fn name(&self) -> &'static str {
        "dns_bypass"
    }
    fn observe(&mut self, f: &Flow, out: &mut Vec<Finding>) {
        if !matches!(f.path, Path::NatEgress | Path::RejectedEgress) {
            return;
        }
        let remote = f.remote.map(|r| r.to_string()).unwrap_or_default();
        let summary = match f.remote_port {
            Some(53) => format!("DNS to outside resolver {remote} instead of the VPC resolver"),
            Some(853) => {
                format!("DNS over TLS to outside resolver {remote} instead of the VPC resolver")
            }
            Some(443) if f.remote.is_some_and(|r| self.resolvers.lookup(r).is_some()) => format!(
                "HTTPS to public DNS resolver {remote}: DNS over HTTPS past the VPC resolver"
            ),
            _ => return,
        };
        out.push(Finding::from_flow(self.name(), Severity::High, summary, f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(remote: &str, port: u16) -> Flow<'static> {
        Flow {
            path: Path::NatEgress,
            workload: Some("10.0.1.5".parse().unwrap()),
            remote: Some(remote.parse().unwrap()),
            remote_port: Some(port),
            protocol: Some(6),
            bytes: 900,
            packets: 3,
            action: Some("ACCEPT"),
            end: 1_764_150_060,
            start: 1_764_150_000,
            interface_id: Some("eni-nat"),
            instance_id: None,
            opens_connection: true,
        }
    }

    fn fires(d: &mut DnsBypass, remote: &str, port: u16) -> Option<String> {
        let mut out = Vec::new();
        d.observe(&flow(remote, port), &mut out);
        out.pop().map(|f| f.summary)
    }

    #[test]
    fn dns_past_the_vpc_resolver_on_53_853_and_https_to_public_resolvers() {
        let mut d = DnsBypass::new(&[]).unwrap();
        assert!(fires(&mut d, "1.1.1.1", 443)
            .unwrap()
            .contains("DNS over HTTPS"));
        assert!(fires(&mut d, "2001:4860:4860::8888", 443).is_some());
        assert!(
            fires(&mut d, "45.90.28.77", 443).is_some(),
            "NextDNS's range"
        );
        assert!(fires(&mut d, "203.0.113.9", 53)
            .unwrap()
            .starts_with("DNS to"));
        assert!(fires(&mut d, "203.0.113.9", 853)
            .unwrap()
            .starts_with("DNS over TLS"));
        // Ordinary HTTPS, and a resolver's address on another port, are not DNS.
        assert_eq!(fires(&mut d, "203.0.113.9", 443), None);
        assert_eq!(fires(&mut d, "8.8.8.8", 8443), None);
        // A team's own addition.
        let dir = std::env::temp_dir().join(format!("ew-resolvers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let extra = dir.join("resolvers.txt");
        std::fs::write(&extra, "# our list\n203.0.113.0/28\n").unwrap();
        let mut d = DnsBypass::new(std::slice::from_ref(&extra)).unwrap();
        assert!(fires(&mut d, "203.0.113.9", 443).is_some());
        std::fs::write(&extra, "resolver.example\n").unwrap();
        let err = DnsBypass::new(std::slice::from_ref(&extra)).err().unwrap();
        assert!(err.contains("resolvers.txt:1"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
