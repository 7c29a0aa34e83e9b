//! What an operator can see happen, one type per event: each one counts itself in the
//! metrics and writes its log line in the same call ([`Event::emit`]), so a metric and the
//! log never tell two stories. `metrics.rs` declares the series; the places where something
//! happens build the event and emit it.

use crate::metrics::Metrics;

/// An observable event of one stack: counted and logged together.
pub trait Event {
    fn emit(self, m: &Metrics);
}

/// An observable event of the process (the metrics endpoint, the watchdog), counted in the
/// series without a `stack` label.
pub trait ProcessEvent {
    fn emit(self);
}

/// A line that is not a record in its format, skipped (`egresswatch_bad_lines_total`).
pub struct BadLine<'a> {
    pub origin: &'a dyn std::fmt::Display,
    pub error: &'a flowlog::ParseError,
}

impl Event for BadLine<'_> {
    fn emit(self, m: &Metrics) {
        m.bad_lines.with_label_values(&[self.error.reason()]).inc();
        tracing::warn!(origin = %self.origin, error = %self.error, "bad flow-log line skipped");
    }
}

/// Lines longer than `max-line-bytes`, skipped unread (`bad_lines_total{reason="line_too_long"}`).
pub struct LinesTooLong<'a> {
    pub origin: &'a str,
    pub lines: u64,
    pub max_line_bytes: usize,
}

impl Event for LinesTooLong<'_> {
    fn emit(self, m: &Metrics) {
        m.bad_lines
            .with_label_values(&[crate::metrics::LINE_TOO_LONG])
            .inc_by(self.lines);
        tracing::warn!(origin = %self.origin, lines = self.lines, max_line_bytes = self.max_line_bytes, "lines longer than max-line-bytes skipped");
    }
}

/// An AWS call that failed (`egresswatch_source_request_errors_total`, and
/// `_throttles_total` when AWS said to slow down).
pub struct AwsCallFailed<'a> {
    pub operation: &'a str,
    pub code: Option<&'a str>,
    /// The error as the SDK told it.
    pub error: &'a str,
    /// The log group, stream, bucket or queue the call was about; empty when none.
    pub about: &'a str,
    /// What the daemon does about it, said in a warning. None when the caller hands the
    /// error on (it is then said where it ends up), and the failure is only logged at debug.
    pub then: Option<&'a str>,
}

/// Whether an AWS error code asks the caller to slow down.
pub fn is_throttle(code: Option<&str>) -> bool {
    code.is_some_and(|c| {
        c.contains("Throttl")
            || c.contains("LimitExceeded")
            || c == "SlowDown"
            || c == "RequestLimitExceeded"
    })
}

impl Event for AwsCallFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.source_errors.with_label_values(&[self.operation]).inc();
        let throttled = is_throttle(self.code);
        if throttled {
            m.source_throttles
                .with_label_values(&[self.operation])
                .inc();
        }
        let code = self.code.unwrap_or("");
        match self.then {
            Some(then) => tracing::warn!(
                operation = self.operation,
                code,
                throttled,
                about = self.about,
                error = self.error,
                "{} failed; {then}",
                self.operation
            ),
            None => tracing::debug!(
                operation = self.operation,
                code,
                throttled,
                about = self.about,
                error = self.error,
                "AWS call failed"
            ),
        }
    }
}

/// Read positions committed with the rules' state.
pub struct CheckpointCommitted {
    pub generation: u64,
    pub records: u64,
    pub snapshot_bytes: usize,
    pub journal_bytes: u64,
    pub took: std::time::Duration,
    pub at_unix: u64,
}

impl Event for CheckpointCommitted {
    fn emit(self, m: &Metrics) {
        m.rules_snapshot_seconds.observe(self.took.as_secs_f64());
        m.checkpoint_timestamp
            .set(i64::try_from(self.at_unix).unwrap_or(i64::MAX));
        m.checkpoint_records
            .set(i64::try_from(self.records).unwrap_or(i64::MAX));
        m.checkpoint_journal_bytes
            .set(i64::try_from(self.journal_bytes).unwrap_or(i64::MAX));
        tracing::debug!(
            generation = self.generation,
            records = self.records,
            snapshot_bytes = self.snapshot_bytes,
            journal_bytes = self.journal_bytes,
            millis = self.took.as_millis() as u64,
            "checkpoint committed with the rules' state"
        );
    }
}

/// Alerts a sink never got: the outbox reached its size or age bound first.
pub struct AlertsDropped<'a> {
    pub sink: &'a str,
    pub alerts: u64,
}

impl Event for AlertsDropped<'_> {
    fn emit(self, m: &Metrics) {
        m.alerts_dropped
            .with_label_values(&[self.sink])
            .inc_by(self.alerts);
        tracing::error!(
            sink = self.sink,
            alerts = self.alerts,
            "the outbox reached its size or age bound; undelivered alerts for this sink dropped"
        );
    }
}

/// A finding a `[[suppress]]` entry matched: counted, not alerted on.
pub struct FindingSuppressed<'a> {
    pub finding: &'a crate::finding::Finding,
    pub suppression: usize,
    pub reason: &'a str,
}

impl Event for FindingSuppressed<'_> {
    fn emit(self, m: &Metrics) {
        let f = self.finding;
        m.findings_suppressed.with_label_values(&[f.rule]).inc();
        tracing::debug!(rule = f.rule, workload = ?f.workload, remote = ?f.remote, remote_port = ?f.remote_port, suppression = self.suppression, reason = %self.reason, "finding suppressed");
    }
}

/// A configuration reload: taken, or refused with the running configuration kept.
pub enum Reload<'a> {
    Done {
        reason: &'a str,
        suppressions: usize,
        waiting_for_restart: &'a [&'static str],
        at_unix: u64,
    },
    Refused {
        reason: &'a str,
        error: &'a str,
    },
}

impl Event for Reload<'_> {
    fn emit(self, m: &Metrics) {
        match self {
            Reload::Done {
                reason,
                suppressions,
                waiting_for_restart,
                at_unix,
            } => {
                m.config_last_reload_successful.set(1);
                m.config_last_reload_success_timestamp
                    .set(i64::try_from(at_unix).unwrap_or(i64::MAX));
                tracing::info!(reason, suppressions, "configuration reloaded");
                if !waiting_for_restart.is_empty() {
                    tracing::warn!(keys = %waiting_for_restart.join(", "), "changed keys that take effect at the next start");
                }
            }
            Reload::Refused { reason, error } => {
                m.config_last_reload_successful.set(0);
                tracing::error!(
                    reason,
                    error,
                    "configuration not reloaded; the running one is kept"
                );
            }
        }
    }
}

/// An S3 object that could not be read, by reason; its message is left to the queue.
pub struct ObjectUnreadable<'a> {
    pub object: &'a str,
    pub reason: &'static str,
    pub detail: &'a str,
}

impl Event for ObjectUnreadable<'_> {
    fn emit(self, m: &Metrics) {
        m.s3_object_errors.with_label_values(&[self.reason]).inc();
        tracing::warn!(object = %self.object, reason = self.reason, "{}; its message is left for the queue to deliver again and, in the end, to its dead-letter queue", self.detail);
    }
}

/// What became of SQS messages (`egresswatch_sqs_messages_total{outcome}`): received,
/// deleted, a test event, or not a notification at all (left for the dead-letter queue).
pub struct SqsMessages<'a> {
    pub outcome: &'static str,
    pub count: u64,
    /// Said in the log for the outcomes an operator should hear of.
    pub note: Option<&'a str>,
}

impl Event for SqsMessages<'_> {
    fn emit(self, m: &Metrics) {
        m.sqs_messages
            .with_label_values(&[self.outcome])
            .inc_by(self.count);
        match self.note {
            Some(note) => tracing::warn!(outcome = self.outcome, "{note}"),
            None => tracing::trace!(outcome = self.outcome, count = self.count, "SQS messages"),
        }
    }
}

/// Alerts a sink took, or a delivery it refused (retried with backoff).
pub enum Delivery<'a> {
    Sent {
        sink: &'a str,
        alerts: u64,
    },
    Failed {
        sink: &'a str,
        error: &'a str,
        retry_in: std::time::Duration,
    },
}

impl Event for Delivery<'_> {
    fn emit(self, m: &Metrics) {
        match self {
            Delivery::Sent { sink, alerts } => {
                m.alerts_sent.with_label_values(&[sink]).inc_by(alerts);
                tracing::debug!(sink, alerts, "alerts delivered");
            }
            Delivery::Failed {
                sink,
                error,
                retry_in,
            } => {
                m.alerts_failed.with_label_values(&[sink]).inc();
                tracing::warn!(
                    sink,
                    error,
                    retry_in_ms = retry_in.as_millis() as u64,
                    "alert delivery failed; retrying"
                );
            }
        }
    }
}

/// The source reading again, or unable to read (said once per reason, counted in
/// `egresswatch_source_up`).
pub enum SourceHealth<'a> {
    Reading { again: bool, at_unix: u64 },
    Failing { reason: &'a str, new_reason: bool },
}

impl Event for SourceHealth<'_> {
    fn emit(self, m: &Metrics) {
        match self {
            SourceHealth::Reading { again, at_unix } => {
                if again {
                    tracing::info!("source reading again");
                }
                m.source_up.set(1);
                if let Ok(mut r) = m.not_ready_reason.lock() {
                    *r = None;
                }
                m.source_last_success_timestamp
                    .set(i64::try_from(at_unix).unwrap_or(i64::MAX));
            }
            SourceHealth::Failing { reason, new_reason } => {
                if new_reason {
                    tracing::error!(reason, "not ready until this is resolved");
                }
                m.source_up.set(0);
                if let Ok(mut r) = m.not_ready_reason.lock() {
                    *r = Some(reason.to_string());
                }
            }
        }
    }
}

/// The workload inventory described from EC2, kept as it was when EC2 could not answer, or
/// not there in time for the first records.
pub enum InventoryRefresh<'a> {
    Done { addresses: usize },
    Kept { error: &'a str },
    Late { waited: std::time::Duration },
}

impl Event for InventoryRefresh<'_> {
    fn emit(self, _m: &Metrics) {
        // The failed EC2 call itself is counted as an AwsCallFailed where it happened.
        match self {
            InventoryRefresh::Done { addresses } => {
                tracing::debug!(addresses, "workload inventory refreshed")
            }
            InventoryRefresh::Kept { error } => tracing::warn!(
                error,
                "workload inventory not refreshed; suppressions by tag or interface use what was known"
            ),
            InventoryRefresh::Late { waited } => tracing::warn!(
                waited_seconds = waited.as_secs(),
                "the workload inventory is not there yet; reading starts without it"
            ),
        }
    }
}

/// State in the state dir found damaged or missing and repaired
/// (`egresswatch_state_repairs_total{store,kind}`).
pub struct StateRepaired<'a> {
    /// One of [`crate::metrics::STATE_REPAIRS`]' stores.
    pub store: &'static str,
    pub kind: &'static str,
    pub count: u64,
    pub file: &'a dyn std::fmt::Display,
    /// What was wrong and what it costs, for the log.
    pub detail: &'a dyn std::fmt::Display,
}

impl Event for StateRepaired<'_> {
    fn emit(self, m: &Metrics) {
        m.state_repairs
            .with_label_values(&[self.store, self.kind])
            .inc_by(self.count);
        tracing::warn!(
            store = self.store,
            kind = self.kind,
            count = self.count,
            file = %self.file,
            "{}",
            self.detail
        );
    }
}

/// A write to the state dir that failed (`egresswatch_state_write_errors_total{store}`).
pub struct StateWriteFailed<'a> {
    /// One of [`crate::metrics::STATE_STORES`].
    pub store: &'static str,
    pub error: &'a dyn std::fmt::Display,
    /// What is lost or done again because of it.
    pub consequence: &'a str,
}

impl Event for StateWriteFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.state_write_errors.with_label_values(&[self.store]).inc();
        tracing::error!(store = self.store, error = %self.error, "{}", self.consequence);
    }
}

/// How a CloudWatch log stream changed under the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamChange {
    /// Made again under the same name: read from its start.
    Recreated,
    /// Its saved token was refused: read from its start.
    TokenRefused,
    /// Every event it holds aged past the group's retention: its position is dropped.
    Retired,
    /// Deleted: a read found it no longer exists.
    Gone,
}

impl StreamChange {
    fn label(self) -> &'static str {
        match self {
            StreamChange::Recreated => "recreated",
            StreamChange::TokenRefused => "token_refused",
            StreamChange::Retired => "retired",
            StreamChange::Gone => "gone",
        }
    }
}

/// Log streams that changed under the daemon (`egresswatch_cloudwatch_stream_changes_total`).
pub struct StreamsChanged<'a> {
    pub change: StreamChange,
    pub streams: u64,
    /// The stream, when it is one.
    pub stream: Option<&'a str>,
    pub error: Option<&'a str>,
}

impl Event for StreamsChanged<'_> {
    fn emit(self, m: &Metrics) {
        m.cloudwatch_stream_changes
            .with_label_values(&[self.change.label()])
            .inc_by(self.streams);
        let stream = self.stream.unwrap_or("");
        let error = self.error.unwrap_or("");
        match self.change {
            StreamChange::Recreated => {
                tracing::warn!(
                    stream,
                    "log stream was re-created; reading it from its start"
                )
            }
            StreamChange::TokenRefused => tracing::warn!(
                stream,
                error,
                "saved token refused; reading the stream from its start"
            ),
            StreamChange::Retired => tracing::info!(
                streams = self.streams,
                "log streams whose events all aged past the group's retention; dropped from the checkpoint"
            ),
            StreamChange::Gone => {
                tracing::info!(stream, "log stream deleted; dropped from the checkpoint")
            }
        }
    }
}

/// What the daemon knows of the stack's network at start
/// (`egresswatch_topology_nat_interfaces`, `_s3_ranges`).
pub struct TopologyKnown<'a> {
    /// Where it came from: the outputs file or `[topology]`, or the stack's tags.
    pub from: &'a str,
    pub topology: &'a crate::topology::Topology,
    /// Why the S3 prefix list's ranges could not be asked for again, when they could not
    /// (the failed call itself is an [`AwsCallFailed`]).
    pub s3_refresh_error: Option<&'a str>,
}

impl Event for TopologyKnown<'_> {
    fn emit(self, m: &Metrics) {
        let t = self.topology;
        m.topology_nat_interfaces
            .set(i64::try_from(t.nat_interfaces.len()).unwrap_or(i64::MAX));
        m.topology_s3_ranges
            .set(i64::try_from(t.s3_cidrs.len()).unwrap_or(i64::MAX));
        tracing::info!(
            from = self.from,
            vpc = ?t.vpc_id,
            nat_interfaces = ?t.nat_interfaces,
            s3_ranges = t.s3_cidrs.len(),
            "stack network known"
        );
        if let Some(error) = self.s3_refresh_error {
            tracing::warn!(
                error,
                "S3 prefix list ranges not refreshed; using the {} known",
                t.s3_cidrs.len()
            );
        }
        if t.nat_interfaces.is_empty() && t.nat_private_ips.is_empty() {
            tracing::warn!("no NAT interface is known: no record can be judged NAT egress");
        }
    }
}

/// Many flows judged and none of them NAT egress: the network description does not match
/// the flow logs (`egresswatch_topology_mismatch` at 1).
pub struct TopologyMismatch<'a> {
    pub flows: u64,
    pub topology: &'a crate::topology::Topology,
}

impl Event for TopologyMismatch<'_> {
    fn emit(self, m: &Metrics) {
        m.topology_mismatch.set(1);
        let t = self.topology;
        tracing::warn!(
            flows = self.flows,
            nat_interfaces = ?t.nat_interfaces,
            nat_private_ips = ?t.nat_private_ips,
            vpc_cidrs = ?t.vpc_cidrs,
            "no record was NAT egress in {} flows: the network description (outputs-file or [topology]) does not seem to match these flow logs, so the egress rules see nothing",
            self.flows
        );
    }
}

/// Alerts a sink has not acknowledged, kept in the outbox: found at start (and sent again)
/// or left at shutdown (sent at the next start). Sets `egresswatch_alerts_pending{sink}`.
pub enum AlertsCarried<'a> {
    AtStart { sink: &'a str, alerts: usize },
    AtShutdown { sink: &'a str, alerts: usize },
}

impl Event for AlertsCarried<'_> {
    fn emit(self, m: &Metrics) {
        let (sink, alerts) = match self {
            AlertsCarried::AtStart { sink, alerts }
            | AlertsCarried::AtShutdown { sink, alerts } => (sink, alerts),
        };
        m.alerts_pending
            .with_label_values(&[sink])
            .set(i64::try_from(alerts).unwrap_or(i64::MAX));
        if alerts == 0 {
            return;
        }
        match self {
            AlertsCarried::AtStart { .. } => tracing::info!(
                sink,
                alerts,
                "resending alerts this sink had not acknowledged"
            ),
            AlertsCarried::AtShutdown { .. } => tracing::warn!(
                sink,
                alerts,
                "alerts not yet delivered at shutdown; kept in the outbox and sent at the next start"
            ),
        }
    }
}

/// What the rules had learnt, read back from the state dir at start. Its failures are
/// [`StateRepaired`]; this only says how long it took.
pub struct RulesRestored<'a> {
    pub file: &'a dyn std::fmt::Display,
    pub bytes: usize,
    pub took: std::time::Duration,
}

impl Event for RulesRestored<'_> {
    fn emit(self, _m: &Metrics) {
        // Once per start: the log line is the record; the snapshot's size and time are
        // exported when it is written (egresswatch_rules_snapshot_duration_seconds).
        tracing::info!(file = %self.file, bytes = self.bytes, millis = self.took.as_millis() as u64, "restored what the rules had learnt");
    }
}

/// A rule began or ended its learning period (in event time).
pub struct RuleLearning<'a> {
    pub rule: &'a str,
    pub learning: bool,
    /// The event time the period ends at.
    pub ends: u64,
}

impl Event for RuleLearning<'_> {
    fn emit(self, m: &Metrics) {
        m.rule_learning
            .with_label_values(&[self.rule])
            .set(i64::from(self.learning));
        let ends = crate::alert::rfc3339(self.ends);
        if self.learning {
            tracing::info!(rule = self.rule, until = %ends, "rule is learning what the fleet shares: it keeps what it sees and judges it when learning ends (event time)");
        } else {
            tracing::info!(rule = self.rule, ended = %ends, "rule finished learning; what it saw meanwhile is judged now");
        }
    }
}

/// The periodic status line: the figures are the metrics' own (records, findings, the
/// newest record's age), said in the log for those who read it rather than scrape it.
pub struct Status<'a> {
    pub source: &'a dyn std::fmt::Display,
    pub records: u64,
    pub records_per_second: u64,
    pub newest_record_age_seconds: Option<u64>,
    pub findings: u64,
    pub findings_total: u64,
}

impl Event for Status<'_> {
    fn emit(self, _m: &Metrics) {
        tracing::info!(
            source = %self.source,
            records = self.records,
            records_per_second = self.records_per_second,
            newest_record_age_seconds = self.newest_record_age_seconds,
            findings = self.findings,
            findings_total = self.findings_total,
            "reading"
        );
    }
}

/// Something that happened to a file of the file source: rotated, replaced, truncated, a
/// broken gzip stream, a missing path (`egresswatch_file_changes_total{change}`).
pub struct FileChanged<'a> {
    pub origin: &'a str,
    pub note: &'a crate::source::file::FileNote,
}

impl Event for FileChanged<'_> {
    fn emit(self, m: &Metrics) {
        let change = self.note.change.label();
        m.file_changes.with_label_values(&[change]).inc();
        tracing::warn!(origin = self.origin, change, "{}", self.note.text);
    }
}

/// The daemon's life: started, asked to reload or stop, stopped. Nothing to count: the
/// process's start time, `egresswatch_config_last_reload_*` and the exit status are the record.
pub enum Lifecycle<'a> {
    Starting {
        listen: std::net::SocketAddr,
        /// The source, or the stacks of a daemon that watches several.
        reading: &'a str,
    },
    SignalHandlersMissing,
    ReloadRequested {
        signal: &'a str,
    },
    ShuttingDown,
    Finished {
        records: u64,
        /// Records of a backfill that started outside its range, read and not judged.
        outside_range: u64,
    },
}

impl ProcessEvent for Lifecycle<'_> {
    fn emit(self) {
        match self {
            Lifecycle::Starting { listen, reading } => {
                tracing::info!(%listen, reading, "egresswatch monitor starting")
            }
            Lifecycle::SignalHandlersMissing => tracing::error!(
                "cannot install signal handlers: SIGTERM and SIGHUP are not taken up"
            ),
            Lifecycle::ReloadRequested { signal } => {
                tracing::info!(signal, "reloading the configuration")
            }
            Lifecycle::ShuttingDown => {
                tracing::info!("shutting down: finishing the batch in flight")
            }
            Lifecycle::Finished {
                records,
                outside_range,
            } => tracing::info!(
                records,
                judged = records.saturating_sub(outside_range),
                outside_range,
                "egresswatch monitor stopped"
            ),
        }
    }
}

/// A stack's pipeline, the metrics endpoint or a source's task stopped on an error: the
/// daemon exits with the first two; a source's task is started again at its next poll.
pub struct Stopped<'a> {
    pub what: &'a str,
    pub error: &'a str,
}

impl ProcessEvent for Stopped<'_> {
    fn emit(self) {
        // Nothing to count: the process ends, and its exit status is the record.
        tracing::error!(error = self.error, "{} stopped", self.what);
    }
}

/// A stack asked for CloudWatch call rates other than those another stack of the process
/// set for the same account and region: the budget is the account's, so the first one's apply.
pub struct BudgetAlreadySet<'a> {
    pub region: &'a str,
}

impl ProcessEvent for BudgetAlreadySet<'_> {
    fn emit(self) {
        // Once per stack at start, and a matter of configuration: the log line is the record.
        tracing::warn!(
            region = self.region,
            "another source in this process set the CloudWatch call budget for {} first; its rates apply",
            self.region
        );
    }
}

/// The systemd watchdog ping withheld: the main loop made no progress within `WatchdogSec`
/// (`egresswatch_watchdog_withheld_total`), so systemd restarts the daemon.
pub struct WatchdogWithheld {
    pub idle_seconds: u64,
}

impl ProcessEvent for WatchdogWithheld {
    fn emit(self) {
        crate::metrics::process().watchdog_withheld.inc();
        tracing::error!(
            idle_seconds = self.idle_seconds,
            "main loop made no progress; withholding the watchdog ping"
        );
    }
}

/// The metrics endpoint could not accept a connection (`egresswatch_http_accept_errors_total`);
/// logged at most once a minute by the caller.
pub struct AcceptFailed<'a> {
    pub error: &'a std::io::Error,
    pub listen: std::net::SocketAddr,
    pub log: bool,
}

impl ProcessEvent for AcceptFailed<'_> {
    fn emit(self) {
        crate::metrics::process().http_accept_errors.inc();
        if self.log {
            tracing::warn!(error = %self.error, listen = %self.listen, "metrics endpoint cannot accept connections; retrying");
        }
    }
}

/// A connection to the metrics endpoint closed to make room past its cap
/// (`egresswatch_http_connections_shed_total`).
pub struct ConnectionShed;

impl ProcessEvent for ConnectionShed {
    fn emit(self) {
        crate::metrics::process().http_connections_shed.inc();
        tracing::debug!("metrics endpoint connection shed past the connection cap");
    }
}

/// What became of an announced S3 object that was not unreadable
/// (`egresswatch_s3_objects_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S3Outcome {
    /// Every line passed.
    Read,
    /// Announced again after it was read: not counted twice.
    Duplicate,
    /// Not in the stack's bucket and prefix: not read.
    OutsidePrefix,
    /// Written again since its notification: the newer object has its own.
    Superseded,
}

pub struct S3ObjectDone<'a> {
    pub object: &'a str,
    pub outcome: S3Outcome,
}

impl Event for S3ObjectDone<'_> {
    fn emit(self, m: &Metrics) {
        let label = match self.outcome {
            S3Outcome::Read => "read",
            S3Outcome::Duplicate => "duplicate",
            S3Outcome::OutsidePrefix => "outside_prefix",
            S3Outcome::Superseded => "superseded",
        };
        m.s3_objects.with_label_values(&[label]).inc();
        match self.outcome {
            S3Outcome::OutsidePrefix => tracing::warn!(
                object = self.object,
                "announced object is outside the stack's bucket and prefix: not read"
            ),
            _ => tracing::debug!(object = self.object, outcome = label, "S3 object"),
        }
    }
}

/// A first start reading the flow logs already retained, so the rules have learnt before
/// they judge live records.
pub enum WarmStart<'a> {
    /// The streams to read and how far back.
    Started {
        /// The log group, or the bucket and prefix.
        from: &'a str,
        /// Log streams or objects to read.
        count: usize,
        since: u64,
    },
    /// Streams (objects) still to be read to their end.
    Progress {
        left: usize,
    },
    Done {
        count: usize,
        seconds: u64,
    },
}

impl Event for WarmStart<'_> {
    fn emit(self, m: &Metrics) {
        match self {
            WarmStart::Started { from, count, since } => {
                m.warm_start_left.set(count as i64);
                tracing::info!(
                    from,
                    count,
                    since = %crate::alert::rfc3339(since),
                    "warm start: reading the retained flow logs before judging live records"
                );
            }
            WarmStart::Progress { left } => m.warm_start_left.set(left as i64),
            WarmStart::Done { count, seconds } => {
                m.warm_start_left.set(0);
                tracing::info!(
                    count,
                    seconds,
                    "warm start done: the rules judge live records with what they learnt"
                );
            }
        }
    }
}

/// A backfill's listing: the objects of the prefix in the time range, read next.
pub struct BackfillListed<'a> {
    pub objects: usize,
    pub bucket: &'a str,
    pub prefix: &'a str,
}

impl Event for BackfillListed<'_> {
    fn emit(self, _m: &Metrics) {
        // Once per backfill; its progress is egresswatch_s3_objects_total{outcome="read"}.
        tracing::info!(
            objects = self.objects,
            bucket = self.bucket,
            prefix = self.prefix,
            "backfill: objects in the range"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_event_moves_its_series() {
        let m = Metrics::new();
        AwsCallFailed {
            operation: "GetLogEvents",
            code: Some("ThrottlingException"),
            error: "Rate exceeded",
            about: "eni-1-all",
            then: None,
        }
        .emit(&m);
        assert_eq!(
            m.source_errors.with_label_values(&["GetLogEvents"]).get(),
            1
        );
        assert_eq!(
            m.source_throttles
                .with_label_values(&["GetLogEvents"])
                .get(),
            1
        );
        AwsCallFailed {
            operation: "GetLogEvents",
            code: Some("AccessDeniedException"),
            error: "not allowed",
            about: "eni-1-all",
            then: Some("retrying next poll"),
        }
        .emit(&m);
        assert_eq!(
            m.source_throttles
                .with_label_values(&["GetLogEvents"])
                .get(),
            1
        );
        AlertsDropped {
            sink: "webhook",
            alerts: 3,
        }
        .emit(&m);
        assert_eq!(m.alerts_dropped.with_label_values(&["webhook"]).get(), 3);
        Reload::Refused {
            reason: "SIGHUP",
            error: "bad",
        }
        .emit(&m);
        assert_eq!(m.config_last_reload_successful.get(), 0);
        Reload::Done {
            reason: "SIGHUP",
            suppressions: 0,
            waiting_for_restart: &[],
            at_unix: 1_800_000_000,
        }
        .emit(&m);
        assert_eq!(m.config_last_reload_successful.get(), 1);
        assert_eq!(m.config_last_reload_success_timestamp.get(), 1_800_000_000);
    }

    #[test]
    fn state_stream_topology_and_file_events_move_their_series() {
        let m = Metrics::new();
        StateRepaired {
            store: "outbox",
            kind: "corrupt_line",
            count: 3,
            file: &"state/x.outbox",
            detail: &"three lines",
        }
        .emit(&m);
        assert_eq!(
            m.state_repairs
                .with_label_values(&["outbox", "corrupt_line"])
                .get(),
            3
        );
        StateWriteFailed {
            store: "delivery_acks",
            error: &"disk full",
            consequence: "sent again",
        }
        .emit(&m);
        assert_eq!(
            m.state_write_errors
                .with_label_values(&["delivery_acks"])
                .get(),
            1
        );
        StreamsChanged {
            change: StreamChange::Retired,
            streams: 40,
            stream: None,
            error: None,
        }
        .emit(&m);
        assert_eq!(
            m.cloudwatch_stream_changes
                .with_label_values(&["retired"])
                .get(),
            40
        );
        let t = crate::topology::Topology {
            nat_interfaces: vec!["eni-nat".into()],
            s3_cidrs: vec![
                "52.216.0.0/15".parse().unwrap(),
                "3.5.0.0/19".parse().unwrap(),
            ],
            ..Default::default()
        };
        TopologyKnown {
            from: "the stack's tags",
            topology: &t,
            s3_refresh_error: Some("AccessDenied"),
        }
        .emit(&m);
        assert_eq!(m.topology_nat_interfaces.get(), 1);
        assert_eq!(m.topology_s3_ranges.get(), 2);
        assert_eq!(m.topology_mismatch.get(), 0);
        TopologyMismatch {
            flows: 10_000,
            topology: &t,
        }
        .emit(&m);
        assert_eq!(m.topology_mismatch.get(), 1);
        let note = crate::source::file::FileNote {
            change: crate::source::file::FileChange::Rotated,
            text: "rotated".into(),
        };
        FileChanged {
            origin: "flow.log",
            note: &note,
        }
        .emit(&m);
        assert_eq!(m.file_changes.with_label_values(&["rotated"]).get(), 1);
        AlertsCarried::AtShutdown {
            sink: "webhook",
            alerts: 7,
        }
        .emit(&m);
        assert_eq!(m.alerts_pending.with_label_values(&["webhook"]).get(), 7);
        S3ObjectDone {
            object: "s3://b/k",
            outcome: S3Outcome::Superseded,
        }
        .emit(&m);
        assert_eq!(m.s3_objects.with_label_values(&["superseded"]).get(), 1);
        // Every declared series is exported from the start, at zero until it moves.
        let text = m.render();
        for (store, kind) in crate::metrics::STATE_REPAIRS {
            assert!(
                text.contains(&format!(
                    "egresswatch_state_repairs_total{{kind=\"{kind}\",store=\"{store}\"}}"
                )),
                "{store} {kind}"
            );
        }
        let before = crate::metrics::process().watchdog_withheld.get();
        WatchdogWithheld { idle_seconds: 90 }.emit();
        assert_eq!(
            crate::metrics::process().watchdog_withheld.get(),
            before + 1
        );
        assert!(text.contains("egresswatch_watchdog_withheld_total"));
    }

    #[test]
    fn every_exported_series_is_in_the_readme_table() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        let text = Metrics::new().render();
        let undocumented: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .filter(|name| name.starts_with("egresswatch_"))
            .filter(|name| !readme.contains(&format!("`{name}`")))
            .collect();
        assert!(
            undocumented.is_empty(),
            "not in README's metrics table: {undocumented:?}"
        );
    }
}
