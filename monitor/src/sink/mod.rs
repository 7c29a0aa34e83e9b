//! Alert sinks: one per file behind the [`Sink`] trait, and the delivery that feeds them from
//! the outbox. Each sink has its own lane: the alerts it has not acknowledged, served highest
//! severity first (a flood of low findings never delays a critical one), retried with
//! exponential backoff, and acknowledged in the sink's own file in the state dir after each
//! delivery. At the next start a sink resumes from its acknowledgements, so delivery is at
//! least once per sink, with the alert's stable id for receivers to drop repeats.

pub mod alertmanager;
pub mod desktop;
pub mod stdout;
pub mod store;
pub mod webhook;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::alert::Alert;
use crate::config::Alerts;
use crate::events::Event;
use crate::finding::Severity;
use crate::metrics::Metrics;
use crate::outbox::Entry;

pub type Delivered<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Somewhere alerts go.
pub trait Sink: Send + Sync + 'static {
    /// The name in metrics, logs and the acknowledgement file.
    fn name(&self) -> &'static str;
    /// Alerts handed over in one call at most.
    fn max_batch(&self) -> usize {
        1
    }
    /// Minimum time between deliveries (a human reads desktop notifications).
    fn spacing(&self) -> Duration {
        Duration::ZERO
    }
    /// Delivers every alert of `alerts`, or fails as a whole (and is retried as a whole).
    fn deliver<'a>(&'a self, alerts: &'a [Alert]) -> Delivered<'a>;
}

/// The sinks the configuration turns on, and the findings store when there is one.
pub fn from_config(
    a: &Alerts,
    findings: Option<Arc<crate::findings::FindingStore>>,
) -> Result<Vec<Box<dyn Sink>>, String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| format!("HTTP client for alert sinks: {e}"))?;
    let spacing = Duration::from_secs_f64(60.0 / f64::from(a.max_per_minute.max(1)));
    let mut v: Vec<Box<dyn Sink>> = Vec::new();
    if a.stdout {
        v.push(Box::new(stdout::Stdout));
    }
    if let Some(u) = &a.alertmanager_url {
        v.push(Box::new(alertmanager::Alertmanager::new(
            u,
            http.clone(),
            &a.runbook_base_url,
        )));
    }
    if let Some(u) = &a.webhook_url {
        v.push(Box::new(webhook::Webhook::new(
            u,
            http.clone(),
            spacing,
            a.webhook_format,
        )));
    }
    if a.desktop {
        v.push(Box::new(desktop::Desktop { spacing }));
    }
    if let Some(store) = findings {
        v.push(Box::new(store::Store(store)));
    }
    Ok(v)
}

/// What a sink has acknowledged: every sequence number below `below`, and those in `above`
/// (delivered ahead of their turn, by severity).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acks {
    pub below: u64,
    pub above: BTreeSet<u64>,
}

impl Acks {
    fn has(&self, seq: u64) -> bool {
        seq < self.below || self.above.contains(&seq)
    }
}

/// One sink's undelivered alerts and acknowledgements.
struct Queue {
    /// Served from the front: highest severity, then oldest.
    waiting: BTreeMap<(Reverse<Severity>, u64), Alert>,
    /// The sequence numbers in `waiting`, in order: the lowest is where the acknowledgements
    /// stop, found without a scan of a backlog of tens of thousands.
    waiting_seqs: BTreeSet<u64>,
    acks: Acks,
    /// Sequence numbers handed to this lane so far end below this.
    known_below: u64,
}

impl Queue {
    fn new(acks: Acks, known_below: u64) -> Self {
        Queue {
            waiting: BTreeMap::new(),
            waiting_seqs: BTreeSet::new(),
            acks,
            known_below,
        }
    }

    fn add(&mut self, seq: u64, alert: &Alert) {
        self.waiting
            .insert((Reverse(alert.finding.severity), seq), alert.clone());
        self.waiting_seqs.insert(seq);
    }

    fn delivered(&mut self, key: (Reverse<Severity>, u64)) {
        self.waiting.remove(&key);
        self.waiting_seqs.remove(&key.1);
        self.acks.above.insert(key.1);
    }

    /// Drops what waits below `seq`; returns how many.
    fn drop_below(&mut self, seq: u64) -> usize {
        let before = self.waiting.len();
        self.waiting.retain(|k, _| k.1 >= seq);
        self.waiting_seqs = self.waiting_seqs.split_off(&seq);
        before - self.waiting.len()
    }

    /// Moves `below` up past everything delivered or not an alert.
    fn settle(&mut self) {
        let lowest_waiting = self.waiting_seqs.first().copied();
        let below = lowest_waiting.unwrap_or(self.known_below);
        if below > self.acks.below {
            self.acks.below = below;
        }
        let b = self.acks.below;
        self.acks.above = self.acks.above.split_off(&b);
    }
}

struct Lane {
    sink: Box<dyn Sink>,
    queue: Mutex<Queue>,
    wake: Notify,
    acks_path: PathBuf,
}

/// The running sinks.
pub struct Delivery {
    lanes: Vec<Arc<Lane>>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<Option<Instant>>,
    metrics: Arc<Metrics>,
}

fn load_acks(path: &Path) -> Result<Option<Acks>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "{}: unreadable acknowledgements: {e} (remove it to resend every alert the outbox holds to this sink)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn save_acks(path: &Path, acks: &Acks) -> Result<(), String> {
    let bytes = serde_json::to_vec(acks).map_err(|e| e.to_string())?;
    // The outbox (and its acks dir with it) may have been removed under the daemon and
    // made again: the acknowledgements go where the outbox now is.
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    crate::checkpoint::write_atomically(path, &bytes)
}

impl Delivery {
    /// Starts every sink. `recovered` is what the outbox holds; each sink is handed what it
    /// has not acknowledged. A sink with no acknowledgements yet (new in the config) starts
    /// at `next_seq`, the end of the outbox.
    pub fn start(
        sinks: Vec<Box<dyn Sink>>,
        acks_dir: &Path,
        recovered: &[Entry],
        next_seq: u64,
        metrics: Arc<Metrics>,
    ) -> Result<Delivery, String> {
        std::fs::create_dir_all(acks_dir)
            .map_err(|e| format!("acknowledgements dir {}: {e}", acks_dir.display()))?;
        let (stop, stop_rx) = watch::channel(None);
        let mut lanes = Vec::new();
        let mut tasks = Vec::new();
        for sink in sinks {
            let name = sink.name();
            for c in [
                &metrics.alerts_sent,
                &metrics.alerts_failed,
                &metrics.alerts_dropped,
            ] {
                c.with_label_values(&[name]);
            }
            let acks_path = acks_dir.join(format!("{name}.acks.json"));
            let acks = match load_acks(&acks_path)? {
                Some(a) => a,
                None => {
                    let fresh = Acks {
                        below: next_seq,
                        above: BTreeSet::new(),
                    };
                    save_acks(&acks_path, &fresh)?;
                    fresh
                }
            };
            let mut queue = Queue::new(acks, next_seq);
            for e in recovered {
                if let Some(a) = &e.alert {
                    if !queue.acks.has(e.seq) {
                        queue.add(e.seq, a);
                    }
                }
            }
            crate::events::AlertsCarried::AtStart {
                sink: name,
                alerts: queue.waiting.len(),
            }
            .emit(&metrics);
            let lane = Arc::new(Lane {
                sink,
                queue: Mutex::new(queue),
                wake: Notify::new(),
                acks_path,
            });
            tasks.push(tokio::spawn(deliver(
                lane.clone(),
                metrics.clone(),
                stop_rx.clone(),
            )));
            lanes.push(lane);
        }
        Ok(Delivery {
            lanes,
            tasks,
            stop,
            metrics,
        })
    }

    /// Hands newly committed outbox entries to every sink.
    pub fn push(&self, entries: &[Entry]) {
        let Some(end) = entries.iter().map(|e| e.seq).max() else {
            return;
        };
        for lane in &self.lanes {
            let Ok(mut q) = lane.queue.lock() else {
                continue;
            };
            for e in entries {
                if let Some(a) = &e.alert {
                    q.add(e.seq, a);
                }
            }
            q.known_below = q.known_below.max(end.saturating_add(1));
            self.metrics
                .alerts_pending
                .with_label_values(&[lane.sink.name()])
                .set(q.waiting.len() as i64);
            drop(q);
            lane.wake.notify_one();
        }
    }

    /// The lowest sequence number some sink still needs; below it, every sink is done.
    pub fn delivered_below(&self, next_seq: u64) -> u64 {
        self.lanes
            .iter()
            .filter_map(|l| l.queue.lock().ok().map(|q| q.acks.below))
            .min()
            .unwrap_or(next_seq)
    }

    /// The outbox lost everything below `gone_below` (its bounds): alerts a sink was still
    /// waiting to deliver are counted as dropped for it and logged.
    pub fn forget_below(&self, gone_below: u64) {
        for lane in &self.lanes {
            let Ok(mut q) = lane.queue.lock() else {
                continue;
            };
            let lost = q.drop_below(gone_below);
            q.acks.below = q.acks.below.max(gone_below);
            q.settle();
            if lost > 0 {
                crate::events::AlertsDropped {
                    sink: lane.sink.name(),
                    alerts: lost as u64,
                }
                .emit(&self.metrics);
            }
        }
    }

    /// Gives the sinks up to `grace` to deliver what they hold, then stops them. What is left
    /// stays in the outbox for the next start, and says so.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(Some(Instant::now() + grace));
        for lane in &self.lanes {
            lane.wake.notify_one();
        }
        let mut tasks = self.tasks;
        let all = async {
            for t in &mut tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(grace + Duration::from_secs(1), all)
            .await
            .is_err()
        {
            for t in &tasks {
                t.abort();
            }
        }
        for lane in &self.lanes {
            let left = lane.queue.lock().map(|q| q.waiting.len()).unwrap_or(0);
            crate::events::AlertsCarried::AtShutdown {
                sink: lane.sink.name(),
                alerts: left,
            }
            .emit(&self.metrics);
        }
    }
}

const BACKOFF_START: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// One delivery call may take this long before it counts as failed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

async fn deliver(
    lane: Arc<Lane>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<Option<Instant>>,
) {
    let name = lane.sink.name();
    let mut backoff = BACKOFF_START;
    loop {
        let deadline = *stop.borrow();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        let batch: Vec<((Reverse<Severity>, u64), Alert)> = match lane.queue.lock() {
            Ok(q) => q
                .waiting
                .iter()
                .take(lane.sink.max_batch().max(1))
                .map(|(k, a)| (*k, a.clone()))
                .collect(),
            Err(_) => return,
        };
        if batch.is_empty() {
            if deadline.is_some() {
                return;
            }
            tokio::select! {
                _ = lane.wake.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let alerts: Vec<Alert> = batch.iter().map(|(_, a)| a.clone()).collect();
        let result = match tokio::time::timeout(DELIVERY_TIMEOUT, lane.sink.deliver(&alerts)).await
        {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {}s", DELIVERY_TIMEOUT.as_secs())),
        };
        match result {
            Ok(()) => {
                backoff = BACKOFF_START;
                let acks = match lane.queue.lock() {
                    Ok(mut q) => {
                        for (k, _) in &batch {
                            q.delivered(*k);
                        }
                        q.settle();
                        metrics
                            .alerts_pending
                            .with_label_values(&[name])
                            .set(q.waiting.len() as i64);
                        q.acks.clone()
                    }
                    Err(_) => return,
                };
                crate::events::Delivery::Sent {
                    sink: name,
                    alerts: batch.len() as u64,
                }
                .emit(&metrics);
                if let Err(e) = save_acks(&lane.acks_path, &acks) {
                    crate::events::StateWriteFailed {
                        store: "delivery_acks",
                        error: &format!("sink {name}: {e}"),
                        consequence: "cannot record delivered alerts; they are sent again after a restart, never lost",
                    }
                    .emit(&metrics);
                }
                let spacing = lane.sink.spacing();
                if !spacing.is_zero() && deadline.is_none() {
                    tokio::time::sleep(spacing).await;
                }
            }
            Err(e) => {
                crate::events::Delivery::Failed {
                    sink: name,
                    error: &e,
                    retry_in: backoff,
                }
                .emit(&metrics);
                let wait = match deadline {
                    Some(d) => backoff.min(d.saturating_duration_since(Instant::now())),
                    None => backoff,
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed(), if deadline.is_none() => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::Finding;

    /// Records what it was handed; fails while `failing` is set.
    struct Recorder {
        got: Arc<Mutex<Vec<Alert>>>,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl Sink for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn max_batch(&self) -> usize {
            4
        }
        fn deliver<'a>(&'a self, alerts: &'a [Alert]) -> Delivered<'a> {
            Box::pin(async move {
                if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                    return Err("down".into());
                }
                self.got.lock().unwrap().extend_from_slice(alerts);
                Ok(())
            })
        }
    }

    fn entry(seq: u64, severity: Severity) -> Entry {
        Entry {
            seq,
            written: 0,
            alert: Some(Alert::single(Finding {
                first_seen: seq,
                last_seen: seq,
                ..Finding::new("rejected_egress", severity, format!("{seq}"))
            })),
            tally: None,
            repeat: None,
        }
    }

    #[tokio::test]
    async fn critical_goes_first_and_acknowledgements_resume_after_restart() {
        let dir = std::env::temp_dir().join(format!("ew-lanes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let metrics = Arc::new(Metrics::new());
        let got = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let recorder = || -> Vec<Box<dyn Sink>> {
            vec![Box::new(Recorder {
                got: got.clone(),
                failing: failing.clone(),
            })]
        };
        // The sink is down while 100 low alerts and then one critical are committed.
        let mut entries: Vec<Entry> = (1..=100).map(|s| entry(s, Severity::Low)).collect();
        entries.push(entry(101, Severity::Critical));
        let d = Delivery::start(recorder(), &dir, &[], 1, metrics.clone()).unwrap();
        d.push(&entries);
        tokio::time::sleep(Duration::from_millis(50)).await;
        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        // It comes back: the critical alert is the first delivered.
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.lock().unwrap().len() < 10 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(got.lock().unwrap()[0].finding.severity, Severity::Critical);
        d.shutdown(Duration::from_millis(1)).await;
        // A restart hands over exactly what was not acknowledged.
        let delivered: BTreeSet<u64> = got
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.finding.first_seen)
            .collect();
        let before = got.lock().unwrap().len();
        let d = Delivery::start(recorder(), &dir, &entries, 102, metrics.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.lock().unwrap().len() < 101 {
            assert!(
                Instant::now() < deadline,
                "{} delivered",
                got.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let again: Vec<u64> = got.lock().unwrap()[before..]
            .iter()
            .map(|a| a.finding.first_seen)
            .collect();
        assert!(
            again.iter().all(|s| !delivered.contains(s)),
            "resent a delivered alert"
        );
        assert_eq!(d.delivered_below(102), 102);
        d.shutdown(Duration::from_secs(1)).await;
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
