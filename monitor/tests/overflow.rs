//! Records whose byte and packet counts are near u64::MAX, through the whole pipeline (parse,
//! classify, counters, top-k, every rule, the router). Built as tests are, with debug
//! assertions on, an overflowing sum panics; the counters must instead stop at their maximum.

use std::sync::Arc;

use egresswatch_monitor::alert::Router;
use egresswatch_monitor::config::Config;
use egresswatch_monitor::pipeline::Pipeline;
use egresswatch_monitor::rules;
use egresswatch_monitor::Metrics;
use flowlog::{Decoder, Format};

const HUGE: u64 = u64::MAX - 1;

#[test]
fn near_max_bytes_and_packets_saturate_through_the_whole_pipeline() {
    // Rules that judge from the first record, so every sum in them is reached.
    let config = Config::from_toml(
        r#"
[topology]
vpc-cidrs = ["10.0.0.0/16"]
nat-interfaces = ["eni-nat"]
nat-private-ips = ["10.0.0.220"]
[rules.new-remote-port]
learning-seconds = 0
[rules.traffic-volume]
learning-windows = 0
learning-seconds = 0
[rules.rare-destination]
learning-seconds = 0
[rules.slow-drip]
learning-seconds = 0
min-flows = 1
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
    let lines = [
        // NAT egress, inner leg (counted, judged): workload 10.0.1.5 uploads to 203.0.113.5.
        format!("eni-nat 10.0.1.5 10.0.0.220 40000 443 6 {HUGE} {HUGE} 1764150000 1764150060 ACCEPT OK 10.0.1.5 203.0.113.5 2"),
        // The same connection on the NAT's outer leg (a duplicate view).
        format!("eni-nat 10.0.0.220 203.0.113.5 40000 443 6 {HUGE} {HUGE} 1764150000 1764150060 ACCEPT OK 10.0.0.220 203.0.113.5 2"),
        // A download from a remote of another network (one of the upload's network would
        // count against it: the new-destination rule judges a network's two directions
        // together), through the NAT's inner leg.
        format!("eni-nat 10.0.0.220 10.0.1.5 443 40001 6 {HUGE} {HUGE} 1764150000 1764150060 ACCEPT OK 198.51.100.6 10.0.1.5 18"),
    ];
    // Several passes: every sum goes past u64::MAX more than once.
    for _ in 0..4 {
        for line in &lines {
            p.line(&mut decoder, line.as_bytes(), &"test");
        }
    }
    // The end of the input: windows that waited for late records are judged.
    p.finish();
    p.publish_gauges();

    let bytes = |path: &str| {
        metrics
            .bytes
            .with_label_values(&[path, "https", "ACCEPT"])
            .get()
    };
    let records = |path: &str| {
        metrics
            .records
            .with_label_values(&[path, "https", "ACCEPT"])
            .get()
    };
    for path in ["nat_egress", "duplicate", "nat_return"] {
        assert_eq!(records(path), 4, "{path}");
        // Stopped at the maximum: wrapped, four times 2^64 - 2 would read 2^64 - 8.
        assert_eq!(bytes(path), u64::MAX, "{path}");
    }
    // The heavy-hitter gauges: the workload's and the remote's totals, saturated (a gauge is
    // an i64, so that is where they stop).
    assert_eq!(
        metrics.top_workloads.with_label_values(&["10.0.1.5"]).get(),
        i64::MAX
    );
    assert_eq!(
        metrics
            .top_remotes
            .with_label_values(&["203.0.113.5"])
            .get(),
        i64::MAX
    );
    // The rules judged the saturated totals: each fired once for the upload, none for the
    // download.
    let findings =
        |rule: &str, severity: &str| metrics.findings.with_label_values(&[rule, severity]).get();
    assert_eq!(findings("traffic_volume_unusual", "high"), 1);
    assert_eq!(findings("rare_destination", "high"), 1);
    assert_eq!(findings("slow_drip", "high"), 1);
    // Port 443 was new for the workload, with no learning period.
    assert_eq!(findings("new_remote_port", "medium"), 1);
    assert_eq!(p.records, 12);
}
