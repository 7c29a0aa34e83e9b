//! The daemon's one configuration type, read from TOML. Every key has a default; an unknown
//! key or a bad value is an error that names it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::topology::Topology;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Config {
    /// Where /metrics, /healthz and /readyz listen.
    pub listen: SocketAddr,
    /// Checkpoints and detector state.
    pub state_dir: PathBuf,
    /// `cloudwatch`, `file:PATH` or `stdin`.
    pub source: String,
    /// With `file:PATH`, keep reading what is appended to the file until shutdown.
    pub follow: bool,
    /// The stack whose flow-log group `cloudwatch` reads.
    pub stack: String,
    /// Read this log group instead of the stack's.
    pub log_group: Option<String>,
    /// The record format; default: DescribeFlowLogs `LogFormat` (cloudwatch), else the
    /// file's header line, else the provisioner's format.
    pub format: Option<String>,
    /// `provision outputs` JSON describing the stack's network.
    pub outputs_file: Option<PathBuf>,
    /// The network, given directly (overrides `outputs-file`).
    pub topology: Option<Topology>,
    /// Seconds between CloudWatch polls.
    pub poll_interval_seconds: u64,
    /// Read only log streams hashing to this shard: "INDEX/COUNT".
    pub shard: Option<String>,
    pub rules: Rules,
    pub alerts: Alerts,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Rules {
    /// Remote ports NAT egress may use without a finding.
    pub allowed_ports: BTreeSet<u16>,
    /// Deny-list files: plain CIDR per line, Spamhaus DROP, or Tor exit list.
    pub denylists: Vec<PathBuf>,
    pub non_https_egress: bool,
    pub rejected_egress: bool,
    pub denylisted_destination: bool,
    pub dns_bypass: bool,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Alerts {
    /// One alert per (rule, workload, remote) within this many seconds.
    pub dedupe_window_seconds: u64,
    /// At most this many alerts per minute per sink; the rest wait in the queue.
    pub max_per_minute: u32,
    /// Alerts a sink may hold while it is down; overflow is counted and dropped.
    pub queue_capacity: usize,
    /// JSON line per finding on stdout.
    pub stdout: bool,
    /// Alertmanager base URL, e.g. http://127.0.0.1:9093.
    pub alertmanager_url: Option<String>,
    /// Generic webhook: each finding POSTed as JSON.
    pub webhook_url: Option<String>,
    /// Desktop notifications over D-Bus.
    pub desktop: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:9477".parse().expect("valid address"),
            state_dir: PathBuf::from("/var/lib/egresswatch"),
            source: "cloudwatch".into(),
            follow: false,
            stack: "egresswatch".into(),
            log_group: None,
            format: None,
            outputs_file: None,
            topology: None,
            poll_interval_seconds: 10,
            shard: None,
            rules: Rules::default(),
            alerts: Alerts::default(),
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            allowed_ports: BTreeSet::from([443]),
            denylists: vec![],
            non_https_egress: true,
            rejected_egress: true,
            denylisted_destination: true,
            dns_bypass: true,
        }
    }
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            dedupe_window_seconds: 3600,
            max_per_minute: 60,
            queue_capacity: 10_000,
            stdout: true,
            alertmanager_url: None,
            webhook_url: None,
            desktop: false,
        }
    }
}

impl Config {
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, String> {
        let c: Config = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        c.validate().map_err(|e| format!("{origin}: {e}"))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.source == "cloudwatch"
            || self.source == "stdin"
            || self.source.starts_with("file:"))
        {
            return Err(format!(
                "source = \"{}\": expected cloudwatch, stdin or file:PATH",
                self.source
            ));
        }
        if self.follow && !self.source.starts_with("file:") {
            return Err("follow = true needs source = \"file:PATH\"".into());
        }
        if let Some(s) = &self.shard {
            parse_shard(s)?;
        }
        if self.poll_interval_seconds == 0 {
            return Err("poll-interval-seconds must be at least 1".into());
        }
        if self.alerts.queue_capacity == 0 || self.alerts.max_per_minute == 0 {
            return Err(
                "alerts.queue-capacity and alerts.max-per-minute must be at least 1".into(),
            );
        }
        if let Some(f) = &self.format {
            flowlog::Format::parse(f).map_err(|e| format!("format: {e}"))?;
        }
        Ok(())
    }
}

/// "INDEX/COUNT" with 0 <= INDEX < COUNT.
pub fn parse_shard(s: &str) -> Result<(u32, u32), String> {
    let err = || format!("shard = \"{s}\": expected INDEX/COUNT with 0 <= INDEX < COUNT, e.g. 0/3");
    let (i, n) = s.split_once('/').ok_or_else(err)?;
    let i: u32 = i.trim().parse().map_err(|_| err())?;
    let n: u32 = n.trim().parse().map_err(|_| err())?;
    if n == 0 || i >= n {
        return Err(err());
    }
    Ok((i, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_errors() {
        let c = Config::from_toml("", "c.toml").unwrap();
        assert_eq!(c.rules.allowed_ports, BTreeSet::from([443]));
        assert_eq!(c.listen.port(), 9477);
        let e = Config::from_toml("[rules]\nallowed-port = [443]", "c.toml").unwrap_err();
        assert!(e.contains("c.toml") && e.contains("allowed-port"), "{e}");
        let e = Config::from_toml("source = \"kafka\"", "c.toml").unwrap_err();
        assert!(e.contains("source = \"kafka\""), "{e}");
        let e = Config::from_toml("shard = \"3/3\"", "c.toml").unwrap_err();
        assert!(e.contains("INDEX/COUNT"), "{e}");
        let e = Config::from_toml("listen = \"nowhere\"", "c.toml").unwrap_err();
        assert!(e.contains("listen"), "{e}");
        assert_eq!(parse_shard("1/3"), Ok((1, 3)));
    }
}
