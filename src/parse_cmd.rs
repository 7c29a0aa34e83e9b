//! `egresswatch parse`: flow-log files (or stdin) to JSON lines or a summary of counts.
//!
//! Bad lines are reported as `FILE:LINE: REASON` on stderr and never stop the run. Large
//! plain files are read in big chunks and, for the summary, tallied on every core.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;

use flowlog::{line_kind, Action, Decoder, Format, Line, LineKind, LogStatus, Record};

/// How `parse` prints what it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One JSON object per record, keys as AWS names them.
    Json,
    /// Counts of records, headers, blank and bad lines, statuses, actions, bytes, packets.
    Summary,
}

pub struct ParseArgs {
    pub format: Option<Format>,
    pub output: Output,
    pub files: Vec<PathBuf>,
}

const CHUNK: usize = 8 << 20;

/// Counts of everything `--output summary` reports. Bad lines are counted by reason.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub records: u64,
    pub headers: u64,
    pub blanks: u64,
    pub bad: BTreeMap<&'static str, u64>,
    pub log_status: BTreeMap<&'static str, u64>,
    pub action: BTreeMap<&'static str, u64>,
    pub bytes: u64,
    pub packets: u64,
}

/// Per-record counts kept in arrays on the hot path and folded into a [`Summary`] per chunk.
#[derive(Default)]
struct FastCounts {
    status: [u64; 4],
    action: [u64; 3],
    records: u64,
    bytes: u64,
    packets: u64,
}

impl FastCounts {
    #[inline]
    fn add(&mut self, r: &Record<'_>) {
        self.records += 1;
        let s = match r.log_status() {
            Some(LogStatus::Ok) => 0,
            Some(LogStatus::NoData) => 1,
            Some(LogStatus::SkipData) => 2,
            None => 3,
        };
        self.status[s] += 1;
        let a = match r.action() {
            Some(Action::Accept) => 0,
            Some(Action::Reject) => 1,
            None => 2,
        };
        self.action[a] += 1;
        self.bytes += r.bytes().unwrap_or(0);
        self.packets += r.packets().unwrap_or(0);
    }

    fn fold_into(self, s: &mut Summary) {
        s.records += self.records;
        s.bytes += self.bytes;
        s.packets += self.packets;
        for (n, name) in self.status.iter().zip(["OK", "NODATA", "SKIPDATA", "-"]) {
            if *n > 0 {
                *s.log_status.entry(name).or_default() += n;
            }
        }
        for (n, name) in self.action.iter().zip(["ACCEPT", "REJECT", "-"]) {
            if *n > 0 {
                *s.action.entry(name).or_default() += n;
            }
        }
    }
}

impl Summary {
    fn merge(&mut self, other: Summary) {
        self.records += other.records;
        self.headers += other.headers;
        self.blanks += other.blanks;
        self.bytes += other.bytes;
        self.packets += other.packets;
        for (map, from) in [
            (&mut self.bad, other.bad),
            (&mut self.log_status, other.log_status),
            (&mut self.action, other.action),
        ] {
            for (k, v) in from {
                *map.entry(k).or_default() += v;
            }
        }
    }

    fn bad_total(&self) -> u64 {
        self.bad.values().sum()
    }

    fn print(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "records       {}", self.records)?;
        writeln!(out, "header lines  {}", self.headers)?;
        writeln!(out, "blank lines   {}", self.blanks)?;
        writeln!(out, "bad lines     {}", self.bad_total())?;
        for (reason, n) in &self.bad {
            writeln!(out, "  {reason:<18} {n}")?;
        }
        writeln!(out, "log-status")?;
        for (k, n) in &self.log_status {
            writeln!(out, "  {k:<18} {n}")?;
        }
        writeln!(out, "action")?;
        for (k, n) in &self.action {
            writeln!(out, "  {k:<18} {n}")?;
        }
        writeln!(out, "bytes         {}", self.bytes)?;
        writeln!(out, "packets       {}", self.packets)?;
        Ok(())
    }
}

/// Where a run's output goes: records to `out`, bad-line messages to `err`.
struct Sink<'o> {
    output: Output,
    out: &'o mut dyn Write,
    err: &'o mut dyn Write,
    summary: Summary,
}

/// Runs the command; returns the process exit status.
pub fn run(args: ParseArgs) -> i32 {
    let stdout = io::stdout();
    let stderr = io::stderr();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut err = BufWriter::new(stderr.lock());
    let files = if args.files.is_empty() {
        vec![PathBuf::from("-")]
    } else {
        args.files
    };
    let mut sink = Sink {
        output: args.output,
        out: &mut out,
        err: &mut err,
        summary: Summary::default(),
    };
    let mut status = 0;
    for path in &files {
        let name = path.display().to_string();
        let decoder = match &args.format {
            Some(f) => Decoder::pinned(f.clone()),
            None => Decoder::following_headers(Format::default_v2()),
        };
        let result = match mapped(path) {
            Some(map) => map.and_then(|m| read_mapped(&m, &name, decoder, &mut sink)),
            None => open(path).and_then(|reader| read_input(reader, &name, decoder, &mut sink)),
        };
        if let Err(e) = result {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return 0;
            }
            let _ = writeln!(sink.err, "egresswatch parse: {name}: {e}");
            status = 1;
        }
    }
    if sink.output == Output::Summary {
        let summary = std::mem::take(&mut sink.summary);
        if let Err(e) = summary.print(sink.out) {
            if e.kind() != io::ErrorKind::BrokenPipe {
                status = 1;
            }
        }
    }
    let _ = sink.out.flush();
    let _ = sink.err.flush();
    status
}

fn open(path: &std::path::Path) -> io::Result<Box<dyn Read + Send>> {
    let file = (path.as_os_str() != "-").then_some(path);
    egresswatch_monitor::daemon::open_input(file)
}

/// A plain regular file mapped into memory, so its bytes are parsed where the page cache holds
/// them instead of being copied by read(2) first; `None` for stdin, `.gz` and anything that is
/// not a regular file, which go through [`read_input`]. The file must not be truncated while
/// it is read (appending is fine: the mapping keeps the length it had when opened).
fn mapped(path: &std::path::Path) -> Option<io::Result<memmap2::Mmap>> {
    if path.as_os_str() == "-" || path.extension().is_some_and(|e| e == "gz") {
        return None;
    }
    // Decided from the path, without opening it: opening a named pipe only to find it is not
    // a regular file would consume its writer.
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0) {
        return None;
    }
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Some(Err(e)),
    };
    // SAFETY: the mapping is read-only and private to this process; the file is only read.
    let map = unsafe { memmap2::Mmap::map(&file) };
    if let Ok(m) = &map {
        // Read ahead aggressively: the file is consumed front to back exactly once.
        let _ = m.advise(memmap2::Advice::Sequential);
        let _ = m.advise(memmap2::Advice::WillNeed);
    }
    Some(map)
}

/// A mapped file, fed to [`process_chunk`] in runs of whole lines of about `CHUNK` bytes.
fn read_mapped(
    data: &[u8],
    name: &str,
    mut decoder: Decoder,
    sink: &mut Sink<'_>,
) -> io::Result<()> {
    let mut line_no: u64 = 0;
    let mut at = 0usize;
    while at < data.len() {
        let end = (at + CHUNK).min(data.len());
        let cut = if end == data.len() {
            end
        } else {
            memchr::memchr(b'\n', &data[end..]).map_or(data.len(), |p| end + p + 1)
        };
        line_no = process_chunk(&data[at..cut], line_no, name, &mut decoder, sink)?;
        at = cut;
    }
    Ok(())
}

/// Reads whole lines in large chunks on a reader thread, so reading overlaps parsing, and
/// hands each chunk to [`process_chunk`] in order. Buffers go back to the reader for reuse.
fn read_input(
    reader: Box<dyn Read + Send>,
    name: &str,
    mut decoder: Decoder,
    sink: &mut Sink<'_>,
) -> io::Result<()> {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(2);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    // Not joined: if output fails (a closed pipe) the process stops without waiting for it.
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let mut buf = empty_rx
                .try_recv()
                .unwrap_or_else(|_| Vec::with_capacity(CHUNK + (1 << 16)));
            buf.clear();
            buf.append(&mut carry);
            let n = match (&mut reader).take(CHUNK as u64).read_to_end(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    let _ = full_tx.send(Err(e));
                    return;
                }
            };
            if n == 0 {
                let len = buf.len();
                if len > 0 {
                    let _ = full_tx.send(Ok((buf, len)));
                }
                return;
            }
            let Some(cut) = buf.iter().rposition(|&b| b == b'\n').map(|p| p + 1) else {
                // A line longer than a chunk: keep reading it.
                carry = buf;
                continue;
            };
            carry.extend_from_slice(&buf[cut..]);
            if full_tx.send(Ok((buf, cut))).is_err() {
                return;
            }
        }
    });
    let mut line_no: u64 = 0;
    for message in full_rx {
        let (buf, cut) = message?;
        line_no = process_chunk(&buf[..cut], line_no, name, &mut decoder, sink)?;
        let _ = empty_tx.send(buf);
    }
    Ok(())
}

/// One contiguous run of whole lines, numbered from `first_line + 1`.
fn process_chunk(
    chunk: &[u8],
    first_line: u64,
    name: &str,
    decoder: &mut Decoder,
    sink: &mut Sink<'_>,
) -> io::Result<u64> {
    if sink.output == Output::Summary {
        if chunk.len() >= 1 << 20 {
            return summarise_parallel(chunk, first_line, name, decoder, sink);
        }
        let tally = tally_lines(chunk, first_line, name, decoder);
        let end = tally.line_no;
        tally.finish(sink)?;
        return Ok(end);
    }
    let mut tally = Tally::new(name, first_line);
    let mut counts = FastCounts::default();
    let mut json = Vec::with_capacity(256);
    for line in lines(chunk) {
        tally.line_no += 1;
        match decoder.decode(line) {
            Ok(Line::Record(r)) => {
                counts.add(&r);
                json.clear();
                serde_json::to_writer(&mut json, &r).map_err(io::Error::other)?;
                json.push(b'\n');
                sink.out.write_all(&json)?;
            }
            Ok(Line::Header) => tally.summary.headers += 1,
            Ok(Line::Blank) => tally.summary.blanks += 1,
            Err(e) => tally.bad(e),
        }
    }
    counts.fold_into(&mut tally.summary);
    let end = tally.line_no;
    tally.finish(sink)?;
    Ok(end)
}

/// Splits a chunk into lines; a final line without a newline counts.
fn lines(chunk: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
    let empty = chunk.is_empty();
    // memchr finds newlines a vector at a time; this split is on the hot path of `parse`.
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len()));
    ends.take(if empty { 0 } else { usize::MAX })
        .map(move |end| {
            let line = &body[start..end];
            start = end + 1;
            line
        })
}

/// What one thread counted over its lines, and its bad lines, in order.
struct Tally<'n> {
    name: &'n str,
    line_no: u64,
    summary: Summary,
    bad_lines: Vec<(u64, flowlog::ParseError)>,
}

impl<'n> Tally<'n> {
    fn new(name: &'n str, first_line: u64) -> Self {
        Tally {
            name,
            line_no: first_line,
            summary: Summary::default(),
            bad_lines: Vec::new(),
        }
    }

    fn bad(&mut self, e: flowlog::ParseError) {
        *self.summary.bad.entry(e.reason()).or_default() += 1;
        self.bad_lines.push((self.line_no, e));
    }

    /// Shifts every line number by `lines`, for a tally made before the lines ahead of it
    /// were counted.
    fn renumber(&mut self, lines: u64) {
        self.line_no += lines;
        for (line, _) in &mut self.bad_lines {
            *line += lines;
        }
    }

    fn finish(self, sink: &mut Sink<'_>) -> io::Result<()> {
        for (line, e) in &self.bad_lines {
            writeln!(sink.err, "{}:{line}: {e}", self.name)?;
        }
        sink.summary.merge(self.summary);
        Ok(())
    }
}

/// Counts a run of lines, reusing one record for every line of a format.
fn tally_lines<'n>(
    chunk: &[u8],
    first_line: u64,
    name: &'n str,
    decoder: &mut Decoder,
) -> Tally<'n> {
    let mut tally = Tally::new(name, first_line);
    let mut counts = FastCounts::default();
    let mut rest = lines(chunk);
    loop {
        let format = decoder.format().clone();
        let mut record = Record::empty(&format);
        let mut format_changed = false;
        for line in rest.by_ref() {
            tally.line_no += 1;
            match line_kind(line) {
                LineKind::Blank => tally.summary.blanks += 1,
                LineKind::Header(f) => {
                    tally.summary.headers += 1;
                    if decoder.header(f) {
                        format_changed = true;
                        break;
                    }
                }
                LineKind::Data => match record.parse_into(line) {
                    Ok(()) => counts.add(&record),
                    Err(e) => tally.bad(e),
                },
            }
        }
        if !format_changed {
            break;
        }
    }
    counts.fold_into(&mut tally.summary);
    tally
}

/// Tallies the two halves of a chunk on two threads. The second half is numbered from zero
/// and renumbered once the first half's lines are counted, so neither waits for the other. A
/// header in the first half changes the format for the second, so then the second half is done
/// again with that format.
fn summarise_parallel(
    chunk: &[u8],
    first_line: u64,
    name: &str,
    decoder: &mut Decoder,
    sink: &mut Sink<'_>,
) -> io::Result<u64> {
    let mid = chunk.len() / 2;
    let split = memchr::memchr(b'\n', &chunk[mid..]).map_or(chunk.len(), |p| mid + p + 1);
    let (first, second) = chunk.split_at(split);
    let start_format = decoder.clone();
    let (tally_a, tally_b, decoder_b) = std::thread::scope(|scope| {
        let mut decoder_b = start_format.clone();
        let handle = scope.spawn(move || {
            let t = tally_lines(second, 0, name, &mut decoder_b);
            (t, decoder_b)
        });
        let a = tally_lines(first, first_line, name, decoder);
        let (b, d) = handle
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        (a, b, d)
    });
    let (mut tally_b, decoder_b) = if decoder.format() != start_format.format() {
        let mut again = decoder.clone();
        let t = tally_lines(second, 0, name, &mut again);
        (t, again)
    } else {
        (tally_b, decoder_b)
    };
    tally_b.renumber(tally_a.line_no);
    let end = tally_b.line_no;
    tally_a.finish(sink)?;
    tally_b.finish(sink)?;
    *decoder = decoder_b;
    Ok(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on(data: &[u8], output: Output, format: Option<Format>) -> (String, String, Summary) {
        let mut out = Vec::new();
        let mut err = Vec::new();
        let summary;
        {
            let mut sink = Sink {
                output,
                out: &mut out,
                err: &mut err,
                summary: Summary::default(),
            };
            let decoder = match format {
                Some(f) => Decoder::pinned(f),
                None => Decoder::following_headers(Format::default_v2()),
            };
            read_input(
                Box::new(std::io::Cursor::new(data.to_vec())),
                "in.log",
                decoder,
                &mut sink,
            )
            .unwrap();
            summary = sink.summary.clone();
        }
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
            summary,
        )
    }

    const GOOD: &str = "2 123456789010 eni-1 10.0.0.1 10.0.0.2 443 5000 6 10 840 1439387263 1439387264 ACCEPT OK\n";

    #[test]
    fn json_and_errors_with_line_numbers() {
        let data =
            format!("{GOOD}\n2 1 eni-1 10.0.0.1 10.0.0.2 65536 1 6 1 1 1 1 ACCEPT OK\n{GOOD}");
        let (out, err, s) = run_on(data.as_bytes(), Output::Json, None);
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["srcport"], 443);
        assert_eq!(lines[0]["account-id"], "123456789010");
        assert_eq!(
            err,
            "in.log:3: field `srcport` at column 29: `65536` is out of range (0 to 65535)\n"
        );
        assert_eq!((s.records, s.blanks, s.bad_total()), (2, 1, 1));
    }

    #[test]
    fn header_switches_format_unless_pinned() {
        let data = b"srcaddr dstport bytes\n10.0.0.1 443 100\n10.0.0.2 22 5\n";
        let (_, err, s) = run_on(data, Output::Summary, None);
        assert_eq!(err, "");
        assert_eq!((s.records, s.headers, s.bytes), (2, 1, 105));
        let (_, err, s) = run_on(data, Output::Summary, Some(Format::default_v2()));
        assert_eq!((s.records, s.headers, s.bad_total()), (0, 1, 2));
        assert!(err.starts_with("in.log:2: "), "{err}");
    }

    #[test]
    fn mapped_files_give_exactly_what_reading_gives() {
        // Several CHUNKs of lines, a bad line near a chunk boundary and a header halfway.
        let mut data = Vec::new();
        let n: u64 = 200_000;
        for i in 0..n {
            data.extend_from_slice(GOOD.as_bytes());
            if i == 75_000 || i == 3 {
                data.extend_from_slice(b"bad line\n");
            }
        }
        data.extend_from_slice(b"srcaddr bytes\n");
        for _ in 0..n {
            data.extend_from_slice(b"10.0.0.9 7\n");
        }
        data.extend_from_slice(b"10.0.0.9 8");
        assert!(data.len() > 2 * CHUNK);
        let (_, read_err, read) = run_on(&data, Output::Summary, None);
        let mut err = Vec::new();
        let mut out = Vec::new();
        let mut sink = Sink {
            output: Output::Summary,
            out: &mut out,
            err: &mut err,
            summary: Summary::default(),
        };
        read_mapped(
            &data,
            "in.log",
            Decoder::following_headers(Format::default_v2()),
            &mut sink,
        )
        .unwrap();
        let mapped = sink.summary.clone();
        assert_eq!(mapped, read);
        assert_eq!(mapped.records, 2 * n + 1);
        assert_eq!(mapped.bytes, n * 840 + n * 7 + 8);
        assert_eq!(String::from_utf8(err).unwrap(), read_err);
        assert!(
            read_err.contains(&format!("in.log:{}:", 75_000 + 3)),
            "{read_err}"
        );
    }

    #[test]
    fn large_input_is_tallied_in_parallel_exactly() {
        // Enough lines to cross the parallel threshold and several chunks, with a bad line
        // and a format-changing header in the middle.
        let mut data = Vec::new();
        let n = 40_000;
        for i in 0..n {
            data.extend_from_slice(GOOD.as_bytes());
            if i == n / 4 || i == 3 * n / 4 {
                data.extend_from_slice(b"bad line\n");
            }
        }
        data.extend_from_slice(b"srcaddr bytes\n");
        for _ in 0..n {
            data.extend_from_slice(b"10.0.0.9 7\n");
        }
        let (_, err, s) = run_on(&data, Output::Summary, None);
        assert_eq!(s.records, 2 * n);
        assert_eq!(s.bytes, n * 840 + n * 7);
        assert_eq!(s.packets, n * 10);
        assert_eq!(s.headers, 1);
        assert_eq!(s.bad.get("invalid_number"), Some(&2));
        // Line numbers are right on both sides of a split, in the order of the input.
        let message =
            |line| format!("in.log:{line}: field `version` at column 1: `bad` is not a number\n");
        assert_eq!(err, message(n / 4 + 2) + &message(3 * n / 4 + 3));
    }
}
