//! The S3 ranges the daemon asks EC2 for at start (moto), over those the outputs recorded: AWS
//! adds ranges to its S3 prefix list, and a range the monitor does not know makes traffic
//! through the gateway endpoint look like traffic to the internet.

use egresswatch_monitor::aws::Clients;
use egresswatch_monitor::topology::Topology;
use egresswatch_monitor::Metrics;

#[tokio::test(flavor = "current_thread")]
async fn s3_ranges_are_refreshed_from_ec2_and_kept_when_it_cannot_answer() {
    let moto = egresswatch_testkit::moto();
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let clients = Clients::from_env(Some("us-east-1".into()), Some(moto.endpoint()))
        .await
        .unwrap();
    let lists = clients
        .ec2
        .describe_managed_prefix_lists()
        .send()
        .await
        .unwrap();
    let s3 = lists
        .prefix_lists()
        .iter()
        .find(|p| p.prefix_list_name() == Some("com.amazonaws.us-east-1.s3"))
        .unwrap();
    let id = s3.prefix_list_id().unwrap().to_string();
    let entries = clients
        .ec2
        .get_managed_prefix_list_entries()
        .prefix_list_id(&id)
        .send()
        .await
        .unwrap();
    let mut want: Vec<String> = entries
        .entries()
        .iter()
        .filter_map(|e| e.cidr().map(String::from))
        .collect();
    want.sort();
    assert!(!want.is_empty());

    let metrics = Metrics::new();
    let stale = "192.0.2.0/24".parse().unwrap();
    let mut topo = Topology {
        s3_cidrs: vec![stale],
        s3_prefix_list_id: Some(id.clone()),
        ..Topology::default()
    };
    topo.refresh_s3_ranges(&clients.ec2, &metrics)
        .await
        .unwrap();
    let mut got: Vec<String> = topo.s3_cidrs.iter().map(|n| n.to_string()).collect();
    got.sort();
    assert_eq!(got, want);
    let counted = metrics
        .source_calls
        .with_label_values(&["GetManagedPrefixListEntries"])
        .get();
    assert_eq!(counted, 1);

    // A list EC2 does not know: the error names it and the known ranges stay.
    let mut unknown = Topology {
        s3_cidrs: vec![stale],
        s3_prefix_list_id: Some("pl-00000000".into()),
        ..Topology::default()
    };
    let e = unknown
        .refresh_s3_ranges(&clients.ec2, &metrics)
        .await
        .unwrap_err();
    assert!(e.contains("pl-00000000"), "{e}");
    assert_eq!(unknown.s3_cidrs, vec![stale]);

    // No list named (a [topology] in the config): nothing is asked.
    let mut none = Topology::default();
    none.refresh_s3_ranges(&clients.ec2, &metrics)
        .await
        .unwrap();
    assert_eq!(
        metrics
            .source_calls
            .with_label_values(&["GetManagedPrefixListEntries"])
            .get(),
        2
    );
}
