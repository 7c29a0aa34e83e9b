//! The S3 source: flow-log objects as AWS delivers them to S3 (gzip text with a header line,
//! or Parquet), learnt of from the S3 event notifications on an SQS queue, or listed from the
//! stack's prefix for a backfill over a time range.
//!
//! At least once, counted once. A message is deleted only after every object it names has
//! passed every stage and the checkpoint holding that is durable; while an object is read, its
//! message's visibility is renewed. Each object's progress (lines handed out, and whether it is
//! complete) is kept in the checkpoint under its bucket, key and ETag, so a notification
//! delivered twice, or a restart half-way through an object, counts no record twice.
//!
//! An object that cannot be read (corrupt gzip, not a flow log, a Parquet schema without the
//! needed columns, gone) is counted by reason and its message is left alone: the queue
//! delivers it again, and after its `maxReceiveCount` moves it to the dead-letter queue, where
//! it stays for a person to look at. The daemon goes on with the next message.
//!
//! Objects are downloaded to a file and read from there, so memory does not grow with an
//! object's size (Parquet's footer is at the end: it needs the whole object anyway). The next
//! object is downloaded while one is read, so the rules do not wait for S3 between objects.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;
use flowlog::{Field, Format};
use serde::{Deserialize, Serialize};

use super::{Batch, Decoding, Lines, Next, Position, Source};
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::events::Event;
use crate::metrics::Metrics;

/// About this much text per batch: large enough that per-batch costs vanish, small enough
/// that a checkpoint can follow soon.
const BATCH_BYTES: usize = 1 << 20;
/// Rows per batch from a Parquet object.
const BATCH_ROWS: usize = 8_192;
/// Complete objects remembered, to recognise a notification delivered again: SQS keeps a
/// message at most 14 days, so an object finished longer ago than that cannot come back.
const FORGET_AFTER_SECS: u64 = 15 * 86_400;
/// The most objects remembered, whatever their age (one stack writes a few hundred a day).
const MOST_REMEMBERED: usize = 100_000;

/// The fields a flow log must have for the rules to judge it.
pub const NEEDED_FIELDS: [Field; 7] = [
    Field::SrcAddr,
    Field::DstAddr,
    Field::SrcPort,
    Field::DstPort,
    Field::Protocol,
    Field::Bytes,
    Field::Start,
];

/// How far an object has been read, kept in the checkpoint under [`ObjectRef::id`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectProgress {
    /// Lines (text, the header included) or rows (Parquet) handed out and committed.
    pub lines: u64,
    /// Every line of the object has passed.
    pub complete: bool,
    /// When this moved (Unix seconds): complete objects are forgotten after two weeks.
    pub at: u64,
}

/// Moves one object's progress in the checkpoint, forgetting what can no longer come back.
pub fn apply(cp: &mut Checkpoint, id: String, progress: ObjectProgress) {
    let fresh = !cp.s3_objects.contains_key(&id);
    let now = progress.at;
    cp.s3_objects.insert(id, progress);
    // Pruning walks the map: only now and then.
    if fresh && (cp.s3_objects.len().is_multiple_of(256) || cp.s3_objects.len() > MOST_REMEMBERED) {
        cp.s3_objects
            .retain(|_, p| !p.complete || p.at.saturating_add(FORGET_AFTER_SECS) > now);
        while cp.s3_objects.len() > MOST_REMEMBERED {
            let oldest = cp
                .s3_objects
                .iter()
                .filter(|(_, p)| p.complete)
                .min_by_key(|(_, p)| p.at)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    cp.s3_objects.remove(&k);
                }
                None => break,
            }
        }
    }
}

/// One object a notification (or a listing) names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    pub bucket: String,
    pub key: String,
    /// The ETag without quotes, or the version id: a key written again is another object.
    pub etag: Option<String>,
    pub version: Option<String>,
}

impl ObjectRef {
    pub fn id(&self) -> String {
        format!(
            "{}/{}#{}",
            self.bucket,
            self.key,
            self.version
                .as_deref()
                .or(self.etag.as_deref())
                .unwrap_or("")
        )
    }

    fn origin(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }
}

/// What an SQS message says.
#[derive(Debug, PartialEq, Eq)]
pub enum Notice {
    /// New objects.
    Objects(Vec<ObjectRef>),
    /// S3's test event, sent when a notification is set up: nothing to read.
    Test,
}

/// A key as S3 event notifications write it: URL-encoded, spaces as `+`.
fn notification_key(raw: &str) -> String {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8_lossy()
        .into_owned()
}

/// Reads an SQS message body: an S3 event notification (S3 → SQS), the same inside an SNS
/// envelope (S3 → SNS → SQS), or an EventBridge "Object Created" event.
pub fn parse_notice(body: &str) -> Result<Notice, String> {
    let v: serde_json::Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(inner) = v.get("Message").and_then(|m| m.as_str()) {
        if v.get("Type").and_then(|t| t.as_str()) == Some("Notification") {
            return parse_notice(inner);
        }
    }
    if v.get("Event").and_then(|e| e.as_str()) == Some("s3:TestEvent") {
        return Ok(Notice::Test);
    }
    if let Some(records) = v.get("Records").and_then(|r| r.as_array()) {
        let mut out = Vec::new();
        for r in records {
            let event = r.get("eventName").and_then(|e| e.as_str()).unwrap_or("");
            if !event.starts_with("ObjectCreated") {
                continue;
            }
            let s3 = &r["s3"];
            let (Some(bucket), Some(key)) =
                (s3["bucket"]["name"].as_str(), s3["object"]["key"].as_str())
            else {
                return Err("an S3 record without bucket name or object key".into());
            };
            out.push(ObjectRef {
                bucket: bucket.to_string(),
                key: notification_key(key),
                etag: s3["object"]["eTag"]
                    .as_str()
                    .map(|e| e.trim_matches('"').to_string()),
                version: s3["object"]["versionId"].as_str().map(String::from),
            });
        }
        return Ok(Notice::Objects(out));
    }
    if v.get("detail-type").and_then(|d| d.as_str()) == Some("Object Created") {
        let d = &v["detail"];
        let (Some(bucket), Some(key)) = (d["bucket"]["name"].as_str(), d["object"]["key"].as_str())
        else {
            return Err("an EventBridge event without bucket name or object key".into());
        };
        // EventBridge writes the key as it is.
        return Ok(Notice::Objects(vec![ObjectRef {
            bucket: bucket.to_string(),
            key: key.to_string(),
            etag: d["object"]["etag"]
                .as_str()
                .map(|e| e.trim_matches('"').to_string()),
            version: d["object"]["version-id"].as_str().map(String::from),
        }]));
    }
    Err("not an S3 event notification".into())
}

/// The time in a flow-log object's name (`…_20261129T0805Z_hash.log.gz`), Unix seconds.
pub fn key_time(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let stamp = name.split('_').find(|part| {
        part.len() == 14 && part.as_bytes().get(8) == Some(&b'T') && part.ends_with('Z')
    })?;
    let num = |r: std::ops::Range<usize>| stamp.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi) = (
        num(0..4)?,
        num(4..6)?,
        num(6..8)?,
        num(9..11)?,
        num(11..13)?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + h * 3_600 + mi * 60).ok()
}

/// Why an object could not be read: the label of `egresswatch_s3_object_errors_total`.
#[derive(Debug)]
pub struct Unreadable {
    pub reason: &'static str,
    pub detail: String,
}

fn unreadable(reason: &'static str, detail: impl std::fmt::Display) -> Unreadable {
    Unreadable {
        reason,
        detail: detail.to_string(),
    }
}

/// An object being read, from its downloaded file.
pub enum ObjectReader {
    Text {
        // Boxed: the decoder's state is large beside the Parquet reader.
        lines: Box<BufReader<MultiGzDecoder<File>>>,
        format: Format,
        /// Lines read so far, the header included.
        read: u64,
        /// An over-long line met after a chunk had text: it is reported with the next chunk,
        /// whose lines it comes just before.
        pending_oversize: u64,
        /// Where the stream broke (a truncated or corrupt gzip), met after a chunk had complete
        /// lines: those are handed out first, and the break with the next read.
        cut: Option<Unreadable>,
    },
    Parquet {
        rows: Box<super::parquet_rows::ParquetRows>,
        format: Format,
        read: u64,
    },
}

/// What one read of an object gives.
pub struct Chunk {
    /// Lines of a text object; empty for Parquet.
    pub text: Vec<u8>,
    /// Rows of a Parquet object.
    pub rows: Option<super::parquet_rows::RowBatch>,
    /// The number (1-based) of the first line (row) in the chunk.
    pub first_line: u64,
    pub oversize_lines: u64,
    pub ended: bool,
}

impl ObjectReader {
    /// Opens a downloaded object, by its first bytes: gzip text or Parquet.
    pub fn open(path: &std::path::Path) -> Result<ObjectReader, Unreadable> {
        let mut magic = [0u8; 4];
        let mut f = File::open(path).map_err(|e| unreadable("download", e))?;
        let n = f.read(&mut magic).map_err(|e| unreadable("download", e))?;
        let f = File::open(path).map_err(|e| unreadable("download", e))?;
        match &magic[..n] {
            [0x1f, 0x8b, ..] => {
                let mut lines =
                    Box::new(BufReader::with_capacity(128 * 1024, MultiGzDecoder::new(f)));
                let mut header = Vec::new();
                lines
                    .by_ref()
                    .take(64 * 1024)
                    .read_until(b'\n', &mut header)
                    .map_err(|e| unreadable("corrupt_gzip", e))?;
                let format = Format::from_header_line(&header).ok_or_else(|| {
                    unreadable(
                        "not_a_flow_log",
                        format!(
                            "its first line is not a flow-log header: {:?}",
                            String::from_utf8_lossy(&header[..header.len().min(120)])
                        ),
                    )
                })?;
                needs(&format)?;
                Ok(ObjectReader::Text {
                    lines,
                    format,
                    read: 1,
                    pending_oversize: 0,
                    cut: None,
                })
            }
            b"PAR1" => {
                drop(f);
                let (rows, format) = super::parquet_rows::ParquetRows::open(path, BATCH_ROWS)
                    .map_err(|(reason, detail)| unreadable(reason, detail))?;
                needs(&format).map_err(|e| unreadable("parquet_schema", e.detail))?;
                Ok(ObjectReader::Parquet {
                    rows: Box::new(rows),
                    format,
                    read: 0,
                })
            }
            _ => Err(unreadable(
                "unknown_format",
                "neither gzip nor Parquet (its first bytes say neither)",
            )),
        }
    }

    pub fn format(&self) -> &Format {
        match self {
            ObjectReader::Text { format, .. } | ObjectReader::Parquet { format, .. } => format,
        }
    }

    /// Passes over what an earlier run already handed out: `done` lines (rows).
    pub fn skip(&mut self, done: u64, max_line_bytes: usize) -> Result<(), Unreadable> {
        while self.position() < done {
            let left = done.saturating_sub(self.position());
            let chunk =
                self.read_lines(usize::try_from(left).unwrap_or(usize::MAX), max_line_bytes)?;
            if chunk.ended {
                break;
            }
        }
        Ok(())
    }

    fn position(&self) -> u64 {
        match self {
            ObjectReader::Text { read, .. } | ObjectReader::Parquet { read, .. } => *read,
        }
    }

    /// The next lines, about [`BATCH_BYTES`] ([`BATCH_ROWS`] rows), as text in the format.
    pub fn next_chunk(&mut self, max_line_bytes: usize) -> Result<Chunk, Unreadable> {
        self.read_lines(usize::MAX, max_line_bytes)
    }

    fn read_lines(&mut self, most: usize, max_line_bytes: usize) -> Result<Chunk, Unreadable> {
        match self {
            ObjectReader::Text {
                lines,
                read,
                pending_oversize,
                cut,
                ..
            } => {
                if let Some(e) = cut.take() {
                    return Err(e);
                }
                let mut oversize = std::mem::take(pending_oversize);
                let mut text = Vec::with_capacity(BATCH_BYTES + 4096);
                let mut taken = 0usize;
                let mut ended = false;
                let limit = u64::try_from(max_line_bytes)
                    .unwrap_or(u64::MAX)
                    .saturating_add(1);
                // Over-long lines are reported as coming just before the chunk's text, so
                // every line of the text keeps its number.
                let mut first_line = read.saturating_add(1);
                while text.len() < BATCH_BYTES && taken < most {
                    let start = text.len();
                    let n = match lines.by_ref().take(limit).read_until(b'\n', &mut text) {
                        Ok(n) => n,
                        Err(e) => {
                            let e = unreadable(
                                "corrupt_gzip",
                                format!(
                                    "line {}: {e} (the {} complete line(s) before it were read)",
                                    read.saturating_add(1),
                                    read.saturating_sub(1)
                                ),
                            );
                            // The part of a line before the break is no record; the complete
                            // lines before it are, and are handed out before the error.
                            text.truncate(start);
                            if text.is_empty() && oversize == 0 {
                                return Err(e);
                            }
                            *cut = Some(e);
                            break;
                        }
                    };
                    if n == 0 {
                        ended = true;
                        break;
                    }
                    taken += 1;
                    *read = read.saturating_add(1);
                    if text.last() == Some(&b'\n') {
                        continue;
                    }
                    if u64::try_from(n).unwrap_or(u64::MAX) < limit {
                        // The last line, without a newline.
                        text.push(b'\n');
                        continue;
                    }
                    // Longer than allowed: dropped as it streams past.
                    text.truncate(start);
                    let mut rest = Vec::new();
                    loop {
                        rest.clear();
                        let m = lines
                            .by_ref()
                            .take(64 * 1024)
                            .read_until(b'\n', &mut rest)
                            .map_err(|e| unreadable("corrupt_gzip", e))?;
                        if m == 0 || rest.last() == Some(&b'\n') {
                            break;
                        }
                    }
                    if text.is_empty() {
                        oversize += 1;
                        first_line = read.saturating_add(1);
                    } else {
                        *pending_oversize = 1;
                        break;
                    }
                }
                Ok(Chunk {
                    text,
                    rows: None,
                    first_line,
                    oversize_lines: oversize,
                    ended,
                })
            }
            ObjectReader::Parquet { rows, read, .. } => {
                let first_line = read.saturating_add(1);
                let batch = rows.next_rows(BATCH_ROWS.min(most)).map_err(|e| {
                    unreadable(
                        "corrupt_parquet",
                        format!("row {}: {e}", read.saturating_add(1)),
                    )
                })?;
                let n = batch.as_ref().map_or(0, |b| b.len());
                *read = read.saturating_add(n as u64);
                Ok(Chunk {
                    text: Vec::new(),
                    rows: batch,
                    first_line,
                    oversize_lines: 0,
                    ended: n == 0,
                })
            }
        }
    }
}

fn needs(format: &Format) -> Result<(), Unreadable> {
    let missing: Vec<&str> = NEEDED_FIELDS
        .iter()
        .filter(|f| !format.contains(**f))
        .map(|f| f.name())
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(unreadable(
            "not_a_flow_log",
            format!("it has no {} field", missing.join(", ")),
        ))
    }
}

/// A received message and what is left of it.
struct Message {
    receipt: String,
    objects: VecDeque<ObjectRef>,
    /// Some object of it was handed out to be read: it is deleted only once that is
    /// committed. One with only duplicates, test events or objects not read goes at once.
    read: bool,
    /// One of its objects could not be read: the message is not deleted (the queue delivers
    /// it again, and after its receive count moves it to the dead-letter queue), but its
    /// other objects are still read, each now and, once committed, skipped when it returns.
    failed: bool,
    /// When its visibility was last renewed (or it was received).
    renewed: Instant,
}

/// Why a download failed: the call, or writing what it returned.
enum DownloadFailed {
    Call(Box<aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::get_object::GetObjectError>>),
    Write(String),
}

/// The next object, downloading (or downloaded) while the one before it is read.
struct Prefetch {
    id: String,
    path: PathBuf,
    task: tokio::task::JoinHandle<Result<(), DownloadFailed>>,
}

impl Drop for Prefetch {
    /// A download not wanted after all is stopped and its file removed (one adopted was
    /// renamed away first).
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Creates the file a download goes to. Before the download starts, so that one discarded
/// finds its file to remove: later writes of an aborted task go to a file no longer there.
fn download_file(path: &std::path::Path) -> Result<File, DownloadFailed> {
    File::create(path).map_err(|e| DownloadFailed::Write(format!("{}: {e}", path.display())))
}

/// Downloads the object a notification names (not a later write to the same key) into `file`
/// (at `path`).
async fn download(
    s3: aws_sdk_s3::Client,
    object: ObjectRef,
    file: File,
    path: PathBuf,
) -> Result<(), DownloadFailed> {
    let mut req = s3.get_object().bucket(&object.bucket).key(&object.key);
    if let Some(v) = &object.version {
        req = req.version_id(v);
    } else if let Some(e) = &object.etag {
        req = req.if_match(format!("\"{e}\""));
    }
    let got = req
        .send()
        .await
        .map_err(|e| DownloadFailed::Call(Box::new(e)))?;
    let mut body = got.body.into_async_read();
    let write = async {
        let mut file = tokio::fs::File::from_std(file);
        // Not synced: after a crash the object is downloaded again.
        tokio::io::copy(&mut body, &mut file).await.map(|_| ())
    };
    write
        .await
        .map_err(|e| DownloadFailed::Write(format!("{}: {e}", path.display())))
}

/// The object being read.
struct Open {
    object: ObjectRef,
    id: String,
    reader: ObjectReader,
}

/// The S3 source behind [`Source`].
pub struct S3Source {
    s3: aws_sdk_s3::Client,
    sqs: aws_sdk_sqs::Client,
    metrics: Arc<Metrics>,
    queue_url: Option<String>,
    bucket: Option<String>,
    prefix: String,
    visibility: Duration,
    max_line_bytes: usize,
    download: PathBuf,
    /// What the checkpoint (as handed out so far) says of each object.
    progress: std::collections::HashMap<String, ObjectProgress>,
    /// Messages received and not yet finished, oldest first; the front one is being read.
    messages: VecDeque<Message>,
    /// Messages whose objects have all been handed out: deleted once that is committed.
    finished: Vec<String>,
    /// Messages with nothing to commit: deleted before the next receive.
    spent: Vec<String>,
    open: Option<Open>,
    prefetch: Option<Prefetch>,
    /// Prefetches started, for their files' names: one that is discarded may still be
    /// writing its file, so the next never reuses it.
    prefetches: u64,
    /// A backfill's objects still to read, and its time range.
    backfill: Option<VecDeque<ObjectRef>>,
    range: Option<(u64, u64)>,
    listed: bool,
    /// A first start's warm start: the retained history's objects, read before the queue.
    warm: Option<WarmUp>,
    /// Receives that failed in a row, for the pause before the next.
    failures: u32,
}

/// The objects of the last `s3.history-seconds`, listed once, read oldest first.
struct WarmUp {
    since: u64,
    /// None until listed.
    objects: Option<VecDeque<ObjectRef>>,
    count: usize,
    started: Instant,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl S3Source {
    pub fn new(
        config: &Config,
        clients: &crate::aws::Clients,
        cp: &Checkpoint,
        metrics: Arc<Metrics>,
    ) -> Result<S3Source, String> {
        let outputs = super::stack_outputs(config)?;
        let pick = |set: &Option<String>, from: Option<&str>| {
            set.clone()
                .or_else(|| from.filter(|v| !v.is_empty()).map(String::from))
        };
        let queue_url = pick(
            &config.s3.queue_url,
            outputs.as_ref().map(|o| o.flow_log_queue_url.as_str()),
        );
        let bucket = pick(
            &config.s3.bucket,
            outputs.as_ref().map(|o| o.flow_log_bucket.as_str()),
        );
        let prefix = pick(
            &config.s3.prefix,
            outputs.as_ref().map(|o| o.flow_log_prefix.as_str()),
        )
        .unwrap_or_default();
        let range = config.s3.range();
        // A first start: nothing read before. A restart resumes from the checkpoint.
        let first_start = cp.s3_objects.is_empty() && cp.records_committed == 0;
        let warm =
            (range.is_none() && first_start && bucket.is_some() && config.s3.history_seconds > 0)
                .then(|| WarmUp {
                    since: now_secs().saturating_sub(config.s3.history_seconds),
                    objects: None,
                    count: 0,
                    started: Instant::now(),
                });
        if range.is_none() && queue_url.is_none() {
            return Err("the s3 source needs the queue that announces the objects: s3.queue-url, or an outputs-file of a stack that delivers to S3".into());
        }
        if range.is_some() && bucket.is_none() {
            return Err("a backfill lists a bucket: s3.bucket (and s3.prefix), or an outputs-file of a stack that delivers to S3".into());
        }
        let dir = config
            .s3
            .download_dir
            .clone()
            .unwrap_or_else(|| config.state_dir.clone());
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Downloads of an earlier run that stopped before reading them.
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("s3-object.next-") && name.ends_with(".download") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(S3Source {
            s3: clients.s3.clone(),
            sqs: clients.sqs.clone(),
            metrics,
            queue_url,
            bucket,
            prefix,
            visibility: Duration::from_secs(match config.s3.visibility_timeout_seconds {
                0 => 300,
                v => v,
            }),
            max_line_bytes: config.max_line_bytes,
            download: dir.join("s3-object.download"),
            progress: cp
                .s3_objects
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            messages: VecDeque::new(),
            finished: Vec::new(),
            spent: Vec::new(),
            open: None,
            prefetch: None,
            prefetches: 0,
            backfill: range.map(|_| VecDeque::new()),
            range,
            listed: false,
            warm,
            failures: 0,
        })
    }

    fn call(&self, op: &str) {
        self.metrics.source_calls.with_label_values(&[op]).inc();
    }

    /// What `monitor --check` asks of S3: one listing of the stack's prefix (s3:ListBucket).
    /// The queue is not touched: a receive, even one put back at once, counts towards a
    /// message's dead-letter threshold.
    pub async fn check(&self) -> Vec<(String, Result<String, String>)> {
        let mut out = Vec::new();
        if let Some(bucket) = &self.bucket {
            let listed = self
                .s3
                .list_objects_v2()
                .bucket(bucket)
                .prefix(&self.prefix)
                .max_keys(1)
                .send()
                .await;
            out.push((
                format!("bucket s3://{bucket}/{}", self.prefix),
                listed
                    .map(|r| {
                        format!(
                            "listed (s3:ListBucket); {} object(s) in the first page",
                            r.contents().len()
                        )
                    })
                    .map_err(|e| format!("ListObjectsV2: {}", crate::daemon::aws_error(&e))),
            ));
        }
        if let Some(queue) = &self.queue_url {
            out.push((
                format!("queue {queue}"),
                Ok("named; its permissions are checked at the first receive (a test receive would count towards the dead-letter threshold)".into()),
            ));
        }
        out
    }

    /// A failed call, counted and logged; `then` says what is done about it when the error is
    /// not handed on.
    fn failed(
        &self,
        op: &str,
        e: &(impl std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata),
        then: Option<&str>,
    ) -> String {
        let about = self
            .queue_url
            .as_deref()
            .or(self.bucket.as_deref())
            .unwrap_or("");
        let error = crate::daemon::aws_call_failed(&self.metrics, op, e, about, then);
        format!("{op}: {error}")
    }

    fn object_error(&self, object: &ObjectRef, e: &Unreadable) {
        crate::events::ObjectUnreadable {
            object: &object.origin(),
            reason: e.reason,
            detail: &e.detail,
        }
        .emit(&self.metrics);
    }

    /// Renews the visibility of messages held for longer than half of it.
    async fn renew(&mut self) {
        let Some(url) = self.queue_url.clone() else {
            return;
        };
        let half = self.visibility / 2;
        for i in 0..self.messages.len() {
            if self.messages[i].renewed.elapsed() < half {
                continue;
            }
            self.call("ChangeMessageVisibility");
            let r = self
                .sqs
                .change_message_visibility()
                .queue_url(&url)
                .receipt_handle(&self.messages[i].receipt)
                .visibility_timeout(i32::try_from(self.visibility.as_secs()).unwrap_or(i32::MAX))
                .send()
                .await;
            match r {
                Ok(_) => self.messages[i].renewed = Instant::now(),
                Err(e) => {
                    self.failed(
                        "ChangeMessageVisibility",
                        &e,
                        Some("another reader may get the message meanwhile (its objects are still counted once)"),
                    );
                }
            }
        }
    }

    /// Receives messages (waiting up to `wait`, 20 s at most, as SQS allows).
    async fn receive(&mut self, wait: Duration) -> Result<(), String> {
        let Some(url) = self.queue_url.clone() else {
            return Ok(());
        };
        self.call("ReceiveMessage");
        let got = self
            .sqs
            .receive_message()
            .queue_url(&url)
            // One at a time: a message received counts towards the queue's maxReceiveCount
            // even if a crash stops the daemon before it reads it, and a daemon that restarts
            // should not push messages it never started on towards the dead-letter queue. A
            // message names objects of minutes of traffic; one call each costs nothing.
            .max_number_of_messages(1)
            .wait_time_seconds(i32::try_from(wait.as_secs().min(20)).unwrap_or(20))
            .visibility_timeout(i32::try_from(self.visibility.as_secs()).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| self.failed("ReceiveMessage", &e, None))?;
        for m in got.messages() {
            let Some(receipt) = m.receipt_handle() else {
                continue;
            };
            fn event<'a>(
                outcome: &'static str,
                note: Option<&'a str>,
            ) -> crate::events::SqsMessages<'a> {
                crate::events::SqsMessages {
                    outcome,
                    count: 1,
                    note,
                }
            }
            event("received", None).emit(&self.metrics);
            let objects = match parse_notice(m.body().unwrap_or("")) {
                Ok(Notice::Objects(objects)) => objects,
                Ok(Notice::Test) => {
                    event("test_event", None).emit(&self.metrics);
                    Vec::new()
                }
                Err(e) => {
                    // Left to the dead-letter queue: someone sent the queue something else.
                    let note = format!(
                        "message {} on the queue is not an S3 notification ({e}); left for the dead-letter queue",
                        m.message_id().unwrap_or("?")
                    );
                    event("not_a_notification", Some(&note)).emit(&self.metrics);
                    continue;
                }
            };
            self.messages.push_back(Message {
                receipt: receipt.to_string(),
                objects: objects.into(),
                read: false,
                failed: false,
                renewed: Instant::now(),
            });
        }
        Ok(())
    }

    /// Lists the backfill's objects.
    async fn list(&mut self) -> Result<(), String> {
        let Some((from, to)) = self.range else {
            return Ok(());
        };
        let found = self.list_between(from, to).await?;
        crate::events::BackfillListed {
            objects: found.len(),
            bucket: self.bucket.as_deref().unwrap_or_default(),
            prefix: &self.prefix,
        }
        .emit(&self.metrics);
        self.backfill = Some(found.into());
        Ok(())
    }

    /// Lists the first start's history and starts the warm start; one that cannot list
    /// (no s3:ListBucket) is logged and skipped: the queue is read as before.
    async fn list_warm(&mut self) {
        let Some(since) = self.warm.as_ref().map(|w| w.since) else {
            return;
        };
        match self.list_between(since, now_secs()).await {
            Ok(found) => {
                let from = format!(
                    "s3://{}/{}",
                    self.bucket.as_deref().unwrap_or_default(),
                    self.prefix
                );
                crate::events::WarmStart::Started {
                    from: &from,
                    count: found.len(),
                    since,
                }
                .emit(&self.metrics);
                if let Some(w) = &mut self.warm {
                    w.count = found.len();
                    w.objects = Some(found.into());
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "warm start skipped: the retained objects cannot be listed; the rules learn from the queue's objects instead");
                self.warm = None;
            }
        }
    }

    /// The objects under the prefix whose name's time is within [from, to), give or take
    /// the hour an object's records can span, in the order of their keys (their time).
    async fn list_between(&mut self, from: u64, to: u64) -> Result<Vec<ObjectRef>, String> {
        let Some(bucket) = self.bucket.clone() else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&bucket)
            .prefix(&self.prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            self.call("ListObjectsV2");
            let page = page.map_err(|e| self.failed("ListObjectsV2", &e, None))?;
            for o in page.contents() {
                let Some(key) = o.key() else {
                    continue;
                };
                let near = key_time(key).is_none_or(|t| {
                    t.saturating_add(3_600) >= from && t <= to.saturating_add(3_600)
                });
                if near {
                    found.push(ObjectRef {
                        bucket: bucket.clone(),
                        key: key.to_string(),
                        etag: o.e_tag().map(|e| e.trim_matches('"').to_string()),
                        version: None,
                    });
                }
            }
        }
        Ok(found)
    }

    /// Downloads and opens an object, past what was handed out of it before.
    async fn open(&mut self, object: &ObjectRef) -> Result<Option<Open>, Unreadable> {
        let id = object.id();
        let done = self.progress.get(&id).cloned().unwrap_or_default();
        if done.complete {
            crate::events::S3ObjectDone {
                object: &object.origin(),
                outcome: crate::events::S3Outcome::Duplicate,
            }
            .emit(&self.metrics);
            return Ok(None);
        }
        if !self.in_prefix(object) {
            crate::events::S3ObjectDone {
                object: &object.origin(),
                outcome: crate::events::S3Outcome::OutsidePrefix,
            }
            .emit(&self.metrics);
            return Ok(None);
        }
        let downloaded = match self.prefetch.take() {
            Some(mut p) if p.id == id => match (&mut p.task).await {
                Ok(Ok(())) => std::fs::rename(&p.path, &self.download)
                    .map_err(|e| DownloadFailed::Write(format!("{}: {e}", p.path.display()))),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(DownloadFailed::Write(format!("the download task: {e}"))),
            },
            other => {
                // One made ahead of another object is not wanted: dropped before this one
                // is downloaded.
                drop(other);
                match download_file(&self.download) {
                    Ok(file) => {
                        self.call("GetObject");
                        download(self.s3.clone(), object.clone(), file, self.download.clone()).await
                    }
                    Err(e) => Err(e),
                }
            }
        };
        match downloaded {
            Ok(()) => {}
            Err(DownloadFailed::Write(e)) => return Err(unreadable("download", e)),
            Err(DownloadFailed::Call(e)) => {
                let code =
                    aws_sdk_s3::error::ProvideErrorMetadata::code(e.as_ref()).map(String::from);
                let msg = self.failed("GetObject", e.as_ref(), None);
                return Err(match code.as_deref() {
                    Some("NoSuchKey") => unreadable("no_such_key", msg),
                    Some("PreconditionFailed") => {
                        // Written again since: the newer object has its own notification.
                        crate::events::S3ObjectDone {
                            object: &object.origin(),
                            outcome: crate::events::S3Outcome::Superseded,
                        }
                        .emit(&self.metrics);
                        return Ok(None);
                    }
                    _ => unreadable("download", msg),
                });
            }
        }
        let mut reader = ObjectReader::open(&self.download)?;
        reader.skip(done.lines, self.max_line_bytes)?;
        Ok(Some(Open {
            object: object.clone(),
            id,
            reader,
        }))
    }

    /// Whether `object` is in the bucket and prefix this source reads.
    fn in_prefix(&self, object: &ObjectRef) -> bool {
        self.bucket.as_deref().is_none_or(|b| b == object.bucket)
            && object.key.starts_with(&self.prefix)
    }

    /// Starts downloading the object after the one just opened, unless it is read already,
    /// outside the prefix, or being downloaded.
    fn prefetch_next(&mut self) {
        let next = match &self.backfill {
            Some(list) => list.front(),
            None => self.messages.iter().find_map(|m| m.objects.front()),
        };
        let Some(object) = next else {
            return;
        };
        let id = object.id();
        // The one being read, named again by a notification delivered twice, is complete by
        // the time its turn comes.
        let wanted = !self.progress.get(&id).is_some_and(|p| p.complete)
            && self.open.as_ref().is_none_or(|o| o.id != id)
            && self.in_prefix(object);
        if !wanted || self.prefetch.as_ref().is_some_and(|p| p.id == id) {
            return;
        }
        self.prefetch = None;
        self.prefetches = self.prefetches.saturating_add(1);
        let path = self
            .download
            .with_file_name(format!("s3-object.next-{}.download", self.prefetches));
        // Not made: the object is downloaded when its turn comes.
        let Ok(file) = download_file(&path) else {
            return;
        };
        self.call("GetObject");
        let task = tokio::spawn(download(
            self.s3.clone(),
            object.clone(),
            file,
            path.clone(),
        ));
        self.prefetch = Some(Prefetch { id, path, task });
    }

    /// The next object to read, from the front message or the backfill's list.
    fn next_object(&mut self) -> Option<ObjectRef> {
        if let Some(list) = &mut self.backfill {
            return list.pop_front();
        }
        // Called once the previous object is read: the warm start is over when its last
        // object is, not when that one is handed out.
        if let Some(w) = &mut self.warm {
            if let Some(list) = &mut w.objects {
                if let Some(o) = list.pop_front() {
                    crate::events::WarmStart::Progress {
                        left: list.len() + 1,
                    }
                    .emit(&self.metrics);
                    return Some(o);
                }
                crate::events::WarmStart::Done {
                    count: w.count,
                    seconds: w.started.elapsed().as_secs(),
                }
                .emit(&self.metrics);
                self.warm = None;
            }
        }
        loop {
            let front = self.messages.front_mut()?;
            if let Some(o) = front.objects.pop_front() {
                return Some(o);
            }
            // Every object of the front message is handed out.
            if let Some(m) = self.messages.pop_front() {
                if m.failed {
                    // Left on the queue; its visibility is no longer renewed.
                    continue;
                }
                if m.read {
                    self.finished.push(m.receipt);
                } else {
                    self.spent.push(m.receipt);
                }
            }
        }
    }

    /// An object of the front message could not be read: the message is not deleted, so
    /// the queue delivers it again; its other objects are read meanwhile.
    fn abandon(&mut self) {
        if self.backfill.is_none() {
            if let Some(m) = self.messages.front_mut() {
                m.failed = true;
            }
        }
    }
}

impl Source for S3Source {
    async fn next(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.renew().await;
            if let Some(open) = &mut self.open {
                let chunk = match open.reader.next_chunk(self.max_line_bytes) {
                    Ok(c) => c,
                    Err(e) => {
                        let object = open.object.clone();
                        self.object_error(&object, &e);
                        self.open = None;
                        self.abandon();
                        continue;
                    }
                };
                let complete = chunk.ended;
                let lines = open.reader.position();
                let progress = ObjectProgress {
                    lines,
                    complete,
                    at: now_secs(),
                };
                self.progress.insert(open.id.clone(), progress.clone());
                let batch = Batch {
                    origin: open.object.origin(),
                    lines: match chunk.rows {
                        Some(rows) => Lines::Rows {
                            rows,
                            first_line: chunk.first_line,
                        },
                        None => Lines::Numbered {
                            text: chunk.text,
                            first_line: chunk.first_line,
                        },
                    },
                    format: Decoding::Pinned(open.reader.format().clone()),
                    position: Position::S3Object {
                        id: open.id.clone(),
                        progress,
                    },
                    oversize_lines: chunk.oversize_lines,
                    notes: Vec::new(),
                };
                if complete {
                    crate::events::S3ObjectDone {
                        object: &batch.origin,
                        outcome: crate::events::S3Outcome::Read,
                    }
                    .emit(&self.metrics);
                    self.open = None;
                    let _ = std::fs::remove_file(&self.download);
                }
                return Next::Batch(Box::new(batch));
            }
            if self.backfill.is_some() && !self.listed {
                self.listed = true;
                if let Err(e) = self.list().await {
                    return Next::Failed(e);
                }
            }
            if self.warm.as_ref().is_some_and(|w| w.objects.is_none()) {
                self.list_warm().await;
            }
            if let Some(object) = self.next_object() {
                match self.open(&object).await {
                    Ok(Some(open)) => {
                        if let Some(m) = self.messages.front_mut() {
                            m.read = true;
                        }
                        self.open = Some(open);
                        self.prefetch_next();
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.object_error(&object, &e);
                        self.abandon();
                    }
                }
                continue;
            }
            if self.backfill.is_some() {
                return Next::End;
            }
            if !self.spent.is_empty() {
                let spent = std::mem::take(&mut self.spent);
                self.delete(spent).await;
            }
            let mut left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !self.finished.is_empty() {
                // Read messages wait for a checkpoint to be deleted: a short poll lets the
                // daemon take one soon instead of holding them through a long one.
                left = left.min(Duration::from_secs(1));
            }
            if let Err(e) = self.receive(left).await {
                // The queue cannot be reached: wait longer each time (1 s doubling to 60 s),
                // however soon the daemon asks again.
                self.failures = self.failures.saturating_add(1);
                let pause =
                    Duration::from_secs(1u64 << self.failures.min(6)).min(Duration::from_secs(60));
                tokio::time::sleep(pause).await;
                return Next::Unavailable(e);
            }
            self.failures = 0;
            if self.messages.is_empty() {
                return if tokio::time::Instant::now() >= deadline || !self.finished.is_empty() {
                    Next::Reading
                } else {
                    continue;
                };
            }
        }
    }

    async fn committed(&mut self) {
        // Every object of these messages is in the durable checkpoint now.
        let finished = std::mem::take(&mut self.finished);
        self.delete(finished).await;
    }
}

impl S3Source {
    /// Deletes messages, ten to a call.
    async fn delete(&mut self, receipts: Vec<String>) {
        let Some(url) = self.queue_url.clone() else {
            return;
        };
        for group in receipts.chunks(10) {
            let entries: Vec<_> = group
                .iter()
                .enumerate()
                .filter_map(|(i, r)| {
                    aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .ok()
                })
                .collect();
            self.call("DeleteMessageBatch");
            match self
                .sqs
                .delete_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await
            {
                Ok(out) => {
                    crate::events::SqsMessages {
                        outcome: "deleted",
                        count: u64::try_from(out.successful().len()).unwrap_or(0),
                        note: None,
                    }
                    .emit(&self.metrics);
                    if let Some(first) = out.failed().first() {
                        let note = format!("{} message(s) could not be deleted ({}: {}): they will be delivered again and their objects recognised as read", out.failed().len(), first.code(), first.message().unwrap_or(""));
                        crate::events::SqsMessages {
                            outcome: "delete_failed",
                            count: u64::try_from(out.failed().len()).unwrap_or(0),
                            note: Some(&note),
                        }
                        .emit(&self.metrics);
                    }
                }
                Err(e) => {
                    self.failed(
                        "DeleteMessageBatch",
                        &e,
                        Some("the messages will be delivered again and their objects recognised as read"),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_direct_through_sns_and_from_eventbridge_name_the_object() {
        let direct = r#"{"Records":[{"eventSource":"aws:s3","eventName":"ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"egresswatch/s/AWSLogs/1/vpcflowlogs/us-east-1/2026/11/29/08/a+b%3Dc.log.gz","eTag":"\"abc\"","size":10}}}]}"#;
        let want = ObjectRef {
            bucket: "b".into(),
            key: "egresswatch/s/AWSLogs/1/vpcflowlogs/us-east-1/2026/11/29/08/a b=c.log.gz".into(),
            etag: Some("abc".into()),
            version: None,
        };
        assert_eq!(
            parse_notice(direct),
            Ok(Notice::Objects(vec![want.clone()]))
        );
        let sns = serde_json::json!({"Type": "Notification", "Message": direct}).to_string();
        assert_eq!(parse_notice(&sns), Ok(Notice::Objects(vec![want])));
        let bridge = r#"{"detail-type":"Object Created","source":"aws.s3","detail":{"bucket":{"name":"b"},"object":{"key":"k k.parquet","etag":"e1"}}}"#;
        assert_eq!(
            parse_notice(bridge),
            Ok(Notice::Objects(vec![ObjectRef {
                bucket: "b".into(),
                key: "k k.parquet".into(),
                etag: Some("e1".into()),
                version: None
            }]))
        );
        assert_eq!(
            parse_notice(r#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#),
            Ok(Notice::Test)
        );
        assert!(parse_notice("hello").is_err());
        assert!(parse_notice(r#"{"foo": 1}"#).is_err());
    }

    #[test]
    fn an_object_names_time_is_read_from_its_key() {
        assert_eq!(
            key_time("p/AWSLogs/1/vpcflowlogs/us-east-1/2026/11/29/08/1_vpcflowlogs_us-east-1_fl-1_20261129T0805Z_ab12.log.gz"),
            Some(1_795_939_500)
        );
        assert_eq!(key_time("p/other.log.gz"), None);
        assert_eq!(key_time("x_20261399T0805Z_y"), None);
    }

    #[test]
    fn complete_objects_are_forgotten_after_two_weeks_and_the_rest_kept() {
        let mut cp = Checkpoint::default();
        let day = 86_400;
        for i in 0..300u64 {
            apply(
                &mut cp,
                format!("b/k{i}#e"),
                ObjectProgress {
                    lines: 1,
                    complete: i != 0,
                    at: i * day / 10,
                },
            );
        }
        // The 256th insert pruned what finished more than 15 days before it (about day 25):
        // the first ten days' complete objects; the incomplete one stays whatever its age.
        assert!(cp.s3_objects.contains_key("b/k0#e"));
        assert!(!cp.s3_objects.contains_key("b/k1#e"));
        assert!(cp.s3_objects.contains_key("b/k299#e"));
        assert!(cp.s3_objects.len() < 300);
    }

    fn gzip(text: &str) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    }

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "egresswatch-s3-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_text_object_is_read_in_its_header_format_and_resumes_past_what_was_read() {
        let path = dir().join("o.gz");
        let header = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status";
        let rec = |i: u32| {
            format!("2 1 eni-1 10.0.0.{i} 1.1.1.1 4000 443 6 1 100 1700000000 1700000060 ACCEPT OK")
        };
        let body = format!("{header}\n{}\n{}\n{}", rec(1), rec(2), rec(3));
        std::fs::write(&path, gzip(&body)).unwrap();
        let mut r = ObjectReader::open(&path).unwrap();
        assert_eq!(r.format().to_aws_string().split(' ').count(), 14);
        let c = r.next_chunk(1024).unwrap();
        assert!(c.ended);
        assert_eq!(c.first_line, 2);
        // The last line had no newline; it is given one.
        assert_eq!(
            String::from_utf8(c.text).unwrap(),
            format!("{}\n{}\n{}\n", rec(1), rec(2), rec(3))
        );
        // A restart after the first two records (lines 1-3) reads the third only.
        let mut r = ObjectReader::open(&path).unwrap();
        r.skip(3, 1024).unwrap();
        let c = r.next_chunk(1024).unwrap();
        assert_eq!(c.first_line, 4);
        assert_eq!(String::from_utf8(c.text).unwrap(), format!("{}\n", rec(3)));
    }

    #[test]
    fn what_is_not_a_flow_log_is_refused_by_reason() {
        let d = dir();
        let reason = |name: &str, bytes: &[u8]| {
            let p = d.join(name);
            std::fs::write(&p, bytes).unwrap();
            ObjectReader::open(&p).err().map(|e| e.reason)
        };
        assert_eq!(
            reason("a.gz", &gzip("hello world\n1 2 3\n")),
            Some("not_a_flow_log")
        );
        assert_eq!(
            reason("b.gz", &gzip("version account-id action\n2 1 ACCEPT\n")),
            Some("not_a_flow_log")
        );
        assert_eq!(reason("c.txt", b"plain text"), Some("unknown_format"));
        assert_eq!(
            reason("d.parquet", b"PAR1 and then nothing"),
            Some("corrupt_parquet")
        );
        // A gzip stream cut short fails when read, not before, and only after every complete
        // line before the cut has been handed out.
        let line = "2 10.0.0.1 1.1.1.1 1 443 6 100 1700000000\n";
        let whole = gzip(&format!(
            "version srcaddr dstaddr srcport dstport protocol bytes start\n{}",
            line.repeat(20_000)
        ));
        let p = d.join("e.gz");
        std::fs::write(&p, &whole[..whole.len() / 2]).unwrap();
        let mut r = ObjectReader::open(&p).unwrap();
        let mut reason = None;
        let mut complete = 0usize;
        for _ in 0..100 {
            match r.next_chunk(1024) {
                Ok(c) if c.ended => break,
                Ok(c) => {
                    let text = String::from_utf8(c.text).unwrap();
                    assert!(text.lines().all(|l| format!("{l}\n") == line), "{text}");
                    complete += text.lines().count();
                }
                Err(e) => {
                    assert!(
                        e.detail.contains("complete line(s) before it were read"),
                        "{e:?}"
                    );
                    reason = Some(e.reason);
                    break;
                }
            }
        }
        assert_eq!(reason, Some("corrupt_gzip"));
        // Everything the half of the stream held, less at most the line the cut split: the
        // decoder stops at the last whole deflate block it could check, a few kilobytes back.
        let decodable = {
            let mut out = Vec::new();
            let _ = MultiGzDecoder::new(&whole[..whole.len() / 2]).read_to_end(&mut out);
            out.split(|b| *b == b'\n').count().saturating_sub(2)
        };
        assert!(
            complete > 0 && complete <= decodable,
            "{complete} of {decodable}"
        );
        assert!(complete + 200 >= decodable, "{complete} of {decodable}");
    }
}
