//! Turns a parsed record into a [`Flow`]: which path the traffic took (NAT egress, S3 through
//! the gateway endpoint, inside the VPC, inbound…), which workload is behind it, and the
//! remote end. The same connection is seen up to three times (the NAT interface's two legs
//! and the workload's own interface); exactly one of them is counted, the others are marked
//! [`Path::Duplicate`].

use std::net::IpAddr;

use flowlog::{Action, LogStatus, Record};
use serde::Serialize;

use crate::topology::Topology;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// Workload to the internet through the NAT gateway (counted on the NAT's inner leg).
    NatEgress,
    /// Internet replies coming back through the NAT gateway to a workload.
    NatReturn,
    /// Traffic to or from S3 through the gateway endpoint.
    S3Endpoint,
    /// Both ends inside the VPC.
    IntraVpc,
    /// Outbound traffic a security group or network ACL refused before the NAT.
    RejectedEgress,
    /// Initiated from outside the VPC towards it.
    Inbound,
    /// Another view of a connection already counted on another interface or leg.
    Duplicate,
    /// Anything else (no addresses, or outside every known range).
    Other,
}

impl Path {
    pub fn as_str(self) -> &'static str {
        match self {
            Path::NatEgress => "nat_egress",
            Path::NatReturn => "nat_return",
            Path::S3Endpoint => "s3_endpoint",
            Path::IntraVpc => "intra_vpc",
            Path::RejectedEgress => "rejected_egress",
            Path::Inbound => "inbound",
            Path::Duplicate => "duplicate",
            Path::Other => "other",
        }
    }

    pub const ALL: [Path; 8] = [
        Path::NatEgress,
        Path::NatReturn,
        Path::S3Endpoint,
        Path::IntraVpc,
        Path::RejectedEgress,
        Path::Inbound,
        Path::Duplicate,
        Path::Other,
    ];
}

/// A record placed in the stack's network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Flow<'a> {
    pub path: Path,
    /// The address inside the VPC the traffic belongs to.
    pub workload: Option<IpAddr>,
    pub remote: Option<IpAddr>,
    /// The remote end's port (the destination port for outbound traffic).
    pub remote_port: Option<u16>,
    /// This view's own port at the near end (the workload's, or the NAT's on its outer leg):
    /// with the remote and its port, it tells one connection from the next.
    pub local_port: Option<u16>,
    pub protocol: Option<u8>,
    pub bytes: u64,
    pub packets: u64,
    pub action: Option<&'static str>,
    /// Window end, Unix seconds (event time).
    pub end: u64,
    pub start: u64,
    /// Borrowed from the record: classifying a record allocates nothing.
    pub interface_id: Option<&'a str>,
    pub instance_id: Option<&'a str>,
    /// Where the record was written, for findings (when the format has these fields).
    pub account_id: Option<&'a str>,
    pub vpc_id: Option<&'a str>,
    pub region: Option<&'a str>,
    /// The record's packets go from the workload to the remote (false for replies and
    /// inbound traffic).
    pub outbound: bool,
    /// The record holds a connection's first packet (TCP SYN seen; always true for protocols
    /// without flags or when the format has no `tcp-flags`).
    pub opens_connection: bool,
    /// The record holds a TCP connection's first packet and its last (SYN with FIN or RST):
    /// flags are OR-ed over the record's window, so the connection began and ended in it.
    pub closes_in_record: bool,
}

/// Where a record puts the traffic, given the topology.
pub fn classify<'a>(record: &Record<'a>, topo: &Topology) -> Option<Flow<'a>> {
    if record.log_status() != Some(LogStatus::Ok) && record.log_status().is_some() {
        return None;
    }
    let src = record.srcaddr()?;
    let dst = record.dstaddr()?;
    let pkt_src = record.pkt_srcaddr().unwrap_or(src);
    let pkt_dst = record.pkt_dstaddr().unwrap_or(dst);
    let eni = record.interface_id().unwrap_or("");
    let on_nat = topo.is_nat_interface(eni) || topo.is_nat_ip(src) || topo.is_nat_ip(dst);
    let rejected = record.action() == Some(Action::Reject);
    let mut flow = Flow {
        path: Path::Other,
        workload: None,
        remote: None,
        remote_port: None,
        local_port: None,
        protocol: record.protocol(),
        bytes: record.bytes().unwrap_or(0),
        packets: record.packets().unwrap_or(0),
        action: record.action().map(|a| a.as_str()),
        end: record.end().unwrap_or(0),
        start: record.start().unwrap_or(0),
        interface_id: record.interface_id(),
        instance_id: record.instance_id(),
        account_id: record.account_id(),
        vpc_id: record.vpc_id(),
        region: record.region(),
        outbound: false,
        opens_connection: record.protocol() != Some(6)
            || record.tcp_flags().is_none_or(|f| f.syn()),
        closes_in_record: record.protocol() == Some(6)
            && record
                .tcp_flags()
                .is_some_and(|f| f.syn() && (f.fin() || f.rst())),
    };
    let outbound = |f: &mut Flow, path: Path, workload: IpAddr, remote: IpAddr| {
        f.path = path;
        f.outbound = true;
        f.workload = Some(workload);
        f.remote = Some(remote);
        f.remote_port = record.dstport();
        f.local_port = record.srcport();
    };
    let inbound = |f: &mut Flow, path: Path, workload: IpAddr, remote: IpAddr| {
        f.path = path;
        f.workload = Some(workload);
        f.remote = Some(remote);
        f.remote_port = record.srcport();
        f.local_port = record.dstport();
    };
    if on_nat {
        if topo.is_nat_ip(dst) && !topo.is_nat_ip(src) && topo.in_vpc(src) && !topo.in_vpc(pkt_dst)
        {
            // Inner leg, workload -> NAT: the one view of the connection that is counted.
            outbound(&mut flow, Path::NatEgress, pkt_src, pkt_dst);
        } else if topo.is_nat_ip(src)
            && topo.in_vpc(dst)
            && !topo.is_nat_ip(dst)
            && !topo.in_vpc(pkt_src)
        {
            // Inner leg, NAT -> workload: the internet's reply.
            inbound(&mut flow, Path::NatReturn, dst, pkt_src);
        } else if topo.is_nat_ip(src) && !topo.in_vpc(dst) {
            outbound(&mut flow, Path::Duplicate, src, dst);
        } else if topo.is_nat_ip(dst) && !topo.in_vpc(src) {
            inbound(&mut flow, Path::Duplicate, dst, src);
        } else if topo.in_vpc(src) && topo.in_vpc(dst) {
            outbound(&mut flow, Path::IntraVpc, src, dst);
        }
        return Some(flow);
    }
    match (topo.in_vpc(src), topo.in_vpc(dst)) {
        (true, true) => outbound(&mut flow, Path::IntraVpc, src, dst),
        (true, false) => {
            if topo.is_s3(dst) || record.pkt_dst_aws_service() == Some("S3") {
                outbound(&mut flow, Path::S3Endpoint, src, dst)
            } else if rejected {
                outbound(&mut flow, Path::RejectedEgress, src, dst)
            } else {
                // Accepted egress to the internet is counted where it crosses the NAT.
                outbound(&mut flow, Path::Duplicate, src, dst)
            }
        }
        (false, true) => {
            if topo.is_s3(src) || record.pkt_src_aws_service() == Some("S3") {
                inbound(&mut flow, Path::S3Endpoint, dst, src)
            } else if record.tcp_flags().is_some_and(|f| f.syn() && !f.syn_ack()) || rejected {
                inbound(&mut flow, Path::Inbound, dst, src)
            } else {
                inbound(&mut flow, Path::Duplicate, dst, src)
            }
        }
        (false, false) => {}
    }
    Some(flow)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowlog::Format;

    fn topo() -> Topology {
        Topology {
            vpc_cidrs: vec!["10.0.0.0/16".parse().unwrap()],
            nat_interfaces: vec!["eni-nat".into()],
            nat_private_ips: vec!["10.0.0.220".parse().unwrap()],
            s3_cidrs: vec!["52.216.0.0/15".parse().unwrap()],
            vpc_id: None,
            s3_prefix_list_id: None,
        }
    }

    fn flow(line: &'static str) -> Flow<'static> {
        // A record borrows its format; a leaked one lives as long as the test needs.
        let f: &'static Format = Box::leak(Box::new(Format::parse("interface-id srcaddr dstaddr srcport dstport protocol packets bytes start end action log-status pkt-srcaddr pkt-dstaddr tcp-flags").unwrap()));
        classify(&Record::parse(f, line.as_bytes()).unwrap(), &topo()).unwrap()
    }

    #[test]
    fn nat_example_counted_once() {
        // AWS's NAT gateway example: the inner leg counts, the outer leg and the instance's
        // own record are duplicates.
        let inner = flow("eni-nat 10.0.1.5 10.0.0.220 40000 22 6 10 5000 100 160 ACCEPT OK 10.0.1.5 203.0.113.5 2");
        assert_eq!(inner.path, Path::NatEgress);
        assert_eq!(inner.workload, Some("10.0.1.5".parse().unwrap()));
        assert_eq!(inner.remote, Some("203.0.113.5".parse().unwrap()));
        assert_eq!(inner.remote_port, Some(22));
        assert_eq!(inner.bytes, 5000);
        let outer = flow("eni-nat 10.0.0.220 203.0.113.5 40000 22 6 10 5000 100 160 ACCEPT OK 10.0.0.220 203.0.113.5 2");
        assert_eq!(outer.path, Path::Duplicate);
        let reply_outer = flow("eni-nat 203.0.113.5 10.0.0.220 22 40000 6 10 900 100 160 ACCEPT OK 203.0.113.5 10.0.0.220 18");
        assert_eq!(reply_outer.path, Path::Duplicate);
        let reply_inner = flow("eni-nat 10.0.0.220 10.0.1.5 22 40000 6 10 900 100 160 ACCEPT OK 203.0.113.5 10.0.1.5 18");
        assert_eq!(reply_inner.path, Path::NatReturn);
        assert_eq!(reply_inner.workload, Some("10.0.1.5".parse().unwrap()));
        assert_eq!(reply_inner.remote_port, Some(22));
        let instance = flow("eni-wl 10.0.1.5 203.0.113.5 40000 22 6 10 5000 100 160 ACCEPT OK 10.0.1.5 203.0.113.5 2");
        assert_eq!(instance.path, Path::Duplicate);
    }

    #[test]
    fn a_connection_opened_and_closed_in_one_record_is_told_apart() {
        let with_flags = |flags: &str| {
            let line = format!(
                "eni-nat 10.0.1.5 10.0.0.220 40000 443 6 10 5000 100 160 ACCEPT OK 10.0.1.5 203.0.113.5 {flags}"
            );
            flow(Box::leak(line.into_boxed_str()))
        };
        // SYN+FIN, SYN+ACK+FIN, SYN+RST: whole connections within the window.
        for flags in ["3", "19", "6"] {
            assert!(with_flags(flags).closes_in_record, "{flags}");
        }
        // SYN alone (a connection that stays open), mid-connection, FIN alone, no flags.
        for flags in ["2", "0", "1", "-"] {
            assert!(!with_flags(flags).closes_in_record, "{flags}");
        }
    }

    #[test]
    fn other_paths() {
        assert_eq!(
            flow("eni-wl 10.0.1.5 52.217.1.1 40000 443 6 1 100 1 2 ACCEPT OK - - -").path,
            Path::S3Endpoint
        );
        assert_eq!(
            flow("eni-wl 10.0.1.5 10.0.2.9 40000 2049 6 1 100 1 2 ACCEPT OK - - -").path,
            Path::IntraVpc
        );
        let r = flow("eni-wl 10.0.1.5 198.51.100.7 40000 3389 6 1 100 1 2 REJECT OK - - 2");
        assert_eq!((r.path, r.remote_port), (Path::RejectedEgress, Some(3389)));
        assert_eq!(
            flow("eni-wl 198.51.100.7 10.0.1.5 5555 22 6 1 100 1 2 REJECT OK - - 2").path,
            Path::Inbound
        );
    }
}
