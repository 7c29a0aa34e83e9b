//! The desktop sink: a notification reaches a notification server on a private D-Bus session
//! bus, with the finding's rule in the summary and urgency by severity.

use std::sync::Arc;

use egresswatch_monitor::Metrics;

mod common;

#[tokio::test(flavor = "multi_thread")]
async fn notification_reaches_the_session_bus() {
    let bus = egresswatch_testkit::notification_bus();
    // This test binary holds only this test, so setting the process's bus address is safe.
    std::env::set_var("DBUS_SESSION_BUS_ADDRESS", &bus.address);
    let dir = std::env::temp_dir().join(format!("ew-desktop-{}", std::process::id()));
    let config = common::config(&dir, "desktop = true");
    let metrics = Arc::new(Metrics::new());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    egresswatch_monitor::run(config, metrics.clone(), rx, None)
        .await
        .unwrap();
    assert!(
        metrics
            .render()
            .contains("egresswatch_alerts_sent_total{sink=\"desktop\"} 3"),
        "{}",
        metrics.render()
    );
    let log = std::fs::read_to_string(&bus.log).unwrap();
    let notes: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v.get("summary").is_some())
        .collect();
    let mut summaries: Vec<&str> = notes
        .iter()
        .map(|n| n["summary"].as_str().unwrap())
        .collect();
    summaries.sort();
    assert_eq!(
        summaries,
        [
            "egresswatch: dns_bypass (high)",
            "egresswatch: non_https_egress (high)",
            "egresswatch: non_https_egress (high), seen 2 times"
        ]
    );
    for n in &notes {
        assert_eq!(n["app"], "egresswatch");
        assert_eq!(n["urgency"], 2, "high severity is critical urgency");
        assert!(
            n["body"].as_str().unwrap().contains("10.0.1.5")
                || n["body"].as_str().unwrap().contains("8.8.8.8")
                || n["body"].as_str().unwrap().contains("port 22")
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
