//! The CloudWatch source within the account's quotas, against moto behind a proxy that counts
//! every call by operation and throttles what is over AWS's quota (testkit/cloudwatch_quota.py).
//! A group of 10,000 streams, as a used Studio domain leaves: 100 receive records, 100 went
//! quiet hours ago, 9,800 hold only events older than the group's retention. The calls counted
//! at the proxy stay within the configured budget in steady state, and every record is read;
//! how soon after its ingestion (the target: two poll intervals) is measured from the daemon's
//! own histogram and printed, with a generous bound asserted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use egresswatch_monitor::aws::Clients;
use egresswatch_monitor::config::Config;
use egresswatch_monitor::Metrics;

const FORMAT: &str = "interface-id srcaddr dstaddr srcport dstport protocol bytes action log-status pkt-srcaddr pkt-dstaddr start end";
const GROUP: &str = "/egresswatch/quota/flow-logs";
const POLL: u64 = 10;

fn record(eni: usize, n: usize) -> String {
    format!(
        "eni-{eni:08x} 10.0.1.{} 10.0.2.9 {} 2049 6 100 ACCEPT OK 10.0.1.5 10.0.2.9 1764150000 1764150060",
        eni % 250 + 1,
        40_000 + n % 20_000
    )
}

fn stream(i: usize) -> String {
    format!("eni-{i:08x}-all")
}

async fn clients(endpoint: String) -> Clients {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    Clients::from_env(Some("us-east-1".into()), Some(endpoint))
        .await
        .unwrap()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Runs `f` over `items` with `width` calls in flight.
async fn concurrently<T, F, Fut>(items: Vec<T>, width: usize, f: F)
where
    T: Send + 'static,
    F: Fn(T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let f = Arc::new(f);
    let gate = Arc::new(tokio::sync::Semaphore::new(width));
    let mut tasks = tokio::task::JoinSet::new();
    for item in items {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let f = f.clone();
        tasks.spawn(async move {
            f(item).await;
            drop(permit);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

async fn put_one(c: &Clients, stream: &str, timestamp: i64, message: String) {
    c.logs
        .put_log_events()
        .log_group_name(GROUP)
        .log_stream_name(stream)
        .log_events(
            aws_sdk_cloudwatchlogs::types::InputLogEvent::builder()
                .timestamp(timestamp)
                .message(message)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

/// Events read within `seconds` of their ingestion (a bucket bound), and all events read,
/// from the daemon's histogram.
fn read_delays(m: &Metrics, seconds: u64) -> (u64, u64) {
    let text = m.render();
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} not in /metrics")) as u64
    };
    (
        value(&format!(
            "egresswatch_cloudwatch_read_delay_seconds_bucket{{le=\"{seconds}\"}}"
        )),
        value("egresswatch_cloudwatch_read_delay_seconds_count"),
    )
}

fn records(m: &Metrics) -> u64 {
    m.records
        .with_label_values(&["intra_vpc", "nfs", "ACCEPT"])
        .get()
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_streams_a_hundred_active_read_within_the_call_budget() {
    let moto = egresswatch_testkit::moto();
    // AWS's quotas in its strictest regions: the daemon must never reach them.
    let proxy = egresswatch_testkit::cloudwatch_quota(
        &moto,
        &serde_json::json!({"GetLogEvents": 10, "DescribeLogStreams": 25}),
    );
    let c = clients(moto.endpoint()).await;
    c.logs
        .create_log_group()
        .log_group_name(GROUP)
        .send()
        .await
        .unwrap();
    c.logs
        .put_retention_policy()
        .log_group_name(GROUP)
        .retention_in_days(1)
        .send()
        .await
        .unwrap();

    // The group, straight into moto (not through the proxy), 16 calls at a time.
    let made = Instant::now();
    let aged = now_ms() - 2 * 86_400_000;
    let quiet = now_ms() - 3 * 3_600_000;
    let c2 = Arc::new(c.clone());
    concurrently((0..10_000).collect(), 16, move |i: usize| {
        let c = c2.clone();
        async move {
            let name = stream(i);
            c.logs
                .create_log_stream()
                .log_group_name(GROUP)
                .log_stream_name(&name)
                .send()
                .await
                .unwrap();
            // Streams 0..100 are active (written below), 100..200 quiet for three hours,
            // the rest past the one-day retention.
            let at = if i < 100 {
                now_ms()
            } else if i < 200 {
                quiet
            } else {
                aged
            };
            put_one(&c, &name, at, record(i, 0)).await;
        }
    })
    .await;
    let setup = made.elapsed();
    eprintln!("10,000 streams with one event each made in moto in {setup:?}");

    let dir = std::env::temp_dir().join(format!("ew-quota-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let toml = format!(
        r#"
listen = "127.0.0.1:{port}"
state-dir = "{state}"
log-group = "{GROUP}"
format = "{FORMAT}"
poll-interval-seconds = {POLL}
[topology]
vpc-cidrs = ["10.0.0.0/16"]
[alerts]
stdout = false
"#,
        port = egresswatch_testkit::free_port(),
        state = dir.join("state").display(),
    );
    let config = Config::from_toml(&toml, "test.toml").unwrap();
    assert_eq!(config.cloudwatch.get_log_events_per_second, 8.0);
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(egresswatch_monitor::run(
        config,
        metrics.clone(),
        rx,
        Some(clients(proxy.endpoint()).await),
    ));

    // Catching up: the active and quiet streams' records are read once; the aged ones are
    // not read at all.
    let started = Instant::now();
    while records(&metrics) < 200 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "caught up {} of 200 records; calls {:?}",
            records(&metrics),
            proxy.calls()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let catch_up = started.elapsed();
    let catch_up_calls = proxy.calls();
    eprintln!("caught up in {catch_up:?} with {catch_up_calls:?}");
    assert!(
        catch_up_calls.get("GetLogEvents").copied().unwrap_or(0) < 400,
        "{catch_up_calls:?}"
    );

    // Steady state: records arrive all the time, as flow logs deliver them: each second ten
    // of the active streams get one, so each active stream gets one every poll interval.
    let before = proxy.calls();
    let delays_before = read_delays(&metrics, 2 * POLL);
    let delays_before_generous = read_delays(&metrics, 6 * POLL).0;
    let delays_before_all: std::collections::HashMap<u64, u64> = [5, 10, 15, 20, 30, 60]
        .iter()
        .map(|&b| (b, read_delays(&metrics, b).0))
        .collect();
    let window = Instant::now();
    let mut expected = 200u64;
    let c3 = Arc::new(c.clone());
    let seconds = 30usize;
    for second in 0..seconds {
        let tick = Instant::now();
        let c = c3.clone();
        let first = (second % 10) * 10;
        concurrently((first..first + 10).collect(), 10, move |i: usize| {
            let c = c.clone();
            async move { put_one(&c, &stream(i), now_ms(), record(i, second)).await }
        })
        .await;
        expected += 10;
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
    }
    let last_put = Instant::now();
    while records(&metrics) < expected {
        assert!(
            last_put.elapsed() < Duration::from_secs(6 * POLL),
            "{} of {expected} records read {:?} after the last was written",
            records(&metrics),
            last_put.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = last_put.elapsed();
    let (within, count) = read_delays(&metrics, 2 * POLL);
    let (within, count) = (within - delays_before.0, count - delays_before.1);
    eprintln!(
        "{} records over {seconds} s; the last read {drained:?} after it was written; {within} of {count} events read within {} s of their ingestion (daemon's histogram)",
        expected - 200,
        2 * POLL
    );
    let spread: Vec<String> = [5, 10, 15, 20, 30, 60]
        .iter()
        .map(|&b| {
            let (n, _) = read_delays(&metrics, b);
            format!("{} within {b} s", n - delays_before_all[&b])
        })
        .collect();
    eprintln!("read delays: {}", spread.join(", "));
    assert_eq!(count, expected - 200);
    // The target, two poll intervals, is a timing: `scripts/bench cloudwatch` runs this test
    // alone with EGRESSWATCH_LATENCY_TARGET set and holds it to it. In the test suite, with
    // other tests loading moto and both cores, a generous functional bound is asserted.
    let generous = read_delays(&metrics, 6 * POLL).0 - delays_before_generous;
    assert_eq!(generous, count, "events read later than six poll intervals");
    let elapsed = window.elapsed().as_secs_f64();
    let after = proxy.calls();
    let rate = |op: &str| {
        (after.get(op).copied().unwrap_or(0) - before.get(op).copied().unwrap_or(0)) as f64
            / elapsed
    };
    eprintln!(
        "steady state over {elapsed:.1} s: GetLogEvents {:.2}/s, DescribeLogStreams {:.2}/s, DescribeLogGroups {:.2}/s",
        rate("GetLogEvents"),
        rate("DescribeLogStreams"),
        rate("DescribeLogGroups")
    );
    if std::env::var_os("EGRESSWATCH_LATENCY_TARGET").is_some() {
        assert_eq!(
            within,
            count,
            "events read later than two poll intervals ({} s) after their ingestion",
            2 * POLL
        );
    }
    // Calls spaced 1/8 s apart: at most one more than 8/s over the window; the proxy never
    // had to throttle (AWS's 10/s quota held in every second).
    let get = after.get("GetLogEvents").copied().unwrap_or(0)
        - before.get("GetLogEvents").copied().unwrap_or(0);
    assert!(
        get as f64 <= 8.0 * elapsed + 1.0,
        "{get} GetLogEvents in {elapsed:.1} s"
    );
    // Every active stream had to be read at least once after its last record.
    assert!(
        get >= 100,
        "{get} GetLogEvents, fewer than the 100 active streams"
    );
    assert!(rate("DescribeLogStreams") <= 5.0);
    assert_eq!(
        proxy.throttled(),
        Default::default(),
        "{:?}",
        proxy.journal()
    );
    assert_eq!(
        metrics
            .source_throttles
            .with_label_values(&["GetLogEvents"])
            .get(),
        0
    );

    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The checkpoint keeps the 200 streams with retained events, not the 9,800 aged ones.
    let cp = egresswatch_monitor::checkpoint::read_checkpoint(
        &dir.join("state/cloudwatch.checkpoint.json"),
    )
    .unwrap();
    assert_eq!(cp.stream_created.len(), 200);
    assert!(cp.stream_created.keys().all(|s| s < &stream(200)));
    assert_eq!(cp.records_committed, expected);
    std::fs::remove_dir_all(&dir).unwrap();
}
