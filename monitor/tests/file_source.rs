//! The file source against real files: a restart resumes where the last committed chunk ended,
//! `--follow` survives truncation and rotation the way `tail -F` does, oversize lines and broken
//! gzip files cost only what they must, and a source blocked on a silent pipe does not hold the
//! process.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use egresswatch_monitor::source::file::{
    Chunk, FilePosition, FileSource, FileSourceOptions, SourceError,
};

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ew-source-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn opts(follow: bool, chunk_bytes: usize) -> FileSourceOptions {
    FileSourceOptions {
        follow,
        max_line_bytes: 1000,
        chunk_bytes,
        poll_interval: Duration::from_millis(20),
    }
}

fn numbered(prefix: &str, range: std::ops::Range<u32>) -> Vec<String> {
    range
        .map(|i| format!("{prefix} {i:05} {}", "x".repeat(i as usize % 37)))
        .collect()
}

fn append(path: &Path, lines: &[String]) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

/// Everything chunks have said, in order.
#[derive(Default)]
struct Seen {
    /// (line number, line without its newline)
    lines: Vec<(u64, String)>,
    oversize: u64,
    notes: Vec<String>,
    position: Option<FilePosition>,
    chunks: usize,
}

impl Seen {
    fn absorb(&mut self, chunk: Chunk) {
        self.chunks += 1;
        self.oversize += chunk.oversize_lines;
        // The change's label leads, so a test checks what kind of change the source saw.
        self.notes.extend(
            chunk
                .notes
                .into_iter()
                .map(|n| format!("{}: {}", n.change.label(), n.text)),
        );
        if chunk.position.is_some() {
            self.position = chunk.position;
        }
        let lines = chunk.text.split_inclusive(|&b| b == b'\n');
        for (n, line) in (chunk.first_line..).zip(lines) {
            assert_eq!(line.last(), Some(&b'\n'), "every line ends in a newline");
            let text = std::str::from_utf8(&line[..line.len() - 1]).unwrap();
            self.lines.push((n, text.to_string()));
        }
    }

    fn texts(&self) -> Vec<String> {
        self.lines.iter().map(|(_, l)| l.clone()).collect()
    }
}

/// Reads chunks until `n` lines have been seen in all (the source keeps following).
async fn read_lines(src: &mut FileSource, seen: &mut Seen, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.lines.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, src.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} lines after 20 s", seen.lines.len()))
            .expect("a followed file does not end")
            .expect("no error");
        seen.absorb(chunk);
    }
}

/// Reads a source that is not following to its end; returns the error it ended with, if any.
async fn read_to_end(src: &mut FileSource, seen: &mut Seen) -> Option<SourceError> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), src.next())
            .await
            .expect("input ends")
        {
            None => return None,
            Some(Ok(chunk)) => seen.absorb(chunk),
            Some(Err(e)) => {
                assert!(src.next().await.is_none(), "nothing after an error");
                return Some(e);
            }
        }
    }
}

/// Nothing more arrives for a while (a followed file at rest).
async fn quiet(src: &mut FileSource) {
    if let Ok(got) = tokio::time::timeout(Duration::from_millis(300), src.next()).await {
        let chunk = got.unwrap().unwrap();
        panic!(
            "unexpected chunk: {} bytes, notes {:?}",
            chunk.text.len(),
            chunk.notes
        );
    }
}

fn numbers_from_one(seen: &Seen) {
    for (i, (n, _)) in seen.lines.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1);
    }
}

#[tokio::test]
async fn a_restart_at_the_committed_position_reads_every_line_once() {
    let dir = fresh_dir("resume");
    let path = dir.join("flows.log");
    let first = numbered("first", 0..1000);
    append(&path, &first);
    // A line still being written when the daemon stops.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"split ")
        .unwrap();

    let mut src = FileSource::start(Some(path.clone()), None, opts(true, 4096)).unwrap();
    let mut before = Seen::default();
    for _ in 0..3 {
        before.absorb(src.next().await.unwrap().unwrap());
    }
    drop(src);
    let committed = before.position.clone().unwrap();
    assert_eq!(committed.lines, before.lines.len() as u64);
    assert!(before.lines.len() > 100 && before.lines.len() < 1000);
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (committed.device, committed.inode),
        (
            std::os::unix::fs::MetadataExt::dev(&meta),
            std::os::unix::fs::MetadataExt::ino(&meta)
        )
    );
    assert_eq!(committed.fingerprint_len, 1024);

    // While the daemon is down the line is finished and more are written.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"in two parts\n")
        .unwrap();
    let second = numbered("second", 0..500);
    append(&path, &second);

    let mut src = FileSource::start(
        Some(path.clone()),
        Some(committed.clone()),
        opts(true, 4096),
    )
    .unwrap();
    let mut after = Seen::default();
    read_lines(&mut src, &mut after, 1501 - before.lines.len()).await;
    quiet(&mut src).await;
    assert!(after.notes.is_empty(), "{:?}", after.notes);
    assert_eq!(after.lines[0].0, committed.lines + 1);

    let mut all = before.lines.clone();
    all.extend(after.lines.clone());
    let mut expected = first.clone();
    expected.push("split in two parts".into());
    expected.extend(second.iter().cloned());
    assert_eq!(
        all.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(),
        expected
    );
    for (i, (n, _)) in all.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1);
    }
    let end = after.position.clone().unwrap();
    assert_eq!(end.offset, std::fs::metadata(&path).unwrap().len());
    assert_eq!(end.lines, 1501);

    // Restarting at the very end reads nothing, following or not.
    drop(src);
    let mut src = FileSource::start(Some(path.clone()), Some(end), opts(false, 4096)).unwrap();
    let mut none = Seen::default();
    assert!(read_to_end(&mut src, &mut none).await.is_none());
    assert_eq!(none.chunks, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn truncation_while_following_reads_the_new_content_from_the_top() {
    let dir = fresh_dir("truncate");
    let path = dir.join("flows.log");
    let old = numbered("old", 0..100);
    append(&path, &old);
    let mut src = FileSource::start(Some(path.clone()), None, opts(true, 1024)).unwrap();
    let mut seen = Seen::default();
    read_lines(&mut src, &mut seen, 100).await;
    quiet(&mut src).await;

    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let new = numbered("new", 0..50);
    append(&path, &new);
    read_lines(&mut src, &mut seen, 150).await;
    quiet(&mut src).await;

    let mut expected = old.clone();
    expected.extend(new.iter().cloned());
    assert_eq!(seen.texts(), expected);
    // Numbering restarts with the file's new content.
    assert_eq!(seen.lines[100].0, 1);
    assert_eq!(seen.lines[149].0, 50);
    assert!(
        seen.notes
            .iter()
            .any(|n| n.starts_with("read_from_start:") && n.contains("truncated to")),
        "{:?}",
        seen.notes
    );
    let p = seen.position.unwrap();
    assert_eq!(
        (p.offset, p.lines),
        (std::fs::metadata(&path).unwrap().len(), 50)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn rotation_while_following_finishes_the_old_file_then_reads_the_new_one() {
    let dir = fresh_dir("rotate");
    let path = dir.join("flows.log");
    let rotated = dir.join("flows.log.1");
    let first = numbered("first", 0..100);
    append(&path, &first);
    let mut src = FileSource::start(Some(path.clone()), None, opts(true, 2048)).unwrap();
    let mut seen = Seen::default();
    read_lines(&mut src, &mut seen, 100).await;

    // The writer keeps its descriptor across the rename, as a logger does until it reopens.
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    let before = numbered("before-rename", 0..5);
    for l in &before {
        writeln!(writer, "{l}").unwrap();
    }
    std::fs::rename(&path, &rotated).unwrap();
    let after = numbered("after-rename", 0..5);
    for l in &after {
        writeln!(writer, "{l}").unwrap();
    }
    // The last line of the old file is never finished.
    write!(writer, "unfinished").unwrap();
    // The path stays missing for several polls.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let new = numbered("new", 0..50);
    append(&path, &new);

    read_lines(&mut src, &mut seen, 100 + 5 + 5 + 1 + 50).await;
    quiet(&mut src).await;

    let mut expected = first.clone();
    expected.extend(before.iter().cloned());
    expected.extend(after.iter().cloned());
    expected.push("unfinished".into());
    let old_count = expected.len();
    expected.extend(new.iter().cloned());
    assert_eq!(seen.texts(), expected);
    assert_eq!(seen.lines[old_count - 1].0, old_count as u64);
    assert_eq!(seen.lines[old_count].0, 1);
    assert!(
        seen.notes.iter().any(|n| n.starts_with("rotated:")),
        "{:?}",
        seen.notes
    );
    assert!(
        seen.notes
            .iter()
            .any(|n| n.starts_with("path_missing:") && n.contains("waiting for the path")),
        "{:?}",
        seen.notes
    );
    let p = seen.position.unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(p.inode, std::os::unix::fs::MetadataExt::ino(&meta));
    assert_eq!((p.offset, p.lines), (meta.len(), 50));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_file_replaced_or_rewritten_while_down_is_read_from_its_start() {
    let dir = fresh_dir("replaced");
    let path = dir.join("flows.log");
    append(&path, &numbered("old", 0..200));
    let mut src = FileSource::start(Some(path.clone()), None, opts(false, 1 << 20)).unwrap();
    let mut seen = Seen::default();
    assert!(read_to_end(&mut src, &mut seen).await.is_none());
    let committed = seen.position.clone().unwrap();
    assert_eq!(committed.lines, 200);

    // Another file renamed over the path: a new inode.
    let tmp = dir.join("flows.log.tmp");
    let replacement = numbered("replacement", 0..300);
    append(&tmp, &replacement);
    std::fs::rename(&tmp, &path).unwrap();
    let mut src = FileSource::start(
        Some(path.clone()),
        Some(committed.clone()),
        opts(false, 1 << 20),
    )
    .unwrap();
    let mut seen = Seen::default();
    assert!(read_to_end(&mut src, &mut seen).await.is_none());
    assert_eq!(seen.texts(), replacement);
    numbers_from_one(&seen);
    assert!(
        seen.notes[0].starts_with("read_from_start:") && seen.notes[0].contains("is another file"),
        "{:?}",
        seen.notes
    );
    let committed = seen.position.clone().unwrap();

    // Rewritten in place (same inode), longer than before, other first bytes.
    let rewritten = numbered("rewritten", 0..400);
    std::fs::write(&path, rewritten.join("\n") + "\n").unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), committed.inode);
    let mut src = FileSource::start(
        Some(path.clone()),
        Some(committed.clone()),
        opts(false, 1 << 20),
    )
    .unwrap();
    let mut seen = Seen::default();
    assert!(read_to_end(&mut src, &mut seen).await.is_none());
    assert_eq!(seen.texts(), rewritten);
    assert!(
        seen.notes[0].contains("begins with other bytes"),
        "{:?}",
        seen.notes
    );
    let committed = seen.position.clone().unwrap();

    // Cut short in place: same first bytes, shorter than the position.
    let kept = rewritten[..100].join("\n") + "\n";
    std::fs::write(&path, &kept).unwrap();
    let mut src =
        FileSource::start(Some(path.clone()), Some(committed), opts(false, 1 << 20)).unwrap();
    let mut seen = Seen::default();
    assert!(read_to_end(&mut src, &mut seen).await.is_none());
    assert_eq!(seen.texts(), rewritten[..100].to_vec());
    assert!(seen.notes[0].contains("is shorter"), "{:?}", seen.notes);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn oversize_lines_are_counted_and_the_lines_around_them_kept() {
    let dir = fresh_dir("oversize");
    let path = dir.join("flows.log");
    let mut f = std::fs::File::create(&path).unwrap();
    let line = |n: u32| format!("line {n}\n");
    let mut expected = Vec::new();
    for n in 1..=10 {
        f.write_all(line(n).as_bytes()).unwrap();
        expected.push((u64::from(n), format!("line {n}")));
    }
    // Line 11: 3 MB with no newline inside, far more than one read.
    f.write_all(&vec![b'a'; 3 << 20]).unwrap();
    f.write_all(b"\n").unwrap();
    for n in 12..=21 {
        f.write_all(line(n).as_bytes()).unwrap();
        expected.push((u64::from(n), format!("line {n}")));
    }
    // Line 22: one byte over; line 23: exactly the limit.
    f.write_all(&[b'b'; 1001]).unwrap();
    f.write_all(b"\n").unwrap();
    f.write_all(&[b'c'; 1000]).unwrap();
    f.write_all(b"\n").unwrap();
    expected.push((23, "c".repeat(1000)));
    for n in 24..=33 {
        f.write_all(line(n).as_bytes()).unwrap();
        expected.push((u64::from(n), format!("line {n}")));
    }
    // Line 34: oversize and never finished.
    f.write_all(&[b'd'; 5000]).unwrap();
    drop(f);

    let mut src = FileSource::start(Some(path.clone()), None, opts(false, 4096)).unwrap();
    let mut seen = Seen::default();
    let mut longest = 0;
    loop {
        match src.next().await {
            None => break,
            Some(chunk) => {
                let chunk = chunk.unwrap();
                for l in chunk.text.split_inclusive(|&b| b == b'\n') {
                    longest = longest.max(l.len());
                }
                seen.absorb(chunk);
            }
        }
    }
    assert_eq!(
        longest, 1001,
        "the longest line kept is the limit plus its newline"
    );
    assert_eq!(seen.oversize, 3);
    assert_eq!(seen.lines, expected);
    let p = seen.position.unwrap();
    assert_eq!(
        (p.offset, p.lines),
        (std::fs::metadata(&path).unwrap().len(), 34)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn gzip(lines: &[String]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for l in lines {
        writeln!(enc, "{l}").unwrap();
    }
    enc.finish().unwrap()
}

#[tokio::test]
async fn a_truncated_gzip_file_keeps_the_lines_decoded_before_the_cut() {
    let dir = fresh_dir("gz-cut");
    let path = dir.join("flows.log.gz");
    let lines = numbered("gz", 0..20_000);
    let whole = gzip(&lines);
    std::fs::write(&path, &whole[..whole.len() * 6 / 10]).unwrap();

    let mut src = FileSource::start(Some(path.clone()), None, opts(false, 1 << 16)).unwrap();
    let mut seen = Seen::default();
    let err = read_to_end(&mut src, &mut seen).await.expect("an error");
    let kept = seen.lines.len();
    assert!(kept > 5_000 && kept < 20_000, "{kept} lines kept");
    assert_eq!(seen.texts(), lines[..kept].to_vec());
    numbers_from_one(&seen);
    match &err {
        SourceError::Gzip { lines: n, .. } => assert_eq!(*n, kept as u64),
        other => panic!("{other}"),
    }
    assert!(
        seen.notes
            .iter()
            .any(|n| n.contains("gzip file truncated") && n.contains(&format!("kept {kept}"))),
        "{:?}",
        seen.notes
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn gzip_members_are_all_read_and_a_restart_resumes_in_decoded_bytes() {
    let dir = fresh_dir("gz-resume");
    let path = dir.join("flows.log.gz");
    let a = numbered("member-a", 0..3000);
    let b = numbered("member-b", 0..3000);
    // S3 delivery concatenates gzip members in one object.
    let mut bytes = gzip(&a);
    bytes.extend(gzip(&b));
    std::fs::write(&path, &bytes).unwrap();

    let mut src = FileSource::start(Some(path.clone()), None, opts(false, 8192)).unwrap();
    let mut before = Seen::default();
    for _ in 0..5 {
        before.absorb(src.next().await.unwrap().unwrap());
    }
    drop(src);
    let committed = before.position.clone().unwrap();
    assert_eq!(committed.lines, before.lines.len() as u64);

    let mut src =
        FileSource::start(Some(path.clone()), Some(committed), opts(false, 8192)).unwrap();
    let mut after = Seen::default();
    assert!(read_to_end(&mut src, &mut after).await.is_none());
    assert!(after.notes.is_empty(), "{:?}", after.notes);
    let mut all = before.lines.clone();
    all.extend(after.lines.clone());
    let mut expected = a.clone();
    expected.extend(b.iter().cloned());
    assert_eq!(
        all.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>(),
        expected
    );
    for (i, (n, _)) in all.iter().enumerate() {
        assert_eq!(*n, i as u64 + 1);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn following_a_gzip_file_is_refused() {
    let dir = fresh_dir("gz-follow");
    let path = dir.join("flows.log.gz");
    std::fs::write(&path, gzip(&numbered("x", 0..3))).unwrap();
    let err = FileSource::start(Some(path), None, opts(true, 4096))
        .err()
        .expect("refused");
    assert!(matches!(err, SourceError::FollowCompressed { .. }));
    assert!(
        err.to_string().contains("cannot follow a compressed file"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_path_or_a_directory_is_refused_at_start() {
    let dir = fresh_dir("refused");
    for (path, follow, says) in [
        (dir.join("absent.log"), true, "No such file"),
        (dir.clone(), false, "is a directory"),
    ] {
        let err = FileSource::start(Some(path.clone()), None, opts(follow, 4096))
            .err()
            .expect("refused");
        assert!(matches!(err, SourceError::Open { .. }));
        let msg = err.to_string();
        assert!(
            msg.starts_with(&path.display().to_string()) && msg.contains(says),
            "{msg}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_stream_is_read_to_its_end_without_positions() {
    let input: Box<dyn std::io::Read + Send> =
        Box::new(std::io::Cursor::new(b"one\ntwo\nthree".to_vec()));
    let mut src = FileSource::from_reader("stdin", input, opts(false, 4096)).unwrap();
    let mut seen = Seen::default();
    assert!(read_to_end(&mut src, &mut seen).await.is_none());
    assert_eq!(seen.texts(), ["one", "two", "three"]);
    numbers_from_one(&seen);
    assert!(seen.position.is_none());
}

#[test]
fn a_source_blocked_on_a_silent_pipe_does_not_hold_the_process() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pipe = child.stdout.take().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut src = FileSource::from_reader("stdin", Box::new(pipe), opts(false, 4096)).unwrap();
    let (tx, mut shutdown) = tokio::sync::watch::channel(false);
    rt.block_on(async {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = tx.send(true);
        });
        tokio::select! {
            got = src.next() => panic!("nothing was written, yet: {:?}", got.map(|r| r.map(|c| c.text))),
            _ = shutdown.changed() => {}
        }
    });
    let t = Instant::now();
    drop(src);
    drop(rt);
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "{:?}",
        t.elapsed()
    );
    let _ = child.kill();
    let _ = child.wait();
}
