//! The Alertmanager sink: alerts POSTed in batches to `/api/v2/alerts`. Alertmanager groups
//! and deduplicates by labels, so labels carry only what identifies the alert (rule,
//! severity, workload, remote, port, interface) and the finding id goes in the annotations.

use super::{Delivered, Sink};
use crate::alert::Alert;

pub struct Alertmanager {
    url: String,
    http: reqwest::Client,
    runbook_url: String,
}

impl Alertmanager {
    pub fn new(base: &str, http: reqwest::Client, runbook_base_url: &str) -> Self {
        Alertmanager {
            url: format!("{}/api/v2/alerts", base.trim_end_matches('/')),
            http,
            runbook_url: format!("{runbook_base_url}#runbook-findings"),
        }
    }
}

pub fn payload(a: &Alert, runbook_url: &str) -> serde_json::Value {
    let f = &a.finding;
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
    // The same workload and remote in two stacks are two alerts.
    if let Some(s) = &f.stack {
        labels["stack"] = s.clone().into();
    }
    let mut annotations = serde_json::json!({
        "summary": f.summary,
        "finding_id": a.id,
        "type": crate::finding::taxonomy(f.rule).0,
        "severity_value": f.severity.value().to_string(),
        "bytes": f.bytes.to_string(),
        "runbook_url": runbook_url,
        "first_seen": crate::alert::rfc3339(f.first_seen),
        "last_seen": crate::alert::rfc3339(f.last_seen),
        // The whole finding document (schema v1), for receivers that want every field.
        "finding": crate::document::document(a).to_string(),
    });
    if let Some(n) = a.folded {
        annotations["folded_findings"] = n.to_string().into();
    }
    if let Some(n) = a.repeated {
        annotations["times_seen"] = n.to_string().into();
    }
    let mut alert = serde_json::json!({
        "labels": labels,
        "annotations": annotations,
        "generatorURL": "https://github.com/egresswatch/egresswatch#alerts",
    });
    if f.first_seen > 0 {
        alert["startsAt"] = crate::alert::rfc3339(f.first_seen).into();
    }
    alert
}

impl Sink for Alertmanager {
    fn name(&self) -> &'static str {
        "alertmanager"
    }

    fn max_batch(&self) -> usize {
        64
    }

    fn deliver<'a>(&'a self, alerts: &'a [Alert]) -> Delivered<'a> {
        Box::pin(async move {
            let body: Vec<serde_json::Value> = alerts
                .iter()
                .map(|a| payload(a, &self.runbook_url))
                .collect();
            let r = self
                .http
                .post(&self.url)
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("POST {}: {e}", self.url))?;
            r.error_for_status()
                .map(|_| ())
                .map_err(|e| format!("POST {}: {e}", self.url))
        })
    }
}
