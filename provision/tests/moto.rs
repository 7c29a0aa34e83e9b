//! The provisioner against a real moto server on 127.0.0.1, behind testkit's AWS behaviour
//! layer: what `up` creates (checked by describing each resource), idempotence, convergence
//! after a crash at every mutating call and under AWS's eventual consistency, drift repair
//! (a subnet moved to another route table included), `plan` on a partial stack, and a `down`
//! that empties a used Studio domain and leaves nothing behind.

use aws_sdk_ec2::types::Filter;
use egresswatch_provision::{
    self as provision, ChangeKind, Clients, DownOptions, Mode, StackSpec, STACK_TAG,
};

/// `down` told to delete everything, the log group and the users' home data included.
const ALL: DownOptions = DownOptions {
    delete_logs: true,
    delete_home_data: true,
    dry_run: false,
};

async fn clients(endpoint: &str) -> Clients {
    // Credentials for the emulator; every test sets the same values.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    Clients::from_env(Some("us-east-1".into()), Some(endpoint.into()))
        .await
        .unwrap()
}

/// moto behind the AWS behaviour layer: with `{}`, moto plus the SageMaker listings it lacks;
/// with behaviours switched on, AWS's refusals and delays as well.
async fn emulator(
    behaviours: serde_json::Value,
) -> (
    egresswatch_testkit::Service,
    egresswatch_testkit::AwsBehaviour,
    Clients,
) {
    let moto = egresswatch_testkit::moto();
    let layer = egresswatch_testkit::aws_behaviour(&moto, &behaviours);
    let c = clients(&layer.endpoint()).await;
    (moto, layer, c)
}

/// (protocol, from port, to port, CIDRs, security groups) of one egress permission.
type EgressRule = (String, i32, i32, Vec<String>, Vec<String>);

fn tag_filter(stack: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{STACK_TAG}"))
        .values(stack)
        .build()
}

async fn up(c: &Clients, spec: &StackSpec, stack: &str) -> Vec<provision::Change> {
    provision::reconcile(c, spec, stack, Mode::Apply, |_| {})
        .await
        .unwrap()
        .0
}

async fn plan(c: &Clients, spec: &StackSpec, stack: &str) -> Vec<provision::Change> {
    provision::reconcile(c, spec, stack, Mode::Plan, |_| {})
        .await
        .unwrap()
        .0
}

/// Counts what carries the stack tag (or the stack's role names) in the account.
async fn tagged(c: &Clients, stack: &str) -> usize {
    let ec2 = &c.ec2;
    let mut n = 0;
    n += ec2
        .describe_vpcs()
        .filters(tag_filter(stack))
        .send()
        .await
        .unwrap()
        .vpcs()
        .len();
    n += ec2
        .describe_subnets()
        .filters(tag_filter(stack))
        .send()
        .await
        .unwrap()
        .subnets()
        .len();
    n += ec2
        .describe_internet_gateways()
        .filters(tag_filter(stack))
        .send()
        .await
        .unwrap()
        .internet_gateways()
        .len();
    n += ec2
        .describe_addresses()
        .filters(tag_filter(stack))
        .send()
        .await
        .unwrap()
        .addresses()
        .len();
    n += ec2
        .describe_route_tables()
        .filters(tag_filter(stack))
        .send()
        .await
        .unwrap()
        .route_tables()
        .len();
    n += ec2
        .describe_security_groups()
        .filters(tag_filter(stack))
        .send()
        .await
        .unwrap()
        .security_groups()
        .len();
    n += ec2
        .describe_network_acls()
        .filters(tag_filter(stack))
        .send()
        .await
        .unwrap()
        .network_acls()
        .len();
    n += ec2
        .describe_flow_logs()
        .filter(tag_filter(stack))
        .send()
        .await
        .unwrap()
        .flow_logs()
        .len();
    let nats = ec2.describe_nat_gateways().send().await.unwrap();
    n += nats
        .nat_gateways()
        .iter()
        .filter(|g| {
            g.tags()
                .iter()
                .any(|t| t.key() == Some(STACK_TAG) && t.value() == Some(stack))
                && g.state().map(|s| s.as_str()) != Some("deleted")
        })
        .count();
    let eps = ec2
        .describe_vpc_endpoints()
        .filters(tag_filter(stack))
        .send()
        .await
        .unwrap();
    n += eps
        .vpc_endpoints()
        .iter()
        .filter(|e| e.state().map(|s| s.as_str()) != Some("deleted"))
        .count();
    let roles = c.iam.list_roles().send().await.unwrap();
    n += roles
        .roles()
        .iter()
        .filter(|r| r.role_name().starts_with(&format!("{stack}-")))
        .count();
    let groups = c
        .logs
        .describe_log_groups()
        .log_group_name_prefix(format!("/egresswatch/{stack}/"))
        .send()
        .await
        .unwrap();
    n += groups.log_groups().len();
    let domains = c.sagemaker.list_domains().send().await.unwrap();
    n += domains
        .domains()
        .iter()
        .filter(|d| d.domain_name() == Some(stack))
        .count();
    n
}

#[tokio::test(flavor = "multi_thread")]
async fn up_creates_the_decision_records_network() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = StackSpec::default();
    let changes = up(&c, &spec, "research").await;
    assert!(changes
        .iter()
        .any(|ch| ch.resource == "vpc" && ch.kind == ChangeKind::Create));
    let (_, out) = provision::reconcile(&c, &spec, "research", Mode::Plan, |_| {})
        .await
        .unwrap();
    let ec2 = &c.ec2;

    // VPC with DNS support and hostnames.
    let vpcs = ec2
        .describe_vpcs()
        .filters(tag_filter("research"))
        .send()
        .await
        .unwrap();
    assert_eq!(vpcs.vpcs().len(), 1);
    let vpc = &vpcs.vpcs()[0];
    assert_eq!(vpc.cidr_block(), Some("10.42.0.0/16"));
    let vpc_id = vpc.vpc_id().unwrap();
    for attr in [
        aws_sdk_ec2::types::VpcAttributeName::EnableDnsSupport,
        aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames,
    ] {
        let a = ec2
            .describe_vpc_attribute()
            .vpc_id(vpc_id)
            .attribute(attr.clone())
            .send()
            .await
            .unwrap();
        let on = a
            .enable_dns_support()
            .or(a.enable_dns_hostnames())
            .and_then(|v| v.value());
        assert_eq!(on, Some(true), "{attr:?}");
    }
    // Four subnets in the region's first two zones by id (in moto's us-east-1, use1-az1 is
    // us-east-1b and use1-az2 us-east-1c).
    let subnets = ec2
        .describe_subnets()
        .filters(tag_filter("research"))
        .send()
        .await
        .unwrap();
    let mut cidrs: Vec<(&str, &str)> = subnets
        .subnets()
        .iter()
        .map(|s| (s.cidr_block().unwrap(), s.availability_zone().unwrap()))
        .collect();
    cidrs.sort();
    assert_eq!(
        cidrs,
        [
            ("10.42.0.0/24", "us-east-1b"),
            ("10.42.1.0/24", "us-east-1c"),
            ("10.42.16.0/20", "us-east-1b"),
            ("10.42.32.0/20", "us-east-1c")
        ]
    );
    // Private route tables send 0.0.0.0/0 to the NAT gateway and S3 to the endpoint.
    let nat_id = out.nat_gateways[0].id.clone();
    assert!(nat_id.starts_with("nat-"));
    let rts = ec2
        .describe_route_tables()
        .filters(tag_filter("research"))
        .send()
        .await
        .unwrap();
    assert_eq!(rts.route_tables().len(), 3);
    for rt in rts.route_tables() {
        let default = rt
            .routes()
            .iter()
            .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))
            .unwrap();
        let name = rt
            .tags()
            .iter()
            .find(|t| t.key() == Some("egresswatch:resource"))
            .and_then(|t| t.value())
            .unwrap();
        if name.contains("private") {
            assert_eq!(default.nat_gateway_id(), Some(nat_id.as_str()), "{name}");
            assert!(
                rt.routes()
                    .iter()
                    .any(|r| r.destination_prefix_list_id().is_some()),
                "{name} has the S3 prefix-list route"
            );
        } else {
            assert_eq!(default.gateway_id(), Some(out.internet_gateway_id.as_str()));
            assert_eq!(rt.associations().len(), 2);
        }
    }
    // S3 gateway endpoint on both private route tables.
    let eps = ec2
        .describe_vpc_endpoints()
        .filters(tag_filter("research"))
        .send()
        .await
        .unwrap();
    let ep = &eps.vpc_endpoints()[0];
    assert_eq!(ep.service_name(), Some("com.amazonaws.us-east-1.s3"));
    assert_eq!(ep.route_table_ids().len(), 2);
    // The outputs carry the prefix list's ranges as EC2 reports them, for the monitor.
    let lists = ec2
        .describe_managed_prefix_lists()
        .prefix_list_ids(&out.s3_prefix_list_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        lists.prefix_lists()[0].prefix_list_name(),
        Some("com.amazonaws.us-east-1.s3")
    );
    let entries = ec2
        .get_managed_prefix_list_entries()
        .prefix_list_id(&out.s3_prefix_list_id)
        .send()
        .await
        .unwrap();
    let mut want: Vec<&str> = entries.entries().iter().filter_map(|e| e.cidr()).collect();
    let mut got: Vec<&str> = out
        .s3_prefix_list_cidrs
        .iter()
        .map(String::as_str)
        .collect();
    want.sort();
    got.sort();
    assert!(!want.is_empty());
    assert_eq!(got, want);
    // Security group: HTTPS out only; NFS and kernel ports within the group; nothing else.
    let sg = ec2
        .describe_security_groups()
        .filters(tag_filter("research"))
        .send()
        .await
        .unwrap();
    let sg = &sg.security_groups()[0];
    let egress: Vec<EgressRule> = sg
        .ip_permissions_egress()
        .iter()
        .map(|p| {
            (
                p.ip_protocol().unwrap().to_string(),
                p.from_port().unwrap_or(-1),
                p.to_port().unwrap_or(-1),
                p.ip_ranges()
                    .iter()
                    .map(|r| r.cidr_ip().unwrap().to_string())
                    .collect(),
                p.user_id_group_pairs()
                    .iter()
                    .map(|g| g.group_id().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    let own = sg.group_id().unwrap().to_string();
    let mut egress_sorted = egress.clone();
    egress_sorted.sort();
    assert_eq!(
        egress_sorted,
        vec![
            (
                "tcp".to_string(),
                443,
                443,
                vec!["0.0.0.0/0".to_string()],
                vec![]
            ),
            ("tcp".to_string(), 2049, 2049, vec![], vec![own.clone()]),
            ("tcp".to_string(), 8192, 65535, vec![], vec![own.clone()]),
        ]
    );
    assert!(
        sg.ip_permissions().iter().all(|p| p.ip_ranges().is_empty()),
        "no ingress from outside the group"
    );
    assert_eq!(sg.ip_permissions().len(), 2);
    // Flow log: ALL, 60 s, the attribution format, to the log group, with the delivery role.
    let fl = ec2
        .describe_flow_logs()
        .filter(Filter::builder().name("resource-id").values(vpc_id).build())
        .send()
        .await
        .unwrap();
    let fl = &fl.flow_logs()[0];
    assert_eq!(fl.log_format(), Some(provision::flow_log_format().as_str()));
    assert_eq!(fl.max_aggregation_interval(), Some(60));
    assert_eq!(fl.traffic_type().map(|t| t.as_str()), Some("ALL"));
    assert_eq!(fl.log_group_name(), Some("/egresswatch/research/flow-logs"));
    // Log group retention.
    let groups = c
        .logs
        .describe_log_groups()
        .log_group_name_prefix("/egresswatch/research/")
        .send()
        .await
        .unwrap();
    assert_eq!(groups.log_groups()[0].retention_in_days(), Some(90));
    // Flow-log role trusted only with SourceAccount and SourceArn conditions.
    let role = c
        .iam
        .get_role()
        .role_name("research-flow-logs")
        .send()
        .await
        .unwrap();
    let trust = percent_encoding::percent_decode_str(
        role.role().unwrap().assume_role_policy_document().unwrap(),
    )
    .decode_utf8_lossy()
    .to_string();
    let trust: serde_json::Value = serde_json::from_str(&trust).unwrap();
    assert_eq!(
        trust["Statement"][0]["Principal"]["Service"],
        "vpc-flow-logs.amazonaws.com"
    );
    assert_eq!(
        trust["Statement"][0]["Condition"]["StringEquals"]["aws:SourceAccount"],
        "123456789012"
    );
    assert_eq!(
        trust["Statement"][0]["Condition"]["ArnLike"]["aws:SourceArn"],
        "arn:aws:ec2:us-east-1:123456789012:vpc-flow-log/*"
    );
    // Roles live under the project's IAM path, which the provisioner's policy is limited to.
    assert_eq!(role.role().unwrap().path(), "/egresswatch/");
    // The private subnets' network ACL: HTTPS out, replies in, anything within the VPC; both
    // private subnets use it, the public ones keep the VPC's default.
    let (acl, default_acl) = network_acls(ec2, "research").await;
    let mut entries: Vec<AclEntry> = acl
        .entries()
        .iter()
        .filter(|e| e.rule_number() < Some(32767))
        .map(|e| {
            (
                e.egress().unwrap(),
                e.rule_number().unwrap(),
                e.protocol().unwrap().to_string(),
                e.cidr_block().unwrap().to_string(),
                e.port_range().map(|p| (p.from().unwrap(), p.to().unwrap())),
            )
        })
        .collect();
    entries.sort();
    assert_eq!(
        entries,
        [
            (false, 100, "-1".into(), "10.42.0.0/16".into(), None),
            (
                false,
                110,
                "6".into(),
                "0.0.0.0/0".into(),
                Some((1024, 65535))
            ),
            (true, 100, "-1".into(), "10.42.0.0/16".into(), None),
            (true, 110, "6".into(), "0.0.0.0/0".into(), Some((443, 443))),
        ]
    );
    let mut on_acl: Vec<&str> = acl
        .associations()
        .iter()
        .filter_map(|a| a.subnet_id())
        .collect();
    on_acl.sort();
    let mut private: Vec<&str> = out.private_subnets.iter().map(|s| s.id.as_str()).collect();
    private.sort();
    assert_eq!(on_acl, private);
    assert!(out.public_subnets.iter().all(|p| default_acl
        .associations()
        .iter()
        .any(|a| a.subnet_id() == Some(p.id.as_str()))));
    let attached = c
        .iam
        .list_attached_role_policies()
        .role_name("research-studio-execution")
        .send()
        .await
        .unwrap();
    assert!(
        attached.attached_policies().is_empty(),
        "no managed policy unless the spec asks"
    );
    // The Studio role can run Studio apps, and is denied what leaves the network design.
    let inline = c
        .iam
        .get_role_policy()
        .role_name("research-studio-execution")
        .policy_name("egresswatch")
        .send()
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(
        &percent_encoding::percent_decode_str(inline.policy_document()).decode_utf8_lossy(),
    )
    .unwrap();
    let sid = |name: &str| {
        doc["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {doc}"))
    };
    assert!(sid("StudioApps")["Action"]
        .as_array()
        .unwrap()
        .contains(&"sagemaker:CreateApp".into()));
    assert_eq!(sid("DenyWorkOutsideTheVpc")["Effect"], "Deny");
    assert_eq!(
        sid("DenyWorkOutsideTheVpc")["Condition"]["Null"]["sagemaker:VpcSubnets"],
        "true"
    );
    assert!(sid("DenyChangingTheDomain")["Action"]
        .as_array()
        .unwrap()
        .contains(&"sagemaker:UpdateDomain".into()));
    // Studio domain: VpcOnly, IAM auth, private subnets, our SG and role.
    let d = c
        .sagemaker
        .describe_domain()
        .domain_id(&out.domain_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.app_network_access_type().map(|m| m.as_str()),
        Some("VpcOnly")
    );
    assert_eq!(d.auth_mode().map(|m| m.as_str()), Some("IAM"));
    assert_eq!(d.vpc_id(), Some(vpc_id));
    let mut subnet_ids = d.subnet_ids().to_vec();
    subnet_ids.sort();
    let mut private: Vec<String> = out.private_subnets.iter().map(|s| s.id.clone()).collect();
    private.sort();
    assert_eq!(subnet_ids, private);
    assert_eq!(
        d.default_user_settings().and_then(|u| u.execution_role()),
        Some(out.studio_role_arn.as_str())
    );

    // A second `up` makes no mutating call but taking and giving back the stack's lock.
    let before = c.calls.mutating();
    let again = up(&c, &spec, "research").await;
    assert_eq!(again, vec![]);
    let names = c.calls.mutating_names();
    assert_eq!(
        c.calls.mutating() - before,
        2,
        "mutating calls on a no-op up: {names:?}"
    );
    assert_eq!(
        names[names.len() - 2..],
        ["CreateLogGroup".to_string(), "DeleteLogGroup".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn up_interrupted_at_every_mutating_call_converges() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = StackSpec::default();
    // The roles' permissions boundary is the account's: the first `up` makes it and `down`
    // keeps it. Made here first, so every stack below makes the same calls.
    up(&c, &spec, "first").await;
    provision::down(&c, "first", ALL, |_| {}).await.unwrap();
    // How many mutating calls a clean `up` makes, in a throwaway stack.
    let before = c.calls.mutating();
    up(&c, &spec, "probe").await;
    let total = c.calls.mutating() - before;
    assert!(total > 20, "{total}");
    provision::down(&c, "probe", ALL, |_| {}).await.unwrap();
    for k in 1..=total {
        let stack = format!("crash{k}");
        c.calls.fail_mutating_call(k);
        let first = provision::reconcile(&c, &spec, &stack, Mode::Apply, |_| {}).await;
        c.calls.fail_mutating_call(0);
        if k == total {
            // The last call gives the lock back: the stack is complete, and the lock left
            // behind stops the next run until it is removed (or goes stale).
            assert!(first.is_ok(), "k={k}: {first:?}");
            let held = provision::reconcile(&c, &spec, &stack, Mode::Apply, |_| {}).await;
            assert!(held.unwrap_err().to_string().contains("provision unlock"));
            assert!(provision::lock::unlock(&c, &stack).await.unwrap());
        } else {
            assert!(first.is_err(), "k={k}: the injected fault should stop up");
        }
        up(&c, &spec, &stack).await;
        assert_eq!(plan(&c, &spec, &stack).await, vec![], "k={k}: converged");
        let vpcs = c
            .ec2
            .describe_vpcs()
            .filters(tag_filter(&stack))
            .send()
            .await
            .unwrap();
        assert_eq!(vpcs.vpcs().len(), 1, "k={k}: exactly one VPC");
        provision::down(&c, &stack, ALL, |_| {}).await.unwrap();
        assert_eq!(tagged(&c, &stack).await, 0, "k={k}: down leaves nothing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tampering_is_reported_and_repaired_then_down_leaves_nothing() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = StackSpec::default();
    let (_, out) = provision::reconcile(&c, &spec, "lab", Mode::Apply, |_| {})
        .await
        .unwrap();
    // Someone opens SSH to the internet and deletes the flow log.
    c.ec2
        .authorize_security_group_egress()
        .group_id(&out.security_group_id)
        .ip_permissions(
            aws_sdk_ec2::types::IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(22)
                .to_port(22)
                .ip_ranges(
                    aws_sdk_ec2::types::IpRange::builder()
                        .cidr_ip("0.0.0.0/0")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    c.ec2
        .delete_flow_logs()
        .flow_log_ids(&out.flow_log_id)
        .send()
        .await
        .unwrap();
    let findings = plan(&c, &spec, "lab").await;
    let summary: Vec<(String, bool)> = findings
        .iter()
        .map(|f| (f.resource.clone(), f.security))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("security-group".to_string(), true),
            ("flow-log".to_string(), true)
        ]
    );
    assert!(
        findings[0].detail.contains("tcp 22 to cidr:0.0.0.0/0"),
        "{}",
        findings[0].detail
    );
    // `up` repairs exactly that.
    let repaired = up(&c, &spec, "lab").await;
    assert_eq!(repaired.len(), 2);
    assert_eq!(plan(&c, &spec, "lab").await, vec![]);
    // The flow log replaced by one with a format that cannot attribute NAT traffic (flow logs
    // cannot change in place): status flags it, up replaces it.
    let (_, now) = provision::reconcile(&c, &spec, "lab", Mode::Plan, |_| {})
        .await
        .unwrap();
    c.ec2
        .delete_flow_logs()
        .flow_log_ids(&now.flow_log_id)
        .send()
        .await
        .unwrap();
    c.ec2
        .create_flow_logs()
        .resource_ids(&now.vpc_id)
        .resource_type(aws_sdk_ec2::types::FlowLogsResourceType::Vpc)
        .traffic_type(aws_sdk_ec2::types::TrafficType::All)
        .log_destination_type(aws_sdk_ec2::types::LogDestinationType::CloudWatchLogs)
        .log_group_name(&now.log_group)
        .deliver_logs_permission_arn(&now.flow_log_role_arn)
        .log_format("${version} ${srcaddr} ${dstaddr} ${bytes}")
        .max_aggregation_interval(60)
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::VpcFlowLog)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(STACK_TAG)
                        .value("lab")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let drift = plan(&c, &spec, "lab").await;
    let kinds: Vec<(&str, ChangeKind, bool)> = drift
        .iter()
        .map(|d| (d.resource.as_str(), d.kind.clone(), d.security))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("flow-log", ChangeKind::Replace, true),
            ("flow-log", ChangeKind::Create, true)
        ]
    );
    assert!(
        drift[0].detail.contains("record format differs"),
        "{}",
        drift[0].detail
    );
    up(&c, &spec, "lab").await;
    assert_eq!(plan(&c, &spec, "lab").await, vec![]);
    let fls = c
        .ec2
        .describe_flow_logs()
        .filter(tag_filter("lab"))
        .send()
        .await
        .unwrap();
    assert_eq!(fls.flow_logs().len(), 1);
    assert_eq!(
        fls.flow_logs()[0].log_format(),
        Some(provision::flow_log_format().as_str())
    );

    // A partial stack: delete the S3 endpoint; plan lists exactly it.
    c.ec2
        .delete_vpc_endpoints()
        .vpc_endpoint_ids(&out.s3_endpoint_id)
        .send()
        .await
        .unwrap();
    let missing = plan(&c, &spec, "lab").await;
    assert_eq!(
        missing
            .iter()
            .map(|m| (m.resource.as_str(), m.kind.clone()))
            .collect::<Vec<_>>(),
        vec![("s3-endpoint", ChangeKind::Create)]
    );
    // Down, twice: everything goes, and the second finds nothing.
    let deleted = provision::down(&c, "lab", ALL, |_| {}).await.unwrap();
    assert!(deleted.len() >= 15, "{deleted:?}");
    assert_eq!(tagged(&c, "lab").await, 0);
    assert_eq!(
        provision::down(&c, "lab", ALL, |_| {}).await.unwrap(),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_nat_gateway_per_zone_when_asked() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = StackSpec {
        nat_gateway_per_az: true,
        studio_domain: false,
        s3_endpoint_buckets: vec!["research-data".into()],
        ..StackSpec::default()
    };
    let (_, out) = provision::reconcile(&c, &spec, "multi", Mode::Apply, |_| {})
        .await
        .unwrap();
    assert_eq!(out.nat_gateways.len(), 2);
    assert_ne!(out.nat_gateways[0].id, out.nat_gateways[1].id);
    assert_eq!(out.nat_gateways[1].subnet_id, out.public_subnets[1].id);
    assert!(out.domain_id.is_empty());
    let rts = c
        .ec2
        .describe_route_tables()
        .filters(tag_filter("multi"))
        .send()
        .await
        .unwrap();
    for rt in rts.route_tables() {
        let name = rt
            .tags()
            .iter()
            .find(|t| t.key() == Some("egresswatch:resource"))
            .and_then(|t| t.value())
            .unwrap();
        let nat = rt.routes().iter().find_map(|r| r.nat_gateway_id());
        match name {
            "route-table/private-0" => assert_eq!(nat, Some(out.nat_gateways[0].id.as_str())),
            "route-table/private-1" => assert_eq!(nat, Some(out.nat_gateways[1].id.as_str())),
            _ => assert_eq!(nat, None),
        }
    }
    // The endpoint policy allows the account's own buckets, the listed one, and read-only the
    // AWS-owned buckets Studio needs; no other bucket.
    let ep = c
        .ec2
        .describe_vpc_endpoints()
        .vpc_endpoint_ids(&out.s3_endpoint_id)
        .send()
        .await
        .unwrap();
    let doc = ep.vpc_endpoints()[0].policy_document().unwrap();
    let policy: serde_json::Value =
        serde_json::from_str(&percent_encoding::percent_decode_str(doc).decode_utf8_lossy())
            .unwrap();
    let statement = |sid: &str| {
        policy["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["Sid"] == sid)
            .cloned()
            .unwrap_or_else(|| panic!("no {sid} in {policy}"))
    };
    assert_eq!(
        statement("OwnAccountsBuckets")["Condition"]["StringEquals"]["aws:ResourceAccount"],
        serde_json::json!([out.account_id])
    );
    assert_eq!(
        statement("ListedBuckets")["Resource"],
        serde_json::json!(["arn:aws:s3:::research-data", "arn:aws:s3:::research-data/*"])
    );
    assert!(statement("AwsOwnedBucketsStudioReads")["Resource"]
        .as_array()
        .unwrap()
        .contains(&"arn:aws:s3:::prod-us-east-1-starport-layer-bucket/*".into()));
    assert_eq!(
        statement("AwsOwnedBucketsStudioReads")["Action"],
        serde_json::json!(["s3:GetObject", "s3:ListBucket"])
    );
    // No statement allows every bucket unconditionally.
    assert!(policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["Resource"] != "*" || s.get("Condition").is_some()));
    assert_eq!(plan(&c, &spec, "multi").await, vec![]);
    // Back to one NAT gateway: the second zone's gateway and address go, once no route
    // points at them.
    let one = StackSpec {
        nat_gateway_per_az: false,
        ..spec.clone()
    };
    let changes = plan(&c, &one, "multi").await;
    let deletions: Vec<&str> = changes
        .iter()
        .filter(|c| c.kind == ChangeKind::Delete)
        .map(|c| c.resource.as_str())
        .collect();
    assert_eq!(deletions, ["nat-gateway", "elastic-ip"], "{changes:?}");
    up(&c, &one, "multi").await;
    assert_eq!(plan(&c, &one, "multi").await, vec![]);
    let live = c
        .ec2
        .describe_nat_gateways()
        .send()
        .await
        .unwrap()
        .nat_gateways()
        .iter()
        .filter(|n| n.state().map(|s| s.as_str()) == Some("available"))
        .filter(|n| n.vpc_id() == Some(out.vpc_id.as_str()))
        .count();
    assert_eq!(live, 1);
    let eips = c
        .ec2
        .describe_addresses()
        .filters(tag_filter("multi"))
        .send()
        .await
        .unwrap();
    assert_eq!(eips.addresses().len(), 1);
    provision::down(&c, "multi", ALL, |_| {}).await.unwrap();
    assert_eq!(tagged(&c, "multi").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn up_converges_in_one_run_while_aws_is_eventually_consistent() {
    let (_moto, aws, c) = emulator(serde_json::json!({
        "eventual-consistency": {"misses": 2},
        "role-propagation": {"refusals": 2},
    }))
    .await;
    let spec = StackSpec::default();
    let mut said = Vec::new();
    let (_, out) =
        provision::reconcile(&c, &spec, "slow", Mode::Apply, |s| said.push(s.to_string()))
            .await
            .unwrap();
    // The layer did refuse, as AWS does right after create, and each refusal was waited out.
    assert_eq!(
        aws.injected("eventual-consistency", "DescribeSecurityGroups"),
        2
    );
    assert_eq!(
        aws.injected("eventual-consistency", "DescribeNatGateways"),
        2
    );
    assert_eq!(aws.injected("role-propagation", "CreateFlowLogs"), 2);
    assert_eq!(aws.injected("role-propagation", "CreateDomain"), 2);
    assert!(
        said.iter().any(|s| s.starts_with("retrying in")),
        "{said:?}"
    );
    // A plan for a stack that does not exist yet knows the account (from STS).
    let (_, planned) = provision::reconcile(&c, &spec, "fresh", Mode::Plan, |_| {})
        .await
        .unwrap();
    assert_eq!(planned.account_id, "123456789012");
    // One run was enough: the stack is complete and in spec.
    assert_eq!(plan(&c, &spec, "slow").await, vec![]);
    assert!(out.flow_log_id.starts_with("fl-"), "{out:?}");
    assert!(!out.domain_id.is_empty());
}

/// Every create-then-use of the stack meets EC2's eventual consistency (each new id unknown
/// to the first call naming it), S3 cannot yet validate the queue's fresh policy, the
/// internet gateway cannot be detached while the NAT's address is unmapped, and a queue name
/// is held for 60 s after `down`: `up`, `down` and `up` again each finish in one run.
#[tokio::test(flavor = "multi_thread")]
async fn up_down_up_waits_out_every_create_then_use_refusal_aws_gives() {
    let (_moto, aws, c) = emulator(serde_json::json!({
        "eventual-consistency": {"misses": 1},
        "notification-validation": {"refusals": 2},
        "address-unmapping": {"refusals": 2},
        "queue-deleted-recently": {"seconds": 15},
    }))
    .await;
    let spec = s3_spec(None);
    let mut said = Vec::new();
    let (_, out) = provision::reconcile(&c, &spec, "fresh", Mode::Apply, |s| {
        said.push(s.to_string())
    })
    .await
    .unwrap();
    // Each new id was unknown to the first call naming it, whichever that was, and each such
    // call was retried: every kind of resource the stack makes, and the uses of them the
    // field reports failing.
    let refused: Vec<(String, String)> = aws
        .journal()
        .iter()
        .filter(|j| j["behaviour"] == "eventual-consistency")
        .map(|j| {
            (
                j["action"].as_str().unwrap_or_default().to_string(),
                j["resource"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    for prefix in [
        "vpc-",
        "subnet-",
        "igw-",
        "rtb-",
        "acl-",
        "eipalloc-",
        "nat-",
        "sg-",
    ] {
        assert!(
            refused.iter().any(|(_, id)| id.starts_with(prefix)),
            "no {prefix} id was refused: {refused:?}"
        );
    }
    for action in [
        "AttachInternetGateway",
        "CreateRoute",
        "AssociateRouteTable",
        "CreateNetworkAclEntry",
        "CreateNatGateway",
    ] {
        assert!(
            refused.iter().any(|(a, _)| a == action),
            "{action} was never refused: {refused:?}"
        );
    }
    assert_eq!(
        aws.injected(
            "notification-validation",
            "PutBucketNotificationConfiguration"
        ),
        2
    );
    assert!(
        said.iter().any(|s| s.contains("Unable to validate")),
        "{said:?}"
    );
    // What S3 announces reaches the queue: the configuration was written after all.
    assert_eq!(plan(&c, &spec, "fresh").await, vec![]);
    let notifications =
        c.s3.get_bucket_notification_configuration()
            .bucket(&out.flow_log_bucket)
            .send()
            .await
            .unwrap();
    assert_eq!(notifications.queue_configurations().len(), 1);
    provision::down(&c, "fresh", ALL, |_| {}).await.unwrap();
    assert_eq!(
        aws.injected("address-unmapping", "DetachInternetGateway"),
        2
    );
    assert_eq!(tagged(&c, "fresh").await, 0);
    // Straight back up: the queue's name is still held, then free.
    provision::reconcile(&c, &spec, "fresh", Mode::Apply, |_| {})
        .await
        .unwrap();
    assert!(aws.injected("queue-deleted-recently", "CreateQueue") >= 1);
    assert_eq!(plan(&c, &spec, "fresh").await, vec![]);
    provision::down(&c, "fresh", ALL, |_| {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_private_subnet_moved_to_the_public_table_is_security_drift_moved_back() {
    let (_moto, aws, c) = emulator(serde_json::json!({"already-associated": {}})).await;
    let spec = StackSpec {
        studio_domain: false,
        ..StackSpec::default()
    };
    let (_, out) = provision::reconcile(&c, &spec, "moved", Mode::Apply, |_| {})
        .await
        .unwrap();
    let private = out.private_subnets[0].id.clone();
    let tables = |subnet: &str| {
        let ec2 = c.ec2.clone();
        let subnet = subnet.to_string();
        async move {
            ec2.describe_route_tables()
                .filters(
                    Filter::builder()
                        .name("association.subnet-id")
                        .values(&subnet)
                        .build(),
                )
                .send()
                .await
                .unwrap()
                .route_tables()
                .to_vec()
        }
    };
    let own = tables(&private).await[0].clone();
    let own_id = own.route_table_id().unwrap().to_string();
    let association = own
        .associations()
        .iter()
        .find(|a| a.subnet_id() == Some(private.as_str()))
        .and_then(|a| a.route_table_association_id())
        .unwrap()
        .to_string();
    let public = tables(&out.public_subnets[0].id).await[0]
        .route_table_id()
        .unwrap()
        .to_string();
    // Someone moves the private subnet onto the public table: its traffic now goes straight
    // to the internet gateway, past the NAT and its flow-log attribution.
    c.ec2
        .replace_route_table_association()
        .association_id(&association)
        .route_table_id(&public)
        .send()
        .await
        .unwrap();
    let drift = plan(&c, &spec, "moved").await;
    let moved: Vec<_> = drift
        .iter()
        .filter(|d| d.detail.contains(&private))
        .collect();
    assert_eq!(moved.len(), 1, "{drift:?}");
    assert!(moved[0].security, "{drift:?}");
    assert!(
        moved[0].detail.contains("routes to an internet gateway"),
        "{drift:?}"
    );
    // `up` moves it back with the call AWS accepts; the layer refuses AssociateRouteTable on
    // an associated subnet, as AWS does.
    up(&c, &spec, "moved").await;
    assert_eq!(aws.injected("already-associated", "AssociateRouteTable"), 0);
    let now = tables(&private).await;
    assert_eq!(now.len(), 1);
    assert_eq!(now[0].route_table_id(), Some(own_id.as_str()));
    assert_eq!(plan(&c, &spec, "moved").await, vec![]);
    // The layer is no rubber stamp: the call moto would have accepted is refused.
    let refused = c
        .ec2
        .associate_route_table()
        .route_table_id(&public)
        .subnet_id(&private)
        .send()
        .await;
    assert!(refused.is_err());
    assert_eq!(aws.injected("already-associated", "AssociateRouteTable"), 1);
}

/// After real Studio use SageMaker still holds an interface in the VPC, and a home volume
/// kept from an earlier domain has mount targets in the private subnets: `down` force-detaches
/// the one, deletes the other's mount targets (never the volume: it is the users' data) and
/// each interface as it frees up, then the groups, subnets and VPC go.
#[tokio::test(flavor = "multi_thread")]
async fn down_releases_the_interfaces_and_mount_targets_studio_left_and_keeps_the_volume() {
    let (_moto, aws, c) = emulator(serde_json::json!({
        "domain-in-use": {"deleting_polls": 1, "dependency_refusals": 0},
        "studio-leftovers": {},
    }))
    .await;
    let spec = StackSpec::default();
    let (_, out) = provision::reconcile(&c, &spec, "left", Mode::Apply, |_| {})
        .await
        .unwrap();
    // A home volume SageMaker made for a domain deleted with "retain", mounted in the
    // private subnets behind the stack's group, as Studio mounts it.
    let volume = c
        .efs
        .create_file_system()
        .creation_token("home-of-an-earlier-domain")
        .tags(
            aws_sdk_efs::types::Tag::builder()
                .key("ManagedByAmazonSageMakerResource")
                .value("arn:aws:sagemaker:us-east-1:123456789012:domain/d-earlier")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap()
        .file_system_id()
        .to_string();
    for subnet in &out.private_subnets {
        c.efs
            .create_mount_target()
            .file_system_id(&volume)
            .subnet_id(&subnet.id)
            .security_groups(&out.security_group_id)
            .send()
            .await
            .unwrap();
    }
    let held_by_efs = c
        .ec2
        .describe_network_interfaces()
        .filters(Filter::builder().name("vpc-id").values(&out.vpc_id).build())
        .send()
        .await
        .unwrap()
        .network_interfaces()
        .iter()
        .filter(|i| i.interface_type().map(|t| t.as_str()) == Some("efs"))
        .count();
    assert_eq!(held_by_efs, out.private_subnets.len());
    let mut said = Vec::new();
    let deleted = provision::down(&c, "left", ALL, |s| said.push(s.to_string()))
        .await
        .unwrap();
    assert_eq!(
        deleted
            .iter()
            .filter(|d| d.starts_with("efs-mount-target "))
            .count(),
        out.private_subnets.len(),
        "{deleted:?}"
    );
    assert_eq!(
        aws.injected("studio-leftovers", "DetachNetworkInterface"),
        1
    );
    assert_eq!(
        aws.injected("studio-leftovers", "DeleteMountTarget"),
        out.private_subnets.len()
    );
    assert!(
        said.iter().any(|s| s.contains("SageMaker still held")),
        "{said:?}"
    );
    // The network is gone; the volume, with the users' data, is kept and no longer mounted.
    assert_eq!(tagged(&c, "left").await, 0);
    let vpcs = c
        .ec2
        .describe_vpcs()
        .filters(Filter::builder().name("vpc-id").values(&out.vpc_id).build())
        .send()
        .await
        .unwrap();
    assert!(vpcs.vpcs().is_empty());
    let kept = c
        .efs
        .describe_file_systems()
        .file_system_id(&volume)
        .send()
        .await
        .unwrap();
    assert_eq!(kept.file_systems().len(), 1);
    let mounted = c
        .efs
        .describe_mount_targets()
        .file_system_id(&volume)
        .send()
        .await
        .unwrap();
    assert!(mounted.mount_targets().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn down_empties_a_used_domain_and_cleans_up_what_sagemaker_leaves() {
    let (_moto, aws, c) = emulator(serde_json::json!({
        "domain-in-use": {"deleting_polls": 2, "dependency_refusals": 2},
        "release-after-nat": {"refusals": 2},
    }))
    .await;
    let spec = StackSpec::default();
    let (_, out) = provision::reconcile(&c, &spec, "used", Mode::Apply, |_| {})
        .await
        .unwrap();
    let mut said = Vec::new();
    let deleted = provision::down(&c, "used", ALL, |s| said.push(s.to_string()))
        .await
        .unwrap();
    // Apps, then the space, then the user profile, then the domain: never refused in use.
    let position = |prefix: &str| {
        deleted
            .iter()
            .position(|d| d.starts_with(prefix))
            .unwrap_or_else(|| panic!("{prefix} not deleted: {deleted:?}"))
    };
    assert_eq!(
        deleted
            .iter()
            .filter(|d| d.starts_with("studio-app "))
            .count(),
        3,
        "{deleted:?}"
    );
    assert!(position("studio-app ") < position("studio-space "));
    assert!(position("studio-space ") < position("studio-user-profile "));
    assert!(position("studio-user-profile ") < position("studio-domain "));
    assert_eq!(
        aws.injected("domain-in-use", "DeleteDomain"),
        1,
        "the lingering resources were made"
    );
    let refused_in_use = aws
        .journal()
        .iter()
        .filter(|j| j["refused"] == "ResourceInUse")
        .count();
    assert_eq!(refused_in_use, 0, "{:#?}", aws.journal());
    // It waited on the domain by id while AWS said Deleting, and out the dependencies and
    // the address that were still leaving.
    assert_eq!(aws.injected("domain-in-use", "DescribeDomain"), 2);
    assert_eq!(aws.injected("domain-in-use", "DeleteSubnet"), 2 * 2);
    assert_eq!(aws.injected("domain-in-use", "DeleteVpc"), 2);
    assert_eq!(aws.injected("release-after-nat", "ReleaseAddress"), 2);
    assert!(said.iter().any(|s| s.contains("studio domain")), "{said:?}");
    // Nothing of the stack is left, SageMaker's NFS groups and interface included.
    assert_eq!(tagged(&c, "used").await, 0);
    let vpcs = c
        .ec2
        .describe_vpcs()
        .filters(Filter::builder().name("vpc-id").values(&out.vpc_id).build())
        .send()
        .await
        .unwrap();
    assert!(vpcs.vpcs().is_empty());
    let left = c
        .ec2
        .describe_security_groups()
        .filters(Filter::builder().name("vpc-id").values(&out.vpc_id).build())
        .send()
        .await
        .unwrap();
    assert!(
        left.security_groups()
            .iter()
            .all(|g| !g.group_name().unwrap_or("").contains("nfs")),
        "{left:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn down_lists_first_keeps_the_evidence_and_deletes_home_data_only_when_asked() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = StackSpec::default();
    let (_, out) = provision::reconcile(&c, &spec, "careful", Mode::Apply, |_| {})
        .await
        .unwrap();
    let before = tagged(&c, "careful").await;
    // A plan of destruction that the real run would refuse says so.
    let refused = provision::down(
        &c,
        "careful",
        DownOptions {
            dry_run: true,
            ..DownOptions::default()
        },
        |_| {},
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(refused.contains("--delete-home-data"), "{refused}");
    assert!(refused.contains("nothing would be deleted"), "{refused}");
    // The plan of destruction deletes nothing.
    let would = provision::down(
        &c,
        "careful",
        DownOptions {
            dry_run: true,
            delete_home_data: true,
            ..DownOptions::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert!(
        would.iter().any(|w| w.starts_with("studio-domain ")),
        "{would:?}"
    );
    assert!(would.contains(&format!("vpc {}", out.vpc_id)), "{would:?}");
    assert!(
        !would.iter().any(|w| w.starts_with("log-group")),
        "{would:?}"
    );
    assert_eq!(tagged(&c, "careful").await, before);
    // Without --delete-home-data, a stack with a domain is refused before anything goes.
    let refused = provision::down(&c, "careful", DownOptions::default(), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("--delete-home-data"), "{refused}");
    assert!(refused.contains("nothing was deleted"), "{refused}");
    assert_eq!(tagged(&c, "careful").await, before);
    // Asked to, it deletes the stack and keeps the flow logs.
    let deleted = provision::down(
        &c,
        "careful",
        DownOptions {
            delete_home_data: true,
            ..DownOptions::default()
        },
        |_| {},
    )
    .await
    .unwrap();
    assert!(deleted.iter().any(|d| d.starts_with("studio-domain ")));
    let groups = c
        .logs
        .describe_log_groups()
        .log_group_name_prefix(&out.log_group)
        .send()
        .await
        .unwrap();
    assert_eq!(groups.log_groups().len(), 1, "the evidence is kept");
    assert_eq!(tagged(&c, "careful").await, 1, "only the log group remains");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_runs_at_once_cannot_both_create_and_a_duplicate_is_reported() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = StackSpec {
        studio_domain: false,
        ..StackSpec::default()
    };
    let (a, b) = tokio::join!(
        provision::reconcile(&c, &spec, "race", Mode::Apply, |_| {}),
        provision::reconcile(&c, &spec, "race", Mode::Apply, |_| {}),
    );
    let refused: Vec<String> = [&a, &b]
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    assert_eq!(refused.len(), 1, "exactly one run goes ahead: {refused:?}");
    assert!(refused[0].contains("holds its lock"), "{refused:?}");
    let vpcs = c
        .ec2
        .describe_vpcs()
        .filters(tag_filter("race"))
        .send()
        .await
        .unwrap();
    assert_eq!(vpcs.vpcs().len(), 1);
    // The lock is given back: the next run goes ahead.
    assert_eq!(up(&c, &spec, "race").await, vec![]);
    // A second VPC with the stack's tag (as two unlocked runs left) is reported.
    c.ec2
        .create_vpc()
        .cidr_block("10.43.0.0/16")
        .tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::Vpc)
                .tags(
                    aws_sdk_ec2::types::Tag::builder()
                        .key(STACK_TAG)
                        .value("race")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let drift = plan(&c, &spec, "race").await;
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert_eq!(drift[0].kind, ChangeKind::Delete);
    assert!(drift[0].detail.starts_with("duplicate VPC"), "{drift:?}");
    provision::down(&c, "race", ALL, |_| {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn what_carries_the_stacks_name_but_not_its_tag_is_left_alone() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = StackSpec {
        studio_domain: false,
        ..StackSpec::default()
    };
    // Someone else's role happens to have the name the stack would give its own.
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    c.iam
        .create_role()
        .role_name("theirs-flow-logs")
        .assume_role_policy_document(trust)
        .send()
        .await
        .unwrap();
    // And a Studio domain of the same name lives in another VPC.
    let foreign = c
        .sagemaker
        .create_domain()
        .domain_name("theirs")
        .auth_mode(aws_sdk_sagemaker::types::AuthMode::Iam)
        .default_user_settings(
            aws_sdk_sagemaker::types::UserSettings::builder()
                .execution_role("arn:aws:iam::123456789012:role/someone-else")
                .build(),
        )
        .subnet_ids("subnet-0f0f0f0f0f0f0f0f0")
        .vpc_id("vpc-0f0f0f0f0f0f0f0f0")
        .send()
        .await
        .unwrap();
    let foreign_id = foreign
        .domain_arn()
        .and_then(|a| a.rsplit('/').next())
        .unwrap()
        .to_string();
    let refused = provision::reconcile(&c, &spec, "theirs", Mode::Apply, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("IAM role theirs-flow-logs exists but is not stack theirs's"),
        "{refused}"
    );
    // `down` removes what the stack made and leaves that role as it was.
    let mut said = Vec::new();
    provision::down(&c, "theirs", ALL, |s| said.push(s.to_string()))
        .await
        .unwrap();
    assert!(
        said.iter()
            .any(|s| s.starts_with("left iam-role theirs-flow-logs")),
        "{said:?}"
    );
    assert!(
        said.iter()
            .any(|s| s.starts_with(&format!("left studio-domain {foreign_id}"))),
        "{said:?}"
    );
    c.sagemaker
        .describe_domain()
        .domain_id(&foreign_id)
        .send()
        .await
        .unwrap();
    let kept = c
        .iam
        .get_role()
        .role_name("theirs-flow-logs")
        .send()
        .await
        .unwrap();
    assert_eq!(
        kept.role().unwrap().assume_role_policy_document().map(|d| {
            percent_encoding::percent_decode_str(d)
                .decode_utf8_lossy()
                .contains("ec2.amazonaws.com")
        }),
        Some(true)
    );
    assert_eq!(
        tagged(&c, "theirs").await,
        2,
        "only their role and their domain, by their names"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ways_past_the_nat_are_security_drift_that_up_removes() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = StackSpec {
        studio_domain: false,
        ..StackSpec::default()
    };
    let (first, out) = provision::reconcile(&c, &spec, "paths", Mode::Apply, |_| {})
        .await
        .unwrap();
    // A new VPC's default group allows everything within itself and all egress: emptied.
    assert!(
        first
            .iter()
            .any(|c| c.resource == "default-security-group" && c.security),
        "{first:?}"
    );
    let private_table = c
        .ec2
        .describe_route_tables()
        .filters(
            Filter::builder()
                .name("association.subnet-id")
                .values(&out.private_subnets[0].id)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .route_tables()[0]
        .route_table_id()
        .unwrap()
        .to_string();
    let default_group = c
        .ec2
        .describe_security_groups()
        .filters(Filter::builder().name("vpc-id").values(&out.vpc_id).build())
        .filters(
            Filter::builder()
                .name("group-name")
                .values("default")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .security_groups()[0]
        .group_id()
        .unwrap()
        .to_string();
    // Each tampering: status names it as security drift, up removes it, status is clean.
    type Tamper = fn(&Clients, &str, &str, &str) -> tampering::Done;
    let tamperings: Vec<(&str, Tamper)> = vec![
        ("route 198.51.100.0/24 -> igw", |c, rt, _, igw| {
            let (ec2, rt, igw) = (c.ec2.clone(), rt.to_string(), igw.to_string());
            Box::pin(async move {
                ec2.create_route()
                    .route_table_id(rt)
                    .destination_cidr_block("198.51.100.0/24")
                    .gateway_id(igw)
                    .send()
                    .await
                    .unwrap();
            })
        }),
        ("route ::/0 -> igw", |c, rt, _, igw| {
            let (ec2, rt, igw) = (c.ec2.clone(), rt.to_string(), igw.to_string());
            Box::pin(async move {
                ec2.create_route()
                    .route_table_id(rt)
                    .destination_ipv6_cidr_block("::/0")
                    .gateway_id(igw)
                    .send()
                    .await
                    .unwrap();
            })
        }),
        ("an inline policy put on the Studio role", |c, _, _, _| {
            let iam = c.iam.clone();
            Box::pin(async move {
                iam.put_role_policy()
                    .role_name("paths-studio-execution")
                    .policy_name("extra")
                    .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:*","Resource":"*"}]}"#)
                    .send()
                    .await
                    .unwrap();
            })
        }),
        (
            "a managed policy attached to the Studio role",
            |c, _, _, _| {
                let iam = c.iam.clone();
                Box::pin(async move {
                    iam.attach_role_policy()
                        .role_name("paths-studio-execution")
                        .policy_arn("arn:aws:iam::aws:policy/AmazonS3FullAccess")
                        .send()
                        .await
                        .unwrap();
                })
            },
        ),
        ("an IPv6 range on the VPC", |c, _, _, _| {
            let ec2 = c.ec2.clone();
            Box::pin(async move {
                let vpc = ec2
                    .describe_vpcs()
                    .filters(tag_filter("paths"))
                    .send()
                    .await
                    .unwrap()
                    .vpcs()[0]
                    .vpc_id()
                    .unwrap()
                    .to_string();
                ec2.associate_vpc_cidr_block()
                    .vpc_id(vpc)
                    .amazon_provided_ipv6_cidr_block(true)
                    .send()
                    .await
                    .unwrap();
            })
        }),
        (
            "a private subnet back on the VPC's default network ACL",
            |c, _, _, _| {
                let ec2 = c.ec2.clone();
                Box::pin(async move {
                    let (ours, default) = network_acls(&ec2, "paths").await;
                    let association = ours
                        .associations()
                        .first()
                        .and_then(|a| a.network_acl_association_id())
                        .unwrap()
                        .to_string();
                    ec2.replace_network_acl_association()
                        .association_id(association)
                        .network_acl_id(default.network_acl_id().unwrap())
                        .send()
                        .await
                        .unwrap();
                })
            },
        ),
        (
            "a network ACL entry letting everything out",
            |c, _, _, _| {
                let ec2 = c.ec2.clone();
                Box::pin(async move {
                    let (ours, _) = network_acls(&ec2, "paths").await;
                    ec2.create_network_acl_entry()
                        .network_acl_id(ours.network_acl_id().unwrap())
                        .egress(true)
                        .rule_number(90)
                        .protocol("-1")
                        .rule_action(aws_sdk_ec2::types::RuleAction::Allow)
                        .cidr_block("0.0.0.0/0")
                        .send()
                        .await
                        .unwrap();
                })
            },
        ),
        ("default group allows all egress", |c, _, sg, _| {
            let (ec2, sg) = (c.ec2.clone(), sg.to_string());
            Box::pin(async move {
                ec2.authorize_security_group_egress()
                    .group_id(sg)
                    .ip_permissions(
                        aws_sdk_ec2::types::IpPermission::builder()
                            .ip_protocol("-1")
                            .ip_ranges(
                                aws_sdk_ec2::types::IpRange::builder()
                                    .cidr_ip("0.0.0.0/0")
                                    .build(),
                            )
                            .build(),
                    )
                    .send()
                    .await
                    .unwrap();
            })
        }),
    ];
    for (what, tamper) in tamperings {
        tamper(&c, &private_table, &default_group, &out.internet_gateway_id).await;
        let drift = plan(&c, &spec, "paths").await;
        assert_eq!(drift.len(), 1, "{what}: {drift:?}");
        assert!(drift[0].security, "{what}: {drift:?}");
        up(&c, &spec, "paths").await;
        assert_eq!(plan(&c, &spec, "paths").await, vec![], "{what}: repaired");
    }
    provision::down(&c, "paths", ALL, |_| {}).await.unwrap();
}

/// A network ACL entry as read back: (egress, rule number, protocol, range, ports).
type AclEntry = (bool, i32, String, String, Option<(i32, i32)>);

/// The stack's network ACL of the private subnets and the VPC's default one, read back.
async fn network_acls(
    ec2: &aws_sdk_ec2::Client,
    stack: &str,
) -> (
    aws_sdk_ec2::types::NetworkAcl,
    aws_sdk_ec2::types::NetworkAcl,
) {
    let ours = ec2
        .describe_network_acls()
        .filters(tag_filter(stack))
        .send()
        .await
        .unwrap()
        .network_acls()[0]
        .clone();
    let default = ec2
        .describe_network_acls()
        .filters(
            Filter::builder()
                .name("vpc-id")
                .values(ours.vpc_id().unwrap())
                .build(),
        )
        .filters(Filter::builder().name("default").values("true").build())
        .send()
        .await
        .unwrap()
        .network_acls()[0]
        .clone();
    (ours, default)
}

/// A tampering with the account, run to completion before the check.
mod tampering {
    pub type Done = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_domain_turned_away_from_the_network_design_is_drift_up_turns_back() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = StackSpec::default();
    let (_, out) = provision::reconcile(&c, &spec, "dom", Mode::Apply, |_| {})
        .await
        .unwrap();
    // Someone opens the domain to the internet and gives users another group.
    c.sagemaker
        .update_domain()
        .domain_id(&out.domain_id)
        .app_network_access_type(aws_sdk_sagemaker::types::AppNetworkAccessType::PublicInternetOnly)
        .default_user_settings(
            aws_sdk_sagemaker::types::UserSettings::builder()
                .execution_role(&out.studio_role_arn)
                .security_groups("sg-0123456789abcdef0")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let drift = plan(&c, &spec, "dom").await;
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert!(drift[0].security);
    assert!(drift[0].detail.contains("set VpcOnly"), "{drift:?}");
    assert!(
        drift[0].detail.contains("sg-0123456789abcdef0"),
        "{drift:?}"
    );
    up(&c, &spec, "dom").await;
    assert_eq!(plan(&c, &spec, "dom").await, vec![]);
    let d = c
        .sagemaker
        .describe_domain()
        .domain_id(&out.domain_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.app_network_access_type().map(|m| m.as_str()),
        Some("VpcOnly")
    );
    assert_eq!(
        d.default_user_settings()
            .map(|u| u.security_groups().to_vec()),
        Some(vec![out.security_group_id.clone()])
    );
    provision::down(&c, "dom", ALL, |_| {}).await.unwrap();
}

/// AWS refuses to change a domain's network settings while its apps run: `up` says which apps
/// and what to do, the drift stays reported, and once the apps stop the repair goes through.
#[tokio::test(flavor = "multi_thread")]
async fn a_domain_repair_refused_while_apps_run_names_them_and_goes_through_once_they_stop() {
    let (_moto, aws, c) = emulator(serde_json::json!({
        "domain-in-use": {"deleting_polls": 1, "dependency_refusals": 0},
    }))
    .await;
    let spec = StackSpec::default();
    let (_, out) = provision::reconcile(&c, &spec, "busy", Mode::Apply, |_| {})
        .await
        .unwrap();
    // Users are given another group while their apps run.
    c.sagemaker
        .update_domain()
        .domain_id(&out.domain_id)
        .default_user_settings(
            aws_sdk_sagemaker::types::UserSettings::builder()
                .execution_role(&out.studio_role_arn)
                .security_groups("sg-0123456789abcdef0")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let refused = provision::reconcile(&c, &spec, "busy", Mode::Apply, |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("while apps run"), "{refused}");
    assert!(refused.contains("3 app(s)"), "{refused}");
    assert!(
        refused.contains("analyst/default (JupyterServer)"),
        "{refused}"
    );
    assert!(refused.contains("delete-app"), "{refused}");
    assert_eq!(
        aws.journal()
            .iter()
            .filter(|j| j["action"] == "UpdateDomain" && j["refused"] == "ValidationException")
            .count(),
        1
    );
    let drift = plan(&c, &spec, "busy").await;
    assert!(drift
        .iter()
        .any(|d| d.security && d.detail.contains("sg-0123456789abcdef0")));
    // The apps stop; the repair goes through.
    for app in c
        .sagemaker
        .list_apps()
        .domain_id_equals(&out.domain_id)
        .send()
        .await
        .unwrap()
        .apps()
    {
        c.sagemaker
            .delete_app()
            .domain_id(&out.domain_id)
            .app_type(app.app_type().unwrap().clone())
            .app_name(app.app_name().unwrap())
            .set_user_profile_name(app.user_profile_name().map(String::from))
            .set_space_name(app.space_name().map(String::from))
            .send()
            .await
            .unwrap();
    }
    // One poll of ListApps takes a deleting app to deleted.
    c.sagemaker
        .list_apps()
        .domain_id_equals(&out.domain_id)
        .send()
        .await
        .unwrap();
    up(&c, &spec, "busy").await;
    assert_eq!(plan(&c, &spec, "busy").await, vec![]);
    let d = c
        .sagemaker
        .describe_domain()
        .domain_id(&out.domain_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        d.default_user_settings()
            .map(|u| u.security_groups().to_vec()),
        Some(vec![out.security_group_id.clone()])
    );
    provision::down(&c, "busy", ALL, |_| {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flow_log_that_cannot_deliver_is_security_drift_and_made_again() {
    let (moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = StackSpec {
        studio_domain: false,
        ..StackSpec::default()
    };
    let (_, out) = provision::reconcile(&c, &spec, "blind", Mode::Apply, |_| {})
        .await
        .unwrap();
    // From now on AWS reports the flow log's delivery failing, twice.
    let failing = egresswatch_testkit::aws_behaviour(
        &moto,
        &serde_json::json!({"flow-log-delivery-failed": {"answers": 2}}),
    );
    let c = clients(&failing.endpoint()).await;
    // Replaced: the failing one goes, a new one comes (once the role and group before it
    // are in spec).
    let drift = plan(&c, &spec, "blind").await;
    let kinds: Vec<_> = drift.iter().map(|d| (d.kind.clone(), d.security)).collect();
    assert_eq!(
        kinds,
        [(ChangeKind::Replace, true), (ChangeKind::Create, true)],
        "{drift:?}"
    );
    assert!(
        drift[0]
            .detail
            .contains("its delivery fails (Access error)"),
        "{drift:?}"
    );
    up(&c, &spec, "blind").await;
    assert_eq!(plan(&c, &spec, "blind").await, vec![]);
    assert_eq!(
        failing.injected("flow-log-delivery-failed", "DescribeFlowLogs"),
        2
    );
    let now = c
        .ec2
        .describe_flow_logs()
        .filter(tag_filter("blind"))
        .send()
        .await
        .unwrap();
    assert_eq!(now.flow_logs().len(), 1);
    assert_ne!(
        now.flow_logs()[0].flow_log_id(),
        Some(out.flow_log_id.as_str())
    );
    provision::down(&c, "blind", ALL, |_| {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_profile_with_its_own_security_groups_is_drift_up_sets_back() {
    let (_moto, _aws, c) = emulator(serde_json::json!({"domain-in-use": {}})).await;
    let spec = StackSpec::default();
    let (_, out) = provision::reconcile(&c, &spec, "prof", Mode::Apply, |_| {})
        .await
        .unwrap();
    assert_eq!(plan(&c, &spec, "prof").await, vec![]);
    // The analyst's profile gets a group of its own: its apps leave through it.
    c.sagemaker
        .update_user_profile()
        .domain_id(&out.domain_id)
        .user_profile_name("analyst")
        .user_settings(
            aws_sdk_sagemaker::types::UserSettings::builder()
                .security_groups("sg-0bad0bad0bad0bad0")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let drift = plan(&c, &spec, "prof").await;
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert!(drift[0].security);
    assert!(
        drift[0].detail.contains("sg-0bad0bad0bad0bad0"),
        "{drift:?}"
    );
    up(&c, &spec, "prof").await;
    assert_eq!(plan(&c, &spec, "prof").await, vec![]);
    let p = c
        .sagemaker
        .describe_user_profile()
        .domain_id(&out.domain_id)
        .user_profile_name("analyst")
        .send()
        .await
        .unwrap();
    assert_eq!(
        p.user_settings().map(|u| u.security_groups().to_vec()),
        Some(vec![out.security_group_id.clone()])
    );
    provision::down(&c, "prof", ALL, |_| {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_role_outside_the_projects_iam_path_is_made_again_inside_it() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = StackSpec {
        studio_domain: false,
        ..StackSpec::default()
    };
    up(&c, &spec, "legacy").await;
    // The role as an earlier version made it: same name and tag, at the root path.
    let iam = &c.iam;
    iam.delete_role_policy()
        .role_name("legacy-flow-logs")
        .policy_name("egresswatch")
        .send()
        .await
        .unwrap();
    iam.delete_role()
        .role_name("legacy-flow-logs")
        .send()
        .await
        .unwrap();
    iam.create_role()
        .role_name("legacy-flow-logs")
        .path("/")
        .assume_role_policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"vpc-flow-logs.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#)
        .tags(
            aws_sdk_iam::types::Tag::builder()
                .key(STACK_TAG)
                .value("legacy")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let drift = plan(&c, &spec, "legacy").await;
    assert!(
        drift
            .iter()
            .any(|ch| ch.resource == "iam-role/flow-logs" && ch.kind == ChangeKind::Replace),
        "{drift:?}"
    );
    up(&c, &spec, "legacy").await;
    assert_eq!(plan(&c, &spec, "legacy").await, vec![]);
    let role = iam
        .get_role()
        .role_name("legacy-flow-logs")
        .send()
        .await
        .unwrap();
    let role = role.role().unwrap();
    assert_eq!(role.path(), "/egresswatch/");
    // The flow log delivers with the role made again, not the one that was deleted.
    let fl = c
        .ec2
        .describe_flow_logs()
        .filter(tag_filter("legacy"))
        .send()
        .await
        .unwrap();
    assert_eq!(fl.flow_logs().len(), 1);
    assert_eq!(
        fl.flow_logs()[0].deliver_logs_permission_arn(),
        Some(role.arn())
    );
    provision::down(&c, "legacy", ALL, |_| {}).await.unwrap();
    assert_eq!(tagged(&c, "legacy").await, 0);
}

/// A customer key whose policy does not let CloudWatch Logs (or, for S3, log delivery) use it
/// would fail every delivery with an access error AWS shows only as a status; `up` reads the
/// key policy first and says what to add, and goes ahead once the policy admits the writer.
#[tokio::test(flavor = "multi_thread")]
async fn a_log_key_whose_policy_keeps_log_delivery_out_is_refused_before_it_is_used() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let key = c
        .kms
        .create_key()
        .description("flow logs")
        .send()
        .await
        .unwrap()
        .key_metadata()
        .unwrap()
        .arn()
        .unwrap()
        .to_string();
    for (destination, service) in [
        (
            provision::spec::FlowLogDestination::Cloudwatch,
            "logs.us-east-1.amazonaws.com",
        ),
        (
            provision::spec::FlowLogDestination::S3,
            "delivery.logs.amazonaws.com",
        ),
    ] {
        let spec = StackSpec {
            studio_domain: false,
            flow_log_destination: destination,
            log_kms_key_arn: Some(key.clone()),
            ..StackSpec::default()
        };
        let stack = format!("key-{}", service.split('.').next().unwrap());
        let refused = provision::reconcile(&c, &spec, &stack, Mode::Apply, |_| {})
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains(&format!("does not let {service} use the key")),
            "{refused}"
        );
        assert!(refused.contains(&key), "{refused}");
        // The key's owner adds the statement the error shows.
        let mut policy: serde_json::Value = serde_json::from_str(
            c.kms
                .get_key_policy()
                .key_id(&key)
                .policy_name("default")
                .send()
                .await
                .unwrap()
                .policy()
                .unwrap(),
        )
        .unwrap();
        policy["Statement"].as_array_mut().unwrap().push(serde_json::json!({
            "Effect": "Allow",
            "Principal": {"Service": service},
            "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            "Resource": "*"
        }));
        c.kms
            .put_key_policy()
            .key_id(&key)
            .policy_name("default")
            .policy(policy.to_string())
            .send()
            .await
            .unwrap();
        let (_, out) = provision::reconcile(&c, &spec, &stack, Mode::Apply, |_| {})
            .await
            .unwrap();
        if destination == provision::spec::FlowLogDestination::Cloudwatch {
            let groups = c
                .logs
                .describe_log_groups()
                .log_group_name_prefix(&out.log_group)
                .send()
                .await
                .unwrap();
            assert_eq!(groups.log_groups()[0].kms_key_id(), Some(key.as_str()));
        } else {
            let encryption =
                c.s3.get_bucket_encryption()
                    .bucket(&out.flow_log_bucket)
                    .send()
                    .await
                    .unwrap();
            let rule = &encryption
                .server_side_encryption_configuration()
                .unwrap()
                .rules()[0];
            assert_eq!(
                rule.apply_server_side_encryption_by_default()
                    .unwrap()
                    .kms_master_key_id(),
                Some(key.as_str())
            );
        }
        provision::down(&c, &stack, ALL, |_| {}).await.unwrap();
    }
}

/// Zones are chosen by id (names map to different zones in each account), and a zone listed
/// as available that takes no new subnets gives way to the next; each pair of subnets shares
/// its zone.
#[tokio::test(flavor = "multi_thread")]
async fn subnets_go_to_zones_by_id_and_past_one_that_takes_no_new_subnets() {
    let (_moto, aws, c) = emulator(serde_json::json!({"constrained-zone": {}})).await;
    let spec = StackSpec {
        studio_domain: false,
        ..StackSpec::default()
    };
    let mut said = Vec::new();
    let (_, out) = provision::reconcile(&c, &spec, "zoned", Mode::Apply, |s| {
        said.push(s.to_string())
    })
    .await
    .unwrap();
    let refused: Vec<_> = aws
        .journal()
        .into_iter()
        .filter(|j| j["behaviour"] == "constrained-zone")
        .collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    let refused_zone = refused[0]["zone"].as_str().unwrap().to_string();
    assert!(
        said.iter().any(|s| s.contains("takes no new subnets")),
        "{said:?}"
    );
    let mut ids: Vec<(String, String)> = c
        .ec2
        .describe_availability_zones()
        .send()
        .await
        .unwrap()
        .availability_zones()
        .iter()
        .map(|z| {
            (
                z.zone_id().unwrap().to_string(),
                z.zone_name().unwrap().to_string(),
            )
        })
        .collect();
    ids.sort();
    // The refused zone was the first by id; the pairs take the next ones, in id order.
    assert_eq!(ids[0].1, refused_zone);
    let expected: Vec<&str> = ids[1..=out.private_subnets.len()]
        .iter()
        .map(|(_, name)| name.as_str())
        .collect();
    let private: Vec<&str> = out
        .private_subnets
        .iter()
        .map(|s| s.availability_zone.as_str())
        .collect();
    let public: Vec<&str> = out
        .public_subnets
        .iter()
        .map(|s| s.availability_zone.as_str())
        .collect();
    assert_eq!(private, expected);
    assert_eq!(public, expected);
    // What AWS holds agrees with the outputs.
    for s in out.private_subnets.iter().chain(&out.public_subnets) {
        let got = c
            .ec2
            .describe_subnets()
            .subnet_ids(&s.id)
            .send()
            .await
            .unwrap();
        assert_eq!(
            got.subnets()[0].availability_zone(),
            Some(s.availability_zone.as_str())
        );
    }
    assert_eq!(plan(&c, &spec, "zoned").await, vec![]);
    provision::down(&c, "zoned", ALL, |_| {}).await.unwrap();
}

/// A spec delivering to S3 without a Studio domain.
fn s3_spec(bucket: Option<&str>) -> StackSpec {
    StackSpec {
        studio_domain: false,
        flow_log_destination: provision::spec::FlowLogDestination::S3,
        flow_log_file_format: provision::spec::FlowLogFileFormat::Parquet,
        flow_log_bucket: bucket.map(String::from),
        ..StackSpec::default()
    }
}

/// Object keys announced on the queue now (each message deleted once read).
async fn announced(c: &Clients, queue_url: &str) -> Vec<String> {
    let mut keys = Vec::new();
    loop {
        let got = c
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if got.messages().is_empty() {
            return keys;
        }
        for m in got.messages() {
            let event: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
            // S3 writes keys URL-encoded in its notifications, spaces as `+`.
            for r in event["Records"].as_array().into_iter().flatten() {
                let key = r["s3"]["object"]["key"].as_str().unwrap().replace('+', " ");
                let key = percent_encoding::percent_decode_str(&key).decode_utf8_lossy();
                keys.push(key.to_string());
            }
            c.sqs
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
}

async fn put(c: &Clients, bucket: &str, key: &str) {
    c.s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(b"version\n".to_vec().into())
        .send()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn flow_logs_to_s3_are_announced_on_the_stacks_queue() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = s3_spec(None);
    let (_, out) = provision::reconcile(&c, &spec, "lake", Mode::Apply, |_| {})
        .await
        .unwrap();
    let bucket = "lake-flow-logs-123456789012-us-east-1";
    assert_eq!(out.flow_log_destination, "s3");
    assert_eq!(out.flow_log_bucket, bucket);
    assert_eq!(out.flow_log_prefix, "egresswatch/lake/");
    assert_eq!(out.flow_log_file_format, "parquet");
    assert_eq!(out.log_group, "", "no log group with S3 delivery");
    // The bucket, read back: the stack's tag, no public access, encrypted, expiring, and a
    // policy that lets only this account's log delivery write.
    let s3 = &c.s3;
    let tags = s3.get_bucket_tagging().bucket(bucket).send().await.unwrap();
    assert!(tags
        .tag_set()
        .iter()
        .any(|t| t.key() == STACK_TAG && t.value() == "lake"));
    let block = s3
        .get_public_access_block()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let block = block.public_access_block_configuration().unwrap();
    assert_eq!(
        (
            block.block_public_acls(),
            block.ignore_public_acls(),
            block.block_public_policy(),
            block.restrict_public_buckets()
        ),
        (Some(true), Some(true), Some(true), Some(true))
    );
    let enc = s3
        .get_bucket_encryption()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    let rule = &enc.server_side_encryption_configuration().unwrap().rules()[0];
    assert_eq!(
        rule.apply_server_side_encryption_by_default()
            .unwrap()
            .sse_algorithm()
            .as_str(),
        "AES256"
    );
    let life = s3
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(life.rules()[0].expiration().unwrap().days(), Some(90));
    let policy: serde_json::Value = serde_json::from_str(
        s3.get_bucket_policy()
            .bucket(bucket)
            .send()
            .await
            .unwrap()
            .policy()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        policy["Statement"][0]["Condition"]["StringEquals"]["aws:SourceAccount"],
        "123456789012"
    );
    // The flow log delivers there. (moto keeps no DestinationOptions, so the Parquet and
    // partition options are checked by the unit tests of `faults` only.)
    let fl = c
        .ec2
        .describe_flow_logs()
        .filter(tag_filter("lake"))
        .send()
        .await
        .unwrap();
    let fl = &fl.flow_logs()[0];
    assert_eq!(fl.log_destination_type().map(|t| t.as_str()), Some("s3"));
    assert_eq!(
        fl.log_destination().map(|d| d.trim_end_matches('/')),
        Some(format!("arn:aws:s3:::{bucket}/egresswatch/lake").as_str())
    );
    // The queue redrives to its dead-letter queue and admits only the bucket.
    let attrs = c
        .sqs
        .get_queue_attributes()
        .queue_url(&out.flow_log_queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attrs = attrs.attributes().unwrap();
    let redrive: serde_json::Value =
        serde_json::from_str(&attrs[&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy])
            .unwrap();
    assert!(redrive["deadLetterTargetArn"]
        .as_str()
        .unwrap()
        .ends_with(":lake-flow-logs-dead-letter"));
    let qpolicy: serde_json::Value =
        serde_json::from_str(&attrs[&aws_sdk_sqs::types::QueueAttributeName::Policy]).unwrap();
    assert_eq!(
        qpolicy["Statement"][0]["Condition"]["ArnEquals"]["aws:SourceArn"],
        format!("arn:aws:s3:::{bucket}")
    );
    // An object delivered under the stack's prefix is announced; one elsewhere is not.
    let key = "egresswatch/lake/AWSLogs/123456789012/vpcflowlogs/us-east-1/2026/11/29/08/x.log.gz";
    put(&c, bucket, key).await;
    put(&c, bucket, "elsewhere/x.log.gz").await;
    assert_eq!(announced(&c, &out.flow_log_queue_url).await, [key]);
    assert_eq!(plan(&c, &spec, "lake").await, vec![], "idempotent");
    // A bucket that stops announcing leaves the daemon blind: security drift, repaired.
    s3.put_bucket_notification_configuration()
        .bucket(bucket)
        .notification_configuration(aws_sdk_s3::types::NotificationConfiguration::builder().build())
        .send()
        .await
        .unwrap();
    let drift = plan(&c, &spec, "lake").await;
    assert_eq!(drift.len(), 1, "{drift:?}");
    assert!(
        drift[0].security && drift[0].resource == "flow-log-notification",
        "{drift:?}"
    );
    up(&c, &spec, "lake").await;
    assert_eq!(plan(&c, &spec, "lake").await, vec![]);
    put(&c, bucket, key).await;
    assert_eq!(announced(&c, &out.flow_log_queue_url).await, [key]);
    // The objects are the evidence: kept unless asked.
    let keep = DownOptions {
        delete_logs: false,
        ..ALL
    };
    provision::down(&c, "lake", keep, |_| {}).await.unwrap();
    assert!(s3.head_bucket().bucket(bucket).send().await.is_ok());
    assert!(c
        .sqs
        .get_queue_url()
        .queue_name("lake-flow-logs")
        .send()
        .await
        .is_err());
    provision::down(&c, "lake", ALL, |_| {}).await.unwrap();
    assert!(s3.head_bucket().bucket(bucket).send().await.is_err());
    assert_eq!(tagged(&c, "lake").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shared_archive_bucket_keeps_its_other_notifications_and_stays() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let archive = "org-log-archive";
    c.s3.create_bucket().bucket(archive).send().await.unwrap();
    // Another team's queue already hears of its own prefix.
    let theirs = c
        .sqs
        .create_queue()
        .queue_name("security-lake")
        .send()
        .await
        .unwrap();
    let theirs_url = theirs.queue_url().unwrap().to_string();
    let rule = |prefix: &str| {
        aws_sdk_s3::types::NotificationConfigurationFilter::builder()
            .key(
                aws_sdk_s3::types::S3KeyFilter::builder()
                    .filter_rules(
                        aws_sdk_s3::types::FilterRule::builder()
                            .name(aws_sdk_s3::types::FilterRuleName::Prefix)
                            .value(prefix)
                            .build(),
                    )
                    .build(),
            )
            .build()
    };
    c.s3.put_bucket_notification_configuration()
        .bucket(archive)
        .notification_configuration(
            aws_sdk_s3::types::NotificationConfiguration::builder()
                .queue_configurations(
                    aws_sdk_s3::types::QueueConfiguration::builder()
                        .id("security-lake")
                        .queue_arn("arn:aws:sqs:us-east-1:123456789012:security-lake")
                        .events(aws_sdk_s3::types::Event::from("s3:ObjectCreated:*"))
                        .filter(rule("lake/"))
                        .build()
                        .unwrap(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let spec = s3_spec(Some(archive));
    let (_, out) = provision::reconcile(&c, &spec, "shared", Mode::Apply, |_| {})
        .await
        .unwrap();
    assert_eq!(out.flow_log_bucket, archive);
    let config =
        c.s3.get_bucket_notification_configuration()
            .bucket(archive)
            .send()
            .await
            .unwrap();
    let mut ids: Vec<_> = config
        .queue_configurations()
        .iter()
        .filter_map(|q| q.id())
        .collect();
    ids.sort();
    assert_eq!(ids, ["egresswatch-shared", "security-lake"]);
    // Each queue hears of its own prefix only.
    put(&c, archive, "egresswatch/shared/AWSLogs/x.log.gz").await;
    put(&c, archive, "lake/y.parquet").await;
    assert_eq!(
        announced(&c, &out.flow_log_queue_url).await,
        ["egresswatch/shared/AWSLogs/x.log.gz"]
    );
    assert_eq!(announced(&c, &theirs_url).await, ["lake/y.parquet"]);
    assert_eq!(plan(&c, &spec, "shared").await, vec![]);
    // `down` takes away only what the stack made: its queues and its notification.
    provision::down(&c, "shared", ALL, |_| {}).await.unwrap();
    assert!(c.s3.head_bucket().bucket(archive).send().await.is_ok());
    let config =
        c.s3.get_bucket_notification_configuration()
            .bucket(archive)
            .send()
            .await
            .unwrap();
    let ids: Vec<_> = config
        .queue_configurations()
        .iter()
        .filter_map(|q| q.id())
        .collect();
    assert_eq!(ids, ["security-lake"]);
    assert_eq!(tagged(&c, "shared").await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_spec_goes_with_the_stack_and_a_changed_spec_is_recorded_again() {
    let (_moto, _layer, c) = emulator(serde_json::json!({})).await;
    assert_eq!(
        provision::recorded_spec(&c, "recorded").await.unwrap(),
        None
    );
    let mut spec = StackSpec {
        studio_domain: false,
        log_retention_days: 30,
        s3_endpoint_buckets: vec!["partner-datasets".into()],
        ..StackSpec::default()
    };
    up(&c, &spec, "recorded").await;
    // Read back from the VPC's tags, and it is what the stack is: no difference from it,
    // while the defaults would differ.
    let recorded = provision::recorded_spec(&c, "recorded")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recorded, spec);
    assert!(plan(&c, &recorded, "recorded").await.is_empty());
    assert!(!plan(&c, &StackSpec::default(), "recorded").await.is_empty());
    // A changed spec applied is recorded in place of the old one.
    spec.log_retention_days = 90;
    up(&c, &spec, "recorded").await;
    assert_eq!(
        provision::recorded_spec(&c, "recorded")
            .await
            .unwrap()
            .unwrap(),
        spec
    );
    provision::down(
        &c,
        "recorded",
        provision::DownOptions {
            delete_logs: true,
            delete_home_data: true,
            dry_run: false,
        },
        |_| {},
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_stack_role_is_under_the_permissions_boundary_and_a_lifted_one_is_put_back() {
    let (_moto, _aws, c) = emulator(serde_json::json!({})).await;
    let spec = StackSpec {
        studio_domain: false,
        ..StackSpec::default()
    };
    let (_, out) = provision::reconcile(&c, &spec, "bounded", Mode::Apply, |_| {})
        .await
        .unwrap();
    let boundary = provision::policies::role_boundary_arn("aws", &out.account_id);
    let iam = &c.iam;
    // The boundary is the document `provision policies` prints.
    let policy = iam.get_policy().policy_arn(&boundary).send().await.unwrap();
    let version = policy.policy().unwrap().default_version_id().unwrap();
    let doc = iam
        .get_policy_version()
        .policy_arn(&boundary)
        .version_id(version)
        .send()
        .await
        .unwrap();
    let doc = doc.policy_version().unwrap().document().unwrap();
    // IAM returns the document URL-encoded.
    let doc = provision::resources::decode_policy(doc);
    assert_eq!(
        doc,
        provision::policies::role_boundary("aws", &out.account_id).unwrap()
    );
    let carried = |name: &'static str| async move {
        iam.get_role()
            .role_name(name)
            .send()
            .await
            .unwrap()
            .role()
            .and_then(|r| r.permissions_boundary())
            .and_then(|b| b.permissions_boundary_arn())
            .map(String::from)
    };
    for role in ["bounded-studio-execution", "bounded-flow-logs"] {
        assert_eq!(
            carried(role).await.as_deref(),
            Some(boundary.as_str()),
            "{role}"
        );
    }
    // Someone lifts the boundary: security drift, and `up` puts it back.
    iam.delete_role_permissions_boundary()
        .role_name("bounded-studio-execution")
        .send()
        .await
        .unwrap();
    let drift = plan(&c, &spec, "bounded").await;
    assert!(
        drift
            .iter()
            .any(|ch| ch.resource == "iam-role/studio-execution"
                && ch.security
                && ch.detail.contains("permissions boundary")),
        "{drift:?}"
    );
    up(&c, &spec, "bounded").await;
    assert_eq!(
        carried("bounded-studio-execution").await.as_deref(),
        Some(boundary.as_str())
    );
    assert_eq!(plan(&c, &spec, "bounded").await, vec![]);
    // `down` keeps the boundary: other stacks of the account are under it.
    provision::down(&c, "bounded", ALL, |_| {}).await.unwrap();
    assert!(iam.get_policy().policy_arn(&boundary).send().await.is_ok());
}
