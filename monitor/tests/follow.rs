//! `--follow`: records appended to a file after the daemon reached its end are read as they
//! arrive, a line written in two parts is read once whole, and shutdown ends the run; a
//! restart resumes where the last run ended.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egresswatch_monitor::config::Config;
use egresswatch_monitor::Metrics;

const HEADER: &str = "interface-id srcaddr dstaddr srcport dstport protocol bytes action log-status pkt-srcaddr pkt-dstaddr start end\n";
const LINE: &str =
    "eni-wl 10.0.1.5 10.0.2.9 40000 2049 6 100 ACCEPT OK 10.0.1.5 10.0.2.9 1764150000 1764150060\n";

/// A file-source config for `path`, its state under `dir`, with `extra` top-level keys.
fn file_config(dir: &std::path::Path, path: &std::path::Path, extra: &str) -> Config {
    let toml = format!(
        "listen = \"127.0.0.1:{}\"\nstate-dir = \"{}\"\nsource = \"file:{}\"\n{extra}\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\n[alerts]\nstdout = false\n",
        egresswatch_testkit::free_port(),
        dir.join("state").display(),
        path.display()
    );
    Config::from_toml(&toml, "test.toml").unwrap()
}

fn intra_vpc(m: &Metrics) -> u64 {
    m.records
        .with_label_values(&["intra_vpc", "nfs", "ACCEPT"])
        .get()
}

async fn wait_for(m: &Metrics, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while intra_vpc(m) < n {
        assert!(Instant::now() < deadline, "{} of {n} records", intra_vpc(m));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn appended_records_are_read_as_they_arrive() {
    let dir = std::env::temp_dir().join(format!("ew-follow-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flows.log");
    std::fs::write(&path, format!("{HEADER}{LINE}{LINE}")).unwrap();
    let config = file_config(&dir, &path, "follow = true");
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(egresswatch_monitor::run(config, metrics.clone(), rx, None));
    wait_for(&metrics, 2).await;

    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(LINE.as_bytes()).unwrap();
    let (first, second) = LINE.split_at(30);
    f.write_all(first.as_bytes()).unwrap();
    f.flush().unwrap();
    wait_for(&metrics, 3).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(intra_vpc(&metrics), 3, "half a line is not a record yet");
    f.write_all(second.as_bytes()).unwrap();
    f.flush().unwrap();
    wait_for(&metrics, 4).await;

    tx.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(summary.records, 4, "four records (the header is not one)");
    assert_eq!(
        metrics
            .bad_lines
            .with_label_values(&["too_few_fields"])
            .get(),
        0
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restart_resumes_where_the_last_run_ended() {
    let dir = std::env::temp_dir().join(format!("ew-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flows.log");
    std::fs::write(&path, format!("{HEADER}{}", LINE.repeat(1_000))).unwrap();
    let config = file_config(&dir, &path, "");
    let run = || async {
        let metrics = Arc::new(Metrics::new());
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let summary = egresswatch_monitor::run(config.clone(), metrics.clone(), rx, None)
            .await
            .unwrap();
        (summary.records, intra_vpc(&metrics))
    };
    assert_eq!(
        run().await,
        (1_000, 1_000),
        "1,000 records (the header is not one)"
    );
    // Nothing new: nothing read again (the rules' state is not fed the same bytes twice).
    assert_eq!(run().await, (0, 0));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap();
    f.write_all(LINE.repeat(500).as_bytes()).unwrap();
    f.flush().unwrap();
    assert_eq!(run().await, (500, 500), "only what was appended");
    let cp =
        egresswatch_monitor::checkpoint::read_checkpoint(&dir.join("state/file.checkpoint.json"))
            .unwrap();
    assert_eq!(cp.records_committed, 1_500);
    // The file replaced by another: read from its start.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, format!("{HEADER}{}", LINE.repeat(7))).unwrap();
    assert_eq!(run().await, (7, 7));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_line_is_a_bad_line_and_the_lines_around_it_are_read() {
    let dir = std::env::temp_dir().join(format!("ew-oversize-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("flows.log");
    let huge = "x".repeat(10_000);
    std::fs::write(&path, format!("{HEADER}{LINE}{huge}\n{LINE}")).unwrap();
    let config = file_config(&dir, &path, "max-line-bytes = 1024");
    let metrics = Arc::new(Metrics::new());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    egresswatch_monitor::run(config, metrics.clone(), rx, None)
        .await
        .unwrap();
    assert_eq!(intra_vpc(&metrics), 2);
    assert_eq!(
        metrics
            .bad_lines
            .with_label_values(&["line_too_long"])
            .get(),
        1
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
