//! The S3 source end to end, against moto behind testkit's AWS layer: a stack provisioned to
//! deliver flow logs to S3, objects written into its bucket as AWS writes them (gzip text
//! with a header line, and Parquet written by pyarrow, an independent writer), announced by
//! the bucket's real notifications on the stack's queue, read by the `egresswatch monitor`
//! process. Every count is read back from the daemon's checkpoint, its /metrics and the queues.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{committed, fresh_dir, terminate};
use egresswatch_provision::{self as provision, spec, Clients, Mode, StackSpec};

const ACCOUNT: &str = "123456789012";

async fn clients(endpoint: &str) -> Clients {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    Clients::from_env(Some("us-east-1".into()), Some(endpoint.into()))
        .await
        .unwrap()
}

/// What each test starts from: moto behind the AWS layer, and a stack delivering to S3
/// provisioned in it, its outputs in a fresh directory.
struct World {
    // Held for the test's length: dropping them stops the services.
    _moto: egresswatch_testkit::Service,
    layer: egresswatch_testkit::AwsBehaviour,
    c: Clients,
    dir: std::path::PathBuf,
    out: provision::Outputs,
}

async fn world(dir_name: &str, stack_name: &str) -> World {
    let moto = egresswatch_testkit::moto();
    let layer = egresswatch_testkit::aws_behaviour(&moto, &serde_json::json!({}));
    let c = clients(&layer.endpoint()).await;
    let dir = fresh_dir(dir_name);
    let out = stack(&c, stack_name, &dir).await;
    World {
        _moto: moto,
        layer,
        c,
        dir,
        out,
    }
}

/// A stack delivering to S3, its outputs written to `dir/outputs.json`.
async fn stack(c: &Clients, name: &str, dir: &Path) -> provision::Outputs {
    let spec = StackSpec {
        studio_domain: false,
        flow_log_destination: spec::FlowLogDestination::S3,
        ..StackSpec::default()
    };
    let (_, out) = provision::reconcile(c, &spec, name, Mode::Apply, |_| {})
        .await
        .unwrap();
    std::fs::write(
        dir.join("outputs.json"),
        serde_json::to_string(&out).unwrap(),
    )
    .unwrap();
    out
}

/// `n` records in the stack's format, the `k`-th starting at `start + k` seconds, between
/// two private addresses (NFS within the VPC: counted, judged benign).
fn records(format: &str, n: usize, start: u64, tag: usize) -> Vec<String> {
    let format = flowlog::Format::parse(format).unwrap();
    (0..n)
        .map(|k| {
            format
                .fields()
                .iter()
                .map(|f| match f.name() {
                    "version" => "5".into(),
                    "account-id" => ACCOUNT.into(),
                    "interface-id" => format!("eni-0{tag:016x}"),
                    "srcaddr" | "pkt-srcaddr" => format!("10.42.16.{}", k % 250 + 1),
                    "dstaddr" | "pkt-dstaddr" => format!("10.42.32.{}", k % 250 + 1),
                    "srcport" => "40000".into(),
                    "dstport" => "2049".into(),
                    "protocol" => "6".into(),
                    "packets" => "1".into(),
                    "bytes" => "100".into(),
                    "start" => (start + k as u64).to_string(),
                    "end" => (start + k as u64 + 60).to_string(),
                    "action" => "ACCEPT".into(),
                    "log-status" => "OK".into(),
                    _ => "-".into(),
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The object as AWS writes it: a header line of the field names, then the records.
fn text_object(format: &str, lines: &[String]) -> Vec<u8> {
    let header = flowlog::Format::parse(format)
        .unwrap()
        .fields()
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(" ");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    writeln!(gz, "{header}").unwrap();
    for l in lines {
        writeln!(gz, "{l}").unwrap();
    }
    gz.finish().unwrap()
}

/// The same records as a Parquet object, written by pyarrow with AWS's snake_case column
/// names, numbers as int64, gzip-compressed as AWS writes them.
fn parquet_object(format: &str, lines: &[String], dir: &Path) -> Vec<u8> {
    let header = flowlog::Format::parse(format)
        .unwrap()
        .fields()
        .iter()
        .map(|f| f.name())
        .collect::<Vec<_>>()
        .join(" ");
    let src = dir.join("records.txt");
    let dst = dir.join("records.parquet");
    std::fs::write(&src, format!("{header}\n{}\n", lines.join("\n"))).unwrap();
    let script = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq
lines = open(sys.argv[1]).read().split("\n")
names = lines[0].split()
rows = [l.split() for l in lines[1:] if l.strip()]
cols = {}
for i, name in enumerate(names):
    vals = [r[i] for r in rows]
    if all(v == "-" or v.isdigit() for v in vals):
        cols[name.replace("-", "_")] = pa.array([None if v == "-" else int(v) for v in vals], type=pa.int64())
    else:
        cols[name.replace("-", "_")] = pa.array([None if v == "-" else v for v in vals], type=pa.string())
pq.write_table(pa.table(cols), sys.argv[2], compression="gzip")
"#;
    let ok = Command::new(egresswatch_testkit::python_with_pyarrow())
        .arg("-c")
        .arg(script)
        .arg(&src)
        .arg(&dst)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::read(dst).unwrap()
}

/// An object key as flow logs name theirs under the stack's prefix.
fn key(out: &provision::Outputs, n: usize, suffix: &str) -> String {
    format!(
        "{}AWSLogs/{ACCOUNT}/vpcflowlogs/us-east-1/2026/11/29/08/{ACCOUNT}_vpcflowlogs_us-east-1_fl-0abc_20261129T08{:02}Z_{n:08x}.{suffix}",
        out.flow_log_prefix,
        n % 60
    )
}

/// Puts an object; returns its ETag.
async fn put(c: &Clients, bucket: &str, key: &str, body: Vec<u8>) -> String {
    c.s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(body.into())
        .send()
        .await
        .unwrap()
        .e_tag()
        .unwrap()
        .trim_matches('"')
        .to_string()
}

/// Turns the bucket's notifications off: objects put after are announced by nobody.
async fn notifications_off(c: &Clients, bucket: &str) {
    c.s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(aws_sdk_s3::types::NotificationConfiguration::builder().build())
        .send()
        .await
        .unwrap();
}

/// Messages in a queue, visible or not.
async fn queued(c: &Clients, url: &str) -> u64 {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let got = c
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let a = got.attributes().unwrap();
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|k| a.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
    .sum()
}

/// A daemon that is killed if the test fails before it stops it.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// `egresswatch monitor --source s3` on the stack, with its state in `dir/state`.
fn monitor(endpoint: &str, dir: &Path, port: u16, extra: &[&str]) -> Daemon {
    let config = dir.join("monitor.toml");
    if !config.exists() {
        std::fs::write(&config, "checkpoint-interval-seconds = 1\n").unwrap();
    }
    Command::new(env!("CARGO_BIN_EXE_egresswatch"))
        .args(["monitor", "--source", "s3", "--outputs"])
        .arg(dir.join("outputs.json"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--config")
        .arg(&config)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--endpoint-url",
            endpoint,
            "--region",
            "us-east-1",
        ])
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        // Read only by the backfill's test, which waits for the end; an unread pipe would
        // block a daemon that logs.
        .stderr(if extra.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .spawn()
        .map(Daemon)
        .unwrap()
}

/// One series of the daemon's /metrics, 0 when absent.
fn metric(port: u16, series: &str) -> f64 {
    common::scrape(port)
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn text_and_parquet_objects_are_each_counted_once_and_their_messages_deleted() {
    let World {
        _moto,
        layer,
        c,
        dir,
        out,
    } = world("s3-objects", "objects").await;
    let bucket = out.flow_log_bucket.clone();
    let fmt = out.flow_log_format.clone();
    // Three text objects of 3,000 records and a Parquet one of 2,500.
    let mut etags = Vec::new();
    for n in 0..3 {
        let body = text_object(&fmt, &records(&fmt, 3_000, 1_764_000_000, n));
        etags.push((
            key(&out, n, "log.gz"),
            put(&c, &bucket, &key(&out, n, "log.gz"), body).await,
        ));
    }
    let pq = parquet_object(&fmt, &records(&fmt, 2_500, 1_764_000_000, 9), &dir);
    put(&c, &bucket, &key(&out, 9, "parquet"), pq).await;
    // S3 notifications are at least once: the first object announced a second time.
    let (k0, e0) = &etags[0];
    let again = serde_json::json!({"Records": [{"eventVersion": "2.1", "eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": k0.replace(' ', "+"), "eTag": e0}}}]});
    c.sqs
        .send_message()
        .queue_url(&out.flow_log_queue_url)
        .message_body(again.to_string())
        .send()
        .await
        .unwrap();
    let port = egresswatch_testkit::free_port();
    let mut daemon = monitor(&layer.endpoint(), &dir, port, &[]);
    let checkpoint = dir.join("state/s3.checkpoint.json");
    let total = 3 * 3_000 + 2_500;
    wait_for("every record", Duration::from_secs(180), || {
        committed(&checkpoint) >= total
    });
    // The duplicate is recognised, and every message goes once its objects are committed.
    wait_for("the duplicate", Duration::from_secs(60), || {
        metric(port, "egresswatch_s3_objects_total{outcome=\"duplicate\"}") >= 1.0
    });
    let mut empty = false;
    for _ in 0..300 {
        if queued(&c, &out.flow_log_queue_url).await == 0 {
            empty = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(empty, "messages left on the queue");
    assert_eq!(committed(&checkpoint), total);
    assert_eq!(
        metric(port, "egresswatch_s3_objects_total{outcome=\"read\"}"),
        4.0
    );
    // Each object downloaded once, the next while one is read: the duplicate is not
    // downloaded again, and no download made ahead was thrown away.
    assert_eq!(
        metric(
            port,
            "egresswatch_source_requests_total{operation=\"GetObject\"}"
        ),
        4.0
    );
    // S3 sends a test event when a notification is set up: deleted as well.
    assert_eq!(
        metric(
            port,
            "egresswatch_sqs_messages_total{outcome=\"test_event\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(port, "egresswatch_sqs_messages_total{outcome=\"deleted\"}"),
        6.0
    );
    // Every record reached the rules: the flow counters hold them all.
    let body = common::scrape(port);
    let flows: f64 = body
        .lines()
        .filter(|l| l.starts_with("egresswatch_flow_records_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(flows as u64, total);
    let bad: f64 = body
        .lines()
        .filter(|l| l.starts_with("egresswatch_bad_lines_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        bad, 0.0,
        "no line or row of a text or Parquet object is bad"
    );
    terminate(&daemon);
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_object_goes_to_the_dead_letter_queue_and_the_rest_is_read() {
    let World {
        _moto,
        layer,
        c,
        dir,
        out,
    } = world("s3-poison", "poison").await;
    let bucket = out.flow_log_bucket.clone();
    let fmt = out.flow_log_format.clone();
    // Two receives before the dead-letter queue (the stack says 5), seen within seconds.
    let dlq_arn = format!("arn:aws:sqs:us-east-1:{ACCOUNT}:poison-flow-logs-dead-letter");
    c.sqs
        .set_queue_attributes()
        .queue_url(&out.flow_log_queue_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 2}).to_string(),
        )
        .send()
        .await
        .unwrap();
    std::fs::write(
        dir.join("monitor.toml"),
        "checkpoint-interval-seconds = 1\n[s3]\nvisibility-timeout-seconds = 2\n",
    )
    .unwrap();
    let good = text_object(&fmt, &records(&fmt, 1_000, 1_764_000_000, 1));
    let mut corrupt = text_object(&fmt, &records(&fmt, 50_000, 1_764_000_000, 2));
    corrupt.truncate(corrupt.len() / 2);
    put(&c, &bucket, &key(&out, 2, "log.gz"), corrupt).await;
    put(
        &c,
        &bucket,
        &key(&out, 3, "log.gz"),
        b"<html>not a flow log</html>".to_vec(),
    )
    .await;
    put(&c, &bucket, &key(&out, 1, "log.gz"), good).await;
    let port = egresswatch_testkit::free_port();
    let mut daemon = monitor(&layer.endpoint(), &dir, port, &[]);
    let checkpoint = dir.join("state/s3.checkpoint.json");
    // Both bad objects end in the dead-letter queue, named there.
    let mut in_dlq = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while in_dlq.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "dead-letter queue holds {in_dlq:?}"
        );
        let got = c
            .sqs
            .receive_message()
            .queue_url(&out.flow_log_dead_letter_queue_url)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        for m in got.messages() {
            in_dlq.push(m.body().unwrap().to_string());
        }
    }
    assert!(in_dlq
        .iter()
        .any(|b| b.contains(&format!("{:08x}.log.gz", 2))));
    assert!(in_dlq
        .iter()
        .any(|b| b.contains(&format!("{:08x}.log.gz", 3))));
    // The good object is read in full; the corrupt one's readable first part counted once,
    // however many times it was tried.
    wait_for("the good object", Duration::from_secs(60), || {
        metric(port, "egresswatch_s3_objects_total{outcome=\"read\"}") >= 1.0
    });
    assert!(
        metric(
            port,
            "egresswatch_s3_object_errors_total{reason=\"corrupt_gzip\"}"
        ) >= 2.0
    );
    assert!(
        metric(
            port,
            "egresswatch_s3_object_errors_total{reason=\"unknown_format\"}"
        ) >= 2.0
    );
    // The object counts as read before the checkpoint after it is committed: wait for the
    // commit. Lines are the header and records: what was committed of the corrupt object,
    // and the good object's, exactly.
    let mut seen = (0, 0);
    wait_for(
        "the good object committed with the corrupt one's first part",
        Duration::from_secs(60),
        || {
            let cp = egresswatch_monitor::checkpoint::read_checkpoint(&checkpoint).unwrap();
            let Some(partial) = cp
                .s3_objects
                .iter()
                .find(|(k, _)| k.contains(&format!("{:08x}.log.gz", 2)))
                .map(|(_, p)| p.clone())
            else {
                return false;
            };
            assert!(!partial.complete);
            seen = (cp.records_committed, partial.lines);
            cp.records_committed == 1_000 + partial.lines.saturating_sub(1)
        },
    );
    let (read, lines) = seen;
    assert!(
        (1_000..1_000 + 50_000).contains(&read),
        "{read} ({lines} lines)"
    );
    assert_eq!(daemon.try_wait().unwrap(), None, "the daemon goes on");
    terminate(&daemon);
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A first start reads the objects already in the bucket for the history it is given (by
/// the time in their names), before and besides the queue: the rules learn from them. An
/// object older than the history is not read; a restart does not read them again.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_start_reads_the_retained_objects_of_its_history() {
    let World {
        _moto,
        layer,
        c,
        dir,
        out,
    } = world("s3-warm", "warm").await;
    let bucket = out.flow_log_bucket.clone();
    let fmt = out.flow_log_format.clone();
    // Written before the daemon existed: no notification announces them.
    notifications_off(&c, &bucket).await;
    for n in 1..=3 {
        let body = text_object(&fmt, &records(&fmt, 500, 1_764_000_000, n));
        put(&c, &bucket, &key(&out, n, "log.gz"), body).await;
    }
    // From a year before: outside the history.
    let old = key(&out, 9, "log.gz")
        .replace("2026/11/29", "2025/11/29")
        .replace("_20261129T", "_20251129T");
    put(
        &c,
        &bucket,
        &old,
        text_object(&fmt, &records(&fmt, 700, 1_732_000_000, 9)),
    )
    .await;
    // 2026-11-29 is a week or more ago: a history of a year takes it in.
    std::fs::write(
        dir.join("monitor.toml"),
        "checkpoint-interval-seconds = 1\n[s3]\nhistory-seconds = 31536000\n",
    )
    .unwrap();
    let port = egresswatch_testkit::free_port();
    let mut daemon = monitor(&layer.endpoint(), &dir, port, &[]);
    let checkpoint = dir.join("state/s3.checkpoint.json");
    wait_for("the history's records", Duration::from_secs(90), || {
        egresswatch_monitor::checkpoint::read_checkpoint(&checkpoint)
            .map(|cp| cp.records_committed >= 1_500)
            .unwrap_or(false)
    });
    wait_for("the warm start's end", Duration::from_secs(30), || {
        metric(port, "egresswatch_warm_start_left") == 0.0
            && common::scrape(port).contains("egresswatch_warm_start_left 0")
    });
    let cp = egresswatch_monitor::checkpoint::read_checkpoint(&checkpoint).unwrap();
    assert_eq!(cp.records_committed, 1_500, "the old object is not read");
    assert_eq!(cp.s3_objects.len(), 3);
    terminate(&daemon);
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    // A restart with a checkpoint is no first start: nothing is listed or read again.
    let mut daemon = monitor(&layer.endpoint(), &dir, port, &[]);
    std::thread::sleep(Duration::from_secs(3));
    terminate(&daemon);
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    let cp = egresswatch_monitor::checkpoint::read_checkpoint(&checkpoint).unwrap();
    assert_eq!(cp.records_committed, 1_500);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// One message naming several objects (S3 may batch records into one event): an unreadable
/// one first does not stop the others being read; it is reported, and the message stays on
/// the queue for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_message_naming_several_objects_reads_each_or_reports_it() {
    let World {
        _moto,
        layer,
        c,
        dir,
        out,
    } = world("s3-multi", "multi").await;
    let bucket = out.flow_log_bucket.clone();
    let fmt = out.flow_log_format.clone();
    // The one message below is the only news of these objects.
    notifications_off(&c, &bucket).await;
    let elsewhere = |n: usize| key(&out, n, "log.gz");
    let mut corrupt = text_object(&fmt, &records(&fmt, 50_000, 1_764_000_000, 2));
    corrupt.truncate(corrupt.len() / 2);
    put(&c, &bucket, &elsewhere(1), corrupt).await;
    put(
        &c,
        &bucket,
        &elsewhere(2),
        b"<html>not a flow log</html>".to_vec(),
    )
    .await;
    let good = text_object(&fmt, &records(&fmt, 1_000, 1_764_000_000, 1));
    put(&c, &bucket, &elsewhere(3), good).await;
    let record = |n: usize| {
        serde_json::json!({
            "eventSource": "aws:s3",
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": bucket}, "object": {"key": elsewhere(n)}},
        })
    };
    let body = serde_json::json!({"Records": [record(1), record(2), record(3)]}).to_string();
    c.sqs
        .send_message()
        .queue_url(&out.flow_log_queue_url)
        .message_body(body)
        .send()
        .await
        .unwrap();
    let port = egresswatch_testkit::free_port();
    let mut daemon = monitor(&layer.endpoint(), &dir, port, &[]);
    wait_for("the good object", Duration::from_secs(60), || {
        metric(port, "egresswatch_s3_objects_total{outcome=\"read\"}") >= 1.0
    });
    for reason in ["corrupt_gzip", "unknown_format"] {
        let series = format!("egresswatch_s3_object_errors_total{{reason=\"{reason}\"}}");
        assert!(metric(port, &series) >= 1.0, "{series}");
    }
    // Every record of the good object, and the complete ones before the corrupt object's
    // cut, are committed.
    let checkpoint = dir.join("state/s3.checkpoint.json");
    wait_for("the commit", Duration::from_secs(60), || {
        egresswatch_monitor::checkpoint::read_checkpoint(&checkpoint)
            .map(|cp| cp.records_committed > 1_000)
            .unwrap_or(false)
    });
    // The message is not deleted: it waits on the queue for the unreadable objects.
    terminate(&daemon);
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    assert_eq!(queued(&c, &out.flow_log_queue_url).await, 1);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_dash_nine_half_way_through_objects_counts_every_record_once() {
    let World {
        _moto,
        layer,
        c,
        dir,
        out,
    } = world("s3-kill9", "crashing").await;
    let bucket = out.flow_log_bucket.clone();
    let fmt = out.flow_log_format.clone();
    std::fs::write(
        dir.join("monitor.toml"),
        "checkpoint-interval-seconds = 1\n[s3]\nvisibility-timeout-seconds = 2\n",
    )
    .unwrap();
    // Every run killed while it holds a message is one more receive of it: the queue's
    // dead-letter threshold (5) is raised here so that the kills do not send an object
    // half read to the dead-letter queue (with 5, a daemon that crashes five times in a row
    // on one object does, which is what the threshold is for).
    let dlq_arn = format!("arn:aws:sqs:us-east-1:{ACCOUNT}:crashing-flow-logs-dead-letter");
    c.sqs
        .set_queue_attributes()
        .queue_url(&out.flow_log_queue_url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 50}).to_string(),
        )
        .send()
        .await
        .unwrap();
    const OBJECTS: usize = 4;
    const PER_OBJECT: usize = 100_000;
    for n in 0..OBJECTS {
        let body = text_object(&fmt, &records(&fmt, PER_OBJECT, 1_764_000_000, n));
        put(&c, &bucket, &key(&out, n, "log.gz"), body).await;
    }
    let total = (OBJECTS * PER_OBJECT) as u64;
    let checkpoint = dir.join("state/s3.checkpoint.json");
    let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
    let mut kills = 0;
    let mut partial_seen = false;
    // Five runs, each killed at a random point soon after it has committed something (so
    // while it reads an object), then one left to finish.
    while kills < 5 && committed(&checkpoint) < total {
        let before = committed(&checkpoint);
        let port = egresswatch_testkit::free_port();
        let mut child = monitor(&layer.endpoint(), &dir, port, &[]);
        let started = Instant::now();
        while committed(&checkpoint) == before && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(100 + seed % 700));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        if let Ok(cp) = egresswatch_monitor::checkpoint::read_checkpoint(&checkpoint) {
            partial_seen |= cp.s3_objects.values().any(|p| !p.complete && p.lines > 1);
        }
    }
    let port = egresswatch_testkit::free_port();
    let mut child = monitor(&layer.endpoint(), &dir, port, &[]);
    wait_for("every record", Duration::from_secs(300), || {
        committed(&checkpoint) >= total
    });
    std::thread::sleep(Duration::from_secs(3));
    terminate(&child);
    child.wait().unwrap();
    assert!(kills >= 2, "killed {kills} times");
    assert!(partial_seen, "no kill came half-way through an object");
    assert_eq!(committed(&checkpoint), total);
    assert_eq!(queued(&c, &out.flow_log_queue_url).await, 0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_judges_exactly_the_records_of_its_range() {
    let World {
        _moto,
        layer,
        c,
        dir,
        out,
    } = world("s3-backfill", "history").await;
    let bucket = out.flow_log_bucket.clone();
    let fmt = out.flow_log_format.clone();
    // Four objects of 1,000 records, one a second, starting 08:00:00Z on 2026-11-29 and
    // 250 seconds apart; the range [08:05:00, 08:15:00) holds the records starting 300..900 s
    // in: 600 of the first object's, 600 of the second's, 400 of the third's and 150 of the
    // fourth's.
    let base = 1_795_939_200; // 2026-11-29T08:00:00Z
    for n in 0..4 {
        let body = text_object(&fmt, &records(&fmt, 1_000, base + 250 * n as u64, n));
        put(&c, &bucket, &key(&out, n, "log.gz"), body).await;
    }
    // An object of another day, far from the range: not even read.
    let far = format!(
        "{}AWSLogs/{ACCOUNT}/vpcflowlogs/us-east-1/2026/10/01/08/{ACCOUNT}_vpcflowlogs_us-east-1_fl-0abc_20261001T0800Z_ffff.log.gz",
        out.flow_log_prefix
    );
    put(
        &c,
        &bucket,
        &far,
        text_object(&fmt, &records(&fmt, 500, 1_790_000_000, 7)),
    )
    .await;
    let port = egresswatch_testkit::free_port();
    let mut child = monitor(
        &layer.endpoint(),
        &dir,
        port,
        &[
            "--from",
            "2026-11-29T08:05:00Z",
            "--to",
            "2026-11-29T08:15:00Z",
        ],
    );
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "{stderr}");
    let field = |name: &str| -> u64 {
        stderr
            .lines()
            .find(|l| l.contains("egresswatch monitor stopped"))
            .and_then(|l| l.split(&format!("{name}=")).nth(1))
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in: {stderr}"))
    };
    assert_eq!(field("judged"), 1_750);
    assert_eq!(field("outside_range"), 4_000 - 1_750);
    // The live queue's objects are not marked read by a backfill: it keeps its own state.
    assert!(dir.join("state/s3-backfill.checkpoint.json").exists());
    assert!(!dir.join("state/s3.checkpoint.json").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}
