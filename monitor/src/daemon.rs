//! The daemon: serves metrics and health, reads the configured source, pushes every batch
//! through the pipeline, makes each batch's alerts durable in the outbox, and checkpoints the
//! read positions together with the rules' state and the outbox's position. Readiness follows
//! whether the source reads. On SIGTERM/SIGINT it stops reading, finishes the batch in
//! flight, checkpoints, gives the sinks their grace and returns.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use flowlog::{Decoder, Format, Line};
use tokio::sync::watch;

use crate::alert::Router;
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::config::{parse_shard, Config};
use crate::metrics::Metrics;
use crate::outbox::AlertLog;
use crate::pipeline::Pipeline;
use crate::rules;
use crate::source::file::{FileSource, FileSourceOptions};
use crate::topology::Topology;

/// Unix seconds of the main loop's last sign of progress; the systemd watchdog is fed only
/// while it moves, so a wedged source gets the daemon restarted.
static HEARTBEAT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn beat() {
    HEARTBEAT.store(unix_now(), Ordering::Relaxed);
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Marks the daemon ready: /readyz answers 200 and, under systemd (`Type=notify`), READY=1
/// is sent once.
fn mark_ready(ready: &AtomicBool) {
    beat();
    if !ready.swap(true, Ordering::SeqCst) {
        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    }
}

/// Under a systemd watchdog (`WatchdogSec=`), pings at half the interval while the main loop
/// shows progress within the interval.
fn start_watchdog(mut shutdown: watch::Receiver<bool>) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) || usec == 0 {
        return;
    }
    let interval = Duration::from_micros(usec);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(interval / 2) => {}
            }
            let idle = unix_now().saturating_sub(HEARTBEAT.load(Ordering::Relaxed));
            if Duration::from_secs(idle) < interval {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            } else {
                tracing::error!(
                    idle_seconds = idle,
                    "main loop made no progress; withholding the watchdog ping"
                );
            }
        }
    });
}

/// What a finished run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub records: u64,
    pub batches: u64,
}

/// The shard a log stream belongs to: rendezvous (highest random weight) hashing, so adding a
/// shard moves only the streams it wins.
pub fn shard_of(stream: &str, count: u32) -> u32 {
    (0..count)
        .max_by_key(|i| fnv1a(stream.as_bytes(), *i))
        .unwrap_or(0)
}

fn fnv1a(data: &[u8], seed: u32) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for &b in data.iter().chain(seed.to_le_bytes().iter()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // A final mix so that seeds differing in one bit spread over the whole range.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

// The metrics and health server lives in its own module; callers keep this path.
pub use crate::http::serve;

fn topology(config: &Config) -> Result<Topology, String> {
    if let Some(t) = &config.topology {
        return Ok(t.clone());
    }
    if let Some(p) = &config.outputs_file {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("outputs-file {}: {e}", p.display()))?;
        return Topology::from_outputs_json(&text)
            .map_err(|e| format!("outputs-file {}: {e}", p.display()));
    }
    Err("no network topology: set outputs-file (from `egresswatch provision outputs`) or [topology] in the config".into())
}

/// Whether the source is reading: drives /readyz, `egresswatch_source_up` and the log. The
/// reason is logged when it changes, not at every failed poll.
struct Health {
    ready: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    reason: Option<String>,
}

impl Health {
    fn reading(&mut self) {
        if self.reason.take().is_some() {
            tracing::info!("source reading again");
        }
        self.metrics.source_up.set(1);
        self.metrics
            .source_last_success_timestamp
            .set(unix_now() as i64);
        mark_ready(&self.ready);
    }

    fn failing(&mut self, reason: String) {
        if self.reason.as_deref() != Some(reason.as_str()) {
            tracing::error!(reason = %reason, "source cannot read; not ready until it can");
        }
        self.reason = Some(reason);
        self.metrics.source_up.set(0);
        self.ready.store(false, Ordering::SeqCst);
        // Still alive: the watchdog is for a wedged loop, not an unreachable service.
        beat();
    }
}

/// Runs the daemon until the source ends (files, stdin) or shutdown is signalled.
pub async fn run(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    clients: Option<egresswatch_provision::Clients>,
) -> Result<RunSummary, String> {
    let topo = topology(&config)?;
    let dets = rules::build(&config.rules)?;
    let shard = config.shard.as_deref().map(parse_shard).transpose()?;
    let store_name = match (config.source.as_str(), shard) {
        ("cloudwatch", Some((i, n))) => format!("cloudwatch-{i}-of-{n}"),
        ("cloudwatch", None) => "cloudwatch".into(),
        _ => "file".into(),
    };
    // Read positions and undelivered alerts live here for every source: without it a restart
    // would read a file twice or lose the alerts in flight.
    let store = CheckpointStore::new(&config.state_dir, &store_name)?;
    let cp = store.load()?;
    let mut router = Router::new(&config.alerts, metrics.clone());
    let alerts = AlertLog::open(
        &config.state_dir,
        &store_name,
        &config.alerts,
        crate::sink::from_config(&config.alerts)?,
        &mut router,
        cp.outbox_seq,
        metrics.clone(),
    )?;
    let ready = Arc::new(AtomicBool::new(false));
    metrics.source_up.set(0);
    beat();
    start_watchdog(shutdown.clone());
    // The server stops with the run, whether a signal or the end of the input ends it.
    let (server_stop, server_stopped) = watch::channel(false);
    let mut outer = shutdown.clone();
    let forward = server_stop.clone();
    tokio::spawn(async move {
        let _ = outer.wait_for(|s| *s).await;
        let _ = forward.send(true);
    });
    serve(
        config.listen,
        metrics.clone(),
        ready.clone(),
        server_stopped,
    )
    .await?;
    let vpc_id = topo.vpc_id.clone();
    let mut pipeline = Pipeline::new(topo, dets, router, metrics.clone());
    pipeline.suppressions = crate::suppress::Suppressions::new(&config.suppress)?;
    pipeline.explain = config.explain;
    pipeline.inventory = Arc::new(std::sync::RwLock::new(
        crate::inventory::Inventory::from_config(&config.workloads),
    ));
    if let (Some(c), true) = (&clients, config.inventory_refresh_seconds > 0) {
        // Suppressions that name a tag or an interface need the inventory before the first
        // record is judged (a bounded wait); otherwise it fills in alongside the reading.
        let waited = pipeline.suppressions.needs_inventory();
        if waited {
            let first =
                crate::inventory::refresh(&c.ec2, vpc_id.as_deref(), &pipeline.inventory, &metrics);
            if tokio::time::timeout(Duration::from_secs(20), first)
                .await
                .is_err()
            {
                tracing::warn!("the workload inventory took over 20 s; reading starts without it");
            }
        }
        tokio::spawn(crate::inventory::keep_fresh(
            c.ec2.clone(),
            vpc_id,
            Duration::from_secs(config.inventory_refresh_seconds),
            !waited,
            pipeline.inventory.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    restore_rules(&store, cp.generation, &mut pipeline)?;
    let mut s = Stages {
        p: pipeline,
        alerts,
        store,
        cp,
        health: Health {
            ready,
            metrics: metrics.clone(),
            reason: None,
        },
        shutdown,
        progress: Progress {
            dirty: false,
            last: std::time::Instant::now(),
            every: Duration::from_secs(config.checkpoint_interval_seconds),
            cost: Duration::ZERO,
        },
    };
    let result = if config.source == "cloudwatch" {
        match clients {
            Some(clients) => {
                let mut reader = CloudWatch {
                    config: &config,
                    clients: &clients,
                    shard,
                };
                reader.run(&mut s).await
            }
            None => Err("the cloudwatch source needs AWS clients".to_string()),
        }
    } else {
        read_file(&config, &mut s).await
    };
    // Whatever ended the run, errors included: a last checkpoint (unless alerts could not be
    // written, when the positions must stay behind them), and the sinks get their grace.
    // Open folds are closed only at the end of a finite input; a daemon that stops keeps
    // them open, to go on counting at the next start.
    s.p.publish_top_k();
    let last = checkpoint(
        &mut s.p,
        &s.alerts,
        &s.store,
        &mut s.cp,
        &mut s.health,
        &s.shutdown,
        &mut s.progress,
    )
    .await;
    if let Err(e) = &last {
        tracing::error!(error = %e, "no checkpoint at the end of the run");
    }
    s.alerts
        .shutdown(Duration::from_secs(config.alerts.shutdown_grace_seconds))
        .await;
    let _ = server_stop.send(true);
    result
}

/// What every source drives and commits to: the stages a batch passes, the alert log, the
/// read positions and the source's health.
struct Stages {
    p: Pipeline,
    alerts: AlertLog,
    store: CheckpointStore,
    cp: Checkpoint,
    health: Health,
    shutdown: watch::Receiver<bool>,
    progress: Progress,
}

/// When the next checkpoint is due.
struct Progress {
    /// Records were read since the last checkpoint.
    dirty: bool,
    last: std::time::Instant,
    every: Duration,
    /// What the last checkpoint took; the interval stretches so that checkpoints never cost
    /// more than a hundredth of the time.
    cost: Duration,
}

/// Retries a write to the state dir (a full disk) with backoff until it works, reporting the
/// source unready meanwhile; at shutdown it gives up, and what was not committed is read
/// again at the next start.
async fn retry(
    health: &mut Health,
    shutdown: &watch::Receiver<bool>,
    what: &str,
    mut op: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Err(e) = op() else {
            return Ok(());
        };
        health.failing(format!("cannot {what}: {e}"));
        if *shutdown.borrow() {
            return Err(format!(
                "stopping: cannot {what} ({e}); what was read since the last checkpoint is read again at the next start"
            ));
        }
        let mut stop = shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// A batch is through every stage: its alerts are made durable and handed to the sinks, and
/// when one is due, a checkpoint moves the positions past it.
async fn commit(
    p: &mut Pipeline,
    alerts: &mut AlertLog,
    store: &CheckpointStore,
    cp: &mut Checkpoint,
    health: &mut Health,
    shutdown: &watch::Receiver<bool>,
    progress: &mut Progress,
) -> Result<(), String> {
    p.router.advance(p.newest_event);
    let router = &mut p.router;
    retry(health, shutdown, "write alerts to the outbox", || {
        alerts.write(router)
    })
    .await?;
    progress.dirty = true;
    if progress.last.elapsed() >= progress.every.max(progress.cost.saturating_mul(100)) {
        checkpoint(p, alerts, store, cp, health, shutdown, progress).await?;
    }
    Ok(())
}

/// Commits the read positions together with what the rules have learnt from the records
/// before them and the outbox's position: a restart resumes all three from the same point,
/// so the rules see every record once and the alerts decided since are recognised when made
/// again. The snapshot goes to the slot the committed checkpoint does not name, then the
/// checkpoint names it: a crash in between leaves the previous pair whole.
async fn checkpoint(
    // Mutable only so that the future stays Send: the rules are Send but not Sync.
    p: &mut Pipeline,
    alerts: &AlertLog,
    store: &CheckpointStore,
    cp: &mut Checkpoint,
    health: &mut Health,
    shutdown: &watch::Receiver<bool>,
    progress: &mut Progress,
) -> Result<(), String> {
    if !progress.dirty {
        return Ok(());
    }
    if alerts.has_unwritten() {
        return Err(
            "alerts of a batch are not in the outbox yet; the positions stay before it".into(),
        );
    }
    let started = std::time::Instant::now();
    let generation = cp.generation.saturating_add(1);
    let snapshot = p.save_state();
    retry(health, shutdown, "save the rules' state", || {
        store.save_rules(generation, &snapshot)
    })
    .await?;
    cp.generation = generation;
    cp.outbox_seq = alerts.next_seq();
    retry(health, shutdown, "save the checkpoint", || store.save(cp)).await?;
    let took = started.elapsed();
    p.metrics.rules_snapshot_seconds.observe(took.as_secs_f64());
    p.metrics.checkpoint_timestamp.set(unix_now() as i64);
    tracing::debug!(file = %store.rules_path(generation).display(), bytes = snapshot.len(), millis = took.as_millis() as u64, generation, "checkpoint committed with the rules' state");
    *progress = Progress {
        dirty: false,
        last: std::time::Instant::now(),
        every: progress.every,
        cost: took,
    };
    Ok(())
}

fn restore_rules(store: &CheckpointStore, generation: u64, p: &mut Pipeline) -> Result<(), String> {
    let path = store.rules_path(generation).display().to_string();
    let Some(bytes) = store.load_rules(generation)? else {
        if generation > 0 {
            tracing::warn!(file = %path, generation, "no rules snapshot of the checkpoint's generation; the rules learn afresh");
        }
        return Ok(());
    };
    let started = std::time::Instant::now();
    let errors = p.load_state(&bytes);
    for e in &errors {
        tracing::warn!(file = %path, error = %e, "rule state not restored; that rule learns afresh");
    }
    tracing::info!(file = %path, bytes = bytes.len(), millis = started.elapsed().as_millis() as u64, "restored what the rules had learnt");
    Ok(())
}

/// Opens a flow-log file, decompressing `.gz` (every member, as concatenated S3 files have
/// several), or stdin when there is no path.
pub fn open_input(path: Option<&std::path::Path>) -> std::io::Result<Box<dyn Read + Send>> {
    let Some(path) = path else {
        return Ok(Box::new(std::io::stdin()));
    };
    let file: Box<dyn Read + Send> = Box::new(std::fs::File::open(path)?);
    Ok(if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        file
    })
}

/// The first line of a file, when it is a header naming the fields: a run that resumes past
/// it still has to read the records in its format.
fn header_of(path: &std::path::Path, decoder: &mut Decoder) {
    use std::io::BufRead;
    let Ok(file) = open_input(Some(path)) else {
        return;
    };
    let mut first = Vec::new();
    let mut reader = std::io::BufReader::new(file.take(64 * 1024));
    if reader.read_until(b'\n', &mut first).is_ok() {
        if let Ok(Line::Header) = decoder.decode(&first) {
            tracing::debug!(file = %path.display(), "format taken from the file's header line");
        }
    }
}

/// Reads a file (plain or .gz) or stdin on a reader thread; with `follow`, keeps reading what
/// is appended, across truncation and rotation, until shutdown. The position after each chunk
/// goes into the next checkpoint, so a restart resumes where the last one ended.
async fn read_file(config: &Config, s: &mut Stages) -> Result<RunSummary, String> {
    let Stages {
        p,
        alerts,
        store,
        cp,
        health,
        shutdown,
        progress,
    } = s;
    let format = match &config.format {
        Some(f) => Format::parse(f).map_err(|e| e.to_string())?,
        // Without a header line, a file from this stack is in the provisioner's format.
        None => {
            Format::parse(&egresswatch_provision::flow_log_format()).map_err(|e| e.to_string())?
        }
    };
    let path = config.source.strip_prefix("file:").map(PathBuf::from);
    let key = path
        .as_ref()
        .map_or("stdin".to_string(), |p| p.display().to_string());
    let resume = cp.files.get(&key).cloned();
    let mut decoder = Decoder::following_headers(format);
    if let (Some(path), Some(pos)) = (&path, &resume) {
        if pos.offset > 0 {
            header_of(path, &mut decoder);
        }
    }
    let opts = FileSourceOptions {
        follow: config.follow,
        max_line_bytes: config.max_line_bytes,
        ..FileSourceOptions::default()
    };
    let mut source = FileSource::start(path, resume, opts).map_err(|e| e.to_string())?;
    let mut reloader = Reloader::new(config);
    let too_long = p
        .metrics
        .bad_lines
        .with_label_values(&[crate::metrics::LINE_TOO_LONG]);
    let mut summary = RunSummary::default();
    let mut stop = shutdown.clone();
    health.reading();
    loop {
        let next = tokio::select! {
            next = source.next() => Some(next),
            _ = stop.wait_for(|s| *s) => break,
            _ = tokio::time::sleep(progress.every) => None,
        };
        let Some(next) = next else {
            // A followed file can be quiet for hours: waiting on it is progress too, and what
            // was read before the quiet is committed.
            beat();
            reloader.reload_if_changed(config, p);
            checkpoint(p, alerts, store, cp, health, shutdown, progress).await?;
            continue;
        };
        let chunk = match next {
            None => {
                // End of a finite input: its floods are complete.
                p.finish();
                commit(p, alerts, store, cp, health, shutdown, progress).await?;
                break;
            }
            Some(Err(e)) => {
                // Complete lines before a broken gzip member were handed over already.
                p.finish();
                commit(p, alerts, store, cp, health, shutdown, progress).await?;
                return Err(e.to_string());
            }
            Some(Ok(chunk)) => chunk,
        };
        for note in &chunk.notes {
            tracing::warn!(file = %chunk.name, "{note}");
        }
        if chunk.oversize_lines > 0 {
            too_long.inc_by(chunk.oversize_lines);
            tracing::warn!(file = %chunk.name, lines = chunk.oversize_lines, max_line_bytes = config.max_line_bytes, "lines longer than max-line-bytes skipped");
        }
        let mut n = chunk.first_line;
        let mut lines = 0u64;
        let mut at = 0;
        // Every line of a chunk ends in a newline; memchr finds them a word at a time.
        for end in memchr::memchr_iter(b'\n', &chunk.text) {
            p.line(&mut decoder, &chunk.text[at..=end], &Origin(&chunk.name, n));
            n = n.saturating_add(1);
            lines += 1;
            at = end + 1;
        }
        summary.records = summary.records.saturating_add(lines);
        summary.batches += 1;
        cp.records_committed = cp.records_committed.saturating_add(lines);
        if let Some(pos) = chunk.position {
            cp.files.insert(key.clone(), pos);
        }
        beat();
        commit(p, alerts, store, cp, health, shutdown, progress).await?;
        health.reading();
        reloader.reload_if_changed(config, p);
    }
    Ok(summary)
}

async fn flow_log_format(
    config: &Config,
    clients: &egresswatch_provision::Clients,
    group: &str,
) -> Result<Format, String> {
    if let Some(f) = &config.format {
        return Format::parse(f).map_err(|e| format!("format: {e}"));
    }
    let got = clients
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
        .map_err(|e| format!("DescribeFlowLogs for log group {group}: {}", aws_error(&e)))?;
    let f = got
        .flow_logs()
        .first()
        .and_then(|f| f.log_format())
        .ok_or_else(|| {
            format!("no flow log delivers to log group {group}; set `format` in the config")
        })?;
    Format::parse(f).map_err(|e| format!("flow log format `{f}`: {e}"))
}

/// An SDK error with its cause chain (a missing credential says so), not just "dispatch
/// failure".
pub(crate) fn aws_error<E: std::error::Error + ProvideErrorMetadata>(e: &E) -> String {
    match e.message() {
        Some(m) => format!("{}: {m}", e.code().unwrap_or("error")),
        None => aws_smithy_types::error::display::DisplayErrorContext(e).to_string(),
    }
}

/// The CloudWatch Logs source: every stream of the group (or of this shard), each read from
/// its saved forward token.
struct CloudWatch<'a> {
    config: &'a Config,
    clients: &'a egresswatch_provision::Clients,
    shard: Option<(u32, u32)>,
}

/// What one page of a stream did.
enum Page {
    /// Records were read; more may follow.
    More,
    /// The stream has nothing new.
    Done,
    /// The call failed; try the stream again next poll.
    Failed,
}

impl CloudWatch<'_> {
    fn group(&self) -> String {
        self.config
            .log_group
            .clone()
            .unwrap_or_else(|| format!("/egresswatch/{}/flow-logs", self.config.stack))
    }

    /// Every stream of the group with its creation time, or why they cannot be listed.
    async fn streams(&self, m: &Metrics, group: &str) -> Result<Vec<(String, i64)>, String> {
        let mut streams = Vec::new();
        let mut token: Option<String> = None;
        loop {
            m.source_calls
                .with_label_values(&["DescribeLogStreams"])
                .inc();
            let page = self
                .clients
                .logs
                .describe_log_streams()
                .log_group_name(group)
                .set_next_token(token.clone())
                .send()
                .await
                .map_err(|e| {
                    count_error(m, "DescribeLogStreams", e.code());
                    format!(
                        "DescribeLogStreams for log group {group}: {}",
                        aws_error(&e)
                    )
                })?;
            streams.extend(page.log_streams().iter().filter_map(|s| {
                s.log_stream_name()
                    .map(|n| (n.to_string(), s.creation_time().unwrap_or(0)))
            }));
            token = page.next_token().map(String::from);
            if token.is_none() {
                break;
            }
        }
        if let Some((i, n)) = self.shard {
            streams.retain(|(s, _)| shard_of(s, n) == i);
        }
        Ok(streams)
    }

    async fn run(&mut self, s: &mut Stages) -> Result<RunSummary, String> {
        let group = self.group();
        let mut format: Option<Format> = None;
        let mut reloader = Reloader::new(self.config);
        let mut summary = RunSummary::default();
        let mut shutdown = s.shutdown.clone();
        loop {
            if *shutdown.borrow() {
                return Ok(summary);
            }
            if let Err(e) = self.poll(s, &group, &mut format, &mut summary).await {
                s.health.failing(e);
            }
            reloader.reload_if_changed(self.config, &mut s.p);
            // A quiet group still gets its last records committed.
            checkpoint(
                &mut s.p,
                &s.alerts,
                &s.store,
                &mut s.cp,
                &mut s.health,
                &s.shutdown,
                &mut s.progress,
            )
            .await?;
            // Asleep between polls is not wedged: the watchdog is fed through long intervals.
            let until =
                std::time::Instant::now() + Duration::from_secs(self.config.poll_interval_seconds);
            loop {
                beat();
                let left = until.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = tokio::time::sleep(left.min(Duration::from_secs(30))) => {}
                }
            }
        }
    }

    /// One pass over every stream. Err: the source cannot read at all (the reason).
    async fn poll(
        &mut self,
        s: &mut Stages,
        group: &str,
        format: &mut Option<Format>,
        summary: &mut RunSummary,
    ) -> Result<(), String> {
        let m = s.p.metrics.clone();
        if format.is_none() {
            if self.config.format.is_none() {
                m.source_calls
                    .with_label_values(&["DescribeFlowLogs"])
                    .inc();
            }
            match flow_log_format(self.config, self.clients, group).await {
                Ok(f) => *format = Some(f),
                Err(e) => {
                    m.source_errors
                        .with_label_values(&["DescribeFlowLogs"])
                        .inc();
                    return Err(e);
                }
            }
        }
        let format = format.clone().ok_or("no flow-log format")?;
        let streams = self.streams(&m, group).await?;
        s.health.reading();
        // Streams deleted from the group leave the checkpoint.
        let listed: std::collections::HashSet<&str> =
            streams.iter().map(|(name, _)| name.as_str()).collect();
        let cp = &mut s.cp;
        let before = cp.streams.len();
        cp.streams.retain(|name, _| listed.contains(name.as_str()));
        cp.stream_created
            .retain(|name, _| listed.contains(name.as_str()));
        if cp.streams.len() < before {
            s.progress.dirty = true;
            tracing::info!(
                streams = before - cp.streams.len(),
                "log streams gone from the group; dropped from the checkpoint"
            );
        }
        let mut failed = 0usize;
        for (stream, created) in &streams {
            // A stream made again under the same name: its old token points into the old one.
            let cp = &mut s.cp;
            if cp
                .stream_created
                .get(stream)
                .is_some_and(|c| *c != *created)
            {
                tracing::warn!(stream = %stream, "log stream was re-created; reading it from its start");
                cp.streams.remove(stream);
            }
            cp.stream_created.insert(stream.clone(), *created);
            loop {
                if *s.shutdown.borrow() {
                    return Ok(());
                }
                match self.page(s, group, stream, &format, summary).await? {
                    Page::More => continue,
                    Page::Done => break,
                    Page::Failed => {
                        failed += 1;
                        break;
                    }
                }
            }
        }
        if failed > 0 && failed == streams.len() {
            return Err(format!("GetLogEvents failed for every stream of {group}"));
        }
        Ok(())
    }

    async fn page(
        &mut self,
        s: &mut Stages,
        group: &str,
        stream: &str,
        format: &Format,
        summary: &mut RunSummary,
    ) -> Result<Page, String> {
        let Stages {
            p,
            alerts,
            store,
            cp,
            health,
            shutdown,
            progress,
        } = s;
        let m = p.metrics.clone();
        let start = cp.streams.get(stream).cloned();
        m.source_calls.with_label_values(&["GetLogEvents"]).inc();
        let r = self
            .clients
            .logs
            .get_log_events()
            .log_group_name(group)
            .log_stream_name(stream)
            .start_from_head(true)
            .limit(10_000)
            .set_next_token(start.clone())
            .send()
            .await;
        let page = match r {
            Ok(page) => page,
            Err(e) => {
                count_error(&m, "GetLogEvents", e.code());
                let code = e.code().unwrap_or("");
                if start.is_some() && code == "InvalidParameterException" {
                    // A token this stream does not know: read it from its start rather than
                    // never again.
                    tracing::warn!(stream = %stream, error = %aws_error(&e), "saved token refused; reading the stream from its start");
                    cp.streams.remove(stream);
                    return Ok(Page::More);
                }
                if code == "ResourceNotFoundException" {
                    cp.streams.remove(stream);
                    cp.stream_created.remove(stream);
                    return Ok(Page::Done);
                }
                tracing::warn!(stream = %stream, error = %aws_error(&e), "GetLogEvents failed; retrying next poll");
                return Ok(Page::Failed);
            }
        };
        let next = page.next_forward_token().map(String::from);
        let events = page.events();
        let mut decoder = Decoder::pinned(format.clone());
        let label = format!("{group}/{stream}@");
        let mut records = 0u64;
        for ev in events {
            let origin = Origin(&label, ev.timestamp().unwrap_or(0) as u64);
            // An event may hold several records, one per line.
            for line in ev.message().unwrap_or("").as_bytes().split(|&b| b == b'\n') {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                p.line(&mut decoder, line, &origin);
                records += 1;
            }
        }
        summary.records = summary.records.saturating_add(records);
        summary.batches += 1;
        beat();
        p.publish_top_k();
        // Only now, with the batch through every stage and its alerts durable, does the
        // position move.
        let unchanged = next.is_none() || next == start;
        if let Some(n) = next {
            cp.streams.insert(stream.to_string(), n);
        }
        cp.records_committed = cp.records_committed.saturating_add(records);
        if !events.is_empty() || !unchanged {
            commit(p, alerts, store, cp, health, shutdown, progress).await?;
        }
        Ok(if events.is_empty() || unchanged {
            Page::Done
        } else {
            Page::More
        })
    }
}

/// Watches the files the daemon was configured from (the network description and the deny
/// lists) and swaps in a new topology or new rules when one changes. A file that no longer
/// parses is reported and the running version is kept.
struct Reloader {
    stamps: Vec<(PathBuf, Option<std::time::SystemTime>)>,
    /// The config file itself, for its suppressions.
    config: Option<(PathBuf, Option<std::time::SystemTime>)>,
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Reloader {
    fn new(config: &Config) -> Self {
        let mut paths: Vec<PathBuf> = config.rules.denylists.clone();
        paths.extend(config.rules.resolver_lists.iter().cloned());
        if config.topology.is_none() {
            paths.extend(config.outputs_file.clone());
        }
        Reloader {
            stamps: paths
                .into_iter()
                .map(|p| {
                    let t = modified(&p);
                    (p, t)
                })
                .collect(),
            config: config.path.clone().map(|p| {
                let t = modified(&p);
                (p, t)
            }),
        }
    }

    fn reload_if_changed(&mut self, config: &Config, p: &mut Pipeline) {
        if let Some((path, stamp)) = &mut self.config {
            let now = modified(path);
            if now != *stamp {
                *stamp = now;
                reload_suppressions(path, config, p);
            }
        }
        let mut changed = false;
        for (path, stamp) in &mut self.stamps {
            let now = modified(path);
            if now != *stamp {
                *stamp = now;
                changed = true;
            }
        }
        if !changed {
            return;
        }
        match topology(config) {
            Ok(t) => p.topology = t,
            Err(e) => {
                tracing::error!(error = %e, "network description changed but cannot be read; keeping the previous one")
            }
        }
        match rules::build(&config.rules) {
            Ok(d) => p.replace_detectors(d),
            Err(e) => {
                tracing::error!(error = %e, "a deny list changed but cannot be read; keeping the previous rules")
            }
        }
        tracing::info!("reloaded the network description and deny lists");
    }
}

/// Takes the suppressions of a changed config file; the other keys take effect at the next
/// start, and a file that no longer reads is reported and the running suppressions kept.
fn reload_suppressions(path: &std::path::Path, running: &Config, p: &mut Pipeline) {
    let new = match Config::from_file(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "config changed but cannot be read; keeping the running suppressions");
            return;
        }
    };
    match crate::suppress::Suppressions::new(&new.suppress) {
        Ok(s) => {
            p.suppressions = s;
            if let Ok(mut inv) = p.inventory.write() {
                inv.replace_configured(&new.workloads);
            }
            tracing::info!(file = %path.display(), suppressions = new.suppress.len(), "reloaded the suppressions");
        }
        Err(e) => {
            tracing::error!(error = %e, "keeping the running suppressions");
            return;
        }
    }
    let others_changed = Config {
        suppress: running.suppress.clone(),
        workloads: running.workloads.clone(),
        ..new
    } != *running;
    if others_changed {
        tracing::warn!(file = %path.display(), "the config changed beyond its suppressions; those changes take effect at the next start");
    }
}

/// Where a line came from, formatted only when a bad line is logged.
struct Origin<'a>(&'a str, u64);

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.ends_with('@') {
            write!(f, "{}{}", self.0, self.1)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

pub(crate) fn count_error(m: &Metrics, op: &str, code: Option<&str>) {
    m.source_errors.with_label_values(&[op]).inc();
    if code.is_some_and(|c| c.contains("Throttl") || c.contains("LimitExceeded")) {
        m.source_throttles.with_label_values(&[op]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn changed_deny_lists_are_reloaded_and_bad_ones_refused() {
        let dir = std::env::temp_dir().join(format!("ew-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let deny = dir.join("deny.txt");
        std::fs::write(&deny, "192.0.2.0/24\n").unwrap();
        let toml = format!(
            "state-dir = \"{}\"\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\nnat-interfaces = [\"eni-nat\"]\nnat-private-ips = [\"10.0.0.220\"]\n[rules]\ndenylists = [\"{}\"]\n[alerts]\nstdout = false\n",
            dir.display(),
            deny.display()
        );
        let config = Config::from_toml(&toml, "t.toml").unwrap();
        let metrics = Arc::new(Metrics::new());
        let router = Router::new(&config.alerts, metrics.clone());
        let mut p = Pipeline::new(
            topology(&config).unwrap(),
            rules::build(&config.rules).unwrap(),
            router,
            metrics.clone(),
        );
        let format = Format::parse("interface-id srcaddr dstaddr dstport protocol bytes action log-status pkt-srcaddr pkt-dstaddr end").unwrap();
        let line =
            b"eni-nat 10.0.1.5 10.0.0.220 443 6 10 ACCEPT OK 10.0.1.5 203.0.113.5 1764150060";
        let denied = || {
            metrics
                .findings
                .with_label_values(&["denylisted_destination", "critical"])
                .get()
        };
        let mut reloader = Reloader::new(&config);
        let mut decoder = Decoder::pinned(format.clone());
        p.line(&mut decoder, line, &"t");
        assert_eq!(denied(), 0);

        let bump = |text: &str, secs: u64| {
            std::fs::write(&deny, text).unwrap();
            let f = std::fs::File::options().write(true).open(&deny).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))
                .unwrap();
        };
        bump("203.0.113.0/24\n", 1_000);
        reloader.reload_if_changed(&config, &mut p);
        // A later event time, past the dedupe window of nothing: the new rule fires.
        p.line(&mut decoder, line, &"t");
        assert_eq!(denied(), 1);

        // A broken list is refused; the working rules stay.
        bump("banana\n", 2_000);
        reloader.reload_if_changed(&config, &mut p);
        let other =
            b"eni-nat 10.0.1.6 10.0.0.220 443 6 10 ACCEPT OK 10.0.1.6 203.0.113.9 1764150060";
        p.line(&mut decoder, other, &"t");
        assert_eq!(denied(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn suppressions_are_counted_not_alerted_and_reload_with_the_config() {
        let dir = std::env::temp_dir().join(format!("ew-suppress-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("monitor.toml");
        let base = format!(
            "state-dir = \"{}\"\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\nnat-interfaces = [\"eni-nat\"]\nnat-private-ips = [\"10.0.0.220\"]\n[alerts]\nstdout = false\n",
            dir.display()
        );
        let write = |extra: &str, secs: u64| {
            std::fs::write(&path, format!("{base}{extra}")).unwrap();
            let f = std::fs::File::options().write(true).open(&path).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))
                .unwrap();
        };
        write(
            "[[suppress]]\nreason = \"partner SFTP, SEC-42\"\nremote = \"198.51.100.0/24\"\nport = 22\n",
            1_000,
        );
        let config = Config::from_file(&path).unwrap();
        let metrics = Arc::new(Metrics::new());
        let mut p = Pipeline::new(
            topology(&config).unwrap(),
            rules::build(&config.rules).unwrap(),
            Router::new(&config.alerts, metrics.clone()),
            metrics.clone(),
        );
        p.suppressions = crate::suppress::Suppressions::new(&config.suppress).unwrap();
        let mut reloader = Reloader::new(&config);
        let format = Format::parse("interface-id srcaddr dstaddr dstport protocol bytes action log-status pkt-srcaddr pkt-dstaddr end").unwrap();
        let mut decoder = Decoder::pinned(format);
        let ssh = |t: u64| {
            format!("eni-nat 10.0.1.5 10.0.0.220 22 6 10 ACCEPT OK 10.0.1.5 198.51.100.22 {t}")
        };
        let counts = || {
            (
                metrics
                    .findings_suppressed
                    .with_label_values(&["non_https_egress"])
                    .get(),
                metrics
                    .findings
                    .with_label_values(&["non_https_egress", "high"])
                    .get(),
            )
        };
        p.line(&mut decoder, ssh(1_764_150_060).as_bytes(), &"t");
        assert_eq!(
            counts(),
            (1, 0),
            "suppressed: counted as such, not as a finding"
        );
        assert!(p.router.take().alerts.is_empty());

        // A broken suppression is refused and the running ones stay.
        write("[[suppress]]\nreason = \"x\"\nrule = \"nope\"\n", 2_000);
        reloader.reload_if_changed(&config, &mut p);
        p.line(&mut decoder, ssh(1_764_150_120).as_bytes(), &"t");
        assert_eq!(counts(), (2, 0));

        // Removed from the file: alerted again, without a restart.
        write("", 3_000);
        reloader.reload_if_changed(&config, &mut p);
        p.line(&mut decoder, ssh(1_764_150_180).as_bytes(), &"t");
        assert_eq!(counts(), (2, 1));
        assert_eq!(p.router.take().alerts.len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shards_split_streams_without_overlap_or_gap() {
        let streams: Vec<String> = (0..300).map(|i| format!("eni-{i:08x}-all")).collect();
        let mut counts = [0usize; 3];
        for s in &streams {
            let owner = shard_of(s, 3);
            counts[owner as usize] += 1;
            // Exactly one shard owns each stream.
            assert_eq!((0..3).filter(|i| shard_of(s, 3) == *i).count(), 1);
        }
        assert_eq!(counts.iter().sum::<usize>(), 300);
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
        // Adding a fourth shard moves only streams to the new shard.
        for s in &streams {
            let after = shard_of(s, 4);
            assert!(after == 3 || after == shard_of(s, 3), "{s}");
        }
    }
}
