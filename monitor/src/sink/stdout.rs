//! The stdout sink: one JSON line per alert (the finding document, schema v1),
//! for journald, `docker logs` or a pipe. Written from a blocking thread, so a reader that
//! stops reading stalls this sink alone, never the daemon or its shutdown.

use std::io::Write;

use super::{Delivered, Sink};
use crate::alert::Alert;

pub struct Stdout;

impl Sink for Stdout {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn max_batch(&self) -> usize {
        256
    }

    fn deliver<'a>(&'a self, alerts: &'a [Alert]) -> Delivered<'a> {
        let mut text = Vec::new();
        for a in alerts {
            if let Err(e) = serde_json::to_writer(&mut text, &crate::document::document(a)) {
                return Box::pin(async move { Err(e.to_string()) });
            }
            text.push(b'\n');
        }
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                let mut out = std::io::stdout().lock();
                out.write_all(&text).and_then(|()| out.flush())
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("stdout: {e}"))
        })
    }
}
