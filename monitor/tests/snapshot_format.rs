//! The rules' snapshot as the pipeline writes it: the format earlier versions wrote (so a
//! state dir survives an upgrade), every rule's part restored, and one buffer of exactly the
//! snapshot's size (a snapshot is tens of megabytes; a grown buffer holds up to twice that).

use std::sync::Arc;

use egresswatch_monitor::alert::Router;
use egresswatch_monitor::config::Config;
use egresswatch_monitor::pipeline::Pipeline;
use egresswatch_monitor::rules;
use egresswatch_monitor::Metrics;
use flowlog::{Decoder, Format};

fn pipeline(config: &Config, metrics: &Arc<Metrics>) -> Pipeline {
    let mut router = Router::new(&config.alerts, metrics.clone());
    router.kept = Some(Vec::new());
    Pipeline::new(
        config.topology.clone().unwrap(),
        rules::build(&config.rules).unwrap(),
        router,
        metrics.clone(),
    )
}

#[test]
fn the_snapshot_keeps_its_format_and_is_written_into_one_buffer() {
    let config = Config::from_toml(
        r#"
[topology]
vpc-cidrs = ["10.0.0.0/16"]
nat-interfaces = ["eni-nat"]
nat-private-ips = ["10.0.0.220"]
s3-cidrs = ["52.216.0.0/15"]
[alerts]
stdout = false
"#,
        "test.toml",
    )
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let mut p = pipeline(&config, &metrics);
    let format = Format::parse("interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status pkt-srcaddr pkt-dstaddr tcp-flags").unwrap();
    let mut decoder = Decoder::pinned(format);
    let t = 1_764_547_200u64;
    // Two workloads, many remotes and ports, every path the rules keep state for.
    for i in 0..3_000u64 {
        let s = t + i * 7;
        let w = 5 + i % 2;
        let remote = format!("198.51.{}.{}", 100 + i % 7, i % 250);
        let port = [443, 8443, 22][(i % 3) as usize];
        let flags = [2, 0, 3, 1][(i % 4) as usize];
        let lines = [
            format!("eni-nat 10.0.1.{w} 10.0.0.220 {} {port} 6 10 {} {s} {} ACCEPT OK 10.0.1.{w} {remote} {flags}", 40_000 + i % 20_000, 500 + i * 13, s + 59),
            format!("eni-nat 10.0.0.220 10.0.1.{w} {port} {} 6 10 {} {s} {} ACCEPT OK {remote} 10.0.1.{w} 18", 40_000 + i % 20_000, 900 + i, s + 59),
            format!("eni-wl 10.0.1.{w} 52.217.{}.9 {} 443 6 10 {} {s} {} ACCEPT OK - - 2", i % 200, 30_000 + i % 30_000, 1_000 + i * 100, s + 59),
            format!("eni-wl 10.0.1.{w} 203.0.113.{} {} {} 6 1 40 {s} {} REJECT OK - - 2", i % 250, 30_000 + i % 30_000, 1 + i % 1_000, s + 59),
        ];
        for l in &lines {
            assert!(p.line(&mut decoder, l.as_bytes(), &"test"));
        }
    }
    let snapshot = p.save_state();
    assert_eq!(
        snapshot.capacity(),
        snapshot.len(),
        "the snapshot buffer was sized up front"
    );
    // The layout earlier versions wrote: magic, then postcard's Vec<(String, Vec<u8>)>.
    let body = snapshot.strip_prefix(b"EWSTATE1".as_slice()).unwrap();
    let parts: Vec<(String, Vec<u8>)> = postcard::from_bytes(body).unwrap();
    let names: Vec<&str> = parts.iter().map(|(n, _)| n.as_str()).collect();
    for rule in [
        "traffic_volume_unusual",
        "slow_drip",
        "beaconing",
        "long_connection",
        "rare_destination",
        "upload_volume_unusual",
        "s3_endpoint_upload",
        "port_scan",
        "new_remote_port",
    ] {
        assert!(names.contains(&rule), "{rule} not in {names:?}");
    }
    assert!(parts.iter().all(|(_, state)| !state.is_empty()));
    let again = postcard::to_stdvec(&parts).unwrap();
    assert!(again == body, "not written as postcard writes the parts");
    // Restored into fresh rules, every part is read and saved again whole (tables are hash
    // maps: the same entries, not always in the same order).
    let mut fresh = pipeline(&config, &metrics);
    let errors = fresh.load_state(&snapshot);
    assert!(errors.is_empty(), "{errors:?}");
    let resaved = fresh.save_state();
    let reparts: Vec<(String, Vec<u8>)> =
        postcard::from_bytes(resaved.strip_prefix(b"EWSTATE1".as_slice()).unwrap()).unwrap();
    let sizes = |p: &[(String, Vec<u8>)]| -> Vec<(String, usize)> {
        p.iter().map(|(n, s)| (n.clone(), s.len())).collect()
    };
    assert_eq!(sizes(&reparts), sizes(&parts));
}
