//! The private subnets' network ACL: the HTTPS-only egress of the security group, enforced a
//! second time at the subnet, so one widened security-group rule (or an interface placed in
//! another group) does not open a way out. Network ACLs are stateless: return traffic of
//! outbound HTTPS comes back to ephemeral ports. Traffic within the VPC is left to the
//! security groups (NFS, Studio's kernel ports), and AWS does not filter DNS, DHCP, instance
//! metadata or time sync with network ACLs at all (VPC user guide, "Network ACL basics").
//!
//! A private subnet associated with any other ACL (the VPC's default one allows everything)
//! is security drift, as is an entry that allows more than the spec.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{NetworkAcl as AwsNetworkAcl, PortRange, ResourceType, RuleAction};

use super::{every_page, filter, has_tag, resource, Teardown, PLANNED};
use crate::aws::aws_error;
use crate::retry::Passing;
use crate::stack::{ChangeKind, Reconciler, RESOURCE_TAG};
use crate::ProvisionError;

resource!(NetworkAcl, "network-acl");

const RESOURCE: &str = "network-acl/private";
/// The rule number of the deny-everything entry every ACL ends with; AWS manages it.
const CATCH_ALL: i32 = 32767;

/// One ACL entry, normalised: (egress, rule number, protocol, allow, IPv4 or IPv6 range,
/// first port, last port). The protocol is IANA's number as AWS writes it ("-1" for all).
pub type Entry = (bool, i32, String, bool, String, i32, i32);

/// The private subnets' entries for a VPC of `vpc_cidr`.
pub fn desired_entries(vpc_cidr: &str) -> BTreeSet<Entry> {
    let all = |egress, cidr: &str| (egress, 100, "-1".to_string(), true, cidr.to_string(), 0, 0);
    BTreeSet::from([
        all(true, vpc_cidr),
        (true, 110, "6".into(), true, "0.0.0.0/0".into(), 443, 443),
        all(false, vpc_cidr),
        (
            false,
            110,
            "6".into(),
            true,
            "0.0.0.0/0".into(),
            1024,
            65535,
        ),
    ])
}

/// The ACL's entries but AWS's own catch-all ones.
pub fn entries_of(acl: &AwsNetworkAcl) -> BTreeSet<Entry> {
    acl.entries()
        .iter()
        .filter(|e| e.rule_number().is_some_and(|n| n < CATCH_ALL))
        .map(|e| {
            let proto = e.protocol().unwrap_or("-1").to_string();
            let (from, to) = match (proto.as_str(), e.port_range()) {
                ("-1", _) | (_, None) => (0, 0),
                (_, Some(p)) => (p.from().unwrap_or(0), p.to().unwrap_or(0)),
            };
            (
                e.egress().unwrap_or(false),
                e.rule_number().unwrap_or(0),
                proto,
                e.rule_action() == Some(&RuleAction::Allow),
                e.cidr_block()
                    .or(e.ipv6_cidr_block())
                    .unwrap_or_default()
                    .to_string(),
                from,
                to,
            )
        })
        .collect()
}

fn describe(e: &Entry) -> String {
    let (egress, n, proto, allow, cidr, from, to) = e;
    let proto = match proto.as_str() {
        "-1" => "all".to_string(),
        "6" => format!("tcp {from}-{to}"),
        "17" => format!("udp {from}-{to}"),
        other => format!("protocol {other}"),
    };
    format!(
        "{} rule {n}: {} {proto} {} {cidr}",
        if *egress { "egress" } else { "ingress" },
        if *allow { "allow" } else { "deny" },
        if *egress { "to" } else { "from" },
    )
}

/// What to do to bring the entries to the spec: (entries to remove, entries to add). An entry
/// whose rule number is taken by another is replaced: removed, then added.
pub fn entry_changes(
    current: &BTreeSet<Entry>,
    desired: &BTreeSet<Entry>,
) -> (Vec<Entry>, Vec<Entry>) {
    (
        current.difference(desired).cloned().collect(),
        desired.difference(current).cloned().collect(),
    )
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    if r.out.vpc_id == PLANNED {
        r.change(
            RESOURCE,
            ChangeKind::Create,
            "network ACL of the private subnets: HTTPS out, replies in, anything within the VPC",
            false,
        );
        return Ok(());
    }
    let ec2 = r.clients.ec2.clone();
    let acls = every_page!(
        ec2.describe_network_acls()
            .filters(filter("vpc-id", &r.out.vpc_id)),
        RESOURCE,
        "DescribeNetworkAcls"
    )?;
    let existing = acls.iter().find(|a| {
        has_tag(a.tags(), RESOURCE_TAG, RESOURCE)
            && has_tag(a.tags(), crate::stack::STACK_TAG, &r.stack)
    });
    let (id, current, existed) = match existing {
        Some(a) => (
            a.network_acl_id().unwrap_or_default().to_string(),
            entries_of(a),
            true,
        ),
        None => {
            if !r.change(
                RESOURCE,
                ChangeKind::Create,
                "network ACL of the private subnets: HTTPS out, replies in, anything within the VPC",
                false,
            ) {
                return Ok(());
            }
            let tags = r.tags(ResourceType::NetworkAcl, RESOURCE);
            let created = crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                ec2.create_network_acl()
                    .vpc_id(&r.out.vpc_id)
                    .tag_specifications(tags.clone())
                    .send()
                    .await
                    .map_err(|e| aws_error(RESOURCE, "CreateNetworkAcl", e))
            })?;
            let id = created
                .network_acl()
                .and_then(|a| a.network_acl_id())
                .unwrap_or_default()
                .to_string();
            (id, BTreeSet::new(), false)
        }
    };
    let (remove, add) = entry_changes(&current, &desired_entries(&r.out.vpc_cidr));
    for e in &remove {
        // Removing an allow narrows nothing the spec wants open; it closes a way out.
        if r.change(
            RESOURCE,
            ChangeKind::Update,
            format!("remove {}", describe(e)),
            e.3,
        ) {
            ec2.delete_network_acl_entry()
                .network_acl_id(&id)
                .egress(e.0)
                .rule_number(e.1)
                .send()
                .await
                .map_err(|e| aws_error(RESOURCE, "DeleteNetworkAclEntry", e))?;
        }
    }
    for e in &add {
        if r.change(
            RESOURCE,
            if existed {
                ChangeKind::Update
            } else {
                ChangeKind::Create
            },
            format!("add {}", describe(e)),
            false,
        ) {
            // The ACL may have been made a moment ago.
            crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                let req = ec2
                    .create_network_acl_entry()
                    .network_acl_id(&id)
                    .egress(e.0)
                    .rule_number(e.1)
                    .protocol(&e.2)
                    .rule_action(if e.3 {
                        RuleAction::Allow
                    } else {
                        RuleAction::Deny
                    })
                    .cidr_block(&e.4);
                let req = if e.2 == "-1" {
                    req
                } else {
                    req.port_range(PortRange::builder().from(e.5).to(e.6).build())
                };
                req.send()
                    .await
                    .map_err(|e| aws_error(RESOURCE, "CreateNetworkAclEntry", e))
            })?;
        }
    }
    // Every subnet is associated with exactly one ACL (the VPC's default unless told): the
    // association is moved, never added.
    for subnet in r
        .out
        .private_subnets
        .iter()
        .map(|s| s.id.clone())
        .collect::<Vec<_>>()
    {
        let held = acls.iter().find_map(|a| {
            a.associations()
                .iter()
                .find(|s| s.subnet_id() == Some(subnet.as_str()))
                .map(|s| {
                    (
                        a.network_acl_id().unwrap_or_default().to_string(),
                        s.network_acl_association_id()
                            .unwrap_or_default()
                            .to_string(),
                        a.is_default() == Some(true),
                    )
                })
        });
        let Some((acl, association, default)) = held else {
            continue;
        };
        if acl == id {
            continue;
        }
        let detail = format!(
            "subnet {subnet} uses network ACL {acl}{}; move it to the stack's",
            if default {
                " (the VPC's default, which allows everything)"
            } else {
                ""
            }
        );
        if r.change(RESOURCE, ChangeKind::Update, detail, existed) {
            crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                ec2.replace_network_acl_association()
                    .association_id(&association)
                    .network_acl_id(&id)
                    .send()
                    .await
                    .map_err(|e| aws_error(RESOURCE, "ReplaceNetworkAclAssociation", e))
            })?;
        }
    }
    Ok(())
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let ec2 = t.clients.ec2.clone();
    for vpc in t.vpc_ids.clone() {
        let acls = every_page!(
            ec2.describe_network_acls().filters(filter("vpc-id", &vpc)),
            "network-acl",
            "DescribeNetworkAcls"
        )?;
        let default = acls
            .iter()
            .find(|a| a.is_default() == Some(true))
            .and_then(|a| a.network_acl_id())
            .map(String::from);
        for acl in acls.iter().filter(|a| a.is_default() != Some(true)) {
            let Some(id) = acl.network_acl_id() else {
                continue;
            };
            if t.live() {
                // An ACL in use cannot be deleted: its subnets go back to the default first.
                for association in acl
                    .associations()
                    .iter()
                    .filter_map(|a| a.network_acl_association_id())
                {
                    if let Some(default) = &default {
                        ec2.replace_network_acl_association()
                            .association_id(association)
                            .network_acl_id(default)
                            .send()
                            .await
                            .map_err(|e| {
                                aws_error("network-acl", "ReplaceNetworkAclAssociation", e)
                            })?;
                    }
                }
                ec2.delete_network_acl()
                    .network_acl_id(id)
                    .send()
                    .await
                    .map_err(|e| aws_error("network-acl", "DeleteNetworkAcl", e))?;
            }
            t.say(format!("network-acl {id}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::NetworkAclEntry;

    fn entry(
        egress: bool,
        n: i32,
        proto: &str,
        allow: bool,
        cidr: &str,
        ports: Option<(i32, i32)>,
    ) -> NetworkAclEntry {
        let b = NetworkAclEntry::builder()
            .egress(egress)
            .rule_number(n)
            .protocol(proto)
            .rule_action(if allow {
                RuleAction::Allow
            } else {
                RuleAction::Deny
            })
            .cidr_block(cidr);
        match ports {
            Some((from, to)) => b
                .port_range(PortRange::builder().from(from).to(to).build())
                .build(),
            None => b.build(),
        }
    }

    fn acl(entries: Vec<NetworkAclEntry>) -> AwsNetworkAcl {
        AwsNetworkAcl::builder().set_entries(Some(entries)).build()
    }

    #[test]
    fn the_spec_read_back_from_aws_has_no_changes_and_ignores_the_catch_all() {
        let a = acl(vec![
            entry(true, 100, "-1", true, "10.0.0.0/16", None),
            entry(true, 110, "6", true, "0.0.0.0/0", Some((443, 443))),
            entry(false, 100, "-1", true, "10.0.0.0/16", None),
            entry(false, 110, "6", true, "0.0.0.0/0", Some((1024, 65535))),
            entry(true, CATCH_ALL, "-1", false, "0.0.0.0/0", None),
            entry(false, CATCH_ALL, "-1", false, "0.0.0.0/0", None),
        ]);
        let (remove, add) = entry_changes(&entries_of(&a), &desired_entries("10.0.0.0/16"));
        assert!(remove.is_empty() && add.is_empty(), "{remove:?} {add:?}");
    }

    #[test]
    fn a_widened_entry_is_replaced_and_an_extra_allow_removed() {
        let a = acl(vec![
            entry(true, 100, "-1", true, "10.0.0.0/16", None),
            // Everything out in place of HTTPS.
            entry(true, 110, "-1", true, "0.0.0.0/0", None),
            entry(true, 120, "17", true, "0.0.0.0/0", Some((53, 53))),
            entry(false, 100, "-1", true, "10.0.0.0/16", None),
            entry(false, 110, "6", true, "0.0.0.0/0", Some((1024, 65535))),
        ]);
        let (remove, add) = entry_changes(&entries_of(&a), &desired_entries("10.0.0.0/16"));
        let remove: Vec<_> = remove.iter().map(describe).collect();
        let add: Vec<_> = add.iter().map(describe).collect();
        assert_eq!(
            remove,
            [
                "egress rule 110: allow all to 0.0.0.0/0",
                "egress rule 120: allow udp 53-53 to 0.0.0.0/0"
            ]
        );
        assert_eq!(add, ["egress rule 110: allow tcp 443-443 to 0.0.0.0/0"]);
    }
}
