//! Per-stream read positions, persisted atomically in the state dir after a batch has passed
//! every stage: write a temporary file, fsync, rename over the old one, fsync the directory.
//! A crash leaves either the old or the new checkpoint, never half of one.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// Log stream -> the forward token to resume from.
    pub streams: BTreeMap<String, String>,
    /// Records committed over the daemon's whole life, across restarts.
    pub records_committed: u64,
}

pub struct CheckpointStore {
    path: PathBuf,
}

impl CheckpointStore {
    pub fn new(state_dir: &Path, name: &str) -> Result<Self, String> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| format!("state dir {}: {e}", state_dir.display()))?;
        Ok(CheckpointStore {
            path: state_dir.join(format!("{name}.checkpoint.json")),
        })
    }

    pub fn load(&self) -> Result<Checkpoint, String> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{}: corrupt checkpoint: {e} (move it away to start over)",
                    self.path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
            Err(e) => Err(format!("{}: {e}", self.path.display())),
        }
    }

    pub fn save(&self, cp: &Checkpoint) -> Result<(), String> {
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(cp).map_err(std::io::Error::other)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            if let Some(dir) = self.path.parent() {
                std::fs::File::open(dir)?.sync_all()?;
            }
            Ok(())
        };
        write().map_err(|e| format!("{}: {e}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption_named() {
        let dir = std::env::temp_dir().join(format!("ew-cp-{}", std::process::id()));
        let store = CheckpointStore::new(&dir, "t").unwrap();
        assert_eq!(store.load().unwrap(), Checkpoint::default());
        let mut cp = Checkpoint::default();
        cp.streams.insert("eni-1-all".into(), "f/123".into());
        cp.records_committed = 42;
        store.save(&cp).unwrap();
        assert_eq!(store.load().unwrap(), cp);
        std::fs::write(dir.join("t.checkpoint.json"), b"{not json").unwrap();
        assert!(store.load().unwrap_err().contains("corrupt checkpoint"));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
