//! Records whose times cannot be true (before flow logs existed, far past this host's clock,
//! a start after the end) through the whole pipeline: bad lines by reason, and no learning
//! clock moved by them.

use std::sync::Arc;

use egresswatch_monitor::alert::Router;
use egresswatch_monitor::config::Config;
use egresswatch_monitor::pipeline::Pipeline;
use egresswatch_monitor::rules;
use egresswatch_monitor::Metrics;
use flowlog::{Decoder, Format};

#[test]
fn implausible_times_are_bad_lines_and_start_no_learning_clock() {
    // The volume rule learns for an hour from the first record it judges; a 1970 record
    // judged first would end that hour at once, and the upload below would be found.
    let config = Config::from_toml(
        r#"
[topology]
vpc-cidrs = ["10.0.0.0/16"]
nat-interfaces = ["eni-nat"]
nat-private-ips = ["10.0.0.220"]
[rules.traffic-volume]
learning-windows = 0
learning-seconds = 3600
[alerts]
stdout = false
"#,
        "test.toml",
    )
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut router = Router::new(&config.alerts, metrics.clone());
    router.kept = Some(Vec::new());
    let mut p = Pipeline::new(
        config.topology.clone().unwrap(),
        rules::build(&config.rules).unwrap(),
        router,
        metrics.clone(),
    );
    let format = Format::parse("interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status pkt-srcaddr pkt-dstaddr tcp-flags").unwrap();
    let mut decoder = Decoder::pinned(format);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let line = |start: u64, end: u64, bytes: u64| {
        format!("eni-nat 10.0.1.5 10.0.0.220 40000 443 6 1000 {bytes} {start} {end} ACCEPT OK 10.0.1.5 203.0.113.5 2")
    };
    let t = now - 7_200;
    for l in [
        line(0, 60, 1_000),
        line(t + 120, t + 60, 1_000),
        line(now + 3 * 86_400, now + 3 * 86_400 + 60, 1_000),
    ] {
        p.line(&mut decoder, l.as_bytes(), &"test");
    }
    // Five gigabytes in the rule's first minutes: learning, so not judged.
    for i in 0..5 {
        let s = t + 600 + i * 60;
        p.line(
            &mut decoder,
            line(s, s + 59, 1_000_000_000).as_bytes(),
            &"test",
        );
    }
    p.finish();
    let bad = metrics
        .bad_lines
        .with_label_values(&["implausible_time"])
        .get();
    assert_eq!(bad, 3);
    let kept = p.router.kept.take().unwrap_or_default();
    assert!(
        kept.iter()
            .all(|a| a.finding.rule != "traffic_volume_unusual"),
        "{kept:?}"
    );
    // A plausible record after them is judged as usual: the records counted are the five.
    assert_eq!(p.flows_judged, 5);
}
