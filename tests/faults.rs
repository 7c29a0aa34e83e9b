//! Faults between the daemon and the AWS emulator: every connection the daemon opens to
//! CloudWatch Logs goes through a real fault-injection proxy (fault-cli) that resets a share
//! of them and delays traffic. The daemon must still commit exactly the records written, and
//! count each once.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{
    egresswatch, fresh_dir, provision_stack, records_simulated, terminate, wait_until_committed,
};

#[test]
fn resets_and_latency_lose_nothing_and_count_nothing_twice() {
    let moto = egresswatch_testkit::moto();
    let dir = fresh_dir("faults");
    let stack = "faulty";
    let outputs = provision_stack(&moto.endpoint(), stack, &dir);
    // Two hours of ten workloads, written straight to the emulator.
    let sim = egresswatch(&moto.endpoint())
        .args([
            "simulate",
            "--to",
            "cloudwatch",
            "--stack",
            stack,
            "--scenario",
            "benign",
            "--duration",
            "2h",
            "--workloads",
            "10",
        ])
        .arg("--outputs")
        .arg(&outputs)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&sim.stderr);
    assert!(sim.status.success(), "{said}");
    let written = records_simulated(&said);

    // The daemon reads through the proxy: a quarter of connections reset, replies delayed.
    let (proxy, journal) = egresswatch_testkit::fault_proxy(
        &format!("127.0.0.1:{}", moto.port()),
        r#"[{"type": "connection-reset", "flow": "to-client", "probability": 0.25},
            {"type": "jitter", "flow": "to-client", "min_delay_ms": 5.0, "max_delay_ms": 80.0, "probability": 0.5}]"#,
    );
    let port = egresswatch_testkit::free_port();
    std::fs::write(
        dir.join("monitor.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\nstate-dir = \"{}\"\nstack = \"{stack}\"\noutputs-file = \"{}\"\npoll-interval-seconds = 1\n[alerts]\nstdout = false\n",
            dir.join("state").display(),
            outputs.display()
        ),
    )
    .unwrap();
    let daemon = egresswatch(&proxy.endpoint())
        .args(["monitor", "--config"])
        .arg(dir.join("monitor.toml"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until_committed(
        &dir.join("state/cloudwatch.checkpoint.json"),
        written,
        Duration::from_secs(240),
    );
    // Every record counted once: flows plus NODATA/SKIPDATA equal what was written.
    let text = common::scrape(port);
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    assert_eq!(
        sum("egresswatch_flow_records_total") + sum("egresswatch_status_records_total"),
        written,
        "{text}"
    );
    assert_eq!(sum("egresswatch_bad_lines_total"), 0);
    // The proxy did reset connections.
    let resets = std::fs::read_to_string(&journal)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"fault-reset\""))
        .count();
    assert!(
        resets > 0,
        "no connection was reset; journal: {}",
        journal.display()
    );
    terminate(&daemon);
    let status = daemon.wait_with_output().unwrap().status;
    assert!(status.success());
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
