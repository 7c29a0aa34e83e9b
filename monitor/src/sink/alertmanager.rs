//! The Alertmanager sink: alerts POSTed in batches to `/api/v2/alerts`. Alertmanager groups
//! and deduplicates by labels, so labels carry only what identifies the alert (rule,
//! severity, workload, remote, port, interface) and the finding id goes in the annotations.

use super::{Delivered, Sink};
use crate::alert::Alert;

pub struct Alertmanager {
    url: String,
    http: reqwest::Client,
}

impl Alertmanager {
    pub fn new(base: &str, http: reqwest::Client) -> Self {
        Alertmanager {
            url: format!("{}/api/v2/alerts", base.trim_end_matches('/')),
            http,
        }
    }
}

/// RFC 3339 for Unix seconds, as Alertmanager's `startsAt` wants.
fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

pub fn payload(a: &Alert) -> serde_json::Value {
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
    let mut annotations = serde_json::json!({
        "summary": f.summary,
        "finding_id": a.id,
        "bytes": f.bytes.to_string(),
        "first_seen": f.first_seen.to_string(),
        "last_seen": f.last_seen.to_string(),
    });
    if let Some(n) = a.folded {
        annotations["folded_findings"] = n.to_string().into();
    }
    let mut alert = serde_json::json!({
        "labels": labels,
        "annotations": annotations,
        "generatorURL": "https://github.com/egresswatch/egresswatch#alerts",
    });
    if f.first_seen > 0 {
        alert["startsAt"] = rfc3339(f.first_seen).into();
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
            let body: Vec<serde_json::Value> = alerts.iter().map(payload).collect();
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

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_764_150_060), "2025-11-26T09:41:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
