//! What the monitor knows about the stack's network: the VPC's ranges, the NAT gateways'
//! interfaces and private addresses, and the S3 prefix-list ranges. It comes from
//! `provision outputs` JSON ([`Topology::from_outputs`]) or the config file, and is what turns
//! a record into a Flow.

use std::net::IpAddr;

use egresswatch_stack::Outputs;
use ipnet::IpNet;
use serde::Deserialize;

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct Topology {
    /// The VPC's CIDR blocks.
    #[serde(deserialize_with = "crate::net::many")]
    pub vpc_cidrs: Vec<IpNet>,
    /// NAT gateway network interface ids (`eni-…`).
    pub nat_interfaces: Vec<String>,
    /// NAT gateway private addresses.
    pub nat_private_ips: Vec<IpAddr>,
    /// Ranges behind the S3 gateway endpoint (the `pl-…` prefix list's CIDRs).
    #[serde(deserialize_with = "crate::net::many")]
    pub s3_cidrs: Vec<IpNet>,
    /// The VPC's id, which scopes the workload inventory's EC2 calls.
    pub vpc_id: Option<String>,
    /// The S3 prefix list (`pl-…`) whose ranges the daemon asks EC2 for at start, as AWS
    /// adds ranges to it over time; `s3_cidrs` is what was known before that answer.
    pub s3_prefix_list_id: Option<String>,
}

impl Topology {
    /// The stack's network as its outputs describe it: the one way outputs become a topology.
    ///
    /// The S3 ranges are the prefix list's when the outputs were written (outputs written
    /// before they were recorded have none; traffic through the gateway endpoint is then still
    /// told apart by the format's `pkt-dst-aws-service`, see `classify`).
    pub fn from_outputs(out: &Outputs) -> Result<Self, String> {
        let vpc = out
            .vpc_cidr
            .parse::<IpNet>()
            .map_err(|e| format!("vpc_cidr `{}`: {e}", out.vpc_cidr))?;
        let mut t = Topology {
            vpc_cidrs: vec![vpc],
            vpc_id: Some(out.vpc_id.clone()),
            s3_prefix_list_id: Some(out.s3_prefix_list_id.clone()).filter(|p| !p.is_empty()),
            ..Topology::default()
        };
        for c in &out.s3_prefix_list_cidrs {
            let net = c
                .parse::<IpNet>()
                .map_err(|e| format!("s3_prefix_list_cidrs `{c}`: {e}"))?;
            t.s3_cidrs.push(net);
        }
        for n in &out.nat_gateways {
            t.nat_interfaces.push(n.network_interface_id.clone());
            if let Ok(ip) = n.private_ip.parse() {
                t.nat_private_ips.push(ip);
            }
        }
        Ok(t)
    }

    /// Asks EC2 for the current ranges of the S3 prefix list, when the topology names one.
    /// A failure (most often a missing `ec2:GetManagedPrefixListEntries` permission) keeps the ranges
    /// already known and is returned for the caller to log.
    pub async fn refresh_s3_ranges(
        &mut self,
        ec2: &aws_sdk_ec2::Client,
        m: &crate::metrics::Metrics,
    ) -> Result<(), String> {
        let Some(id) = self.s3_prefix_list_id.clone() else {
            return Ok(());
        };
        let mut ranges = Vec::new();
        let mut pages = ec2
            .get_managed_prefix_list_entries()
            .prefix_list_id(&id)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = crate::inventory::counted(m, "GetManagedPrefixListEntries", page)?;
            for c in page.entries().iter().filter_map(|e| e.cidr()) {
                ranges.push(
                    c.parse::<IpNet>()
                        .map_err(|e| format!("prefix list {id} range `{c}`: {e}"))?,
                );
            }
        }
        // S3's list is never empty: an empty answer is a list id that is not S3's (AWS
        // refuses an unknown id; moto answers it with no entries).
        if ranges.is_empty() {
            return Err(format!("EC2 lists no ranges in prefix list {id}"));
        }
        self.s3_cidrs = ranges;
        Ok(())
    }

    /// The stack's network found from the account: its VPC by the `egresswatch:stack` tag the
    /// provisioner puts on it, the VPC's NAT gateways and its S3 gateway endpoint's prefix
    /// list (with its ranges). For a daemon given only `--stack`, no outputs file.
    pub async fn discover(
        ec2: &aws_sdk_ec2::Client,
        stack: &str,
        region: &str,
        m: &crate::metrics::Metrics,
    ) -> Result<Self, String> {
        use aws_sdk_ec2::types::Filter;
        let filter = |name: &str, value: &str| Filter::builder().name(name).values(value).build();
        let count = |op: &str| m.source_calls.with_label_values(&[op]).inc();
        count("DescribeVpcs");
        let vpcs = ec2
            .describe_vpcs()
            .filters(filter(
                &format!("tag:{}", egresswatch_stack::STACK_TAG),
                stack,
            ))
            .send()
            .await
            .map_err(|e| {
                let error = crate::daemon::aws_call_failed(m, "DescribeVpcs", &e, stack, None);
                format!("DescribeVpcs: {error}")
            })?;
        let vpc = match vpcs.vpcs() {
            [one] => one,
            [] => {
                return Err(format!(
                    "no VPC in {region} is tagged {}={stack}: is the stack provisioned there (`egresswatch provision status --stack {stack}`)?",
                    egresswatch_stack::STACK_TAG
                ))
            }
            several => {
                return Err(format!(
                    "{} VPCs are tagged {}={stack}; give the daemon the stack's outputs-file",
                    several.len(),
                    egresswatch_stack::STACK_TAG
                ))
            }
        };
        let vpc_id = vpc.vpc_id().unwrap_or_default().to_string();
        let mut t = Topology {
            vpc_id: Some(vpc_id.clone()),
            ..Topology::default()
        };
        for c in vpc
            .cidr_block_association_set()
            .iter()
            .filter_map(|a| a.cidr_block())
            .chain(vpc.cidr_block())
        {
            if let Ok(net) = c.parse::<IpNet>() {
                if !t.vpc_cidrs.contains(&net) {
                    t.vpc_cidrs.push(net);
                }
            }
        }
        count("DescribeNatGateways");
        let nats = ec2
            .describe_nat_gateways()
            .filter(filter("vpc-id", &vpc_id))
            .filter(filter("state", "available"))
            .send()
            .await
            .map_err(|e| {
                let error =
                    crate::daemon::aws_call_failed(m, "DescribeNatGateways", &e, &vpc_id, None);
                format!("DescribeNatGateways: {error}")
            })?;
        for address in nats
            .nat_gateways()
            .iter()
            .flat_map(|n| n.nat_gateway_addresses())
        {
            if let Some(eni) = address.network_interface_id() {
                t.nat_interfaces.push(eni.to_string());
            }
            if let Some(ip) = address.private_ip().and_then(|ip| ip.parse().ok()) {
                t.nat_private_ips.push(ip);
            }
        }
        if t.nat_interfaces.is_empty() {
            return Err(format!(
                "VPC {vpc_id} (stack {stack}) has no available NAT gateway: nothing leaves it to watch"
            ));
        }
        count("DescribePrefixLists");
        let lists = ec2
            .describe_prefix_lists()
            .filters(filter(
                "prefix-list-name",
                &format!("com.amazonaws.{region}.s3"),
            ))
            .send()
            .await
            .map_err(|e| {
                let error = crate::daemon::aws_call_failed(m, "DescribePrefixLists", &e, "", None);
                format!("DescribePrefixLists: {error}")
            })?;
        t.s3_prefix_list_id = lists
            .prefix_lists()
            .first()
            .and_then(|p| p.prefix_list_id())
            .map(String::from);
        Ok(t)
    }

    pub fn in_vpc(&self, ip: IpAddr) -> bool {
        self.vpc_cidrs.iter().any(|n| n.contains(&ip))
    }

    pub fn is_nat_ip(&self, ip: IpAddr) -> bool {
        self.nat_private_ips.contains(&ip)
    }

    pub fn is_nat_interface(&self, eni: &str) -> bool {
        self.nat_interfaces.iter().any(|n| n == eni)
    }

    pub fn is_s3(&self, ip: IpAddr) -> bool {
        self.s3_cidrs.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use egresswatch_stack::NatOut;

    use super::*;

    fn outputs() -> Outputs {
        let nat = |eni: &str, ip: &str| NatOut {
            network_interface_id: eni.into(),
            private_ip: ip.into(),
            ..NatOut::default()
        };
        Outputs {
            vpc_id: "vpc-1".into(),
            vpc_cidr: "10.0.0.0/16".into(),
            nat_gateways: vec![nat("eni-a", "10.0.0.10"), nat("eni-b", "10.0.1.10")],
            s3_prefix_list_id: "pl-6da54004".into(),
            s3_prefix_list_cidrs: vec!["52.216.0.0/15".into(), "3.5.0.0/19".into()],
            ..Outputs::default()
        }
    }

    #[test]
    fn outputs_give_the_vpc_and_every_nat_gateway() {
        let t = Topology::from_outputs(&outputs()).unwrap();
        assert_eq!(t.vpc_id.as_deref(), Some("vpc-1"));
        assert!(t.in_vpc("10.0.200.1".parse().unwrap()));
        assert!(!t.in_vpc("10.1.0.1".parse().unwrap()));
        assert!(t.is_nat_interface("eni-a") && t.is_nat_interface("eni-b"));
        assert!(t.is_nat_ip("10.0.1.10".parse().unwrap()));
        assert_eq!(t.s3_prefix_list_id.as_deref(), Some("pl-6da54004"));
        assert!(t.is_s3("52.217.4.1".parse().unwrap()));
        assert!(t.is_s3("3.5.31.255".parse().unwrap()));
        assert!(!t.is_s3("3.5.32.0".parse().unwrap()));
    }

    #[test]
    fn outputs_written_before_the_ranges_were_recorded_have_none() {
        let mut out = outputs();
        out.s3_prefix_list_cidrs.clear();
        let t = Topology::from_outputs(&out).unwrap();
        assert!(t.s3_cidrs.is_empty());
    }

    #[test]
    fn an_s3_range_that_does_not_parse_is_refused() {
        let mut out = outputs();
        out.s3_prefix_list_cidrs.push("52.216.0.0".into());
        let e = Topology::from_outputs(&out).unwrap_err();
        assert!(e.starts_with("s3_prefix_list_cidrs `52.216.0.0`"), "{e}");
    }

    #[test]
    fn a_vpc_range_that_does_not_parse_is_refused() {
        let mut out = outputs();
        out.vpc_cidr = "10.0.0.0/33".into();
        let e = Topology::from_outputs(&out).unwrap_err();
        assert!(e.starts_with("vpc_cidr `10.0.0.0/33`"), "{e}");
    }
}
