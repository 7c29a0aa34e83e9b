//! `egresswatch-monitor`: the daemon that watches what leaves the VPC. Sources feed batches of
//! flow-log lines through parse, classify, detect and the alert router into the durable
//! outbox the sinks deliver from; metrics are kept at every stage, and read positions are
//! committed only with the rules' state that has seen the records before them.

pub mod alert;
pub mod aws;
pub mod check;
pub mod checkpoint;
pub mod classify;
pub mod config;
pub mod daemon;
pub mod denylist;
pub mod document;
pub mod events;
pub mod finding;
pub mod findings;
pub mod http;
pub mod inventory;
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod pipeline;
pub mod reload;
pub mod report;
pub mod rules;
pub mod sink;
pub mod sketch;
pub mod source;
pub mod suppress;
pub mod topology;

/// The version and the git revision this build is from, as `--version` prints them.
pub const BUILD_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (revision ",
    env!("EGRESSWATCH_REVISION"),
    ")"
);

pub use config::Config;
pub use daemon::{run, RunSummary};
pub use metrics::Metrics;
