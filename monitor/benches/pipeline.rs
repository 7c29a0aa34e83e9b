//! Throughput and memory of the daemon's processing path: lines in the provisioner's format,
//! from memory (as the file source hands them over) through parse, classify, every detector
//! and the metrics, with 1,000,000 distinct remote addresses. Prints records per second on
//! one core and the process's peak resident memory.
//!
//! Targets: at least 1,000,000 records/s on one core; resident memory under 100 MiB (128 MiB
//! with every behavioural rule); the rules' state snapshot and restore under one second.
//! BENCH_SCAN=1 makes every record a rejected attempt from one workload to a new address (a
//! scan: each record a finding), to show that a flood of findings keeps the normal rate.

use std::sync::Arc;
use std::time::Instant;

use egresswatch_monitor::alert::Router;
use egresswatch_monitor::config::{Alerts, Rules};
use egresswatch_monitor::pipeline::Pipeline;
use egresswatch_monitor::topology::Topology;
use egresswatch_monitor::Metrics;
use flowlog::{Decoder, Format};

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this is a quick smoke run of the same path.
    let benchmarking = std::env::args().any(|a| a == "--bench");
    let default_records = if benchmarking { 2_000_000 } else { 100_000 };
    let records: u64 = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_records);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let format = Format::parse(&egresswatch_stack::flow_log_format()).expect("format");
    let topo = Topology {
        vpc_cidrs: vec!["10.42.0.0/16".parse().expect("cidr")],
        nat_interfaces: vec!["eni-0nat0000000000000".into()],
        nat_private_ips: vec!["10.42.0.10".parse().expect("ip")],
        s3_cidrs: vec!["52.216.0.0/15".parse().expect("cidr")],
        vpc_id: None,
        s3_prefix_list_id: None,
    };
    let deny = std::env::temp_dir().join("egresswatch-bench-deny.txt");
    let mut list = String::new();
    for i in 0..10_000u32 {
        list.push_str(&format!(
            "{}.{}.{}.0/24\n",
            100 + (i >> 16) % 50,
            (i >> 8) & 255,
            i & 255
        ));
    }
    std::fs::write(&deny, list).expect("write deny list");
    let mut rules = Rules {
        denylists: vec![deny.clone()],
        ..Rules::default()
    };
    // BENCH_STATIC_ONLY=1 measures without the behavioural rules, to show what they cost.
    if std::env::var_os("BENCH_STATIC_ONLY").is_some() {
        rules.new_remote_port.enabled = false;
        rules.traffic_volume.enabled = false;
        rules.rare_destination.enabled = false;
        rules.slow_drip.enabled = false;
        rules.beaconing.enabled = false;
        rules.port_scan.enabled = false;
    }
    let metrics = Arc::new(Metrics::new());
    let alerts = Alerts {
        stdout: false,
        ..Alerts::default()
    };
    let router = Router::new(&alerts, metrics.clone());
    let mut pipeline = Pipeline::new(
        topo,
        egresswatch_monitor::rules::build(&rules).expect("detectors"),
        router,
        metrics.clone(),
    );

    // Lines are generated in blocks so the input itself does not dominate memory.
    let block = 100_000u64;
    let mut lines: Vec<String> = Vec::with_capacity(block as usize);
    let mut decoder = Decoder::pinned(format.clone());
    let scan = std::env::var_os("BENCH_SCAN").is_some();
    let mut processed = 0u64;
    let mut alerts_out = 0u64;
    let mut busy = std::time::Duration::ZERO;
    let mut n = 0u64;
    while n < records {
        lines.clear();
        for _ in 0..block {
            // Mostly HTTPS through the NAT, some SSH and DNS; a new remote address each record
            // for the first million.
            let remote = n % 1_000_000;
            let port = match n % 50 {
                0 => 22,
                1 => 53,
                _ => 443,
            };
            let remote_addr = format!(
                "{}.{}.{}.{}",
                11 + (remote >> 24),
                (remote >> 16) & 255,
                (remote >> 8) & 255,
                remote & 255
            );
            let (eni, src, dst, action) = if scan {
                (
                    "eni-0wl00000000000000",
                    "10.42.16.7".to_string(),
                    remote_addr.clone(),
                    "REJECT",
                )
            } else {
                (
                    "eni-0nat0000000000000",
                    format!("10.42.16.{}", n % 200 + 1),
                    "10.42.0.10".to_string(),
                    "ACCEPT",
                )
            };
            let fields = [
                ("version", "5".to_string()),
                ("account-id", "123456789012".into()),
                ("interface-id", eni.into()),
                ("srcaddr", src.clone()),
                ("dstaddr", dst),
                ("srcport", "40000".into()),
                ("dstport", port.to_string()),
                ("protocol", "6".into()),
                ("packets", "12".into()),
                ("bytes", "4096".into()),
                ("start", "1764150000".into()),
                ("end", "1764150060".into()),
                ("action", action.into()),
                ("log-status", "OK".into()),
                ("pkt-srcaddr", src),
                ("pkt-dstaddr", remote_addr),
            ];
            let line: Vec<&str> = format
                .fields()
                .iter()
                .map(|f| {
                    fields
                        .iter()
                        .find(|(k, _)| *k == f.name())
                        .map_or("-", |(_, v)| v.as_str())
                })
                .collect();
            lines.push(line.join(" "));
            n += 1;
        }
        let started = Instant::now();
        for l in &lines {
            pipeline.line(&mut decoder, l.as_bytes(), &"bench");
        }
        // What the daemon's commit takes after each batch.
        let decided = pipeline.router.take();
        alerts_out += decided.alerts.len() as u64;
        busy += started.elapsed();
        processed += block;
    }
    let rate = processed as f64 / busy.as_secs_f64();
    assert_eq!(
        pipeline.records, processed,
        "every record reached the pipeline"
    );
    println!(
        "pipeline: {processed} records in {:.3} s of processing = {:.0} records/s on one core; {} rejected_egress findings, {alerts_out} alerts",
        busy.as_secs_f64(),
        rate,
        metrics
            .findings
            .get_metric_with_label_values(&["rejected_egress", "low"])
            .map_or(0, |c| c.get())
    );
    println!(
        "peak resident memory: {:.1} MiB (VmHWM; includes the generated input blocks)",
        egresswatch_monitor::metrics::peak_resident_kib() as f64 / 1024.0
    );
    // What the rules learnt: snapshot, and restore into a fresh pipeline (target: < 1 s each).
    let started = Instant::now();
    let snapshot = pipeline.save_state();
    let saved = started.elapsed();
    let fresh_router = Router::new(&alerts, metrics.clone());
    let mut fresh = Pipeline::new(
        pipeline.topology.clone(),
        egresswatch_monitor::rules::build(&rules).expect("detectors"),
        fresh_router,
        metrics.clone(),
    );
    let started = Instant::now();
    let errors = fresh.load_state(&snapshot);
    let restored = started.elapsed();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        fresh.save_state().len(),
        snapshot.len(),
        "restored state is the saved state"
    );
    println!(
        "rule state: {:.1} MiB snapshot, saved in {:.3} s, restored in {:.3} s",
        snapshot.len() as f64 / 1_048_576.0,
        saved.as_secs_f64(),
        restored.as_secs_f64()
    );
    let _ = std::fs::remove_file(deny);
}
