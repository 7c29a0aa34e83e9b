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
