//! The daemon: serves metrics and health, reads the configured source, pushes every batch
//! through the pipeline, makes each batch's alerts durable in the outbox, and checkpoints the
//! read positions together with the rules' state and the outbox's position. Readiness follows
//! whether the source reads. On SIGTERM/SIGINT it stops reading, finishes the batch in
//! flight, checkpoints, gives the sinks their grace and returns.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use flowlog::Decoder;
use tokio::sync::watch;

use crate::alert::Router;
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::config::Config;
use crate::events::{Event, ProcessEvent};
use crate::metrics::Metrics;
use crate::outbox::AlertLog;
use crate::pipeline::Pipeline;
use crate::rules;
use crate::source::{Decoding, Lines, Next, Source};
use crate::topology::Topology;

/// Unix seconds of the main loop's last sign of progress; the systemd watchdog is fed only
/// while it moves, so a wedged source gets the daemon restarted.
static HEARTBEAT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn beat() {
    HEARTBEAT.store(unix_now(), Ordering::Relaxed);
}

/// Now, in Unix seconds (0 on a clock before 1970).
pub fn unix_now() -> u64 {
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
                crate::events::WatchdogWithheld { idle_seconds: idle }.emit();
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

// The metrics and health server lives in its own module; callers keep this path.
pub use crate::http::serve;

pub(crate) fn topology(config: &Config) -> Result<Topology, String> {
    if let Some(t) = &config.topology {
        return Ok(t.clone());
    }
    if let (Some(p), Some(out)) = (&config.outputs_file, crate::source::stack_outputs(config)?) {
        return Topology::from_outputs(&out)
            .map_err(|e| format!("outputs-file {}: {e}", p.display()));
    }
    Err("no network topology: set outputs-file (from `egresswatch provision outputs`) or [topology] in the config".into())
}

/// The network the config describes (outputs file or `[topology]`), else, for a source that
/// reads from AWS, the stack's network found from its tags; true when found from the tags.
pub(crate) async fn resolve_topology(
    config: &Config,
    clients: Option<&crate::aws::Clients>,
    metrics: &Metrics,
) -> Result<(Topology, bool), String> {
    match (topology(config), clients) {
        (Ok(t), _) => Ok((t, false)),
        (Err(e), Some(c)) if config.outputs_file.is_none() => {
            Topology::discover(&c.ec2, &config.stack, &c.region, metrics)
                .await
                .map(|t| (t, true))
                .map_err(|d| format!("{e}; nor was the network found from the stack's tags: {d}"))
        }
        (Err(e), _) => Err(e),
    }
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
        crate::events::SourceHealth::Reading {
            again: self.reason.take().is_some(),
            at_unix: unix_now(),
        }
        .emit(&self.metrics);
        mark_ready(&self.ready);
    }

    fn failing(&mut self, reason: String) {
        crate::events::SourceHealth::Failing {
            reason: &reason,
            new_reason: self.reason.as_deref() != Some(reason.as_str()),
        }
        .emit(&self.metrics);
        self.reason = Some(reason);
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
    clients: Option<crate::aws::Clients>,
) -> Result<RunSummary, String> {
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
    let ready = Arc::new(AtomicBool::new(false));
    let server = crate::http::serve_until_closed(
        config.listen,
        vec![metrics.clone()],
        vec![ready.clone()],
        server_stopped,
    )
    .await?;
    let result = run_stack(config, metrics, ready, shutdown, clients).await;
    let _ = server_stop.send(true);
    let _ = server.await;
    result
}

/// Runs several stacks, each on a thread of its own with its own runtime (so two stacks use
/// two cores), their metrics on one listening socket with a `stack` label. `clients` holds
/// one set of AWS clients per stack, in the order of `config.stacks` (none for files). A
/// stack whose run fails stops the others, so the orchestrator restarts the daemon whole.
pub async fn run_stacks(
    config: Config,
    shutdown: watch::Receiver<bool>,
    mut clients: Vec<Option<crate::aws::Clients>>,
) -> Result<RunSummary, String> {
    beat();
    start_watchdog(shutdown.clone());
    let (stop, stopped) = watch::channel(false);
    let mut outer = shutdown.clone();
    let forward = stop.clone();
    tokio::spawn(async move {
        let _ = outer.wait_for(|s| *s).await;
        let _ = forward.send(true);
    });
    let mut metrics = Vec::new();
    let mut ready = Vec::new();
    let mut threads = Vec::new();
    clients.resize(config.stacks.len(), None);
    for (entry, clients) in config.stacks.iter().zip(clients) {
        let m = Arc::new(Metrics::for_stack(Some(&entry.name)));
        let r = Arc::new(AtomicBool::new(false));
        metrics.push(m.clone());
        ready.push(r.clone());
        let c = config.for_stack(entry);
        let name = entry.name.clone();
        let (stop, stopped) = (stop.clone(), stopped.clone());
        let thread = std::thread::Builder::new()
            .name(format!("stack-{name}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("stack {name}: a runtime: {e}"))?;
                use tracing::Instrument;
                let span = tracing::info_span!("stack", stack = %name);
                let result = runtime
                    .block_on(run_stack(c, m, r, stopped, clients).instrument(span))
                    .map_err(|e| format!("stack {name}: {e}"));
                if result.is_err() {
                    let _ = stop.send(true);
                }
                result
            })
            .map_err(|e| format!("a thread for stack {}: {e}", entry.name))?;
        threads.push(thread);
    }
    let (server_stop, server_stopped) = watch::channel(false);
    let server =
        crate::http::serve_until_closed(config.listen, metrics, ready, server_stopped).await;
    if let Err(e) = &server {
        let _ = stop.send(true);
        crate::events::Stopped {
            what: "metrics endpoint",
            error: e,
        }
        .emit();
    }
    // The threads end with their runs; waiting for them must not hold up this runtime.
    let results = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("a stack's thread panicked".into()))
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| format!("waiting for the stacks: {e}"))?;
    let _ = server_stop.send(true);
    if let Ok(server) = server {
        let _ = server.await;
    }
    let mut total = RunSummary::default();
    let mut first_error = None;
    for r in results {
        match r {
            Ok(s) => {
                total.records = total.records.saturating_add(s.records);
                total.batches = total.batches.saturating_add(s.batches);
            }
            Err(e) => {
                crate::events::Stopped {
                    what: "stack",
                    error: &e,
                }
                .emit();
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// One stack's pipeline from its source to its sinks, until the source ends or shutdown.
async fn run_stack(
    config: Config,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    shutdown: watch::Receiver<bool>,
    clients: Option<crate::aws::Clients>,
) -> Result<RunSummary, String> {
    let (mut topo, from_tags) = resolve_topology(&config, clients.as_ref(), &metrics).await?;
    let mut s3_refresh_error = None;
    if let Some(c) = &clients {
        s3_refresh_error = topo.refresh_s3_ranges(&c.ec2, &metrics).await.err();
    }
    crate::events::TopologyKnown {
        from: if from_tags {
            "the stack's tags"
        } else {
            "the outputs file or [topology]"
        },
        topology: &topo,
        s3_refresh_error: s3_refresh_error.as_deref(),
    }
    .emit(&metrics);
    let dets = rules::build(&config.rules)?;
    let store_name = crate::source::store_name(&config);
    // Read positions and undelivered alerts live here for every source: without it a restart
    // would read a file twice or lose the alerts in flight.
    let mut store = CheckpointStore::new(&config.state_dir, store_name)?;
    let cp = store.load(&metrics)?;
    let mut router = Router::new(&config.alerts, metrics.clone());
    let findings =
        crate::findings::FindingStore::new(&config.state_dir, &config.findings, metrics.clone())?
            .map(Arc::new);
    let alerts = AlertLog::open(
        &config.state_dir,
        store_name,
        &config.alerts,
        crate::sink::from_config(&config.alerts, findings.clone())?,
        &mut router,
        cp.outbox_seq,
        metrics.clone(),
    )?;
    metrics.source_up.set(0);
    let vpc_id = topo.vpc_id.clone();
    let mut pipeline = Pipeline::new(topo, dets, router, metrics.clone());
    pipeline.suppressions = crate::suppress::Suppressions::new(&config.suppress)?;
    pipeline.explain = config.explain;
    pipeline.keep_suppressed = findings.is_some();
    pipeline.max_future_skew_seconds = config.max_future_skew_seconds;
    if config.source == "s3" {
        pipeline.range = config.s3.range();
    }
    // A stack read from AWS, or one of several: findings say which (a file is no stack).
    if config.one_of_several || matches!(config.source.as_str(), "cloudwatch" | "s3") {
        pipeline.stack = Some(config.stack.clone());
    }
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
            let wait = Duration::from_secs(20);
            if tokio::time::timeout(wait, first).await.is_err() {
                crate::events::InventoryRefresh::Late { waited: wait }.emit(&metrics);
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
        findings,
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
    let mut source = crate::source::open(&config, &s.cp, clients, metrics.clone());
    let result = match &mut source {
        Ok(source) => drive(&config, source, &mut s).await,
        Err(e) => Err(e.clone()),
    };
    // Whatever ended the run, errors included: a last checkpoint (unless alerts could not be
    // written, when the positions must stay behind them), and the sinks get their grace.
    // Open folds are closed only at the end of a finite input; a daemon that stops keeps
    // them open, to go on counting at the next start.
    s.p.publish_gauges();
    match s.checkpoint().await {
        Ok(true) => {
            if let Ok(source) = &mut source {
                source.committed().await;
            }
        }
        Ok(false) => {}
        Err(e) => crate::events::StateWriteFailed {
            store: "checkpoint",
            error: &e,
            consequence: "no checkpoint at the end of the run; what was read since the last one is read again at the next start",
        }
        .emit(&s.p.metrics),
    }
    s.alerts
        .shutdown(Duration::from_secs(config.alerts.shutdown_grace_seconds))
        .await;
    result
}

/// What every source drives and commits to: the stages a batch passes, the alert log, the
/// read positions and the source's health.
struct Stages {
    p: Pipeline,
    alerts: AlertLog,
    /// The findings store, which also keeps what suppressions held back.
    findings: Option<Arc<crate::findings::FindingStore>>,
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

impl Stages {
    /// A batch is through every stage: its alerts are made durable and handed to the sinks,
    /// and when one is due, a checkpoint moves the positions past it. True when a checkpoint
    /// was saved.
    async fn commit(&mut self) -> Result<bool, String> {
        self.p.router.advance(self.p.newest_event);
        let Stages {
            p,
            alerts,
            findings,
            health,
            shutdown,
            progress,
            ..
        } = self;
        let router = &mut p.router;
        retry(health, shutdown, "write alerts to the outbox", || {
            alerts.write(router)
        })
        .await?;
        // Suppressed findings are kept for the record, not delivered: a failure to keep them
        // is logged and does not hold the positions back.
        if !p.suppressed.is_empty() {
            let documents = std::mem::take(&mut p.suppressed);
            if let Some(store) = findings {
                // A failure is counted and logged by the store.
                let _ = store.append(&documents);
            }
        }
        progress.dirty = true;
        if progress.last.elapsed() >= progress.every.max(progress.cost.saturating_mul(100)) {
            return self.checkpoint().await;
        }
        Ok(false)
    }

    /// Commits the read positions together with what the rules have learnt from the records
    /// before them and the outbox's position: a restart resumes all three from the same
    /// point, so the rules see every record once and the alerts decided since are recognised
    /// when made again. The snapshot goes to the slot the committed checkpoint does not name,
    /// then the checkpoint names it: a crash in between leaves the previous pair whole. True
    /// when a checkpoint was saved (false: nothing new since the last one).
    async fn checkpoint(&mut self) -> Result<bool, String> {
        let Stages {
            p,
            alerts,
            store,
            cp,
            health,
            shutdown,
            progress,
            ..
        } = self;
        if !progress.dirty {
            return Ok(false);
        }
        if alerts.has_unwritten() {
            return Err(
                "alerts of a batch are not in the outbox yet; the positions stay before it".into(),
            );
        }
        let metrics = p.metrics.clone();
        retry(health, shutdown, "keep the state dir's lock", || {
            store.relock_if_removed(&metrics).map(|_| ())
        })
        .await?;
        let started = std::time::Instant::now();
        let generation = cp.generation.saturating_add(1);
        let snapshot = p.save_state();
        retry(health, shutdown, "save the rules' state", || {
            store.save_rules(generation, &snapshot).inspect_err(|e| {
                crate::events::StateWriteFailed {
                    store: "rules_snapshot",
                    error: e,
                    consequence: "cannot save the rules' state; the read positions stay where they are and the save is tried again",
                }
                .emit(&metrics)
            })
        })
        .await?;
        cp.generation = generation;
        cp.outbox_seq = alerts.next_seq();
        retry(health, shutdown, "save the checkpoint", || {
            store.save(cp).inspect_err(|e| {
                crate::events::StateWriteFailed {
                    store: "checkpoint",
                    error: e,
                    consequence: "cannot save the checkpoint; the read positions stay where they are and the save is tried again",
                }
                .emit(&metrics)
            })
        })
        .await?;
        let took = started.elapsed();
        crate::events::CheckpointCommitted {
            generation,
            records: cp.records_committed,
            snapshot_bytes: snapshot.len(),
            journal_bytes: store.journal_bytes(),
            took,
            at_unix: unix_now(),
        }
        .emit(&p.metrics);
        *progress = Progress {
            dirty: false,
            last: std::time::Instant::now(),
            every: progress.every,
            cost: took,
        };
        Ok(true)
    }
}

fn restore_rules(store: &CheckpointStore, generation: u64, p: &mut Pipeline) -> Result<(), String> {
    let path = store.rules_path(generation).display().to_string();
    let Some(bytes) = store.load_rules(generation)? else {
        if generation > 0 {
            crate::events::StateRepaired {
                store: "rules_snapshot",
                kind: "missing",
                count: 1,
                file: &path,
                detail: &format!(
                    "no rules snapshot of the checkpoint's generation {generation}; the rules learn afresh"
                ),
            }
            .emit(&p.metrics);
        }
        return Ok(());
    };
    let started = std::time::Instant::now();
    let errors = p.load_state(&bytes);
    for e in &errors {
        crate::events::StateRepaired {
            store: "rules_snapshot",
            kind: "rule_not_restored",
            count: 1,
            file: &path,
            detail: &format!("rule state not restored ({e}); that rule learns afresh"),
        }
        .emit(&p.metrics);
    }
    crate::events::RulesRestored {
        file: &path,
        bytes: bytes.len(),
        took: started.elapsed(),
    }
    .emit(&p.metrics);
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

/// The periodic info line that says how reading goes, and the one warning that the network
/// description does not match the records.
struct StatusLine {
    every: Option<Duration>,
    last: std::time::Instant,
    records: u64,
    findings: u64,
    warned_topology: bool,
}

/// Flows judged with none through the NAT before the topology is called into question: a
/// minute of a small team's traffic.
const TOPOLOGY_DOUBT_FLOWS: u64 = 10_000;

impl StatusLine {
    fn new(config: &Config) -> Self {
        StatusLine {
            every: (config.status_interval_seconds > 0)
                .then(|| Duration::from_secs(config.status_interval_seconds)),
            last: std::time::Instant::now(),
            records: 0,
            findings: 0,
            warned_topology: false,
        }
    }

    fn tick(&mut self, config: &Config, p: &Pipeline) {
        if !self.warned_topology
            && p.flows_judged >= TOPOLOGY_DOUBT_FLOWS
            && p.nat_egress_flows == 0
        {
            self.warned_topology = true;
            crate::events::TopologyMismatch {
                flows: p.flows_judged,
                topology: &p.topology,
            }
            .emit(&p.metrics);
        }
        let Some(every) = self.every else { return };
        let elapsed = self.last.elapsed();
        if elapsed < every {
            return;
        }
        let records = p.records.saturating_sub(self.records);
        let findings = p.findings_raised.saturating_sub(self.findings);
        let lag = (p.newest_event > 0).then(|| unix_now().saturating_sub(p.newest_event));
        crate::events::Status {
            source: &config.source,
            records,
            records_per_second: (records as f64 / elapsed.as_secs_f64()).round() as u64,
            newest_record_age_seconds: lag,
            findings,
            findings_total: p.findings_raised,
        }
        .emit(&p.metrics);
        self.last = std::time::Instant::now();
        self.records = p.records;
        self.findings = p.findings_raised;
    }
}

/// Runs the source's batches through every stage and commits their positions, until the
/// input ends, the source fails or shutdown is signalled. Whatever the source, the same
/// order: lines through the pipeline, alerts into the outbox, then the position.
async fn drive<S: Source>(
    config: &Config,
    source: &mut S,
    s: &mut Stages,
) -> Result<RunSummary, String> {
    let mut reloader = crate::reload::Reloader::new(config, s.p.metrics.clone());
    let mut status = StatusLine::new(config);
    let mut summary = RunSummary::default();
    let mut stop = s.shutdown.clone();
    // The decoder of the last origin whose lines may carry header lines: a header switches
    // the format for the rest of that origin, across batches.
    let mut headed: Option<(String, Decoder)> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let next = tokio::select! {
            next = source.next(s.progress.every) => next,
            _ = stop.wait_for(|s| *s) => break,
        };
        let batch = match next {
            Next::Idle | Next::Reading | Next::Unavailable(_) => {
                match next {
                    Next::Unavailable(reason) => s.health.failing(reason),
                    Next::Reading => s.health.reading(),
                    _ => {}
                }
                // A quiet source can be quiet for hours: waiting on it is progress too, and
                // what was read before the quiet is committed.
                beat();
                s.p.publish_gauges();
                reloader.reload_if_asked_or_changed(&mut s.p);
                status.tick(config, &s.p);
                if s.checkpoint().await? {
                    source.committed().await;
                }
                continue;
            }
            Next::End => {
                // End of a finite input: its floods are complete.
                s.p.finish();
                s.commit().await?;
                break;
            }
            Next::Failed(e) => {
                s.p.finish();
                s.commit().await?;
                return Err(e);
            }
            Next::Batch(b) => b,
        };
        for note in &batch.notes {
            crate::events::FileChanged {
                origin: &batch.origin,
                note,
            }
            .emit(&s.p.metrics);
        }
        if batch.oversize_lines > 0 {
            crate::events::LinesTooLong {
                origin: &batch.origin,
                lines: batch.oversize_lines,
                max_line_bytes: config.max_line_bytes,
            }
            .emit(&s.p.metrics);
        }
        let mut pinned;
        let decoder = match &batch.format {
            Decoding::Pinned(f) => {
                pinned = Decoder::pinned(f.clone());
                &mut pinned
            }
            Decoding::Headers(f) => {
                if headed.as_ref().is_none_or(|(o, _)| *o != batch.origin) {
                    headed = Some((batch.origin.clone(), Decoder::following_headers(f.clone())));
                }
                match &mut headed {
                    Some((_, d)) => d,
                    None => {
                        pinned = Decoder::following_headers(f.clone());
                        &mut pinned
                    }
                }
            }
        };
        let mut lines = 0u64;
        match &batch.lines {
            Lines::Numbered { text, first_line } => {
                let mut n = *first_line;
                let mut at = 0;
                // Every line ends in a newline; memchr finds them a word at a time.
                for end in memchr::memchr_iter(b'\n', text) {
                    if s.p
                        .line(decoder, &text[at..=end], &Origin(&batch.origin, n))
                    {
                        lines += 1;
                    }
                    n = n.saturating_add(1);
                    at = end + 1;
                }
            }
            Lines::Rows { rows, first_line } => {
                let format = match &batch.format {
                    Decoding::Pinned(f) | Decoding::Headers(f) => f,
                };
                let row_origin = format!("{} row=", batch.origin);
                rows.for_each(format, |row, record| {
                    let n = first_line.saturating_add(row as u64);
                    if s.p.judge(record, &Origin(&row_origin, n)).is_some() {
                        lines += 1;
                    }
                });
            }
            Lines::Events(events) => {
                let label = format!("{}@", batch.origin);
                for (timestamp, message) in events {
                    let origin = Origin(&label, u64::try_from(*timestamp).unwrap_or(0));
                    // An event may hold several records, one per line.
                    for line in message.as_bytes().split(|&b| b == b'\n') {
                        if line.iter().all(u8::is_ascii_whitespace) {
                            continue;
                        }
                        if s.p.line(decoder, line, &origin) {
                            lines += 1;
                        }
                    }
                }
            }
        }
        summary.records = summary.records.saturating_add(lines);
        summary.batches = summary.batches.saturating_add(1);
        beat();
        // Only now, with the batch through every stage, does the position move; the commit
        // makes its alerts durable before a checkpoint can carry the position.
        s.cp.records_committed = s.cp.records_committed.saturating_add(lines);
        batch.position.apply(&mut s.cp);
        if s.commit().await? {
            source.committed().await;
        }
        s.health.reading();
        reloader.reload_if_asked_or_changed(&mut s.p);
        status.tick(config, &s.p);
    }
    Ok(summary)
}

/// An SDK error with its cause chain (a missing credential says so), not just "dispatch
/// failure".
pub(crate) fn aws_error<E: std::error::Error + ProvideErrorMetadata>(e: &E) -> String {
    match e.message() {
        Some(m) => format!("{}: {m}", e.code().unwrap_or("error")),
        None => egresswatch_stack::client::error_chain(e),
    }
}

/// Where a line came from, formatted only when a bad line is logged.
struct Origin<'a>(&'a str, u64);

impl std::fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.ends_with(['@', '=']) {
            write!(f, "{}{}", self.0, self.1)
        } else {
            write!(f, "{}:{}", self.0, self.1)
        }
    }
}

/// A failed AWS call, counted and logged ([`crate::events::AwsCallFailed`]); returns the
/// error's text for the caller to hand on.
pub(crate) fn aws_call_failed<E: std::error::Error + ProvideErrorMetadata>(
    m: &Metrics,
    op: &str,
    e: &E,
    about: &str,
    then: Option<&str>,
) -> String {
    let error = aws_error(e);
    crate::events::AwsCallFailed {
        operation: op,
        code: e.code(),
        error: &error,
        about,
        then,
    }
    .emit(m);
    error
}
