//! Every metric the daemon exports, declared in one place on one registry. Labels are
//! low-cardinality (path, port class, action, rule, severity, reason, sink): never an address.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub records: IntCounterVec,
    pub bytes: IntCounterVec,
    pub findings: IntCounterVec,
    pub findings_suppressed: IntCounterVec,
    pub bad_lines: IntCounterVec,
    pub skipped_records: IntCounterVec,
    pub ingest_lag: Histogram,
    pub source_calls: IntCounterVec,
    pub source_errors: IntCounterVec,
    pub source_throttles: IntCounterVec,
    /// Seconds calls waited for the account's call budget, by operation.
    pub source_wait_seconds: CounterVec,
    /// Seconds from a CloudWatch event's ingestion to its read.
    pub cloudwatch_read_delay: Histogram,
    /// Log streams the CloudWatch source tracks, read in the last poll, or left for a later
    /// poll's spare budget.
    pub cloudwatch_streams: IntGaugeVec,
    /// Streams whose retained history a first start still reads before it is warm.
    pub warm_start_left: IntGauge,
    pub s3_objects: IntCounterVec,
    pub s3_object_errors: IntCounterVec,
    pub sqs_messages: IntCounterVec,
    pub records_outside_range: IntCounter,
    pub checkpoint_timestamp: IntGauge,
    pub checkpoint_records: IntGauge,
    /// Bytes in the positions' journal since the checkpoint was last rewritten whole.
    pub checkpoint_journal_bytes: IntGauge,
    pub last_record_timestamp: IntGauge,
    pub alerts_sent: IntCounterVec,
    pub alerts_failed: IntCounterVec,
    pub alerts_dropped: IntCounterVec,
    pub alerts_suppressed: IntCounter,
    pub alerts_folded: IntCounterVec,
    pub alerts_pending: IntGaugeVec,
    pub outbox_bytes: IntGauge,
    pub source_up: IntGauge,
    pub source_last_success_timestamp: IntGauge,
    pub build_info: IntGaugeVec,
    pub config_last_reload_successful: IntGauge,
    pub config_last_reload_success_timestamp: IntGauge,
    pub rules_snapshot_seconds: Histogram,
    /// The heaviest NAT-egress workloads and destinations; the only series that carry
    /// addresses, at most `TOP_K` of each at any time.
    pub top_workloads: IntGaugeVec,
    pub top_remotes: IntGaugeVec,
    pub rule_state_evictions: IntCounterVec,
    /// 1 while a rule learns what the fleet shares, 0 after, by rule.
    pub rule_learning: IntGaugeVec,
    /// State found damaged or missing at start (or a reload) and repaired, by store and kind.
    pub state_repairs: IntCounterVec,
    /// Writes to the state dir that failed, by store.
    pub state_write_errors: IntCounterVec,
    /// Log streams re-created, whose saved token was refused, retired or gone.
    pub cloudwatch_stream_changes: IntCounterVec,
    /// What the daemon knows of the stack's network: NAT interfaces and S3 ranges.
    pub topology_nat_interfaces: IntGauge,
    pub topology_s3_ranges: IntGauge,
    /// 1 once many flows were judged and none was NAT egress: the network description does
    /// not match the flow logs.
    pub topology_mismatch: IntGauge,
    /// What happened to the file source's files: rotation, truncation, a broken gzip stream.
    pub file_changes: IntCounterVec,
    /// The stack these series are labelled with, in a daemon that watches several.
    pub stack: Option<String>,
    /// Why the stack's daemon is not ready (the source cannot read, the outbox cannot be
    /// written): what /readyz answers, with the stack, while it lasts.
    pub not_ready_reason: std::sync::Mutex<Option<String>>,
}

/// Series of the process rather than of a stack: the metrics endpoint and the systemd
/// watchdog. Exported once, without a `stack` label.
pub struct ProcessMetrics {
    registry: Registry,
    /// Connections to this endpoint closed to make room past its connection cap: a client
    /// holding many idle connections open.
    pub http_connections_shed: IntCounter,
    /// Connections the endpoint could not accept (out of file descriptors, say).
    pub http_accept_errors: IntCounter,
    /// Watchdog pings withheld because the main loop made no progress.
    pub watchdog_withheld: IntCounter,
}

static PROCESS_METRICS: std::sync::LazyLock<ProcessMetrics> = std::sync::LazyLock::new(|| {
    let r = Registry::new();
    let counter =
        |name: &str, help: &str| register(&r, IntCounter::new(name, help).expect("valid counter"));
    ProcessMetrics {
        http_connections_shed: counter(
            "egresswatch_http_connections_shed_total",
            "Connections to the metrics endpoint closed to make room for a new one past its cap of open connections (a client holding many idle connections).",
        ),
        http_accept_errors: counter(
            "egresswatch_http_accept_errors_total",
            "Connections the metrics endpoint could not accept (out of file descriptors, or another failure of accept).",
        ),
        watchdog_withheld: counter(
            "egresswatch_watchdog_withheld_total",
            "systemd watchdog pings withheld because the main loop made no progress within WatchdogSec.",
        ),
        registry: r,
    }
});

/// The process's own series.
pub fn process() -> &'static ProcessMetrics {
    &PROCESS_METRICS
}

/// The process's peak resident memory in KiB (VmHWM), for benchmarks and `evaluate`;
/// 0 where /proc is not there.
pub fn peak_resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The bad-line reason of a line longer than `max-line-bytes`, skipped by the source.
pub const LINE_TOO_LONG: &str = "line_too_long";

/// The AWS calls the daemon makes: the CloudWatch and S3 sources', and the workload inventory's.
pub const SOURCE_OPERATIONS: [&str; 15] = [
    "DescribeFlowLogs",
    "DescribeVpcs",
    "DescribeNatGateways",
    "DescribePrefixLists",
    "GetManagedPrefixListEntries",
    "DescribeLogGroups",
    "DescribeLogStreams",
    "GetLogEvents",
    "DescribeNetworkInterfaces",
    "DescribeInstances",
    "ReceiveMessage",
    "ChangeMessageVisibility",
    "DeleteMessageBatch",
    "GetObject",
    "ListObjectsV2",
];

/// Why an S3 object could not be read: the reasons of `egresswatch_s3_object_errors_total`.
pub const S3_OBJECT_ERRORS: [&str; 7] = [
    "download",
    "no_such_key",
    "unknown_format",
    "corrupt_gzip",
    "corrupt_parquet",
    "parquet_schema",
    "not_a_flow_log",
];

/// The (store, kind) pairs of `egresswatch_state_repairs_total`.
pub const STATE_REPAIRS: [(&str, &str); 8] = [
    ("state_dir_lock", "removed"),
    ("outbox", "torn_write"),
    ("outbox", "corrupt_line"),
    ("outbox", "removed"),
    ("checkpoint_journal", "torn_write"),
    ("rules_snapshot", "missing"),
    ("rules_snapshot", "rule_not_restored"),
    ("rules_snapshot", "rule_not_carried_over"),
];

/// The stores of `egresswatch_state_write_errors_total`.
pub const STATE_STORES: [&str; 5] = [
    "checkpoint",
    "rules_snapshot",
    "outbox",
    "delivery_acks",
    "findings",
];

/// The changes of `egresswatch_cloudwatch_stream_changes_total`.
pub const STREAM_CHANGES: [&str; 4] = ["recreated", "token_refused", "retired", "gone"];

/// Series the top-k gauges export.
pub const TOP_K: usize = 10;

/// Adds `amount` to `counter`, stopping at u64::MAX: prometheus's `inc_by` wraps around, and
/// amounts taken from flow records (bytes, packets) can each be close to 2^64. Only the
/// pipeline's thread adds to these counters, so the read and the add do not race.
pub fn inc_saturating(counter: &IntCounter, amount: u64) {
    counter.inc_by(amount.min(u64::MAX - counter.get()));
}

/// Registers `metric` in the one registry and hands it back. The names and labels are
/// constants of this module, so a failure is a programming error caught by every test.
fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, metric: M) -> M {
    r.register(Box::new(metric.clone()))
        .expect("metric registered once");
    metric
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        r,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric"),
    )
}

impl Metrics {
    pub fn new() -> Self {
        Self::for_stack(None)
    }

    /// The metrics of one stack of a daemon that watches several: every series carries the
    /// label `stack`, so one scrape tells them apart.
    pub fn for_stack(stack: Option<&str>) -> Self {
        let labels =
            stack.map(|s| std::collections::HashMap::from([("stack".to_string(), s.to_string())]));
        let r = Registry::new_custom(None, labels).expect("a valid constant label");
        let records = counter_vec(
            &r,
            "egresswatch_flow_records_total",
            "Flow-log records processed, by classified path, remote port class and action.",
            &["path", "port_class", "action"],
        );
        let bytes = counter_vec(&r, "egresswatch_flow_bytes_total", "Bytes in processed flow-log records, by path, remote port class and action (duplicate views of a connection are under path=\"duplicate\").", &["path", "port_class", "action"]);
        let findings = counter_vec(
            &r,
            "egresswatch_findings_total",
            "Findings raised, by rule and severity.",
            &["rule", "severity"],
        );
        let findings_suppressed = counter_vec(
            &r,
            "egresswatch_findings_suppressed_total",
            "Findings a `[[suppress]]` entry of the config matched, by rule: not alerted on, not in egresswatch_findings_total.",
            &["rule"],
        );
        for rule in crate::finding::RULES {
            findings_suppressed.with_label_values(&[rule]);
            for severity in crate::finding::severities(rule) {
                findings.with_label_values(&[rule, severity.as_str()]);
            }
        }
        let bad_lines = counter_vec(
            &r,
            "egresswatch_bad_lines_total",
            "Lines that were not valid records in their format, by reason.",
            &["reason"],
        );
        let skipped_records = counter_vec(
            &r,
            "egresswatch_status_records_total",
            "NODATA and SKIPDATA records (SKIPDATA means AWS lost visibility), by log status.",
            &["log_status"],
        );
        let ingest_lag = histogram(
            &r,
            "egresswatch_ingest_lag_seconds",
            "Time from a record's window end to its processing.",
            vec![15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0],
        );
        let source_calls = counter_vec(
            &r,
            "egresswatch_source_requests_total",
            "API calls made by the source, by operation.",
            &["operation"],
        );
        let source_errors = counter_vec(
            &r,
            "egresswatch_source_request_errors_total",
            "Source API calls that failed, by operation.",
            &["operation"],
        );
        let source_throttles = counter_vec(
            &r,
            "egresswatch_source_request_throttles_total",
            "Source API calls that were throttled, by operation.",
            &["operation"],
        );
        let source_wait_seconds = register(
            &r,
            CounterVec::new(
                Opts::new(
                    "egresswatch_source_budget_wait_seconds_total",
                    "Seconds source API calls waited for the account's call budget, by operation.",
                ),
                &["operation"],
            )
            .expect("valid metric"),
        );
        let cloudwatch_read_delay = histogram(
            &r,
            "egresswatch_cloudwatch_read_delay_seconds",
            "Time from a CloudWatch Logs event's ingestion to its read by the source.",
            vec![
                1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
            ],
        );
        let cloudwatch_streams = gauge_vec(
            &r,
            "egresswatch_cloudwatch_streams",
            "Log streams of the CloudWatch source: tracked (a position is kept), read_last_poll, deferred (due, left for a later poll's spare budget).",
            &["state"],
        );
        for state in ["tracked", "read_last_poll", "deferred"] {
            cloudwatch_streams.with_label_values(&[state]);
        }
        let s3_objects = counter_vec(
            &r,
            "egresswatch_s3_objects_total",
            "S3 objects of the S3 source, by outcome: read (every line passed), duplicate (announced again after it was read), outside_prefix (not the stack's), superseded (written again since its notification).",
            &["outcome"],
        );
        for o in ["read", "duplicate", "outside_prefix", "superseded"] {
            s3_objects.with_label_values(&[o]);
        }
        let s3_object_errors = counter_vec(
            &r,
            "egresswatch_s3_object_errors_total",
            "S3 objects that could not be read, by reason; their messages go to the dead-letter queue after the queue's maxReceiveCount.",
            &["reason"],
        );
        for reason in S3_OBJECT_ERRORS {
            s3_object_errors.with_label_values(&[reason]);
        }
        let sqs_messages = counter_vec(
            &r,
            "egresswatch_sqs_messages_total",
            "SQS messages of the S3 source, by outcome: received, deleted (every object committed), delete_failed (delivered again; its objects are recognised as read), test_event, not_a_notification (left for the dead-letter queue).",
            &["outcome"],
        );
        for o in [
            "received",
            "deleted",
            "delete_failed",
            "test_event",
            "not_a_notification",
        ] {
            sqs_messages.with_label_values(&[o]);
        }
        let records_outside_range = register(
            &r,
            IntCounter::new(
                "egresswatch_records_outside_range_total",
                "Records a backfill read and left out: they start outside its time range.",
            )
            .expect("valid counter"),
        );
        let checkpoint_timestamp = register(
            &r,
            IntGauge::new(
                "egresswatch_checkpoint_timestamp_seconds",
                "When the last checkpoint was committed (Unix seconds).",
            )
            .expect("valid gauge"),
        );
        let warm_start_left = register(
            &r,
            IntGauge::new(
                "egresswatch_warm_start_left",
                "Log streams (CloudWatch) or objects (S3) of the retained history (back to history-seconds) a first start is still reading; /readyz answers 503 'warming' until it is 0.",
            )
            .expect("valid gauge"),
        );
        let checkpoint_records = register(
            &r,
            IntGauge::new(
                "egresswatch_checkpoint_records",
                "Records the committed positions are past, over the state dir's whole life.",
            )
            .expect("valid gauge"),
        );
        let checkpoint_journal_bytes = register(
            &r,
            IntGauge::new(
                "egresswatch_checkpoint_journal_bytes",
                "Bytes of position changes appended since the checkpoint was last written whole.",
            )
            .expect("valid gauge"),
        );
        let last_record_timestamp = register(
            &r,
            IntGauge::new(
                "egresswatch_last_record_timestamp_seconds",
                "Window end of the newest record processed (Unix seconds).",
            )
            .expect("valid gauge"),
        );
        let alerts_sent = counter_vec(
            &r,
            "egresswatch_alerts_sent_total",
            "Alerts delivered, by sink.",
            &["sink"],
        );
        let alerts_failed = counter_vec(
            &r,
            "egresswatch_alert_send_failures_total",
            "Alert deliveries that failed (and are retried), by sink.",
            &["sink"],
        );
        let alerts_dropped = counter_vec(
            &r,
            "egresswatch_alerts_dropped_total",
            "Alerts a sink never delivered because the outbox reached its size or age bound, by sink.",
            &["sink"],
        );
        let alerts_suppressed = register(&r, IntCounter::new("egresswatch_alerts_deduplicated_total", "Findings not sent again because the same rule, workload and remote alerted within the dedupe window.").expect("valid counter"));
        let alerts_folded = counter_vec(
            &r,
            "egresswatch_alerts_folded_total",
            "Findings folded into a counted alert because their rule was over its alert budget, by rule.",
            &["rule"],
        );
        let alerts_pending = gauge_vec(
            &r,
            "egresswatch_alerts_pending",
            "Alerts in the outbox a sink has not yet acknowledged, by sink.",
            &["sink"],
        );
        let outbox_bytes = register(
            &r,
            IntGauge::new(
                "egresswatch_outbox_bytes",
                "Bytes the alert outbox holds in the state dir.",
            )
            .expect("valid gauge"),
        );
        let source_up = register(
            &r,
            IntGauge::new(
                "egresswatch_source_up",
                "1 while the source reads successfully, 0 while it cannot (the log says why).",
            )
            .expect("valid gauge"),
        );
        let source_last_success_timestamp = register(
            &r,
            IntGauge::new(
                "egresswatch_source_last_success_timestamp_seconds",
                "When the source last read successfully (Unix seconds).",
            )
            .expect("valid gauge"),
        );
        let build_info = gauge_vec(
            &r,
            "egresswatch_build_info",
            "Build information; always 1.",
            &["version", "revision"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("EGRESSWATCH_REVISION")])
            .set(1);
        let config_last_reload_successful = register(
            &r,
            IntGauge::new(
                "egresswatch_config_last_reload_successful",
                "Whether the last configuration reload (SIGHUP or a changed file) succeeded: 1, or 0 while the running configuration is kept because the new one was refused.",
            )
            .expect("valid gauge"),
        );
        let config_last_reload_success_timestamp = register(
            &r,
            IntGauge::new(
                "egresswatch_config_last_reload_success_timestamp_seconds",
                "When the configuration was last loaded successfully (Unix seconds).",
            )
            .expect("valid gauge"),
        );
        let rules_snapshot_seconds = histogram(
            &r,
            "egresswatch_rules_snapshot_duration_seconds",
            "Time taken to save what the behavioural rules have learnt to the state dir.",
            vec![0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5],
        );
        let top_workloads = gauge_vec(
            &r,
            "egresswatch_top_workload_egress_bytes",
            "Bytes sent through the NAT since start by the heaviest workloads (top 10, a lower-bound estimate in bounded memory).",
            &["workload"],
        );
        let top_remotes = gauge_vec(
            &r,
            "egresswatch_top_remote_egress_bytes",
            "Bytes sent through the NAT since start to the heaviest destinations (top 10, a lower-bound estimate in bounded memory).",
            &["remote"],
        );
        let rule_state_evictions = counter_vec(
            &r,
            "egresswatch_rule_state_evictions_total",
            "Entries the behavioural rules forgot to stay within rules.state-entries, by rule.",
            &["rule"],
        );
        let rule_learning = gauge_vec(
            &r,
            "egresswatch_rule_learning",
            "1 while a rule is in its learning period (it keeps what it sees and judges it when the period ends), 0 after, by rule; absent for rules that do not learn.",
            &["rule"],
        );
        let state_repairs = counter_vec(
            &r,
            "egresswatch_state_repairs_total",
            "State in the state dir found damaged or missing and repaired, by store (state_dir_lock, outbox, checkpoint_journal, rules_snapshot) and kind (removed, torn_write, corrupt_line, missing, rule_not_restored, rule_not_carried_over).",
            &["store", "kind"],
        );
        for (store, kind) in STATE_REPAIRS {
            state_repairs.with_label_values(&[store, kind]);
        }
        let state_write_errors = counter_vec(
            &r,
            "egresswatch_state_write_errors_total",
            "Writes to the state dir that failed, by store (checkpoint, rules_snapshot, outbox, delivery_acks, findings).",
            &["store"],
        );
        for store in STATE_STORES {
            state_write_errors.with_label_values(&[store]);
        }
        let cloudwatch_stream_changes = counter_vec(
            &r,
            "egresswatch_cloudwatch_stream_changes_total",
            "Log streams of the CloudWatch source that changed under the daemon: recreated (read again from the start), token_refused (saved token unknown; read from the start), retired (aged out of retention or gone from the listing), gone (deleted while read).",
            &["change"],
        );
        for change in STREAM_CHANGES {
            cloudwatch_stream_changes.with_label_values(&[change]);
        }
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid gauge"));
        let topology_nat_interfaces = gauge(
            "egresswatch_topology_nat_interfaces",
            "NAT gateway interfaces the daemon knows for the stack: flows through them are NAT egress. 0 means no rule sees egress.",
        );
        let topology_s3_ranges = gauge(
            "egresswatch_topology_s3_ranges",
            "Address ranges of the S3 prefix list the daemon knows: NAT traffic to them is counted as S3, not internet egress.",
        );
        let file_changes = counter_vec(
            &r,
            "egresswatch_file_changes_total",
            "What happened to the file source's files: rotated, read_from_start (replaced or truncated: not the file of the saved position), corrupt_gzip (a gzip stream broke off; its complete lines kept), path_missing.",
            &["change"],
        );
        for c in crate::source::file::FileChange::ALL {
            file_changes.with_label_values(&[c.label()]);
        }
        let topology_mismatch = gauge(
            "egresswatch_topology_mismatch",
            "1 once many flows were judged and none was NAT egress: the network description (outputs file or [topology]) does not match these flow logs.",
        );
        // Series with known label values start at zero, so rates and alerts see them before the
        // first event (Prometheus's advice for labelled counters).
        for op in SOURCE_OPERATIONS {
            for c in [&source_calls, &source_errors, &source_throttles] {
                c.with_label_values(&[op]);
            }
            source_wait_seconds.with_label_values(&[op]);
        }
        for status in ["NODATA", "SKIPDATA"] {
            skipped_records.with_label_values(&[status]);
        }
        // The parser's reasons, and the sources' own: a line too long to be read at all.
        for reason in flowlog::ErrorKind::REASONS.iter().chain(&[LINE_TOO_LONG]) {
            bad_lines.with_label_values(&[reason]);
        }
        Metrics {
            stack: stack.map(String::from),
            not_ready_reason: std::sync::Mutex::new(None),
            top_workloads,
            top_remotes,
            rule_state_evictions,
            rule_learning,
            state_repairs,
            state_write_errors,
            cloudwatch_stream_changes,
            topology_nat_interfaces,
            topology_s3_ranges,
            topology_mismatch,
            file_changes,
            rules_snapshot_seconds,
            registry: r,
            records,
            bytes,
            findings,
            findings_suppressed,
            bad_lines,
            skipped_records,
            ingest_lag,
            source_calls,
            source_errors,
            source_throttles,
            source_wait_seconds,
            cloudwatch_read_delay,
            cloudwatch_streams,
            warm_start_left,
            s3_objects,
            s3_object_errors,
            sqs_messages,
            records_outside_range,
            checkpoint_timestamp,
            checkpoint_records,
            checkpoint_journal_bytes,
            last_record_timestamp,
            alerts_sent,
            alerts_failed,
            alerts_folded,
            alerts_pending,
            outbox_bytes,
            source_up,
            source_last_success_timestamp,
            alerts_dropped,
            alerts_suppressed,
            build_info,
            config_last_reload_successful,
            config_last_reload_success_timestamp,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render_all(std::slice::from_ref(self))
    }
}

/// The standard `process_*` series of this process (Linux), in a registry of their own.
static PROCESS: std::sync::LazyLock<Registry> = std::sync::LazyLock::new(|| {
    let r = Registry::new();
    let _ = r.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ));
    r
});

/// The exposition of several stacks' metrics: one family per name, holding every stack's
/// series (an exposition may not name a family twice).
pub fn render_all<M: std::borrow::Borrow<Metrics>>(all: &[M]) -> String {
    // The process's own series (CPU, memory, file descriptors, start time) once, whatever
    // the number of stacks: they describe the process, not a stack.
    let mut families: Vec<prometheus::proto::MetricFamily> = PROCESS.gather();
    families.extend(PROCESS_METRICS.registry.gather());
    for m in all {
        for family in m.borrow().registry.gather() {
            match families.iter_mut().find(|f| f.name() == family.name()) {
                Some(f) => {
                    for metric in family.get_metric() {
                        f.mut_metric().push(metric.clone());
                    }
                }
                None => families.push(family),
            }
        }
    }
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&families, &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

impl Metrics {}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The remote port's class: a bounded label instead of the port itself.
pub fn port_class(port: Option<u16>, protocol: Option<u8>) -> &'static str {
    match (protocol, port) {
        (Some(1) | Some(58), _) => "icmp",
        (_, Some(443)) => "https",
        (_, Some(80)) => "http",
        (_, Some(53) | Some(853)) => "dns",
        (_, Some(22)) => "ssh",
        (_, Some(3389)) => "rdp",
        (_, Some(445) | Some(139)) => "smb",
        (_, Some(2049)) => "nfs",
        (_, Some(1433 | 1521 | 3306 | 5432 | 6379 | 27017)) => "database",
        (_, Some(p)) if p >= 8192 => "high",
        (_, Some(_)) => "other",
        (_, None) => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stacks_share_one_exposition_each_series_labelled_with_its_stack() {
        let a = Metrics::for_stack(Some("research"));
        let b = Metrics::for_stack(Some("clinical"));
        a.records_outside_range.inc_by(3);
        b.records_outside_range.inc_by(5);
        let text = render_all(&[a, b]);
        assert_eq!(
            text.matches("# TYPE egresswatch_records_outside_range_total counter")
                .count(),
            1,
            "one family per name"
        );
        assert!(text.contains("egresswatch_records_outside_range_total{stack=\"research\"} 3"));
        assert!(text.contains("egresswatch_records_outside_range_total{stack=\"clinical\"} 5"));
        // The process's own series once, without a stack label.
        assert_eq!(
            text.matches("\nprocess_resident_memory_bytes ").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("\nprocess_start_time_seconds ").count(), 1);
    }

    #[test]
    fn every_rules_findings_series_exists_at_zero_before_its_first_finding() {
        let text = render_all(&[Metrics::new()]);
        for rule in crate::finding::RULES {
            for severity in crate::finding::severities(rule) {
                let series = format!(
                    "egresswatch_findings_total{{rule=\"{rule}\",severity=\"{}\"}} 0\n",
                    severity.as_str()
                );
                assert!(text.contains(&series), "{series} missing");
            }
        }
    }
}
