//! Exactly once across crashes: 200,000 flow-log records in the stack's log group (one stream
//! per ENI), the `egresswatch monitor` process killed with SIGKILL at random points and
//! restarted each time; in the end the records committed across all runs equal the records
//! written, exactly. And at least once for alerts: with attacks among the records, the
//! alerts a real webhook receiver and a real Alertmanager get across a run killed again and
//! again are, by finding id, those a clean run delivers.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{committed, fresh_dir, scrape, terminate};
use egresswatch_provision::{self as provision, Clients, Mode, StackSpec};

const RECORDS: usize = 200_000;
const STREAMS: usize = 4;

/// Provisions a stack in moto and writes `records` flow-log records over `STREAMS` streams.
async fn stack_with_records(
    moto: &egresswatch_testkit::Service,
    stack: &str,
    records: usize,
) -> provision::Outputs {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let c = Clients::from_env(Some("us-east-1".into()), Some(moto.endpoint()))
        .await
        .unwrap();
    let spec = StackSpec {
        studio_domain: false,
        ..StackSpec::default()
    };
    let (_, out) = provision::reconcile(&c, &spec, stack, Mode::Apply, |_| {})
        .await
        .unwrap();
    let format = flowlog::Format::parse(&out.flow_log_format).unwrap();
    // Records in the flow log's own format.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    for s in 0..STREAMS {
        let events = (0..records / STREAMS)
            .map(|n| {
                let line: Vec<String> = format
                    .fields()
                    .iter()
                    .map(|f| match f.name() {
                        "version" => "5".into(),
                        "interface-id" => format!("eni-0{s:016x}"),
                        "srcaddr" | "pkt-srcaddr" => format!("10.42.16.{}", n % 250 + 1),
                        "dstaddr" | "pkt-dstaddr" => format!("10.42.32.{}", n % 250 + 1),
                        "srcport" => "40000".into(),
                        "dstport" => "2049".into(),
                        "protocol" => "6".into(),
                        "packets" => "1".into(),
                        "bytes" => "100".into(),
                        "start" => "1764150000".into(),
                        "end" => "1764150060".into(),
                        "action" => "ACCEPT".into(),
                        "log-status" => "OK".into(),
                        _ => "-".into(),
                    })
                    .collect();
                (base + n as i64, line.join(" "))
            })
            .collect();
        let stream = format!("eni-0{s:016x}-all");
        provision::logs::put_events(&c, &out.log_group, &stream, events, |_| {})
            .await
            .unwrap();
    }
    out
}

/// `egresswatch monitor` on the stack's log group in moto, with its state in `dir/state` and,
/// if given, a config file.
fn monitor_in(
    moto: &egresswatch_testkit::Service,
    stack: &str,
    dir: &std::path::Path,
    state: &str,
    config: Option<&std::path::Path>,
) -> std::process::Child {
    let mut c = Command::new(env!("CARGO_BIN_EXE_egresswatch"));
    c.args(["monitor", "--stack", stack, "--outputs"])
        .arg(dir.join("outputs.json"))
        .arg("--state-dir")
        .arg(dir.join(state))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", egresswatch_testkit::free_port()),
            "--endpoint-url",
            &moto.endpoint(),
            "--region",
            "us-east-1",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null());
    if let Some(config) = config {
        c.arg("--config").arg(config);
    }
    c.spawn().unwrap()
}

fn monitor(
    moto: &egresswatch_testkit::Service,
    stack: &str,
    dir: &std::path::Path,
) -> std::process::Child {
    monitor_in(moto, stack, dir, "state", None)
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_loses_nothing_and_counts_nothing_twice() {
    let moto = egresswatch_testkit::moto();
    let out = stack_with_records(&moto, "crash", RECORDS).await;
    let dir = fresh_dir("kill9");
    std::fs::write(
        dir.join("outputs.json"),
        serde_json::to_string(&out).unwrap(),
    )
    .unwrap();
    let checkpoint = dir.join("state/cloudwatch.checkpoint.json");
    let committed = || committed(&checkpoint);
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut child = monitor(&moto, "crash", &dir);
        if committed() as usize >= RECORDS {
            // Caught up: let it poll once more to show nothing new is counted, then stop.
            std::thread::sleep(Duration::from_secs(3));
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        // xorshift: a random point between 0.3 and 2.3 seconds into the run.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 2000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        assert!(
            Instant::now() < deadline,
            "only {} of {RECORDS} committed after {kills} kills",
            committed()
        );
    }
    assert!(kills >= 2, "the daemon was killed {kills} times");
    assert_eq!(committed() as usize, RECORDS);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_batch_checkpoints_and_exits_zero() {
    let moto = egresswatch_testkit::moto();
    let total = 80_000;
    let out = stack_with_records(&moto, "term", total).await;
    let dir = fresh_dir("term");
    std::fs::write(
        dir.join("outputs.json"),
        serde_json::to_string(&out).unwrap(),
    )
    .unwrap();
    let checkpoint = dir.join("state/cloudwatch.checkpoint.json");
    let mut child = monitor(&moto, "term", &dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&checkpoint) == 0 {
        assert!(Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate(&child);
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM exits 0");
    let after_term = committed(&checkpoint);
    assert!(after_term > 0);
    // A second run carries on from the checkpoint to exactly the total.
    let mut child = monitor(&moto, "term", &dir);
    while (committed(&checkpoint) as usize) < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total}",
            committed(&checkpoint)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&child);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(committed(&checkpoint) as usize, total);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Attacks hidden among `background` ordinary records in the NAT gateway's stream, each from
/// its own workload to its own remote: SSH straight out, DNS to a public resolver, and port
/// scans whose 40 probes are spread over 2,000 records, so that kills land inside them and
/// only rule state committed together with the positions finds them whole.
async fn stack_with_attacks(
    moto: &egresswatch_testkit::Service,
    stack: &str,
    background: usize,
    attacks: usize,
) -> provision::Outputs {
    let out = stack_with_records(moto, stack, background).await;
    let c = Clients::from_env(Some("us-east-1".into()), Some(moto.endpoint()))
        .await
        .unwrap();
    let format = flowlog::Format::parse(&out.flow_log_format).unwrap();
    let nat = &out.nat_gateways[0];
    let vpc: ipnet::Ipv4Net = out.vpc_cidr.parse().unwrap();
    let octets = vpc.network().octets();
    let line = |workload: usize, remote: &str, port: u16, proto: &str| -> String {
        let workload = format!("{}.{}.16.{workload}", octets[0], octets[1]);
        let fields: Vec<String> = format
            .fields()
            .iter()
            .map(|f| match f.name() {
                "version" => "5".into(),
                "interface-id" => nat.network_interface_id.clone(),
                "srcaddr" | "pkt-srcaddr" => workload.clone(),
                "dstaddr" => nat.private_ip.clone(),
                "pkt-dstaddr" => remote.to_string(),
                "srcport" => "40000".into(),
                "dstport" => port.to_string(),
                "protocol" => proto.into(),
                "packets" => "3".into(),
                "bytes" => "900".into(),
                "start" => "1764150000".into(),
                "end" => "1764150060".into(),
                "action" => "ACCEPT".into(),
                "log-status" => "OK".into(),
                _ => "-".into(),
            })
            .collect();
        fields.join(" ")
    };
    let mut lines: Vec<String> = (0..background)
        .map(|n| line(n % 200 + 1, "93.184.216.34", 443, "6"))
        .collect();
    let per_attack = background / attacks.max(1);
    for a in 0..attacks {
        let at = a * per_attack + per_attack / 4;
        let workload = 210 + a;
        let remote = format!("198.51.100.{}", a + 1);
        match a % 3 {
            0 => lines[at] = line(workload, &remote, 22, "6"),
            1 => lines[at] = line(workload, "8.8.8.8", 53, "17"),
            _ => {
                for k in 0..40 {
                    lines[at + k * 50] = line(workload, &remote, 1_000 + k as u16, "6");
                }
            }
        }
    }
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_000_000;
    let events = lines
        .into_iter()
        .enumerate()
        .map(|(n, l)| (base + n as i64, l))
        .collect();
    let stream = format!("{}-all", nat.network_interface_id);
    provision::logs::put_events(&c, &out.log_group, &stream, events, |_| {})
        .await
        .unwrap();
    out
}

fn monitor_with_sinks(
    moto: &egresswatch_testkit::Service,
    stack: &str,
    dir: &std::path::Path,
    state: &str,
    webhook: &str,
    alertmanager: Option<&str>,
) -> std::process::Child {
    let mut toml = format!("[alerts]\nstdout = false\nwebhook-url = \"{webhook}\"\n");
    if let Some(am) = alertmanager {
        toml.push_str(&format!("alertmanager-url = \"{am}\"\n"));
    }
    let config = dir.join(format!("{state}.toml"));
    std::fs::write(&config, toml).unwrap();
    monitor_in(moto, stack, dir, state, Some(&config))
}

fn ids(received: &[serde_json::Value]) -> std::collections::BTreeSet<String> {
    received
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_loses_no_alert() {
    const BACKGROUND: usize = 60_000;
    const ATTACKS: usize = 12;
    let moto = egresswatch_testkit::moto();
    let out = stack_with_attacks(&moto, "alerts", BACKGROUND, ATTACKS).await;
    let total = (BACKGROUND * 2) as u64;
    let dir = fresh_dir("kill9-alerts");
    std::fs::write(
        dir.join("outputs.json"),
        serde_json::to_string(&out).unwrap(),
    )
    .unwrap();

    // A clean run: what should be delivered.
    let clean_hook = egresswatch_testkit::webhook_receiver();
    let mut child = monitor_with_sinks(&moto, "alerts", &dir, "clean", &clean_hook.url(), None);
    common::wait_until_committed(
        &dir.join("clean/cloudwatch.checkpoint.json"),
        total,
        Duration::from_secs(300),
    );
    // Stopping gives the sinks their grace to deliver what is left.
    terminate(&child);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let want = ids(&clean_hook.received());
    // Every attack alerts; a DNS query straight out is also non-HTTPS egress.
    assert!(want.len() >= ATTACKS, "{:#?}", clean_hook.received());
    let scans = clean_hook
        .received()
        .iter()
        .filter(|a| a["rule"] == "port_scan")
        .count();
    assert_eq!(scans, ATTACKS / 3, "each spread-out scan found once");
    assert_eq!(
        want.len(),
        clean_hook.received().len(),
        "a clean run repeats nothing"
    );

    // The same records, the daemon killed with SIGKILL at random points until it is done.
    let hook = egresswatch_testkit::webhook_receiver();
    let am = egresswatch_testkit::alertmanager();
    let checkpoint = dir.join("crashy/cloudwatch.checkpoint.json");
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        child = monitor_with_sinks(
            &moto,
            "alerts",
            &dir,
            "crashy",
            &hook.url(),
            Some(&am.endpoint()),
        );
        if committed(&checkpoint) >= total && ids(&hook.received()).len() >= want.len() {
            std::thread::sleep(Duration::from_secs(2));
            terminate(&child);
            assert_eq!(child.wait().unwrap().code(), Some(0));
            break;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(200 + seed % 1500));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        assert!(
            Instant::now() < deadline,
            "{} of {total} committed, {} alerts, after {kills} kills",
            committed(&checkpoint),
            hook.received().len()
        );
    }
    assert!(kills >= 2, "killed {kills} times");
    assert_eq!(committed(&checkpoint), total, "records counted once");
    let got = hook.received();
    assert_eq!(
        ids(&got),
        want,
        "the webhook got every alert of the clean run"
    );
    let alerts: Vec<serde_json::Value> = reqwest::get(format!("{}/api/v2/alerts", am.endpoint()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let in_am: std::collections::BTreeSet<String> = alerts
        .iter()
        .map(|a| a["annotations"]["finding_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        in_am, want,
        "Alertmanager holds every alert of the clean run"
    );
    eprintln!(
        "kill -9: {kills} kills, {} deliveries to the webhook for {} alerts ({} repeats)",
        got.len(),
        want.len(),
        got.len() - want.len()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `egresswatch monitor` reading `source` with `dir/config` and its state in `dir/state`.
fn local_monitor(dir: &std::path::Path, source: &str, config: &str) -> Command {
    local_monitor_on(dir, source, config, egresswatch_testkit::free_port())
}

fn local_monitor_on(dir: &std::path::Path, source: &str, config: &str, port: u16) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_egresswatch"));
    c.args(["monitor", "--source", source, "--config"])
        .arg(dir.join(config))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    c
}

#[test]
fn sighup_reloads_the_config_and_sigterm_with_stdin_blocked_exits_promptly() {
    let dir = fresh_dir("stdin-term");
    let network = "status-interval-seconds = 1\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\n[alerts]\nstdout = false\n";
    std::fs::write(dir.join("topology.toml"), network).unwrap();
    let port = egresswatch_testkit::free_port();
    // stdin is a pipe nobody writes to or closes: the read blocks for ever.
    let mut child = local_monitor_on(&dir, "stdin", "topology.toml", port)
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _writer = child.stdin.take();
    let metric = |name: &str| -> Option<f64> {
        scrape(port).lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
        })
    };
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ok() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("the daemon's metrics", &|| {
        metric("egresswatch_config_last_reload_successful") == Some(1.0)
    });
    let loaded = metric("egresswatch_config_last_reload_success_timestamp_seconds").unwrap();
    let pid = child.id().to_string();
    let hup = || {
        let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
        assert!(status.success());
    };
    // A config that no longer parses: refused, said in the metric, the daemon goes on.
    std::fs::write(dir.join("topology.toml"), "[topology\n").unwrap();
    hup();
    wait_for("the bad config refused", &|| {
        metric("egresswatch_config_last_reload_successful") == Some(0.0)
    });
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the daemon"
    );
    // Fixed, a second later (the timestamp has second resolution): reloaded on SIGHUP.
    std::thread::sleep(Duration::from_millis(1_100));
    std::fs::write(
        dir.join("topology.toml"),
        format!("{network}[[suppress]]\nreason = \"partner SFTP\"\nport = 22\n"),
    )
    .unwrap();
    hup();
    wait_for("the fixed config reloaded", &|| {
        metric("egresswatch_config_last_reload_successful") == Some(1.0)
    });
    assert!(metric("egresswatch_config_last_reload_success_timestamp_seconds").unwrap() > loaded);
    let sent = Instant::now();
    terminate(&child);
    let deadline = sent + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running 10 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(2), "took {took:?}");
    eprintln!("SIGTERM with stdin blocked: exited 0 after {took:?}");
    // The log said how reading went while the input was quiet, and what the reloads did.
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(
        log.lines().any(|l| l.contains(" reading ")
            && l.contains("records=0")
            && l.contains("source=stdin")),
        "{log}"
    );
    assert!(log.contains("configuration not reloaded"), "{log}");
    assert!(log.contains("configuration reloaded"), "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_stdout_nobody_reads_does_not_hold_the_process() {
    let dir = fresh_dir("stdout-blocked");
    // Rejected attempts from 400 workloads over ten fold windows: about a thousand alerts,
    // far more than a pipe holds.
    let mut flows = String::from(
        "interface-id srcaddr dstaddr srcport dstport protocol bytes action log-status start end\n",
    );
    for i in 0..40_000u32 {
        let t = 1_764_150_000 + (i / 4_000) * 600;
        flows.push_str(&format!(
            "eni-wl 10.0.{}.{} 198.18.{}.{} 40000 443 6 60 REJECT OK {t} {}\n",
            i % 400 / 200 + 1,
            i % 200 + 1,
            i / 250 % 250,
            i % 250 + 1,
            t + 60
        ));
    }
    std::fs::write(dir.join("flows.log"), flows).unwrap();
    std::fs::write(
        dir.join("monitor.toml"),
        "[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\n[alerts]\nshutdown-grace-seconds = 1\n",
    )
    .unwrap();
    let source = format!("file:{}", dir.join("flows.log").display());
    let mut child = local_monitor(&dir, &source, "monitor.toml")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Hold the pipe open and never read it.
    let _stdout = child.stdout.take();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "still running a minute after its input ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(0), "{log}");
    // What stdout could not take stays in the outbox, and the log says so.
    assert!(
        log.contains("kept in the outbox and sent at the next start"),
        "{log}"
    );
    eprintln!("blocked stdout: exited 0 after {took:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
