//! The VPC's default security group, kept empty: it allows all egress and all traffic within
//! itself, and anything attached to it by default (an interface made without naming a group)
//! would get that (CIS AWS Foundations Benchmark: the default group restricts all traffic).
//! AWS deletes it with the VPC.

use super::security_group::revoke;
use super::{every_page, filter, resource, Teardown, PLANNED};
use crate::stack::{ChangeKind, Reconciler};
use crate::ProvisionError;

resource!(DefaultSecurityGroup, "default-security-group");

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    if r.out.vpc_id == PLANNED {
        return Ok(());
    }
    let ec2 = r.clients.ec2.clone();
    let found = every_page!(
        ec2.describe_security_groups()
            .filters(filter("vpc-id", &r.out.vpc_id))
            .filters(filter("group-name", "default")),
        "default-security-group",
        "DescribeSecurityGroups"
    )?;
    let Some(g) = found.first() else {
        return Ok(());
    };
    let id = g.group_id().unwrap_or_default().to_string();
    let (ingress, egress) = (
        g.ip_permissions().to_vec(),
        g.ip_permissions_egress().to_vec(),
    );
    if ingress.is_empty() && egress.is_empty() {
        return Ok(());
    }
    let detail = format!(
        "remove the {} rule(s) of the VPC's default security group {id}: it must allow nothing",
        ingress.len() + egress.len()
    );
    if r.change("default-security-group", ChangeKind::Update, detail, true) {
        revoke(&ec2, "default-security-group", &id, ingress, egress).await?;
    }
    Ok(())
}

async fn delete(_: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    Ok(())
}
