//! The route tables: one public (0.0.0.0/0 to the internet gateway) for the public subnets, one
//! per private subnet (0.0.0.0/0 to its zone's NAT gateway). A private subnet moved to another
//! table, or a route to the internet past the NAT, is security drift: `up` moves the subnet back
//! (ReplaceRouteTableAssociation: AWS refuses a second association) and removes the route.

use aws_sdk_ec2::types::{ResourceType, Route};

use super::{every_page, filter, has_tag, resource, Teardown, PLANNED};
use crate::aws::aws_error;
use crate::retry::Passing;
use crate::stack::{ChangeKind, Reconciler, RESOURCE_TAG};
use crate::ProvisionError;

resource!(RouteTables, "route-tables");

/// Where a table's default route leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Gateway(String),
    Nat(String),
    Other,
}

impl Target {
    fn label(&self) -> String {
        match self {
            Target::Gateway(g) => format!("internet gateway {g}"),
            Target::Nat(n) => format!("NAT gateway {n}"),
            Target::Other => "something else".into(),
        }
    }
}

/// Where the table's 0.0.0.0/0 route leads, if it has one.
pub fn default_route(routes: &[Route]) -> Option<Target> {
    let r = routes
        .iter()
        .find(|r| r.destination_cidr_block() == Some("0.0.0.0/0"))?;
    Some(match (r.gateway_id(), r.nat_gateway_id()) {
        (_, Some(n)) => Target::Nat(n.to_string()),
        (Some(g), _) => Target::Gateway(g.to_string()),
        _ => Target::Other,
    })
}

/// A route to the internet the spec does not have, as (IPv4 destination, IPv6 destination,
/// gateway): in a private table one to an internet gateway, in any table an IPv6 route to a
/// gateway. Either opens a path past the NAT and past the flow log's attribution. Routes to
/// peerings, transit gateways or VPNs are the owner's own integration and are left alone.
pub fn routes_past_the_nat(
    routes: &[Route],
    private: bool,
) -> Vec<(Option<String>, Option<String>, String)> {
    routes
        .iter()
        .filter_map(|r| {
            let gateway = r.gateway_id().unwrap_or("");
            let egress_only = r.egress_only_internet_gateway_id().unwrap_or("");
            let to_internet = gateway.starts_with("igw-") || egress_only.starts_with("eigw-");
            let v4 = r.destination_cidr_block();
            let v6 = r.destination_ipv6_cidr_block();
            if v4 == Some("0.0.0.0/0") || !to_internet || (!private && v6.is_none()) {
                return None;
            }
            let via = if gateway.is_empty() {
                egress_only
            } else {
                gateway
            };
            Some((v4.map(String::from), v6.map(String::from), via.to_string()))
        })
        .collect()
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    let ec2 = r.clients.ec2.clone();
    let tables = if r.out.vpc_id == PLANNED {
        vec![]
    } else {
        every_page!(
            ec2.describe_route_tables()
                .filters(filter("vpc-id", &r.out.vpc_id))
                .filters(r.stack_filter()),
            "route-tables",
            "DescribeRouteTables"
        )?
    };
    let mut plan: Vec<(String, Vec<String>, Target)> = vec![(
        "route-table/public".into(),
        r.out.public_subnets.iter().map(|s| s.id.clone()).collect(),
        Target::Gateway(r.out.internet_gateway_id.clone()),
    )];
    for (i, s) in r.out.private_subnets.iter().enumerate() {
        let nat = if r.spec.nat_gateway_per_az { i } else { 0 };
        let nat = r
            .out
            .nat_gateways
            .get(nat)
            .map(|n| n.id.clone())
            .unwrap_or_default();
        plan.push((
            format!("route-table/private-{i}"),
            vec![s.id.clone()],
            Target::Nat(nat),
        ));
    }
    for (resource, subnets, target) in plan {
        let private = resource.starts_with("route-table/private");
        let existing = tables
            .iter()
            .find(|t| has_tag(t.tags(), RESOURCE_TAG, &resource))
            .cloned();
        let (rt_id, routes, assocs) = match existing {
            Some(t) => (
                t.route_table_id().unwrap_or_default().to_string(),
                t.routes().to_vec(),
                t.associations().to_vec(),
            ),
            None => {
                if !r.change(
                    &resource,
                    ChangeKind::Create,
                    format!("route table, 0.0.0.0/0 -> {}", target.label()),
                    false,
                ) {
                    continue;
                }
                let tags = r.tags(ResourceType::RouteTable, &resource);
                let c = crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                    ec2.create_route_table()
                        .vpc_id(&r.out.vpc_id)
                        .tag_specifications(tags.clone())
                        .send()
                        .await
                        .map_err(|e| aws_error(&resource, "CreateRouteTable", e))
                })?;
                let id = c
                    .route_table()
                    .and_then(|t| t.route_table_id())
                    .unwrap_or_default()
                    .to_string();
                (id, vec![], vec![])
            }
        };
        if private {
            r.private_route_tables.push(rt_id.clone());
        }
        let current = default_route(&routes);
        if current.as_ref() != Some(&target) {
            let detail = match &current {
                Some(c) => format!(
                    "point 0.0.0.0/0 at {} instead of {}",
                    target.label(),
                    c.label()
                ),
                None => format!("route 0.0.0.0/0 -> {}", target.label()),
            };
            if r.change(&resource, ChangeKind::Update, detail, current.is_some()) {
                // The table, the NAT gateway or the internet gateway may have been made a
                // moment ago.
                if current.is_some() {
                    crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                        let req = ec2
                            .replace_route()
                            .route_table_id(&rt_id)
                            .destination_cidr_block("0.0.0.0/0");
                        let req = match &target {
                            Target::Nat(n) => req.nat_gateway_id(n),
                            Target::Gateway(g) => req.gateway_id(g),
                            Target::Other => req,
                        };
                        req.send()
                            .await
                            .map_err(|e| aws_error(&resource, "ReplaceRoute", e))
                    })?;
                } else {
                    crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                        let req = ec2
                            .create_route()
                            .route_table_id(&rt_id)
                            .destination_cidr_block("0.0.0.0/0");
                        let req = match &target {
                            Target::Nat(n) => req.nat_gateway_id(n),
                            Target::Gateway(g) => req.gateway_id(g),
                            Target::Other => req,
                        };
                        req.send()
                            .await
                            .map_err(|e| aws_error(&resource, "CreateRoute", e))
                    })?;
                }
            }
        }
        for (v4, v6, via) in routes_past_the_nat(&routes, private) {
            let destination = v4.as_deref().or(v6.as_deref()).unwrap_or("?");
            let detail =
                format!("remove route {destination} -> {via}: a way to the internet past the NAT");
            if r.change(&resource, ChangeKind::Update, detail, true) {
                ec2.delete_route()
                    .route_table_id(&rt_id)
                    .set_destination_cidr_block(v4)
                    .set_destination_ipv6_cidr_block(v6)
                    .send()
                    .await
                    .map_err(|e| aws_error(&resource, "DeleteRoute", e))?;
            }
        }
        for subnet in subnets {
            let associated = assocs
                .iter()
                .any(|a| a.subnet_id() == Some(subnet.as_str()));
            if associated || rt_id.is_empty() {
                continue;
            }
            // A subnet has at most one explicit association: one with another table must be
            // moved (ReplaceRouteTableAssociation); AWS refuses AssociateRouteTable then.
            let elsewhere = every_page!(
                ec2.describe_route_tables()
                    .filters(filter("association.subnet-id", &subnet)),
                &resource,
                "DescribeRouteTables"
            )?
            .iter()
            .find_map(|t| {
                let a = t
                    .associations()
                    .iter()
                    .find(|a| a.subnet_id() == Some(subnet.as_str()))?;
                let to_internet = t
                    .routes()
                    .iter()
                    .any(|r| r.gateway_id().is_some_and(|g| g.starts_with("igw-")));
                Some((
                    t.route_table_id().unwrap_or_default().to_string(),
                    a.route_table_association_id()?.to_string(),
                    to_internet,
                ))
            });
            match elsewhere {
                Some((other, association, to_internet)) => {
                    // A private subnet routed anywhere but its NAT table leaves the monitored
                    // path; through an internet gateway it is reachable too.
                    let detail = format!(
                        "subnet {subnet} is associated with route table {other}{}; move it back",
                        if to_internet {
                            ", which routes to an internet gateway"
                        } else {
                            ""
                        }
                    );
                    if r.change(&resource, ChangeKind::Update, detail, private) {
                        crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                            ec2.replace_route_table_association()
                                .association_id(&association)
                                .route_table_id(&rt_id)
                                .send()
                                .await
                                .map_err(|e| {
                                    aws_error(&resource, "ReplaceRouteTableAssociation", e)
                                })
                        })?;
                    }
                }
                None => {
                    if r.change(
                        &resource,
                        ChangeKind::Update,
                        format!("associate subnet {subnet}"),
                        false,
                    ) {
                        crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                            ec2.associate_route_table()
                                .route_table_id(&rt_id)
                                .subnet_id(&subnet)
                                .send()
                                .await
                                .map_err(|e| aws_error(&resource, "AssociateRouteTable", e))
                        })?;
                    }
                }
            }
        }
    }
    Ok(())
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let ec2 = t.clients.ec2.clone();
    for vpc in t.vpc_ids.clone() {
        let tables = every_page!(
            ec2.describe_route_tables().filters(filter("vpc-id", &vpc)),
            "route-table",
            "DescribeRouteTables"
        )?;
        // Every table but the VPC's main one, which goes with the VPC.
        for rt in tables
            .iter()
            .filter(|rt| !rt.associations().iter().any(|a| a.main() == Some(true)))
        {
            let Some(id) = rt.route_table_id() else {
                continue;
            };
            if t.live() {
                for aid in rt
                    .associations()
                    .iter()
                    .filter_map(|a| a.route_table_association_id())
                {
                    ec2.disassociate_route_table()
                        .association_id(aid)
                        .send()
                        .await
                        .map_err(|e| aws_error("route-table", "DisassociateRouteTable", e))?;
                }
                ec2.delete_route_table()
                    .route_table_id(id)
                    .send()
                    .await
                    .map_err(|e| aws_error("route-table", "DeleteRouteTable", e))?;
            }
            t.say(format!("route-table {id}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(dest: &str, gateway: &str) -> Route {
        let b = Route::builder();
        let b = if dest.contains(':') {
            b.destination_ipv6_cidr_block(dest)
        } else {
            b.destination_cidr_block(dest)
        };
        if gateway.starts_with("nat-") {
            b.nat_gateway_id(gateway).build()
        } else if gateway.starts_with("eigw-") {
            b.egress_only_internet_gateway_id(gateway).build()
        } else {
            b.gateway_id(gateway).build()
        }
    }

    #[test]
    fn the_default_route_says_where_it_leads() {
        assert_eq!(
            default_route(&[route("10.0.0.0/16", "local"), route("0.0.0.0/0", "nat-1")]),
            Some(Target::Nat("nat-1".into()))
        );
        assert_eq!(
            default_route(&[route("0.0.0.0/0", "igw-1")]),
            Some(Target::Gateway("igw-1".into()))
        );
        assert_eq!(default_route(&[route("10.0.0.0/16", "local")]), None);
    }

    #[test]
    fn internet_routes_past_the_nat_are_found_and_integrations_left_alone() {
        let routes = [
            route("10.0.0.0/16", "local"),
            route("0.0.0.0/0", "nat-1"),
            route("203.0.113.0/24", "igw-1"),
            route("::/0", "eigw-1"),
            route("172.16.0.0/12", "tgw-1"),
            route("192.168.0.0/16", "vgw-1"),
        ];
        let private = routes_past_the_nat(&routes, true);
        assert_eq!(
            private,
            [
                (Some("203.0.113.0/24".into()), None, "igw-1".into()),
                (None, Some("::/0".into()), "eigw-1".into()),
            ]
        );
        // A public table reaches the internet by design over IPv4; only IPv6 is drift there.
        assert_eq!(
            routes_past_the_nat(&routes, false),
            [(None, Some("::/0".into()), "eigw-1".into())]
        );
    }
}
