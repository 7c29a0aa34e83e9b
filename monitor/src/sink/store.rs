//! The findings-store sink: each alert's finding document appended to the state dir's
//! findings store (see `findings`), so `egresswatch findings` and `egresswatch report` can
//! look back on what the daemon raised whatever other sinks are configured.

use std::sync::Arc;

use super::{Delivered, Sink};
use crate::alert::Alert;
use crate::findings::FindingStore;

pub struct Store(pub Arc<FindingStore>);

impl Sink for Store {
    fn name(&self) -> &'static str {
        "store"
    }

    fn max_batch(&self) -> usize {
        256
    }

    fn deliver<'a>(&'a self, alerts: &'a [Alert]) -> Delivered<'a> {
        let documents: Vec<serde_json::Value> =
            alerts.iter().map(crate::document::document).collect();
        let store = self.0.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.append(&documents))
                .await
                .map_err(|e| e.to_string())?
        })
    }
}
