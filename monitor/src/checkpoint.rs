//! What the daemon persists in its state dir: per-stream read positions, saved after a batch
//! has passed every stage, and snapshots of what the rules have learnt. Both are written the
//! same way: a temporary file, fsync, rename over the old one, fsync the directory. A crash
//! leaves either the old or the new file, never half of one.
//!
//! Every file carries a header line naming its kind, its format version, its length and a
//! CRC32 of its content ([`frame`]); a file whose header does not match what this build
//! reads, or whose content was cut short or damaged, is refused with the fix in the message
//! ([`unframe`]) instead of being restored as if it were good. The store holds an exclusive
//! lock on the state dir for its life, so a second daemon on the same dir is refused at
//! start rather than racing the first one on the same files.
//!
//! Read positions change a few streams at a time while thousands are tracked, so a commit
//! appends only what changed to a journal beside the checkpoint ([`CheckpointStore::save`]);
//! the checkpoint is rewritten whole (and the journal emptied) only once the journal has
//! grown as large as it. Readers apply the journal over the checkpoint ([`read_checkpoint`]).

use std::collections::BTreeMap;
use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::events::Event;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    /// Log stream -> the forward token to resume from.
    pub streams: BTreeMap<String, String>,
    /// Log stream -> its creation time (ms) when its token was saved: a stream of the same
    /// name created later (the group was deleted and made again) starts from its head, as
    /// the old token means nothing in it.
    #[serde(default)]
    pub stream_created: BTreeMap<String, i64>,
    /// Log stream -> what was read from it and when: its listing is compared with this to
    /// tell whether it holds something new, so quiet streams are not read every poll.
    #[serde(default)]
    pub stream_seen: BTreeMap<String, crate::source::cloudwatch::Seen>,
    /// File path (or "stdin") -> where it was read up to.
    #[serde(default)]
    pub files: BTreeMap<String, crate::source::file::FilePosition>,
    /// S3 object (bucket/key#etag) -> how far it was read: a notification delivered again, or
    /// a restart half-way through an object, counts nothing twice.
    #[serde(default)]
    pub s3_objects: BTreeMap<String, crate::source::s3::ObjectProgress>,
    /// Records committed over the daemon's whole life, across restarts.
    pub records_committed: u64,
    /// Which rules snapshot goes with these positions: the rules' state and the positions are
    /// committed as one, so a restart never feeds the rules a record twice or skips one.
    #[serde(default)]
    pub generation: u64,
    /// The outbox's next sequence number when this was committed: alerts below it came from
    /// records these positions are past; those from it on were decided from records a
    /// restart reads again.
    #[serde(default)]
    pub outbox_seq: u64,
}

/// A kind of state file: the name its header line starts with, the format version this build
/// writes and reads, and what an operator should do when a file of this kind is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileKind {
    pub name: &'static str,
    pub version: u32,
    /// The fix, as the end of the refusal: "move it away to start over; then ...".
    pub fix: &'static str,
}

/// Read positions. Version 1 was plain JSON without a header.
pub const CHECKPOINT_FILE: FileKind = FileKind {
    name: "egresswatch-checkpoint",
    version: 2,
    fix: "move it away to start over; the daemon then re-reads every log stream from its \
          oldest retained event, so those records are counted and alerted on again",
};

/// The rules' learnt state. Version 1 was the bare `EWSTATE1` snapshot without a header.
pub const RULES_STATE_FILE: FileKind = FileKind {
    name: "egresswatch-rules-state",
    version: 2,
    fix: "move it away to start over; the rules then learn afresh (their learning periods \
          start again), while read positions and counts are kept",
};

/// One journal entry: the positions that changed since the entry before it.
pub const JOURNAL_ENTRY: FileKind = FileKind {
    name: "egresswatch-checkpoint-change",
    version: 1,
    fix: "move the journal away to go back to the positions of the checkpoint beside it; \
          what was read since is then read again",
};

/// Longest header line [`frame`] writes (name, version, length, checksum), with room to
/// spare: a file whose first newline comes later has no header at all.
const MAX_HEADER: usize = 160;

/// `body` behind a header line: `NAME vVERSION len=BYTES crc32=HEX\n`. The header is text so
/// a JSON body stays readable with `cat` and `jq` (after `tail -n +2`).
pub fn frame(kind: &FileKind, body: &[u8]) -> Vec<u8> {
    let mut out = frame_header(kind, &[body]).into_bytes();
    out.extend_from_slice(body);
    out
}

/// The header line [`frame`] puts before a body made of `parts`, one after the other: large
/// bodies are written from their parts without being copied into one.
fn frame_header(kind: &FileKind, parts: &[&[u8]]) -> String {
    let mut crc = crc32fast::Hasher::new();
    for p in parts {
        crc.update(p);
    }
    format!(
        "{} v{} len={} crc32={:08x}\n",
        kind.name,
        kind.version,
        parts.iter().map(|p| p.len()).sum::<usize>(),
        crc.finalize()
    )
}

/// The body of a file [`frame`] wrote, after checking its kind, version, length and checksum.
/// The error names the file (`path`), what is wrong with it and the kind's fix.
pub fn unframe<'a>(kind: &FileKind, path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], String> {
    let refuse = |what: String| format!("{}: refused: {what}; {}", path.display(), kind.fix);
    let head_end = bytes[..bytes.len().min(MAX_HEADER)]
        .iter()
        .position(|&b| b == b'\n');
    let header = head_end.and_then(|n| std::str::from_utf8(&bytes[..n]).ok());
    let fields: Vec<&str> = header.map(|h| h.split(' ').collect()).unwrap_or_default();
    match fields.first() {
        Some(name) if *name == kind.name => {}
        Some(name) if name.starts_with("egresswatch-") && fields.len() == 4 => {
            return Err(refuse(format!(
                "it is an {name} file, not an {} file",
                kind.name
            )))
        }
        _ => {
            return Err(refuse(format!(
                "it does not start with an `{} vN` header line (it starts with \"{}\"): it was \
                 written by an egresswatch older than format version {}, or is not ours",
                kind.name,
                preview(bytes, 24),
                kind.version
            )))
        }
    }
    let damaged_header = || {
        refuse(format!(
            "its header line \"{}\" is damaged",
            preview(&bytes[..head_end.unwrap_or(0)], MAX_HEADER)
        ))
    };
    let [_, version, len, crc] = fields[..] else {
        return Err(damaged_header());
    };
    let version: u32 = version
        .strip_prefix('v')
        .and_then(|v| v.parse().ok())
        .ok_or_else(damaged_header)?;
    if version != kind.version {
        return Err(refuse(format!(
            "it is format version {version}; this egresswatch reads version {}",
            kind.version
        )));
    }
    let len: usize = len
        .strip_prefix("len=")
        .and_then(|v| v.parse().ok())
        .ok_or_else(damaged_header)?;
    let crc = crc
        .strip_prefix("crc32=")
        .filter(|v| v.len() == 8)
        .and_then(|v| u32::from_str_radix(v, 16).ok())
        .ok_or_else(damaged_header)?;
    // `head_end` is Some here: the name matched, so there was a header line.
    let body = &bytes[head_end.map_or(0, |n| n + 1)..];
    if body.len() < len {
        return Err(refuse(format!(
            "it is truncated: {} of the {len} bytes its header line counts are there",
            body.len()
        )));
    }
    if body.len() > len {
        return Err(refuse(format!(
            "it has {} bytes past the {len} its header line counts",
            body.len() - len
        )));
    }
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(refuse(format!(
            "its content fails the checksum (crc32 {actual:08x}, the header line says \
             {crc:08x}): it was damaged after it was written"
        )));
    }
    Ok(body)
}

/// The first `n` bytes of `bytes`, printable, for a message.
fn preview(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(n)]);
    let mut out: String = text.escape_debug().collect();
    if bytes.len() > n {
        out.push('…');
    }
    out
}

/// Reads and checks a checkpoint file and applies its journal; a missing file is the empty
/// checkpoint (nothing read yet). Tests and tools read the daemon's positions through this too.
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint, String> {
    Ok(read_with_journal(path)?.checkpoint)
}

/// The checkpoint file's path -> its journal's.
pub fn journal_path(path: &Path) -> PathBuf {
    path.with_extension("journal")
}

/// What [`read_with_journal`] found: the positions, and how the files stand for the next write.
struct Loaded {
    checkpoint: Checkpoint,
    /// The checkpoint as JSON: the next commit's changes are taken against it.
    value: serde_json::Map<String, serde_json::Value>,
    /// The sequence number of the last change applied (from the checkpoint or its journal).
    seq: u64,
    checkpoint_bytes: u64,
    /// Bytes of the journal that hold whole entries; a tail past them is a torn append.
    journal_good_bytes: u64,
}

/// The key the checkpoint file keeps the journal sequence it includes under.
const JOURNAL_SEQ: &str = "journal_seq";

fn read_with_journal(path: &Path) -> Result<Loaded, String> {
    let refuse = |e: String| {
        format!(
            "{}: refused: its content is not a checkpoint: {e}; {}",
            path.display(),
            CHECKPOINT_FILE.fix
        )
    };
    let (mut value, checkpoint_bytes) = match std::fs::read(path) {
        Ok(bytes) => {
            let body = unframe(&CHECKPOINT_FILE, path, &bytes)?;
            // The checksum held, so this is our own writing: a parse error is a bug or a
            // hand edit that also fixed up the checksum.
            let v: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| refuse(e.to_string()))?;
            let serde_json::Value::Object(map) = v else {
                return Err(refuse("not a JSON object".into()));
            };
            (map, bytes.len() as u64)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (to_map(&Checkpoint::default())?, 0),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let base_seq = value
        .remove(JOURNAL_SEQ)
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let mut seq = base_seq;
    let journal = journal_path(path);
    let bytes = match std::fs::read(&journal) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: {e}", journal.display())),
    };
    let mut at = 0usize;
    while at < bytes.len() {
        let Some(entry_len) = journal_entry_len(&bytes[at..]) else {
            break;
        };
        let entry = &bytes[at..at + entry_len];
        let body = match unframe(&JOURNAL_ENTRY, &journal, &entry[..entry_len - 1]) {
            Ok(body) => body,
            // The last entry may be torn by a crash during its append: it was never
            // committed. A damaged entry with whole entries after it is damage.
            Err(_) if at + entry_len >= bytes.len() => break,
            Err(e) => return Err(e),
        };
        let change: Change = serde_json::from_slice(body).map_err(|e| {
            format!(
                "{}: refused: entry at byte {at} is not a change: {e}; {}",
                journal.display(),
                JOURNAL_ENTRY.fix
            )
        })?;
        // Entries the checkpoint already includes (a crash between rewriting it and
        // emptying the journal) are skipped.
        if change.seq > base_seq {
            change.apply(&mut value);
            seq = change.seq;
        }
        at += entry_len;
    }
    let checkpoint = serde_json::from_value(serde_json::Value::Object(value.clone()))
        .map_err(|e| refuse(format!("with its journal applied: {e}")))?;
    Ok(Loaded {
        checkpoint,
        value,
        seq,
        checkpoint_bytes,
        journal_good_bytes: at as u64,
    })
}

/// The length of the journal entry `bytes` starts with (header line, body, newline), when
/// it is all there.
fn journal_entry_len(bytes: &[u8]) -> Option<usize> {
    let head_end = bytes[..bytes.len().min(MAX_HEADER)]
        .iter()
        .position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&bytes[..head_end]).ok()?;
    let len: usize = header
        .split(' ')
        .find_map(|f| f.strip_prefix("len="))?
        .parse()
        .ok()?;
    let total = head_end.checked_add(1)?.checked_add(len)?.checked_add(1)?;
    (total <= bytes.len()).then_some(total)
}

fn to_map(cp: &Checkpoint) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    match serde_json::to_value(cp).map_err(|e| e.to_string())? {
        serde_json::Value::Object(map) => Ok(map),
        _ => Err("a checkpoint is not a JSON object".into()),
    }
}

/// What changed between two checkpoints, field by field: in a map field (positions keyed by
/// stream, file or object) only the keys set or removed; any other field whole.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Change {
    seq: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    set: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    removed: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Change {
    fn between(
        seq: u64,
        old: &serde_json::Map<String, serde_json::Value>,
        new: &serde_json::Map<String, serde_json::Value>,
    ) -> Change {
        use serde_json::Value;
        let mut change = Change {
            seq,
            ..Change::default()
        };
        for (field, now) in new {
            match (old.get(field), now) {
                (Some(Value::Object(before)), Value::Object(after)) => {
                    let set: serde_json::Map<_, _> = after
                        .iter()
                        .filter(|(k, v)| before.get(*k) != Some(*v))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    let removed: Vec<String> = before
                        .keys()
                        .filter(|k| !after.contains_key(*k))
                        .cloned()
                        .collect();
                    if !set.is_empty() {
                        change.set.insert(field.clone(), set);
                    }
                    if !removed.is_empty() {
                        change.removed.insert(field.clone(), removed);
                    }
                }
                (before, now) if before != Some(now) => {
                    change.fields.insert(field.clone(), now.clone());
                }
                _ => {}
            }
        }
        change
    }

    fn apply(&self, to: &mut serde_json::Map<String, serde_json::Value>) {
        use serde_json::Value;
        for (field, v) in &self.fields {
            to.insert(field.clone(), v.clone());
        }
        for (field, set) in &self.set {
            let entry = to
                .entry(field.clone())
                .or_insert_with(|| Value::Object(Default::default()));
            if let Value::Object(map) = entry {
                for (k, v) in set {
                    map.insert(k.clone(), v.clone());
                }
            }
        }
        for (field, keys) in &self.removed {
            if let Some(Value::Object(map)) = to.get_mut(field) {
                for k in keys {
                    map.remove(k);
                }
            }
        }
    }
}

/// The journal may grow to the checkpoint's size, and at least this much, before the
/// checkpoint is rewritten: a small checkpoint is not rewritten at every commit.
const JOURNAL_MIN_BYTES: u64 = 64 * 1024;

/// A store's lock file in the state dir; its content is the holder's process id, for the
/// refusal. Per store, so that a file source and a CloudWatch source may share a state dir
/// while each runs only once.
pub fn lock_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.lock"))
}

pub struct CheckpointStore {
    path: PathBuf,
    /// The checkpoint as last made durable, and the journal's state: each commit appends what
    /// changed since.
    saved: serde_json::Map<String, serde_json::Value>,
    seq: u64,
    checkpoint_bytes: u64,
    journal_bytes: u64,
    /// Two snapshot files used in turn, generation by generation, so the one the committed
    /// checkpoint names is never the one being written.
    rules_paths: [PathBuf; 2],
    /// Open for the store's life: the exclusive lock on the state dir goes with it.
    lock: File,
    state_dir: PathBuf,
    name: String,
}

/// Replaces `path` with `bytes` so that a crash leaves the old or the new content.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    write_parts_atomically(path, &[bytes])
}

/// [`write_atomically`] for content given in parts, written one after the other.
fn write_parts_atomically(path: &Path, parts: &[&[u8]]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        for p in parts {
            f.write_all(p)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| format!("{}: {e}", path.display()))
}

/// Takes the store's exclusive lock, or says who holds it. The lock is advisory (flock) and
/// goes with the process, so a crashed daemon never leaves a stale lock behind.
fn lock_store(state_dir: &Path, name: &str) -> Result<File, String> {
    let path = lock_path(state_dir, name);
    let mut file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| format!("state dir {}: {}: {e}", state_dir.display(), path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            return Err(format!(
                "state dir {} is in use for `{name}`: another egresswatch process{holder} holds \
                 its lock {}; run each daemon once, or stop the other one first",
                state_dir.display(),
                path.display()
            ));
        }
        Err(TryLockError::Error(e)) => {
            return Err(format!(
                "state dir {}: cannot lock {}: {e}",
                state_dir.display(),
                path.display()
            ))
        }
    }
    // Only for the message a second daemon prints; the lock, not this, is what excludes, so
    // a failure to write it is no reason to stop.
    let _ = file
        .set_len(0)
        .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()));
    Ok(file)
}

/// Creates `state_dir` and proves this process can write in it (a file `.NAME.probe`,
/// removed again), without taking any store's lock.
pub fn probe_writable(state_dir: &Path, name: &str) -> Result<(), String> {
    std::fs::create_dir_all(state_dir)
        .map_err(|e| format!("state dir {}: {e}", state_dir.display()))?;
    let probe = state_dir.join(format!(".{name}.probe"));
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| {
            format!(
                "state dir {} is not writable by this process: {e} (systemd: StateDirectory=; \
                 containers: a volume the image's user 65532 owns)",
                state_dir.display()
            )
        })
}

impl CheckpointStore {
    /// Opens the store named `name` in `state_dir`, creating the dir, and takes the dir's
    /// exclusive lock for as long as the store lives.
    pub fn new(state_dir: &Path, name: &str) -> Result<Self, String> {
        // Found out now rather than at the first checkpoint, after work that would be lost.
        probe_writable(state_dir, name)?;
        let lock = lock_store(state_dir, name)?;
        Ok(CheckpointStore {
            path: state_dir.join(format!("{name}.checkpoint.json")),
            saved: to_map(&Checkpoint::default())?,
            seq: 0,
            checkpoint_bytes: 0,
            journal_bytes: 0,
            rules_paths: [0, 1].map(|slot| state_dir.join(format!("{name}.rules.{slot}.state"))),
            lock,
            state_dir: state_dir.to_path_buf(),
            name: name.to_string(),
        })
    }

    /// The lock is a file in the state dir: removed (the dir cleaned under the daemon), it
    /// no longer keeps a second daemon out, so it is made and taken again. Called before each
    /// checkpoint. True when it was; an error when another process took the dir meanwhile.
    pub fn relock_if_removed(&mut self, metrics: &crate::metrics::Metrics) -> Result<bool, String> {
        use std::os::unix::fs::MetadataExt;
        let path = lock_path(&self.state_dir, &self.name);
        let held = self.lock.metadata().map(|m| (m.dev(), m.ino())).ok();
        let on_disk = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
        if held.is_some() && held == on_disk {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.state_dir)
            .map_err(|e| format!("state dir {}: {e}", self.state_dir.display()))?;
        self.lock = lock_store(&self.state_dir, &self.name)?;
        crate::events::StateRepaired {
            store: "state_dir_lock",
            kind: "removed",
            count: 1,
            file: &path.display(),
            detail: &"the state dir's lock file was removed while the daemon ran; it is made and taken again, so a second daemon is still kept out",
        }
        .emit(metrics);
        Ok(true)
    }

    /// The committed positions: the checkpoint with its journal applied. A torn entry at the
    /// journal's end (a crash during its append, so never committed) is cut off here, so the
    /// next append follows whole entries.
    pub fn load(&mut self, metrics: &crate::metrics::Metrics) -> Result<Checkpoint, String> {
        let loaded = read_with_journal(&self.path)?;
        let journal = journal_path(&self.path);
        let on_disk = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
        if on_disk > loaded.journal_good_bytes {
            crate::events::StateRepaired {
                store: "checkpoint_journal",
                kind: "torn_write",
                count: 1,
                file: &journal.display(),
                detail: &format!(
                    "cutting off a journal entry of {} bytes a crash left half-written (never committed)",
                    on_disk - loaded.journal_good_bytes
                ),
            }
            .emit(metrics);
            File::options()
                .write(true)
                .open(&journal)
                .and_then(|f| {
                    f.set_len(loaded.journal_good_bytes)?;
                    f.sync_all()
                })
                .map_err(|e| format!("{}: {e}", journal.display()))?;
        }
        self.saved = loaded.value;
        self.seq = loaded.seq;
        self.checkpoint_bytes = loaded.checkpoint_bytes;
        self.journal_bytes = loaded.journal_good_bytes;
        Ok(loaded.checkpoint)
    }

    /// Commits `cp`: appends what changed since the last commit to the journal (a write as
    /// large as the change), or, once the journal has grown as large as the checkpoint,
    /// rewrites the checkpoint whole and empties the journal. Durable when it returns.
    pub fn save(&mut self, cp: &Checkpoint) -> Result<(), String> {
        let now = to_map(cp)?;
        let seq = self.seq.saturating_add(1);
        let change = Change::between(seq, &self.saved, &now);
        let body = serde_json::to_vec(&change).map_err(|e| e.to_string())?;
        let mut entry = frame(&JOURNAL_ENTRY, &body);
        entry.push(b'\n');
        let entry_bytes = entry.len() as u64;
        let limit = self.checkpoint_bytes.max(JOURNAL_MIN_BYTES);
        // A journal entry is a change against the checkpoint and the entries before it: if
        // either file was removed under the daemon, the whole checkpoint is written instead.
        let journal_len = std::fs::metadata(journal_path(&self.path)).map_or(0, |m| m.len());
        let removed = !self.path.exists() || journal_len < self.journal_bytes;
        if self.checkpoint_bytes == 0
            || removed
            || self.journal_bytes.saturating_add(entry_bytes) > limit
        {
            self.rewrite(now, seq)?;
        } else {
            self.append(&entry)?;
            self.journal_bytes = self.journal_bytes.saturating_add(entry_bytes);
            self.saved = now;
        }
        self.seq = seq;
        Ok(())
    }

    fn append(&self, entry: &[u8]) -> Result<(), String> {
        let journal = journal_path(&self.path);
        let created = self.journal_bytes == 0 && !journal.exists();
        let write = || -> std::io::Result<()> {
            let mut f = File::options().create(true).append(true).open(&journal)?;
            f.write_all(entry)?;
            f.sync_data()?;
            if created {
                if let Some(dir) = journal.parent() {
                    File::open(dir)?.sync_all()?;
                }
            }
            Ok(())
        };
        write().map_err(|e| format!("{}: {e}", journal.display()))
    }

    /// Writes the whole checkpoint (naming the last change it includes), then empties the
    /// journal: a crash in between leaves entries the checkpoint already includes, which
    /// readers skip.
    fn rewrite(
        &mut self,
        now: serde_json::Map<String, serde_json::Value>,
        seq: u64,
    ) -> Result<(), String> {
        let mut with_seq = now.clone();
        with_seq.insert(JOURNAL_SEQ.into(), seq.into());
        // Pretty: operators read this file to see where each stream stands.
        let body = serde_json::to_vec_pretty(&serde_json::Value::Object(with_seq))
            .map_err(|e| e.to_string())?;
        let framed = frame(&CHECKPOINT_FILE, &body);
        write_atomically(&self.path, &framed)?;
        self.checkpoint_bytes = framed.len() as u64;
        self.saved = now;
        let journal = journal_path(&self.path);
        if self.journal_bytes > 0 || journal.exists() {
            File::create(&journal)
                .and_then(|f| f.sync_all())
                .map_err(|e| format!("{}: {e}", journal.display()))?;
        }
        self.journal_bytes = 0;
        Ok(())
    }

    /// Bytes written for the positions: the checkpoint and its journal.
    pub fn journal_bytes(&self) -> u64 {
        self.journal_bytes
    }

    /// The rules' snapshot of `generation`, checked against its header; None when there is
    /// none of that generation (never saved, or a crash before its checkpoint was).
    pub fn load_rules(&self, generation: u64) -> Result<Option<Vec<u8>>, String> {
        let path = self.rules_path(generation);
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let body = unframe(&RULES_STATE_FILE, path, &bytes)?;
        let (stamp, snapshot) = body.split_at_checked(8).ok_or_else(|| {
            format!(
                "{}: refused: too short; {}",
                path.display(),
                RULES_STATE_FILE.fix
            )
        })?;
        let mut g = [0u8; 8];
        g.copy_from_slice(stamp);
        if u64::from_le_bytes(g) != generation {
            return Ok(None);
        }
        Ok(Some(snapshot.to_vec()))
    }

    /// Saves the rules' snapshot of `generation`; the checkpoint naming it is saved after.
    pub fn save_rules(&self, generation: u64, snapshot: &[u8]) -> Result<(), String> {
        // The body is the generation then the snapshot, checksummed and written in place:
        // a snapshot can be tens of megabytes, and a copy of it is that much more memory.
        let stamp = generation.to_le_bytes();
        let parts: [&[u8]; 2] = [&stamp, snapshot];
        let header = frame_header(&RULES_STATE_FILE, &parts);
        write_parts_atomically(
            self.rules_path(generation),
            &[header.as_bytes(), &stamp, snapshot],
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rules_path(&self, generation: u64) -> &Path {
        &self.rules_paths[(generation % 2) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ew-cp-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn round_trip_and_corruption_named() {
        let dir = dir("rt");
        let mut store = CheckpointStore::new(&dir, "t").unwrap();
        assert_eq!(
            store.load(&Default::default()).unwrap(),
            Checkpoint::default()
        );
        let mut cp = Checkpoint::default();
        cp.streams.insert("eni-1-all".into(), "f/123".into());
        cp.records_committed = 42;
        store.save(&cp).unwrap();
        assert_eq!(store.load(&Default::default()).unwrap(), cp);
        // Readable: a header line, then the JSON.
        let text = std::fs::read_to_string(dir.join("t.checkpoint.json")).unwrap();
        let (header, json) = text.split_once('\n').unwrap();
        assert!(
            header.starts_with("egresswatch-checkpoint v2 len="),
            "{header}"
        );
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["records_committed"], 42);
        assert_eq!(v["streams"]["eni-1-all"], "f/123");
        // A body that is not JSON under a header that checks out: refused, fix named.
        std::fs::write(
            dir.join("t.checkpoint.json"),
            frame(&CHECKPOINT_FILE, b"{not json"),
        )
        .unwrap();
        let err = store.load(&Default::default()).unwrap_err();
        assert!(
            err.contains("t.checkpoint.json: refused: its content is not a checkpoint")
                && err.contains("move it away to start over"),
            "{err}"
        );
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn many_streams(n: usize) -> Checkpoint {
        let mut cp = Checkpoint::default();
        for i in 0..n {
            let stream = format!("eni-{i:017x}-all");
            cp.streams.insert(stream.clone(), format!("f/3{i:055}/s"));
            cp.stream_created
                .insert(stream, 1_764_547_200_000 + i as i64);
        }
        cp
    }

    #[test]
    fn a_commit_writes_what_changed_and_the_checkpoint_is_rewritten_once_the_journal_is_as_large() {
        let dir = dir("journal");
        let mut store = CheckpointStore::new(&dir, "t").unwrap();
        let mut cp = many_streams(2_000);
        // The first commit writes the checkpoint whole.
        store.save(&cp).unwrap();
        let whole = std::fs::metadata(store.path()).unwrap().len();
        assert!(whole > 200_000, "{whole}");
        let journal = journal_path(store.path());
        // Each later commit moves three streams: the journal grows by about their size.
        let mut commits = 0u64;
        let grown_to = loop {
            let before = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
            for s in 0..3 {
                let key = format!("eni-{:017x}-all", (commits * 3 + s) % 2_000);
                cp.streams.insert(key, format!("f/4{commits:055}/s"));
            }
            cp.records_committed += 100;
            cp.generation += 1;
            store.save(&cp).unwrap();
            commits += 1;
            let after = std::fs::metadata(&journal).unwrap().len();
            if after < before {
                break before;
            }
            assert!(
                after - before < 700,
                "{} bytes for three streams",
                after - before
            );
            assert_eq!(std::fs::metadata(store.path()).unwrap().len(), whole);
        };
        // Rewritten once the journal reached the checkpoint's size, not before.
        assert!(
            grown_to + 700 > whole && grown_to <= whole,
            "{grown_to} of {whole}"
        );
        assert!(commits > 300, "{commits}");
        assert_eq!(read_checkpoint(store.path()).unwrap(), cp);
        // A removed stream (aged out of retention) is journalled as removed.
        cp.streams.remove("eni-00000000000000000-all");
        cp.stream_created.remove("eni-00000000000000000-all");
        store.save(&cp).unwrap();
        drop(store);
        let mut reopened = CheckpointStore::new(&dir, "t").unwrap();
        assert_eq!(reopened.load(&Default::default()).unwrap(), cp);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_checkpoint_or_journal_removed_under_the_store_is_written_whole_again() {
        let dir = dir("removed");
        let mut store = CheckpointStore::new(&dir, "t").unwrap();
        let mut cp = many_streams(10);
        store.save(&cp).unwrap();
        // Two journalled commits, each moving another stream.
        cp.streams.insert("eni-a".into(), "f/a".into());
        store.save(&cp).unwrap();
        cp.streams.insert("eni-b".into(), "f/b".into());
        store.save(&cp).unwrap();
        // The journal goes: the next commit's change alone would lose eni-a.
        std::fs::remove_file(journal_path(store.path())).unwrap();
        cp.streams.insert("eni-c".into(), "f/c".into());
        store.save(&cp).unwrap();
        assert_eq!(read_with_journal(store.path()).unwrap().checkpoint, cp);
        // The whole dir goes: the next commit writes the checkpoint whole where it was.
        drop(store);
        let mut store = CheckpointStore::new(&dir, "t").unwrap();
        store.load(&Default::default()).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        cp.streams.insert("eni-d".into(), "f/d".into());
        store.save(&cp).unwrap();
        drop(store);
        let mut reopened = CheckpointStore::new(&dir, "t").unwrap();
        assert_eq!(reopened.load(&Default::default()).unwrap(), cp);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_last_entry_is_cut_off_and_a_damaged_middle_one_refused() {
        let dir = dir("torn");
        let mut store = CheckpointStore::new(&dir, "t").unwrap();
        let mut cp = many_streams(10);
        store.save(&cp).unwrap();
        cp.streams.insert("eni-1".into(), "f/1".into());
        store.save(&cp).unwrap();
        let committed = cp.clone();
        cp.streams.insert("eni-2".into(), "f/2".into());
        store.save(&cp).unwrap();
        let journal = journal_path(store.path());
        let whole = std::fs::read(&journal).unwrap();
        let first_len = journal_entry_len(&whole).unwrap();
        // A crash during the second append: half of it is there.
        std::fs::write(&journal, &whole[..whole.len() - 10]).unwrap();
        drop(store);
        let mut store = CheckpointStore::new(&dir, "t").unwrap();
        let metrics = crate::metrics::Metrics::new();
        assert_eq!(store.load(&metrics).unwrap(), committed);
        assert_eq!(std::fs::metadata(&journal).unwrap().len(), first_len as u64);
        let repairs = |store, kind| {
            metrics
                .state_repairs
                .with_label_values(&[store, kind])
                .get()
        };
        assert_eq!(repairs("checkpoint_journal", "torn_write"), 1);
        // The next commit follows the whole entries.
        store.save(&cp).unwrap();
        assert_eq!(read_checkpoint(store.path()).unwrap(), cp);
        // One byte flipped in the first of two entries: damage, named, not skipped.
        let mut bytes = std::fs::read(&journal).unwrap();
        bytes[first_len - 3] ^= 0x20;
        std::fs::write(&journal, &bytes).unwrap();
        let e = read_checkpoint(store.path()).unwrap_err();
        assert!(
            e.starts_with(&format!("{}: refused:", journal.display()))
                && e.contains("move the journal away"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn entries_a_rewritten_checkpoint_already_holds_are_skipped() {
        let dir = dir("skip");
        let mut store = CheckpointStore::new(&dir, "t").unwrap();
        let mut cp = many_streams(3);
        store.save(&cp).unwrap();
        cp.streams.insert("eni-a".into(), "f/old".into());
        store.save(&cp).unwrap();
        let journal = journal_path(store.path());
        let stale = std::fs::read(&journal).unwrap();
        // The checkpoint rewritten whole with a newer position, then a crash before the
        // journal was emptied: its old entry must not move the stream back.
        cp.streams.insert("eni-a".into(), "f/new".into());
        store.journal_bytes = JOURNAL_MIN_BYTES;
        store.save(&cp).unwrap();
        std::fs::write(&journal, &stale).unwrap();
        assert_eq!(read_checkpoint(store.path()).unwrap(), cp);
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

    #[test]
    fn a_second_store_on_the_same_state_dir_is_refused_until_the_first_is_gone() {
        let dir = dir("lock");
        let first = CheckpointStore::new(&dir, "cloudwatch").unwrap();
        let err = CheckpointStore::new(&dir, "cloudwatch").err().unwrap();
        assert_eq!(
            err,
            format!(
                "state dir {} is in use for `cloudwatch`: another egresswatch process (pid {}) \
                 holds its lock {}; run each daemon once, or stop the other one first",
                dir.display(),
                std::process::id(),
                lock_path(&dir, "cloudwatch").display()
            )
        );
        // Another store (the file source's) may share the dir.
        let other = CheckpointStore::new(&dir, "file").unwrap();
        drop(first);
        // Released with the store (as with the process, however it ends).
        let mut again = CheckpointStore::new(&dir, "cloudwatch").unwrap();
        assert_eq!(
            again.load(&Default::default()).unwrap(),
            Checkpoint::default()
        );
        drop((again, other));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rules_snapshots_alternate_and_only_the_named_generation_is_restored() {
        let dir = dir("generations");
        let store = CheckpointStore::new(&dir, "t").unwrap();
        assert_eq!(store.load_rules(0).unwrap(), None);
        store.save_rules(1, b"first").unwrap();
        store.save_rules(2, b"second").unwrap();
        assert_eq!(store.load_rules(1).unwrap().unwrap(), b"first");
        assert_eq!(store.load_rules(2).unwrap().unwrap(), b"second");
        // Generation 3 overwrites 1's slot: a checkpoint still naming 1 finds no snapshot of
        // its own rather than a newer one.
        store.save_rules(3, b"third").unwrap();
        assert_eq!(store.load_rules(1).unwrap(), None);
        assert_ne!(store.rules_path(2), store.rules_path(3));
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn frame_round_trips_any_body() {
        let path = Path::new("/state/x");
        for body in [&b""[..], b"{}", b"EWSTATE1\x00\xff\n\n", &[7u8; 10_000]] {
            let framed = frame(&RULES_STATE_FILE, body);
            assert_eq!(unframe(&RULES_STATE_FILE, path, &framed).unwrap(), body);
        }
        let framed = frame(&CHECKPOINT_FILE, b"{\"a\":1}");
        assert_eq!(
            std::str::from_utf8(&framed).unwrap(),
            format!(
                "egresswatch-checkpoint v2 len=7 crc32={:08x}\n{{\"a\":1}}",
                crc32fast::hash(b"{\"a\":1}")
            )
        );
    }

    /// A deterministic stream of bytes (xorshift), for corrupting files the same way each run.
    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn damaged_truncated_and_foreign_files_are_refused_with_the_fix() {
        let path = Path::new("/state/cloudwatch.rules.state");
        let body = noise(1, 4_000);
        let good = frame(&RULES_STATE_FILE, &body);
        let refused = |bytes: &[u8]| unframe(&RULES_STATE_FILE, path, bytes).unwrap_err();
        let fix = "move it away to start over; the rules then learn afresh";
        let prefix = "/state/cloudwatch.rules.state: refused: ";

        // One flipped bit anywhere in the body.
        for at in [0, 1, 1_999, 3_999] {
            let mut bad = good.clone();
            let header_len = good.len() - body.len();
            bad[header_len + at] ^= 0x10;
            let e = refused(&bad);
            assert!(
                e.starts_with(prefix) && e.contains("fails the checksum") && e.contains(fix),
                "{e}"
            );
        }
        // Random bytes after the header, same length: the checksum catches them.
        let mut random = good[..good.len() - body.len()].to_vec();
        random.extend(noise(2, 4_000));
        assert!(refused(&random).contains("fails the checksum"));
        // Random bytes after the old magic, as a version-1 snapshot looked: no header.
        let mut old = b"EWSTATE1".to_vec();
        old.extend(noise(3, 500));
        let e = refused(&old);
        assert!(
            e.starts_with(prefix)
                && e.contains(
                    "it does not start with an `egresswatch-rules-state vN` header line \
                     (it starts with \"EWSTATE1"
                )
                && e.contains("older than format version 2")
                && e.contains(fix),
            "{e}"
        );
        // Cut short at every kind of place: in the body, right after the header, in the header.
        let e = refused(&good[..good.len() - 1]);
        assert!(
            e.contains("it is truncated: 3999 of the 4000 bytes its header line counts are there"),
            "{e}"
        );
        let header_len = good.len() - body.len();
        assert!(refused(&good[..header_len]).contains("truncated: 0 of the 4000 bytes"));
        assert!(refused(&good[..10]).contains("does not start with"));
        assert!(refused(b"").contains("does not start with"));
        // Appended to.
        let mut longer = good.clone();
        longer.extend_from_slice(b"xyz");
        assert!(refused(&longer).contains("it has 3 bytes past the 4000 its header line counts"));
        // Another version, another kind, a damaged header.
        let v3 = String::from_utf8_lossy(&good).replacen(" v2 ", " v3 ", 1);
        let e = refused(v3.as_bytes());
        assert!(
            e.contains("it is format version 3; this egresswatch reads version 2")
                && e.contains(fix),
            "{e}"
        );
        let v1 = frame(
            &FileKind {
                version: 1,
                ..RULES_STATE_FILE
            },
            &body,
        );
        assert!(refused(&v1).contains("it is format version 1; this egresswatch reads version 2"));
        let e = refused(&frame(&CHECKPOINT_FILE, &body));
        assert!(
            e.contains("it is an egresswatch-checkpoint file, not an egresswatch-rules-state file"),
            "{e}"
        );
        let mut bad_crc = good.clone();
        let at = good.windows(6).position(|w| w == b"crc32=").unwrap() + 6;
        bad_crc[at] = b'z';
        assert!(refused(&bad_crc).contains("its header line \"egresswatch-rules-state v2 len=4000"));
    }

    #[test]
    fn damaged_files_in_the_store_are_refused_naming_them() {
        let dir = dir("damaged");
        let mut store = CheckpointStore::new(&dir, "t").unwrap();
        // A version-1 checkpoint: plain JSON without a header.
        std::fs::write(
            store.path(),
            br#"{"streams":{"eni-1-all":"f/1"},"records_committed":3}"#,
        )
        .unwrap();
        let e = store.load(&Default::default()).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "{}: refused: it does not start with an `egresswatch-checkpoint vN` header line",
                store.path().display()
            )) && e.contains("re-reads every log stream from its oldest retained event"),
            "{e}"
        );
        // A saved snapshot with one byte flipped.
        store
            .save_rules(4, b"EWSTATE1 what the rules learnt")
            .unwrap();
        assert_eq!(
            store.load_rules(4).unwrap().unwrap(),
            b"EWSTATE1 what the rules learnt"
        );
        let mut bytes = std::fs::read(store.rules_path(4)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(store.rules_path(4), &bytes).unwrap();
        let e = store.load_rules(4).unwrap_err();
        assert!(
            e.starts_with(&format!("{}: refused: ", store.rules_path(4).display()))
                && e.contains("fails the checksum"),
            "{e}"
        );
        drop(store);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
