//! Where flow-log lines come from. Each source reads its input on its own terms (a file, stdin,
//! CloudWatch Logs, S3) and hands the daemon batches of complete lines together with the
//! position just after them, so the daemon can commit that position once the batch's findings
//! are durable and a restart neither re-reads nor skips a line.

pub mod file;
