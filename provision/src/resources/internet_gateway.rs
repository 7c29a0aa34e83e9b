//! The internet gateway of the public subnets (the NAT gateway's way out): found by the
//! stack's tag and attached to the VPC. `down` detaches whatever gateway is attached to the
//! stack's VPCs and deletes those carrying the stack's tag, including one a crashed `up` left
//! unattached.

use aws_sdk_ec2::types::ResourceType;

use super::{every_page, filter, resource, Teardown, PLANNED};
use crate::aws::aws_error;
use crate::retry::Passing;
use crate::stack::{ChangeKind, Reconciler};
use crate::ProvisionError;

resource!(InternetGateway, "internet-gateway");

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    let ec2 = r.clients.ec2.clone();
    let found = every_page!(
        ec2.describe_internet_gateways().filters(r.stack_filter()),
        "internet-gateway",
        "DescribeInternetGateways"
    )?;
    let (id, attached) = match found.first() {
        Some(g) => (
            g.internet_gateway_id().unwrap_or_default().to_string(),
            g.attachments()
                .iter()
                .any(|a| a.vpc_id() == Some(r.out.vpc_id.as_str())),
        ),
        None => {
            if !r.change(
                "internet-gateway",
                ChangeKind::Create,
                "internet gateway, attached to the VPC",
                false,
            ) {
                r.out.internet_gateway_id = PLANNED.into();
                return Ok(());
            }
            let c = ec2
                .create_internet_gateway()
                .tag_specifications(r.tags(ResourceType::InternetGateway, "internet-gateway"))
                .send()
                .await
                .map_err(|e| aws_error("internet-gateway", "CreateInternetGateway", e))?;
            let id = c
                .internet_gateway()
                .and_then(|g| g.internet_gateway_id())
                .unwrap_or_default()
                .to_string();
            (id, false)
        }
    };
    r.out.internet_gateway_id = id.clone();
    if !attached
        && r.change(
            "internet-gateway",
            ChangeKind::Update,
            "attach to the VPC",
            false,
        )
    {
        crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
            ec2.attach_internet_gateway()
                .internet_gateway_id(&id)
                .vpc_id(&r.out.vpc_id)
                .send()
                .await
                .map_err(|e| aws_error("internet-gateway", "AttachInternetGateway", e))
        })?;
    }
    Ok(())
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let ec2 = t.clients.ec2.clone();
    let mut gateways = every_page!(
        ec2.describe_internet_gateways().filters(t.tag_filter()),
        "internet-gateway",
        "DescribeInternetGateways"
    )?;
    let tagged: Vec<String> = gateways
        .iter()
        .filter_map(|g| g.internet_gateway_id().map(String::from))
        .collect();
    for vpc in &t.vpc_ids {
        for g in every_page!(
            ec2.describe_internet_gateways()
                .filters(filter("attachment.vpc-id", vpc)),
            "internet-gateway",
            "DescribeInternetGateways"
        )? {
            if !tagged
                .iter()
                .any(|id| Some(id.as_str()) == g.internet_gateway_id())
            {
                gateways.push(g);
            }
        }
    }
    for g in &gateways {
        let Some(id) = g.internet_gateway_id() else {
            continue;
        };
        let ours = tagged.iter().any(|t| t == id);
        for vpc in g.attachments().iter().filter_map(|a| a.vpc_id()) {
            // Another's gateway is only let go of the stack's VPC; ours from wherever it is.
            if !ours && !t.vpc_ids.iter().any(|v| v == vpc) {
                continue;
            }
            if t.live() {
                // A NAT gateway deleted a moment ago may still have its address mapped.
                crate::retry_passing!(&[Passing::DependencyLeaving], &mut *t.progress, {
                    ec2.detach_internet_gateway()
                        .internet_gateway_id(id)
                        .vpc_id(vpc)
                        .send()
                        .await
                        .map_err(|e| aws_error("internet-gateway", "DetachInternetGateway", e))
                })?;
            }
        }
        if ours {
            if t.live() {
                ec2.delete_internet_gateway()
                    .internet_gateway_id(id)
                    .send()
                    .await
                    .map_err(|e| aws_error("internet-gateway", "DeleteInternetGateway", e))?;
            }
            t.say(format!("internet-gateway {id}"));
        }
    }
    Ok(())
}
