//! The findings store: every alert the daemon raised, and every finding a suppression held
//! back, kept in the state dir as the finding document (schema v1), one JSON line each, in a
//! file per UTC day (`findings/YYYY-MM-DD.jsonl`). Bounded by age and size, oldest day first,
//! so it can run for years. `egresswatch findings` and `egresswatch report` read it back.
//!
//! Delivery to the store is at least once, like every sink's: a repeat after a crash, or an
//! update of an alert that repeated, carries the same id, and [`read`] keeps the last line of
//! each id.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::daemon::unix_now;
use crate::events::Event;

/// Where a state dir keeps its findings.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("findings")
}

/// The store's bounds.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Retention {
    /// Days of findings kept; 0 keeps no store at all.
    pub keep_days: u64,
    /// Bytes the store may hold; past it the oldest days go.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_days: 90,
            max_bytes: 256 << 20,
        }
    }
}

pub struct FindingStore {
    dir: PathBuf,
    retention: Retention,
    /// Where a failure to remove an old file is counted.
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// The UTC day (`YYYY-MM-DD`) of a Unix time.
fn day(unix: u64) -> String {
    crate::alert::rfc3339(unix).chars().take(10).collect()
}

/// The day files of a store, oldest first, with their sizes.
fn day_files(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut files: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .map(|p| {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, len)
        })
        .collect();
    files.sort();
    files
}

impl FindingStore {
    /// The store of `state_dir`, or None when the retention keeps nothing.
    pub fn new(
        state_dir: &Path,
        retention: &Retention,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<Option<Self>, String> {
        if retention.keep_days == 0 {
            return Ok(None);
        }
        let dir = dir(state_dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(Some(FindingStore {
            dir,
            retention: retention.clone(),
            metrics,
        }))
    }

    /// Appends documents to today's file, durably, then drops what is past the bounds.
    pub fn append(&self, documents: &[Value]) -> Result<(), String> {
        let now = unix_now();
        let path = self.dir.join(format!("{}.jsonl", day(now)));
        let mut text = Vec::new();
        for d in documents {
            serde_json::to_writer(&mut text, d).map_err(|e| e.to_string())?;
            text.push(b'\n');
        }
        let write = || -> std::io::Result<()> {
            // Made again if something removed it under the running daemon.
            if !self.dir.is_dir() {
                std::fs::create_dir_all(&self.dir)?;
            }
            let mut f = std::fs::File::options()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(&text)?;
            f.sync_data()
        };
        if let Err(e) = write() {
            let error = format!("{}: {e}", path.display());
            crate::events::StateWriteFailed {
                store: "findings",
                error: &error,
                consequence: &format!(
                    "{} finding document(s) not written to the findings store: alerts are tried again with the store's deliveries, suppressed findings are not kept",
                    documents.len()
                ),
            }
            .emit(&self.metrics);
            return Err(error);
        }
        self.enforce(now, &path);
        Ok(())
    }

    /// Removes the days older than `keep_days`, then the oldest while the store is over
    /// `max_bytes`; today's file (`current`) stays whatever its size.
    fn enforce(&self, now: u64, current: &Path) {
        let oldest_kept = day(now.saturating_sub(
            self.retention
                .keep_days
                .saturating_sub(1)
                .saturating_mul(86_400),
        ));
        let mut files = day_files(&self.dir);
        let mut total: u64 = files.iter().map(|(_, n)| *n).sum();
        files.retain(|(p, _)| p != current);
        for (path, len) in files {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.as_str() < oldest_kept.as_str() || total > self.retention.max_bytes {
                match std::fs::remove_file(&path) {
                    Ok(()) => total = total.saturating_sub(len),
                    Err(e) => {
                        let error = format!("{}: {e}", path.display());
                        crate::events::StateWriteFailed {
                            store: "findings",
                            error: &error,
                            consequence: "cannot remove an old findings file; the store stays over its bounds until it can",
                        }
                        .emit(&self.metrics);
                    }
                }
            }
        }
    }
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct Query {
    /// Findings last seen at or after this Unix time.
    pub since: Option<u64>,
    pub rule: Option<String>,
    /// A workload address, or an interface id.
    pub workload: Option<String>,
    /// This severity or a higher one.
    pub min_severity: Option<crate::finding::Severity>,
    pub stack: Option<String>,
    /// Also the findings a suppression held back.
    pub suppressed: bool,
}

fn severity_rank(name: &str) -> Option<crate::finding::Severity> {
    use crate::finding::Severity::*;
    [Low, Medium, High, Critical]
        .into_iter()
        .find(|s| s.as_str() == name)
}

/// A document's destination as people write it: `203.0.113.9:443`, or the address alone.
pub fn destination(doc: &Value) -> Option<String> {
    let remote = doc["remote"].as_str()?;
    Some(match doc["remote_port"].as_u64() {
        Some(port) => format!("{remote}:{port}"),
        None => remote.to_string(),
    })
}

/// When a document's finding was last seen (Unix seconds), from its `last_seen`.
pub fn last_seen(doc: &Value) -> Option<u64> {
    let text = doc["last_seen"].as_str()?;
    let t = humantime::parse_rfc3339(text).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

impl Query {
    fn matches(&self, d: &Value) -> bool {
        if d.get("suppressed").is_some() && !self.suppressed {
            return false;
        }
        if let Some(since) = self.since {
            if last_seen(d).is_none_or(|t| t < since) {
                return false;
            }
        }
        if let Some(r) = &self.rule {
            if d["rule"] != r.as_str() {
                return false;
            }
        }
        if let Some(w) = &self.workload {
            let is = |v: &Value| v.as_str() == Some(w.as_str());
            if !(is(&d["workload"]) || is(&d["interface_id"])) {
                return false;
            }
        }
        if let Some(min) = self.min_severity {
            if d["severity"]
                .as_str()
                .and_then(severity_rank)
                .is_none_or(|s| s < min)
            {
                return false;
            }
        }
        if let Some(s) = &self.stack {
            if d["stack"] != s.as_str() {
                return false;
            }
        }
        true
    }
}

/// The stores under `state_dir`: its own, and those of the stacks of a daemon that watches
/// several (`state_dir/NAME/findings`).
pub fn stores(state_dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if dir(state_dir).is_dir() {
        out.push(dir(state_dir));
    }
    let mut nested: Vec<PathBuf> = std::fs::read_dir(state_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| dir(&e.path()))
        .filter(|d| d.is_dir())
        .collect();
    nested.sort();
    out.extend(nested);
    out
}

/// The findings of the stores that match `q`, oldest first by last seen; one per id (its
/// last line). A line that is not JSON (a crash cut it) is reported and skipped.
pub fn read(stores: &[PathBuf], q: &Query) -> Result<(Vec<Value>, Vec<String>), String> {
    let mut by_id: HashMap<String, Value> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut problems = Vec::new();
    for store in stores {
        for (path, _) in day_files(store) {
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            // Lines are cut on bytes: one damaged line (not UTF-8, from a torn write or a
            // disk error) is skipped and reported like any other, and the rest are read.
            for (n, raw) in bytes.split(|b| *b == b'\n').enumerate() {
                let Ok(line) = std::str::from_utf8(raw) else {
                    problems.push(format!("{}:{}: not UTF-8", path.display(), n + 1));
                    continue;
                };
                if line.trim().is_empty() {
                    continue;
                }
                let doc: Value = match serde_json::from_str(line) {
                    Ok(d) => d,
                    Err(e) => {
                        problems.push(format!("{}:{}: {e}", path.display(), n + 1));
                        continue;
                    }
                };
                let Some(id) = doc["id"].as_str().map(String::from) else {
                    problems.push(format!("{}:{}: no id", path.display(), n + 1));
                    continue;
                };
                // Suppressed findings have no alert id of their own: each line is one.
                let key = if doc.get("suppressed").is_some() {
                    format!("{id}#{}:{}", path.display(), n)
                } else {
                    id
                };
                if by_id.insert(key.clone(), doc).is_none() {
                    order.push(key);
                }
            }
        }
    }
    let mut out: Vec<Value> = order
        .into_iter()
        .filter_map(|k| by_id.remove(&k))
        .filter(|d| q.matches(d))
        .collect();
    out.sort_by_key(|d| last_seen(d).unwrap_or(0));
    Ok((out, problems))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, rule: &str, severity: &str, last_seen: &str, workload: &str) -> Value {
        serde_json::json!({
            "id": id, "rule": rule, "severity": severity, "last_seen": last_seen,
            "workload": workload, "interface_id": "eni-1", "stack": "research",
        })
    }

    /// The store's directory removed under the daemon is made again; a write that cannot be
    /// made is counted where state writes are, not as a sink's failure alone.
    #[test]
    fn a_removed_store_is_made_again_and_a_failed_write_is_counted() {
        let state = std::env::temp_dir().join(format!("ew-findings-gone-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let store = FindingStore::new(&state, &Retention::default(), metrics.clone())
            .unwrap()
            .unwrap();
        let one = [doc(
            "a",
            "beaconing",
            "high",
            "2026-11-20T10:00:00Z",
            "10.0.1.5",
        )];
        store.append(&one).unwrap();
        std::fs::remove_dir_all(dir(&state)).unwrap();
        store.append(&one).unwrap();
        assert_eq!(read(&stores(&state), &Query::default()).unwrap().0.len(), 1);
        // A file where the directory was: the write fails, and is counted.
        std::fs::remove_dir_all(dir(&state)).unwrap();
        std::fs::write(dir(&state), b"not a directory").unwrap();
        assert!(store.append(&one).is_err());
        let failed = metrics
            .state_write_errors
            .with_label_values(&["findings"])
            .get();
        assert_eq!(failed, 1);
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn findings_read_back_filtered_one_per_id_and_old_days_go() {
        let state = std::env::temp_dir().join(format!("ew-findings-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let store = FindingStore::new(&state, &Retention::default(), Default::default())
            .unwrap()
            .unwrap();
        store
            .append(&[
                doc("a", "beaconing", "high", "2026-11-20T10:00:00Z", "10.0.1.5"),
                doc(
                    "b",
                    "rejected_egress",
                    "low",
                    "2026-11-28T10:00:00Z",
                    "10.0.1.6",
                ),
            ])
            .unwrap();
        // An update of alert a (it repeated), and a line a crash cut short.
        let mut again = doc("a", "beaconing", "high", "2026-11-21T10:00:00Z", "10.0.1.5");
        again["times_seen"] = 3.into();
        store.append(&[again]).unwrap();
        let today = dir(&state).join(format!("{}.jsonl", day(unix_now())));
        std::fs::OpenOptions::new()
            .append(true)
            .open(&today)
            .unwrap()
            .write_all(b"{\"id\": \"c\", \"ru\n\xff\xfe\x00damaged\n")
            .unwrap();
        // What follows a damaged line is still read.
        store
            .append(&[doc(
                "d",
                "port_scan",
                "low",
                "2026-11-29T10:00:00Z",
                "10.0.1.7",
            )])
            .unwrap();
        let (all, problems) = read(&stores(&state), &Query::default()).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0]["times_seen"], 3);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[1].ends_with("not UTF-8"), "{problems:?}");
        let q = |f: &dyn Fn(&mut Query)| {
            let mut q = Query::default();
            f(&mut q);
            read(&stores(&state), &q).unwrap().0.len()
        };
        assert_eq!(
            q(&|q| q.min_severity = Some(crate::finding::Severity::Medium)),
            1
        );
        assert_eq!(q(&|q| q.rule = Some("rejected_egress".into())), 1);
        assert_eq!(q(&|q| q.workload = Some("10.0.1.5".into())), 1);
        assert_eq!(q(&|q| q.workload = Some("eni-1".into())), 3);
        assert_eq!(q(&|q| q.since = Some(1795564800)), 2);
        assert_eq!(q(&|q| q.stack = Some("clinical".into())), 0);

        // Days past keep-days are removed at the next write; today's stays.
        let old = dir(&state).join("2020-01-01.jsonl");
        std::fs::write(&old, "{}\n").unwrap();
        store
            .append(&[doc(
                "d",
                "dns_bypass",
                "high",
                "2026-11-29T00:00:00Z",
                "10.0.1.7",
            )])
            .unwrap();
        assert!(!old.exists());
        assert!(today.exists());
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn the_store_keeps_to_its_size_oldest_day_first() {
        let state = std::env::temp_dir().join(format!("ew-findings-size-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let retention = Retention {
            keep_days: 10_000,
            max_bytes: 100,
        };
        let store = FindingStore::new(&state, &retention, Default::default())
            .unwrap()
            .unwrap();
        let d = dir(&state);
        std::fs::write(d.join("2026-01-01.jsonl"), vec![b'x'; 80]).unwrap();
        std::fs::write(d.join("2026-01-02.jsonl"), vec![b'x'; 80]).unwrap();
        store
            .append(&[doc(
                "a",
                "beaconing",
                "high",
                "2026-11-20T10:00:00Z",
                "10.0.1.5",
            )])
            .unwrap();
        assert!(!d.join("2026-01-01.jsonl").exists());
        assert!(!d.join("2026-01-02.jsonl").exists());
        assert_eq!(day_files(&d).len(), 1);
        assert!(FindingStore::new(
            &state,
            &Retention {
                keep_days: 0,
                max_bytes: 1
            },
            Default::default()
        )
        .unwrap()
        .is_none());
        std::fs::remove_dir_all(&state).unwrap();
    }
}
