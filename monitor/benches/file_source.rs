//! How fast the file source's reader thread hands over a plain file of flow-log lines (in the
//! page cache), as chunks of complete lines with their positions. Prints MB/s and lines/s.
//! Under `cargo test` this is a quick smoke run on a small file.

use std::io::Write;
use std::time::Instant;

use egresswatch_monitor::source::file::{FileSource, FileSourceOptions};

fn main() {
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let megabytes = if benchmarking { 200 } else { 4 };
    let dir = std::env::temp_dir().join(format!("ew-bench-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let path = dir.join("flows.log");
    let line = "2 123456789012 eni-0a1b2c3d4e5f67890 10.0.1.25 52.94.133.131 49152 443 6 12 3456 1764150000 1764150060 ACCEPT OK\n";
    let mut block = String::new();
    while block.len() < 1 << 20 {
        block.push_str(line);
    }
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        for _ in 0..megabytes {
            f.write_all(block.as_bytes()).expect("write");
        }
    }
    let size = std::fs::metadata(&path).expect("metadata").len();
    // Warm the page cache so the figure is the reader's, not the disk's.
    let _ = std::fs::read(&path).expect("read");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (bytes, lines, secs) = runtime.block_on(async {
        let started = Instant::now();
        let mut src = FileSource::start(Some(path.clone()), None, FileSourceOptions::default())
            .expect("start the source");
        let (mut bytes, mut lines) = (0u64, 0u64);
        while let Some(chunk) = src.next().await {
            let chunk = chunk.expect("chunk");
            bytes += chunk.text.len() as u64;
            lines += memchr::memchr_iter(b'\n', &chunk.text).count() as u64;
        }
        (bytes, lines, started.elapsed().as_secs_f64())
    });
    assert_eq!(bytes, size, "every byte handed over");
    println!(
        "file source: {:.0} MB in {secs:.2} s = {:.0} MB/s, {:.1} million lines/s",
        size as f64 / 1e6,
        size as f64 / 1e6 / secs,
        lines as f64 / 1e6 / secs
    );
    let _ = std::fs::remove_dir_all(&dir);
}
