//! Every real flow-log line in the fixture corpus parses to the values it spells out.
//! Sources and licenses: tests/fixtures/SOURCES.md.

use std::net::IpAddr;

use flowlog::{
    Action, Decoder, Field, FlowDirection, Format, IpType, Line, LogStatus, ParseError, TcpFlags,
    TrafficPath,
};

/// Decodes a fixture the way `egresswatch parse` does: default v2, headers followed.
/// Returns each record as a line in its own format (owned) plus the parse errors by line.
struct Decoded {
    headers: usize,
    blanks: usize,
    records: Vec<(usize, String, Format)>,
    errors: Vec<(usize, ParseError)>,
}

/// The package directory, read at run time, so a build cache shared between checkouts reads
/// this checkout's fixtures.
fn fixtures_root() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(
        || env!("CARGO_MANIFEST_DIR").into(),
        std::path::PathBuf::from,
    )
}

fn decode(name: &str) -> Decoded {
    let path = fixtures_root().join("tests/fixtures").join(name);
    let data = std::fs::read(&path).unwrap();
    let mut decoder = Decoder::following_headers(Format::default_v2());
    let mut out = Decoded {
        headers: 0,
        blanks: 0,
        records: vec![],
        errors: vec![],
    };
    for (i, line) in data.split(|&b| b == b'\n').enumerate() {
        if i > 0 && line.is_empty() && i == data.split(|&b| b == b'\n').count() - 1 {
            break;
        }
        match decoder.decode(line) {
            Ok(Line::Blank) => out.blanks += 1,
            Ok(Line::Header) => out.headers += 1,
            Ok(Line::Record(r)) => out.records.push((i + 1, r.to_line(), r.format().clone())),
            Err(e) => out.errors.push((i + 1, e)),
        }
    }
    out
}

/// Re-parses a stored record line (already checked to round-trip) for value assertions.
fn with_record<T>(d: &Decoded, index: usize, f: impl FnOnce(flowlog::Record<'_>) -> T) -> T {
    let (_, line, format) = &d.records[index];
    let r = flowlog::Record::parse(format, line.as_bytes()).unwrap();
    f(r)
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn aws_default_examples() {
    let d = decode("aws-docs/default-v2-examples.log");
    assert_eq!((d.headers, d.records.len(), d.errors.len()), (1, 7, 0));
    with_record(&d, 0, |r| {
        assert_eq!(r.srcaddr(), ip("172.31.16.139"));
        assert_eq!(r.dstport(), Some(22));
        assert_eq!(r.bytes(), Some(4249));
        assert_eq!(r.action(), Some(Action::Accept));
    });
    with_record(&d, 1, |r| {
        assert_eq!(r.dstport(), Some(3389));
        assert_eq!(r.action(), Some(Action::Reject));
    });
    with_record(&d, 2, |r| {
        assert_eq!(r.log_status(), Some(LogStatus::NoData));
        assert_eq!((r.srcaddr(), r.packets(), r.action()), (None, None, None));
        assert_eq!(r.end(), Some(1431280934));
    });
    with_record(&d, 3, |r| {
        assert_eq!(r.log_status(), Some(LogStatus::SkipData));
        assert_eq!(r.interface_id(), Some("eni-11111111aaaaaaaaa"));
    });
    with_record(&d, 4, |r| {
        assert_eq!(
            (r.protocol(), r.srcport(), r.dstport()),
            (Some(1), Some(0), Some(0))
        );
    });
    with_record(&d, 6, |r| {
        assert_eq!(r.srcaddr(), ip("2001:db8:1234:a100:8d6e:3477:df66:f105"));
        assert_eq!(r.dstaddr(), ip("2001:db8:1234:a102:3304:8879:34cf:4071"));
        assert_eq!(r.packets(), Some(54));
    });
}

#[test]
fn aws_nat_gateway_example_with_comments() {
    let d = decode("aws-docs/nat-gateway-custom.log");
    assert_eq!((d.headers, d.records.len(), d.errors.len()), (1, 6, 0));
    // On the NAT ENI (no instance): the instance -> NAT leg carries the final destination
    // in pkt-dstaddr.
    with_record(&d, 0, |r| {
        assert_eq!(r.instance_id(), None);
        assert_eq!(r.dstaddr(), ip("10.0.0.220"));
        assert_eq!(r.pkt_srcaddr(), ip("10.0.1.5"));
        assert_eq!(r.pkt_dstaddr(), ip("203.0.113.5"));
    });
    with_record(&d, 3, |r| {
        assert_eq!(r.srcaddr(), ip("10.0.0.220"));
        assert_eq!(r.pkt_srcaddr(), ip("203.0.113.5"));
    });
    // The trailing "#Traffic from …" comment is not a field.
    with_record(&d, 4, |r| {
        assert_eq!(r.instance_id(), Some("i-01234567890123456"));
        assert_eq!(r.pkt_dstaddr(), ip("203.0.113.5"));
    });
}

#[test]
fn aws_tcp_flags_with_double_space() {
    let d = decode("aws-docs/tcp-flag-sequence-v3.log");
    assert_eq!((d.headers, d.records.len(), d.errors.len()), (1, 8, 0));
    let flags: Vec<u8> = (0..8)
        .map(|i| with_record(&d, i, |r| r.tcp_flags().unwrap().bits()))
        .collect();
    assert_eq!(flags, [2, 18, 2, 18, 1, 1, 3, 19]);
    with_record(&d, 1, |r| {
        assert!(TcpFlags(18).syn_ack() && r.tcp_flags().unwrap().syn_ack())
    });
    // The line with the double space.
    with_record(&d, 7, |r| {
        assert_eq!(r.srcport(), Some(5001));
        assert_eq!(r.dstport(), Some(43638));
        assert_eq!(r.pkt_srcaddr(), ip("10.0.0.62"));
        assert_eq!(r.bytes(), Some(967));
        assert_eq!(r.ip_type(), Some(IpType::IPv4));
        assert_eq!(r.vpc_id(), Some("vpc-abcdefab012345678"));
    });
}

#[test]
fn aws_traffic_path_and_services() {
    let d = decode("aws-docs/traffic-path-v5.log");
    assert_eq!((d.records.len(), d.errors.len()), (2, 0));
    with_record(&d, 0, |r| {
        assert_eq!(r.pkt_src_aws_service(), Some("S3"));
        assert_eq!(r.traffic_path(), None);
        assert_eq!(r.flow_direction(), Some(FlowDirection::Ingress));
        assert_eq!(r.region(), Some("ap-southeast-2"));
        assert_eq!(r.text(Field::SublocationType), None);
    });
    with_record(&d, 1, |r| {
        assert_eq!(r.pkt_dst_aws_service(), Some("S3"));
        assert_eq!(r.traffic_path(), Some(TrafficPath::InternetGateway));
        assert_eq!(r.flow_direction(), Some(FlowDirection::Egress));
        assert_eq!(r.version(), Some(5));
    });
}

#[test]
fn aws_transit_gateway_with_ellipsis_line() {
    let d = decode("aws-docs/transit-gateway-v3.log");
    assert_eq!(d.records.len(), 4);
    assert_eq!(d.errors.len(), 1);
    let (line, e) = &d.errors[0];
    assert_eq!(*line, 3);
    assert_eq!(e.reason(), "invalid_number");
    assert_eq!((e.field, e.column), (Some(Field::Version), 1));
    with_record(&d, 2, |r| {
        assert_eq!(r.instance_id(), None);
        assert_eq!(r.srcaddr(), ip("10.40.1.175"));
        assert_eq!(r.pkt_srcaddr(), ip("10.20.33.164"));
    });
}

#[test]
fn flowlogs_reader_cloudwatch_bodies() {
    let d = decode("flowlogs-reader/v2-records-cwl.log");
    assert_eq!((d.records.len(), d.errors.len()), (5, 0));
    with_record(&d, 0, |r| {
        assert_eq!(r.srcport(), Some(443));
        assert_eq!(r.bytes(), Some(840));
    });
    with_record(&d, 2, |r| assert_eq!(r.action(), Some(Action::Reject)));
    let d = decode("flowlogs-reader/millisecond-timestamps-cwl.log");
    with_record(&d, 0, |r| {
        assert_eq!(r.start(), Some(1_512_564_058));
        assert_eq!(r.end(), Some(1_512_564_059));
        assert_eq!(r.log_status(), Some(LogStatus::SkipData));
    });
}

#[test]
fn flowlogs_reader_alphabetical_s3_files() {
    let d = decode("flowlogs-reader/v3-s3-file-with-header.log");
    assert_eq!((d.headers, d.records.len(), d.errors.len()), (1, 2, 0));
    with_record(&d, 0, |r| {
        assert_eq!(r.account_id(), Some("000000000000"));
        assert_eq!(r.srcport(), Some(443));
        assert_eq!(r.pkt_srcaddr(), ip("192.168.0.1"));
        assert_eq!(r.version(), Some(3));
    });
    let d = decode("flowlogs-reader/v4-s3-file-with-header.log");
    with_record(&d, 1, |r| {
        assert_eq!(r.text(Field::SublocationType), Some("outpost"));
        assert_eq!(r.text(Field::SublocationId), Some("outpostid04"));
        assert_eq!(r.az_id(), Some("use1-az4"));
    });
    let d = decode("flowlogs-reader/v5-s3-file-with-header.log");
    assert_eq!(d.records.len(), 2);
    assert_eq!(d.errors.len(), 1, "`bogus line` is a bad line");
    assert_eq!(d.errors[0].0, 4);
    assert_eq!(d.errors[0].1.reason(), "invalid_value");
    assert_eq!(d.errors[0].1.field, Some(Field::Action));
    with_record(&d, 1, |r| {
        assert_eq!(r.traffic_path(), Some(TrafficPath::GatewayEndpoint));
        assert_eq!(r.tcp_flags(), Some(TcpFlags(7)));
        assert_eq!(r.account_id(), Some("999999999999"));
    });
    let d = decode("flowlogs-reader/v6-s3-file-with-header.log");
    assert_eq!(d.records.len(), 1);
    with_record(&d, 0, |r| {
        assert_eq!(r.text(Field::ResourceType), Some("TransitGateway"));
        assert_eq!(r.text(Field::TgwSrcVpcAccountId), Some("00000002"));
        assert_eq!(r.int(Field::PacketsLostNoRoute), Some(13));
        assert_eq!(r.int(Field::PacketsLostTtlExpired), Some(16));
    });
}

#[test]
fn vrl_groups_up_to_v11() {
    for (file, records) in [
        ("vrl/vrl-test-group1.log", 7),
        ("vrl/vrl-test-group2.log", 8),
        ("vrl/vrl-test-group3.log", 6),
        ("vrl/vrl-test-group4.log", 4),
        ("vrl/vrl-test-group5.log", 2),
        ("vrl/vrl-test-group6.log", 1),
        ("vrl/vrl-test-group7.log", 2),
    ] {
        let d = decode(file);
        assert_eq!((d.records.len(), d.errors.len()), (records, 0), "{file}");
    }
    let d = decode("vrl/vrl-test-group6.log");
    with_record(&d, 0, |r| {
        assert_eq!(r.text(Field::EcsClusterName), Some("my-cluster"));
        assert_eq!(r.text(Field::EcsSecondContainerId), None);
        assert_eq!(r.text(Field::EcsTaskId), Some("abcd1234"));
        assert_eq!(r.version(), Some(7));
    });
    let d = decode("vrl/vrl-test-group7.log");
    with_record(&d, 0, |r| {
        assert_eq!(r.reject_reason(), Some("BPA"));
        assert_eq!(r.text(Field::ResourceId), Some("nat-0c50d5961bcb2d47b"));
        assert_eq!(r.encryption_status(), Some(1));
        assert_eq!(r.interface_type(), Some("nat_gateway"));
        assert_eq!(
            r.text(Field::NextHopInterfaceType),
            Some("network_load_balancer")
        );
        assert_eq!(r.text(Field::AsgTag2), Some("my-asg-2"));
    });
    with_record(&d, 1, |r| {
        assert_eq!(r.reject_reason(), None);
        assert_eq!(r.action(), Some(Action::Accept));
    });
}

#[test]
fn splunk_capture_totals() {
    let d = decode("splunk-cloudfwd/cloudwatchlogs_vpcflowlog_lambdaprocessed.log");
    assert_eq!((d.headers, d.records.len(), d.errors.len()), (0, 360, 0));
    let mut bytes = 0;
    let mut packets = 0;
    let mut reject_ports = vec![];
    let mut rdp = 0;
    for i in 0..d.records.len() {
        with_record(&d, i, |r| {
            bytes += r.bytes().unwrap();
            packets += r.packets().unwrap();
            if r.action() == Some(Action::Reject) {
                reject_ports.push(r.dstport().unwrap());
            }
            if r.dstport() == Some(3389) {
                rdp += 1;
            }
        });
    }
    reject_ports.sort();
    assert_eq!(bytes, 600_636);
    assert_eq!(packets, 2_797);
    assert_eq!(rdp, 168);
    assert_eq!(
        reject_ports,
        [22, 43, 53, 445, 1433, 1900, 2323, 5432, 8555, 9000]
    );
    with_record(&d, 359, |r| {
        assert_eq!(r.srcaddr(), ip("172.31.20.44"));
        assert_eq!(r.dstaddr(), ip("185.45.193.16"));
        assert_eq!(r.bytes(), Some(1873));
    });

    let d = decode("splunk-cloudfwd/vpc-flow-log.log");
    assert_eq!((d.records.len(), d.errors.len()), (10, 0));
    with_record(&d, 0, |r| {
        assert_eq!(
            (r.protocol(), r.account_id()),
            (Some(1), Some("063605715280"))
        )
    });

    let d = decode("splunk-cloudfwd/examples-vpcFlowLogs.log");
    assert_eq!(
        (d.records.len(), d.errors.len()),
        (8, 0),
        "last line has no newline"
    );
    with_record(&d, 7, |r| assert_eq!(r.dstaddr(), ip("172.31.16.20")));
}

#[test]
fn every_fixture_round_trips() {
    // Each record, written back in its own format, parses to an equal record.
    for dir in ["aws-docs", "flowlogs-reader", "splunk-cloudfwd", "vrl"] {
        let path = fixtures_root().join("tests/fixtures").join(dir);
        for entry in std::fs::read_dir(path).unwrap() {
            let name = format!("{dir}/{}", entry.unwrap().file_name().to_string_lossy());
            let d = decode(&name);
            for (line_no, line, format) in &d.records {
                let again = flowlog::Record::parse(format, line.as_bytes())
                    .unwrap_or_else(|e| panic!("{name}:{line_no}: {e}"));
                assert_eq!(&again.to_line(), line, "{name}:{line_no}");
            }
        }
    }
}
