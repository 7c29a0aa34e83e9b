//! The CloudWatch source against a log group that is missing, appears, disappears and comes
//! back (moto on 127.0.0.1): /readyz and `egresswatch_source_up` say whether it reads, a group
//! made again under the same name is read whole rather than from the old group's tokens, and
//! an event holding several records yields them all.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use egresswatch_monitor::config::Config;
use egresswatch_monitor::Metrics;
use egresswatch_provision::Clients;

const FORMAT: &str = "interface-id srcaddr dstaddr srcport dstport protocol bytes action log-status pkt-srcaddr pkt-dstaddr start end";

fn record(n: usize) -> String {
    format!(
        "eni-a 10.0.1.{} 10.0.2.9 40000 2049 6 100 ACCEPT OK 10.0.1.5 10.0.2.9 1764150000 1764150060",
        n % 250 + 1
    )
}

fn config(dir: &Path, group: &str) -> Config {
    let toml = format!(
        r#"
listen = "127.0.0.1:{port}"
state-dir = "{state}"
log-group = "{group}"
format = "{FORMAT}"
poll-interval-seconds = 1
[topology]
vpc-cidrs = ["10.0.0.0/16"]
[alerts]
stdout = false
"#,
        port = egresswatch_testkit::free_port(),
        state = dir.join("state").display(),
    );
    Config::from_toml(&toml, "test.toml").unwrap()
}

fn credentials() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
}

/// The provisioner's clients, for writing into the log group.
async fn clients(moto: &egresswatch_testkit::Service) -> Clients {
    credentials();
    Clients::from_env(Some("us-east-1".into()), Some(moto.endpoint()))
        .await
        .unwrap()
}

/// The daemon's own clients, as `egresswatch monitor` makes them.
async fn monitor_clients(moto: &egresswatch_testkit::Service) -> egresswatch_monitor::aws::Clients {
    credentials();
    egresswatch_monitor::aws::Clients::from_env(Some("us-east-1".into()), Some(moto.endpoint()))
        .await
        .unwrap()
}

fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ew-cwf-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn readyz(config: &Config) -> u16 {
    reqwest::get(format!("http://{}/readyz", config.listen))
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn put(c: &Clients, group: &str, stream: &str, events: Vec<String>) {
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 60_000;
    let events = events
        .into_iter()
        .enumerate()
        .map(|(i, m)| (base + i as i64, m))
        .collect();
    egresswatch_provision::logs::put_events(c, group, stream, events, |_| {})
        .await
        .unwrap();
}

fn committed(dir: &Path) -> egresswatch_monitor::checkpoint::Checkpoint {
    egresswatch_monitor::checkpoint::read_checkpoint(&dir.join("state/cloudwatch.checkpoint.json"))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_log_group_and_a_recreated_group_is_read_whole() {
    let moto = egresswatch_testkit::moto();
    let c = clients(&moto).await;
    let dir = fresh_dir("ready");
    let group = "/egresswatch/faults/flow-logs";
    let config = config(&dir, group);
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(egresswatch_monitor::run(
        config.clone(),
        metrics.clone(),
        rx,
        Some(monitor_clients(&moto).await),
    ));

    // No such group: alive, not ready, and saying so.
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(&config).await == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several failed listings (one a second), however slowly the emulator answers its first
    // calls while other tests start theirs.
    let m = metrics.clone();
    wait("three failed listings", || {
        m.source_errors
            .with_label_values(&["DescribeLogStreams"])
            .get()
            >= 3
    })
    .await;
    assert_eq!(readyz(&config).await, 503);
    assert_eq!(metrics.source_up.get(), 0);

    // The group appears with 50 records, two of them in one event.
    c.logs
        .create_log_group()
        .log_group_name(group)
        .send()
        .await
        .unwrap();
    let mut events: Vec<String> = (0..48).map(record).collect();
    events.push(format!("{}\n{}", record(48), record(49)));
    put(&c, group, "eni-a-all", events).await;
    wait("50 records committed", || {
        committed(&dir).records_committed == 50
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while readyz(&config).await != 200 {
        assert!(Instant::now() < deadline, "not ready while reading");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metrics.source_up.get(), 1);
    assert_eq!(
        metrics
            .records
            .with_label_values(&["intra_vpc", "nfs", "ACCEPT"])
            .get(),
        50,
        "an event holding two records counts two"
    );

    // The group is deleted: not ready again.
    c.logs
        .delete_log_group()
        .log_group_name(group)
        .send()
        .await
        .unwrap();
    let m = metrics.clone();
    wait("the source reported failing", || m.source_up.get() == 0).await;
    assert_eq!(readyz(&config).await, 503);

    // Made again under the same name, with the same stream name and more records than
    // before: every one of them is read, none skipped by the old group's token.
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.logs
        .create_log_group()
        .log_group_name(group)
        .send()
        .await
        .unwrap();
    put(&c, group, "eni-a-all", (0..300).map(record).collect()).await;
    wait("350 records committed", || {
        committed(&dir).records_committed == 350
    })
    .await;
    let cp = committed(&dir);
    assert_eq!(cp.streams.keys().collect::<Vec<_>>(), vec!["eni-a-all"]);
    assert_eq!(metrics.source_up.get(), 1);
    assert_eq!(
        metrics
            .cloudwatch_stream_changes
            .with_label_values(&["recreated"])
            .get(),
        1,
        "the stream made again under its name is counted as such"
    );
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(committed(&dir).records_committed, 350);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_streams_leave_the_checkpoint() {
    let moto = egresswatch_testkit::moto();
    let c = clients(&moto).await;
    let dir = fresh_dir("streams");
    let group = "/egresswatch/streams/flow-logs";
    c.logs
        .create_log_group()
        .log_group_name(group)
        .send()
        .await
        .unwrap();
    for s in ["eni-a-all", "eni-b-all", "eni-c-all"] {
        put(&c, group, s, (0..10).map(record).collect()).await;
    }
    let config = config(&dir, group);
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(egresswatch_monitor::run(
        config,
        metrics.clone(),
        rx,
        Some(monitor_clients(&moto).await),
    ));
    wait("30 records committed", || {
        committed(&dir).records_committed == 30
    })
    .await;
    assert_eq!(committed(&dir).streams.len(), 3);
    c.logs
        .delete_log_stream()
        .log_group_name(group)
        .log_stream_name("eni-b-all")
        .send()
        .await
        .unwrap();
    wait("the deleted stream dropped", || {
        committed(&dir).streams.len() == 2
    })
    .await;
    tx.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let cp = committed(&dir);
    assert!(!cp.streams.contains_key("eni-b-all"), "{cp:?}");
    let changes = |c| {
        metrics
            .cloudwatch_stream_changes
            .with_label_values(&[c])
            .get()
    };
    assert_eq!(
        changes("retired") + changes("gone"),
        1,
        "the deleted stream is counted once, as retired from the listing or gone while read"
    );
    assert_eq!(cp.records_committed, 30);
    std::fs::remove_dir_all(&dir).unwrap();
}
