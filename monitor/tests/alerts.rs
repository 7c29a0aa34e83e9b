//! Alerts as durable as the counts, against a real webhook receiver: a flood of low findings
//! arrives as one counted alert and never delays a critical one; alerts a receiver could not
//! take are sent at the next start; a full state disk delays alerts and loses none.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egresswatch_monitor::config::Config;
use egresswatch_monitor::Metrics;

const HEADER: &str = "interface-id srcaddr dstaddr srcport dstport protocol bytes action log-status pkt-srcaddr pkt-dstaddr start end\n";

fn config(dir: &std::path::Path, flows: &std::path::Path, extra: &str, alerts: &str) -> Config {
    let deny = dir.join("deny.txt");
    std::fs::write(&deny, "192.0.2.0/24\n").unwrap();
    let toml = format!(
        r#"
listen = "127.0.0.1:{port}"
state-dir = "{state}"
source = "file:{flows}"
{extra}
[topology]
vpc-cidrs = ["10.0.0.0/16"]
nat-interfaces = ["eni-nat"]
nat-private-ips = ["10.0.0.220"]
[rules]
denylists = ["{deny}"]
[alerts]
stdout = false
{alerts}
"#,
        port = egresswatch_testkit::free_port(),
        state = dir.join("state").display(),
        flows = flows.display(),
        deny = deny.display(),
    );
    Config::from_toml(&toml, "test.toml").unwrap()
}

fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ew-alerts-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scan_is_one_counted_alert_and_the_critical_one_goes_first() {
    let hook = egresswatch_testkit::webhook_receiver();
    let dir = fresh_dir("flood");
    let flows = dir.join("flows.log");
    let mut text = String::from(HEADER);
    // 30,000 rejected connection attempts from one workload to as many addresses...
    for i in 0..30_000u32 {
        text.push_str(&format!(
            "eni-wl 10.0.1.7 198.18.{}.{} 40000 443 6 60 REJECT OK 10.0.1.7 198.18.{}.{} 1764150000 1764150060\n",
            i / 250,
            i % 250 + 1,
            i / 250,
            i % 250 + 1
        ));
    }
    // ...then flows to a deny-listed address: one finding seen three times.
    text.push_str("eni-nat 10.0.1.8 10.0.0.220 40001 443 6 900 ACCEPT OK 10.0.1.8 192.0.2.50 1764150000 1764150060\n");
    text.push_str("eni-nat 10.0.1.8 10.0.0.220 40002 443 6 700 ACCEPT OK 10.0.1.8 192.0.2.50 1764150060 1764150120\n");
    text.push_str("eni-nat 10.0.1.8 10.0.0.220 40003 443 6 400 ACCEPT OK 10.0.1.8 192.0.2.50 1764150120 1764150180\n");
    std::fs::write(&flows, text).unwrap();
    let config = config(
        &dir,
        &flows,
        "",
        &format!(
            "webhook-url = \"{}\"\nshutdown-grace-seconds = 1",
            hook.url()
        ),
    );

    // The receiver is down for the whole first run: every alert stays in the outbox.
    hook.set_down(true);
    let metrics = Arc::new(Metrics::new());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let summary = egresswatch_monitor::run(config.clone(), metrics.clone(), rx, None)
        .await
        .unwrap();
    // Records, not lines: the header is not one.
    assert_eq!(summary.records, 30_003);
    assert!(hook.received().is_empty());
    assert_eq!(
        metrics
            .alerts_folded
            .with_label_values(&["rejected_egress"])
            .get(),
        29_995,
        "five alerts for the workload, then folding"
    );

    // It comes back; the next start sends what the first run could not, critical first.
    hook.set_down(false);
    let metrics = Arc::new(Metrics::new());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let summary = egresswatch_monitor::run(config, metrics.clone(), rx, None)
        .await
        .unwrap();
    assert_eq!(summary.records, 0, "the file was read to its end last time");
    let got = hook.received();
    // The deny-listed flow and the update that counts its repeats, the sweep itself (one
    // port on 30,000 hosts), five rejections and one fold of the other 29,995: highest
    // severity first.
    assert_eq!(got.len(), 9, "{got:#?}");
    assert_eq!(got[0]["rule"], "denylisted_destination");
    assert_eq!(got[0]["severity"], "critical");
    assert_eq!(
        (&got[0]["count"], &got[0]["updated"]),
        (&1.into(), &false.into())
    );
    // The repeat did not vanish: the same finding (same id) now counts three sightings and
    // their bytes, over the time they span.
    assert_eq!(got[1]["id"], got[0]["id"]);
    assert_eq!(
        (&got[1]["count"], &got[1]["updated"]),
        (&3.into(), &true.into())
    );
    assert_eq!(got[1]["bytes"], 2_000);
    assert_eq!(got[1]["last_seen"], "2025-11-26T09:43:00Z");
    assert_eq!(got[2]["rule"], "port_sweep");
    assert_eq!(got[2]["severity"], "high");
    let folded: Vec<_> = got.iter().filter(|a| a["folded"] == true).collect();
    assert_eq!(folded.len(), 1);
    assert_eq!(folded[0]["rule"], "rejected_egress");
    assert_eq!(folded[0]["workload"], "10.0.1.7");
    let singles = got
        .iter()
        .filter(|a| a["rule"] == "rejected_egress" && a["folded"] == false)
        .count();
    assert_eq!(singles, 5);
    // Every alert carries its id, and ids are distinct.
    let mut ids: Vec<&str> = got.iter().map(|a| a["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 8);
    assert_eq!(metrics.alerts_sent.with_label_values(&["webhook"]).get(), 9);
    // What the receiver got is the documented finding (an independent JSON Schema
    // validator's verdict), with RFC 3339 times and the fold's count.
    let violations =
        egresswatch_testkit::schema_violations("monitor/schema/finding.v1.schema.json", &got);
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(folded[0]["count"], 29_995);
    assert_eq!(folded[0]["folded"], true);
    assert_eq!(
        got[0]["type"],
        "UnauthorizedAccess:EC2/DenylistedDestination"
    );
    assert_eq!(got[0]["severity_value"], 9);
    assert_eq!(got[0]["action"], "allowed");
    assert_eq!(got[0]["first_seen"], "2025-11-26T09:40:00Z");
    // The schema is no rubber stamp: a raw Unix time or an unknown severity is refused.
    let mut bad = got[0].clone();
    bad["first_seen"] = 1_764_150_000.into();
    bad["severity"] = "warning".into();
    let refused =
        egresswatch_testkit::schema_violations("monitor/schema/finding.v1.schema.json", &[bad]);
    assert_eq!(refused.len(), 2, "{refused:#?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn mount_tmpfs(at: &std::path::Path, size: &str) {
    std::fs::create_dir_all(at).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(at)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "mounting a tmpfs needs root (CI runs as root)"
    );
}

fn umount(at: &std::path::Path) {
    let _ = std::process::Command::new("umount").arg(at).status();
}

/// Fills the file system holding `dir` until a write fails for lack of space.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    // Small writes might still fit in a partly used page; take those too.
    let byte = [0u8; 1];
    while f.write_all(&byte).is_ok() {}
    filler
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_state_disk_delays_alerts_and_loses_none() {
    let hook = egresswatch_testkit::webhook_receiver();
    let dir = fresh_dir("full");
    let state = dir.join("state");
    mount_tmpfs(&state, "2m");
    let flows = dir.join("flows.log");
    let normal = "eni-wl 10.0.1.5 10.0.2.9 40000 2049 6 100 ACCEPT OK 10.0.1.5 10.0.2.9 1764150000 1764150060\n";
    std::fs::write(&flows, format!("{HEADER}{normal}{normal}")).unwrap();
    let config = config(
        &dir,
        &flows,
        "follow = true",
        &format!("webhook-url = \"{}\"", hook.url()),
    );
    let checkpoint = state.join("file.checkpoint.json");
    let committed = || {
        egresswatch_monitor::checkpoint::read_checkpoint(&checkpoint)
            .map(|c| c.records_committed)
            .unwrap_or(0)
    };
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(egresswatch_monitor::run(config, metrics.clone(), rx, None));
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Two records (the header line is not one).
    wait("first lines committed", &|| committed() == 2);

    let filler = fill(&state);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&flows)
        .unwrap();
    for i in 1..=3 {
        writeln!(f, "eni-nat 10.0.1.{i} 10.0.0.220 4000{i} 22 6 500 ACCEPT OK 10.0.1.{i} 198.51.100.{i} 1764150000 1764150060").unwrap();
    }
    f.flush().unwrap();
    // The daemon cannot commit: it says so, and the position does not move.
    wait("the source reported failing", &|| {
        metrics.source_up.get() == 0
    });
    assert_eq!(committed(), 2);

    std::fs::remove_file(&filler).unwrap();
    wait("the batch committed once space returned", &|| {
        committed() == 5
    });
    wait("all three alerts delivered", &|| hook.received().len() >= 3);
    assert_eq!(metrics.source_up.get(), 1);
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut remotes: Vec<String> = hook
        .received()
        .iter()
        .map(|a| a["remote"].as_str().unwrap().to_string())
        .collect();
    remotes.sort();
    remotes.dedup();
    assert_eq!(
        remotes,
        vec!["198.51.100.1", "198.51.100.2", "198.51.100.3"]
    );
    assert_eq!(committed(), 5, "each record counted once");
    umount(&state);
    std::fs::remove_dir_all(&dir).unwrap();
}
