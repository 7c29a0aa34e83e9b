//! What a checkpoint commit costs with many CloudWatch streams: 10,000 streams tracked, 100 of
//! them moved since the last commit, as in a group where 100 of 10,000 interfaces are active.
//! Prints the time per commit (with its fsync) and the bytes each appends to the journal.
//!
//! Target: the write proportional to what changed (the journal entry, not the checkpoint).

use std::time::Instant;

use egresswatch_monitor::checkpoint::{Checkpoint, CheckpointStore};
use egresswatch_monitor::source::cloudwatch::Seen;

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let streams: usize = if benchmarking { 10_000 } else { 1_000 };
    let commits = if benchmarking { 200 } else { 10 };
    let dir = std::env::temp_dir().join(format!("ew-bench-cp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = CheckpointStore::new(&dir, "bench").expect("store");
    let metrics = egresswatch_monitor::Metrics::new();
    let mut cp = store.load(&metrics).expect("load");
    for i in 0..streams {
        cp.streams
            .insert(name(i), format!("f/3790{i:030}/s/{i:010}"));
        cp.stream_created.insert(name(i), 1_764_000_000_000);
        cp.stream_seen.insert(
            name(i),
            Seen {
                event: 1_764_000_000_000,
                ingestion: 1_764_000_000_000,
                checked: 1_764_000_000_000,
            },
        );
    }
    store.save(&cp).expect("first save");
    let whole = std::fs::metadata(dir.join("bench.checkpoint.json"))
        .map(|m| m.len())
        .unwrap_or(0);
    let mut journal_before = store.journal_bytes();
    let mut appended = Vec::new();
    let started = Instant::now();
    for c in 0..commits {
        move_active(&mut cp, c, streams);
        store.save(&cp).expect("save");
        let now = store.journal_bytes();
        if now > journal_before {
            appended.push(now - journal_before);
        }
        journal_before = now;
    }
    let per = started.elapsed() / commits as u32;
    appended.sort_unstable();
    let median = appended.get(appended.len() / 2).copied().unwrap_or(0);
    println!(
        "checkpoint of {streams} streams ({whole} bytes whole): a commit moving 100 of them takes {per:?} (fsync included); its journal entry {median} bytes"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The log stream of interface `i`.
fn name(i: usize) -> String {
    format!("eni-{i:08x}-all")
}

/// The 100 active streams read once more: new tokens and times.
fn move_active(cp: &mut Checkpoint, commit: usize, streams: usize) {
    for i in 0..100.min(streams) {
        let name = name(i);
        let t = 1_764_000_000_000 + (commit as i64 + 1) * 10_000;
        cp.streams
            .insert(name.clone(), format!("f/3790{commit:015}{i:015}/s/{i:010}"));
        cp.stream_seen.insert(
            name,
            Seen {
                event: t,
                ingestion: t,
                checked: t,
            },
        );
    }
    cp.records_committed += 100;
    cp.generation += 1;
}
