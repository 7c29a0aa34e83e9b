//! The VPC: found by the stack's tag (two of them are reported, never silently merged), its
//! range checked against the spec, DNS support and hostnames on (Studio's VPC endpoints and
//! EFS need both), and no IPv6 range (NAT gateways carry IPv4 only).

use aws_sdk_ec2::types::{AttributeBooleanValue, ResourceType, Vpc as AwsVpc, VpcAttributeName};

use super::{every_page, resource, tag, Teardown, PLANNED};
use crate::aws::aws_error;
use crate::retry::Passing;
use crate::stack::{Change, ChangeKind, Mode, Reconciler};
use crate::ProvisionError;

resource!(Vpc, "vpc");

/// The VPC the stack uses among those carrying its tag: the one with the spec's range, then
/// the lowest id, so every run makes the same choice. The rest are duplicates.
pub fn choose(mut live: Vec<AwsVpc>, spec_cidr: &str) -> (Option<AwsVpc>, Vec<AwsVpc>) {
    live.retain(|v| v.state().map(|s| s.as_str()) != Some("deleted"));
    live.sort_by_key(|v| {
        (
            v.cidr_block() != Some(spec_cidr),
            v.vpc_id().map(String::from),
        )
    });
    let mut it = live.into_iter();
    let first = it.next();
    (first, it.collect())
}

/// The IPv6 ranges in use on the VPC, as (association id, range).
pub fn ipv6_ranges(v: &AwsVpc) -> Vec<(String, String)> {
    v.ipv6_cidr_block_association_set()
        .iter()
        .filter(|a| {
            matches!(
                a.ipv6_cidr_block_state()
                    .and_then(|s| s.state())
                    .map(|s| s.as_str()),
                Some("associated" | "associating")
            )
        })
        .map(|a| {
            (
                a.association_id().unwrap_or_default().to_string(),
                a.ipv6_cidr_block().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    let ec2 = r.clients.ec2.clone();
    let found = every_page!(
        ec2.describe_vpcs().filters(r.stack_filter()),
        "vpc",
        "DescribeVpcs"
    )?;
    let spec_cidr = r.spec.vpc_cidr.to_string();
    let (existing, duplicates) = choose(found, &spec_cidr);
    // Two VPCs carrying the stack's tag: two runs created at once (before the stack had a
    // lock) or someone copied the tag. Which one holds what is for a person to check.
    for extra in &duplicates {
        let detail = format!(
            "duplicate VPC {} also carries this stack's tag; the stack uses {}. Not deleted automatically: check what it holds, then delete it (or `down` and `up`)",
            extra.vpc_id().unwrap_or("?"),
            existing.as_ref().and_then(|v| v.vpc_id()).unwrap_or("?")
        );
        if r.mode == Mode::Plan {
            r.changes.push(Change {
                resource: "vpc".into(),
                kind: ChangeKind::Delete,
                detail,
                security: false,
            });
        } else {
            (r.progress)(&format!("warning: {detail}"));
        }
    }
    // NAT gateways carry IPv4 only: an IPv6 range on the VPC is a way out past the NAT.
    if let Some(v) = &existing {
        for (association, range) in ipv6_ranges(v) {
            let detail =
                format!("remove the IPv6 range {range}: traffic over IPv6 leaves without the NAT");
            if r.change("vpc", ChangeKind::Update, detail, true) {
                ec2.disassociate_vpc_cidr_block()
                    .association_id(association)
                    .send()
                    .await
                    .map_err(|e| aws_error("vpc", "DisassociateVpcCidrBlock", e))?;
            }
        }
    }
    let recorded: Vec<(String, String)> = existing
        .as_ref()
        .map(|v| {
            v.tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    let vpc_id = match existing {
        Some(v) => {
            r.out.vpc_cidr = v.cidr_block().unwrap_or_default().to_string();
            let id = v.vpc_id().unwrap_or_default().to_string();
            if v.cidr_block() != Some(spec_cidr.as_str()) {
                return Err(ProvisionError::Conflict(format!(
                    "VPC {id} has CIDR {} but the spec says {spec_cidr}; a VPC's range cannot change: run `down` first or fix the spec",
                    v.cidr_block().unwrap_or("?")
                )));
            }
            id
        }
        None => {
            r.out.vpc_cidr = spec_cidr.clone();
            if !r.change("vpc", ChangeKind::Create, format!("VPC {spec_cidr}"), false) {
                r.out.vpc_id = PLANNED.into();
                return Ok(());
            }
            let mut tags = r.tags(ResourceType::Vpc, "vpc");
            for (k, v) in r.spec.to_tags() {
                tags.tags.get_or_insert_with(Vec::new).push(tag(&k, &v));
            }
            let created = ec2
                .create_vpc()
                .cidr_block(&spec_cidr)
                .tag_specifications(tags)
                .send()
                .await
                .map_err(|e| aws_error("vpc", "CreateVpc", e))?;
            let v = created
                .vpc()
                .ok_or_else(|| ProvisionError::Unexpected("CreateVpc returned no VPC".into()))?;
            v.vpc_id().unwrap_or_default().to_string()
        }
    };
    r.out.vpc_id = vpc_id.clone();
    // The spec goes with the stack, so `status`, `outputs` and `down` need no spec file. Not
    // a change of the network: recorded on every `up` that finds it different.
    if r.mode == Mode::Apply && !recorded.is_empty() {
        let want = r.spec.to_tags();
        let differs = want
            .iter()
            .any(|(k, v)| !recorded.iter().any(|(rk, rv)| rk == k && rv == v));
        if differs {
            ec2.create_tags()
                .resources(&vpc_id)
                .set_tags(Some(want.iter().map(|(k, v)| tag(k, v)).collect()))
                .send()
                .await
                .map_err(|e| aws_error("vpc", "CreateTags", e))?;
        }
    }
    for (attr, label) in [
        (VpcAttributeName::EnableDnsSupport, "DNS support"),
        (VpcAttributeName::EnableDnsHostnames, "DNS hostnames"),
    ] {
        // Right after create, EC2 may not know the VPC yet.
        let got = crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
            ec2.describe_vpc_attribute()
                .vpc_id(&vpc_id)
                .attribute(attr.clone())
                .send()
                .await
                .map_err(|e| aws_error("vpc", "DescribeVpcAttribute", e))
        })?;
        let on = match attr {
            VpcAttributeName::EnableDnsSupport => got.enable_dns_support().and_then(|a| a.value()),
            _ => got.enable_dns_hostnames().and_then(|a| a.value()),
        }
        .unwrap_or(false);
        if !on && r.change("vpc", ChangeKind::Update, format!("turn on {label}"), false) {
            let value = AttributeBooleanValue::builder().value(true).build();
            crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                let req = ec2.modify_vpc_attribute().vpc_id(&vpc_id);
                let req = if attr == VpcAttributeName::EnableDnsSupport {
                    req.enable_dns_support(value.clone())
                } else {
                    req.enable_dns_hostnames(value.clone())
                };
                req.send()
                    .await
                    .map_err(|e| aws_error("vpc", "ModifyVpcAttribute", e))
            })?;
        }
    }
    Ok(())
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let ec2 = t.clients.ec2.clone();
    for vpc in t.vpc_ids.clone() {
        if t.live() {
            // What SageMaker left in it takes a while to go.
            crate::retry_passing!(&[Passing::DependencyLeaving], &mut *t.progress, {
                ec2.delete_vpc()
                    .vpc_id(&vpc)
                    .send()
                    .await
                    .map_err(|e| aws_error("vpc", "DeleteVpc", e))
            })?;
        }
        t.say(format!("vpc {vpc}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{VpcCidrBlockState, VpcIpv6CidrBlockAssociation, VpcState};

    fn vpc(id: &str, cidr: &str) -> AwsVpc {
        AwsVpc::builder()
            .vpc_id(id)
            .cidr_block(cidr)
            .state(VpcState::Available)
            .build()
    }

    #[test]
    fn the_vpc_with_the_spec_range_is_chosen_and_the_rest_are_duplicates() {
        let (chosen, dups) = choose(
            vec![
                vpc("vpc-1", "10.9.0.0/16"),
                vpc("vpc-3", "10.0.0.0/16"),
                vpc("vpc-2", "10.0.0.0/16"),
            ],
            "10.0.0.0/16",
        );
        assert_eq!(
            chosen.and_then(|v| v.vpc_id().map(String::from)).as_deref(),
            Some("vpc-2")
        );
        let ids: Vec<_> = dups.iter().filter_map(|v| v.vpc_id()).collect();
        assert_eq!(ids, ["vpc-3", "vpc-1"]);
    }

    #[test]
    fn only_ipv6_ranges_in_use_count() {
        let assoc = |id: &str, state: &str| {
            VpcIpv6CidrBlockAssociation::builder()
                .association_id(id)
                .ipv6_cidr_block("2600:1f18::/56")
                .ipv6_cidr_block_state(VpcCidrBlockState::builder().state(state.into()).build())
                .build()
        };
        let v = AwsVpc::builder()
            .vpc_id("vpc-1")
            .ipv6_cidr_block_association_set(assoc("a-1", "associated"))
            .ipv6_cidr_block_association_set(assoc("a-2", "disassociated"))
            .build();
        assert_eq!(
            ipv6_ranges(&v),
            [("a-1".to_string(), "2600:1f18::/56".to_string())]
        );
    }
}
