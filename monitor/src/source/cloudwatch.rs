//! The CloudWatch Logs source: a flow log's log group, one stream per network interface, read
//! within the account's API quotas however many streams the group holds.
//!
//! GetLogEvents is limited to 25 calls/s per account and region (10/s in several regions, not
//! adjustable), and a used Studio domain leaves hundreds of streams behind, most of them dead.
//! So a stream is read only when there is reason to think it holds something new:
//!
//! - Each poll lists the group's streams most recently written first
//!   (`orderBy=LastEventTime`, descending) and stops paging once streams are older than the
//!   timestamps' documented lag (`lastEventTimestamp` and `lastIngestionTime` are eventually
//!   consistent, "typically less than an hour"); every `full-listing-seconds` it pages down to
//!   the oldest event the group's retention keeps. A poll's listing of several pages is made
//!   twice, as a stream written between two pages moves onto a page already fetched.
//! - A listed stream whose `lastIngestionTime`/`lastEventTimestamp` is past what was read from
//!   it is read now. A stream written to within the last two polls takes turns: it is read
//!   again a poll after its last read (or as long after as the budget takes to read all that
//!   wait), with or without a listing since. One whose listing shows nothing new is still read
//!   every `quiet-recheck-seconds` while it is within the lag, and every
//!   `dormant-recheck-seconds` once it is older, because the listing may not show its newest
//!   events yet.
//! - A stream whose newest event has aged out of the group's retention is forgotten: its
//!   position leaves the checkpoint. One that a listing should have shown and did not is
//!   read: the read finds it deleted (then it is forgotten) or finds what it missed.
//! - Reads wait in one queue, most urgent first ([`Urgency`]): the streams whose records can
//!   have waited longest. Catching up new streams and re-checks share what is left of a
//!   poll's budget (at least a quarter of it), so a backlog of thousands of streams never
//!   delays the active ones by more than that.
//!
//! Every call goes through the account's and region's [`Budget`]: calls per second per
//! operation, calls in flight, and a shared pause when AWS throttles. The SDK's own retries
//! are off for this client, so every call the budget allows is one call AWS counts.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use flowlog::Format;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::budget::{Budget, Operation, Rates};
use super::{Batch, Decoding, Lines, Next, Position, Source};
use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::daemon::{aws_call_failed, aws_error};
use crate::events::Event;
use crate::metrics::Metrics;

/// Most events GetLogEvents returns in one call, and most bytes: a page with fewer of both
/// reached the stream's end when it was read.
const PAGE_EVENTS: i32 = 10_000;
const PAGE_BYTES: usize = 1 << 20;
/// Bytes AWS counts for each event on top of its message.
const EVENT_OVERHEAD: usize = 26;
/// DescribeLogStreams's largest page.
const LIST_PAGE: i32 = 50;
/// Throttled listing pages retried before the poll gives up.
const LIST_RETRIES: u32 = 5;

/// What was read from a stream, kept in the checkpoint beside its forward token: the
/// listing's timestamps are compared with it to tell whether the stream holds anything new.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// Newest event timestamp (ms) read, or listed before a read that reached the end.
    pub event: i64,
    /// Newest ingestion time (ms) read, or listed before a read that reached the end.
    pub ingestion: i64,
    /// When the stream was last read (Unix ms): spaces the re-reads of quiet streams.
    pub checked: i64,
}

/// A stream's position as the checkpoint keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamPosition {
    /// The forward token to go on from; None: from the oldest retained event.
    pub token: Option<String>,
    /// The stream's creation time (ms) the token belongs to.
    pub created: i64,
    pub seen: Seen,
}

/// Positions of streams moved by one batch, and streams forgotten.
#[derive(Clone, Debug, Default)]
pub struct StreamChange {
    pub moved: Vec<(String, StreamPosition)>,
    pub forgotten: Vec<String>,
}

impl StreamChange {
    pub fn apply(self, cp: &mut Checkpoint) {
        for (name, p) in self.moved {
            match p.token {
                Some(t) => cp.streams.insert(name.clone(), t),
                None => cp.streams.remove(&name),
            };
            cp.stream_created.insert(name.clone(), p.created);
            cp.stream_seen.insert(name, p.seen);
        }
        for name in self.forgotten {
            cp.streams.remove(&name);
            cp.stream_created.remove(&name);
            cp.stream_seen.remove(&name);
        }
    }
}

/// Streams listed, and whether every stream of the group was; or why none could be.
type Listing = Result<(Vec<(String, Listed)>, bool), String>;

/// A stream as the last listing showed it.
#[derive(Clone, Copy, Debug, Default)]
struct Listed {
    created: i64,
    last_event: i64,
    last_ingestion: i64,
    /// When the listing's page that showed this was asked for (wall clock ms).
    at: i64,
}

#[derive(Debug)]
struct Stream {
    position: StreamPosition,
    /// What the listing that scheduled its current read showed.
    listed: Option<Listed>,
    in_flight: bool,
    /// Its place in the queue, when it waits there.
    queued: Option<(Urgency, u64)>,
    /// Found due while its read was in flight: queued again once that read is done.
    again: bool,
    /// Lively: in `rotation`, due for its next read one poll after its last.
    rotating: bool,
    /// When a listing since its last read last showed nothing unread in it (wall clock ms).
    clear_at: i64,
}

/// How soon a queued read is made: the rest of a read first, then the other reads, those of
/// streams whose records can have waited longest first. Reading by how long records can have
/// waited, rather than in the order streams were found or came due, keeps the longest wait
/// near the budget's cycle: a listing that finds a hundred streams at once reads first the one
/// written just after the last listing, not the one written just before this one. Re-checks of
/// streams nothing new is known to have come to go by the same measure (since their last
/// read); how many a listing queues is what bounds their share of the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Urgency {
    /// More pages of a read, or a read made again after a throttle or a refused token.
    Continue,
    /// The oldest its records can be, then, of streams alike in that, the time of the newest
    /// a listing showed (wall clock ms; none shown goes last).
    Waiting(i64, i64),
}

impl Stream {
    /// A stream at `position`, neither queued nor being read.
    fn new(position: StreamPosition) -> Stream {
        Stream {
            position,
            listed: None,
            in_flight: false,
            queued: None,
            again: false,
            rotating: false,
            clear_at: 0,
        }
    }

    /// The oldest its unread records can be: ingested after its last read, and after the
    /// last listing since that showed nothing unread in it. A bound, never a guess: keyed by
    /// its newest record instead, a stream holding two was read after streams holding one
    /// younger than its older record, which then waited two polls.
    fn waiting(&self) -> Urgency {
        let seen = &self.position.seen;
        let newest = self
            .listed
            .map(|l| l.last_ingestion)
            .filter(|&t| t > seen.ingestion)
            .unwrap_or(i64::MAX);
        Urgency::Waiting(seen.checked.max(self.clear_at), newest)
    }
}

/// Where a read starts.
#[derive(Clone, Debug)]
enum From {
    Token(String),
    /// The oldest event the group's retention keeps (ms), or the stream's head.
    Time(Option<i64>),
}

struct Page {
    events: Vec<(i64, String, i64)>,
    next: Option<String>,
    bytes: usize,
}

struct CallError {
    code: String,
    text: String,
}

impl CallError {
    fn throttled(&self) -> bool {
        crate::events::is_throttle(Some(&self.code))
    }
}

struct Fetched {
    stream: String,
    from: From,
    outcome: Result<Page, CallError>,
}

/// What one poll's round reads, for the log and the gauges.
#[derive(Default)]
struct Round {
    read: usize,
    failed: usize,
    deferred: usize,
}

/// A first start's reading of the retained history.
struct WarmUp {
    left: HashSet<String>,
    streams: usize,
    started: Instant,
}

pub struct CloudWatchSource {
    group: String,
    configured_format: Option<String>,
    poll_interval: Duration,
    settings: crate::config::CloudWatch,
    clients: crate::aws::Clients,
    /// The logs client without SDK retries: the budget decides every call.
    logs: aws_sdk_cloudwatchlogs::Client,
    metrics: Arc<Metrics>,
    budget: Arc<Budget>,
    format: Option<Format>,
    /// The group's retention (ms), from the last full listing; None: kept forever.
    retention: Option<i64>,
    streams: HashMap<String, Stream>,
    /// Reads to make, most urgent first; the number orders reads of equal urgency as queued.
    queue: std::collections::BTreeSet<(Urgency, u64, String)>,
    queued_so_far: u64,
    fetches: JoinSet<Fetched>,
    round: Option<Round>,
    /// The listing in progress, run beside the reads so that they never wait for it.
    listing: Option<tokio::task::JoinHandle<Listing>>,
    /// When the listing in progress started (wall clock ms, monotonic) and whether it is full.
    listing_started: (i64, Instant, bool),
    next_listing: Instant,
    last_full_listing: Option<Instant>,
    /// Streams to drop from the checkpoint, handed out as a batch of their own.
    forgotten: Vec<String>,
    /// Lively streams by when their next read is due (wall clock ms): a turn ([`Self::turn_ms`])
    /// after their last read, whether or not a listing has come since. With more to read than
    /// the budget covers in a poll, a stream then waits for the budget, not also for the next
    /// listing.
    rotation: std::collections::BTreeSet<(i64, String)>,
    /// At a first start, the streams whose retained history is still being read to its end.
    warm_up: Option<WarmUp>,
    /// The first full listing decided whether this start warms up.
    warm_checked: bool,
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(d: u64) -> i64 {
    i64::try_from(d.saturating_mul(1000)).unwrap_or(i64::MAX)
}

impl CloudWatchSource {
    pub fn new(
        config: &Config,
        clients: crate::aws::Clients,
        cp: &Checkpoint,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let settings = config.cloudwatch.clone();
        let budget = super::budget::shared(
            &clients,
            Rates {
                get_log_events: settings.get_log_events_per_second,
                describe: settings.describe_log_streams_per_second,
                concurrency: settings.concurrency,
            },
        );
        let logs = aws_sdk_cloudwatchlogs::Client::from_conf(
            clients
                .logs
                .config()
                .to_builder()
                .retry_config(aws_smithy_types::retry::RetryConfig::standard().with_max_attempts(1))
                .build(),
        );
        let streams = cp
            .stream_created
            .iter()
            .map(|(name, created)| {
                let position = StreamPosition {
                    token: cp.streams.get(name).cloned(),
                    created: *created,
                    seen: cp.stream_seen.get(name).copied().unwrap_or_default(),
                };
                (name.clone(), Stream::new(position))
            })
            .collect();
        // The log group the stack's flow log writes to, as its outputs record it: a stack
        // provisioned with another naming, or renamed, is still read from the right group.
        let group = match (&config.log_group, super::stack_outputs(config)?) {
            (Some(g), _) => g.clone(),
            (None, Some(out)) if !out.log_group.is_empty() => out.log_group,
            (None, _) => egresswatch_stack::log_group_name(&config.stack),
        };
        Ok(CloudWatchSource {
            group,
            configured_format: config.format.clone(),
            poll_interval: Duration::from_secs(config.poll_interval_seconds),
            settings,
            clients,
            logs,
            metrics,
            budget,
            format: None,
            retention: None,
            streams,
            queue: Default::default(),
            queued_so_far: 0,
            fetches: JoinSet::new(),
            round: None,
            listing: None,
            listing_started: (0, Instant::now(), false),
            next_listing: Instant::now(),
            last_full_listing: None,
            forgotten: Vec::new(),
            rotation: Default::default(),
            warm_up: None,
            warm_checked: false,
        })
    }

    /// Where a stream with no position is read from: the warm start's horizon
    /// (`history-seconds` back) or the oldest event the retention keeps, whichever is later.
    fn start_floor(&self, now: i64) -> Option<i64> {
        let retention = self.retention.map(|r| now.saturating_sub(r));
        let history = (self.settings.history_seconds > 0)
            .then(|| now.saturating_sub(ms(self.settings.history_seconds)));
        match (retention, history) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// What `monitor --check` asks of CloudWatch Logs and EC2: the flow log's format, the log
    /// group, and one read of its newest stream, each with the permission it needs. Reads
    /// only; each result is a line for the operator.
    pub async fn check(&self) -> Vec<(String, Result<String, String>)> {
        let mut out = Vec::new();
        out.push((
            "flow log format".to_string(),
            self.flow_log_format()
                .await
                .map(|f| format!("{} fields (DescribeFlowLogs or the config)", f.len())),
        ));
        let listed = self
            .logs
            .describe_log_streams()
            .log_group_name(&self.group)
            .order_by(aws_sdk_cloudwatchlogs::types::OrderBy::LastEventTime)
            .descending(true)
            .limit(1)
            .send()
            .await;
        let newest = match listed {
            Ok(page) => {
                let newest = page
                    .log_streams()
                    .first()
                    .and_then(|s| s.log_stream_name())
                    .map(String::from);
                out.push((
                    format!("log group {}", self.group),
                    Ok(match &newest {
                        Some(s) => format!("listed (logs:DescribeLogStreams); newest stream {s}"),
                        None => "listed (logs:DescribeLogStreams); no stream yet".into(),
                    }),
                ));
                newest
            }
            Err(e) => {
                out.push((
                    format!("log group {}", self.group),
                    Err(format!("DescribeLogStreams: {}", aws_error(&e))),
                ));
                None
            }
        };
        if let Some(stream) = newest {
            let read = self
                .logs
                .get_log_events()
                .log_group_name(&self.group)
                .log_stream_name(&stream)
                .limit(1)
                .send()
                .await;
            out.push((
                "read".to_string(),
                read.map(|r| {
                    format!(
                        "logs:GetLogEvents on {stream}: {} event(s)",
                        r.events().len()
                    )
                })
                .map_err(|e| format!("GetLogEvents on {stream}: {}", aws_error(&e))),
            ));
        }
        out
    }

    /// The flow log's own format: the config's, or DescribeFlowLogs `LogFormat`.
    async fn flow_log_format(&self) -> Result<Format, String> {
        if let Some(f) = &self.configured_format {
            return Format::parse(f).map_err(|e| format!("format: {e}"));
        }
        let m = &self.metrics;
        m.source_calls
            .with_label_values(&["DescribeFlowLogs"])
            .inc();
        let group = &self.group;
        let got = self
            .clients
            .ec2
            .describe_flow_logs()
            .filter(
                aws_sdk_ec2::types::Filter::builder()
                    .name("log-group-name")
                    .values(group)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| {
                let error = aws_call_failed(m, "DescribeFlowLogs", &e, group, None);
                format!("DescribeFlowLogs for log group {group}: {error}")
            })?;
        let f = got
            .flow_logs()
            .first()
            .and_then(|f| f.log_format())
            .ok_or_else(|| {
                format!("no flow log delivers to log group {group}; set `format` in the config")
            })?;
        Format::parse(f).map_err(|e| format!("flow log format `{f}`: {e}"))
    }

    /// The group's retention in ms (None: kept forever), or None when it cannot be told: then
    /// nothing is retired for age until it can.
    async fn retention(&self) -> Option<i64> {
        let permit = self.budget.acquire(Operation::Describe).await;
        let m = &self.metrics;
        m.source_wait_seconds
            .with_label_values(&["DescribeLogGroups"])
            .inc_by(permit.waited.as_secs_f64());
        m.source_calls
            .with_label_values(&["DescribeLogGroups"])
            .inc();
        let r = self
            .logs
            .describe_log_groups()
            .log_group_name_prefix(&self.group)
            .send()
            .await;
        match r {
            Ok(page) => {
                self.budget.succeeded(Operation::Describe);
                page.log_groups()
                    .iter()
                    .find(|g| g.log_group_name() == Some(self.group.as_str()))
                    .and_then(|g| g.retention_in_days())
                    .map(|days| i64::from(days).saturating_mul(86_400_000))
            }
            Err(e) => {
                if crate::events::is_throttle(e.code()) {
                    self.budget.throttled(Operation::Describe);
                }
                aws_call_failed(
                    m,
                    "DescribeLogGroups",
                    &e,
                    &self.group,
                    Some("no stream is retired for age until it works"),
                );
                None
            }
        }
    }

    /// Starts listing the streams that may hold something new.
    async fn start_listing(&mut self) -> Result<(), String> {
        if self.format.is_none() {
            self.format = Some(self.flow_log_format().await?);
        }
        let started = Instant::now();
        let now = unix_ms();
        let full = self.last_full_listing.is_none_or(|t| {
            started.duration_since(t) >= Duration::from_secs(self.settings.full_listing_seconds)
        });
        if full {
            self.retention = self.retention().await;
        }
        let floor = self.retention.map(|r| now.saturating_sub(r));
        let recent = now
            .saturating_sub(ms(self.settings.timestamp_lag_seconds))
            .saturating_sub(ms(self.poll_interval.as_secs()));
        let stop_below = if full {
            floor.unwrap_or(i64::MIN)
        } else {
            recent
        };
        self.listing = Some(tokio::spawn(describe_streams(
            self.logs.clone(),
            self.budget.clone(),
            self.metrics.clone(),
            self.group.clone(),
            stop_below,
            // A full listing pages down to the retention: made twice it would hold the next
            // listing back twice as long, and what it misses moved, so is recent, and is shown
            // by the next (a stream it should have shown is read, not retired).
            !full,
        )));
        self.listing_started = (now, started, full);
        self.next_listing = started + self.poll_interval;
        Ok(())
    }

    /// Queues the reads a finished listing calls for.
    fn listed(&mut self, listed: Vec<(String, Listed)>, complete: bool) {
        let (now, started, full) = self.listing_started;
        let floor = self.retention.map(|r| now.saturating_sub(r));
        // Streams older than this cannot be told to hold something new by their timestamps.
        let recent = now
            .saturating_sub(ms(self.settings.timestamp_lag_seconds))
            .saturating_sub(ms(self.poll_interval.as_secs()));
        // A stream written to within the last two polls is read every poll even when its
        // listing shows nothing new since the last read: its next records are likely on the
        // way, and reading it each poll at the same point keeps the time between its reads,
        // the longest a record waits, at one poll (or what the budget allows) rather than two.
        let lively = now.saturating_sub(ms(self.poll_interval.as_secs().saturating_mul(2)));
        let mut seen_names = HashSet::with_capacity(listed.len());
        let mut active = Vec::new();
        let mut fresh = Vec::new();
        let mut quiet = Vec::new();
        let mut dormant = Vec::new();
        let history_floor = self.start_floor(now);
        for (name, l) in listed {
            seen_names.insert(name.clone());
            if !self.streams.contains_key(&name)
                && history_floor.is_some_and(|f| l.last_event > 0 && l.last_event < f)
            {
                // Nothing in it is within the warm start's horizon: not worth a read.
                continue;
            }
            // A listing's timestamps lag: one that read newer events knows better.
            let read_since = |f: i64| {
                self.streams
                    .get(&name)
                    .is_some_and(|s| s.position.seen.event >= f)
            };
            if floor.is_some_and(|f| l.last_event > 0 && l.last_event < f && !read_since(f)) {
                // Every event it holds has aged out of the retention: nothing left to read.
                if self.streams.remove(&name).is_some() {
                    self.forgotten.push(name);
                }
                continue;
            }
            let s = self.streams.entry(name.clone()).or_insert_with(|| {
                Stream::new(StreamPosition {
                    token: None,
                    created: l.created,
                    seen: Seen::default(),
                })
            });
            if s.position.created != l.created {
                // Made again under the same name: the old token points into the old stream.
                crate::events::StreamsChanged {
                    change: crate::events::StreamChange::Recreated,
                    streams: 1,
                    stream: Some(&name),
                    error: None,
                }
                .emit(&self.metrics);
                s.position = StreamPosition {
                    token: None,
                    created: l.created,
                    seen: Seen::default(),
                };
            }
            s.listed = Some(l);
            if l.last_ingestion <= s.position.seen.ingestion
                && l.last_event <= s.position.seen.event
            {
                s.clear_at = s.clear_at.max(l.at);
            }
            let seen = s.position.seen;
            let within_lag = l.last_event >= recent || l.created >= recent;
            if s.position.token.is_none() {
                fresh.push((l.created, name));
            } else if s.rotating {
                // Read when its turn comes, a poll after its last read: reading it sooner
                // because something new came would take the budget from the streams that have
                // waited longer.
            } else if l.last_ingestion > seen.ingestion
                || l.last_event > seen.event
                || l.last_ingestion >= lively
            {
                active.push(name);
            } else if within_lag {
                if now.saturating_sub(seen.checked) >= ms(self.settings.quiet_recheck_seconds) {
                    quiet.push((seen.checked, name));
                }
            } else if now.saturating_sub(seen.checked) >= ms(self.settings.dormant_recheck_seconds)
            {
                dormant.push((seen.checked, name));
            }
        }
        let mut unlisted = Vec::new();
        let mut missed = Vec::new();
        for (name, s) in &mut self.streams {
            if seen_names.contains(name) {
                continue;
            }
            s.listed = None;
            if full || complete {
                if floor.is_none_or(|f| s.position.seen.event >= f) {
                    // It holds events the retention keeps, so the listing should have shown
                    // it: deleted, or written while the listing's pages were fetched and
                    // missed by both passes. A read tells which; retiring it here would read
                    // it again from its start once a listing shows it.
                    missed.push(name.clone());
                } else {
                    // Its newest event is older than the retention keeps.
                    unlisted.push(name.clone());
                }
            } else if now.saturating_sub(s.position.seen.checked)
                >= ms(self.settings.dormant_recheck_seconds)
            {
                dormant.push((s.position.seen.checked, name.clone()));
            }
        }
        if !unlisted.is_empty() {
            crate::events::StreamsChanged {
                change: crate::events::StreamChange::Retired,
                streams: unlisted.len() as u64,
                stream: None,
                error: None,
            }
            .emit(&self.metrics);
            for name in unlisted {
                self.streams.remove(&name);
                self.forgotten.push(name);
            }
        }
        for name in missed {
            self.enqueue_waiting(name);
        }
        if full {
            self.last_full_listing = Some(started);
        }
        if full && !self.warm_checked {
            self.warm_checked = true;
            // No position for any stream: a first start, which reads the retained history
            // before it is warm. A restart with positions is warm already.
            let first_start = self.streams.values().all(|s| s.position.token.is_none());
            if first_start && !self.streams.is_empty() {
                let left: HashSet<String> = self.streams.keys().cloned().collect();
                crate::events::WarmStart::Started {
                    from: &self.group,
                    count: left.len(),
                    since: u64::try_from(history_floor.unwrap_or(0) / 1_000).unwrap_or(0),
                }
                .emit(&self.metrics);
                self.warm_up = Some(WarmUp {
                    streams: left.len(),
                    left,
                    started: Instant::now(),
                });
            }
        }
        // Of the backlog, new streams first, then re-checks of the streams read longest ago.
        fresh.sort();
        quiet.sort();
        dormant.sort();
        let per_poll = (self.settings.get_log_events_per_second * self.poll_interval.as_secs_f64())
            .ceil()
            .max(1.0) as usize;
        let spare = per_poll
            .saturating_sub(active.len())
            .max(per_poll / 4)
            .max(1);
        // A new stream's records are as old as the stream can be.
        let backlog = fresh
            .into_iter()
            .map(|(created, n)| (Urgency::Waiting(created, created), n))
            .chain(
                quiet
                    .into_iter()
                    .chain(dormant)
                    .map(|(checked, n)| (Urgency::Waiting(checked, i64::MAX), n)),
            );
        let mut deferred = 0;
        for name in active {
            self.enqueue_waiting(name);
        }
        for (i, (urgency, name)) in backlog.enumerate() {
            if i < spare {
                self.enqueue(name, urgency);
            } else {
                deferred += 1;
            }
        }
        self.round.get_or_insert_with(Round::default).deferred = deferred;
    }

    /// Takes a finished listing: its reads are queued, or the reason the group cannot be
    /// listed is what the source says.
    fn listing_done(&mut self, done: Result<Listing, tokio::task::JoinError>) -> Option<Next> {
        match done {
            Ok(Ok((listed, complete))) => self.listed(listed, complete),
            Ok(Err(e)) => {
                self.next_listing = Instant::now() + self.poll_interval;
                self.stop_rotation();
                return Some(Next::Unavailable(e));
            }
            Err(e) => crate::events::ProcessEvent::emit(crate::events::Stopped {
                what: "the stream listing task (started again at the next poll)",
                error: &e.to_string(),
            }),
        }
        None
    }

    /// Queues a read of `name` as urgent as its records' wait ([`Stream::waiting`]).
    fn enqueue_waiting(&mut self, name: String) {
        if let Some(urgency) = self.streams.get(&name).map(Stream::waiting) {
            self.enqueue(name, urgency);
        }
    }

    /// Queues a read of `name`, or makes its queued read as urgent as `urgency` if it is
    /// less; one in flight is made again once it is done.
    fn enqueue(&mut self, name: String, urgency: Urgency) {
        let Some(s) = self.streams.get_mut(&name) else {
            return;
        };
        if s.in_flight {
            s.again = true;
            return;
        }
        match s.queued {
            Some((queued, _)) if queued <= urgency => return,
            Some((queued, order)) => {
                self.queue.remove(&(queued, order, name.clone()));
            }
            None => {}
        }
        self.queued_so_far = self.queued_so_far.saturating_add(1);
        s.queued = Some((urgency, self.queued_so_far));
        self.queue.insert((urgency, self.queued_so_far, name));
    }

    /// Queues the lively streams whose turn has come: read a poll ago or longer. One read
    /// more recently (the listing showed it something new) waits a poll from that read.
    fn rotate(&mut self) {
        let now = unix_ms();
        let poll = self.turn_ms();
        while self.rotation.first().is_some_and(|(due, _)| *due <= now) {
            let Some((_, name)) = self.rotation.pop_first() else {
                break;
            };
            let Some(s) = self.streams.get_mut(&name) else {
                continue;
            };
            let next = s.position.seen.checked.saturating_add(poll);
            if next > now {
                self.rotation.insert((next, name));
                continue;
            }
            s.rotating = false;
            self.enqueue_waiting(name);
        }
    }

    /// How long a lively stream waits between its reads: a poll, or, when the streams to
    /// read (lively, queued, being read) are more than the budget reads in a poll, as long as
    /// the budget takes to read them all. Turns then come evenly as the budget allows,
    /// instead of in bursts that queue behind each other.
    fn turn_ms(&self) -> i64 {
        let poll = ms(self.poll_interval.as_secs());
        let rate = self.settings.get_log_events_per_second.max(0.001);
        let to_read = self
            .rotation
            .len()
            .saturating_add(self.queue.len())
            .saturating_add(self.fetches.len())
            .saturating_add(1);
        let all = (to_read as f64 / rate * 1000.0) as i64;
        poll.max(all)
    }

    /// Stops reading streams on their turn until a listing works again: a group that cannot
    /// be listed may be gone, and one made again under its name must be seen by a listing
    /// (its streams' creation times) before an old token is used in it.
    fn stop_rotation(&mut self) {
        self.rotation.clear();
        for s in self.streams.values_mut() {
            s.rotating = false;
        }
    }

    /// When the next lively stream's turn comes.
    fn next_turn(&self) -> Option<tokio::time::Instant> {
        let (due, _) = self.rotation.first()?;
        let wait = u64::try_from(due.saturating_sub(unix_ms())).unwrap_or(0);
        Some(tokio::time::Instant::now() + Duration::from_millis(wait))
    }

    /// Starts reads from the queue while calls in flight stay within the concurrency.
    fn dispatch(&mut self) {
        self.rotate();
        while self.fetches.len() < self.settings.concurrency.max(1) {
            let Some((urgency, order, name)) = self.queue.pop_first() else {
                return;
            };
            let Some(s) = self.streams.get_mut(&name) else {
                continue;
            };
            // Left behind by a stream that was dropped, and since listed again.
            if s.queued != Some((urgency, order)) {
                continue;
            }
            s.queued = None;
            if s.in_flight {
                continue;
            }
            s.in_flight = true;
            let from = match &s.position.token {
                Some(t) => From::Token(t.clone()),
                None => From::Time(None),
            };
            let from = match from {
                From::Time(_) => From::Time(self.start_floor(unix_ms())),
                token => token,
            };
            let logs = self.logs.clone();
            let budget = self.budget.clone();
            let metrics = self.metrics.clone();
            let group = self.group.clone();
            self.fetches
                .spawn(fetch(logs, budget, metrics, group, name, from));
        }
    }

    /// Takes a finished read: a batch to hand out, or None when there is none (nothing new,
    /// a failure to retry later).
    fn finished(&mut self, f: Fetched) -> Option<Batch> {
        let now = unix_ms();
        let turn = self.turn_ms();
        let origin = format!("{}/{}", self.group, f.stream);
        let s = self.streams.get_mut(&f.stream)?;
        s.in_flight = false;
        // Listed again while this read was in flight: read it once more, unless this read
        // already reached what that listing showed (a read spent for nothing would come out
        // of the budget every other stream waits on).
        let again = std::mem::take(&mut s.again);
        let page = match f.outcome {
            Ok(page) => page,
            Err(e) => {
                if again {
                    self.enqueue_waiting(f.stream.clone());
                }
                let s = self.streams.get_mut(&f.stream)?;
                use crate::events::StreamChange;
                let token_refused =
                    matches!(f.from, From::Token(_)) && e.code == "InvalidParameterException";
                let (then, change) = if e.throttled() {
                    (
                        Some("throttled: every read pauses, then this one is made again"),
                        None,
                    )
                } else if token_refused {
                    (None, Some(StreamChange::TokenRefused))
                } else if e.code == "ResourceNotFoundException" {
                    (None, Some(StreamChange::Gone))
                } else {
                    (Some("retrying next poll"), None)
                };
                crate::events::AwsCallFailed {
                    operation: "GetLogEvents",
                    code: Some(&e.code),
                    error: &e.text,
                    about: &f.stream,
                    then,
                }
                .emit(&self.metrics);
                if let Some(change) = change {
                    crate::events::StreamsChanged {
                        change,
                        streams: 1,
                        stream: Some(&f.stream),
                        error: Some(&e.text),
                    }
                    .emit(&self.metrics);
                }
                match change {
                    _ if e.throttled() => {
                        self.budget.throttled(Operation::GetLogEvents);
                        self.enqueue(f.stream, Urgency::Continue);
                    }
                    // A token this stream does not know: read it from its start rather than
                    // never again.
                    Some(StreamChange::TokenRefused) => {
                        s.position.token = None;
                        s.position.seen = Seen::default();
                        self.enqueue(f.stream, Urgency::Continue);
                    }
                    // Gone: deleted while it was read.
                    Some(_) => {
                        self.streams.remove(&f.stream);
                        self.forgotten.push(f.stream);
                    }
                    None => {
                        if let Some(r) = &mut self.round {
                            r.failed += 1;
                        }
                    }
                }
                return None;
            }
        };
        self.budget.succeeded(Operation::GetLogEvents);
        if let Some(r) = &mut self.round {
            r.read += 1;
        }
        let from_token = match &f.from {
            From::Token(t) => Some(t.as_str()),
            From::Time(_) => None,
        };
        let moved = page.next.is_some() && page.next.as_deref() != from_token;
        let full_page =
            page.events.len() >= PAGE_EVENTS as usize || page.bytes >= PAGE_BYTES - PAGE_BYTES / 10;
        if page.next.is_some() {
            s.position.token = page.next.clone();
        }
        let mut seen = s.position.seen;
        for (ts, _, ingested) in &page.events {
            seen.event = seen.event.max(*ts);
            seen.ingestion = seen.ingestion.max(*ingested);
            self.metrics
                .cloudwatch_read_delay
                .observe(now.saturating_sub(*ingested).max(0) as f64 / 1000.0);
        }
        let more = full_page || (page.events.is_empty() && moved);
        if !more {
            if let Some(w) = &mut self.warm_up {
                w.left.remove(&f.stream);
                if w.left.is_empty() {
                    crate::events::WarmStart::Done {
                        count: w.streams,
                        seconds: w.started.elapsed().as_secs(),
                    }
                    .emit(&self.metrics);
                    self.warm_up = None;
                }
            }
        }
        let s = self.streams.get_mut(&f.stream)?;
        let mut requeue = None;
        if more {
            requeue = Some(Urgency::Continue);
        } else if let Some(l) = s.listed {
            // The newest listing may have come while this read was in flight: it showed
            // something this read began too early to see only if its times are past what
            // the read found.
            let behind = l.last_ingestion > seen.ingestion || l.last_event > seen.event;
            if again && behind {
                // What it holds came after this read began, so after the read before it.
                requeue = Some(Urgency::Waiting(s.position.seen.checked, l.last_ingestion));
            } else {
                // Read to its end after the listing: everything the listing showed is read.
                seen.event = seen.event.max(l.last_event);
                seen.ingestion = seen.ingestion.max(l.last_ingestion);
            }
        }
        seen.checked = now;
        s.position.seen = seen;
        let lively_since = now.saturating_sub(ms(self.poll_interval.as_secs().saturating_mul(2)));
        let lively = seen.ingestion >= lively_since
            || s.listed.is_some_and(|l| l.last_ingestion >= lively_since);
        if lively && !s.rotating {
            s.rotating = true;
            let due = now.saturating_add(turn);
            self.rotation.insert((due, f.stream.clone()));
        }
        // A read that found nothing still moves the re-check's time, so a restart does not
        // make it again at once.
        let position = s.position.clone();
        if let Some(urgency) = requeue {
            self.enqueue(f.stream.clone(), urgency);
        }
        Some(Batch {
            origin,
            lines: Lines::Events(page.events.into_iter().map(|(t, m, _)| (t, m)).collect()),
            format: Decoding::Pinned(self.format.clone().unwrap_or_else(Format::default_v2)),
            position: Position::Streams(StreamChange {
                moved: vec![(f.stream, position)],
                forgotten: Vec::new(),
            }),
            oversize_lines: 0,
            notes: Vec::new(),
        })
    }

    /// The round is over: gauges, the log, and whether the source reads at all.
    fn round_over(&mut self, round: Round) -> Next {
        if let Some(w) = &self.warm_up {
            crate::events::WarmStart::Progress { left: w.left.len() }.emit(&self.metrics);
        }
        let m = &self.metrics;
        m.cloudwatch_streams
            .with_label_values(&["tracked"])
            .set(self.streams.len() as i64);
        m.cloudwatch_streams
            .with_label_values(&["read_last_poll"])
            .set(round.read as i64);
        m.cloudwatch_streams
            .with_label_values(&["deferred"])
            .set(round.deferred as i64);
        tracing::debug!(
            read = round.read,
            failed = round.failed,
            deferred = round.deferred,
            tracked = self.streams.len(),
            "poll done"
        );
        if round.failed > 0 && round.read == 0 {
            return Next::Unavailable(format!(
                "GetLogEvents failed for every stream read from {}",
                self.group
            ));
        }
        Next::Reading
    }
}

/// Pages DescribeLogStreams, newest events first, until the streams are older than
/// `stop_below` (ms) or the group has no more; true when every stream was listed.
///
/// A listing of more than one page is made twice when `twice`. The order is by last event, so a stream
/// written while the pages are fetched moves ahead, onto a page already fetched, and the
/// pages after it shift back by one: one pass does not show it. Against moto a group written
/// at a steady rate had the same ten streams missed listing after listing, their records
/// waiting until the writes stopped. The second pass shows what moved during the first; one
/// stream moving during both is shown by the next listing.
async fn describe_streams(
    logs: aws_sdk_cloudwatchlogs::Client,
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
    group: String,
    stop_below: i64,
    twice: bool,
) -> Result<(Vec<(String, Listed)>, bool), String> {
    let (first, complete, pages) = list_pass(&logs, &budget, &metrics, &group, stop_below).await?;
    if pages < 2 || !twice {
        return Ok((first, complete));
    }
    // The first pass stands on its own: a second that fails only leaves what moved unseen.
    let Ok((second, complete_again, _)) =
        list_pass(&logs, &budget, &metrics, &group, stop_below).await
    else {
        return Ok((first, false));
    };
    let mut at: HashMap<String, usize> = HashMap::with_capacity(first.len());
    let mut out: Vec<(String, Listed)> = Vec::with_capacity(first.len());
    for (name, l) in first.into_iter().chain(second) {
        match at.get(&name) {
            Some(&i) => {
                let kept = &mut out[i].1;
                // The newer view; of two alike, the later (it vouches for longer).
                if (l.last_ingestion, l.last_event) >= (kept.last_ingestion, kept.last_event) {
                    *kept = l;
                }
            }
            None => {
                at.insert(name.clone(), out.len());
                out.push((name, l));
            }
        }
    }
    Ok((out, complete && complete_again))
}

/// One pass over the group's streams, newest first, down to `stop_below`: the streams, whether
/// every stream of the group was listed, and the pages it took.
async fn list_pass(
    logs: &aws_sdk_cloudwatchlogs::Client,
    budget: &Budget,
    metrics: &Metrics,
    group: &str,
    stop_below: i64,
) -> Result<(Vec<(String, Listed)>, bool, usize), String> {
    let m = metrics;
    let mut out = Vec::new();
    let mut pages = 0usize;
    let mut token: Option<String> = None;
    let mut throttles = 0u32;
    loop {
        let permit = budget.acquire(Operation::Describe).await;
        m.source_wait_seconds
            .with_label_values(&["DescribeLogStreams"])
            .inc_by(permit.waited.as_secs_f64());
        m.source_calls
            .with_label_values(&["DescribeLogStreams"])
            .inc();
        let listed_at = unix_ms();
        let r = logs
            .describe_log_streams()
            .log_group_name(group)
            .order_by(aws_sdk_cloudwatchlogs::types::OrderBy::LastEventTime)
            .descending(true)
            .limit(LIST_PAGE)
            .set_next_token(token.clone())
            .send()
            .await;
        drop(permit);
        let page = match r {
            Ok(page) => page,
            Err(e) => {
                if crate::events::is_throttle(e.code()) && throttles < LIST_RETRIES {
                    throttles += 1;
                    budget.throttled(Operation::Describe);
                    aws_call_failed(
                        m,
                        "DescribeLogStreams",
                        &e,
                        group,
                        Some("throttled: every listing call pauses, then this one is made again"),
                    );
                    continue;
                }
                let error = aws_call_failed(m, "DescribeLogStreams", &e, group, None);
                return Err(format!("DescribeLogStreams for log group {group}: {error}"));
            }
        };
        budget.succeeded(Operation::Describe);
        pages = pages.saturating_add(1);
        let mut oldest = i64::MAX;
        for s in page.log_streams() {
            let Some(name) = s.log_stream_name() else {
                continue;
            };
            let l = Listed {
                created: s.creation_time().unwrap_or(0),
                last_event: s.last_event_timestamp().unwrap_or(0),
                last_ingestion: s.last_ingestion_time().unwrap_or(0),
                at: listed_at,
            };
            // The order is by last event alone (a stream may be created long after the
            // events it was given, which may be old).
            oldest = oldest.min(l.last_event);
            out.push((name.to_string(), l));
        }
        token = page.next_token().map(String::from);
        if token.is_none() || page.log_streams().is_empty() {
            return Ok((out, true, pages));
        }
        if oldest < stop_below {
            return Ok((out, false, pages));
        }
    }
}

async fn fetch(
    logs: aws_sdk_cloudwatchlogs::Client,
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
    group: String,
    stream: String,
    from: From,
) -> Fetched {
    let permit = budget.acquire(Operation::GetLogEvents).await;
    metrics
        .source_wait_seconds
        .with_label_values(&["GetLogEvents"])
        .inc_by(permit.waited.as_secs_f64());
    metrics
        .source_calls
        .with_label_values(&["GetLogEvents"])
        .inc();
    let mut req = logs
        .get_log_events()
        .log_group_name(&group)
        .log_stream_name(&stream)
        .start_from_head(true)
        .limit(PAGE_EVENTS);
    req = match &from {
        From::Token(t) => req.next_token(t),
        From::Time(Some(t)) => req.start_time(*t),
        From::Time(None) => req,
    };
    let r = req.send().await;
    drop(permit);
    let outcome = match r {
        Ok(page) => {
            let mut bytes = 0usize;
            let events = page
                .events()
                .iter()
                .map(|e| {
                    let message = e.message().unwrap_or("").to_string();
                    bytes = bytes
                        .saturating_add(message.len())
                        .saturating_add(EVENT_OVERHEAD);
                    (
                        e.timestamp().unwrap_or(0),
                        message,
                        e.ingestion_time().unwrap_or(0),
                    )
                })
                .collect();
            Ok(Page {
                events,
                next: page.next_forward_token().map(String::from),
                bytes,
            })
        }
        // Counted and logged in `finished`, which knows what is done about it.
        Err(e) => Err(CallError {
            code: e.code().unwrap_or("").to_string(),
            text: aws_error(&e),
        }),
    };
    Fetched {
        stream,
        from,
        outcome,
    }
}

impl Source for CloudWatchSource {
    async fn next(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if !self.forgotten.is_empty() {
                let forgotten = std::mem::take(&mut self.forgotten);
                return Next::Batch(Box::new(Batch::positions_only(
                    self.group.clone(),
                    Position::Streams(StreamChange {
                        moved: Vec::new(),
                        forgotten,
                    }),
                )));
            }
            if let Some(done) = self.fetches.try_join_next() {
                if let Ok(f) = done {
                    if let Some(b) = self.finished(f) {
                        return Next::Batch(Box::new(b));
                    }
                }
                continue;
            }
            if self.listing.as_ref().is_some_and(|l| l.is_finished()) {
                if let Some(listing) = self.listing.take() {
                    if let Some(unavailable) = self.listing_done(listing.await) {
                        return unavailable;
                    }
                }
                continue;
            }
            if self.listing.is_none() && Instant::now() >= self.next_listing {
                if let Err(e) = self.start_listing().await {
                    self.next_listing = Instant::now() + self.poll_interval;
                    self.stop_rotation();
                    return Next::Unavailable(e);
                }
            }
            self.dispatch();
            if !self.fetches.is_empty() || self.listing.is_some() {
                let listing = tokio::time::Instant::from_std(self.next_listing);
                let wake = if self.listing.is_none() {
                    listing.min(deadline)
                } else {
                    deadline
                };
                let wake = self.next_turn().map_or(wake, |t| t.min(wake));
                tokio::select! {
                    done = self.fetches.join_next(), if !self.fetches.is_empty() => {
                        if let Some(Ok(f)) = done {
                            if let Some(b) = self.finished(f) {
                                return Next::Batch(Box::new(b));
                            }
                        }
                        continue;
                    }
                    done = async {
                        match &mut self.listing {
                            Some(l) => Some(l.await),
                            None => None,
                        }
                    }, if self.listing.as_ref().is_some_and(|l| !l.is_finished()) => {
                        self.listing = None;
                        if let Some(unavailable) = done.and_then(|d| self.listing_done(d)) {
                            return unavailable;
                        }
                        continue;
                    }
                    _ = tokio::time::sleep_until(wake) => {
                        if wake >= deadline {
                            return Next::Idle;
                        }
                        continue;
                    }
                }
            }
            if let Some(round) = self.round.take() {
                // A read that panicked leaves its stream marked; the next poll may try again.
                for s in self.streams.values_mut() {
                    s.in_flight = false;
                    s.queued = None;
                    s.again = false;
                }
                self.queue.clear();
                return self.round_over(round);
            }
            let listing = tokio::time::Instant::from_std(self.next_listing);
            let wake = self.next_turn().map_or(listing, |t| t.min(listing));
            if wake >= deadline {
                tokio::time::sleep_until(deadline).await;
                return Next::Idle;
            }
            tokio::time::sleep_until(wake).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(checked: i64, ingestion: i64) -> Stream {
        Stream::new(StreamPosition {
            token: Some("t".into()),
            created: 0,
            seen: Seen {
                event: ingestion,
                ingestion,
                checked,
            },
        })
    }

    fn listed(at: i64, last_ingestion: i64) -> Listed {
        Listed {
            created: 0,
            last_event: last_ingestion,
            last_ingestion,
            at,
        }
    }

    #[test]
    fn reads_go_by_how_long_their_records_can_have_waited() {
        // Read at 1,000: what it holds came after that.
        let read = stream(1_000, 900);
        assert_eq!(read.waiting(), Urgency::Waiting(1_000, i64::MAX));
        // A listing at 5,000 showed nothing new: what it holds came after 5,000 (the source
        // records this as `clear_at` when the listing comes).
        let mut cleared = stream(1_000, 900);
        cleared.listed = Some(listed(5_000, 900));
        cleared.clear_at = 5_000;
        assert_eq!(cleared.waiting(), Urgency::Waiting(5_000, i64::MAX));
        // A listing showed a record ingested at 8,000: of two streams that can have waited
        // as long, the one whose newest record is older goes first.
        let mut shown = stream(1_000, 900);
        shown.listed = Some(listed(9_000, 8_000));
        let mut shown_older = stream(1_000, 900);
        shown_older.listed = Some(listed(9_000, 7_000));
        assert!(shown_older.waiting() < shown.waiting());
        // Its newest record does not make it less urgent than its last read says: it may
        // hold an older one too.
        assert!(shown.waiting() < cleared.waiting());
        // The rest of a read before any stream.
        assert!(Urgency::Continue < read.waiting());
    }

    #[tokio::test]
    async fn the_log_group_is_the_configs_else_the_outputs_else_the_stacks_name() {
        let dir = std::env::temp_dir().join(format!("ew-cw-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let outputs = dir.join("outputs.json");
        let out = egresswatch_stack::Outputs {
            stack: "research".into(),
            log_group: "/org/archive/research-flows".into(),
            ..egresswatch_stack::Outputs::default()
        };
        std::fs::write(&outputs, serde_json::to_string(&out).unwrap()).unwrap();
        // Nothing listens there: building the source makes no call.
        let clients = crate::aws::Clients::from_env(
            Some("us-east-1".into()),
            Some("http://127.0.0.1:9".into()),
        )
        .await
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let cp = Checkpoint::default();
        let group = |config: &Config| {
            CloudWatchSource::new(config, clients.clone(), &cp, metrics.clone())
                .unwrap()
                .group
        };
        let mut config = Config {
            stack: "research".into(),
            ..Config::default()
        };
        assert_eq!(group(&config), "/egresswatch/research/flow-logs");
        config.outputs_file = Some(outputs.clone());
        assert_eq!(group(&config), "/org/archive/research-flows");
        config.log_group = Some("/chosen".into());
        assert_eq!(group(&config), "/chosen");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
