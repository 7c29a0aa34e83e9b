//! The public and private subnets, one of each per zone: found by their resource tag, their
//! ranges checked against the spec (a subnet's range cannot change), created where missing.
//! `down` deletes every subnet of the stack's VPCs, waiting out what SageMaker leaves in them.

use aws_sdk_ec2::types::ResourceType;

use super::{every_page, filter, has_tag, resource, Teardown, PLANNED};
use crate::aws::{aws_error, Clients};
use crate::retry::Passing;
use crate::spec::StackSpec;
use crate::stack::{ChangeKind, Reconciler, SubnetOut, RESOURCE_TAG};
use crate::ProvisionError;

resource!(Subnets, "subnets");

/// The spec's zones, or the region's first available ones in name order.
async fn zones(clients: &Clients, spec: &StackSpec) -> Result<Vec<String>, ProvisionError> {
    if !spec.availability_zones.is_empty() {
        return Ok(spec.availability_zones.clone());
    }
    let got = clients
        .ec2
        .describe_availability_zones()
        .filters(filter("state", "available"))
        .filters(filter("zone-type", "availability-zone"))
        .send()
        .await
        .map_err(|e| aws_error("availability zones", "DescribeAvailabilityZones", e))?;
    let mut names: Vec<String> = got
        .availability_zones()
        .iter()
        .filter_map(|z| z.zone_name().map(String::from))
        .collect();
    names.sort();
    let want = spec.zones();
    if names.len() < want {
        return Err(ProvisionError::Conflict(format!(
            "region {} has {} available zones; the spec needs {want}",
            clients.region,
            names.len()
        )));
    }
    names.truncate(want);
    Ok(names)
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    let zones = zones(r.clients, &r.spec).await?;
    let ec2 = r.clients.ec2.clone();
    let existing = if r.out.vpc_id == PLANNED {
        vec![]
    } else {
        every_page!(
            ec2.describe_subnets()
                .filters(filter("vpc-id", &r.out.vpc_id))
                .filters(r.stack_filter()),
            "subnets",
            "DescribeSubnets"
        )?
    };
    let tiers = [
        ("public", r.spec.public_subnets.clone()),
        ("private", r.spec.private_subnets.clone()),
    ];
    for (tier, cidrs) in tiers {
        for (i, cidr) in cidrs.iter().enumerate() {
            let resource = format!("subnet/{tier}-{i}");
            let zone = zones.get(i).cloned().unwrap_or_default();
            let found = existing
                .iter()
                .find(|s| has_tag(s.tags(), RESOURCE_TAG, &resource));
            let out = match found {
                Some(s) => {
                    if s.cidr_block() != Some(cidr.to_string().as_str()) {
                        return Err(ProvisionError::Conflict(format!(
                            "{resource} {} has CIDR {} but the spec says {cidr}; run `down` first or fix the spec",
                            s.subnet_id().unwrap_or("?"),
                            s.cidr_block().unwrap_or("?")
                        )));
                    }
                    SubnetOut {
                        id: s.subnet_id().unwrap_or_default().into(),
                        cidr: cidr.to_string(),
                        availability_zone: s.availability_zone().unwrap_or_default().into(),
                    }
                }
                None => {
                    let id = if r.change(
                        &resource,
                        ChangeKind::Create,
                        format!("{tier} subnet {cidr} in {zone}"),
                        false,
                    ) {
                        let tags = r.tags(ResourceType::Subnet, &resource);
                        // The VPC made a moment ago may not be known to every EC2 host yet.
                        crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                            ec2.create_subnet()
                                .vpc_id(&r.out.vpc_id)
                                .cidr_block(cidr.to_string())
                                .availability_zone(&zone)
                                .tag_specifications(tags.clone())
                                .send()
                                .await
                                .map_err(|e| aws_error(&resource, "CreateSubnet", e))
                        })?
                        .subnet()
                        .and_then(|s| s.subnet_id())
                        .unwrap_or_default()
                        .to_string()
                    } else {
                        PLANNED.into()
                    };
                    SubnetOut {
                        id,
                        cidr: cidr.to_string(),
                        availability_zone: zone,
                    }
                }
            };
            if tier == "public" {
                r.out.public_subnets.push(out)
            } else {
                r.out.private_subnets.push(out)
            }
        }
    }
    Ok(())
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let ec2 = t.clients.ec2.clone();
    for vpc in t.vpc_ids.clone() {
        let subnets = every_page!(
            ec2.describe_subnets().filters(filter("vpc-id", &vpc)),
            "subnet",
            "DescribeSubnets"
        )?;
        for id in subnets.iter().filter_map(|s| s.subnet_id()) {
            // Mount targets and interfaces SageMaker leaves take a while to go.
            if t.live() {
                crate::retry_passing!(&[Passing::DependencyLeaving], &mut *t.progress, {
                    ec2.delete_subnet()
                        .subnet_id(id)
                        .send()
                        .await
                        .map_err(|e| aws_error("subnet", "DeleteSubnet", e))
                })?;
            }
            t.say(format!("subnet {id}"));
        }
    }
    Ok(())
}
