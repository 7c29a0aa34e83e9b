//! The file and stdin source: reads a plain file, a gzip file (`.gz`, as S3 delivers flow logs)
//! or a stream (stdin, a FIFO, any reader) on a dedicated OS thread and hands the daemon chunks
//! of complete lines with the position just after them.
//!
//! Why a thread of its own and not tokio's blocking pool: a read(2) blocked on stdin cannot be
//! cancelled, and a blocking-pool task keeps the runtime from shutting down. This thread is
//! detached: dropping the [`FileSource`] closes the channel, the thread notices between reads and
//! polls and returns, and if it is stuck in a read on a silent pipe the process exits around it.
//!
//! Memory is bounded whatever the input: the channel holds a few chunks (backpressure stops the
//! reader when the daemon is behind), a chunk holds about `chunk_bytes` of lines, and a line
//! longer than `max_line_bytes` is dropped as it streams past, never held whole.
//!
//! Positions follow Filebeat and Vector: the file's device and inode, the byte offset just after
//! the last complete line handed over, and a fingerprint of its first bytes, because inode numbers
//! are reused as soon as a file is deleted. `--follow` behaves like `tail -F`: truncation (or the
//! first bytes rewritten in place) restarts at the top, a rotated file is read to its end before
//! the new one at the path is opened from its start, and a path that is briefly missing is waited
//! for.
//!
//! Gzip files keep positions in decoded bytes: a deflate stream cannot be entered in the middle
//! without the 32 KiB window before that point, so resuming means decoding from the start and
//! discarding up to the offset. That costs CPU, not correctness, and S3 objects are small and
//! written once. A gzip file cannot be followed: a growing compressed file has no complete
//! member to decode at its end.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// How many leading bytes identify a file. Flow-log files begin with a header line that is the
/// same in every file of a log, so this reaches into the first records too.
pub const FINGERPRINT_BYTES: usize = 1024;
/// One read(2). Large enough that syscalls are not the cost, small enough to stay in cache.
const READ_BYTES: usize = 128 * 1024;
/// Chunks in flight between the reader and the daemon: enough to overlap reading with
/// processing, few enough that a slow daemon holds the reader back instead of growing memory.
const CHANNEL_CHUNKS: usize = 4;

/// What happened to a file of the file source that the operator should hear of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileChange {
    /// A gzip stream broke off: its complete lines were kept.
    CorruptGzip,
    /// Not the file of the saved position any more (replaced, or shorter): read from its start.
    ReadFromStart,
    /// Rotated: the old file read to its end, the new one from its start.
    Rotated,
    /// The path is gone (for now).
    PathMissing,
}

impl FileChange {
    pub const ALL: [FileChange; 4] = [
        FileChange::CorruptGzip,
        FileChange::ReadFromStart,
        FileChange::Rotated,
        FileChange::PathMissing,
    ];

    /// The label of `egresswatch_file_changes_total`.
    pub fn label(self) -> &'static str {
        match self {
            FileChange::CorruptGzip => "corrupt_gzip",
            FileChange::ReadFromStart => "read_from_start",
            FileChange::Rotated => "rotated",
            FileChange::PathMissing => "path_missing",
        }
    }
}

/// A [`FileChange`] and what the log says of it.
#[derive(Clone, Debug)]
pub struct FileNote {
    pub change: FileChange,
    pub text: String,
}

impl FileNote {
    fn new(change: FileChange, text: String) -> Self {
        FileNote { change, text }
    }
}

/// Where a file was read up to: enough to resume after a restart and to tell that the file at
/// the path is another one now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    pub device: u64,
    pub inode: u64,
    /// Bytes just after the last line handed over (kept or discarded as oversize). For a `.gz`
    /// path, decoded bytes.
    pub offset: u64,
    /// FNV-1a of the first `fingerprint_len` bytes of the file as stored (compressed, for `.gz`).
    pub fingerprint: u64,
    /// Up to [`FINGERPRINT_BYTES`]; shorter while the file itself is shorter. 0 matches any file.
    pub fingerprint_len: u32,
    /// Lines ended before `offset` (oversize ones included), so line numbers continue.
    pub lines: u64,
}

/// A run of complete lines and what happened while reading them.
#[derive(Debug, Default)]
pub struct Chunk {
    /// The path, or the name given to [`FileSource::from_reader`] ("stdin"), for messages.
    pub name: String,
    /// Complete lines, every one ending in `\n`. A last line the input ended without a newline
    /// (at the end of a file not followed, of a stream, or of a rotated-away file) is given one.
    pub text: Vec<u8>,
    /// 1-based line number of the first line of `text`; the rest follow without gaps.
    pub first_line: u64,
    /// Lines longer than `max_line_bytes`, dropped unread. They all come just before `text`
    /// (lines `first_line - oversize_lines .. first_line`), so numbering in `text` stays exact.
    pub oversize_lines: u64,
    /// The position after this chunk: commit it once the chunk is processed. None for streams.
    pub position: Option<FilePosition>,
    /// What happened to the file that the operator should see: truncation, rotation, a
    /// replaced file, a broken gzip stream.
    pub notes: Vec<FileNote>,
}

#[derive(Clone, Debug)]
pub struct FileSourceOptions {
    /// Keep reading what is appended to a regular file, across truncation and rotation. Means
    /// nothing for a stream (it is read until its writer closes); refused for `.gz`.
    pub follow: bool,
    /// Longest line kept, not counting its newline.
    pub max_line_bytes: usize,
    /// A chunk is handed over once it holds this many bytes of lines (or the input is idle).
    pub chunk_bytes: usize,
    /// How often a followed file at its end is checked for growth, truncation and rotation.
    pub poll_interval: Duration,
}

impl Default for FileSourceOptions {
    fn default() -> Self {
        FileSourceOptions {
            follow: false,
            // No flow-log record comes near this; CloudWatch Logs caps an event at 256 KiB.
            max_line_bytes: 256 * 1024,
            chunk_bytes: 1 << 20,
            poll_interval: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "{path}: cannot follow a compressed file; read it without --follow, or follow the \
         uncompressed file it was made from"
    )]
    FollowCompressed { path: String },
    #[error("{path}: cannot open: {source}")]
    Open { path: String, source: io::Error },
    #[error("{path}: read failed at byte {offset}: {source}")]
    Read {
        path: String,
        offset: u64,
        source: io::Error,
    },
    #[error(
        "{path}: gzip stream broken after {decoded} decoded bytes ({lines} complete lines \
         before it were read): {source}"
    )]
    Gzip {
        path: String,
        decoded: u64,
        lines: u64,
        source: io::Error,
    },
    #[error("{path}: cannot start the reader thread: {source}")]
    Spawn { path: String, source: io::Error },
}

/// Lines from a file or a stream, read on a thread of their own.
pub struct FileSource {
    rx: mpsc::Receiver<Result<Chunk, SourceError>>,
    /// Not joined on drop (the thread may be blocked on a pipe); kept so tests can watch it end.
    #[cfg_attr(not(test), allow(dead_code))]
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FileSource {
    /// Reads `path` (None = stdin). `resume` is the last committed position for this path: used
    /// when it still describes the file there, otherwise the file is read from its start and a
    /// note says why. A path that is not a regular file (a FIFO, /dev/stdin) is read as a stream.
    /// A path that does not exist is an error, following or not: a mistyped path should fail at
    /// start rather than be waited for.
    pub fn start(
        path: Option<PathBuf>,
        resume: Option<FilePosition>,
        opts: FileSourceOptions,
    ) -> Result<FileSource, SourceError> {
        let Some(path) = path else {
            return FileSource::from_reader("stdin", Box::new(io::stdin()), opts);
        };
        let name = path.display().to_string();
        let gz = path.extension().is_some_and(|e| e == "gz");
        if gz && opts.follow {
            return Err(SourceError::FollowCompressed { path: name });
        }
        let open_err = |source| SourceError::Open {
            path: name.clone(),
            source,
        };
        let meta = std::fs::metadata(&path).map_err(open_err)?;
        if meta.is_dir() {
            return Err(open_err(io::Error::other("is a directory, not a file")));
        }
        if !meta.is_file() {
            // Opening a FIFO blocks until a writer appears: do it on the reader thread.
            let stream: Box<dyn Read + Send> = Box::new(OpenOnRead {
                path: path.clone(),
                file: None,
            });
            let input = if gz {
                Input::Gz(Box::new(MultiGzDecoder::new(stream)))
            } else {
                Input::Stream(stream)
            };
            return spawn(Worker::new(name, None, input, None, opts, 0));
        }

        let file = File::open(&path).map_err(open_err)?;
        let id = FileId::of(&file).map_err(open_err)?;
        let mut notes = Vec::new();
        let mut start_at = None;
        if let Some(pos) = resume {
            match id.matches(&file, &pos, gz).map_err(open_err)? {
                Ok(()) => start_at = Some(pos),
                Err(why) => notes.push(FileNote::new(
                    FileChange::ReadFromStart,
                    format!("{name} {why} than at the saved position; reading it from the start"),
                )),
            }
        }
        let (input, skip) = if gz {
            let skip = start_at.as_ref().map_or(0, |p| p.offset);
            let reader: Box<dyn Read + Send> = Box::new(file);
            (Input::Gz(Box::new(MultiGzDecoder::new(reader))), skip)
        } else {
            let mut file = file;
            if let Some(pos) = &start_at {
                file.seek(SeekFrom::Start(pos.offset)).map_err(open_err)?;
            }
            (Input::Plain(file), 0)
        };
        let offset = start_at.as_ref().map_or(0, |p| p.offset);
        let mut worker = Worker::new(name, Some(path), input, Some(id), opts, offset);
        worker.lines = start_at.as_ref().map_or(0, |p| p.lines);
        worker.gz_skip = skip;
        worker.notes = notes;
        spawn(worker)
    }

    /// Reads any stream to its end; `name` is used in messages and chunks. Chunks carry no
    /// position. stdin goes through here; so can a test's pipe.
    pub fn from_reader(
        name: impl Into<String>,
        reader: Box<dyn Read + Send>,
        opts: FileSourceOptions,
    ) -> Result<FileSource, SourceError> {
        spawn(Worker::new(
            name.into(),
            None,
            Input::Stream(reader),
            None,
            opts,
            0,
        ))
    }

    /// The next chunk; None once the input has ended (never, while following a file) or after
    /// an error has been returned. Cancel-safe: a chunk is never lost to a `select!` that picks
    /// another branch.
    pub async fn next(&mut self) -> Option<Result<Chunk, SourceError>> {
        self.rx.recv().await
    }
}

fn spawn(worker: Worker) -> Result<FileSource, SourceError> {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    let name = worker.name.clone();
    let thread = std::thread::Builder::new()
        .name("egresswatch-file-source".into())
        .spawn(move || worker.run(tx))
        .map_err(|source| SourceError::Spawn { path: name, source })?;
    Ok(FileSource {
        rx,
        thread: Some(thread),
    })
}

/// A path opened at the first read, so a FIFO's blocking open happens on the reader thread.
struct OpenOnRead {
    path: PathBuf,
    file: Option<File>,
}

impl Read for OpenOnRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(File::open(&self.path)?),
        };
        file.read(buf)
    }
}

enum Input {
    /// A regular file: positions kept, followable.
    Plain(File),
    // Boxed: the decoder's state is large beside the other inputs.
    Gz(Box<MultiGzDecoder<Box<dyn Read + Send>>>),
    Stream(Box<dyn Read + Send>),
}

/// What identifies the open file: where it lives and what it starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileId {
    device: u64,
    inode: u64,
    fingerprint: u64,
    fingerprint_len: u32,
}

impl FileId {
    fn of(file: &File) -> io::Result<FileId> {
        let meta = file.metadata()?;
        let (fingerprint, fingerprint_len) = fingerprint(file, FINGERPRINT_BYTES)?;
        Ok(FileId {
            device: meta.dev(),
            inode: meta.ino(),
            fingerprint,
            fingerprint_len,
        })
    }

    /// Whether `pos` was taken on this very file, or how it differs ("is another file now").
    fn matches(
        &self,
        file: &File,
        pos: &FilePosition,
        gz: bool,
    ) -> io::Result<Result<(), &'static str>> {
        if (self.device, self.inode) != (pos.device, pos.inode) {
            return Ok(Err("is another file (device or inode differs)"));
        }
        let want = usize::try_from(pos.fingerprint_len).unwrap_or(usize::MAX);
        let (fp, len) = fingerprint(file, want)?;
        if len != pos.fingerprint_len || fp != pos.fingerprint {
            return Ok(Err("begins with other bytes"));
        }
        // A decoded length is unknown without decoding; the gzip reader checks it as it skips.
        if !gz && file.metadata()?.len() < pos.offset {
            return Ok(Err("is shorter (truncated)"));
        }
        Ok(Ok(()))
    }
}

/// FNV-1a over the file's first `want` bytes (fewer if the file is shorter): stable across
/// builds and Rust versions, unlike std's hasher, because it is stored in checkpoints.
fn fingerprint(file: &File, want: usize) -> io::Result<(u64, u32)> {
    let mut buf = [0u8; FINGERPRINT_BYTES];
    let want = want.min(FINGERPRINT_BYTES);
    let mut got = 0;
    while got < want {
        match file.read_at(&mut buf[got..want], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &buf[..got] {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    // `got` is at most FINGERPRINT_BYTES.
    Ok((h, u32::try_from(got).unwrap_or(u32::MAX)))
}

/// Cuts input bytes into complete lines, dropping oversize ones as they stream past.
struct Cutter {
    max_line: usize,
    chunk_bytes: usize,
    /// Complete lines in `text[..complete]`, then the start of the line in progress (nothing of
    /// it while `skipping`). The line in progress never holds more than `max_line` bytes.
    text: Vec<u8>,
    complete: usize,
    text_lines: u64,
    /// Oversize lines ended since the last take; they precede `text`'s first line.
    oversize: u64,
    /// Inside a line already known to be too long: its bytes are dropped up to its newline.
    skipping: bool,
    /// An oversize line was met after complete lines; those must be taken first so that the
    /// line numbers in `text` stay consecutive.
    blocked: bool,
    /// Input offset of the next byte fed, and just after the last line that ended.
    fed: u64,
    settled: u64,
}

struct Taken {
    text: Vec<u8>,
    lines: u64,
    oversize: u64,
    settled: u64,
}

impl Cutter {
    fn new(max_line: usize, chunk_bytes: usize, at: u64) -> Cutter {
        Cutter {
            max_line,
            chunk_bytes,
            text: Vec::new(),
            complete: 0,
            text_lines: 0,
            oversize: 0,
            skipping: false,
            blocked: false,
            fed: at,
            settled: at,
        }
    }

    /// Starts over at input offset `at`, dropping the line in progress; lines already complete
    /// stay to be taken.
    fn restart(&mut self, at: u64) {
        self.text.truncate(self.complete);
        self.skipping = false;
        self.blocked = false;
        self.fed = at;
        self.settled = at;
    }

    fn must_take(&self) -> bool {
        self.blocked || self.complete >= self.chunk_bytes
    }

    fn has_output(&self) -> bool {
        self.complete > 0 || self.oversize > 0
    }

    /// Bytes of the line in progress held (0 while skipping).
    fn held(&self) -> usize {
        self.text.len() - self.complete
    }

    /// Takes in as much of `data` as it can; returns how much. It stops early when
    /// [`Cutter::must_take`] says the lines held must be taken before it can go on.
    fn feed(&mut self, data: &[u8]) -> usize {
        let mut at = 0;
        while at < data.len() && !self.must_take() {
            let rest = &data[at..];
            if self.skipping {
                match memchr::memchr(b'\n', rest) {
                    Some(i) => {
                        at += i + 1;
                        self.skipping = false;
                        self.oversize = self.oversize.saturating_add(1);
                        self.settled = self.fed.saturating_add(at as u64);
                    }
                    None => at = data.len(),
                }
                continue;
            }
            let held = self.held();
            let room = self.chunk_bytes - self.complete;
            // `start`: where the line being looked at begins in `rest`.
            let mut start = 0;
            let mut lines = 0u64;
            let mut over = false;
            for nl in memchr::memchr_iter(b'\n', rest) {
                let len = nl - start + if lines == 0 { held } else { 0 };
                if len > self.max_line {
                    over = true;
                    break;
                }
                start = nl + 1;
                lines += 1;
                if held + start >= room {
                    break;
                }
            }
            if lines > 0 {
                self.text.extend_from_slice(&rest[..start]);
                self.complete = self.text.len();
                self.text_lines = self.text_lines.saturating_add(lines);
                at += start;
                self.settled = self.fed.saturating_add(at as u64);
            }
            if !over {
                if self.must_take() {
                    break;
                }
                // No newline in what is left: it is the start of a line.
                let tail = &data[at..];
                if self.held() + tail.len() <= self.max_line {
                    self.text.extend_from_slice(tail);
                    at = data.len();
                    continue;
                }
            }
            // The line in progress is too long.
            if self.complete > 0 {
                self.blocked = true;
            } else {
                self.text.clear();
                self.skipping = true;
            }
        }
        self.fed = self.fed.saturating_add(at as u64);
        at
    }

    /// The input ended: a last line without a newline still counts.
    fn finish(&mut self) {
        if self.skipping {
            self.skipping = false;
            self.oversize = self.oversize.saturating_add(1);
        } else if self.held() > 0 {
            self.text.push(b'\n');
            self.complete = self.text.len();
            self.text_lines = self.text_lines.saturating_add(1);
        } else {
            return;
        }
        self.settled = self.fed;
    }

    fn take(&mut self) -> Taken {
        let mut next = Vec::with_capacity(self.chunk_bytes.saturating_add(READ_BYTES));
        next.extend_from_slice(&self.text[self.complete..]);
        let mut text = std::mem::replace(&mut self.text, next);
        text.truncate(self.complete);
        let taken = Taken {
            text,
            lines: self.text_lines,
            oversize: self.oversize,
            settled: self.settled,
        };
        self.complete = 0;
        self.text_lines = 0;
        self.oversize = 0;
        self.blocked = false;
        taken
    }
}

/// Why the reader stopped early.
enum Halt {
    /// The receiver is gone: nobody to read for.
    Gone,
    Failed(SourceError),
}

/// What a followed file at its end showed.
enum Poll {
    /// Something changed: read again at once.
    Again,
    /// Nothing new: wait a poll interval.
    Idle,
    /// Our file has been read to its end and the path names another one.
    Rotated,
}

struct Worker {
    name: String,
    /// Set for regular files and gzip files: their chunks carry positions.
    path: Option<PathBuf>,
    input: Input,
    id: Option<FileId>,
    opts: FileSourceOptions,
    cut: Cutter,
    /// Lines ended (kept or oversize) before the cutter's current chunk.
    lines: u64,
    notes: Vec<FileNote>,
    buf: Vec<u8>,
    /// Decoded bytes to discard before reading on (resuming a gzip file).
    gz_skip: u64,
    /// The path names another file: reading what is left of ours before switching.
    draining: bool,
    /// "The path is gone" was said already.
    missing_noted: bool,
}

impl Worker {
    fn new(
        name: String,
        path: Option<PathBuf>,
        input: Input,
        id: Option<FileId>,
        opts: FileSourceOptions,
        offset: u64,
    ) -> Worker {
        let max_line = opts.max_line_bytes.max(1);
        let chunk_bytes = opts.chunk_bytes.max(1);
        Worker {
            name,
            path,
            input,
            id,
            cut: Cutter::new(max_line, chunk_bytes, offset),
            opts,
            lines: 0,
            notes: Vec::new(),
            buf: vec![0; READ_BYTES],
            gz_skip: 0,
            draining: false,
            missing_noted: false,
        }
    }

    fn run(mut self, tx: mpsc::Sender<Result<Chunk, SourceError>>) {
        if let Err(Halt::Failed(e)) = self.body(&tx) {
            // If the receiver is gone too, there is nobody left to tell.
            let _ = tx.blocking_send(Err(e));
        }
    }

    fn is_stream(&self) -> bool {
        matches!(self.input, Input::Stream(_))
    }

    fn follows(&self) -> bool {
        self.opts.follow && matches!(self.input, Input::Plain(_))
    }

    fn body(&mut self, tx: &mpsc::Sender<Result<Chunk, SourceError>>) -> Result<(), Halt> {
        if self.gz_skip > 0 {
            self.skip_decoded()?;
        }
        loop {
            if tx.is_closed() {
                return Err(Halt::Gone);
            }
            let read = match &mut self.input {
                Input::Plain(f) => f.read(&mut self.buf),
                Input::Gz(d) => d.read(&mut self.buf),
                Input::Stream(r) => r.read(&mut self.buf),
            };
            let n = match read {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.read_failed(tx, e)),
            };
            if n == 0 {
                if !self.follows() {
                    self.cut.finish();
                    if self.cut.has_output() || !self.notes.is_empty() {
                        self.send(tx)?;
                    }
                    return Ok(());
                }
                if self.cut.has_output() || !self.notes.is_empty() {
                    self.send(tx)?;
                }
                let mut next = self.poll().map_err(Halt::Failed)?;
                if let Poll::Rotated = next {
                    // The old file is read to its end; its unterminated last line is complete
                    // now (nobody appends to a rotated-away file) and goes out with its position.
                    self.cut.finish();
                    if self.cut.has_output() || !self.notes.is_empty() {
                        self.send(tx)?;
                    }
                    next = self.open_new_file();
                }
                if let Poll::Idle = next {
                    std::thread::sleep(self.opts.poll_interval);
                }
                continue;
            }
            let mut at = 0;
            while at < n {
                at += self.cut.feed(&self.buf[at..n]);
                if self.cut.must_take() {
                    self.send(tx)?;
                }
            }
            // A pipe gives what its writer has written so far: a short read means it is idle
            // for now, and what is held should not wait for the next write.
            if self.is_stream() && n < self.buf.len() && self.cut.has_output() {
                self.send(tx)?;
            }
        }
    }

    fn send(&mut self, tx: &mpsc::Sender<Result<Chunk, SourceError>>) -> Result<(), Halt> {
        let taken = self.cut.take();
        let first_line = self.lines.saturating_add(taken.oversize).saturating_add(1);
        self.lines = self
            .lines
            .saturating_add(taken.oversize)
            .saturating_add(taken.lines);
        let position = self.position(taken.settled);
        let chunk = Chunk {
            name: self.name.clone(),
            text: taken.text,
            first_line,
            oversize_lines: taken.oversize,
            position,
            notes: std::mem::take(&mut self.notes),
        };
        tx.blocking_send(Ok(chunk)).map_err(|_| Halt::Gone)
    }

    fn position(&mut self, offset: u64) -> Option<FilePosition> {
        self.path.as_ref()?;
        let id = self.id.as_mut()?;
        // A file shorter than the fingerprint when opened has grown since: fingerprint more of
        // it, so a later replacement that shares only those first few bytes is still told apart.
        if let Input::Plain(f) = &self.input {
            if (id.fingerprint_len as usize) < FINGERPRINT_BYTES
                && self.cut.fed > u64::from(id.fingerprint_len)
            {
                if let Ok((fp, len)) = fingerprint(f, FINGERPRINT_BYTES) {
                    id.fingerprint = fp;
                    id.fingerprint_len = len;
                }
            }
        }
        Some(FilePosition {
            device: id.device,
            inode: id.inode,
            offset,
            fingerprint: id.fingerprint,
            fingerprint_len: id.fingerprint_len,
            lines: self.lines,
        })
    }

    /// Hands over the complete lines read before `e`, then the error. A truncated gzip file
    /// (a copy cut short, an upload interrupted) keeps everything decoded before the cut.
    fn read_failed(&mut self, tx: &mpsc::Sender<Result<Chunk, SourceError>>, e: io::Error) -> Halt {
        let partial = self.cut.held();
        let decoded = self.cut.fed;
        self.cut.restart(self.cut.settled);
        let gz = matches!(self.input, Input::Gz(_));
        if gz {
            let kept = self.lines.saturating_add(self.cut.text_lines);
            let what = if e.kind() == io::ErrorKind::UnexpectedEof {
                "gzip file truncated"
            } else {
                "gzip stream corrupt"
            };
            self.notes.push(FileNote::new(
                FileChange::CorruptGzip,
                format!(
                "{}: {what} after {decoded} decoded bytes; kept {kept} complete lines, dropped a \
                 partial line of {partial} bytes",
                self.name
            ),
            ));
        }
        if let Err(halt) = self.send(tx) {
            return halt;
        }
        Halt::Failed(if gz {
            SourceError::Gzip {
                path: self.name.clone(),
                decoded,
                lines: self.lines,
                source: e,
            }
        } else {
            SourceError::Read {
                path: self.name.clone(),
                offset: decoded,
                source: e,
            }
        })
    }

    /// Resuming a gzip file: decode and discard up to the saved offset.
    fn skip_decoded(&mut self) -> Result<(), Halt> {
        let Input::Gz(d) = &mut self.input else {
            return Ok(());
        };
        let mut skipped = 0u64;
        while skipped < self.gz_skip {
            let want = usize::try_from(self.gz_skip - skipped)
                .unwrap_or(usize::MAX)
                .min(self.buf.len());
            match d.read(&mut self.buf[..want]) {
                Ok(0) => break,
                Ok(n) => skipped = skipped.saturating_add(n as u64),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Halt::Failed(SourceError::Gzip {
                        path: self.name.clone(),
                        decoded: skipped,
                        lines: 0,
                        source: e,
                    }))
                }
            }
        }
        if skipped == self.gz_skip {
            return Ok(());
        }
        // Same first bytes but less inside: not the file the position was taken on.
        let path = self.path.clone().unwrap_or_default();
        let file = File::open(&path).map_err(|source| {
            Halt::Failed(SourceError::Open {
                path: self.name.clone(),
                source,
            })
        })?;
        let reader: Box<dyn Read + Send> = Box::new(file);
        self.input = Input::Gz(Box::new(MultiGzDecoder::new(reader)));
        self.cut.restart(0);
        self.lines = 0;
        self.notes.push(FileNote::new(
            FileChange::ReadFromStart,
            format!(
            "{} decodes to {skipped} bytes, fewer than the saved position's {}; reading it from \
             the start",
            self.name, self.gz_skip
        ),
        ));
        Ok(())
    }

    /// A followed file is at its end: has it been truncated, rewritten or rotated?
    fn poll(&mut self) -> Result<Poll, SourceError> {
        let (Input::Plain(file), Some(id), Some(path)) = (&mut self.input, self.id, &self.path)
        else {
            return Ok(Poll::Idle);
        };
        let read_err = |offset, source| SourceError::Read {
            path: self.name.clone(),
            offset,
            source,
        };
        let size = file
            .metadata()
            .map_err(|e| read_err(self.cut.fed, e))?
            .len();
        let why = if size < self.cut.fed {
            Some(format!("truncated to {size} bytes"))
        } else {
            let want = id.fingerprint_len as usize;
            match fingerprint(file, want) {
                Ok(fp) if fp != (id.fingerprint, id.fingerprint_len) => {
                    Some("rewritten in place (its first bytes changed)".to_string())
                }
                _ => None,
            }
        };
        if let Some(why) = why {
            // Lines already complete were handed over at the end just reached.
            file.seek(SeekFrom::Start(0)).map_err(|e| read_err(0, e))?;
            self.id = Some(FileId::of(file).map_err(|e| read_err(0, e))?);
            self.cut.restart(0);
            self.lines = 0;
            self.notes.push(FileNote::new(
                FileChange::ReadFromStart,
                format!("{}: {why}; reading it from the start", self.name),
            ));
            return Ok(Poll::Again);
        }

        match std::fs::metadata(path) {
            Ok(meta) if (meta.dev(), meta.ino()) != (id.device, id.inode) => {
                if !self.draining {
                    // Lines may have been appended to the old file between our last read and
                    // its rename: read it to its end once more before letting go.
                    self.draining = true;
                    return Ok(Poll::Again);
                }
                Ok(Poll::Rotated)
            }
            Ok(_) => {
                self.draining = false;
                self.missing_noted = false;
                Ok(Poll::Idle)
            }
            Err(e) => {
                if !self.missing_noted {
                    self.missing_noted = true;
                    self.notes.push(FileNote::new(
                        FileChange::PathMissing,
                        format!(
                            "{}: {e}; reading on from the file that was there and waiting for the \
                         path to return",
                            self.name
                        ),
                    ));
                }
                Ok(Poll::Idle)
            }
        }
    }

    /// The path names a new file: open it from its start. Idle if it cannot be opened yet.
    fn open_new_file(&mut self) -> Poll {
        let Some(path) = &self.path else {
            return Poll::Idle;
        };
        let opened = File::open(path).and_then(|f| FileId::of(&f).map(|id| (f, id)));
        match opened {
            Ok((file, id)) => {
                self.input = Input::Plain(file);
                self.id = Some(id);
                self.cut.restart(0);
                self.lines = 0;
                self.draining = false;
                self.missing_noted = false;
                self.notes.push(FileNote::new(
                    FileChange::Rotated,
                    format!(
                        "{}: rotated; the old file was read to its end, reading the new one from \
                     its start",
                        self.name
                    ),
                ));
                Poll::Again
            }
            // Gone again between the stat and the open: the next poll looks again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => Poll::Idle,
            Err(e) => {
                if !self.missing_noted {
                    self.missing_noted = true;
                    self.notes.push(FileNote::new(
                        FileChange::PathMissing,
                        format!(
                            "{}: rotated, but the new file cannot be opened yet: {e}",
                            self.name
                        ),
                    ));
                }
                Poll::Idle
            }
        }
    }
}

/// The file and stdin source behind [`super::Source`]: the reader thread's chunks as batches,
/// each with the file's position after it.
pub struct FileLines {
    source: FileSource,
    /// The checkpoint's key: the path, or "stdin".
    key: String,
    format: flowlog::Format,
    /// The first call says the input is open (the daemon is ready) before any line arrives:
    /// stdin may stay silent for long.
    started: bool,
    ended: bool,
}

impl FileLines {
    /// Opens `file:PATH` or stdin from the config, resuming a file from its position in `cp`.
    pub fn open(
        config: &crate::config::Config,
        cp: &crate::checkpoint::Checkpoint,
    ) -> Result<FileLines, String> {
        let mut format = match &config.format {
            Some(f) => flowlog::Format::parse(f).map_err(|e| e.to_string())?,
            // Without a header line, a file from this stack is in the provisioner's format.
            None => flowlog::Format::parse(&egresswatch_stack::flow_log_format())
                .map_err(|e| e.to_string())?,
        };
        let path = config.source.strip_prefix("file:").map(PathBuf::from);
        let key = path
            .as_ref()
            .map_or("stdin".to_string(), |p| p.display().to_string());
        let resume = cp.files.get(&key).cloned();
        if let (Some(path), Some(pos)) = (&path, &resume) {
            if pos.offset > 0 {
                // A run that resumes past the header line still reads the records in its format.
                if let Some(f) = header_of(path) {
                    format = f;
                }
            }
        }
        let opts = FileSourceOptions {
            follow: config.follow,
            max_line_bytes: config.max_line_bytes,
            ..FileSourceOptions::default()
        };
        let source = FileSource::start(path, resume, opts).map_err(|e| e.to_string())?;
        Ok(FileLines {
            source,
            key,
            format,
            started: false,
            ended: false,
        })
    }
}

/// The format a file's first line names, when it is a header line.
fn header_of(path: &std::path::Path) -> Option<flowlog::Format> {
    use std::io::BufRead;
    let file = File::open(path).ok()?;
    let reader: Box<dyn Read> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut first = Vec::new();
    let mut reader = io::BufReader::new(reader.take(64 * 1024));
    reader.read_until(b'\n', &mut first).ok()?;
    let format = flowlog::Format::from_header_line(&first)?;
    tracing::debug!(file = %path.display(), "format taken from the file's header line");
    Some(format)
}

impl super::Source for FileLines {
    async fn next(&mut self, wait: Duration) -> super::Next {
        if self.ended {
            return super::Next::End;
        }
        if !self.started {
            self.started = true;
            return super::Next::Reading;
        }
        let got = tokio::select! {
            got = self.source.next() => got,
            _ = tokio::time::sleep(wait) => return super::Next::Idle,
        };
        let chunk = match got {
            None => {
                self.ended = true;
                return super::Next::End;
            }
            Some(Err(e)) => {
                // Complete lines before a broken gzip member were handed over already.
                self.ended = true;
                return super::Next::Failed(e.to_string());
            }
            Some(Ok(chunk)) => chunk,
        };
        let position = match chunk.position {
            Some(at) => super::Position::File {
                key: self.key.clone(),
                at,
            },
            None => super::Position::None,
        };
        super::Next::Batch(Box::new(super::Batch {
            origin: chunk.name,
            lines: super::Lines::Numbered {
                text: chunk.text,
                first_line: chunk.first_line,
            },
            format: super::Decoding::Headers(self.format.clone()),
            position,
            oversize_lines: chunk.oversize_lines,
            notes: chunk.notes,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes, taking whenever asked, and returns every
    /// line kept with its number, the oversize count, and the final settled offset.
    fn cut_all(
        input: &[u8],
        piece: usize,
        max: usize,
        chunk: usize,
    ) -> (Vec<(u64, Vec<u8>)>, u64, u64) {
        let mut cut = Cutter::new(max, chunk, 0);
        let mut lines = Vec::new();
        let mut ended = 0u64;
        let mut oversize = 0u64;
        let mut take = |cut: &mut Cutter, lines: &mut Vec<(u64, Vec<u8>)>| {
            assert!(
                cut.held() <= max,
                "held {} of a line, max {max}",
                cut.held()
            );
            let t = cut.take();
            oversize += t.oversize;
            ended += t.oversize;
            for line in t.text.split_inclusive(|&b| b == b'\n') {
                ended += 1;
                assert!(
                    line.len() <= max + 1,
                    "a line of {} bytes was kept",
                    line.len()
                );
                lines.push((ended, line.to_vec()));
            }
            assert_eq!(ended - oversize, lines.len() as u64);
            t.settled
        };
        let mut settled = 0;
        for part in input.chunks(piece.max(1)) {
            let mut at = 0;
            while at < part.len() {
                at += cut.feed(&part[at..]);
                if cut.must_take() {
                    settled = take(&mut cut, &mut lines);
                }
            }
        }
        cut.finish();
        if cut.has_output() {
            settled = take(&mut cut, &mut lines);
        }
        (lines, oversize, settled)
    }

    #[test]
    fn how_input_is_split_into_reads_changes_nothing() {
        let mut input = Vec::new();
        for i in 0..200u32 {
            // Every 17th line is over the limit, some by far, one by exactly one byte.
            let len = match i % 17 {
                0 => 20 + (i as usize) * 7,
                5 => 41,
                _ => (i as usize * 13) % 40,
            };
            input.extend(std::iter::repeat_n(b'a' + (i % 26) as u8, len));
            input.push(b'\n');
        }
        input.extend_from_slice(b"last line without newline");
        let expected = cut_all(&input, input.len(), 40, 1 << 20);
        assert_eq!(expected.0.len() + expected.1 as usize, 201);
        assert!(expected.1 >= 11, "{} oversize", expected.1);
        assert_eq!(expected.2, input.len() as u64);
        assert_eq!(expected.0.last().unwrap().1, b"last line without newline\n");
        for piece in [1, 2, 3, 7, 40, 41, 64, 1000] {
            for chunk in [1, 50, 4096] {
                assert_eq!(
                    cut_all(&input, piece, 40, chunk),
                    expected,
                    "piece {piece} chunk {chunk}"
                );
            }
        }
    }

    #[test]
    fn a_line_of_exactly_the_limit_is_kept_and_one_byte_more_is_not() {
        let mut input = vec![b'x'; 10];
        input.push(b'\n');
        input.extend_from_slice(&[b'y'; 11]);
        input.push(b'\n');
        input.extend_from_slice(b"z\n");
        let (lines, oversize, settled) = cut_all(&input, 3, 10, 1 << 20);
        assert_eq!(oversize, 1);
        assert_eq!(settled, input.len() as u64);
        assert_eq!(
            lines,
            vec![
                (1, [b'x'; 10].iter().copied().chain([b'\n']).collect()),
                (3, b"z\n".to_vec())
            ]
        );
    }

    #[test]
    fn the_reader_thread_ends_soon_after_the_source_is_dropped() {
        let dir = std::env::temp_dir().join(format!("ew-source-drop-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("flows.log");
        std::fs::write(&path, "a\nb\n").unwrap();
        let opts = FileSourceOptions {
            follow: true,
            poll_interval: Duration::from_millis(50),
            ..FileSourceOptions::default()
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let mut src = FileSource::start(Some(path), None, opts).unwrap();
        let chunk = rt.block_on(src.next()).unwrap().unwrap();
        assert_eq!(chunk.text, b"a\nb\n");
        let thread = src.thread.take().unwrap();
        // Following: the thread is polling the file's end, not blocked.
        std::thread::sleep(Duration::from_millis(200));
        assert!(!thread.is_finished());
        drop(src);
        let t = std::time::Instant::now();
        while !thread.is_finished() {
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "reader thread still running"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(thread.join().is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
