//! What the daemon persists in its state dir: per-stream read positions, saved after a batch
//! has passed every stage, and snapshots of what the rules have learnt. Both are written the
//! same way: a temporary file, fsync, rename over the old one, fsync the directory. A crash
//! leaves either the old or the new file, never half of one.

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
    rules_path: PathBuf,
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

impl CheckpointStore {
    pub fn new(state_dir: &Path, name: &str) -> Result<Self, String> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| format!("state dir {}: {e}", state_dir.display()))?;
        // Found out now rather than at the first checkpoint, after work that would be lost.
        let probe = state_dir.join(format!(".{name}.probe"));
        std::fs::write(&probe, b"")
            .and_then(|()| std::fs::remove_file(&probe))
            .map_err(|e| {
                format!(
                    "state dir {} is not writable by this process: {e} (systemd: StateDirectory=; \
                     containers: a volume the image's user 65532 owns)",
                    state_dir.display()
                )
            })?;
        Ok(CheckpointStore {
            path: state_dir.join(format!("{name}.checkpoint.json")),
            rules_path: state_dir.join(format!("{name}.rules.state")),
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
        let bytes = serde_json::to_vec(cp).map_err(|e| e.to_string())?;
        write_atomically(&self.path, &bytes)
    }

    /// The rules' last snapshot, if one was saved.
    pub fn load_rules(&self) -> Result<Option<Vec<u8>>, String> {
        match std::fs::read(&self.rules_path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", self.rules_path.display())),
        }
    }

    pub fn save_rules(&self, snapshot: &[u8]) -> Result<(), String> {
        write_atomically(&self.rules_path, snapshot)
    }

    pub fn rules_path(&self) -> &Path {
        &self.rules_path
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

    #[test]
    fn unwritable_state_dir_is_refused_up_front() {
        // /proc exists but takes no new files, even from root, as the tests may run.
        let err = CheckpointStore::new(Path::new("/proc"), "t").err().unwrap();
        assert!(
            err.starts_with("state dir /proc is not writable by this process"),
            "{err}"
        );
        let err = CheckpointStore::new(Path::new("/dev/null/state"), "t")
            .err()
            .unwrap();
        assert!(err.starts_with("state dir /dev/null/state:"), "{err}");
    }
}
