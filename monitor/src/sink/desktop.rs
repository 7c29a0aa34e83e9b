//! The desktop sink: a notification over D-Bus per alert, urgency from severity, for an
//! analyst's workstation. Spaced out, since a person reads them.

use std::time::Duration;

use super::{Delivered, Sink};
use crate::alert::Alert;
use crate::finding::Severity;

pub struct Desktop {
    pub spacing: Duration,
}

impl Sink for Desktop {
    fn name(&self) -> &'static str {
        "desktop"
    }

    fn spacing(&self) -> Duration {
        self.spacing
    }

    fn deliver<'a>(&'a self, alerts: &'a [Alert]) -> Delivered<'a> {
        Box::pin(async move {
            for a in alerts {
                let f = &a.finding;
                let mut summary = format!("egresswatch: {} ({})", f.rule, f.severity.as_str());
                if let Some(n) = a.repeated {
                    summary.push_str(&format!(", seen {n} times"));
                }
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
                .map_err(|e| format!("desktop notification: {e}"))?;
            }
            Ok(())
        })
    }
}
