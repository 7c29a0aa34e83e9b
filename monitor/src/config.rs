//! The daemon's one configuration type, read from TOML. Every key has a default; an unknown
//! key or a bad value is an error that names it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::rules::beaconing::BeaconingRule;
use crate::rules::long_connection::LongConnectionRule;
use crate::rules::new_remote_port::NewRemotePortRule;
use crate::rules::port_scan::PortScanRule;
use crate::rules::rare_destination::RareDestinationRule;
use crate::rules::s3_endpoint_upload::S3EndpointUploadRule;
use crate::rules::slow_drip::SlowDripRule;
use crate::rules::traffic_volume::TrafficVolumeRule;
use crate::rules::upload_volume::UploadVolumeRule;
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
    /// Read this log group instead of the stack's (its outputs' `log_group`, else the name
    /// the provisioner gives it).
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
    /// Seconds between the info lines that say how reading goes (records/s, lag, findings);
    /// 0: none.
    pub status_interval_seconds: u64,
    /// Seconds between checkpoints (read positions committed together with what the rules
    /// learnt); stretched when the rules' state is large, so checkpoints never take more
    /// than a hundredth of the time. A crash re-reads at most about this much.
    pub checkpoint_interval_seconds: u64,
    /// Longest line read from a file or stdin; a longer one is skipped unread and counted as
    /// a bad line (reason `line_too_long`), so input without newlines cannot fill memory.
    pub max_line_bytes: usize,
    /// How far past this host's clock a record's start or end may be; past it (or before
    /// 2014, older than any flow-log record, or a start after the end) the record is a bad line
    /// (reason `implausible_time`) and moves no learning clock.
    pub max_future_skew_seconds: u64,
    /// Removed: refused with the reason (see [`SHARD_REMOVED`]).
    #[serde(rename = "shard")]
    pub removed_shard: Option<toml::Value>,
    /// How the CloudWatch source spends the account's API quotas.
    pub cloudwatch: CloudWatch,
    /// The S3 source: flow-log objects announced on an SQS queue, or listed for a backfill.
    pub s3: S3,
    /// Several stacks in one daemon, each with its own network, source position, rule state
    /// and outbox (under `state-dir/NAME`) and its own thread: `["research", "clinical"]`
    /// (their outputs in `outputs-dir/NAME.json`), or tables naming what differs per stack.
    /// Every other setting is shared.
    pub stacks: Vec<StackEntry>,
    /// Where the outputs of stacks listed by name only are: `DIR/NAME.json`.
    pub outputs_dir: PathBuf,
    /// This is one stack of several (set by [`Config::for_stack`]).
    #[serde(skip)]
    pub one_of_several: bool,
    pub rules: Rules,
    pub alerts: Alerts,
    /// The findings store in the state dir (`[findings]`): how long and how much it keeps.
    pub findings: crate::findings::Retention,
    /// What the team has said is fine (`[[suppress]]`); reloaded when the config file changes.
    pub suppress: Vec<crate::suppress::Suppression>,
    /// Tags for workload addresses or networks (`[[workloads]]`), for suppressions by tag
    /// where EC2 does not describe the workload; reloaded with the suppressions.
    pub workloads: Vec<crate::inventory::WorkloadEntry>,
    /// Seconds between refreshes of the workload inventory from EC2 (the VPC's interfaces
    /// and instances and their tags) when a suppression names a tag or an interface; 0: never.
    pub inventory_refresh_seconds: u64,
    /// Print each suppressed finding to stdout with the suppression that matched
    /// (`monitor --explain`).
    #[serde(skip)]
    pub explain: bool,
    /// The file this was read from, watched for changes to the suppressions.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// Why `shard` is refused, and what to do instead.
pub const SHARD_REMOVED: &str = "shard was removed: it split one flow log's streams between \
    daemons, so a NAT gateway's streams and the workload streams its flows are judged with \
    (de-duplication, per-network novelty, traffic volume) ended up on different daemons. Run \
    one daemon per stack instead; it stays within the account's CloudWatch Logs quotas on its \
    own ([cloudwatch] get-log-events-per-second) however many streams the group holds. Remove \
    `shard` from the config (and --shard from the command line)";

/// The CloudWatch source's share of the account's CloudWatch Logs quotas, and how often it
/// looks at streams that show nothing new. The defaults stay within the quotas of every
/// region (GetLogEvents 10/s in the strictest) with room for another reader.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct CloudWatch {
    /// GetLogEvents calls per second, for every stream together (AWS: 25/s per account and
    /// region, 10/s in us-west-2, eu-west-1, eu-central-1 and others; not adjustable).
    pub get_log_events_per_second: f64,
    /// DescribeLogStreams (and DescribeLogGroups) calls per second (AWS: 25/s, adjustable).
    pub describe_log_streams_per_second: f64,
    /// Calls in flight at once.
    pub concurrency: usize,
    /// How late a stream's `lastEventTimestamp` and `lastIngestionTime` may show its newest
    /// events (AWS: "typically less than an hour"): each poll lists streams this far back.
    pub timestamp_lag_seconds: u64,
    /// A stream within the lag whose listing shows nothing new is read anyway this often.
    pub quiet_recheck_seconds: u64,
    /// A stream older than the lag is read anyway this often, with spare budget only.
    pub dormant_recheck_seconds: u64,
    /// Every stream the retention keeps is listed this often (streams gone or aged out are
    /// dropped from the checkpoint then).
    pub full_listing_seconds: u64,
    /// How far back a stream with no position (every stream, at a first start) is read:
    /// the warm start. The rules learn from these days before they judge live records, so a
    /// new install has its baselines in minutes instead of a day; the group's retention
    /// bounds it too. 0 reads what the retention keeps.
    pub history_seconds: u64,
}

impl Default for CloudWatch {
    fn default() -> Self {
        CloudWatch {
            get_log_events_per_second: 8.0,
            describe_log_streams_per_second: 5.0,
            concurrency: 4,
            timestamp_lag_seconds: 3_600,
            quiet_recheck_seconds: 300,
            dormant_recheck_seconds: 6 * 3_600,
            full_listing_seconds: 900,
            history_seconds: 7 * 86_400,
        }
    }
}

impl CloudWatch {
    fn validate(&self) -> Result<(), String> {
        for (name, v, most) in [
            // 30/s is the highest GetLogEvents quota of any region (eu-west-3).
            (
                "cloudwatch.get-log-events-per-second",
                self.get_log_events_per_second,
                30.0,
            ),
            // The adjustable DescribeLogStreams quota can be raised; 100/s is past any use.
            (
                "cloudwatch.describe-log-streams-per-second",
                self.describe_log_streams_per_second,
                100.0,
            ),
        ] {
            if !(v.is_finite() && (0.1..=most).contains(&v)) {
                return Err(format!("{name} = {v}: must be between 0.1 and {most}"));
            }
        }
        within("cloudwatch.concurrency", self.concurrency as u64, 1, 64)?;
        // CloudWatch Logs keeps events ten years at most.
        within(
            "cloudwatch.history-seconds",
            self.history_seconds,
            0,
            3_653 * 86_400,
        )?;
        // A day: past that a stream's timestamps say nothing useful about it.
        within(
            "cloudwatch.timestamp-lag-seconds",
            self.timestamp_lag_seconds,
            0,
            86_400,
        )?;
        within(
            "cloudwatch.quiet-recheck-seconds",
            self.quiet_recheck_seconds,
            1,
            86_400,
        )?;
        within(
            "cloudwatch.dormant-recheck-seconds",
            self.dormant_recheck_seconds,
            1,
            30 * 86_400,
        )?;
        within(
            "cloudwatch.full-listing-seconds",
            self.full_listing_seconds,
            1,
            86_400,
        )
    }
}

/// One stack of a daemon that watches several.
#[derive(Clone, Debug, PartialEq)]
pub struct StackEntry {
    pub name: String,
    pub outputs_file: Option<PathBuf>,
    pub source: Option<String>,
    pub log_group: Option<String>,
    pub s3: Option<S3>,
    pub topology: Option<Topology>,
}

/// A stack given by name, or as a table.
#[derive(Deserialize)]
#[serde(untagged)]
enum StackEntryText {
    Name(String),
    Table(Box<StackTable>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct StackTable {
    name: String,
    outputs_file: Option<PathBuf>,
    source: Option<String>,
    log_group: Option<String>,
    s3: Option<S3>,
    topology: Option<Topology>,
}

impl<'de> Deserialize<'de> for StackEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match StackEntryText::deserialize(d)? {
            StackEntryText::Name(name) => StackEntry {
                name,
                outputs_file: None,
                source: None,
                log_group: None,
                s3: None,
                topology: None,
            },
            StackEntryText::Table(t) => {
                let t = *t;
                StackEntry {
                    name: t.name,
                    outputs_file: t.outputs_file,
                    source: t.source,
                    log_group: t.log_group,
                    s3: t.s3,
                    topology: t.topology,
                }
            }
        })
    }
}

impl Config {
    /// The config of one stack of [`Config::stacks`]: the shared settings with the stack's
    /// own, its state in `state-dir/NAME`.
    pub fn for_stack(&self, entry: &StackEntry) -> Config {
        let mut c = self.clone();
        c.stacks = Vec::new();
        c.one_of_several = true;
        c.stack = entry.name.clone();
        c.state_dir = self.state_dir.join(&entry.name);
        c.topology = entry.topology.clone();
        c.outputs_file = match (&entry.outputs_file, &entry.topology) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(_)) => None,
            (None, None) => Some(self.outputs_dir.join(format!("{}.json", entry.name))),
        };
        if let Some(s) = &entry.source {
            c.source = s.clone();
        }
        c.log_group = entry.log_group.clone();
        // The queue, bucket and prefix are each stack's own: from its outputs unless given.
        c.s3 = entry.s3.clone().unwrap_or_else(|| S3 {
            queue_url: None,
            bucket: None,
            prefix: None,
            ..self.s3.clone()
        });
        c
    }

    fn validate_stacks(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for e in &self.stacks {
            let ok = !e.name.is_empty()
                && e.name.len() <= 63
                && e.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-');
            if !ok {
                return Err(format!(
                    "stacks: \"{}\" is not a stack name (letters, digits and hyphens): it names a directory under state-dir",
                    e.name
                ));
            }
            if !seen.insert(e.name.as_str()) {
                return Err(format!(
                    "stacks: \"{}\" is listed twice; one stack has one reader",
                    e.name
                ));
            }
            self.for_stack(e)
                .validate()
                .map_err(|err| format!("stacks: {}: {err}", e.name))?;
        }
        if !self.stacks.is_empty() && self.s3.range().is_some() {
            return Err(
                "a backfill (s3.from, s3.to) reads one stack: run it with that stack's outputs"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Where the S3 source finds its objects, and how it treats the queue that announces them.
/// Unset values come from the stack's outputs (`outputs-file`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct S3 {
    /// The SQS queue S3 announces new objects on.
    pub queue_url: Option<String>,
    /// The bucket and key prefix of the stack's flow logs: objects announced from elsewhere
    /// are not read, and a backfill lists this prefix.
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    /// How long a received message stays hidden from other readers; renewed while its object
    /// is read. 0: 300 s, as the stack's queue has it.
    pub visibility_timeout_seconds: u64,
    /// Where downloaded objects are kept while read (one at a time); default: the state dir.
    pub download_dir: Option<PathBuf>,
    /// A backfill: read the objects of this time range (RFC 3339 or Unix seconds) from the
    /// prefix instead of the queue, only records that start within it, and stop.
    pub from: Option<String>,
    pub to: Option<String>,
    /// A first start (no object in the checkpoint) reads the objects of this many seconds
    /// back, listed under the prefix by the time in their names, before the queue's
    /// notifications: the warm start, as `cloudwatch.history-seconds`. 0: none.
    pub history_seconds: u64,
}

impl Default for S3 {
    fn default() -> Self {
        S3 {
            queue_url: None,
            bucket: None,
            prefix: None,
            visibility_timeout_seconds: 0,
            download_dir: None,
            from: None,
            to: None,
            history_seconds: 7 * 86_400,
        }
    }
}

impl S3 {
    fn validate(&self) -> Result<(), String> {
        within(
            "s3.visibility-timeout-seconds",
            self.visibility_timeout_seconds,
            0,
            43_200,
        )?;
        // S3 lifecycle rules keep objects as long as anyone likes: a year bounds the listing.
        within("s3.history-seconds", self.history_seconds, 0, 366 * 86_400)?;
        if self.from.is_some() != self.to.is_some() {
            return Err(
                "s3.from and s3.to go together: a backfill reads a closed time range".into(),
            );
        }
        if let (Some(from), Some(to)) = (&self.from, &self.to) {
            let (f, t) = (parse_time(from)?, parse_time(to)?);
            if f >= t {
                return Err(format!(
                    "s3.from = \"{from}\" is not before s3.to = \"{to}\""
                ));
            }
        }
        Ok(())
    }

    /// The backfill's range as Unix seconds [from, to), when one is given.
    pub fn range(&self) -> Option<(u64, u64)> {
        let from = parse_time(self.from.as_deref()?).ok()?;
        let to = parse_time(self.to.as_deref()?).ok()?;
        Some((from, to))
    }
}

/// A time given as Unix seconds or RFC 3339 (`2026-11-29T08:00:00Z`).
pub fn parse_time(text: &str) -> Result<u64, String> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("\"{text}\" is not a time (RFC 3339, like 2026-11-29T08:00:00Z, or Unix seconds): {e}"))
        .and_then(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .map_err(|_| format!("\"{text}\" is before 1970"))
        })
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
    /// More public DNS resolvers (an address or CIDR per line) for `dns_bypass` to treat
    /// HTTPS to as DNS over HTTPS, beyond the list egresswatch ships.
    pub resolver_lists: Vec<PathBuf>,
    /// Entries each behavioural rule's state table may hold; the least recently touched half
    /// is forgotten when a table is full.
    pub state_entries: usize,
    pub new_remote_port: NewRemotePortRule,
    pub traffic_volume: TrafficVolumeRule,
    pub rare_destination: RareDestinationRule,
    pub slow_drip: SlowDripRule,
    pub s3_endpoint_upload: S3EndpointUploadRule,
    pub upload_volume: UploadVolumeRule,
    pub long_connection: LongConnectionRule,
    pub beaconing: BeaconingRule,
    pub port_scan: PortScanRule,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Alerts {
    /// One alert per (rule, workload, remote, port) within this many seconds of event time.
    pub dedupe_window_seconds: u64,
    /// Webhook and desktop deliveries per minute at most (stdout and Alertmanager take
    /// batches); what waits is served highest severity first.
    pub max_per_minute: u32,
    /// Event-time window over which the alert budgets below are counted.
    pub fold_window_seconds: u64,
    /// Alerts one rule may raise for one workload in a window; past it, that rule's
    /// findings for that workload are folded into one alert saying how many there were.
    pub budget_per_workload: u64,
    /// Alerts one rule may raise in a window over all workloads, before folding.
    pub budget_per_rule: u64,
    /// Bytes the alert outbox may hold; past it the oldest alerts go, counted as dropped
    /// for each sink that had not delivered them.
    pub outbox_max_bytes: u64,
    /// Age (wall clock) past which the outbox drops an alert no matter what.
    pub outbox_max_age_seconds: u64,
    /// At shutdown, how long sinks get to deliver what they hold (the rest stays in the
    /// outbox for the next start).
    pub shutdown_grace_seconds: u64,
    /// JSON line per finding on stdout.
    pub stdout: bool,
    /// Alertmanager base URL, e.g. http://127.0.0.1:9093.
    pub alertmanager_url: Option<String>,
    /// Generic webhook: each finding POSTed as JSON.
    pub webhook_url: Option<String>,
    /// What the webhook receives: `egresswatch` (the finding document, schema v1) or `ocsf`
    /// (OCSF 1.1 Detection Findings, for a SIEM or Security Lake).
    pub webhook_format: crate::document::Format,
    /// Desktop notifications over D-Bus.
    pub desktop: bool,
    /// Where the runbooks are: each Alertmanager alert links to this followed by
    /// `#runbook-findings` (a wiki page with the team's own steps, or the README).
    pub runbook_base_url: String,
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
            status_interval_seconds: 60,
            checkpoint_interval_seconds: 1,
            // A flow-log record is well under 1 KiB; CloudWatch caps an event at 256 KiB.
            max_line_bytes: 256 * 1024,
            max_future_skew_seconds: crate::pipeline::DEFAULT_MAX_FUTURE_SKEW_SECONDS,
            removed_shard: None,
            cloudwatch: CloudWatch::default(),
            s3: S3::default(),
            stacks: Vec::new(),
            outputs_dir: PathBuf::from("/etc/egresswatch"),
            one_of_several: false,
            rules: Rules::default(),
            alerts: Alerts::default(),
            findings: crate::findings::Retention::default(),
            suppress: Vec::new(),
            workloads: Vec::new(),
            inventory_refresh_seconds: 300,
            explain: false,
            path: None,
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
            resolver_lists: Vec::new(),
            // 7/8 of 65,536: a full table then just fits a 65,536-slot hash table.
            state_entries: 57_344,
            new_remote_port: NewRemotePortRule::default(),
            traffic_volume: TrafficVolumeRule::default(),
            rare_destination: RareDestinationRule::default(),
            slow_drip: SlowDripRule::default(),
            s3_endpoint_upload: S3EndpointUploadRule::default(),
            upload_volume: UploadVolumeRule::default(),
            long_connection: LongConnectionRule::default(),
            beaconing: BeaconingRule::default(),
            port_scan: PortScanRule::default(),
        }
    }
}

impl Default for Alerts {
    fn default() -> Self {
        Alerts {
            dedupe_window_seconds: 3600,
            max_per_minute: 60,
            fold_window_seconds: 600,
            budget_per_workload: 5,
            budget_per_rule: 100,
            // About 50,000 alerts (folding keeps floods to a few), read back whole at start
            // within the daemon's memory budget.
            outbox_max_bytes: 32 << 20,
            outbox_max_age_seconds: 7 * 86_400,
            shutdown_grace_seconds: 10,
            stdout: true,
            alertmanager_url: None,
            webhook_url: None,
            webhook_format: crate::document::Format::Egresswatch,
            desktop: false,
            runbook_base_url: DEFAULT_RUNBOOK_BASE_URL.into(),
        }
    }
}

impl Config {
    /// Reads and checks a config file, remembering its path (the daemon watches it for
    /// changed suppressions).
    pub fn from_file(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let mut c = Config::from_toml(&text, &path.display().to_string())?;
        c.path = Some(path.to_path_buf());
        Ok(c)
    }

    pub fn from_toml(text: &str, origin: &str) -> Result<Self, String> {
        let c: Config = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        c.validate().map_err(|e| format!("{origin}: {e}"))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.source == "cloudwatch"
            || self.source == "s3"
            || self.source == "stdin"
            || self.source.starts_with("file:"))
        {
            return Err(format!(
                "source = \"{}\": expected cloudwatch, s3, stdin or file:PATH",
                self.source
            ));
        }
        if self.s3.from.is_some() && self.source != "s3" {
            return Err("s3.from and s3.to (a backfill) need source = \"s3\"".into());
        }
        if self.follow && !self.source.starts_with("file:") {
            return Err("follow = true needs source = \"file:PATH\"".into());
        }
        if self.removed_shard.is_some() {
            return Err(SHARD_REMOVED.into());
        }
        self.cloudwatch.validate()?;
        self.s3.validate()?;
        self.validate_stacks()?;
        // Flow logs publish at most every 600 s (the longest aggregation interval): polling
        // less often than that only delays alerts, so a larger value is a mistake in units.
        within("poll-interval-seconds", self.poll_interval_seconds, 1, 600)?;
        within(
            "status-interval-seconds",
            self.status_interval_seconds,
            0,
            86_400,
        )?;
        self.alerts.validate()?;
        crate::suppress::Suppressions::new(&self.suppress)?;
        // Five minutes: what a crash makes the daemon read again, and how late a checkpoint
        // may be, should stay short.
        within(
            "checkpoint-interval-seconds",
            self.checkpoint_interval_seconds,
            1,
            300,
        )?;
        // 64 MiB: a line is held whole in memory while it is read.
        within("max-line-bytes", self.max_line_bytes as u64, 256, 64 << 20)?;
        // A minute is within any NTP-kept clock's error and delivery's; a year is no bound.
        within(
            "max-future-skew-seconds",
            self.max_future_skew_seconds,
            60,
            365 * 86_400,
        )?;
        self.rules.validate()?;
        if let Some(f) = &self.format {
            flowlog::Format::parse(f).map_err(|e| format!("format: {e}"))?;
        }
        Ok(())
    }
}

/// The README's runbook section in the project's repository (as Cargo.toml declares it),
/// where `alerts.runbook-base-url` points unless set.
pub const DEFAULT_RUNBOOK_BASE_URL: &str =
    concat!(env!("CARGO_PKG_REPOSITORY"), "/blob/main/README.md");

/// Refuses a URL the sinks could never reach: anything but http:// or https:// with a host.
fn http_url(key: &str, url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{key} = \"{url}\": {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!(
            "{key} = \"{url}\": expected an http:// or https:// URL with a host"
        ));
    }
    Ok(())
}

impl Alerts {
    /// Each value must be at least 1 and at most a bound that keeps memory and waits sane.
    fn validate(&self) -> Result<(), String> {
        // Refused now rather than retried for ever at run time.
        if let Some(u) = &self.alertmanager_url {
            http_url("alerts.alertmanager-url", u)?;
        }
        if let Some(u) = &self.webhook_url {
            http_url("alerts.webhook-url", u)?;
        }
        http_url("alerts.runbook-base-url", &self.runbook_base_url)?;
        let bounded: [(&str, u64, u64); 7] = [
            // A week: event-time memory of alerts is bounded by entries, but a longer
            // window only hides repeats a SOC wants to see again.
            (
                "alerts.dedupe-window-seconds",
                self.dedupe_window_seconds,
                7 * 86_400,
            ),
            (
                "alerts.max-per-minute",
                u64::from(self.max_per_minute),
                60_000,
            ),
            // A day: folds are held open this long in event time.
            (
                "alerts.fold-window-seconds",
                self.fold_window_seconds,
                86_400,
            ),
            (
                "alerts.budget-per-workload",
                self.budget_per_workload,
                100_000,
            ),
            ("alerts.budget-per-rule", self.budget_per_rule, 1_000_000),
            // 1 GiB: the outbox is read whole at start, into memory.
            ("alerts.outbox-max-bytes", self.outbox_max_bytes, 1 << 30),
            // Ten minutes: systemd's and ECS's stop timeouts are shorter than that.
            (
                "alerts.shutdown-grace-seconds",
                self.shutdown_grace_seconds,
                600,
            ),
        ];
        for (name, v, max) in bounded {
            within(name, v, 1, max)?;
        }
        // A minute to 90 days.
        within(
            "alerts.outbox-max-age-seconds",
            self.outbox_max_age_seconds,
            60,
            90 * 86_400,
        )
    }
}

impl Rules {
    /// Each rule on that first learns what the fleet shares, with its learning period in
    /// seconds of event time (what it sees meanwhile is judged when the period ends).
    pub fn learning_periods(&self) -> Vec<(&'static str, u64)> {
        [
            (
                "beaconing",
                self.beaconing.enabled,
                self.beaconing.learning_seconds,
            ),
            (
                "long_connection",
                self.long_connection.enabled,
                self.long_connection.learning_seconds,
            ),
            (
                "rare_destination",
                self.rare_destination.enabled,
                self.rare_destination.learning_seconds,
            ),
            (
                "slow_drip",
                self.slow_drip.enabled,
                self.slow_drip.learning_seconds,
            ),
            (
                "traffic_volume_unusual",
                self.traffic_volume.enabled,
                self.traffic_volume.learning_seconds,
            ),
        ]
        .into_iter()
        .filter(|(_, on, seconds)| *on && *seconds > 0)
        .map(|(rule, _, seconds)| (rule, seconds))
        .collect()
    }

    /// A period as people say it: "24 h", "7 days", "90 s".
    pub fn period_text(seconds: u64) -> String {
        const DAY: u64 = 86_400;
        if seconds >= 2 * DAY && seconds.is_multiple_of(DAY) {
            format!("{} days", seconds / DAY)
        } else if seconds >= 3_600 && seconds.is_multiple_of(3_600) {
            format!("{} h", seconds / 3_600)
        } else {
            format!("{seconds} s")
        }
    }

    /// The longest of [`Rules::learning_periods`] (0 when no rule learns).
    pub fn longest_learning_seconds(&self) -> u64 {
        self.learning_periods()
            .iter()
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(0)
    }

    fn validate(&self) -> Result<(), String> {
        const DAY: u64 = 86_400;
        // (key, value, least, most). Each maximum bounds the memory or the wait the value
        // decides, far above any sensible setting, so reaching one is a mistake (a value in
        // milliseconds, a stray digit) rather than a deployment that needs more.
        let bounded: [(&str, u64, u64, u64); 28] = [
            // Up to two tables of this many entries per behavioural rule, tens to hundreds of
            // bytes each: 4 Mi entries (72 times the default) is gigabytes with every rule on.
            ("rules.state-entries", self.state_entries as u64, 1, 1 << 22),
            // A month without findings while the rule learns is the longest anyone would
            // accept; the learning clock is event time, so this is also a month of input.
            (
                "rules.new-remote-port.learning-seconds",
                self.new_remote_port.learning_seconds,
                0,
                30 * DAY,
            ),
            // A window longer than a day averages an upload away; the baseline needs
            // learning-windows of them before it is trusted.
            (
                "rules.traffic-volume.window-seconds",
                self.traffic_volume.window_seconds,
                1,
                DAY,
            ),
            (
                "rules.rare-destination.learning-seconds",
                self.rare_destination.learning_seconds,
                0,
                30 * DAY,
            ),
            (
                "rules.traffic-volume.learning-seconds",
                self.traffic_volume.learning_seconds,
                0,
                30 * DAY,
            ),
            (
                "rules.slow-drip.learning-seconds",
                self.slow_drip.learning_seconds,
                0,
                30 * DAY,
            ),
            (
                "rules.beaconing.learning-seconds",
                self.beaconing.learning_seconds,
                0,
                30 * DAY,
            ),
            // A destination is remembered as new (in the state table) this long.
            (
                "rules.rare-destination.new-for-seconds",
                self.rare_destination.new_for_seconds,
                0,
                30 * DAY,
            ),
            // Two Bloom filters of about 1.2 bytes per destination each, allocated at start and
            // written in every snapshot (each minute): 10 million is 24 MB, ten times the
            // default.
            (
                "rules.rare-destination.filter-capacity",
                self.rare_destination.filter_capacity as u64,
                1,
                10_000_000,
            ),
            // A week of bytes per pair; beyond it the two buckets stop describing a drip and
            // start describing a workload's normal life.
            (
                "rules.slow-drip.horizon-seconds",
                self.slow_drip.horizon_seconds,
                1,
                7 * DAY,
            ),
            // Every connection re-sorts its pair's history (8 bytes an entry, per pair):
            // 256 keeps a day of 6-minute beacons at a bounded cost per record.
            (
                "rules.beaconing.history",
                self.beaconing.history as u64,
                4,
                256,
            ),
            // The window is summed from six steps; a day is the longest span that still
            // tells an upload from a workload's daily rhythm.
            (
                "rules.s3-endpoint-upload.window-seconds",
                self.s3_endpoint_upload.window_seconds,
                60,
                DAY,
            ),
            // Steps are kept for two windows: the wait for late records fits in one.
            (
                "rules.s3-endpoint-upload.late-seconds",
                self.s3_endpoint_upload.late_seconds,
                0,
                self.s3_endpoint_upload.window_seconds,
            ),
            (
                "rules.s3-endpoint-upload.min-bytes",
                self.s3_endpoint_upload.min_bytes,
                1,
                u64::MAX,
            ),
            (
                "rules.s3-endpoint-upload.history-seconds",
                self.s3_endpoint_upload.history_seconds,
                0,
                30 * DAY,
            ),
            // At least the hour's window (the wait for late records fits in it too) and at
            // most a day, like the hour's.
            (
                "rules.s3-endpoint-upload.long-window-seconds",
                self.s3_endpoint_upload.long_window_seconds,
                self.s3_endpoint_upload.window_seconds,
                DAY,
            ),
            (
                "rules.s3-endpoint-upload.long-min-bytes",
                self.s3_endpoint_upload.long_min_bytes,
                1,
                u64::MAX,
            ),
            // The same sliding sum as the S3 rule's, with the same bounds.
            // The same bounded wait as the traffic-volume rule's: an hour is past any delivery
            // delay AWS describes.
            (
                "rules.rare-destination.late-seconds",
                self.rare_destination.late_seconds,
                0,
                3_600,
            ),
            (
                "rules.upload-volume.window-seconds",
                self.upload_volume.window_seconds,
                60,
                DAY,
            ),
            (
                "rules.upload-volume.late-seconds",
                self.upload_volume.late_seconds,
                0,
                self.upload_volume.window_seconds,
            ),
            (
                "rules.upload-volume.min-bytes",
                self.upload_volume.min_bytes,
                1,
                u64::MAX,
            ),
            (
                "rules.upload-volume.history-seconds",
                self.upload_volume.history_seconds,
                0,
                30 * DAY,
            ),
            // A connection is at least a minute (one record); past a week every session is
            // long.
            (
                "rules.long-connection.min-duration-seconds",
                self.long_connection.min_duration_seconds,
                60,
                7 * DAY,
            ),
            // Past an hour of silence no NAT keeps a TCP flow (AWS: 350 s).
            (
                "rules.long-connection.max-gap-seconds",
                self.long_connection.max_gap_seconds,
                60,
                3_600,
            ),
            (
                "rules.long-connection.learning-seconds",
                self.long_connection.learning_seconds,
                0,
                30 * DAY,
            ),
            // Scan keys are kept for a few windows; a scan spread over more than an hour is
            // no longer told apart from ordinary traffic by counts per window.
            (
                "rules.port-scan.window-seconds",
                self.port_scan.window_seconds,
                1,
                3_600,
            ),
            // Each (workload, host, window) key keeps up to this many ports and each
            // (workload, port, window) key this many hosts, exactly: 1,024 bounds one key to
            // 2 KB of ports or 17 KB of addresses.
            (
                "rules.port-scan.distinct-ports",
                self.port_scan.distinct_ports as u64,
                1,
                1_024,
            ),
            (
                "rules.port-scan.distinct-hosts",
                self.port_scan.distinct_hosts as u64,
                1,
                1_024,
            ),
        ];
        for (name, v, least, most) in bounded {
            within(name, v, least, most)?;
        }
        for (name, v) in [
            (
                "rules.slow-drip.max-workloads",
                self.slow_drip.max_workloads,
            ),
            (
                "rules.traffic-volume.max-workloads",
                self.traffic_volume.max_workloads,
            ),
            (
                "rules.beaconing.max-workloads",
                self.beaconing.max_workloads,
            ),
            (
                "rules.long-connection.max-workloads",
                self.long_connection.max_workloads,
            ),
        ] {
            // The rules remember up to four workloads per remote.
            if v > 3 {
                return Err(format!("{name} = {v}: at most 3"));
            }
        }
        let b = &self.beaconing;
        if b.min_connections < 4 || b.history < b.min_connections {
            return Err(format!(
                "rules.beaconing: min-connections must be at least 4 and history at least min-connections (got {} and {})",
                b.min_connections, b.history
            ));
        }
        if !(0.0..=1.0).contains(&b.score) {
            return Err(format!(
                "rules.beaconing.score = {}: expected a number from 0 to 1",
                b.score
            ));
        }
        for (name, v) in [
            (
                "rules.traffic-volume.upload-ratio",
                self.traffic_volume.upload_ratio,
            ),
            (
                "rules.traffic-volume.deviations",
                self.traffic_volume.deviations,
            ),
            (
                "rules.rare-destination.upload-ratio",
                self.rare_destination.upload_ratio,
            ),
            ("rules.slow-drip.upload-ratio", self.slow_drip.upload_ratio),
            (
                "rules.s3-endpoint-upload.deviations",
                self.s3_endpoint_upload.deviations,
            ),
            (
                "rules.s3-endpoint-upload.peak-factor",
                self.s3_endpoint_upload.peak_factor,
            ),
            (
                "rules.upload-volume.deviations",
                self.upload_volume.deviations,
            ),
            (
                "rules.upload-volume.peak-factor",
                self.upload_volume.peak_factor,
            ),
            (
                "rules.s3-endpoint-upload.earlier-days-factor",
                self.s3_endpoint_upload.earlier_days_factor,
            ),
            (
                "rules.upload-volume.earlier-days-factor",
                self.upload_volume.earlier_days_factor,
            ),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(format!("{name} = {v}: expected a number of at least 0"));
            }
        }
        Ok(())
    }
}

/// `value` of `key` within [least, most], or an error naming the key, the value and the bounds.
fn within(key: &str, value: u64, least: u64, most: u64) -> Result<(), String> {
    if (least..=most).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{key} = {value}: must be between {least} and {most}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_periods_name_each_rule_on_that_learns() {
        let mut rules = Rules::default();
        assert_eq!(rules.longest_learning_seconds(), 86_400);
        rules.beaconing.enabled = false;
        rules.long_connection.learning_seconds = 7 * 86_400;
        rules.slow_drip.learning_seconds = 0;
        let names: Vec<_> = rules.learning_periods().iter().map(|(r, _)| *r).collect();
        assert_eq!(
            names,
            [
                "long_connection",
                "rare_destination",
                "traffic_volume_unusual"
            ]
        );
        assert_eq!(rules.longest_learning_seconds(), 7 * 86_400);
        assert_eq!(Rules::period_text(7 * 86_400), "7 days");
        assert_eq!(Rules::period_text(86_400), "24 h");
        assert_eq!(Rules::period_text(90), "90 s");
    }

    #[test]
    fn defaults_and_errors() {
        let c = Config::from_toml("", "c.toml").unwrap();
        assert_eq!(c.rules.allowed_ports, BTreeSet::from([443]));
        assert_eq!(c.listen.port(), 9477);
        let e = Config::from_toml("[rules]\nallowed-port = [443]", "c.toml").unwrap_err();
        assert!(e.contains("c.toml") && e.contains("allowed-port"), "{e}");
        let e = Config::from_toml("source = \"kafka\"", "c.toml").unwrap_err();
        assert!(e.contains("source = \"kafka\""), "{e}");
        let e = Config::from_toml("shard = \"0/3\"", "c.toml").unwrap_err();
        assert!(
            e.starts_with("c.toml: shard was removed:") && e.contains("one daemon per stack"),
            "{e}"
        );
        let e = Config::from_toml("[cloudwatch]\nget-log-events-per-second = 40", "c.toml")
            .unwrap_err();
        assert_eq!(
            e,
            "c.toml: cloudwatch.get-log-events-per-second = 40: must be between 0.1 and 30"
        );
        let e = Config::from_toml("listen = \"nowhere\"", "c.toml").unwrap_err();
        assert!(e.contains("listen"), "{e}");
    }

    #[test]
    fn sink_urls_that_could_never_be_reached_are_refused_at_load() {
        for (toml, key) in [
            (
                "[alerts]\nalertmanager-url = \"127.0.0.1:9093\"",
                "alerts.alertmanager-url",
            ),
            (
                "[alerts]\nwebhook-url = \"ftp://hooks.example/x\"",
                "alerts.webhook-url",
            ),
            (
                "[alerts]\nwebhook-url = \"hooks.example/x\"",
                "alerts.webhook-url",
            ),
            (
                "[alerts]\nrunbook-base-url = \"file:///runbooks\"",
                "alerts.runbook-base-url",
            ),
        ] {
            let e = Config::from_toml(toml, "c.toml").unwrap_err();
            assert!(e.starts_with(&format!("c.toml: {key} = ")), "{e}");
        }
        let c = Config::from_toml(
            "[alerts]\nalertmanager-url = \"http://127.0.0.1:9093\"\nrunbook-base-url = \"https://wiki.example.com/egress\"",
            "c.toml",
        )
        .unwrap();
        assert_eq!(c.alerts.runbook_base_url, "https://wiki.example.com/egress");
        assert_eq!(
            Config::default().alerts.runbook_base_url,
            DEFAULT_RUNBOOK_BASE_URL
        );
    }

    #[test]
    fn values_that_size_memory_or_time_are_bounded_by_name() {
        // (section, key as the error names it, least, most)
        let bounds = [
            ("", "poll-interval-seconds", 1, 600),
            ("rules", "rules.state-entries", 1, 4_194_304),
            (
                "rules.new-remote-port",
                "rules.new-remote-port.learning-seconds",
                0,
                2_592_000,
            ),
            (
                "rules.traffic-volume",
                "rules.traffic-volume.window-seconds",
                1,
                86_400,
            ),
            (
                "rules.rare-destination",
                "rules.rare-destination.learning-seconds",
                0,
                2_592_000,
            ),
            (
                "rules.rare-destination",
                "rules.rare-destination.new-for-seconds",
                0,
                2_592_000,
            ),
            (
                "rules.rare-destination",
                "rules.rare-destination.filter-capacity",
                1,
                10_000_000,
            ),
            (
                "rules.slow-drip",
                "rules.slow-drip.horizon-seconds",
                1,
                604_800,
            ),
            ("rules.beaconing", "rules.beaconing.history", 4, 256),
            (
                "rules.port-scan",
                "rules.port-scan.window-seconds",
                1,
                3_600,
            ),
            (
                "rules.port-scan",
                "rules.port-scan.distinct-ports",
                1,
                1_024,
            ),
            (
                "rules.port-scan",
                "rules.port-scan.distinct-hosts",
                1,
                1_024,
            ),
        ];
        let toml = |section: &str, key: &str, v: u64| {
            let leaf = key.rsplit('.').next().unwrap();
            if section.is_empty() {
                format!("{leaf} = {v}\n")
            } else {
                format!("[{section}]\n{leaf} = {v}\n")
            }
        };
        for (section, key, least, most) in bounds {
            let at_most = Config::from_toml(&toml(section, key, most), "c.toml");
            assert!(at_most.is_ok(), "{key} = {most}: {at_most:?}");
            for over in [most + 1, i64::MAX as u64] {
                assert_eq!(
                    Config::from_toml(&toml(section, key, over), "c.toml").unwrap_err(),
                    format!("c.toml: {key} = {over}: must be between {least} and {most}")
                );
            }
        }
        // The bounds held on the values the code uses.
        let c = Config::from_toml(&toml("rules.beaconing", "history", 256), "c.toml").unwrap();
        assert_eq!(c.rules.beaconing.history, 256);
        assert_eq!(
            Config::from_toml("[rules]\nstate-entries = 0\n", "c.toml").unwrap_err(),
            "c.toml: rules.state-entries = 0: must be between 1 and 4194304"
        );
    }
}
