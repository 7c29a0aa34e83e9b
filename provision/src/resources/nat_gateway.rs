//! The NAT gateways (one, or one per zone) and their Elastic IPs: the only way out of the
//! private subnets, and the interface every NAT flow is logged on. Also the gateways and
//! addresses a spec no longer has (after `nat-gateway-per-az` is switched off), retired once
//! no route points at them: each costs money for nothing, and a NAT gateway nobody routes to
//! is an egress path nobody watches for.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{DomainType, NatGateway, ResourceType};

use super::{every_page, filter, has_tag, Resource, Step, Teardown, PLANNED};
use crate::aws::{aws_error, Clients};
use crate::retry::Passing;
use crate::stack::{ChangeKind, NatOut, Reconciler, RESOURCE_TAG, STACK_TAG};
use crate::ProvisionError;

pub struct NatGateways;

impl Resource for NatGateways {
    fn name(&self) -> &'static str {
        "nat-gateway"
    }
    fn reconcile<'a>(&'a self, r: &'a mut Reconciler<'_>) -> Step<'a> {
        Box::pin(reconcile(r))
    }
    fn delete<'a>(&'a self, t: &'a mut Teardown<'_>) -> Step<'a> {
        Box::pin(delete(t))
    }
}

/// The gateways and addresses of zones the spec no longer gives one.
pub struct RetiredNatGateways;

impl Resource for RetiredNatGateways {
    fn name(&self) -> &'static str {
        "retired nat-gateway"
    }
    fn reconcile<'a>(&'a self, r: &'a mut Reconciler<'_>) -> Step<'a> {
        Box::pin(retire(r))
    }
    fn delete<'a>(&'a self, _: &'a mut Teardown<'_>) -> Step<'a> {
        // `down` deletes every gateway of the VPC with [`NatGateways`].
        Box::pin(async { Ok(()) })
    }
}

fn is_live(n: &NatGateway) -> bool {
    !matches!(
        n.state().map(|s| s.as_str()),
        Some("deleted" | "deleting" | "failed")
    )
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    let count = if r.spec.nat_gateway_per_az {
        r.spec.zones()
    } else {
        1
    };
    let ec2 = r.clients.ec2.clone();
    let addresses = ec2
        .describe_addresses()
        .filters(r.stack_filter())
        .send()
        .await
        .map_err(|e| aws_error("elastic-ip", "DescribeAddresses", e))?
        .addresses()
        .to_vec();
    // NAT gateways cannot be filtered by tag reliably everywhere: by VPC here, then by tag.
    let nats = if r.out.vpc_id == PLANNED {
        vec![]
    } else {
        every_page!(
            ec2.describe_nat_gateways()
                .filter(filter("vpc-id", &r.out.vpc_id)),
            "nat-gateway",
            "DescribeNatGateways"
        )?
    };
    for i in 0..count {
        let eip_res = format!("eip/{i}");
        let nat_res = format!("nat-gateway/{i}");
        let Some(public) = r.out.public_subnets.get(i).cloned() else {
            break;
        };
        let allocation_id = match addresses
            .iter()
            .find(|a| has_tag(a.tags(), RESOURCE_TAG, &eip_res))
        {
            Some(a) => a.allocation_id().unwrap_or_default().to_string(),
            None if r.change(
                &eip_res,
                ChangeKind::Create,
                "Elastic IP for the NAT gateway",
                false,
            ) =>
            {
                ec2.allocate_address()
                    .domain(DomainType::Vpc)
                    .tag_specifications(r.tags(ResourceType::ElasticIp, &eip_res))
                    .send()
                    .await
                    .map_err(|e| aws_error(&eip_res, "AllocateAddress", e))?
                    .allocation_id()
                    .unwrap_or_default()
                    .to_string()
            }
            None => PLANNED.to_string(),
        };
        let live = nats.iter().find(|n| {
            has_tag(n.tags(), RESOURCE_TAG, &nat_res)
                && has_tag(n.tags(), STACK_TAG, &r.stack)
                && is_live(n)
        });
        let nat_id = match live {
            Some(n) => n.nat_gateway_id().unwrap_or_default().to_string(),
            None => {
                if !r.change(
                    &nat_res,
                    ChangeKind::Create,
                    format!("NAT gateway in {}", public.availability_zone),
                    false,
                ) {
                    r.out.nat_gateways.push(NatOut {
                        id: PLANNED.into(),
                        subnet_id: public.id,
                        allocation_id,
                        ..NatOut::default()
                    });
                    continue;
                }
                // The subnet and the address may have been made a moment ago.
                let tags = r.tags(ResourceType::Natgateway, &nat_res);
                crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                    ec2.create_nat_gateway()
                        .subnet_id(&public.id)
                        .allocation_id(&allocation_id)
                        .tag_specifications(tags.clone())
                        .send()
                        .await
                        .map_err(|e| aws_error(&nat_res, "CreateNatGateway", e))
                })?
                .nat_gateway()
                .and_then(|n| n.nat_gateway_id())
                .unwrap_or_default()
                .to_string()
            }
        };
        let nat = wait_available(r, &nat_id, &nat_res).await?;
        let addr = nat.nat_gateway_addresses().first();
        r.out.nat_gateways.push(NatOut {
            id: nat_id,
            subnet_id: public.id,
            network_interface_id: addr
                .and_then(|a| a.network_interface_id())
                .unwrap_or_default()
                .into(),
            private_ip: addr.and_then(|a| a.private_ip()).unwrap_or_default().into(),
            public_ip: addr.and_then(|a| a.public_ip()).unwrap_or_default().into(),
            allocation_id,
        });
    }
    Ok(())
}

async fn wait_available(
    r: &mut Reconciler<'_>,
    id: &str,
    resource: &str,
) -> Result<NatGateway, ProvisionError> {
    let started = Instant::now();
    let mut delay = Duration::from_secs(2);
    let ec2 = r.clients.ec2.clone();
    loop {
        // Right after create, EC2 may not know the gateway yet.
        let got = crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
            ec2.describe_nat_gateways()
                .nat_gateway_ids(id)
                .send()
                .await
                .map_err(|e| aws_error(resource, "DescribeNatGateways", e))
        })?;
        let nat =
            got.nat_gateways().first().cloned().ok_or_else(|| {
                ProvisionError::Unexpected(format!("{resource} {id} disappeared"))
            })?;
        match nat.state().map(|s| s.as_str()) {
            Some("available") => return Ok(nat),
            Some("failed") => {
                return Err(ProvisionError::Conflict(format!(
                    "{resource} {id} failed: {}",
                    nat.failure_message().unwrap_or("no reason given")
                )))
            }
            state => {
                if started.elapsed() > r.wait_timeout {
                    return Err(ProvisionError::Timeout {
                        resource: format!("{resource} {id}"),
                        waited: started.elapsed(),
                        state: state.unwrap_or("unknown").to_string(),
                    });
                }
                (r.progress)(&format!(
                    "waiting for {resource} {id} ({}, {}s)",
                    state.unwrap_or("pending"),
                    started.elapsed().as_secs()
                ));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(15));
            }
        }
    }
}

async fn retire(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    if r.out.vpc_id == PLANNED {
        return Ok(());
    }
    let ec2 = r.clients.ec2.clone();
    let wanted: Vec<String> = r.out.nat_gateways.iter().map(|n| n.id.clone()).collect();
    let nats = every_page!(
        ec2.describe_nat_gateways()
            .filter(filter("vpc-id", &r.out.vpc_id)),
        "nat-gateway",
        "DescribeNatGateways"
    )?;
    for n in &nats {
        let id = n.nat_gateway_id().unwrap_or_default().to_string();
        if !is_live(n) || wanted.contains(&id) || !has_tag(n.tags(), STACK_TAG, &r.stack) {
            continue;
        }
        if r.change(
            "nat-gateway",
            ChangeKind::Delete,
            format!("NAT gateway {id}, which the spec no longer has"),
            false,
        ) {
            ec2.delete_nat_gateway()
                .nat_gateway_id(&id)
                .send()
                .await
                .map_err(|e| aws_error("nat-gateway", "DeleteNatGateway", e))?;
            wait_deleted(r.clients, &id, &mut *r.progress).await?;
        }
    }
    let wanted_eips: Vec<String> = r
        .out
        .nat_gateways
        .iter()
        .map(|n| n.allocation_id.clone())
        .collect();
    let eips = ec2
        .describe_addresses()
        .filters(r.stack_filter())
        .send()
        .await
        .map_err(|e| aws_error("elastic-ip", "DescribeAddresses", e))?;
    for id in eips.addresses().iter().filter_map(|a| a.allocation_id()) {
        if wanted_eips.iter().any(|w| w == id) {
            continue;
        }
        if r.change(
            "elastic-ip",
            ChangeKind::Delete,
            format!("Elastic IP {id}, which no NAT gateway of the spec uses"),
            false,
        ) {
            crate::retry_passing!(&[Passing::AddressStillHeld], &mut *r.progress, {
                ec2.release_address()
                    .allocation_id(id)
                    .send()
                    .await
                    .map_err(|e| aws_error("elastic-ip", "ReleaseAddress", e))
            })?;
        }
    }
    Ok(())
}

/// Waits until the gateway is `deleted` (or unknown): its address and interface are held
/// until then.
async fn wait_deleted(
    clients: &Clients,
    id: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ProvisionError> {
    let started = Instant::now();
    loop {
        let got = clients
            .ec2
            .describe_nat_gateways()
            .nat_gateway_ids(id)
            .send()
            .await
            .map_err(|e| aws_error("nat-gateway", "DescribeNatGateways", e))?;
        let state = got
            .nat_gateways()
            .first()
            .and_then(|n| n.state())
            .map(|s| s.as_str().to_string());
        if matches!(state.as_deref(), None | Some("deleted")) {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(15 * 60) {
            return Err(ProvisionError::Timeout {
                resource: format!("nat-gateway {id}"),
                waited: started.elapsed(),
                state: state.unwrap_or_default(),
            });
        }
        progress(&format!(
            "waiting for nat-gateway {id} to be deleted ({}s)",
            started.elapsed().as_secs()
        ));
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let ec2 = t.clients.ec2.clone();
    for vpc in t.vpc_ids.clone() {
        let nats = every_page!(
            ec2.describe_nat_gateways().filter(filter("vpc-id", &vpc)),
            "nat-gateway",
            "DescribeNatGateways"
        )?;
        for n in &nats {
            let state = n.state().map(|s| s.as_str()).unwrap_or_default();
            let Some(id) = n.nat_gateway_id() else {
                continue;
            };
            if state == "deleted" {
                continue;
            }
            if t.live() {
                if state != "deleting" {
                    ec2.delete_nat_gateway()
                        .nat_gateway_id(id)
                        .send()
                        .await
                        .map_err(|e| aws_error("nat-gateway", "DeleteNatGateway", e))?;
                }
                wait_deleted(t.clients, id, &mut *t.progress).await?;
            }
            t.say(format!("nat-gateway {id}"));
        }
    }
    // Addresses by tag: also those a crashed `up` allocated before its gateway existed.
    let eips = ec2
        .describe_addresses()
        .filters(t.tag_filter())
        .send()
        .await
        .map_err(|e| aws_error("elastic-ip", "DescribeAddresses", e))?;
    for id in eips.addresses().iter().filter_map(|a| a.allocation_id()) {
        // The address stays held for a while after its NAT gateway reports deleted.
        if t.live() {
            crate::retry_passing!(&[Passing::AddressStillHeld], &mut *t.progress, {
                ec2.release_address()
                    .allocation_id(id)
                    .send()
                    .await
                    .map_err(|e| aws_error("elastic-ip", "ReleaseAddress", e))
            })?;
        }
        t.say(format!("elastic-ip {id}"));
    }
    Ok(())
}
