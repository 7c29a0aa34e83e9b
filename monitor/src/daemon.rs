//! The daemon: serves metrics and health, reads the configured source, pushes every batch
//! through the pipeline and commits the checkpoint only after the whole batch is processed.
//! On SIGTERM/SIGINT it stops reading, finishes and checkpoints the batch in flight, flushes
//! the alert sinks and returns.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use flowlog::{Decoder, Format};
use tokio::sync::watch;

use crate::alert::{Router, Sink};
use crate::checkpoint::CheckpointStore;
use crate::config::{parse_shard, Config};
use crate::metrics::Metrics;
use crate::pipeline::{detectors, Pipeline};
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

/// Serves /metrics, /healthz and /readyz until shutdown.
pub async fn serve(
    listen: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    use axum::{routing::get, Router as Http};
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    let m = metrics.clone();
    let app = Http::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { ([("content-type", "text/plain; version=0.0.4")], m.render()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let r = ready.clone();
                async move {
                    if r.load(Ordering::SeqCst) {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
    });
    Ok(())
}

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

/// Runs the daemon until the source ends (files, stdin) or shutdown is signalled.
pub async fn run(
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    clients: Option<egresswatch_provision::Clients>,
) -> Result<RunSummary, String> {
    let topo = topology(&config)?;
    let dets = detectors(&config.rules)?;
    let router = Router::start(
        &config.alerts,
        Sink::from_config(&config.alerts),
        metrics.clone(),
    );
    let ready = Arc::new(AtomicBool::new(false));
    beat();
    start_watchdog(shutdown.clone());
    serve(
        config.listen,
        metrics.clone(),
        ready.clone(),
        shutdown.clone(),
    )
    .await?;
    let mut pipeline = Pipeline::new(topo, dets, router, metrics.clone());
    let shard = config.shard.as_deref().map(parse_shard).transpose()?;
    let store_name = match (config.source.as_str(), shard) {
        ("cloudwatch", Some((i, n))) => format!("cloudwatch-{i}-of-{n}"),
        ("cloudwatch", None) => "cloudwatch".into(),
        _ => "file".into(),
    };
    // Files and stdin need no read positions, so an unusable state dir only costs them the
    // rules' memory; CloudWatch cannot run without its checkpoints.
    let store = match CheckpointStore::new(&config.state_dir, &store_name) {
        Ok(s) => Some(s),
        Err(e) if config.source != "cloudwatch" => {
            tracing::warn!(error = %e, "state dir unusable; the rules will not remember what they learn across runs");
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(store) = &store {
        restore_rules(store, &mut pipeline)?;
    }
    let result = if config.source == "cloudwatch" {
        let clients = clients.ok_or("the cloudwatch source needs AWS clients")?;
        let store = store.as_ref().ok_or("no checkpoint store")?;
        cloudwatch(&config, &clients, &mut pipeline, shutdown, &ready, store).await
    } else {
        mark_ready(&ready);
        let format = match &config.format {
            Some(f) => Format::parse(f).map_err(|e| e.to_string())?,
            // Without a header line, a file from this stack is in the provisioner's format.
            None => Format::parse(&egresswatch_provision::flow_log_format())
                .map_err(|e| e.to_string())?,
        };
        let path = config.source.strip_prefix("file:").map(PathBuf::from);
        read_stream(path, format, &mut pipeline, config.follow, &shutdown).map(|records| {
            RunSummary {
                records,
                batches: 1,
            }
        })
    };
    pipeline.publish_top_k();
    if let Some(store) = &store {
        snapshot_rules(store, &pipeline)?;
    }
    pipeline.router.shutdown(Duration::from_secs(10)).await;
    result
}

fn restore_rules(store: &CheckpointStore, p: &mut Pipeline) -> Result<(), String> {
    let Some(bytes) = store.load_rules()? else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let errors = p.load_state(&bytes);
    for e in &errors {
        tracing::warn!(file = %store.rules_path().display(), error = %e, "rule state not restored; that rule learns afresh");
    }
    tracing::info!(file = %store.rules_path().display(), bytes = bytes.len(), millis = started.elapsed().as_millis() as u64, "restored what the rules had learnt");
    Ok(())
}

fn snapshot_rules(store: &CheckpointStore, p: &Pipeline) -> Result<(), String> {
    let started = std::time::Instant::now();
    let snapshot = p.save_state();
    store.save_rules(&snapshot)?;
    let took = started.elapsed();
    p.metrics.rules_snapshot_seconds.observe(took.as_secs_f64());
    tracing::debug!(file = %store.rules_path().display(), bytes = snapshot.len(), millis = took.as_millis() as u64, "saved what the rules have learnt");
    Ok(())
}

/// Wall-clock seconds between snapshots of the rules' state while running; a crash forgets
/// at most this much learning, never a record's counts (those follow the checkpoints).
const RULES_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(60);

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

/// Reads a file (plain or .gz) or stdin to its end; with `follow`, keeps reading what is
/// appended to a plain file (a partial last line waits for its newline) until shutdown.
fn read_stream(
    path: Option<PathBuf>,
    format: Format,
    p: &mut Pipeline,
    follow: bool,
    shutdown: &watch::Receiver<bool>,
) -> Result<u64, String> {
    use std::io::BufRead;
    let name = path
        .as_ref()
        .map_or("stdin".to_string(), |p| p.display().to_string());
    let reader = open_input(path.as_deref()).map_err(|e| format!("{name}: {e}"))?;
    let mut decoder = Decoder::following_headers(format);
    let mut input = std::io::BufReader::with_capacity(1 << 20, reader);
    // Lines are handed over straight from the read buffer; only a line split across two
    // reads is copied, into `partial`.
    let mut partial: Vec<u8> = Vec::new();
    let mut n = 0u64;
    loop {
        let buf = input.fill_buf().map_err(|e| format!("{name}: {e}"))?;
        if buf.is_empty() {
            if !follow || *shutdown.borrow() {
                if !partial.is_empty() {
                    n += 1;
                    p.line(&mut decoder, &partial, &Origin(&name, n));
                }
                return Ok(n);
            }
            // Wait for more to be appended; a partial last line waits for its newline.
            beat();
            std::thread::sleep(Duration::from_millis(250));
            continue;
        }
        let mut at = 0;
        if !partial.is_empty() {
            match memchr::memchr(b'\n', buf) {
                Some(end) => {
                    partial.extend_from_slice(&buf[..=end]);
                    n += 1;
                    p.line(&mut decoder, &partial, &Origin(&name, n));
                    partial.clear();
                    at = end + 1;
                }
                None => {
                    partial.extend_from_slice(buf);
                    let len = buf.len();
                    input.consume(len);
                    continue;
                }
            }
        }
        while let Some(end) = memchr::memchr(b'\n', &buf[at..]) {
            n += 1;
            p.line(&mut decoder, &buf[at..=at + end], &Origin(&name, n));
            at += end + 1;
            if n % 65_536 == 0 {
                beat();
            }
        }
        partial.extend_from_slice(&buf[at..]);
        let len = buf.len();
        input.consume(len);
    }
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
        .map_err(|e| {
            format!(
                "DescribeFlowLogs for log group {group}: {}",
                e.message().unwrap_or(&e.to_string())
            )
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

async fn cloudwatch(
    config: &Config,
    clients: &egresswatch_provision::Clients,
    p: &mut Pipeline,
    mut shutdown: watch::Receiver<bool>,
    ready: &AtomicBool,
    store: &CheckpointStore,
) -> Result<RunSummary, String> {
    let group = config
        .log_group
        .clone()
        .unwrap_or_else(|| format!("/egresswatch/{}/flow-logs", config.stack));
    if config.format.is_none() {
        p.metrics
            .source_calls
            .with_label_values(&["DescribeFlowLogs"])
            .inc();
    }
    let format = flow_log_format(config, clients, &group).await?;
    let shard = config.shard.as_deref().map(parse_shard).transpose()?;
    let mut reloader = Reloader::new(config);
    let mut cp = store.load()?;
    let mut last_snapshot = std::time::Instant::now();
    let m = p.metrics.clone();
    let mut summary = RunSummary::default();
    loop {
        if *shutdown.borrow() {
            return Ok(summary);
        }
        // Every stream of the group; new ENIs bring new streams.
        let mut streams = Vec::new();
        let mut token: Option<String> = None;
        loop {
            m.source_calls
                .with_label_values(&["DescribeLogStreams"])
                .inc();
            let r = clients
                .logs
                .describe_log_streams()
                .log_group_name(&group)
                .set_next_token(token.clone())
                .send()
                .await;
            let page = match r {
                Ok(page) => page,
                Err(e) => {
                    count_error(&m, "DescribeLogStreams", e.code());
                    tracing::warn!(error = %e.message().unwrap_or(&e.to_string()), "DescribeLogStreams failed; retrying next poll");
                    break;
                }
            };
            streams.extend(
                page.log_streams()
                    .iter()
                    .filter_map(|s| s.log_stream_name().map(String::from)),
            );
            token = page.next_token().map(String::from);
            if token.is_none() {
                break;
            }
        }
        if let Some((i, n)) = shard {
            streams.retain(|s| shard_of(s, n) == i);
        }
        mark_ready(ready);
        reloader.reload_if_changed(config, p);
        for stream in streams {
            loop {
                if *shutdown.borrow() {
                    return Ok(summary);
                }
                let start = cp.streams.get(&stream).cloned();
                m.source_calls.with_label_values(&["GetLogEvents"]).inc();
                let r = clients
                    .logs
                    .get_log_events()
                    .log_group_name(&group)
                    .log_stream_name(&stream)
                    .start_from_head(true)
                    .limit(10_000)
                    .set_next_token(start.clone())
                    .send()
                    .await;
                let page = match r {
                    Ok(page) => page,
                    Err(e) => {
                        count_error(&m, "GetLogEvents", e.code());
                        tracing::warn!(stream = %stream, error = %e.message().unwrap_or(&e.to_string()), "GetLogEvents failed; retrying next poll");
                        break;
                    }
                };
                let next = page.next_forward_token().map(String::from);
                let events = page.events();
                let mut decoder = Decoder::pinned(format.clone());
                let label = format!("{group}/{stream}@");
                for ev in events {
                    let origin = Origin(&label, ev.timestamp().unwrap_or(0) as u64);
                    p.line(&mut decoder, ev.message().unwrap_or("").as_bytes(), &origin);
                }
                summary.records += events.len() as u64;
                summary.batches += 1;
                beat();
                p.publish_top_k();
                // Only now, with the batch through every stage, does the position move.
                let unchanged = next.is_none() || next == start;
                if let Some(n) = next {
                    cp.streams.insert(stream.clone(), n);
                }
                cp.records_committed += events.len() as u64;
                store.save(&cp)?;
                m.checkpoint_timestamp.set(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or(0),
                );
                if events.is_empty() || unchanged {
                    break;
                }
            }
        }
        if last_snapshot.elapsed() >= RULES_SNAPSHOT_INTERVAL {
            snapshot_rules(store, p)?;
            last_snapshot = std::time::Instant::now();
        }
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(config.poll_interval_seconds)) => {}
        }
    }
}

/// Watches the files the daemon was configured from (the network description and the deny
/// lists) and swaps in a new topology or new rules when one changes. A file that no longer
/// parses is reported and the running version is kept.
struct Reloader {
    stamps: Vec<(PathBuf, Option<std::time::SystemTime>)>,
}

fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl Reloader {
    fn new(config: &Config) -> Self {
        let mut paths: Vec<PathBuf> = config.rules.denylists.clone();
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
        }
    }

    fn reload_if_changed(&mut self, config: &Config, p: &mut Pipeline) {
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
        match detectors(&config.rules) {
            Ok(d) => p.replace_detectors(d),
            Err(e) => {
                tracing::error!(error = %e, "a deny list changed but cannot be read; keeping the previous rules")
            }
        }
        tracing::info!("reloaded the network description and deny lists");
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

fn count_error(m: &Metrics, op: &str, code: Option<&str>) {
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
        let router = Router::start(&config.alerts, vec![], metrics.clone());
        let mut p = Pipeline::new(
            topology(&config).unwrap(),
            detectors(&config.rules).unwrap(),
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
        p.router.shutdown(Duration::from_secs(1)).await;
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
