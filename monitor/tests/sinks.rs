//! Alerts reach a real Alertmanager (read back through its v2 API), and a failing sink is
//! retried and counted without blocking the pipeline or the other sinks.

use std::sync::Arc;
use std::time::Duration;

use egresswatch_monitor::Metrics;

mod common;
use common::config;

#[tokio::test(flavor = "multi_thread")]
async fn findings_reach_a_real_alertmanager() {
    let am = egresswatch_testkit::alertmanager();
    let dir = std::env::temp_dir().join(format!("ew-am-{}", std::process::id()));
    let config = config(&dir, &format!("alertmanager-url = \"{}\"", am.endpoint()));
    let metrics = Arc::new(Metrics::new());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let summary = egresswatch_monitor::run(config, metrics.clone(), rx, None)
        .await
        .unwrap();
    assert_eq!(summary.records, 4, "four records (the header is not one)");
    let text = metrics.render();
    // The second SSH record is the same (rule, workload, remote) within the window:
    // deduplicated, and counted by an update of the first alert.
    assert!(
        text.contains("egresswatch_alerts_deduplicated_total 1"),
        "{text}"
    );
    assert!(
        text.contains("egresswatch_alerts_sent_total{sink=\"alertmanager\"} 3"),
        "{text}"
    );

    let alerts: serde_json::Value = reqwest::get(format!("{}/api/v2/alerts", am.endpoint()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut got: Vec<(String, String, String, String)> = alerts
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let l = &a["labels"];
            (
                l["rule"].as_str().unwrap().into(),
                l["severity"].as_str().unwrap().into(),
                l["remote"].as_str().unwrap().into(),
                l["workload"].as_str().unwrap().into(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "dns_bypass".into(),
                "high".into(),
                "8.8.8.8".into(),
                "10.0.1.5".into()
            ),
            (
                "non_https_egress".into(),
                "high".into(),
                "198.51.100.22".into(),
                "10.0.1.5".into()
            ),
        ]
    );
    for a in alerts.as_array().unwrap() {
        assert_eq!(a["labels"]["alertname"], "EgressWatchFinding");
        assert!(!a["annotations"]["summary"].as_str().unwrap().is_empty());
    }
    // Alertmanager merged the update into the alert it had (same labels): two alerts, the
    // SSH one now saying it was seen twice.
    let ssh = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["rule"] == "non_https_egress")
        .unwrap();
    assert_eq!(ssh["annotations"]["times_seen"], "2");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_sink_is_retried_and_counted_and_does_not_block() {
    // Nothing listens on this port: every webhook delivery fails. The pipeline still finishes,
    // and the failures are counted per sink.
    let dead = format!("http://127.0.0.1:{}/hook", egresswatch_testkit::free_port());
    let am = egresswatch_testkit::alertmanager();
    let dir = std::env::temp_dir().join(format!("ew-dead-{}", std::process::id()));
    let config = config(
        &dir,
        &format!(
            "webhook-url = \"{dead}\"\nalertmanager-url = \"{}\"",
            am.endpoint()
        ),
    );
    let metrics = Arc::new(Metrics::new());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let started = std::time::Instant::now();
    let summary = egresswatch_monitor::run(config, metrics.clone(), rx, None)
        .await
        .unwrap();
    assert_eq!(summary.records, 4);
    assert!(started.elapsed() < Duration::from_secs(30));
    let text = metrics.render();
    let failures: f64 = text
        .lines()
        .find(|l| l.starts_with("egresswatch_alert_send_failures_total{sink=\"webhook\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(failures >= 2.0, "{text}");
    assert!(
        text.contains("egresswatch_alerts_sent_total{sink=\"alertmanager\"} 3"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool_and_carry_no_addresses() {
    let dir = std::env::temp_dir().join(format!("ew-promtool-{}", std::process::id()));
    let config = config(&dir, "");
    let metrics = Arc::new(Metrics::new());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    egresswatch_monitor::run(config, metrics.clone(), rx, None)
        .await
        .unwrap();
    let exposition = metrics.render();
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-test-services installs it)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n{exposition}"
    );
    // Records were counted, and no label value is an address outside the two top-k gauges,
    // which hold at most ten series each.
    assert!(exposition.contains("egresswatch_flow_records_total{action=\"ACCEPT\",path=\"nat_egress\",port_class=\"ssh\"} 2"), "{exposition}");
    let top = |name: &str| exposition.lines().filter(|l| l.starts_with(name)).count();
    assert_eq!(top("egresswatch_top_workload_egress_bytes{"), 1);
    assert_eq!(top("egresswatch_top_remote_egress_bytes{"), 3);
    assert!(
        exposition.contains("egresswatch_top_remote_egress_bytes{remote=\"198.51.100.22\"} 10000"),
        "{exposition}"
    );
    for line in exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("egresswatch_top_"))
    {
        assert!(
            !line.contains("10.0.1.5")
                && !line.contains("198.51.100.22")
                && !line.contains("8.8.8.8"),
            "{line}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
