//! End to end against a real moto server: the stack provisioned by the provisioner, flow-log
//! records written into its log group one stream per ENI (as AWS does), the daemon reading
//! them; exact counters on /metrics, exact findings at a webhook, and a restart that resumes
//! from its checkpoints without counting anything twice.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use egresswatch_monitor::checkpoint::read_checkpoint;
use egresswatch_monitor::config::Config;
use egresswatch_monitor::Metrics;
use egresswatch_provision::{self as provision, Clients, Mode, StackSpec};
use flowlog::{Field, Format, Record};

/// A record in the provisioner's format: the given fields, `-` elsewhere.
fn line(fields: &[(Field, &str)]) -> String {
    let format = Format::parse(&provision::flow_log_format()).unwrap();
    let values: Vec<String> = format
        .fields()
        .iter()
        .map(|f| {
            fields
                .iter()
                .find(|(k, _)| k == f)
                .map(|(_, v)| v.to_string())
                .unwrap_or_else(|| match f {
                    Field::Version => "5".into(),
                    Field::AccountId => "123456789012".into(),
                    Field::LogStatus => "OK".into(),
                    Field::Start => "1764150000".into(),
                    Field::End => "1764150060".into(),
                    Field::Packets => "10".into(),
                    _ => "-".into(),
                })
        })
        .collect();
    let text = values.join(" ");
    Record::parse(&format, text.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"));
    text
}

// The arguments are the record's columns, in the order AWS's NAT example lists them.
#[allow(clippy::too_many_arguments)]
fn leg(
    eni: &str,
    src: &str,
    dst: &str,
    sport: &str,
    dport: &str,
    proto: &str,
    bytes: &str,
    action: &str,
    pkt_src: &str,
    pkt_dst: &str,
) -> String {
    use Field::*;
    line(&[
        (InterfaceId, eni),
        (SrcAddr, src),
        (DstAddr, dst),
        (SrcPort, sport),
        (DstPort, dport),
        (Protocol, proto),
        (Bytes, bytes),
        (Action, action),
        (PktSrcAddr, pkt_src),
        (PktDstAddr, pkt_dst),
    ])
}

/// A moto server with a stack `name` provisioned in it (no Studio domain): the server, the
/// clients and the stack's outputs.
async fn provisioned(name: &str) -> (egresswatch_testkit::Service, Clients, provision::Outputs) {
    let moto = egresswatch_testkit::moto();
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let c = Clients::from_env(Some("us-east-1".into()), Some(moto.endpoint()))
        .await
        .unwrap();
    let spec = StackSpec {
        studio_domain: false,
        ..StackSpec::default()
    };
    let (_, out) = provision::reconcile(&c, &spec, name, Mode::Apply, |_| {})
        .await
        .unwrap();
    (moto, c, out)
}

async fn put(c: &Clients, group: &str, stream: &str, lines: &[String]) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let events = (now..).zip(lines.iter().cloned()).collect();
    provision::logs::put_events(c, group, stream, events, |_| {})
        .await
        .unwrap();
}

fn metric_values(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn run_until(
    config: Config,
    expect_records: u64,
    endpoint: &str,
) -> (BTreeMap<String, f64>, egresswatch_monitor::RunSummary) {
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let clients = egresswatch_monitor::aws::Clients::from_env(
        Some("us-east-1".into()),
        Some(endpoint.to_string()),
    )
    .await
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = tokio::sync::watch::channel(false);
    let m = metrics.clone();
    let task = tokio::spawn(egresswatch_monitor::run(
        config,
        metrics.clone(),
        rx,
        Some(clients),
    ));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done: u64 = metric_values(&m.render())
            .iter()
            .filter(|(k, _)| {
                k.starts_with("egresswatch_flow_records_total")
                    || k.starts_with("egresswatch_bad_lines_total")
            })
            .map(|(_, v)| *v as u64)
            .sum();
        if done >= expect_records {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {done} of {expect_records} records processed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // One more poll to show nothing else arrives.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tx.send(true).unwrap();
    let summary = task.await.unwrap().unwrap();
    (metric_values(&metrics.render()), summary)
}

#[tokio::test(flavor = "multi_thread")]
async fn known_mix_gives_exact_counters_and_findings_and_resumes_after_restart() {
    let (moto, c, out) = provisioned("watch").await;
    let nat = &out.nat_gateways[0];
    let (nat_eni, nat_ip) = (nat.network_interface_id.as_str(), nat.private_ip.as_str());
    let group = out.log_group.clone();

    // Webhook receiver collecting findings.
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let s = sink.clone();
            async move {
                s.lock().unwrap().push(serde_json::from_str(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = std::env::temp_dir().join(format!("ew-monitor-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("outputs.json"),
        serde_json::to_string(&out).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("deny.txt"), "203.0.113.0/24\n").unwrap();

    let wl = "10.42.16.5";
    let wl_eni = "eni-0aaaaaaaaaaaaaaaa";
    let nat_lines = vec![
        // HTTPS via NAT: inner leg counted, outer leg a duplicate.
        leg(
            nat_eni,
            wl,
            nat_ip,
            "40001",
            "443",
            "6",
            "1000",
            "ACCEPT",
            wl,
            "93.184.216.34",
        ),
        leg(
            nat_eni,
            nat_ip,
            "93.184.216.34",
            "40001",
            "443",
            "6",
            "1000",
            "ACCEPT",
            nat_ip,
            "93.184.216.34",
        ),
        // SSH via NAT.
        leg(
            nat_eni,
            wl,
            nat_ip,
            "40002",
            "22",
            "6",
            "5000",
            "ACCEPT",
            wl,
            "198.51.100.22",
        ),
        leg(
            nat_eni,
            nat_ip,
            "198.51.100.22",
            "40002",
            "22",
            "6",
            "5000",
            "ACCEPT",
            nat_ip,
            "198.51.100.22",
        ),
        // HTTPS to a denylisted address.
        leg(
            nat_eni,
            wl,
            nat_ip,
            "40003",
            "443",
            "6",
            "700",
            "ACCEPT",
            wl,
            "203.0.113.66",
        ),
        // DNS to 8.8.8.8.
        leg(
            nat_eni, wl, nat_ip, "40004", "53", "17", "80", "ACCEPT", wl, "8.8.8.8",
        ),
        "garbage".to_string(),
    ];
    let wl_lines = vec![
        // The workload's own view of the HTTPS connection: a duplicate.
        leg(
            wl_eni,
            wl,
            "93.184.216.34",
            "40001",
            "443",
            "6",
            "1000",
            "ACCEPT",
            wl,
            "93.184.216.34",
        ),
        // S3 through the gateway endpoint.
        line(&[
            (Field::InterfaceId, wl_eni),
            (Field::SrcAddr, wl),
            (Field::DstAddr, "52.216.8.8"),
            (Field::SrcPort, "40005"),
            (Field::DstPort, "443"),
            (Field::Protocol, "6"),
            (Field::Bytes, "7000"),
            (Field::Action, "ACCEPT"),
            (Field::PktDstAwsService, "S3"),
            (Field::TrafficPath, "7"),
        ]),
        // EFS inside the VPC.
        leg(
            wl_eni,
            wl,
            "10.42.32.9",
            "40006",
            "2049",
            "6",
            "300",
            "ACCEPT",
            wl,
            "10.42.32.9",
        ),
        // RDP out, rejected by the security group.
        leg(
            wl_eni,
            wl,
            "198.51.100.9",
            "40007",
            "3389",
            "6",
            "60",
            "REJECT",
            wl,
            "198.51.100.9",
        ),
    ];
    put(&c, &group, &format!("{nat_eni}-all"), &nat_lines).await;
    put(&c, &group, &format!("{wl_eni}-all"), &wl_lines).await;

    let toml = format!(
        r#"
listen = "127.0.0.1:{port}"
state-dir = "{state}"
stack = "watch"
outputs-file = "{outputs}"
poll-interval-seconds = 1
[rules]
denylists = ["{deny}"]
[alerts]
stdout = false
webhook-url = "{hook}"
dedupe-window-seconds = 3600
"#,
        port = egresswatch_testkit::free_port(),
        state = dir.join("state").display(),
        outputs = dir.join("outputs.json").display(),
        deny = dir.join("deny.txt").display()
    );
    let config = Config::from_toml(&toml, "test.toml").unwrap();
    let (m, summary) = run_until(config.clone(), 11, &moto.endpoint()).await;
    assert_eq!(summary.records, 11);
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    // Each series as read back from the daemon's registry, against what the records hold.
    let expected: &[(&str, f64)] = &[
        (
            r#"egresswatch_flow_records_total{action="ACCEPT",path="nat_egress",port_class="https"}"#,
            2.0,
        ),
        (
            r#"egresswatch_flow_records_total{action="ACCEPT",path="nat_egress",port_class="ssh"}"#,
            1.0,
        ),
        (
            r#"egresswatch_flow_records_total{action="ACCEPT",path="nat_egress",port_class="dns"}"#,
            1.0,
        ),
        (
            r#"egresswatch_flow_bytes_total{action="ACCEPT",path="nat_egress",port_class="https"}"#,
            1700.0,
        ),
        (
            r#"egresswatch_flow_bytes_total{action="ACCEPT",path="nat_egress",port_class="ssh"}"#,
            5000.0,
        ),
        (
            r#"egresswatch_flow_records_total{action="ACCEPT",path="s3_endpoint",port_class="https"}"#,
            1.0,
        ),
        (
            r#"egresswatch_flow_bytes_total{action="ACCEPT",path="s3_endpoint",port_class="https"}"#,
            7000.0,
        ),
        (
            r#"egresswatch_flow_records_total{action="ACCEPT",path="intra_vpc",port_class="nfs"}"#,
            1.0,
        ),
        (
            r#"egresswatch_flow_records_total{action="REJECT",path="rejected_egress",port_class="rdp"}"#,
            1.0,
        ),
        (
            r#"egresswatch_bad_lines_total{reason="invalid_number"}"#,
            1.0,
        ),
        (
            r#"egresswatch_findings_total{rule="non_https_egress",severity="high"}"#,
            1.0,
        ),
        (
            r#"egresswatch_findings_total{rule="dns_bypass",severity="high"}"#,
            1.0,
        ),
        (
            r#"egresswatch_findings_total{rule="rejected_egress",severity="medium"}"#,
            1.0,
        ),
        (
            r#"egresswatch_findings_total{rule="denylisted_destination",severity="critical"}"#,
            1.0,
        ),
    ];
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(series, want)| get(series) != *want)
        .map(|(series, want)| format!("{series}: {:?}, expected {want}", m.get(*series)))
        .collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
    let duplicates: f64 = m
        .iter()
        .filter(|(k, _)| {
            k.starts_with("egresswatch_flow_records_total") && k.contains(r#"path="duplicate""#)
        })
        .map(|(_, v)| v)
        .sum();
    assert_eq!(duplicates, 3.0);
    let findings_total: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("egresswatch_findings_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(findings_total, 4.0);
    assert_eq!(get(r#"egresswatch_alerts_sent_total{sink="webhook"}"#), 4.0);

    let mut got: Vec<(String, String, String, u64)> = received
        .lock()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["rule"].as_str().unwrap().to_string(),
                f["remote"].as_str().unwrap().to_string(),
                f["workload"].as_str().unwrap().to_string(),
                f["remote_port"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            (
                "denylisted_destination".into(),
                "203.0.113.66".into(),
                wl.into(),
                443
            ),
            ("dns_bypass".into(), "8.8.8.8".into(), wl.into(), 53),
            (
                "non_https_egress".into(),
                "198.51.100.22".into(),
                wl.into(),
                22
            ),
            (
                "rejected_egress".into(),
                "198.51.100.9".into(),
                wl.into(),
                3389
            ),
        ]
    );

    // Restart on the same state dir: nothing is read again; two new records are read once.
    put(
        &c,
        &group,
        &format!("{wl_eni}-all"),
        &[
            leg(
                wl_eni,
                wl,
                "10.42.32.10",
                "40008",
                "2049",
                "6",
                "10",
                "ACCEPT",
                wl,
                "10.42.32.10",
            ),
            leg(
                wl_eni,
                wl,
                "10.42.32.11",
                "40009",
                "2049",
                "6",
                "10",
                "ACCEPT",
                wl,
                "10.42.32.11",
            ),
        ],
    )
    .await;
    let (m2, summary2) = run_until(config, 2, &moto.endpoint()).await;
    assert_eq!(summary2.records, 2);
    assert_eq!(
        m2.get(
            r#"egresswatch_flow_records_total{action="ACCEPT",path="intra_vpc",port_class="nfs"}"#
        )
        .copied(),
        Some(2.0)
    );
    let cp = read_checkpoint(&dir.join("state/cloudwatch.checkpoint.json")).unwrap();
    assert_eq!(cp.records_committed, 13);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_read_from_ec2_suppress_the_workloads_they_name() {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    let (moto, c, out) = provisioned("tags").await;
    let nat = &out.nat_gateways[0];
    let (nat_eni, nat_ip) = (nat.network_interface_id.as_str(), nat.private_ip.as_str());
    let subnet = &out.private_subnets[0];
    let tags = |resource: ResourceType, k: &str, v: &str| {
        TagSpecification::builder()
            .resource_type(resource)
            .tags(Tag::builder().key(k).value(v).build())
            .build()
    };
    // A build box's own interface, tagged; a notebook instance, tagged on the instance only
    // (as people tag); and a workload nobody tagged.
    let build_ip = subnet.cidr.replace(".0/", ".50/");
    let build_ip = build_ip.split('/').next().unwrap().to_string();
    let eni = c
        .ec2
        .create_network_interface()
        .subnet_id(&subnet.id)
        .private_ip_address(&build_ip)
        .tag_specifications(tags(ResourceType::NetworkInterface, "role", "build"))
        .send()
        .await
        .unwrap();
    assert!(eni.network_interface().is_some());
    let run = c
        .ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .subnet_id(&subnet.id)
        .tag_specifications(tags(ResourceType::Instance, "team", "platform"))
        .send()
        .await
        .unwrap();
    let notebook_ip = run.instances()[0].private_ip_address().unwrap().to_string();
    let untagged_ip = subnet.cidr.replace(".0/", ".77/");
    let untagged_ip = untagged_ip.split('/').next().unwrap().to_string();

    let ssh_out = |wl: &str, n: u32| {
        leg(
            nat_eni,
            wl,
            nat_ip,
            &format!("{}", 40_000 + n),
            "22",
            "6",
            "5000",
            "ACCEPT",
            wl,
            "198.51.100.22",
        )
    };
    put(
        &c,
        &out.log_group,
        &format!("{nat_eni}-all"),
        &[
            ssh_out(&build_ip, 1),
            ssh_out(&notebook_ip, 2),
            ssh_out(&untagged_ip, 3),
        ],
    )
    .await;

    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let s = sink.clone();
            async move {
                s.lock().unwrap().push(serde_json::from_str(&body).unwrap());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = std::env::temp_dir().join(format!("ew-tags-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("outputs.json"),
        serde_json::to_string(&out).unwrap(),
    )
    .unwrap();
    let toml = format!(
        r#"
listen = "127.0.0.1:{port}"
state-dir = "{state}"
stack = "tags"
outputs-file = "{outputs}"
poll-interval-seconds = 1
[alerts]
stdout = false
webhook-url = "{hook}"
[[suppress]]
reason = "build boxes fetch sources over SSH"
tag = "role=build"
[[suppress]]
reason = "the platform team's notebooks use the partner SFTP"
tag = "team=platform"
rule = "non_https_egress"
"#,
        port = egresswatch_testkit::free_port(),
        state = dir.join("state").display(),
        outputs = dir.join("outputs.json").display(),
    );
    let config = Config::from_toml(&toml, "test.toml").unwrap();
    let (m, summary) = run_until(config, 3, &moto.endpoint()).await;
    assert_eq!(summary.records, 3);
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    assert_eq!(
        get(r#"egresswatch_findings_suppressed_total{rule="non_https_egress"}"#),
        2.0
    );
    assert_eq!(
        get(r#"egresswatch_findings_total{rule="non_https_egress",severity="high"}"#),
        1.0
    );
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0]["workload"], untagged_ip.as_str());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A first start reads the history the log group keeps back to `cloudwatch.history-seconds`
/// (the warm start), and no further: a stream written three days ago is read, one written ten
/// days ago is not, and the warm start is over once every stream was read to its end.
#[tokio::test(flavor = "multi_thread")]
async fn a_first_start_reads_the_retained_history_back_to_its_horizon() {
    let (moto, c, out) = provisioned("warm").await;
    let nat = &out.nat_gateways[0];
    let (nat_eni, nat_ip) = (nat.network_interface_id.as_str(), nat.private_ip.as_str());
    let group = out.log_group.clone();
    let dir = std::env::temp_dir().join(format!("ew-warm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("outputs.json"),
        serde_json::to_string(&out).unwrap(),
    )
    .unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let day_ms = 86_400_000i64;
    let lines = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                leg(
                    nat_eni,
                    "10.42.16.5",
                    nat_ip,
                    &(41_000 + i).to_string(),
                    "443",
                    "6",
                    "1000",
                    "ACCEPT",
                    "10.42.16.5",
                    "93.184.216.34",
                )
            })
            .collect()
    };
    for (stream, days_ago, n) in [
        ("eni-0recent0000000000-all", 3, 5),
        ("eni-0old000000000000-all", 10, 4),
    ] {
        let at = now_ms - days_ago * day_ms;
        let events = (at..).zip(lines(n)).collect();
        provision::logs::put_events(&c, &group, stream, events, |_| {})
            .await
            .unwrap();
    }
    let toml = format!(
        r#"
listen = "127.0.0.1:{port}"
state-dir = "{state}"
stack = "warm"
outputs-file = "{outputs}"
poll-interval-seconds = 1
[alerts]
stdout = false
"#,
        port = egresswatch_testkit::free_port(),
        state = dir.join("state").display(),
        outputs = dir.join("outputs.json").display(),
    );
    let config = Config::from_toml(&toml, "test.toml").unwrap();
    let (m, summary) = run_until(config, 5, &moto.endpoint()).await;
    // The three-day-old stream's records, and not the ten-day-old one's.
    assert_eq!(summary.records, 5);
    assert_eq!(m["egresswatch_warm_start_left"], 0.0);
    let cp = read_checkpoint(&dir.join("state/cloudwatch.checkpoint.json")).unwrap();
    assert!(
        cp.streams.contains_key("eni-0recent0000000000-all"),
        "{cp:?}"
    );
    assert!(
        !cp.streams.contains_key("eni-0old000000000000-all"),
        "{cp:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
