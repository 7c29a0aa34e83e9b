//! Where flow-log lines come from. Each source reads its input on its own terms (a file, stdin,
//! CloudWatch Logs, later S3 announced through SQS) and hands the daemon [`Batch`]es: lines, the
//! format to read them in, where they came from (for messages) and a [`Position`] to commit.
//! The daemon runs every batch through every stage, makes its findings durable, and only then
//! moves the position into the checkpoint, so a restart neither re-reads nor skips a line. The
//! daemon knows nothing else about the source it runs: [`open`] picks it from the config.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use egresswatch_stack::Outputs;
use flowlog::Format;

use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::metrics::Metrics;

pub mod budget;
pub mod cloudwatch;
pub mod file;
mod parquet_rows;
pub mod s3;

/// What [`Source::next`] has for the daemon.
pub enum Next {
    /// Lines to run through every stage, then commit.
    Batch(Box<Batch>),
    /// Nothing new within the wait the source was given; its health is as it was.
    Idle,
    /// The source read successfully and has nothing new for now (a poll is done, a file is
    /// open): the daemon is ready.
    Reading,
    /// The source cannot read now (a missing log group, no credentials); it keeps trying and
    /// the daemon reports itself unready until it reads again.
    Unavailable(String),
    /// A finite input (a file not followed, stdin) has ended.
    End,
    /// The source cannot go on; the run ends with this error after what was read is committed.
    Failed(String),
}

/// Lines from one origin, all in one format, with the position just after them.
pub struct Batch {
    /// Where the lines come from, for messages: a path, "stdin", "group/stream".
    pub origin: String,
    pub lines: Lines,
    pub format: Decoding,
    /// What moves in the checkpoint once the batch has passed every stage.
    pub position: Position,
    /// Lines the source dropped unread (longer than `max-line-bytes`), counted as bad lines.
    pub oversize_lines: u64,
    /// Things the operator should see in the log (a rotated file, a re-created stream).
    pub notes: Vec<crate::source::file::FileNote>,
}

impl Batch {
    /// A batch that only moves positions (a stream retired or gone), with no lines.
    pub fn positions_only(origin: String, position: Position) -> Batch {
        Batch {
            origin,
            lines: Lines::Numbered {
                text: Vec::new(),
                first_line: 1,
            },
            format: Decoding::Pinned(Format::default_v2()),
            position,
            oversize_lines: 0,
            notes: Vec::new(),
        }
    }
}

/// The lines of a batch, and how a bad one is located in a message.
pub enum Lines {
    /// Complete lines, each ending in `\n`, numbered from `first_line` without gaps (a file,
    /// stdin, an S3 object).
    Numbered { text: Vec<u8>, first_line: u64 },
    /// Log events, each located by its timestamp (ms); one event may hold several lines.
    Events(Vec<(i64, String)>),
    /// Rows of a columnar object (Parquet), numbered from `first_line` without gaps, made
    /// into records from their typed cells.
    Rows {
        rows: crate::source::parquet_rows::RowBatch,
        first_line: u64,
    },
}

/// How the lines name their fields.
#[derive(Clone, Debug)]
pub enum Decoding {
    /// The format is known (the flow log's own `LogFormat`, or the config's): a header line
    /// is not expected.
    Pinned(Format),
    /// Lines start in this format and a header line (a file's first, an S3 object's) switches
    /// it; the switch holds for the following batches of the same origin.
    Headers(Format),
}

/// A read position, applied to the checkpoint once its batch has passed every stage.
#[derive(Clone, Debug)]
pub enum Position {
    /// Nothing to resume from (stdin).
    None,
    /// A file read up to this point.
    File { key: String, at: file::FilePosition },
    /// CloudWatch log streams: positions moved and streams forgotten.
    Streams(cloudwatch::StreamChange),
    /// An S3 object read up to here.
    S3Object {
        id: String,
        progress: s3::ObjectProgress,
    },
}

impl Position {
    pub fn apply(self, cp: &mut Checkpoint) {
        match self {
            Position::None => {}
            Position::File { key, at } => {
                cp.files.insert(key, at);
            }
            Position::Streams(change) => change.apply(cp),
            Position::S3Object { id, progress } => s3::apply(cp, id, progress),
        }
    }
}

/// One source of flow-log lines.
///
/// `next` is called again only once the previous batch has passed every stage (its findings
/// are in the outbox and its position applied to the checkpoint in memory), so a source may
/// go on from the end of the batch it handed out. It is not cancelled except at shutdown.
pub trait Source: Send {
    /// The next batch, or [`Next::Idle`] if there is none within `wait`.
    fn next(&mut self, wait: Duration) -> impl Future<Output = Next> + Send;

    /// A checkpoint holding every position handed out so far is durable: a source whose
    /// upstream wants an acknowledgement (an SQS message to delete) gives it now.
    fn committed(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// The source the config names, resuming from `cp`: a file or stdin, CloudWatch Logs, or S3.
pub enum Configured {
    File(file::FileLines),
    CloudWatch(Box<cloudwatch::CloudWatchSource>),
    S3(Box<s3::S3Source>),
}

/// The name of the state files (checkpoint, rules, outbox) of the source the config names.
pub fn store_name(config: &Config) -> &'static str {
    match config.source.as_str() {
        "cloudwatch" => "cloudwatch",
        // A backfill keeps its own state: it must not mark the live queue's objects read.
        "s3" if config.s3.range().is_some() => "s3-backfill",
        "s3" => "s3",
        _ => "file",
    }
}

/// The stack's outputs, when the config names an outputs file.
pub fn stack_outputs(config: &Config) -> Result<Option<Outputs>, String> {
    config
        .outputs_file
        .as_deref()
        .map(|p| Outputs::read(p).map_err(|e| format!("outputs-file {e}")))
        .transpose()
}

/// Opens the source the config names. The CloudWatch source needs the AWS clients.
pub fn open(
    config: &Config,
    cp: &Checkpoint,
    clients: Option<crate::aws::Clients>,
    metrics: Arc<Metrics>,
) -> Result<Configured, String> {
    if config.source == "s3" {
        let clients = clients.ok_or("the s3 source needs AWS clients")?;
        return Ok(Configured::S3(Box::new(s3::S3Source::new(
            config, &clients, cp, metrics,
        )?)));
    }
    if config.source == "cloudwatch" {
        let clients = clients.ok_or("the cloudwatch source needs AWS clients")?;
        return Ok(Configured::CloudWatch(Box::new(
            cloudwatch::CloudWatchSource::new(config, clients, cp, metrics)?,
        )));
    }
    Ok(Configured::File(file::FileLines::open(config, cp)?))
}

impl Source for Configured {
    async fn next(&mut self, wait: Duration) -> Next {
        match self {
            Configured::File(s) => s.next(wait).await,
            Configured::CloudWatch(s) => s.next(wait).await,
            Configured::S3(s) => s.next(wait).await,
        }
    }

    async fn committed(&mut self) {
        match self {
            Configured::File(s) => s.committed().await,
            Configured::CloudWatch(s) => s.committed().await,
            Configured::S3(s) => s.committed().await,
        }
    }
}
