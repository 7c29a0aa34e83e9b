//! The Studio security group: HTTPS out to anywhere, NFS (EFS) and the JupyterServer–
//! KernelGateway ports only within the group, as VpcOnly Studio requires. Any other rule is
//! security drift that `up` removes. `down` deletes every group of the stack's VPCs but the
//! default, with those SageMaker made for the domain's EFS, once the interfaces holding them
//! are gone.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{IpPermission, IpRange, ResourceType, UserIdGroupPair};

use super::{every_page, filter, resource, Teardown, PLANNED};
use crate::aws::aws_error;
use crate::retry::Passing;
use crate::stack::{ChangeKind, Reconciler};
use crate::ProvisionError;

resource!(SecurityGroup, "security-group");

/// One security-group rule, normalised: (direction, protocol, from, to, target), the target
/// written `cidr:`, `cidr6:`, `sg:` or `pl:` and its value.
pub type Rule = (&'static str, String, i32, i32, String);

/// The rules of a group's permissions in one direction, one per target.
pub fn rules_of(direction: &'static str, perms: &[IpPermission]) -> BTreeSet<Rule> {
    let mut out = BTreeSet::new();
    for p in perms {
        let proto = p.ip_protocol().unwrap_or("-1").to_string();
        let (from, to) = if proto == "-1" {
            (-1, -1)
        } else {
            (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1))
        };
        let targets = p
            .ip_ranges()
            .iter()
            .map(|r| format!("cidr:{}", r.cidr_ip().unwrap_or("")))
            .chain(
                p.ipv6_ranges()
                    .iter()
                    .map(|r| format!("cidr6:{}", r.cidr_ipv6().unwrap_or(""))),
            )
            .chain(
                p.user_id_group_pairs()
                    .iter()
                    .map(|g| format!("sg:{}", g.group_id().unwrap_or(""))),
            )
            .chain(
                p.prefix_list_ids()
                    .iter()
                    .map(|l| format!("pl:{}", l.prefix_list_id().unwrap_or(""))),
            );
        for target in targets {
            out.insert((direction, proto.clone(), from, to, target));
        }
    }
    out
}

/// The permission that grants exactly `rule`.
pub fn permission(rule: &Rule) -> IpPermission {
    let (_, proto, from, to, target) = rule;
    let mut b = IpPermission::builder().ip_protocol(proto);
    if proto != "-1" {
        b = b.from_port(*from).to_port(*to);
    }
    if let Some(c) = target.strip_prefix("cidr:") {
        b = b.ip_ranges(IpRange::builder().cidr_ip(c).build());
    } else if let Some(c) = target.strip_prefix("cidr6:") {
        b = b.ipv6_ranges(
            aws_sdk_ec2::types::Ipv6Range::builder()
                .cidr_ipv6(c)
                .build(),
        );
    } else if let Some(g) = target.strip_prefix("sg:") {
        b = b.user_id_group_pairs(UserIdGroupPair::builder().group_id(g).build());
    } else if let Some(p) = target.strip_prefix("pl:") {
        b = b.prefix_list_ids(
            aws_sdk_ec2::types::PrefixListId::builder()
                .prefix_list_id(p)
                .build(),
        );
    }
    b.build()
}

/// The Studio security group's rules.
pub fn desired_rules(sg: &str) -> BTreeSet<Rule> {
    let own = format!("sg:{sg}");
    BTreeSet::from([
        ("egress", "tcp".into(), 443, 443, "cidr:0.0.0.0/0".into()),
        ("egress", "tcp".into(), 2049, 2049, own.clone()),
        ("egress", "tcp".into(), 8192, 65535, own.clone()),
        ("ingress", "tcp".into(), 2049, 2049, own.clone()),
        ("ingress", "tcp".into(), 8192, 65535, own),
    ])
}

/// A rule as people read one: "egress rule tcp 443 to pl:pl-63a5400a", "egress rule all
/// traffic to cidr:0.0.0.0/0" (EC2 writes protocol -1 and ports -1 for "all").
fn describe(rule: &Rule) -> String {
    let what = match (rule.1.as_str(), rule.2, rule.3) {
        ("-1", _, _) => "all traffic".to_string(),
        (proto, from, to) if from == to => format!("{proto} {from}"),
        (proto, from, to) => format!("{proto} {from}-{to}"),
    };
    let direction = if rule.0 == "egress" { "to" } else { "from" };
    format!("{} rule {what} {direction} {}", rule.0, rule.4)
}

/// Revokes these permissions of a group (both directions): what `down` does before deleting
/// a group another group's rules refer to, and what keeps the default group empty.
pub async fn revoke(
    ec2: &aws_sdk_ec2::Client,
    resource: &str,
    group: &str,
    ingress: Vec<IpPermission>,
    egress: Vec<IpPermission>,
) -> Result<(), ProvisionError> {
    if !ingress.is_empty() {
        ec2.revoke_security_group_ingress()
            .group_id(group)
            .set_ip_permissions(Some(ingress))
            .send()
            .await
            .map_err(|e| aws_error(resource, "RevokeSecurityGroupIngress", e))?;
    }
    if !egress.is_empty() {
        ec2.revoke_security_group_egress()
            .group_id(group)
            .set_ip_permissions(Some(egress))
            .send()
            .await
            .map_err(|e| aws_error(resource, "RevokeSecurityGroupEgress", e))?;
    }
    Ok(())
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    let ec2 = r.clients.ec2.clone();
    let existing = if r.out.vpc_id == PLANNED {
        None
    } else {
        every_page!(
            ec2.describe_security_groups()
                .filters(filter("vpc-id", &r.out.vpc_id))
                .filters(r.stack_filter()),
            "security-group",
            "DescribeSecurityGroups"
        )?
        .into_iter()
        .next()
    };
    let (id, current) = match existing {
        Some(g) => {
            let mut rules = rules_of("egress", g.ip_permissions_egress());
            rules.extend(rules_of("ingress", g.ip_permissions()));
            (g.group_id().unwrap_or_default().to_string(), rules)
        }
        None => {
            if !r.change(
                "security-group",
                ChangeKind::Create,
                "Studio security group: HTTPS out; NFS and 8192-65535 within the group",
                false,
            ) {
                r.out.security_group_id = PLANNED.into();
                return Ok(());
            }
            let tags = r.tags(ResourceType::SecurityGroup, "security-group");
            let name = r.name("studio");
            let c = crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                ec2.create_security_group()
                    .group_name(&name)
                    .vpc_id(&r.out.vpc_id)
                    .description(
                        "SageMaker Studio: HTTPS egress only; NFS and kernel ports within the group",
                    )
                    .tag_specifications(tags.clone())
                    .send()
                    .await
                    .map_err(|e| aws_error("security-group", "CreateSecurityGroup", e))
            })?;
            let id = c.group_id().unwrap_or_default().to_string();
            // A new group allows all egress; the rule comes back on describe and is revoked
            // below. Right after create, EC2 may not know the group yet.
            let g = crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                ec2.describe_security_groups()
                    .group_ids(&id)
                    .send()
                    .await
                    .map_err(|e| aws_error("security-group", "DescribeSecurityGroups", e))
            })?;
            let mut rules = BTreeSet::new();
            if let Some(g) = g.security_groups().first() {
                rules = rules_of("egress", g.ip_permissions_egress());
                rules.extend(rules_of("ingress", g.ip_permissions()));
            }
            (id, rules)
        }
    };
    r.out.security_group_id = id.clone();
    let desired = desired_rules(&id);
    for extra in current.difference(&desired) {
        if !r.change(
            "security-group",
            ChangeKind::Update,
            format!("remove {}", describe(extra)),
            true,
        ) {
            continue;
        }
        let (ingress, egress) = if extra.0 == "egress" {
            (vec![], vec![permission(extra)])
        } else {
            (vec![permission(extra)], vec![])
        };
        crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
            revoke(&ec2, "security-group", &id, ingress.clone(), egress.clone()).await
        })?;
    }
    for missing in desired.difference(&current) {
        if !r.change(
            "security-group",
            ChangeKind::Update,
            format!("add {}", describe(missing)),
            false,
        ) {
            continue;
        }
        if missing.0 == "egress" {
            crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                ec2.authorize_security_group_egress()
                    .group_id(&id)
                    .ip_permissions(permission(missing))
                    .send()
                    .await
                    .map_err(|e| aws_error("security-group", "AuthorizeSecurityGroupEgress", e))
            })?;
        } else {
            crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                ec2.authorize_security_group_ingress()
                    .group_id(&id)
                    .ip_permissions(permission(missing))
                    .send()
                    .await
                    .map_err(|e| aws_error("security-group", "AuthorizeSecurityGroupIngress", e))
            })?;
        }
    }
    Ok(())
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let ec2 = t.clients.ec2.clone();
    for vpc in t.vpc_ids.clone() {
        // The interfaces Studio left, which held these groups, went just before
        // (studio_leftovers.rs). Ours and those SageMaker made in the VPC, all but the default (which goes with it).
        let groups: Vec<_> = every_page!(
            ec2.describe_security_groups()
                .filters(filter("vpc-id", &vpc)),
            "security-group",
            "DescribeSecurityGroups"
        )?
        .into_iter()
        .filter(|g| g.group_name() != Some("default"))
        .collect();
        if t.live() {
            // Rules that refer to another group block its deletion: cleared first.
            for g in &groups {
                if let Some(id) = g.group_id() {
                    revoke(
                        &ec2,
                        "security-group",
                        id,
                        g.ip_permissions().to_vec(),
                        g.ip_permissions_egress().to_vec(),
                    )
                    .await?;
                }
            }
        }
        for id in groups.iter().filter_map(|g| g.group_id()) {
            // Interfaces of a deleted domain take a while to let go of their groups.
            if t.live() {
                crate::retry_passing!(&[Passing::DependencyLeaving], &mut *t.progress, {
                    ec2.delete_security_group()
                        .group_id(id)
                        .send()
                        .await
                        .map_err(|e| aws_error("security-group", "DeleteSecurityGroup", e))
                })?;
            }
            t.say(format!("security-group {id}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_round_trip_through_rules() {
        for rule in desired_rules("sg-1")
            .into_iter()
            .chain([("egress", "-1".to_string(), -1, -1, "cidr6:::/0".to_string())])
            .chain([("egress", "tcp".into(), 443, 443, "pl:pl-63a5400a".into())])
        {
            let back = rules_of(rule.0, &[permission(&rule)]);
            assert_eq!(back, BTreeSet::from([rule]));
        }
    }

    #[test]
    fn a_widened_group_shows_the_extra_rule_and_the_missing_one() {
        // AWS's default egress rule in place of HTTPS: everything out.
        let current = rules_of(
            "egress",
            &[IpPermission::builder()
                .ip_protocol("-1")
                .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
                .build()],
        );
        let desired = desired_rules("sg-1");
        let extra: Vec<_> = current.difference(&desired).map(describe).collect();
        assert_eq!(extra, ["egress rule all traffic to cidr:0.0.0.0/0"]);
        assert_eq!(desired.difference(&current).count(), 5);
    }
}
