//! The webhook sink: each alert POSTed as JSON (the finding document, or an OCSF Detection
//! Finding), with its id also in an `Idempotency-Key` header, so a receiver can drop the
//! repeats that at-least-once delivery implies. Any 2xx is an acknowledgement.

use std::time::Duration;

use super::{Delivered, Sink};
use crate::alert::Alert;
use crate::document::{document, ocsf, Format};

pub struct Webhook {
    url: String,
    http: reqwest::Client,
    spacing: Duration,
    format: Format,
}

impl Webhook {
    pub fn new(url: &str, http: reqwest::Client, spacing: Duration, format: Format) -> Self {
        Webhook {
            url: url.to_string(),
            http,
            spacing,
            format,
        }
    }
}

impl Sink for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn spacing(&self) -> Duration {
        self.spacing
    }

    fn deliver<'a>(&'a self, alerts: &'a [Alert]) -> Delivered<'a> {
        Box::pin(async move {
            for a in alerts {
                let r = self
                    .http
                    .post(&self.url)
                    .header("Idempotency-Key", a.delivery_key())
                    .json(&match self.format {
                        Format::Egresswatch => document(a),
                        Format::Ocsf => ocsf(a),
                    })
                    .send()
                    .await
                    .map_err(|e| format!("POST {}: {e}", self.url))?;
                r.error_for_status()
                    .map_err(|e| format!("POST {}: {e}", self.url))?;
            }
            Ok(())
        })
    }
}
