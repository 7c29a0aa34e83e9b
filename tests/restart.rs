//! Restarts lose no pending judgement: 40 simulated hours with every attack (some on the
//! rules' learning day, so beacons and uploads wait to be judged when learning ends; volume
//! windows wait for their late records), read by the daemon from a file that grows in five
//! parts, the daemon stopped with SIGTERM after each part and started again. The findings it
//! keeps are, by id, those of one run that read the whole file without a stop, and every
//! behavioural rule has findings among them. (Each rule's snapshot is also held to an
//! uninterrupted run on random flows by the property test `rules::round_trip`.)

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{fresh_dir, terminate, wait_until_committed};
use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_egresswatch"));
    c.env("RUST_LOG", "warn");
    c
}

/// A daemon following `flows` with its state in `state`, until `records` are committed; then
/// SIGTERM, which must end it with 0.
fn follow_until(dir: &Path, flows: &Path, state: &Path, records: u64) {
    let config = dir.join(format!(
        "{}.toml",
        state.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate-dir = \"{}\"\nsource = \"file:{}\"\nfollow = true\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\nnat-interfaces = [\"eni-0a7e1b2c3d4e5f601\"]\nnat-private-ips = [\"10.0.0.157\"]\ns3-cidrs = [\"52.216.0.0/15\"]\n[alerts]\nstdout = false\n[rules]\ndenylists = [\"{}\", \"{}\"]\n",
            egresswatch_testkit::free_port(),
            state.display(),
            flows.display(),
            dir.join("lists/threats.txt").display(),
            dir.join("lists/tor-exits.txt").display()
        ),
    )
    .unwrap();
    let mut child = bin()
        .args(["monitor", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_committed(
        &state.join("file.checkpoint.json"),
        records,
        Duration::from_secs(600),
    );
    terminate(&child);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "the daemon's exit after SIGTERM");
}

/// The findings a state dir's store kept.
fn kept(state: &Path) -> Vec<Value> {
    let out = bin()
        .args([
            "findings",
            "--since",
            "400d",
            "--output",
            "json",
            "--state-dir",
        ])
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ids(findings: &[Value]) -> BTreeSet<String> {
    findings
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn stopping_and_starting_again_changes_no_finding() {
    let dir = fresh_dir("restart");
    let whole = dir.join("whole.log");
    let status = bin()
        .args([
            "simulate",
            "--scenario",
            "all",
            "--duration",
            "40h",
            "--attacks-after",
            "20h",
            "--workloads",
            "6",
            "--seed",
            "5",
            "--start",
            "1764547200",
        ])
        .arg("--to")
        .arg(format!("file:{}", whole.display()))
        .arg("--denylists-out")
        .arg(dir.join("lists"))
        .status()
        .unwrap();
    assert!(status.success());
    let text = std::fs::read_to_string(&whole).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let is_record = |l: &str| !l.is_empty() && !l.starts_with("version");
    let total = lines.iter().filter(|l| is_record(l)).count() as u64;

    follow_until(&dir, &whole, &dir.join("whole"), total);
    let uninterrupted = kept(&dir.join("whole"));

    // The same lines, appended in five parts with a stop and a start after each.
    let growing = dir.join("growing.log");
    let mut file = std::fs::File::create(&growing).unwrap();
    let mut written = 0usize;
    let mut records = 0u64;
    let mut cut_times = Vec::new();
    for fraction in [15, 35, 55, 75, 100] {
        let until = lines.len() * fraction / 100;
        for l in &lines[written..until] {
            writeln!(file, "{l}").unwrap();
        }
        file.sync_all().unwrap();
        records += lines[written..until]
            .iter()
            .filter(|l| is_record(l))
            .count() as u64;
        written = until;
        // The event time the stop falls at (the record's `start`, the 11th field).
        if let Some(start) = lines[until - 1]
            .split(' ')
            .nth(10)
            .and_then(|s| s.parse::<u64>().ok())
        {
            cut_times.push(start);
        }
        follow_until(&dir, &growing, &dir.join("restarted"), records);
    }
    let restarted = kept(&dir.join("restarted"));

    // Judgements that were waiting at a stop: learnt before it and made after it.
    let first_cut = cut_times[0];
    let learning_end_cut = cut_times[2];
    let waited: Vec<&Value> = uninterrupted
        .iter()
        .filter(|f| {
            f["summary"]
                .as_str()
                .is_some_and(|s| s.contains("learning period"))
                && f["first_seen"].as_u64() < Some(first_cut)
        })
        .collect();
    let rules_waiting: BTreeSet<&str> =
        waited.iter().map(|f| f["rule"].as_str().unwrap()).collect();
    for rule in ["beaconing", "rare_destination"] {
        assert!(
            rules_waiting.contains(rule),
            "no {rule} finding waited over the first stop: {rules_waiting:?}"
        );
    }
    assert!(learning_end_cut < 1_764_547_200 + 86_400);
    let rules: BTreeSet<&str> = uninterrupted
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    for rule in [
        "beaconing",
        "rare_destination",
        "long_connection",
        "traffic_volume_unusual",
        "upload_volume_unusual",
        "s3_endpoint_upload",
        "slow_drip",
        "port_scan",
        "new_remote_port",
    ] {
        assert!(rules.contains(rule), "no {rule} finding: {rules:?}");
    }
    let (a, b) = (ids(&uninterrupted), ids(&restarted));
    let only = |x: &BTreeSet<String>, y: &BTreeSet<String>, from: &[Value]| -> Vec<String> {
        from.iter()
            .filter(|f| {
                let id = f["id"].as_str().unwrap();
                x.contains(id) && !y.contains(id)
            })
            .map(|f| format!("{} {}", f["rule"], f["summary"]))
            .collect()
    };
    assert!(
        a == b,
        "lost by the restarts: {:#?}\nonly after the restarts: {:#?}",
        only(&a, &b, &uninterrupted),
        only(&b, &a, &restarted)
    );
    eprintln!(
        "{} findings, the same with four restarts; {} of them waited over the first stop (rules {:?})",
        a.len(),
        waited.len(),
        rules_waiting
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
