//! What an operator can see happen, one type per event: each one counts itself in the
//! metrics and writes its log line in the same call ([`Event::emit`]), so a metric and the
//! log never tell two stories. `metrics.rs` declares the series; the places where something
//! happens build the event and emit it.

use crate::metrics::Metrics;

/// An observable event: counted and logged together.
pub trait Event {
    fn emit(self, m: &Metrics);
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
/// `_throttles_total` when AWS said to slow down). The caller says what it does about it.
pub struct AwsCallFailed<'a> {
    pub operation: &'a str,
    pub code: Option<&'a str>,
}

impl Event for AwsCallFailed<'_> {
    fn emit(self, m: &Metrics) {
        m.source_errors.with_label_values(&[self.operation]).inc();
        let throttled = self
            .code
            .is_some_and(|c| c.contains("Throttl") || c.contains("LimitExceeded"));
        if throttled {
            m.source_throttles
                .with_label_values(&[self.operation])
                .inc();
        }
        tracing::debug!(
            operation = self.operation,
            code = self.code.unwrap_or(""),
            throttled,
            "AWS call failed"
        );
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
                m.source_last_success_timestamp
                    .set(i64::try_from(at_unix).unwrap_or(i64::MAX));
            }
            SourceHealth::Failing { reason, new_reason } => {
                if new_reason {
                    tracing::error!(reason, "source cannot read; not ready until it can");
                }
                m.source_up.set(0);
            }
        }
    }
}

/// The workload inventory described from EC2, or kept as it was when EC2 could not answer.
pub enum InventoryRefresh<'a> {
    Done { addresses: usize },
    Kept { error: &'a str },
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
        }
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
}
