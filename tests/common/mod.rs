//! What the command-line tests share: running `egresswatch` against the AWS emulator,
//! standing a stack up through the CLI, and reading the daemon's committed-record count.
// Each test file uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// An empty directory for one test run, `ew-NAME-PID` under the system's temp dir; whatever a
/// previous run with the same process id left there is removed.
pub fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ew-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Points a command at the emulator with test credentials.
pub fn aws<'a>(c: &'a mut Command, endpoint: &str) -> &'a mut Command {
    c.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", endpoint)
        .env("RUST_LOG", "warn")
}

/// `egresswatch` pointed at the emulator.
pub fn egresswatch(endpoint: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_egresswatch"));
    aws(&mut c, endpoint);
    c
}

/// `provision up` then `provision outputs` into `dir/outputs.json`, whose path it returns.
/// Through testkit's AWS layer, which answers the SageMaker calls moto lacks.
pub fn provision_stack(endpoint: &str, stack: &str, dir: &Path) -> PathBuf {
    let aws = egresswatch_testkit::aws_behaviour_at(endpoint, &serde_json::json!({}));
    for (step, file) in [
        (&["up", "--yes"][..], None),
        (&["outputs"][..], Some(dir.join("outputs.json"))),
    ] {
        let out = egresswatch(&aws.endpoint())
            .arg("provision")
            .args(step)
            .args(["--stack", stack])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "provision {step:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(file) = file {
            std::fs::write(file, &out.stdout).unwrap();
        }
    }
    dir.join("outputs.json")
}

/// The record count `egresswatch simulate` reports on stderr.
pub fn records_simulated(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| l.split("simulate: ").nth(1))
        .find_map(|t| t.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no record count in: {stderr}"))
}

/// Records the daemon has committed over its life, from its checkpoint (0 before the first).
/// Read through the daemon's own reader, so the header line and checksum are checked too.
pub fn committed(checkpoint: &Path) -> u64 {
    egresswatch_monitor::checkpoint::read_checkpoint(checkpoint)
        .map(|cp| cp.records_committed)
        .unwrap_or(0)
}

/// Waits until the checkpoint holds `written` records, and fails if it holds more.
pub fn wait_until_committed(checkpoint: &Path, written: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done = committed(checkpoint);
        if done >= written {
            assert_eq!(done, written, "records committed beyond those written");
            return;
        }
        assert!(Instant::now() < deadline, "{done} of {written} committed");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends SIGTERM, as systemd and ECS stop the daemon.
pub fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The daemon's /metrics text (empty while it does not answer).
pub fn scrape(port: u16) -> String {
    Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/metrics"),
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
