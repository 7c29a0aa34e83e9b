//! What rules report: findings with their severity and evidence, and the names of the rules,
//! which findings, metrics, suppressions and the outbox all share.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::classify::Flow;

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
    /// The number that goes with the label, on GuardDuty's 1-10 scale (low 1-3.9, medium
    /// 4-6.9, high 7-8.9, critical 9-10), which SIEMs and Security Hub rank by.
    pub fn value(self) -> u8 {
        match self {
            Severity::Low => 2,
            Severity::Medium => 5,
            Severity::High => 8,
            Severity::Critical => 9,
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
    /// Packets in the record that raised it (or the rule's total, where it sums).
    #[serde(default)]
    pub packets: u64,
    /// ACCEPT or REJECT, from the record that raised it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Where the record was written, when the flow log's format carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The stack whose network it came from, in a daemon that watches several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stack: Option<String>,
    /// For rules that compare against a learnt baseline or a threshold: the numbers behind
    /// the decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// What a rule keeps of a record to make a finding from it later (a window waiting for its
/// late records). Plain data with every field always written: a rule's snapshot uses a
/// compact format that cannot read back a type whose empty fields are left out, as the
/// finding's wire type leaves them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeptRecord {
    pub workload: Option<IpAddr>,
    pub interface_id: Option<String>,
    pub instance_id: Option<String>,
    pub remote: Option<IpAddr>,
    pub remote_port: Option<u16>,
    pub protocol: Option<u8>,
    pub bytes: u64,
    pub packets: u64,
    pub first_seen: u64,
    pub last_seen: u64,
    pub action: Option<String>,
    pub account_id: Option<String>,
    pub vpc_id: Option<String>,
    pub region: Option<String>,
}

impl KeptRecord {
    pub fn of(f: &Flow) -> Self {
        KeptRecord {
            workload: f.workload,
            interface_id: f.interface_id.map(String::from),
            instance_id: f.instance_id.map(String::from),
            remote: f.remote,
            remote_port: f.remote_port,
            protocol: f.protocol,
            bytes: f.bytes,
            packets: f.packets,
            first_seen: f.start,
            last_seen: f.end,
            action: f.action.map(String::from),
            account_id: f.account_id.map(String::from),
            vpc_id: f.vpc_id.map(String::from),
            region: f.region.map(String::from),
        }
    }
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
pub const RULES: [&str; 14] = [
    "non_https_egress",
    "rejected_egress",
    "denylisted_destination",
    "dns_bypass",
    "new_remote_port",
    "traffic_volume_unusual",
    "rare_destination",
    "slow_drip",
    "s3_endpoint_upload",
    "upload_volume_unusual",
    "long_connection",
    "beaconing",
    "port_scan",
    "port_sweep",
];

/// The severities a rule raises findings at: `egresswatch_findings_total` has each of these
/// series from the start, at zero, so `increase()` counts a rule's first finding.
pub fn severities(rule: &str) -> &'static [Severity] {
    use Severity::*;
    match rule {
        "denylisted_destination" => &[High, Critical],
        "non_https_egress" | "beaconing" | "upload_volume_unusual" => &[Medium, High],
        "long_connection" => &[Medium],
        "s3_endpoint_upload" => &[Low, High],
        "rejected_egress" => &[Low, Medium],
        "new_remote_port" | "port_scan" => &[Medium],
        _ => &[High],
    }
}

/// A rule's finding type, GuardDuty-style `ThreatPurpose:ResourceType/Name` (GuardDuty's own
/// name where it has a finding for the same behaviour), and a short title.
pub fn taxonomy(rule: &str) -> (&'static str, &'static str) {
    match rule {
        "non_https_egress" => (
            "Policy:EC2/NonHttpsEgress",
            "Egress through the NAT on a port other than HTTPS",
        ),
        "rejected_egress" => (
            "Policy:EC2/EgressRejected",
            "Outbound attempt rejected by the security group or network ACL",
        ),
        "denylisted_destination" => (
            "UnauthorizedAccess:EC2/DenylistedDestination",
            "Traffic to a deny-listed address",
        ),
        "dns_bypass" => (
            "DefenseEvasion:EC2/UnusualDNSResolver",
            "DNS past the VPC resolver",
        ),
        "new_remote_port" => (
            "Behavior:EC2/NetworkPortUnusual",
            "A remote port the workload never used",
        ),
        "traffic_volume_unusual" => (
            "Behavior:EC2/TrafficVolumeUnusual",
            "Unusually large upload to one remote",
        ),
        "rare_destination" => (
            "Exfiltration:EC2/UploadToNewDestination",
            "Upload to a destination the fleet never contacted",
        ),
        "slow_drip" => (
            "Exfiltration:EC2/SlowDrip",
            "Steady upload to one destination over hours",
        ),
        "s3_endpoint_upload" => (
            "Exfiltration:EC2/S3EndpointVolumeUnusual",
            "Unusually large upload through the S3 gateway endpoint",
        ),
        "upload_volume_unusual" => (
            "Exfiltration:EC2/UploadVolumeUnusual",
            "A workload sent far more through the NAT than it usually does",
        ),
        "long_connection" => (
            "Backdoor:EC2/LongConnection",
            "A connection held open for hours to a network few workloads use",
        ),
        "beaconing" => (
            "Backdoor:EC2/C&CActivity.Beacon",
            "Beacon-like connections to one remote network",
        ),
        "port_scan" => ("Recon:EC2/Portscan", "Outbound port scan"),
        "port_sweep" => ("Impact:EC2/PortSweep", "Outbound port sweep"),
        _ => ("Unknown:EC2/Unknown", "Finding"),
    }
}

impl Finding {
    /// Reads back a finding a sink wrote as JSON (for scoring); the rule must be one of
    /// [`RULES`].
    pub fn from_json(v: &serde_json::Value) -> Result<Self, String> {
        let name = v["rule"].as_str().ok_or("no `rule`")?;
        let rule = rule_name(name).ok_or_else(|| format!("unknown rule `{name}`"))?;
        let ip = |k: &str| v[k].as_str().and_then(|s| s.parse().ok());
        let num = |k: &str| v[k].as_u64().unwrap_or(0);
        // Times are RFC 3339 in documents (numbers in the outbox and older output).
        let time = |k: &str| {
            v[k].as_u64().unwrap_or_else(|| {
                v[k].as_str()
                    .and_then(|s| humantime::parse_rfc3339(s).ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs())
            })
        };
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
            first_seen: time("first_seen"),
            last_seen: time("last_seen"),
            records: num("records"),
            packets: num("packets"),
            action: match v["action"].as_str() {
                Some("allowed") => Some("ACCEPT".into()),
                Some("blocked") => Some("REJECT".into()),
                other => other.map(String::from),
            },
            account_id: v["account_id"].as_str().map(String::from),
            vpc_id: v["vpc_id"].as_str().map(String::from),
            region: v["region"].as_str().map(String::from),
            stack: v["stack"].as_str().map(String::from),
            evidence: serde_json::from_value(v["evidence"].clone()).ok(),
        })
    }

    /// A finding of one record that names nothing yet: fill in what the rule knows.
    pub fn new(rule: &'static str, severity: Severity, summary: String) -> Self {
        Finding {
            rule,
            severity,
            summary,
            workload: None,
            interface_id: None,
            instance_id: None,
            remote: None,
            remote_port: None,
            protocol: None,
            bytes: 0,
            first_seen: 0,
            last_seen: 0,
            records: 1,
            packets: 0,
            action: None,
            account_id: None,
            vpc_id: None,
            region: None,
            stack: None,
            evidence: None,
        }
    }

    pub fn from_flow(rule: &'static str, severity: Severity, summary: String, f: &Flow) -> Self {
        Self::from_kept(rule, severity, summary, KeptRecord::of(f))
    }

    /// The finding a record kept in a rule's state makes.
    pub fn from_kept(
        rule: &'static str,
        severity: Severity,
        summary: String,
        k: KeptRecord,
    ) -> Self {
        Finding {
            rule,
            severity,
            summary,
            workload: k.workload,
            interface_id: k.interface_id,
            instance_id: k.instance_id,
            remote: k.remote,
            remote_port: k.remote_port,
            protocol: k.protocol,
            bytes: k.bytes,
            first_seen: k.first_seen,
            last_seen: k.last_seen,
            records: 1,
            packets: k.packets,
            action: k.action,
            account_id: k.account_id,
            vpc_id: k.vpc_id,
            region: k.region,
            stack: None,
            evidence: None,
        }
    }

    pub fn with_evidence(mut self, evidence: Evidence) -> Self {
        self.evidence = Some(evidence);
        self
    }
}
