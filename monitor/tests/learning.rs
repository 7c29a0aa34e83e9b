//! Learning is visible: each rule that first learns what the fleet shares is 1 in
//! `egresswatch_rule_learning` while it learns and 0 once event time passes its period, read
//! back from the metrics endpoint's text.

use std::sync::Arc;

use egresswatch_monitor::alert::Router;
use egresswatch_monitor::config::Config;
use egresswatch_monitor::pipeline::Pipeline;
use egresswatch_monitor::rules;
use egresswatch_monitor::Metrics;
use flowlog::{Decoder, Format};

fn learning(metrics: &Metrics) -> Vec<(String, i64)> {
    let text = metrics.render();
    let mut got: Vec<(String, i64)> = text
        .lines()
        .filter(|l| l.starts_with("egresswatch_rule_learning{"))
        .filter_map(|l| {
            let rule = l.split("rule=\"").nth(1)?.split('"').next()?.to_string();
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((rule, value))
        })
        .collect();
    got.sort();
    got
}

#[test]
fn each_learning_rule_says_it_learns_until_event_time_passes_its_period() {
    let config = Config::from_toml(
        r#"
[topology]
vpc-cidrs = ["10.0.0.0/16"]
nat-interfaces = ["eni-nat"]
nat-private-ips = ["10.0.0.220"]
[rules.long-connection]
learning-seconds = 3600
"#,
        "test.toml",
    )
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut p = Pipeline::new(
        config.topology.clone().unwrap(),
        rules::build(&config.rules).unwrap(),
        Router::new(&config.alerts, metrics.clone()),
        metrics.clone(),
    );
    let format = Format::parse("interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status pkt-srcaddr pkt-dstaddr tcp-flags").unwrap();
    let mut decoder = Decoder::pinned(format);
    let at = |start: u64| {
        format!(
            "eni-nat 10.0.1.5 10.0.0.220 40000 443 6 10 5000 {start} {} ACCEPT OK 10.0.1.5 203.0.113.5 2",
            start + 60
        )
    };
    let t0 = 1_764_150_000;
    p.line(&mut decoder, at(t0).as_bytes(), &"test");
    p.publish_gauges();
    let first = learning(&metrics);
    let names: Vec<&str> = first.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        names,
        [
            "beaconing",
            "long_connection",
            "rare_destination",
            "slow_drip",
            "traffic_volume_unusual"
        ],
        "{first:?}"
    );
    assert!(first.iter().all(|(_, v)| *v == 1), "{first:?}");
    // Two hours on: long_connection's one-hour period is over, the day-long ones are not.
    p.line(&mut decoder, at(t0 + 7_200).as_bytes(), &"test");
    p.publish_gauges();
    let later = learning(&metrics);
    for (rule, value) in &later {
        let want = i64::from(rule != "long_connection");
        assert_eq!(*value, want, "{rule}: {later:?}");
    }
    // A day and more: none learns any longer.
    p.line(&mut decoder, at(t0 + 90_000).as_bytes(), &"test");
    p.publish_gauges();
    assert!(
        learning(&metrics).iter().all(|(_, v)| *v == 0),
        "{:?}",
        learning(&metrics)
    );
}
