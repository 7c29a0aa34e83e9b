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
pub const RULES: [&str; 12] = [
    "non_https_egress",
    "rejected_egress",
    "denylisted_destination",
    "dns_bypass",
    "new_remote_port",
    "traffic_volume_unusual",
    "rare_destination",
    "slow_drip",
    "s3_endpoint_upload",
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
