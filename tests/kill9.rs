//! Exactly once across crashes: 200,000 flow-log records in the stack's log group (one stream
//! per ENI), the `egresswatch monitor` process killed with SIGKILL at random points and
//! restarted each time; in the end the records committed across all runs equal the records
//! written, exactly.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{committed, fresh_dir, terminate};
use egresswatch_provision::{self as provision, Clients, Mode, StackSpec};

const RECORDS: usize = 200_000;
const STREAMS: usize = 4;

/// Provisions a stack in moto and writes `records` flow-log records over `STREAMS` streams.
async fn stack_with_records(
    moto: &egresswatch_testkit::Service,
    stack: &str,
    records: usize,
) -> provision::Outputs {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let c = Clients::from_env(Some("us-east-1".into()), Some(moto.endpoint()))
        .await
        .unwrap();
    let spec = StackSpec {
        studio_domain: false,
        ..StackSpec::default()
    };
    let (_, out) = provision::reconcile(&c, &spec, stack, Mode::Apply, |_| {})
        .await
        .unwrap();
    let format = flowlog::Format::parse(&out.flow_log_format).unwrap();
    // Records in the flow log's own format.
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    for s in 0..STREAMS {
        let events = (0..records / STREAMS)
            .map(|n| {
                let line: Vec<String> = format
                    .fields()
                    .iter()
                    .map(|f| match f.name() {
                        "version" => "5".into(),
                        "interface-id" => format!("eni-0{s:016x}"),
                        "srcaddr" | "pkt-srcaddr" => format!("10.42.16.{}", n % 250 + 1),
                        "dstaddr" | "pkt-dstaddr" => format!("10.42.32.{}", n % 250 + 1),
                        "srcport" => "40000".into(),
                        "dstport" => "2049".into(),
                        "protocol" => "6".into(),
                        "packets" => "1".into(),
                        "bytes" => "100".into(),
                        "start" => "1764150000".into(),
                        "end" => "1764150060".into(),
                        "action" => "ACCEPT".into(),
                        "log-status" => "OK".into(),
                        _ => "-".into(),
                    })
                    .collect();
                (base + n as i64, line.join(" "))
            })
            .collect();
        let stream = format!("eni-0{s:016x}-all");
        provision::logs::put_events(&c, &out.log_group, &stream, events, |_| {})
            .await
            .unwrap();
    }
    out
}

fn monitor(
    moto: &egresswatch_testkit::Service,
    stack: &str,
    dir: &std::path::Path,
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_egresswatch"))
        .args(["monitor", "--stack", stack, "--outputs"])
        .arg(dir.join("outputs.json"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", egresswatch_testkit::free_port()),
            "--endpoint-url",
            &moto.endpoint(),
            "--region",
            "us-east-1",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_loses_nothing_and_counts_nothing_twice() {
    let moto = egresswatch_testkit::moto();
    let out = stack_with_records(&moto, "crash", RECORDS).await;
    let dir = fresh_dir("kill9");
    std::fs::write(
        dir.join("outputs.json"),
        serde_json::to_string(&out).unwrap(),
    )
    .unwrap();
    let checkpoint = dir.join("state/cloudwatch.checkpoint.json");
    let committed = || committed(&checkpoint);
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut child = monitor(&moto, "crash", &dir);
        if committed() as usize >= RECORDS {
            // Caught up: let it poll once more to show nothing new is counted, then stop.
            std::thread::sleep(Duration::from_secs(3));
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        // xorshift: a random point between 0.3 and 2.3 seconds into the run.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 2000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        assert!(
            Instant::now() < deadline,
            "only {} of {RECORDS} committed after {kills} kills",
            committed()
        );
    }
    assert!(kills >= 2, "the daemon was killed {kills} times");
    assert_eq!(committed() as usize, RECORDS);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_batch_checkpoints_and_exits_zero() {
    let moto = egresswatch_testkit::moto();
    let total = 80_000;
    let out = stack_with_records(&moto, "term", total).await;
    let dir = fresh_dir("term");
    std::fs::write(
        dir.join("outputs.json"),
        serde_json::to_string(&out).unwrap(),
    )
    .unwrap();
    let checkpoint = dir.join("state/cloudwatch.checkpoint.json");
    let mut child = monitor(&moto, "term", &dir);
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&checkpoint) == 0 {
        assert!(Instant::now() < deadline, "no checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    terminate(&child);
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(0), "SIGTERM exits 0");
    let after_term = committed(&checkpoint);
    assert!(after_term > 0);
    // A second run carries on from the checkpoint to exactly the total.
    let mut child = monitor(&moto, "term", &dir);
    while (committed(&checkpoint) as usize) < total {
        assert!(
            Instant::now() < deadline,
            "only {} of {total}",
            committed(&checkpoint)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    terminate(&child);
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(committed(&checkpoint) as usize, total);
    std::fs::remove_dir_all(&dir).unwrap();
}
