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

/// A zone by name and by id. Names map to different physical zones in each account; ids do
/// not, so zones are chosen by id and a plan reads the same in every account.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Zone {
    name: String,
    id: String,
}

impl std::fmt::Display for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name, self.id)
    }
}

/// The spec's zones (by name or id), pinned; or every available zone of the region in id
/// order, to be taken from the front.
async fn zones(clients: &Clients, spec: &StackSpec) -> Result<(Vec<Zone>, bool), ProvisionError> {
    let got = clients
        .ec2
        .describe_availability_zones()
        .filters(filter("state", "available"))
        .filters(filter("zone-type", "availability-zone"))
        .send()
        .await
        .map_err(|e| aws_error("availability zones", "DescribeAvailabilityZones", e))?;
    let mut available: Vec<Zone> = got
        .availability_zones()
        .iter()
        .filter_map(|z| {
            Some(Zone {
                name: z.zone_name()?.to_string(),
                id: z.zone_id().unwrap_or_default().to_string(),
            })
        })
        .collect();
    available.sort_by(|a, b| a.id.cmp(&b.id).then_with(|| a.name.cmp(&b.name)));
    if !spec.availability_zones.is_empty() {
        let pinned = spec
            .availability_zones
            .iter()
            .map(|wanted| {
                available
                    .iter()
                    .find(|z| &z.name == wanted || &z.id == wanted)
                    .cloned()
                    .ok_or_else(|| {
                        ProvisionError::Spec(format!(
                            "availability-zones: {wanted} is not an available zone of {} (available: {})",
                            clients.region,
                            available
                                .iter()
                                .map(Zone::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        return Ok((pinned, true));
    }
    let want = spec.zones();
    if available.len() < want {
        return Err(ProvisionError::Conflict(format!(
            "region {} has {} available zones; the spec needs {want}",
            clients.region,
            available.len()
        )));
    }
    Ok((available, false))
}

/// Whether CreateSubnet refused the zone itself: some zones listed as available take no new
/// subnets ("Subnets can currently only be created in the following availability zones").
fn zone_refused(e: &ProvisionError) -> bool {
    matches!(e, ProvisionError::Aws { message, .. }
        if message.contains("can currently only be created in"))
}

/// The zone of each subnet pair: where a subnet of the pair already is, else the first
/// candidate not refused and not taken by another pair.
fn assign(
    pairs: usize,
    candidates: &[Zone],
    refused: &[String],
    placed: &[Option<Zone>],
) -> Vec<Option<Zone>> {
    let mut out: Vec<Option<Zone>> = placed.to_vec();
    out.resize(pairs, None);
    for i in 0..pairs {
        if out[i].is_some() {
            continue;
        }
        out[i] = candidates
            .iter()
            .find(|z| !refused.contains(&z.id) && !out.iter().flatten().any(|t| t.id == z.id))
            .cloned();
    }
    out
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    let (candidates, pinned) = zones(r.clients, &r.spec).await?;
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
    let pairs = r.spec.zones();
    // A pair with one subnet made (an interrupted run, or a stack made when zones were chosen
    // by name) keeps that zone for the other.
    let mut placed: Vec<Option<Zone>> = (0..pairs)
        .map(|i| {
            existing
                .iter()
                .find(|s| {
                    has_tag(s.tags(), RESOURCE_TAG, &format!("subnet/public-{i}"))
                        || has_tag(s.tags(), RESOURCE_TAG, &format!("subnet/private-{i}"))
                })
                .map(|s| Zone {
                    name: s.availability_zone().unwrap_or_default().to_string(),
                    id: s.availability_zone_id().unwrap_or_default().to_string(),
                })
        })
        .collect();
    let mut refused: Vec<String> = Vec::new();
    let mut zones = assign(pairs, &candidates, &refused, &placed);
    let tiers = [
        ("public", r.spec.public_subnets.clone()),
        ("private", r.spec.private_subnets.clone()),
    ];
    for (tier, cidrs) in tiers {
        for (i, cidr) in cidrs.iter().enumerate() {
            let resource = format!("subnet/{tier}-{i}");
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
                None => loop {
                    let Some(zone) = zones.get(i).cloned().flatten() else {
                        return Err(ProvisionError::Conflict(format!(
                            "no available zone of {} takes new subnets for {resource} (refused: {})",
                            r.clients.region,
                            refused.join(", ")
                        )));
                    };
                    if !r.change(
                        &resource,
                        ChangeKind::Create,
                        format!("{tier} subnet {cidr} in {zone}"),
                        false,
                    ) {
                        break SubnetOut {
                            id: PLANNED.into(),
                            cidr: cidr.to_string(),
                            availability_zone: zone.name,
                        };
                    }
                    let tags = r.tags(ResourceType::Subnet, &resource);
                    // The VPC made a moment ago may not be known to every EC2 host yet.
                    let made =
                        crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                            ec2.create_subnet()
                                .vpc_id(&r.out.vpc_id)
                                .cidr_block(cidr.to_string())
                                .availability_zone_id(&zone.id)
                                .tag_specifications(tags.clone())
                                .send()
                                .await
                                .map_err(|e| aws_error(&resource, "CreateSubnet", e))
                        });
                    match made {
                        Ok(c) => {
                            if let Some(p) = placed.get_mut(i) {
                                *p = Some(zone.clone());
                            }
                            break SubnetOut {
                                id: c
                                    .subnet()
                                    .and_then(|s| s.subnet_id())
                                    .unwrap_or_default()
                                    .to_string(),
                                cidr: cidr.to_string(),
                                availability_zone: zone.name,
                            };
                        }
                        // A zone chosen for the spec is the spec's to change; one chosen
                        // here gives way to the next.
                        Err(e)
                            if zone_refused(&e)
                                && !pinned
                                && placed.get(i).is_some_and(Option::is_none) =>
                        {
                            (r.progress)(&format!(
                                "zone {zone} takes no new subnets; trying the next one"
                            ));
                            r.changes.pop();
                            refused.push(zone.id.clone());
                            zones = assign(pairs, &candidates, &refused, &placed);
                        }
                        Err(e) => return Err(e),
                    }
                },
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
