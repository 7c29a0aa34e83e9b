//! What ships for operators, checked with the real tools: the alert rules with promtool, the
//! Alertmanager example with amtool, the dashboards' structure, and end to end a real
//! Prometheus scraping the daemon while simulated attacks arrive in CloudWatch (moto): every
//! panel query of every dashboard must be valid there and return data, and the alert rules
//! must fire in that Prometheus and reach a real Alertmanager.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{egresswatch, fresh_dir, provision_stack, records_simulated};
use serde_json::Value;

/// Read at run time, so a build cache shared between checkouts tests this one.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {text}");
    text
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = root().join("dashboards/prometheus");
    let checked = run(Command::new("promtool")
        .args(["check", "rules", "egresswatch-rules.yml"])
        .current_dir(&dir));
    assert!(checked.contains("SUCCESS: 12 rules found"), "{checked}");
    let tested = run(Command::new("promtool")
        .args(["test", "rules", "egresswatch-rules.test.yml"])
        .current_dir(&dir));
    assert!(tested.contains("SUCCESS"), "{tested}");
    // Every alert has a unit test and a runbook section in the README.
    let rules = std::fs::read_to_string(dir.join("egresswatch-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("egresswatch-rules.test.yml")).unwrap();
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {line}")),
            "{line} untested"
        );
    }
    let anchors: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.split("{{ end }}#").nth(1))
        .map(|a| a.trim_end_matches('"'))
        .collect();
    assert_eq!(anchors.len(), 12, "every rule links its runbook");
    // The links lead into the repository the project declares, as the daemon's own do.
    for url in rules
        .lines()
        .filter_map(|l| l.split("{{ else }}").nth(1))
        .filter_map(|l| l.split("{{ end }}").next())
    {
        assert_eq!(
            url,
            egresswatch_monitor::config::DEFAULT_RUNBOOK_BASE_URL,
            "a rule's runbook link"
        );
        assert!(url.starts_with(env!("CARGO_PKG_REPOSITORY")));
    }
    // And the daemon's own finding alerts.
    for anchor in anchors.into_iter().chain(["runbook-findings"]) {
        assert!(
            readme.contains(&format!("<a id=\"{anchor}\"></a>")),
            "README has no runbook anchor {anchor}"
        );
    }
}

#[test]
fn alertmanager_example_is_valid() {
    let out = run(Command::new("amtool")
        .args(["check-config", "alertmanager.yml"])
        .current_dir(root().join("dashboards/alertmanager")));
    assert!(out.contains("SUCCESS"), "{out}");
    // Findings go to security, the daemon's health to the platform team, each by severity.
    for (labels, receiver) in [
        (
            "alertname=EgressWatchFinding severity=critical",
            "security-pager",
        ),
        (
            "alertname=EgressWatchFinding severity=high",
            "security-pager",
        ),
        (
            "alertname=EgressWatchFinding severity=medium",
            "security-chat",
        ),
        ("alertname=EgressWatchFinding severity=low", "low-priority"),
        (
            "alertname=EgressWatchDown severity=critical",
            "platform-pager",
        ),
        (
            "alertname=EgressWatchBadLines severity=warning",
            "platform-chat",
        ),
        (
            "alertname=EgressWatchSkipData severity=info",
            "low-priority",
        ),
    ] {
        let routed = run(Command::new("amtool")
            .args(["config", "routes", "test", "--config.file=alertmanager.yml"])
            .args(labels.split(' '))
            .current_dir(root().join("dashboards/alertmanager")));
        let chosen: Vec<&str> = routed
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("Warning"))
            .collect();
        assert_eq!(chosen, [receiver], "{labels}: {routed}");
    }
}

fn dashboards() -> Vec<(String, Value)> {
    let dir = root().join("dashboards/grafana");
    let mut v: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                serde_json::from_str(&text).unwrap(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Every (dashboard, panel title, query) with Grafana's variables filled in as Grafana would.
fn panel_queries() -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (file, d) in dashboards() {
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let q = t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "1m")
                    .replace("$__range", "1h")
                    .replace("$instance", ".*")
                    .replace("$stack", ".*");
                out.push((file.clone(), p["title"].as_str().unwrap().to_string(), q));
            }
        }
    }
    out
}

#[test]
fn dashboards_take_their_data_source_from_a_variable() {
    let all = dashboards();
    assert_eq!(all.len(), 2);
    for (file, d) in &all {
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(
            vars.iter()
                .any(|v| v["name"] == "stack" && v["allValue"] == ".*"),
            "{file}: a stack picker whose All matches a daemon of one stack"
        );
        assert!(
            vars.iter()
                .any(|v| v["type"] == "datasource" && v["query"] == "prometheus"),
            "{file}"
        );
        assert!(d["uid"].as_str().unwrap().starts_with("egresswatch-"));
        for p in d["panels"].as_array().unwrap() {
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "{file}: {}",
                p["title"]
            );
            for t in p["targets"].as_array().unwrap() {
                assert_eq!(t["datasource"]["uid"], "${datasource}");
                // The instance picker applies to every panel, the stack picker to every
                // series of the daemon's (the scrape's own `up` has no stack).
                let expr = t["expr"].as_str().unwrap();
                assert!(
                    expr.contains("instance=~\"$instance\""),
                    "{file}: {}: {expr}",
                    p["title"]
                );
                assert_eq!(
                    expr.matches("egresswatch_").count(),
                    expr.matches("stack=~\"$stack\"").count(),
                    "{file}: {}: {expr}",
                    p["title"]
                );
            }
        }
    }
    // What is bad is red: the daemon down, a critical finding.
    let panel = |file: &str, title: &str| -> Value {
        all.iter().find(|(f, _)| f == file).unwrap().1["panels"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["title"] == title)
            .unwrap()
            .clone()
    };
    let up = panel("daemon-health.json", "Daemon up");
    let mappings = &up["fieldConfig"]["defaults"]["mappings"][0]["options"];
    assert_eq!(mappings["0"]["color"], "red");
    assert_eq!(mappings["1"]["color"], "green");
    let severity = panel("egress-overview.json", "Findings by severity");
    let critical = severity["fieldConfig"]["overrides"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["matcher"]["options"] == "critical")
        .unwrap();
    assert_eq!(
        critical["properties"][0]["value"]["steps"][1],
        serde_json::json!({"color": "red", "value": 1})
    );
}

fn get_json(url: &str) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", url])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{url}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn query(prometheus: &str, q: &str) -> Value {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-G"])
        .arg(format!("{prometheus}/api/v1/query"))
        .arg("--data-urlencode")
        .arg(format!("query={q}"))
        .output()
        .unwrap();
    // A Prometheus still starting (or busy) answers nothing: null, and the caller's wait goes
    // on; what it answers must be JSON.
    if out.stdout.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{q}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn prometheus_scrapes_the_daemon_runs_every_panel_and_alerts_reach_alertmanager() {
    let moto = egresswatch_testkit::moto();
    let dir = fresh_dir("ops");
    let stack = "opsdemo";
    let outputs_file = provision_stack(&moto.endpoint(), stack, &dir);
    let lists = dir.join("lists");
    std::fs::create_dir_all(&lists).unwrap();
    std::fs::write(
        lists.join("threats.txt"),
        egresswatch_simulate::threat_list(),
    )
    .unwrap();

    // The daemon first (sending its own alerts to Alertmanager), so Prometheus sees its
    // counters rise.
    let alertmanager = egresswatch_testkit::alertmanager();
    let port = egresswatch_testkit::free_port();
    let config = dir.join("monitor.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate-dir = \"{}\"\nstack = \"{stack}\"\noutputs-file = \"{}\"\npoll-interval-seconds = 1\n[rules]\ndenylists = [\"{}\"]\n[alerts]\nstdout = false\nalertmanager-url = \"{}\"\n",
            dir.join("state").display(),
            outputs_file.display(),
            lists.join("threats.txt").display(),
            alertmanager.endpoint()
        ),
    )
    .unwrap();
    let mut daemon = egresswatch(&moto.endpoint())
        .args(["monitor", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let prometheus = egresswatch_testkit::prometheus(
        &[format!("127.0.0.1:{port}")],
        &[root().join("dashboards/prometheus/egresswatch-rules.yml")],
        Some(&alertmanager.endpoint()),
    );
    let prom = prometheus.endpoint();
    wait_for("the first scrapes", Duration::from_secs(60), || {
        query(&prom, "count_over_time(up{job=\"egresswatch\"}[1m])")["data"]["result"][0]["value"]
            [1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .is_some_and(|n| n >= 2.0)
    });

    // An hour of a small fleet's work with attacks in it: a weekday morning of the past week,
    // so that the simulated team is at work (and uses every path) whatever day the test runs.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut day = now / 86_400 - 1;
    // 1970-01-01 was a Thursday; (day + 3) % 7 == 2 is a Wednesday.
    while (day + 3) % 7 != 2 {
        day -= 1;
    }
    let start = (day * 86_400 + 10 * 3_600).to_string();
    let simulated = run(egresswatch(&moto.endpoint())
        .args([
            "simulate",
            "--to",
            "cloudwatch",
            "--stack",
            stack,
            "--duration",
            "1h",
            "--attacks-after",
            "10m",
            "--workloads",
            "4",
            "--scenario",
            "benign,ssh-exfil,denylisted,port-scan,dns-outside,port-sweep",
            "--start",
            &start,
        ])
        .arg("--outputs")
        .arg(&outputs_file));
    let written = records_simulated(&simulated) as f64;
    // Every record processed and scraped (records and status records together), so every
    // path's series exists, before the panels are asked.
    wait_for(
        "every record to be scraped",
        Duration::from_secs(90),
        || {
            query(
                &prom,
                "sum(egresswatch_flow_records_total) + sum(egresswatch_status_records_total)",
            )["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .is_some_and(|n| n >= written)
        },
    );
    assert!(
        query(&prom, "sum(egresswatch_findings_total)")["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|n| n >= 5.0)
    );
    std::thread::sleep(Duration::from_secs(3));

    // Every panel's query is valid in Prometheus and returns data.
    let queries = panel_queries();
    assert!(queries.len() >= 20);
    for (file, title, q) in &queries {
        let r = query(&prom, q);
        assert_eq!(r["status"], "success", "{file} / {title}: {q}: {r}");
        let result = r["data"]["result"].as_array().unwrap();
        assert!(!result.is_empty(), "{file} / {title}: no data for {q}");
    }

    // Every shipped rule loads and evaluates in Prometheus.
    let groups = get_json(&format!("{prom}/api/v1/rules"))["data"]["groups"].clone();
    let rules: Vec<Value> = groups
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().clone())
        .collect();
    assert!(rules.len() >= 12, "{groups}");
    wait_for("every rule evaluated", Duration::from_secs(30), || {
        get_json(&format!("{prom}/api/v1/rules"))["data"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .all(|r| r["health"] == "ok")
    });
    // Findings reach Alertmanager by one path, the daemon's own alert, with a runbook link;
    // no rule in Prometheus makes a second alert of them.
    let am = alertmanager.endpoint();
    wait_for(
        "the daemon's finding alerts",
        Duration::from_secs(90),
        || {
            get_json(&format!(
                "{am}/api/v2/alerts?filter=rule%3D%22denylisted_destination%22"
            ))
            .as_array()
            .is_some_and(|a| !a.is_empty())
        },
    );
    let alerts = get_json(&format!("{am}/api/v2/alerts"));
    let alerts = alerts.as_array().unwrap();
    let findings: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["labels"]["rule"].is_string())
        .collect();
    assert!(!findings.is_empty());
    for a in &findings {
        assert_eq!(a["labels"]["alertname"], "EgressWatchFinding", "{a}");
        assert!(
            ["critical", "high", "medium", "low"]
                .contains(&a["labels"]["severity"].as_str().unwrap()),
            "{a}"
        );
        assert_eq!(
            a["annotations"]["runbook_url"],
            "https://github.com/egresswatch/egresswatch/blob/main/README.md#runbook-findings"
        );
    }
    let denied = findings
        .iter()
        .find(|a| a["labels"]["rule"] == "denylisted_destination")
        .unwrap();
    assert_eq!(denied["labels"]["severity"], "critical");
    assert_eq!(denied["labels"]["stack"], stack);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let _ = Path::new(&dir);
}

#[test]
fn systemd_unit_verifies_and_scores_ok_on_hardening() {
    let unit = root().join("deploy/systemd/egresswatch.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    for needed in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "StateDirectory=egresswatch",
        "LimitNOFILE=65536",
        "--config /etc/egresswatch/",
    ] {
        assert!(text.contains(needed), "unit lacks {needed}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = fresh_dir("unit");
    let local = dir.join("egresswatch.service");
    std::fs::write(
        &local,
        text.replace(
            "/usr/local/bin/egresswatch",
            env!("CARGO_BIN_EXE_egresswatch"),
        ),
    )
    .unwrap();
    let verify = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&local)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    let security = run(Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&local));
    let score: f64 = security
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for egresswatch.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {security}"));
    assert!(score <= 2.0, "exposure {score}: {security}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Operation names (`CreateVpc`…) the provisioner's code calls, as its errors name them:
/// the name after `aws_error(resource, ` and the last string of an `every_page!(…)`.
fn provisioner_operations() -> std::collections::BTreeSet<String> {
    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let is_name = |op: &str| !op.is_empty() && op.chars().all(|c| c.is_ascii_alphabetic());
    let mut files = Vec::new();
    sources(&root().join("provision/src"), &mut files);
    let mut ops = std::collections::BTreeSet::new();
    for path in files {
        let text = std::fs::read_to_string(path).unwrap();
        for part in text.split("aws_error(").skip(1) {
            if let Some(op) = part
                .split('"')
                .nth(if part.starts_with('"') { 3 } else { 1 })
            {
                if is_name(op) {
                    ops.insert(op.to_string());
                }
            }
        }
        for part in text.split("every_page!(").skip(1) {
            // The macro's arguments: up to the parenthesis that closes it.
            let mut depth = 1;
            let end = part
                .char_indices()
                .find_map(|(i, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    (depth == 0).then_some(i)
                })
                .unwrap_or(part.len());
            if let Some(op) = part[..end].rsplit('"').nth(1) {
                if is_name(op) {
                    ops.insert(op.to_string());
                }
            }
        }
    }
    ops
}

/// The actions the policy's statements of `effect` name.
fn actions_of(policy: &Value, effect: &str) -> Vec<String> {
    let mut v = Vec::new();
    for s in policy["Statement"].as_array().unwrap() {
        assert!(s["Effect"] == "Allow" || s["Effect"] == "Deny", "{s}");
        if s["Effect"] != effect {
            continue;
        }
        match &s["Action"] {
            Value::String(a) => v.push(a.clone()),
            Value::Array(a) => v.extend(a.iter().map(|x| x.as_str().unwrap().to_string())),
            other => panic!("{other}"),
        }
    }
    v
}

fn actions(policy: &Value) -> Vec<String> {
    actions_of(policy, "Allow")
}

#[test]
fn iam_policies_cover_exactly_what_the_code_calls() {
    let read = |p: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(root().join(p)).unwrap()).unwrap()
    };
    // The daemon: only its read calls, nothing else.
    let monitor = actions(&read("deploy/iam/monitor-policy.json"));
    let mut expected: Vec<String> = egresswatch_monitor::metrics::SOURCE_OPERATIONS
        .iter()
        .map(|op| match *op {
            // SQS authorises a batch delete as DeleteMessage; S3 a listing as ListBucket.
            "ReceiveMessage" | "ChangeMessageVisibility" => format!("sqs:{op}"),
            "DeleteMessageBatch" => "sqs:DeleteMessage".into(),
            "GetObject" => "s3:GetObject".into(),
            "ListObjectsV2" => "s3:ListBucket".into(),
            _ if (op.starts_with("Describe") && !op.starts_with("DescribeLog"))
                || *op == "GetManagedPrefixListEntries" =>
            {
                format!("ec2:{op}")
            }
            _ => format!("logs:{op}"),
        })
        .collect();
    let mut got = monitor.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    // The provisioner: every operation its code calls is allowed, and no wildcard action.
    let provisioner = actions(&read("deploy/iam/provisioner-policy.json"));
    let ops = provisioner_operations();
    assert!(ops.len() > 50, "{ops:?}");
    // S3 authorises some operations under another action's name (S3 user guide, "Actions,
    // resources, and condition keys for Amazon S3").
    fn s3_action(op: &str) -> &str {
        match op {
            "HeadBucket" | "ListObjectsV2" => "ListBucket",
            "DeleteObjects" => "DeleteObject",
            "PutPublicAccessBlock" => "PutBucketPublicAccessBlock",
            "GetPublicAccessBlock" => "GetBucketPublicAccessBlock",
            "PutBucketEncryption" => "PutEncryptionConfiguration",
            "GetBucketEncryption" => "GetEncryptionConfiguration",
            "PutBucketLifecycleConfiguration" => "PutLifecycleConfiguration",
            "GetBucketLifecycleConfiguration" => "GetLifecycleConfiguration",
            "PutBucketNotificationConfiguration" => "PutBucketNotification",
            "GetBucketNotificationConfiguration" => "GetBucketNotification",
            other => other,
        }
    }
    for op in &ops {
        let action = s3_action(op);
        assert!(
            provisioner
                .iter()
                .any(|a| a.ends_with(&format!(":{action}"))),
            "provisioner policy lacks {op} ({action})"
        );
    }
    // What it denies itself (lifting or rewriting the roles' boundary) the code never calls.
    let denied = actions_of(&read("deploy/iam/provisioner-policy.json"), "Deny");
    assert!(!denied.is_empty());
    for op in &ops {
        let action = s3_action(op);
        assert!(
            !denied.iter().any(|a| a.ends_with(&format!(":{action}"))),
            "the provisioner calls {op}, which its policy denies"
        );
    }
    assert!(provisioner.iter().all(|a| !a.contains('*')));
    // The ECS task: Fargate, non-root, health check on /healthz, logs configured.
    let task = read("deploy/ecs/task-definition.json");
    assert_eq!(task["requiresCompatibilities"][0], "FARGATE");
    let c = &task["containerDefinitions"][0];
    assert!(c["healthCheck"]["command"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a.as_str().unwrap().ends_with("/healthz")));
    assert_eq!(c["logConfiguration"]["logDriver"], "awslogs");
    assert_ne!(c["user"], "0");
    assert_eq!(c["readonlyRootFilesystem"], true);
    // The state volume is reached through an EFS access point: the file system's own root
    // belongs to root, which the non-root task could not write to.
    let efs = &task["volumes"][0]["efsVolumeConfiguration"];
    assert!(efs["authorizationConfig"]["accessPointId"]
        .as_str()
        .unwrap()
        .starts_with("fsap-"));
    assert_eq!(efs["transitEncryption"], "ENABLED");
}

#[test]
fn health_command_reports_a_running_daemon() {
    let dir = fresh_dir("health");
    let flows = dir.join("flows.log");
    std::fs::write(&flows, "").unwrap();
    let port = egresswatch_testkit::free_port();
    // The daemon following the empty file, with the given extra arguments.
    let start = |extra: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_egresswatch"))
            .args([
                "monitor",
                "--follow",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .arg("--source")
            .arg(format!("file:{}", flows.display()))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let health = |port: u16| {
        Command::new(env!("CARGO_BIN_EXE_egresswatch"))
            .args([
                "health",
                "--url",
                &format!("http://127.0.0.1:{port}/healthz"),
            ])
            .status()
            .unwrap()
            .success()
    };
    // The daemon needs a network description; without one it exits, and health fails.
    let status = start(&[]).wait().unwrap();
    assert!(!status.success());
    assert!(!health(port));
    let config = dir.join("monitor.toml");
    std::fs::write(&config, "[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\n").unwrap();
    let mut daemon = start(&["--config".as_ref(), config.as_os_str()]);
    wait_for("the daemon to answer", Duration::from_secs(30), || {
        health(port)
    });
    let _ = daemon.kill();
    let _ = daemon.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_second_daemon_on_the_same_state_dir_is_refused() {
    let dir = fresh_dir("lock");
    let state = dir.join("state");
    let config = dir.join("monitor.toml");
    // A CloudWatch daemon that needs nothing from AWS to start: the format and the network
    // are given, and the endpoint refuses connections (it retries each poll, holding the lock).
    std::fs::write(
        &config,
        "format = \"version interface-id srcaddr dstaddr dstport protocol bytes start end action log-status\"\n\
         poll-interval-seconds = 1\n[topology]\nvpc-cidrs = [\"10.0.0.0/16\"]\n",
    )
    .unwrap();
    let daemon = || {
        let mut c = egresswatch("http://127.0.0.1:1");
        c.args(["monitor", "--config"])
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args([
                "--listen",
                &format!("127.0.0.1:{}", egresswatch_testkit::free_port()),
            ])
            .stdout(Stdio::null());
        c
    };
    let lock = state.join("cloudwatch.lock");
    let holds_lock =
        |pid: u32| std::fs::read_to_string(&lock).is_ok_and(|s| s.trim() == pid.to_string());
    let mut first = daemon().stderr(Stdio::null()).spawn().unwrap();
    wait_for("the first daemon to lock", Duration::from_secs(30), || {
        holds_lock(first.id())
    });
    let second = daemon().output().unwrap();
    let said = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "egresswatch monitor: state dir {} is in use for `cloudwatch`: another egresswatch \
             process (pid {}) holds its lock {}; run each daemon once",
            state.display(),
            first.id(),
            lock.display()
        )),
        "{said}"
    );
    // The lock goes with the process, however it ends: after kill -9 the next one starts.
    first.kill().unwrap();
    first.wait().unwrap();
    let mut third = daemon().stderr(Stdio::null()).spawn().unwrap();
    wait_for("a new daemon to lock", Duration::from_secs(30), || {
        holds_lock(third.id())
    });
    assert!(third.try_wait().unwrap().is_none(), "the new daemon exited");
    third.kill().unwrap();
    third.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn explain_prints_each_suppressed_finding_with_the_suppression_that_matched() {
    let dir = fresh_dir("explain");
    std::fs::write(
        dir.join("flows.log"),
        "interface-id srcaddr dstaddr srcport dstport protocol bytes action log-status pkt-srcaddr pkt-dstaddr start end
eni-nat 10.0.3.9 10.0.0.220 40000 22 6 5000 ACCEPT OK 10.0.3.9 198.51.100.22 1764150000 1764150060
eni-nat 10.0.4.9 10.0.0.220 40001 22 6 5000 ACCEPT OK 10.0.4.9 198.51.100.22 1764150000 1764150060
",
    )
    .unwrap();
    std::fs::write(
        dir.join("monitor.toml"),
        format!(
            r#"
listen = "127.0.0.1:{port}"
state-dir = "{state}"
source = "file:{flows}"
[topology]
vpc-cidrs = ["10.0.0.0/16"]
nat-interfaces = ["eni-nat"]
nat-private-ips = ["10.0.0.220"]
[[workloads]]
address = "10.0.3.0/24"
tags = {{ role = "build" }}
[[suppress]]
reason = "partner SFTP, ticket SEC-42"
port = 2222
[[suppress]]
reason = "build boxes fetch sources over SSH"
tag = "role=build"
"#,
            port = egresswatch_testkit::free_port(),
            state = dir.join("state").display(),
            flows = dir.join("flows.log").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_egresswatch"))
        .args(["monitor", "--explain", "--config"])
        .arg(dir.join("monitor.toml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let docs: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let explained: Vec<&Value> = docs
        .iter()
        .filter(|d| d.get("suppressed").is_some())
        .collect();
    assert_eq!(explained.len(), 1, "{docs:#?}");
    assert_eq!(explained[0]["workload"], "10.0.3.9");
    assert_eq!(explained[0]["suppressed"]["suppression"], 2);
    assert_eq!(
        explained[0]["suppressed"]["reason"],
        "build boxes fetch sources over SSH"
    );
    // The other workload's finding is alerted as usual (the stdout sink prints it).
    assert!(docs
        .iter()
        .any(|d| d["workload"] == "10.0.4.9" && d.get("suppressed").is_none()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn down_shows_what_it_would_delete_and_asks_before_deleting() {
    let moto = egresswatch_testkit::moto();
    let aws = egresswatch_testkit::aws_behaviour(&moto, &serde_json::json!({}));
    let dir = fresh_dir("down-cli");
    // `up` asks too: not on a terminal and no --yes, refused before any change.
    let refused = egresswatch(&aws.endpoint())
        .args(["provision", "up", "--stack", "asked"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    let nothing = egresswatch(&aws.endpoint())
        .args(["provision", "status", "--stack", "asked"])
        .output()
        .unwrap();
    assert_eq!(nothing.status.code(), Some(4), "{nothing:?}");
    // The plan and `up` count alike: by resource.
    let plan = run(egresswatch(&aws.endpoint()).args(["provision", "plan", "--stack", "asked"]));
    let counted = |text: &str| -> String {
        text.lines()
            .find_map(|l| l.split(" resource(s): ").nth(1))
            .unwrap_or_else(|| panic!("no count in {text}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    let planned = counted(&plan);
    let applied =
        run(egresswatch(&aws.endpoint()).args(["provision", "up", "--yes", "--stack", "asked"]));
    assert!(
        applied.contains(&format!("{planned} created")),
        "plan: {plan}\nup: {applied}"
    );
    provision_stack(&aws.endpoint(), "asked", &dir);
    // Not on a terminal and no --yes: refused, nothing deleted.
    let refused = egresswatch(&aws.endpoint())
        .args(["provision", "down", "--stack", "asked"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--yes"));
    // A dry run says what the real run would refuse: the users' home data, unasked.
    let refused = egresswatch(&aws.endpoint())
        .args(["provision", "down", "--stack", "asked", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("--delete-home-data"), "{said}");
    assert!(said.contains("nothing would be deleted"), "{said}");
    // The plan of destruction.
    let plan = run(egresswatch(&aws.endpoint()).args([
        "provision",
        "down",
        "--stack",
        "asked",
        "--dry-run",
        "--delete-home-data",
    ]));
    assert!(plan.contains("would delete"), "{plan}");
    assert!(plan.contains("studio-domain"), "{plan}");
    let status = egresswatch(&aws.endpoint())
        .args(["provision", "status", "--stack", "asked"])
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(0), "the dry run deleted nothing");
    // For scripts: JSON documents, and plan's exit status says whether there is a change.
    let plan = egresswatch(&aws.endpoint())
        .args([
            "provision",
            "plan",
            "--stack",
            "asked",
            "--detailed-exitcode",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(0), "{plan:?}");
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(plan["changes"], serde_json::json!([]));
    let dry = egresswatch(&aws.endpoint())
        .args([
            "provision",
            "down",
            "--stack",
            "asked",
            "--dry-run",
            "--delete-home-data",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(dry.status.success(), "{dry:?}");
    let dry: Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(dry["dry_run"], true);
    assert!(dry.get("deleted").is_none(), "{dry}");
    assert!(dry["would_delete"].as_array().unwrap().len() > 5, "{dry}");
    // Confirmed, with the users' home data: gone, the flow-log group kept.
    let done = run(egresswatch(&aws.endpoint()).args([
        "provision",
        "down",
        "--stack",
        "asked",
        "--yes",
        "--delete-home-data",
    ]));
    assert!(done.contains("the flow-log group is kept"), "{done}");
    let status = egresswatch(&aws.endpoint())
        .args([
            "provision",
            "status",
            "--stack",
            "asked",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    // Gone: no invitation to make it again, an exit status of its own.
    assert_eq!(status.status.code(), Some(4), "{status:?}");
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["found"], false, "{status}");
    assert_eq!(status["region"], "us-east-1", "{status}");
    let said = egresswatch(&aws.endpoint())
        .args(["provision", "status", "--stack", "asked"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&said.stdout);
    assert!(
        said.contains("stack asked not found in us-east-1"),
        "{said}"
    );
    assert!(!said.contains("up"), "{said}");
    let plan = egresswatch(&aws.endpoint())
        .args([
            "provision",
            "plan",
            "--stack",
            "asked",
            "--detailed-exitcode",
        ])
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(2), "{plan:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn completions_and_man_pages_are_generated_for_every_subcommand() {
    let bin = env!("CARGO_BIN_EXE_egresswatch");
    let bash = run(Command::new(bin).args(["completions", "bash"]));
    assert!(
        bash.contains("_egresswatch()") && bash.contains("findings"),
        "{bash}"
    );
    let dir = fresh_dir("man");
    run(Command::new(bin).args(["man", "--dir"]).arg(&dir));
    for page in [
        "egresswatch.1",
        "egresswatch-monitor.1",
        "egresswatch-provision-plan.1",
        "egresswatch-report.1",
    ] {
        let text = std::fs::read_to_string(dir.join(page)).unwrap();
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
    // man itself renders one.
    let rendered = Command::new("man")
        .arg(dir.join("egresswatch-findings.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output();
    if let Ok(out) = rendered {
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("--severity"));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn parse_help_examples_run_as_written() {
    let bin = env!("CARGO_BIN_EXE_egresswatch");
    let help = run(Command::new(bin).args(["parse", "--help"]));
    let dir = fresh_dir("parse-examples");
    // The files the examples name, in the formats they say.
    let line = "2 123456789012 eni-0a1b2c3d4e5f60718 10.0.1.5 203.0.113.9 49152 443 6 10 8400 1764547200 1764547260 ACCEPT OK\n";
    std::fs::write(dir.join("flows.log"), line.repeat(3)).unwrap();
    std::fs::write(
        dir.join("custom.log"),
        "eni-0a1b2c3d4e5f60718 10.0.1.5 203.0.113.9 443 8400 ACCEPT\n",
    )
    .unwrap();
    let header = "version account-id interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status\n";
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, format!("{header}{line}").as_bytes()).unwrap();
    std::fs::write(
        dir.join("123456789012_vpcflowlogs_us-east-1_fl-0a1b2c3d_20261129T0000Z_f1e2d3c4.log.gz"),
        gz.finish().unwrap(),
    )
    .unwrap();
    let examples: Vec<&str> = help
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("egresswatch parse "))
        .collect();
    assert!(examples.len() >= 3, "{help}");
    for example in examples {
        let out = Command::new("sh")
            .arg("-c")
            .arg(example.replacen("egresswatch", bin, 1))
            .current_dir(&dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !stdout.trim().is_empty(),
            "{example}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !String::from_utf8_lossy(&out.stderr).contains(":1:"),
            "{example}: a bad line"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn monitor_check_tries_everything_the_daemon_needs_and_names_what_fails() {
    let moto = egresswatch_testkit::moto();
    let dir = fresh_dir("check");
    let stack = "checked";
    let outputs = provision_stack(&moto.endpoint(), stack, &dir);
    let config = dir.join("monitor.toml");
    let write = |alerts: &str| {
        std::fs::write(
            &config,
            format!(
                "state-dir = \"{}\"\nstack = \"{stack}\"\noutputs-file = \"{}\"\n[alerts]\nstdout = false\n{alerts}",
                dir.join("state").display(),
                outputs.display()
            ),
        )
        .unwrap();
    };
    let check = || {
        egresswatch(&moto.endpoint())
            .args(["monitor", "--check", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    };
    write("");
    let good = check();
    let text = String::from_utf8_lossy(&good.stdout);
    assert_eq!(good.status.code(), Some(0), "{text}");
    for line in [
        "ok    network: VPC",
        "ok    learning: beaconing 24 h, long_connection 6 h, rare_destination 24 h, slow_drip 24 h, traffic_volume_unusual 24 h",
        "a first start learns from 7 days of retained flow logs first",
        "ok    state dir:",
        "ok    source cloudwatch: flow log format:",
        &format!("ok    source cloudwatch: log group /egresswatch/{stack}/flow-logs: listed"),
        "all checks passed",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    // An Alertmanager nobody runs: named, and the exit status says so.
    let port = egresswatch_testkit::free_port();
    write(&format!("alertmanager-url = \"http://127.0.0.1:{port}\"\n"));
    let bad = check();
    let text = String::from_utf8_lossy(&bad.stdout);
    assert_eq!(bad.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("FAIL  sink alertmanager http://127.0.0.1:{port}:")),
        "{text}"
    );
    assert!(text.contains("1 check(s) failed"), "{text}");
    // No outputs file: the network is found from the stack's tags in the account.
    std::fs::write(
        &config,
        format!(
            "state-dir = \"{}\"\nstack = \"{stack}\"\n[alerts]\nstdout = false\n",
            dir.join("state").display()
        ),
    )
    .unwrap();
    let tagged = check();
    let text = String::from_utf8_lossy(&tagged.stdout);
    assert_eq!(tagged.status.code(), Some(0), "{text}");
    let out: Value = serde_json::from_str(&std::fs::read_to_string(&outputs).unwrap()).unwrap();
    assert!(
        text.contains(&format!(
            "ok    network: from the stack's tags: VPC [\"{}\"], 1 NAT interface(s)",
            out["vpc_cidr"].as_str().unwrap()
        )),
        "{text}"
    );
    // A stack that is not there: named.
    let missing = egresswatch(&moto.endpoint())
        .args(["monitor", "--check", "--stack", "nowhere", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&missing.stdout);
    assert_eq!(missing.status.code(), Some(1), "{text}");
    assert!(
        text.contains("no VPC in us-east-1 is tagged egresswatch:stack=nowhere"),
        "{text}"
    );
    // The daemon's state dir holds nothing from a check but the dir itself.
    let left: Vec<_> = std::fs::read_dir(dir.join("state")).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `egresswatch provision init | head -1`: the reader goes away before the output is written,
/// and the command ends as Unix tools do (by SIGPIPE), without a panic on stderr.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_egresswatch"))
        .args(["provision", "init"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!said.contains("panicked"), "{said}");
    assert_eq!(out.status.signal(), Some(libc_sigpipe()), "{out:?}");
}

/// SIGPIPE's number on Linux and the BSDs.
fn libc_sigpipe() -> i32 {
    13
}
