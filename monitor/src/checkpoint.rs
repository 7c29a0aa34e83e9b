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

use std::collections::BTreeMap;
use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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

/// Reads and checks a checkpoint file; a missing file is the empty checkpoint (nothing read
/// yet). Tests and tools read the daemon's positions through this too.
pub fn read_checkpoint(path: &Path) -> Result<Checkpoint, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let body = unframe(&CHECKPOINT_FILE, path, &bytes)?;
            // The checksum held, so this is our own writing: a parse error is a bug or a
            // hand edit that also fixed up the checksum.
            serde_json::from_slice(body).map_err(|e| {
                format!(
                    "{}: refused: its content is not a checkpoint: {e}; {}",
                    path.display(),
                    CHECKPOINT_FILE.fix
                )
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Checkpoint::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// A store's lock file in the state dir; its content is the holder's process id, for the
/// refusal. Per store, so that a file source and a CloudWatch source may share a state dir
/// while each runs only once.
pub fn lock_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(format!("{name}.lock"))
}

pub struct CheckpointStore {
    path: PathBuf,
    /// Two snapshot files used in turn, generation by generation, so the one the committed
    /// checkpoint names is never the one being written.
    rules_paths: [PathBuf; 2],
    /// Open for the store's life: the exclusive lock on the state dir goes with it.
    _lock: File,
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

impl CheckpointStore {
    /// Opens the store named `name` in `state_dir`, creating the dir, and takes the dir's
    /// exclusive lock for as long as the store lives.
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
        let lock = lock_store(state_dir, name)?;
        Ok(CheckpointStore {
            path: state_dir.join(format!("{name}.checkpoint.json")),
            rules_paths: [0, 1].map(|slot| state_dir.join(format!("{name}.rules.{slot}.state"))),
            _lock: lock,
        })
    }

    pub fn load(&self) -> Result<Checkpoint, String> {
        read_checkpoint(&self.path)
    }

    pub fn save(&self, cp: &Checkpoint) -> Result<(), String> {
        // Pretty: operators read this file to see where each stream stands.
        let body = serde_json::to_vec_pretty(cp).map_err(|e| e.to_string())?;
        write_atomically(&self.path, &frame(&CHECKPOINT_FILE, &body))
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
        let store = CheckpointStore::new(&dir, "t").unwrap();
        assert_eq!(store.load().unwrap(), Checkpoint::default());
        let mut cp = Checkpoint::default();
        cp.streams.insert("eni-1-all".into(), "f/123".into());
        cp.records_committed = 42;
        store.save(&cp).unwrap();
        assert_eq!(store.load().unwrap(), cp);
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
        let err = store.load().unwrap_err();
        assert!(
            err.contains("t.checkpoint.json: refused: its content is not a checkpoint")
                && err.contains("move it away to start over"),
            "{err}"
        );
        drop(store);
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
        let again = CheckpointStore::new(&dir, "cloudwatch").unwrap();
        assert_eq!(again.load().unwrap(), Checkpoint::default());
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
        let store = CheckpointStore::new(&dir, "t").unwrap();
        // A version-1 checkpoint: plain JSON without a header.
        std::fs::write(
            store.path(),
            br#"{"streams":{"eni-1-all":"f/1"},"records_committed":3}"#,
        )
        .unwrap();
        let e = store.load().unwrap_err();
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
