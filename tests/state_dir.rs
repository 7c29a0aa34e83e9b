//! What happens to the daemon's state dir under it. A full disk (a 4 MB tmpfs, filled by
//! another writer while the daemon runs): the outbox write that fails is counted in
//! `egresswatch_state_write_errors_total{store="outbox"}`, /readyz answers 503 naming the
//! outbox and the reason, no alert is delivered before it is durable, and once space is free
//! again every alert is delivered and the daemon is ready. The whole dir removed: every store
//! is made again (the lock too, so a second daemon is still refused), the repairs counted.

mod common;

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fresh_dir, scrape, terminate};

const ALERTS: usize = 40;

/// /readyz: (status, body); (0, "") while nothing answers.
fn readyz(port: u16) -> (u16, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
            &format!("http://127.0.0.1:{port}/readyz"),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    match text.rsplit_once('\n') {
        Some((body, code)) => (code.trim().parse().unwrap_or(0), body.to_string()),
        None => (text.trim().parse().unwrap_or(0), String::new()),
    }
}

fn metric(port: u16, series: &str) -> f64 {
    scrape(port)
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

fn wait_for(what: &str, timeout: Duration, ok: &mut dyn FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

struct Kill(u32);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn a_full_disk_holds_alerts_back_says_why_and_loses_none() {
    let dir = fresh_dir("full-disk");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&state)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    if !mounted.status.success() {
        // Mounting needs CAP_SYS_ADMIN; the test machines have it, a developer's may not.
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here ({}); run as root to test a full disk",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs"
        );
        return;
    }
    let _unmount = Tmpfs(state.clone());
    std::fs::write(
        dir.join("monitor.toml"),
        "status-interval-seconds = 1\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\nnat-interfaces = [\"eni-nat\"]\nnat-private-ips = [\"10.0.0.220\"]\n[alerts]\nstdout = true\n",
    )
    .unwrap();
    let port = egresswatch_testkit::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_egresswatch"))
        .args(["monitor", "--source", "stdin", "--config"])
        .arg(dir.join("monitor.toml"))
        .arg("--state-dir")
        .arg(&state)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let pid = child.id();
    // Whatever happens below, the daemon does not outlive the test (it would hold the mount).
    let _stop = Kill(pid);
    // Alerts as the stdout sink delivers them, one JSON document a line.
    let delivered = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let delivered = delivered.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                delivered.lock().unwrap().push(line);
            }
        })
    };
    let count = |d: &Arc<Mutex<Vec<String>>>| {
        d.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("non_https_egress"))
            .count()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 300;
    // SSH through the NAT, each from a workload of its own: alerts that do not fold into one.
    let ssh = |n: usize| {
        let workload = format!("10.0.{}.{}", 1 + n / 200, n % 200 + 2);
        format!(
            "eni-nat {workload} 10.0.0.220 {} 22 6 10 5000 {now} {} ACCEPT OK {workload} 198.51.100.{} 2\n",
            40_000 + n,
            now + 59,
            n % 200 + 1
        )
    };
    writeln!(input, "interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status pkt-srcaddr pkt-dstaddr tcp-flags").unwrap();
    input.write_all(ssh(0).as_bytes()).unwrap();
    input.flush().unwrap();
    wait_for("the first alert", Duration::from_secs(30), &mut || {
        count(&delivered) == 1
    });
    wait_for("ready", Duration::from_secs(30), &mut || {
        readyz(port).0 == 200
    });

    // Another writer takes every free block of the state dir's file system.
    let filler = state.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
    }
    for n in 1..=ALERTS {
        input.write_all(ssh(n).as_bytes()).unwrap();
    }
    input.flush().unwrap();
    let errors = "egresswatch_state_write_errors_total{store=\"outbox\"}";
    wait_for(
        "the outbox write failure counted",
        Duration::from_secs(60),
        &mut || metric(port, errors) >= 1.0,
    );
    let (status, body) = readyz(port);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("outbox"), "{body}");
    assert!(
        body.contains("No space left"),
        "/readyz does not say why: {body}"
    );
    // Durable before delivered: what could not be written is not sent.
    let before = count(&delivered);
    assert!(
        before < 1 + ALERTS,
        "{before} alerts delivered with a full disk"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        count(&delivered),
        before,
        "alerts sent that are not durable"
    );

    // Space again: every alert is written, delivered once, and the daemon is ready.
    std::fs::remove_file(&filler).unwrap();
    wait_for(
        "every alert delivered",
        Duration::from_secs(60),
        &mut || count(&delivered) > ALERTS,
    );
    wait_for("ready again", Duration::from_secs(30), &mut || {
        readyz(port).0 == 200
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        count(&delivered),
        1 + ALERTS,
        "an alert was delivered twice"
    );
    let failures = metric(port, errors);
    drop(input);
    terminate(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    reader.join().unwrap();
    eprintln!(
        "full disk: {failures} outbox write failures counted, {before} of {} alerts delivered while full, all after",
        1 + ALERTS
    );
    drop(_unmount);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_state_dir_removed_under_the_daemon_is_made_again_lock_included() {
    let dir = fresh_dir("state-removed");
    let state = dir.join("state");
    std::fs::write(
        dir.join("monitor.toml"),
        "status-interval-seconds = 1\ncheckpoint-interval-seconds = 1\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\nnat-interfaces = [\"eni-nat\"]\nnat-private-ips = [\"10.0.0.220\"]\n[alerts]\nstdout = true\n",
    )
    .unwrap();
    let start = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_egresswatch"))
            .args(["monitor", "--source", "stdin", "--config"])
            .arg(dir.join("monitor.toml"))
            .arg("--state-dir")
            .arg(&state)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let port = egresswatch_testkit::free_port();
    let mut child = start(port);
    let _stop = Kill(child.id());
    let mut input = child.stdin.take().unwrap();
    let delivered = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let delivered = delivered.clone();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                delivered.lock().unwrap().push(line);
            }
        })
    };
    let count = || delivered.lock().unwrap().len();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 300;
    let ssh = |n: u32| {
        format!(
            "eni-nat 10.0.1.{n} 10.0.0.220 40000 22 6 10 5000 {now} {} ACCEPT OK 10.0.1.{n} 198.51.100.{n} 2\n",
            now + 59
        )
    };
    writeln!(input, "interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status pkt-srcaddr pkt-dstaddr tcp-flags").unwrap();
    input.write_all(ssh(1).as_bytes()).unwrap();
    input.flush().unwrap();
    let checkpoint = state.join("file.checkpoint.json");
    wait_for(
        "the first alert and checkpoint",
        Duration::from_secs(30),
        &mut || count() == 1 && checkpoint.exists(),
    );

    std::fs::remove_dir_all(&state).unwrap();
    input.write_all(ssh(2).as_bytes()).unwrap();
    input.flush().unwrap();
    let acks = state.join("file.outbox/acks/stdout.acks.json");
    let lock = state.join("file.lock");
    wait_for(
        "the stores made again",
        Duration::from_secs(30),
        &mut || count() == 2 && checkpoint.exists() && acks.exists() && lock.exists(),
    );
    for (series, want) in [
        (
            "egresswatch_state_repairs_total{kind=\"removed\",store=\"outbox\"}",
            1.0,
        ),
        (
            "egresswatch_state_repairs_total{kind=\"removed\",store=\"state_dir_lock\"}",
            1.0,
        ),
    ] {
        assert_eq!(metric(port, series), want, "{series}");
    }
    assert_eq!(readyz(port).0, 200);
    // The lock taken again keeps a second daemon out.
    let second = Command::new(env!("CARGO_BIN_EXE_egresswatch"))
        .args(["monitor", "--source", "stdin", "--config"])
        .arg(dir.join("monitor.toml"))
        .arg("--state-dir")
        .arg(&state)
        .args([
            "--listen",
            &format!("127.0.0.1:{}", egresswatch_testkit::free_port()),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(said.contains("in use"), "{said}");

    // Stopped and started again: what was delivered and acknowledged is not sent twice.
    drop(input);
    terminate(&child);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    reader.join().unwrap();
    let port = egresswatch_testkit::free_port();
    let again = start(port);
    let _stop_again = Kill(again.id());
    wait_for("the restarted daemon", Duration::from_secs(30), &mut || {
        readyz(port).0 == 200
    });
    std::thread::sleep(Duration::from_secs(2));
    terminate(&again);
    let out = again.wait_with_output().unwrap();
    let resent = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(resent, 0, "alerts sent again after the restart");
    std::fs::remove_dir_all(&dir).unwrap();
}
