//! Simulated attacks through the real command line: `evaluate` over five seeds must detect
//! every attack with no false finding; `simulate` into a file and into the stack's CloudWatch
//! log group (moto) must be caught by `egresswatch monitor` itself, finding by finding
//! against the labels.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    egresswatch, fresh_dir, provision_stack, records_simulated, terminate, wait_until_committed,
};
use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_egresswatch"));
    c.env("RUST_LOG", "warn");
    c
}

/// The JSON lines a command printed, after checking it succeeded.
fn json_lines(out: &std::process::Output) -> Vec<Value> {
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

fn labels(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The findings (JSON lines the stdout sink printed) that name the label's workload and
/// one of its remotes, or none for a sweep.
fn matching<'a>(label: &Value, findings: &'a [Value]) -> Vec<&'a Value> {
    let remotes: Vec<&str> = label["remotes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let accomplices = label["accomplices"].as_array().cloned().unwrap_or_default();
    findings
        .iter()
        .filter(|f| f["workload"] == label["workload"] || accomplices.contains(&f["workload"]))
        .filter(|f| match f["remote"].as_str() {
            Some(r) => remotes.contains(&r),
            // A fold of many findings of the workload names no remote, nor does a finding
            // about the S3 endpoint path (flow logs cannot name the bucket).
            None if f["folded"] == true || f["remote_port"].is_null() => true,
            None => remotes.len() > 1 && f["remote_port"] == label["remote_port"],
        })
        .collect()
}

/// The rules one of which must catch each scenario (others may fire too).
fn expected_rule(scenario: &str) -> &'static [&'static str] {
    match scenario {
        "ssh-exfil" | "unusual-port" => &["non_https_egress"],
        // From a workload that uploads hundreds of megabytes as its daily work, a gigabyte
        // upload is not unusual in volume, only in where it goes.
        "https-upload" => &["traffic_volume_unusual", "rare_destination"],
        // No one address receives much; the new network receives it all. No one workload
        // sends much either: the new destination receives it all.
        "spray-upload" | "split-upload" => &["rare_destination"],
        "s3-exfil" => &["s3_endpoint_upload"],
        "jittered-beacon" | "long-beacon" => &["beaconing"],
        "blocked-tunnel" => &["rejected_egress"],
        // A drip the end of the simulation cuts short of the horizon's threshold is found
        // by where it goes.
        "slow-drip" => &["slow_drip", "rare_destination"],
        "beaconing" => &["beaconing"],
        "port-scan" => &["port_scan"],
        "port-sweep" => &["port_sweep"],
        "denylisted" | "tor" => &["denylisted_destination"],
        "dns-outside" | "dns-over-https" | "dns-over-tls" => &["dns_bypass"],
        "shared-storage-upload" => &["upload_volume_unusual"],
        "first-day-beacon" => &["beaconing"],
        "first-hour-upload" => &["rare_destination"],
        "reverse-shell" => &["long_connection"],
        other => panic!("unknown scenario {other}"),
    }
}

#[test]
fn evaluate_detects_every_attack_on_five_seeds_without_false_findings() {
    let out = bin()
        .args([
            "evaluate",
            "--seeds",
            "1,2,3,4,5",
            "--duration",
            "2d",
            "--attacks-after",
            "30h",
            "--workloads",
            "10",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 105, "twenty-one attacks on five seeds");
    for o in outcomes {
        let scenario = o["scenario"].as_str().unwrap();
        assert_eq!(o["detected"], true, "{o}");
        let rules: Vec<&str> = o["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert!(
            expected_rule(scenario).iter().any(|r| rules.contains(r)),
            "{o}"
        );
        assert!(o["records"].as_u64().unwrap() > 0);
    }
    // Nothing pages falsely. The rules that judge a workload against its own history find a
    // quiet workload's jump, which is also what a dataset of gigabytes saved to S3 (low) and
    // a training job's first checkpoints after a quiet night (medium) look like in flow
    // logs: counted here, in 100 workload-days of a 10-workload fleet.
    let by_severity = &report["false_by_severity"];
    let at = |s: &str| by_severity[s].as_u64().unwrap_or(0);
    assert_eq!(
        at("critical") + at("high"),
        0,
        "{}",
        report["false_examples"]
    );
    assert!(
        at("medium") + at("low") <= 20,
        "{}",
        report["false_examples"]
    );
    assert!(report["benign_records"].as_u64().unwrap() > 500_000);

    // The attacks played by a quiet workload (in `all` another attack's gigabytes can be the
    // chosen workload's own history), each built to hide under a volume rule's bar: found on
    // every seed by the rule named. The one built where flow logs are blind is reported
    // with the reason and does not fail the run.
    let out = bin()
        .args([
            "evaluate",
            "--seeds",
            "1,2,3,4,5",
            "--duration",
            "3d",
            "--attacks-after",
            "30h",
            "--workloads",
            "10",
            "--scenario",
            "benign,shared-storage-upload,s3-under-floor,slow-ramp,sparse-beacon",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 20, "four attacks on five seeds");
    for o in outcomes {
        let expected = match o["scenario"].as_str().unwrap() {
            "shared-storage-upload" | "slow-ramp" => "upload_volume_unusual",
            "s3-under-floor" => "s3_endpoint_upload",
            "sparse-beacon" => {
                assert!(o["blind"].as_str().unwrap().contains("six gaps"), "{o}");
                continue;
            }
            other => panic!("unexpected scenario {other}"),
        };
        assert_eq!(o["detected"], true, "{o}");
        assert!(o["blind"].is_null(), "{o}");
        assert!(
            o["rules"].as_array().unwrap().iter().any(|r| r == expected),
            "{o}"
        );
    }
}

#[test]
fn the_monitor_catches_simulated_attacks_from_a_file_and_remembers_what_it_learnt() {
    let dir = fresh_dir("sim-file");
    let flows = dir.join("flows.log");
    let status = bin()
        .args([
            "simulate",
            "--scenario",
            "all",
            "--duration",
            "2d",
            "--attacks-after",
            "30h",
            "--workloads",
            "6",
            "--seed",
            "11",
            "--start",
            "1764547200",
        ])
        .arg("--to")
        .arg(format!("file:{}", flows.display()))
        .arg("--labels")
        .arg(dir.join("labels.jsonl"))
        .arg("--denylists-out")
        .arg(dir.join("lists"))
        .status()
        .unwrap();
    assert!(status.success());
    let config = dir.join("monitor.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate-dir = \"{}\"\nsource = \"file:{}\"\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\nnat-interfaces = [\"eni-0a7e1b2c3d4e5f601\"]\nnat-private-ips = [\"10.0.0.157\"]\n[rules]\ndenylists = [\"{}\", \"{}\"]\n",
            egresswatch_testkit::free_port(),
            dir.join("state").display(),
            flows.display(),
            dir.join("lists/threats.txt").display(),
            dir.join("lists/tor-exits.txt").display()
        ),
    )
    .unwrap();
    let findings = json_lines(
        &bin()
            .args(["monitor", "--config"])
            .arg(&config)
            .output()
            .unwrap(),
    );
    let truth = labels(&dir.join("labels.jsonl"));
    assert_eq!(truth.len(), 21);
    let mut explained = 0;
    for label in &truth {
        let hits = matching(label, &findings);
        let rules = expected_rule(label["scenario"].as_str().unwrap());
        assert!(
            hits.iter().any(|f| rules.iter().any(|r| f["rule"] == *r)),
            "{label} not caught by {rules:?}; findings: {hits:?}"
        );
        explained += hits.len();
    }
    // Every finding belongs to an attack.
    assert!(explained >= findings.len(), "{findings:#?}");
    // `score` agrees, and counts a finding about no attack as false by rule. The labels do
    // not say which benign profile made which traffic, so it blames none.
    let mut scored = findings.clone();
    let mut stray = findings[0].clone();
    stray["workload"] = Value::from("10.0.250.250");
    stray["remote"] = Value::from("203.0.113.9");
    scored.push(stray.clone());
    let findings_file = dir.join("findings.jsonl");
    std::fs::write(
        &findings_file,
        scored
            .iter()
            .map(|f| f.to_string() + "\n")
            .collect::<String>(),
    )
    .unwrap();
    let score = |output: &str| {
        bin()
            .args(["score", "-o", output, "--labels"])
            .arg(dir.join("labels.jsonl"))
            .arg("--findings")
            .arg(&findings_file)
            .output()
            .unwrap()
    };
    let out = score("json");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["outcomes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["detected"] == true));
    // The stray, and at most two low-severity findings of the rules that judge a workload
    // against its own history (a dataset saved to S3, a training job's first checkpoints).
    let false_findings = report["false_findings"].as_u64().unwrap();
    assert!((1..=3).contains(&false_findings), "{report}");
    assert!(report["false_by_rule"][stray["rule"].as_str().unwrap()].as_u64() >= Some(1));
    assert_eq!(report["false_by_rule_and_profile"], serde_json::json!({}));
    let text = String::from_utf8_lossy(&score("text").stdout).to_string();
    assert!(text.contains("false findings by rule:"), "{text}");
    assert!(!text.contains("benign profile"), "{text}");
    // Each at a severity its rule's series were started at.
    for f in &findings {
        let rule = f["rule"].as_str().unwrap();
        assert!(
            egresswatch_monitor::finding::severities(rule)
                .iter()
                .any(|s| f["severity"] == s.as_str()),
            "{f}"
        );
    }
    // Behavioural rules carry their evidence.
    let volume = findings
        .iter()
        .find(|f| f["rule"] == "traffic_volume_unusual")
        .unwrap();
    assert!(volume["evidence"]["observed"].as_f64().unwrap() >= 50e6);
    // The daemon kept every alert in its findings store: `findings` lists the same ones.
    let kept = json_lines(
        &bin()
            .args([
                "findings",
                "--since",
                "400d",
                "--output",
                "json",
                "--state-dir",
            ])
            .arg(dir.join("state"))
            .output()
            .unwrap(),
    );
    let ids = |v: &[Value]| {
        let mut ids: Vec<String> = v
            .iter()
            .map(|f| f["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        ids
    };
    assert_eq!(ids(&kept), ids(&findings));
    let high = bin()
        .args([
            "findings",
            "--since",
            "400d",
            "--severity",
            "high",
            "--output",
            "json",
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .output()
        .unwrap();
    let high = String::from_utf8_lossy(&high.stdout).lines().count();
    assert!(high > 0 && high < kept.len(), "{high} of {}", kept.len());
    let table = bin()
        .args([
            "findings",
            "--since",
            "400d",
            "--rule",
            "beaconing",
            "--state-dir",
        ])
        .arg(dir.join("state"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    let beacons = findings.iter().filter(|f| f["rule"] == "beaconing").count();
    assert!(beacons > 0);
    assert!(
        table.starts_with("LAST SEEN")
            && table.contains(&format!("{beacons} finding(s) in the last 400d")),
        "{table}"
    );

    // The report renders in a browser with what the store holds.
    let page = dir.join("report.html");
    let report = bin()
        .args(["report", "--since", "400d", "--out"])
        .arg(&page)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let dom = egresswatch_testkit::chromium(&page, "--dump-dom");
    // One per alert: stdout also printed each update of an alert that repeated.
    let severity_count = |s: &str| kept.iter().filter(|f| f["severity"] == s).count();
    for s in ["critical", "high", "medium", "low"] {
        assert!(
            dom.contains(&format!(
                "data-severity=\"{s}\"><b>{}</b>",
                severity_count(s)
            )),
            "{s}"
        );
    }
    let mut rules: Vec<&str> = findings
        .iter()
        .map(|f| f["rule"].as_str().unwrap())
        .collect();
    rules.sort();
    rules.dedup();
    for r in &rules {
        assert!(
            dom.contains(&format!("data-rule=\"{r}\"")),
            "no bar for {r}"
        );
    }
    let attacks = kept
        .iter()
        .filter(|f| f["severity"] == "critical" || f["severity"] == "high")
        .count();
    assert!(dom.contains(&format!(
        "Attacks found: critical and high findings ({attacks})"
    )));
    // A screenshot the test keeps, for a person to look at.
    let shot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("report.png");
    let _ = std::fs::remove_file(&shot);
    egresswatch_testkit::chromium(&page, &format!("--screenshot={}", shot.display()));
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 20_000,
        "{} bytes",
        png.len()
    );
    eprintln!("report screenshot: {}", shot.display());

    // What the rules learnt is in the state dir, and a second run starts from it.
    let cp =
        egresswatch_monitor::checkpoint::read_checkpoint(&dir.join("state/file.checkpoint.json"))
            .unwrap();
    assert!(cp.generation > 0);
    let snapshot = dir.join(format!("state/file.rules.{}.state", cp.generation % 2));
    assert!(std::fs::metadata(&snapshot).unwrap().len() > 1_000);
    // The second run logs JSON, one object a line, as a log pipeline takes it.
    let again = bin()
        .args(["--log-format", "json", "monitor", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&again.stderr);
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string()),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "restored what the rules had learnt"),
        "{log}"
    );
    assert!(!log.contains("not restored"), "{log}");

    // A network description that is not these flow logs' (another VPC's NAT gateway): said
    // once, loudly, instead of a quiet run with no findings.
    let wrong = dir.join("wrong.toml");
    std::fs::write(
        &wrong,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate-dir = \"{}\"\nsource = \"file:{}\"\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\nnat-interfaces = [\"eni-0000000000000dead\"]\nnat-private-ips = [\"10.0.255.1\"]\n[alerts]\nstdout = false\n",
            egresswatch_testkit::free_port(),
            dir.join("wrong-state").display(),
            flows.display(),
        ),
    )
    .unwrap();
    let out = bin()
        .args(["monitor", "--config"])
        .arg(&wrong)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert_eq!(
        log.matches("does not seem to match these flow logs")
            .count(),
        1,
        "{log}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn simulated_traffic_in_cloudwatch_is_caught_by_the_daemon() {
    let moto = egresswatch_testkit::moto();
    let dir = fresh_dir("sim-cw");
    let stack = "simcw";
    let outputs = provision_stack(&moto.endpoint(), stack, &dir);

    // Attacks that need no learnt baseline, in an hour of a small fleet's work.
    let s = egresswatch(&moto.endpoint())
        .args([
            "simulate",
            "--to",
            "cloudwatch",
            "--stack",
            stack,
            "--scenario",
            "benign,port-scan,dns-outside,tor,denylisted,ssh-exfil",
            "--duration",
            "2h",
            "--attacks-after",
            "10m",
            "--workloads",
            "4",
        ])
        .arg("--outputs")
        .arg(&outputs)
        .arg("--labels")
        .arg(dir.join("labels.jsonl"))
        .arg("--denylists-out")
        .arg(dir.join("lists"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&s.stderr);
    assert!(s.status.success(), "{err}");
    let written = records_simulated(&err);
    assert!(written > 1_000, "{err}");

    let config = dir.join("monitor.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate-dir = \"{}\"\nstack = \"{stack}\"\noutputs-file = \"{}\"\npoll-interval-seconds = 1\n[rules]\ndenylists = [\"{}\", \"{}\"]\n",
            egresswatch_testkit::free_port(),
            dir.join("state").display(),
            outputs.display(),
            dir.join("lists/threats.txt").display(),
            dir.join("lists/tor-exits.txt").display()
        ),
    )
    .unwrap();
    let child = egresswatch(&moto.endpoint())
        .args(["monitor", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until every record written is committed, then stop the daemon.
    wait_until_committed(
        &dir.join("state/cloudwatch.checkpoint.json"),
        written,
        Duration::from_secs(120),
    );
    terminate(&child);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let findings: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let truth = labels(&dir.join("labels.jsonl"));
    assert_eq!(truth.len(), 5);
    for label in &truth {
        let rules = expected_rule(label["scenario"].as_str().unwrap());
        assert!(
            matching(label, &findings)
                .iter()
                .any(|f| rules.iter().any(|r| f["rule"] == *r)),
            "{label} not caught by {rules:?}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn two_stacks_in_one_daemon_are_each_read_and_judged_on_their_own() {
    let dir = fresh_dir("sim-stacks");
    let mut written = Vec::new();
    for (name, seed) in [("research", "11"), ("clinical", "12")] {
        let out = bin()
            .args([
                "simulate",
                "--scenario",
                "all",
                "--duration",
                "2d",
                "--attacks-after",
                "30h",
                "--workloads",
                "6",
                "--seed",
                seed,
                "--start",
                "1764547200",
            ])
            .arg("--to")
            .arg(format!(
                "file:{}",
                dir.join(format!("{name}.log")).display()
            ))
            .arg("--labels")
            .arg(dir.join(format!("{name}.labels.jsonl")))
            .arg("--denylists-out")
            .arg(dir.join("lists"))
            .output()
            .unwrap();
        assert!(out.status.success());
        written.push(records_simulated(&String::from_utf8_lossy(&out.stderr)));
    }
    let stack = |name: &str| {
        format!(
            "[[stacks]]\nname = \"{name}\"\nsource = \"file:{}\"\n[stacks.topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\nnat-interfaces = [\"eni-0a7e1b2c3d4e5f601\"]\nnat-private-ips = [\"10.0.0.157\"]\n",
            dir.join(format!("{name}.log")).display()
        )
    };
    let config = dir.join("monitor.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{}\"\nstate-dir = \"{}\"\n[rules]\ndenylists = [\"{}\", \"{}\"]\n{}{}",
            egresswatch_testkit::free_port(),
            dir.join("state").display(),
            dir.join("lists/threats.txt").display(),
            dir.join("lists/tor-exits.txt").display(),
            stack("research"),
            stack("clinical"),
        ),
    )
    .unwrap();
    let out = bin()
        .args(["monitor", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // Each stack kept its own position (and its own state dir) and read all of its records.
    for (name, written) in ["research", "clinical"].iter().zip(&written) {
        let cp = egresswatch_monitor::checkpoint::read_checkpoint(
            &dir.join(format!("state/{name}/file.checkpoint.json")),
        )
        .unwrap();
        assert_eq!(cp.records_committed, *written, "{name}");
        // Every attack of the stack is found among the findings that name it.
        let own: Vec<Value> = findings
            .iter()
            .filter(|f| f["stack"] == *name)
            .cloned()
            .collect();
        let truth = labels(&dir.join(format!("{name}.labels.jsonl")));
        assert_eq!(truth.len(), 21);
        for label in &truth {
            let rules = expected_rule(label["scenario"].as_str().unwrap());
            assert!(
                matching(label, &own)
                    .iter()
                    .any(|f| rules.iter().any(|r| f["rule"] == *r)),
                "{name}: {label} not caught by {rules:?}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
