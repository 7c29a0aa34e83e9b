//! The alert router: deduplicates findings per (rule, workload, remote) within a window of
//! event time, and hands each to every sink through its own bounded queue. A slow or failing
//! sink is retried with backoff and never blocks the pipeline; what overflows its queue is
//! counted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::Alerts;
use crate::detect::{Finding, Severity};
use crate::metrics::Metrics;

/// Where alerts go.
#[derive(Clone, Debug)]
pub enum Sink {
    Stdout,
    Alertmanager(String),
    Webhook(String),
    Desktop,
}

impl Sink {
    pub fn name(&self) -> &'static str {
        match self {
            Sink::Stdout => "stdout",
            Sink::Alertmanager(_) => "alertmanager",
            Sink::Webhook(_) => "webhook",
            Sink::Desktop => "desktop",
        }
    }

    pub fn from_config(a: &Alerts) -> Vec<Sink> {
        let mut v = Vec::new();
        if a.stdout {
            v.push(Sink::Stdout);
        }
        if let Some(u) = &a.alertmanager_url {
            v.push(Sink::Alertmanager(u.trim_end_matches('/').to_string()));
        }
        if let Some(u) = &a.webhook_url {
            v.push(Sink::Webhook(u.clone()));
        }
        if a.desktop {
            v.push(Sink::Desktop);
        }
        v
    }
}

type DedupeKey = (&'static str, Option<IpAddr>, Option<IpAddr>);

/// Entries kept for deduplication before old ones are swept, whatever the traffic.
const DEDUPE_CAPACITY: usize = 100_000;

pub struct Router {
    window: u64,
    seen: HashMap<DedupeKey, u64>,
    queues: Vec<(&'static str, mpsc::Sender<Finding>)>,
    tasks: Vec<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    /// When set, every alert that passes deduplication is also kept here (for evaluation,
    /// which scores exactly what the sinks would have received).
    pub kept: Option<Vec<Finding>>,
}

impl Router {
    pub fn start(config: &Alerts, sinks: Vec<Sink>, metrics: Arc<Metrics>) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        let mut queues = Vec::new();
        let mut tasks = Vec::new();
        for sink in sinks {
            let (tx, rx) = mpsc::channel(config.queue_capacity);
            for c in [
                &metrics.alerts_sent,
                &metrics.alerts_failed,
                &metrics.alerts_dropped,
            ] {
                c.with_label_values(&[sink.name()]);
            }
            queues.push((sink.name(), tx));
            tasks.push(tokio::spawn(deliver(
                sink,
                rx,
                http.clone(),
                metrics.clone(),
                config.max_per_minute,
            )));
        }
        Router {
            window: config.dedupe_window_seconds,
            seen: HashMap::new(),
            queues,
            tasks,
            metrics,
            kept: None,
        }
    }

    /// Routes a finding unless the same one alerted within the window (event time).
    pub fn route(&mut self, finding: Finding) {
        let key = (finding.rule, finding.workload, finding.remote);
        let t = finding.last_seen;
        if let Some(&last) = self.seen.get(&key) {
            if t < last + self.window {
                self.metrics.alerts_suppressed.inc();
                return;
            }
        }
        if self.seen.len() >= DEDUPE_CAPACITY {
            let window = self.window;
            self.seen.retain(|_, &mut last| last + window > t);
        }
        self.seen.insert(key, t);
        if let Some(kept) = &mut self.kept {
            kept.push(finding.clone());
        }
        for (name, q) in &self.queues {
            if q.try_send(finding.clone()).is_err() {
                self.metrics.alerts_dropped.with_label_values(&[name]).inc();
            }
        }
    }

    /// Closes the queues and waits (up to `grace`) for sinks to deliver what they hold.
    pub async fn shutdown(self, grace: Duration) {
        drop(self.queues);
        let all = futures_join(self.tasks);
        let _ = tokio::time::timeout(grace, all).await;
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

async fn deliver(
    sink: Sink,
    mut rx: mpsc::Receiver<Finding>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    per_minute: u32,
) {
    let name = sink.name();
    let spacing = Duration::from_secs_f64(60.0 / f64::from(per_minute.max(1)));
    while let Some(finding) = rx.recv().await {
        let mut backoff = Duration::from_millis(200);
        loop {
            match send_one(&sink, &finding, &http).await {
                Ok(()) => {
                    metrics.alerts_sent.with_label_values(&[name]).inc();
                    break;
                }
                Err(e) => {
                    metrics.alerts_failed.with_label_values(&[name]).inc();
                    tracing::warn!(sink = name, error = %e, retry_in_ms = backoff.as_millis() as u64, "alert delivery failed; retrying");
                    if rx.is_closed() && backoff > Duration::from_secs(2) {
                        // Shutting down and the sink is still failing: give up on it.
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        if !rx.is_closed() {
            tokio::time::sleep(spacing.min(Duration::from_millis(1000))).await;
        }
    }
}

fn alertmanager_payload(f: &Finding) -> serde_json::Value {
    let mut labels = serde_json::json!({
        "alertname": "EgressWatchFinding",
        "rule": f.rule,
        "severity": f.severity.as_str(),
    });
    if let Some(w) = f.workload {
        labels["workload"] = w.to_string().into();
    }
    if let Some(r) = f.remote {
        labels["remote"] = r.to_string().into();
    }
    if let Some(p) = f.remote_port {
        labels["remote_port"] = p.to_string().into();
    }
    if let Some(i) = &f.interface_id {
        labels["interface_id"] = i.clone().into();
    }
    serde_json::json!([{
        "labels": labels,
        "annotations": {"summary": f.summary, "bytes": f.bytes.to_string(), "first_seen": f.first_seen.to_string(), "last_seen": f.last_seen.to_string()},
        "generatorURL": "https://github.com/egresswatch/egresswatch#alerts",
    }])
}

async fn send_one(sink: &Sink, f: &Finding, http: &reqwest::Client) -> Result<(), String> {
    match sink {
        Sink::Stdout => {
            let line = serde_json::to_string(f).map_err(|e| e.to_string())?;
            use tokio::io::AsyncWriteExt;
            let mut out = tokio::io::stdout();
            out.write_all(format!("{line}\n").as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            out.flush().await.map_err(|e| e.to_string())
        }
        Sink::Alertmanager(base) => {
            let r = http
                .post(format!("{base}/api/v2/alerts"))
                .json(&alertmanager_payload(f))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            r.error_for_status().map(|_| ()).map_err(|e| e.to_string())
        }
        Sink::Webhook(url) => {
            let r = http
                .post(url)
                .json(f)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            r.error_for_status().map(|_| ()).map_err(|e| e.to_string())
        }
        Sink::Desktop => {
            let summary = format!("egresswatch: {} ({})", f.rule, f.severity.as_str());
            let body = f.summary.clone();
            let urgency = match f.severity {
                Severity::Critical | Severity::High => notify_rust::Urgency::Critical,
                Severity::Medium => notify_rust::Urgency::Normal,
                Severity::Low => notify_rust::Urgency::Low,
            };
            tokio::task::spawn_blocking(move || {
                notify_rust::Notification::new()
                    .appname("egresswatch")
                    .summary(&summary)
                    .body(&body)
                    .urgency(urgency)
                    .show()
                    .map(|_| ())
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
        }
    }
}
