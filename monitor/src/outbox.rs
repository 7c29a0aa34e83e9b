//! The alert outbox: an append-only log of alerts (and of the running counts of folded
//! floods) in the state dir, between the router and the sinks. A batch's alerts are written
//! and fsync'd before the source's position moves past the batch, so no unclean stop can
//! lose an alert that was decided; each sink delivers from here and records what it has
//! acknowledged, so what a crash interrupts is sent again at the next start.
//!
//! On disk: segment files `NNNNNNNNNNNNNNNNNNNN.log`, named by their first sequence number,
//! one entry per line as `CRC32(hex) JSON`. A line cut short by a crash fails its checksum and
//! is cut off at open; it was never committed, and the batch it belonged to is read again.
//! The outbox is bounded by bytes and by age: past either, the oldest segment goes, and the
//! alerts in it that a sink had not delivered are counted as dropped for that sink.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::alert::{Alert, Decided, Repeat, Tally};
use crate::events::Event;

/// One line of the outbox.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u64,
    /// Wall-clock seconds when it was written (the age bound is in wall time).
    pub written: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert: Option<Alert>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tally: Option<Tally>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<Repeat>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_age_seconds: u64,
    pub segment_bytes: u64,
}

struct Segment {
    first_seq: u64,
    /// Last sequence number in the segment (first_seq - 1 while empty).
    last_seq: u64,
    path: PathBuf,
    bytes: u64,
    newest_written: u64,
    newest_event: u64,
}

pub struct Outbox {
    dir: PathBuf,
    segments: VecDeque<Segment>,
    active: File,
    next_seq: u64,
    limits: Limits,
}

/// What was found at open.
#[derive(Debug, Default)]
pub struct Recovered {
    pub entries: Vec<Entry>,
    /// Bytes of an incomplete last line that were cut off (a write a crash interrupted).
    pub torn_bytes: u64,
    /// Lines inside the log that failed their checksum or did not parse, skipped.
    pub corrupt_lines: u64,
    /// Where the first of them was (`file:line`).
    pub first_corrupt: Option<String>,
}

/// Segments removed to stay within the limits.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Trimmed {
    /// Every entry below this sequence number is gone, delivered or not.
    pub gone_below: u64,
    pub segments: usize,
    pub forced: bool,
    /// A segment that could not be removed (trimming stops there until it can).
    pub remove_error: Option<String>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.log"))
}

fn encode(entry: &Entry) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(entry).map_err(|e| format!("outbox entry: {e}"))?;
    let mut line = format!("{:08x} ", crc32fast::hash(&json)).into_bytes();
    line.extend_from_slice(&json);
    line.push(b'\n');
    Ok(line)
}

fn decode(line: &[u8]) -> Option<Entry> {
    let (crc, json) = (line.get(..8)?, line.get(9..)?);
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    if line.get(8) != Some(&b' ') || crc32fast::hash(json) != crc {
        return None;
    }
    serde_json::from_slice(json).ok()
}

fn event_time(e: &Entry) -> u64 {
    e.alert
        .as_ref()
        .map(|a| a.finding.last_seen)
        .or(e.tally.as_ref().map(|t| t.last_seen))
        .unwrap_or(0)
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`, reading back every entry it holds.
    pub fn open(dir: &Path, limits: Limits) -> Result<(Outbox, Recovered), String> {
        let err = |e: std::io::Error| format!("outbox {}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut names: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(err)?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let path = e.path();
                let stem = path.file_name()?.to_str()?.strip_suffix(".log")?;
                Some((stem.parse::<u64>().ok()?, path))
            })
            .collect();
        names.sort();
        let mut recovered = Recovered::default();
        let mut segments = VecDeque::new();
        let mut next_seq = 1u64;
        let count = names.len();
        for (i, (first_seq, path)) in names.into_iter().enumerate() {
            let last = i + 1 == count;
            // Segments are bounded (at most 16 MiB), so each is read whole.
            let bytes = std::fs::read(&path).map_err(err)?;
            let mut seg = Segment {
                first_seq,
                last_seq: first_seq.saturating_sub(1),
                path: path.clone(),
                bytes: bytes.len() as u64,
                newest_written: 0,
                newest_event: 0,
            };
            let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
            let mut good_end = 0usize;
            for (n, line) in lines.iter().enumerate() {
                let entry = line.strip_suffix(b"\n").and_then(decode);
                match entry {
                    Some(e) => {
                        good_end += line.len();
                        seg.last_seq = seg.last_seq.max(e.seq);
                        seg.newest_written = seg.newest_written.max(e.written);
                        seg.newest_event = seg.newest_event.max(event_time(&e));
                        next_seq = next_seq.max(e.seq.saturating_add(1));
                        recovered.entries.push(e);
                    }
                    // Only the very end of the log can be a write a crash interrupted.
                    None if last && n + 1 == lines.len() => {
                        recovered.torn_bytes = line.len() as u64;
                        let f = OpenOptions::new().write(true).open(&path).map_err(err)?;
                        f.set_len(good_end as u64).map_err(err)?;
                        f.sync_all().map_err(err)?;
                        seg.bytes = good_end as u64;
                    }
                    None => {
                        good_end += line.len();
                        recovered.corrupt_lines += 1;
                        recovered
                            .first_corrupt
                            .get_or_insert_with(|| format!("{}:{}", path.display(), n + 1));
                    }
                }
            }
            segments.push_back(seg);
        }
        if segments.is_empty() {
            segments.push_back(Segment {
                first_seq: next_seq,
                last_seq: next_seq - 1,
                path: segment_path(dir, next_seq),
                bytes: 0,
                newest_written: 0,
                newest_event: 0,
            });
        }
        let active_path = segments.back().map(|s| s.path.clone()).unwrap_or_default();
        let active = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&active_path)
            .map_err(err)?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
        Ok((
            Outbox {
                dir: dir.to_path_buf(),
                segments,
                active,
                next_seq,
                limits,
            },
            recovered,
        ))
    }

    /// The sequence number the next entry will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Writes what the router decided and makes it durable (fsync). On failure nothing of it
    /// counts as written: the file is cut back to where it was, and the caller keeps the
    /// batch to try again. Returns the entries written, with their sequence numbers.
    /// Whether the active segment is still where it was opened: something may remove the
    /// state dir (or the outbox in it) from under a running daemon, and appends to an
    /// unlinked file reach no disk a restart can read. When it is gone the outbox is made
    /// again, empty, and the number of entries whose segments went with it is returned.
    pub fn recreate_if_removed(&mut self) -> Result<Option<u64>, String> {
        let Some(active) = self.segments.back() else {
            return Ok(None);
        };
        if active.path.exists() {
            return Ok(None);
        }
        let gone: u64 = self
            .segments
            .iter()
            .map(|s| s.last_seq.saturating_add(1).saturating_sub(s.first_seq))
            .sum();
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("outbox {}: {e}", self.dir.display()))?;
        self.segments.clear();
        self.roll()?;
        Ok(Some(gone))
    }

    pub fn append(&mut self, decided: &Decided) -> Result<Vec<Entry>, String> {
        if decided.is_empty() {
            return Ok(Vec::new());
        }
        let written = now();
        let mut seq = self.next_seq;
        let mut entries = Vec::with_capacity(
            decided.alerts.len() + decided.tallies.len() + decided.repeats.len(),
        );
        let mut push = |alert: Option<Alert>, tally: Option<Tally>, repeat: Option<Repeat>| {
            entries.push(Entry {
                seq,
                written,
                alert,
                tally,
                repeat,
            });
            seq += 1;
        };
        for t in &decided.tallies {
            push(None, Some(t.clone()), None);
        }
        for r in &decided.repeats {
            push(None, None, Some(r.clone()));
        }
        for a in &decided.alerts {
            push(Some(a.clone()), None, None);
        }
        let mut bytes = Vec::new();
        for e in &entries {
            bytes.extend(encode(e)?);
        }
        let seg = self
            .segments
            .back_mut()
            .ok_or("outbox has no active segment")?;
        let before = seg.bytes;
        let result = self
            .active
            .write_all(&bytes)
            .and_then(|()| self.active.sync_data());
        if let Err(e) = result {
            // Leave no half-written entry behind for the next open to trip over.
            let _ = self.active.set_len(before);
            return Err(format!("outbox {}: {e}", seg.path.display()));
        }
        seg.bytes = before.saturating_add(bytes.len() as u64);
        seg.last_seq = seq - 1;
        seg.newest_written = written;
        seg.newest_event = seg
            .newest_event
            .max(entries.iter().map(event_time).max().unwrap_or(0));
        self.next_seq = seq;
        if seg.bytes >= self.limits.segment_bytes {
            self.roll()?;
        }
        Ok(entries)
    }

    fn roll(&mut self) -> Result<(), String> {
        let path = segment_path(&self.dir, self.next_seq);
        let err = |e: std::io::Error| format!("outbox {}: {e}", path.display());
        self.active = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(err)?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        self.segments.push_back(Segment {
            first_seq: self.next_seq,
            last_seq: self.next_seq - 1,
            path,
            bytes: 0,
            newest_written: 0,
            newest_event: 0,
        });
        Ok(())
    }

    /// Removes old segments. One every sink has delivered goes once its newest event is
    /// older than `keep_events_after` (the router rebuilds its dedupe memory from what is
    /// kept); past the byte or age bound the oldest goes whatever was delivered.
    pub fn trim(&mut self, delivered_below: u64, keep_events_after: u64) -> Trimmed {
        let mut trimmed = Trimmed {
            gone_below: self.segments.front().map_or(1, |s| s.first_seq),
            ..Trimmed::default()
        };
        let oldest_allowed = now().saturating_sub(self.limits.max_age_seconds);
        while self.segments.len() > 1 {
            let total = self.bytes();
            let Some(seg) = self.segments.front() else {
                break;
            };
            let done = seg.last_seq < delivered_below && seg.newest_event < keep_events_after;
            let forced = total > self.limits.max_bytes
                || (seg.newest_written > 0 && seg.newest_written < oldest_allowed);
            if !done && !forced {
                break;
            }
            if let Err(e) = std::fs::remove_file(&seg.path) {
                trimmed.remove_error = Some(format!("{}: {e}", seg.path.display()));
                break;
            }
            trimmed.forced |= forced && !done;
            trimmed.segments += 1;
            trimmed.gone_below = seg.last_seq.saturating_add(1);
            self.segments.pop_front();
        }
        trimmed
    }
}

/// The alert path after the rules, as the daemon drives it: each batch's decisions go to the
/// outbox, are made durable and are handed to the sinks; only then may a checkpoint move the
/// source's positions past the batch. What a failed write could not write is kept here and
/// tried again, so a full disk delays alerts and never loses them.
pub struct AlertLog {
    outbox: Outbox,
    delivery: crate::sink::Delivery,
    /// Ids of alerts written after the last checkpoint, before a restart: found again while
    /// the source re-reads, and not written again.
    written_after_checkpoint: std::collections::HashSet<String>,
    unwritten: Decided,
    dedupe_window: u64,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
}

impl AlertLog {
    /// Opens the outbox under `state_dir` (one per checkpoint name: a file source and a CloudWatch
    /// source keep their own), rebuilds the router's memory from it and starts the sinks.
    pub fn open(
        state_dir: &Path,
        name: &str,
        config: &crate::config::Alerts,
        sinks: Vec<Box<dyn crate::sink::Sink>>,
        router: &mut crate::alert::Router,
        committed_seq: u64,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> Result<AlertLog, String> {
        let dir = state_dir.join(format!("{name}.outbox"));
        let limits = Limits {
            max_bytes: config.outbox_max_bytes,
            max_age_seconds: config.outbox_max_age_seconds,
            segment_bytes: (config.outbox_max_bytes / 16).clamp(4_096, 16 << 20),
        };
        let (outbox, recovered) = Outbox::open(&dir, limits)?;
        if recovered.torn_bytes > 0 {
            crate::events::StateRepaired {
                store: "outbox",
                kind: "torn_write",
                count: 1,
                file: &dir.display(),
                detail: &format!(
                    "the outbox ended in a write a crash interrupted: {} bytes cut off (its batch is read again)",
                    recovered.torn_bytes
                ),
            }
            .emit(&metrics);
        }
        if recovered.corrupt_lines > 0 {
            crate::events::StateRepaired {
                store: "outbox",
                kind: "corrupt_line",
                count: recovered.corrupt_lines,
                file: &dir.display(),
                detail: &format!(
                    "{} outbox line(s) failed their checksum and were skipped, the first at {}",
                    recovered.corrupt_lines,
                    recovered.first_corrupt.as_deref().unwrap_or("?")
                ),
            }
            .emit(&metrics);
        }
        // The router resumes as it was at the checkpoint. What it decided after that came from
        // records the source reads again: those alerts are made again with the same ids and
        // are not written twice; the running counts of folds are made again from the records.
        let (committed, tail): (Vec<&Entry>, Vec<&Entry>) = recovered
            .entries
            .iter()
            .partition(|e| e.seq < committed_seq);
        let alerts: Vec<&Alert> = committed.iter().filter_map(|e| e.alert.as_ref()).collect();
        let tallies: Vec<&Tally> = committed.iter().filter_map(|e| e.tally.as_ref()).collect();
        let repeats: Vec<&Repeat> = committed.iter().filter_map(|e| e.repeat.as_ref()).collect();
        router.restore(&alerts, &tallies, &repeats);
        let written_after_checkpoint = tail
            .iter()
            .filter_map(|e| e.alert.as_ref().map(Alert::delivery_key))
            .collect();
        let delivery = crate::sink::Delivery::start(
            sinks,
            &dir.join("acks"),
            &recovered.entries,
            outbox.next_seq(),
            metrics.clone(),
        )?;
        metrics.outbox_bytes.set(outbox.bytes() as i64);
        Ok(AlertLog {
            outbox,
            delivery,
            written_after_checkpoint,
            unwritten: Decided::default(),
            dedupe_window: config.dedupe_window_seconds,
            metrics,
        })
    }

    /// Writes what the router decided for a batch and makes it durable (fsync), then hands
    /// the new alerts to the sinks. On an error nothing is lost: the decisions wait here;
    /// call again. A checkpoint must not pass the batch until this has succeeded.
    pub fn write(&mut self, router: &mut crate::alert::Router) -> Result<(), String> {
        let mut decided = router.take();
        if !self.written_after_checkpoint.is_empty() {
            decided
                .alerts
                .retain(|a| !self.written_after_checkpoint.remove(&a.delivery_key()));
        }
        self.unwritten.alerts.append(&mut decided.alerts);
        self.unwritten.tallies.append(&mut decided.tallies);
        self.unwritten.repeats.append(&mut decided.repeats);
        if let Some(gone) = self.outbox.recreate_if_removed()? {
            crate::events::StateRepaired {
                store: "outbox",
                kind: "removed",
                count: gone,
                file: &self.outbox.dir.display(),
                detail: &format!(
                    "the outbox was removed while the daemon ran and is made again; {gone} entry(ies) it held are gone from disk: those not yet delivered are still delivered by this run, but a restart before then cannot recover them"
                ),
            }
            .emit(&self.metrics);
        }
        let entries = match self.outbox.append(&self.unwritten) {
            Ok(entries) => entries,
            Err(e) => {
                crate::events::StateWriteFailed {
                    store: "outbox",
                    error: &e,
                    consequence: "the batch's alerts wait in memory and the write is tried again; the read position does not move past them",
                }
                .emit(&self.metrics);
                return Err(e);
            }
        };
        self.unwritten = Decided::default();
        self.delivery.push(&entries);
        let keep_after = router.watermark().saturating_sub(self.dedupe_window);
        let trimmed = self.outbox.trim(
            self.delivery.delivered_below(self.outbox.next_seq()),
            keep_after,
        );
        if trimmed.forced {
            self.delivery.forget_below(trimmed.gone_below);
        }
        if let Some(error) = &trimmed.remove_error {
            crate::events::StateWriteFailed {
                store: "outbox",
                error,
                consequence: "cannot remove an outbox segment; the outbox grows until it can",
            }
            .emit(&self.metrics);
        }
        self.metrics.outbox_bytes.set(self.outbox.bytes() as i64);
        Ok(())
    }

    /// The outbox's next sequence number: what a checkpoint records.
    pub fn next_seq(&self) -> u64 {
        self.outbox.next_seq()
    }

    /// Whether decisions are waiting for a commit that failed.
    pub fn has_unwritten(&self) -> bool {
        !self.unwritten.is_empty()
    }

    pub async fn shutdown(self, grace: std::time::Duration) {
        if self.has_unwritten() {
            crate::events::StateWriteFailed {
                store: "outbox",
                error: &format!("{} alert(s) not written", self.unwritten.alerts.len()),
                consequence: "alerts could not be written to the outbox; their records are read again at the next start",
            }
            .emit(&self.metrics);
        }
        self.delivery.shutdown(grace).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::{Finding, Severity};

    fn finding(n: u64) -> Finding {
        Finding {
            workload: Some("10.0.1.5".parse().unwrap()),
            interface_id: Some("eni-1".into()),
            remote: Some(format!("198.51.100.{}", n % 250).parse().unwrap()),
            remote_port: Some(22),
            protocol: Some(6),
            bytes: n,
            first_seen: 1_000 + n,
            last_seen: 1_060 + n,
            ..Finding::new("non_https_egress", Severity::High, format!("flow {n}"))
        }
    }

    fn decided(range: std::ops::Range<u64>) -> Decided {
        Decided {
            alerts: range.map(|n| Alert::single(finding(n))).collect(),
            tallies: vec![],
            repeats: vec![],
        }
    }

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 30,
        max_age_seconds: 86_400,
        segment_bytes: 4_096,
    };

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ew-outbox-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// The outbox directory removed under a running daemon: noticed at the next write, made
    /// again, the entries it held counted as gone, and what is written next is on disk.
    #[test]
    fn a_removed_outbox_is_made_again_and_what_went_is_counted() {
        let d = dir("removed");
        let (mut ob, _) = Outbox::open(&d, LIMITS).unwrap();
        ob.append(&decided(0..10)).unwrap();
        assert_eq!(ob.recreate_if_removed().unwrap(), None);
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(ob.recreate_if_removed().unwrap(), Some(10));
        ob.append(&decided(10..15)).unwrap();
        drop(ob);
        let (ob, rec) = Outbox::open(&d, LIMITS).unwrap();
        let seqs: Vec<u64> = rec.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (11..=15).collect::<Vec<_>>());
        assert_eq!(ob.next_seq(), 16);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn entries_survive_reopen_in_order_with_their_ids() {
        let d = dir("reopen");
        let (mut ob, rec) = Outbox::open(&d, LIMITS).unwrap();
        assert!(rec.entries.is_empty());
        let first = ob.append(&decided(0..30)).unwrap();
        let second = ob.append(&decided(30..60)).unwrap();
        assert_eq!(first[0].seq, 1);
        assert_eq!(second.last().unwrap().seq, 60);
        drop(ob);
        let (ob, rec) = Outbox::open(&d, LIMITS).unwrap();
        assert_eq!(rec.entries.len(), 60);
        assert_eq!(rec.torn_bytes, 0);
        let ids: Vec<_> = rec
            .entries
            .iter()
            .map(|e| e.alert.as_ref().unwrap().id.clone())
            .collect();
        let want: Vec<_> = (0..60).map(|n| Alert::single(finding(n)).id).collect();
        assert_eq!(ids, want);
        assert_eq!(rec.entries[5].alert.as_ref().unwrap().finding, finding(5));
        assert_eq!(ob.next_seq(), 61);
        // Small segments: the log rolled over several files.
        assert!(ob.segments.len() > 2, "{}", ob.segments.len());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_cut_off_and_a_corrupt_middle_line_skipped() {
        let d = dir("torn");
        let (mut ob, _) = Outbox::open(
            &d,
            Limits {
                segment_bytes: 1 << 20,
                ..LIMITS
            },
        )
        .unwrap();
        ob.append(&decided(0..5)).unwrap();
        drop(ob);
        let path = segment_path(&d, 1);
        let mut bytes = std::fs::read(&path).unwrap();
        let whole = bytes.len();
        // Flip a byte inside the second line, and leave half a line at the end.
        let second = bytes.iter().position(|&b| b == b'\n').unwrap() + 20;
        bytes[second] ^= 0x20;
        bytes.extend_from_slice(b"0badc0de {\"seq\":6,\"wri");
        std::fs::write(&path, &bytes).unwrap();
        let (mut ob, rec) = Outbox::open(&d, LIMITS).unwrap();
        assert_eq!(rec.corrupt_lines, 1);
        let first = rec.first_corrupt.as_deref().unwrap();
        assert!(first.ends_with(&format!("{}:2", path.display())), "{first}");
        assert_eq!(rec.torn_bytes, 22);
        let seqs: Vec<u64> = rec.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 3, 4, 5]);
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, whole);
        // Appending after the cut continues the sequence.
        assert_eq!(ob.append(&decided(5..6)).unwrap()[0].seq, 6);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn delivered_segments_go_and_the_byte_bound_forces_the_oldest_out() {
        let d = dir("trim");
        let (mut ob, _) = Outbox::open(&d, LIMITS).unwrap();
        for n in 0..10 {
            ob.append(&decided(n * 10..n * 10 + 10)).unwrap();
        }
        let segments = ob.segments.len();
        // Nothing delivered: nothing goes.
        assert_eq!(ob.trim(1, u64::MAX).segments, 0);
        // Everything delivered, but events still within the dedupe horizon: kept.
        assert_eq!(ob.trim(101, 0).segments, 0);
        let t = ob.trim(101, u64::MAX);
        assert_eq!(t.segments, segments - 1, "the active segment stays");
        assert!(!t.forced);
        // A byte bound below what is held forces undelivered segments out.
        for n in 10..20 {
            ob.append(&decided(n * 10..n * 10 + 10)).unwrap();
        }
        ob.limits.max_bytes = 8_192;
        let t = ob.trim(101, u64::MAX);
        assert!(t.forced && t.segments > 0);
        assert!(ob.bytes() <= 8_192, "{}", ob.bytes());
        let (_, rec) = Outbox::open(&d, LIMITS).unwrap();
        assert_eq!(rec.entries.first().unwrap().seq, t.gone_below);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
