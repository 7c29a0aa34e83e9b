//! `down`: deletes everything the stack tagged, in reverse dependency order, waiting where
//! AWS needs it and tolerating what is already gone, until nothing carries the stack tag.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;

use crate::aws::{aws_error, Clients};
use crate::retry::Passing;
use crate::spec::StackSpec;
use crate::stack::{Mode, Reconciler, STACK_TAG};
use crate::ProvisionError;

fn f(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// What `down` may delete beyond the network, and whether it deletes at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DownOptions {
    /// Delete the flow-log group as well. It is the evidence, so it is kept unless asked
    /// (as CDK retains log groups and Terraform offers skip_destroy).
    pub delete_logs: bool,
    /// Delete the Studio domain's home EFS volume, the users' home directories. Without it a
    /// stack with a domain is refused before anything is deleted.
    pub delete_home_data: bool,
    /// Only find and list what would be deleted.
    pub dry_run: bool,
}

/// Deletes the stack; returns what was deleted (with `dry_run`, what would be), one line each.
/// Holds the stack's lock unless it only lists.
pub async fn down(
    clients: &Clients,
    stack: &str,
    opts: DownOptions,
    progress: impl FnMut(&str),
) -> Result<Vec<String>, ProvisionError> {
    crate::spec::validate_stack_name(stack).map_err(ProvisionError::Spec)?;
    if opts.dry_run {
        return delete_stack(clients, stack, opts, progress).await;
    }
    let lock = crate::lock::StackLock::acquire(clients, stack).await?;
    let result = delete_stack(clients, stack, opts, progress).await;
    lock.release().await;
    result
}

async fn delete_stack(
    clients: &Clients,
    stack: &str,
    opts: DownOptions,
    mut progress: impl FnMut(&str),
) -> Result<Vec<String>, ProvisionError> {
    let mut deleted = Vec::new();
    let verb = if opts.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    macro_rules! say {
        ($line:expr) => {{
            let line: String = $line;
            progress(&format!("{verb} {line}"));
            deleted.push(line);
        }};
    }
    let ec2 = &clients.ec2;
    let tag = f(&format!("tag:{STACK_TAG}"), stack);
    let r = Reconciler::new(clients, StackSpec::default(), stack, Mode::Plan);

    // Every page of each Describe below: a VPC with many interfaces or groups fills several.
    let vpcs: Vec<_> = ec2
        .describe_vpcs()
        .filters(tag.clone())
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| aws_error("vpc", "DescribeVpcs", e))?;
    let vpc_ids: Vec<String> = vpcs
        .iter()
        .filter_map(|v| v.vpc_id().map(String::from))
        .collect();

    // The Studio domain first, with what people made in it and its home EFS volume; it must
    // be gone before its ENIs. Only a domain that is the stack's: in its VPC, or carrying
    // its tag; another of the same name is someone else's.
    let mut domains = Vec::new();
    for id in domain_ids(clients, &r.domain_name()).await? {
        let d = clients
            .sagemaker
            .describe_domain()
            .domain_id(&id)
            .send()
            .await
            .map_err(|e| aws_error("studio-domain", "DescribeDomain", e))?;
        let in_our_vpc = d.vpc_id().is_some_and(|v| vpc_ids.iter().any(|o| o == v));
        let tagged = match d.domain_arn() {
            Some(arn) if !in_our_vpc => clients
                .sagemaker
                .list_tags()
                .resource_arn(arn)
                .send()
                .await
                .map_err(|e| aws_error("studio-domain", "ListTags", e))?
                .tags()
                .iter()
                .any(|t| t.key() == Some(STACK_TAG) && t.value() == Some(stack)),
            _ => false,
        };
        if in_our_vpc || tagged {
            domains.push(id);
        } else {
            progress(&format!(
                "left studio-domain {id}: it is not this stack's (in VPC {}, without the {STACK_TAG}={stack} tag)",
                d.vpc_id().unwrap_or("?")
            ));
        }
    }
    for id in &domains {
        // Users' home directories are not the stack's to delete unasked: refused before
        // anything is deleted.
        if !opts.delete_home_data && !opts.dry_run {
            let efs = clients
                .sagemaker
                .describe_domain()
                .domain_id(id)
                .send()
                .await
                .ok()
                .and_then(|d| d.home_efs_file_system_id().map(String::from))
                .unwrap_or_else(|| "its home EFS volume".into());
            return Err(ProvisionError::Conflict(format!(
                "studio-domain {id} keeps its users' home directories on {efs}; `down` deletes them with the domain only when asked (--delete-home-data). Copy what must be kept first; nothing was deleted"
            )));
        }
    }
    for id in &domains {
        for line in delete_domain(clients, id, opts.dry_run, &mut progress).await? {
            say!(line);
        }
    }

    // Flow logs (tagged), then the log group and roles, which nothing else depends on.
    let fls: Vec<_> = ec2
        .describe_flow_logs()
        .filter(tag.clone())
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| aws_error("flow-log", "DescribeFlowLogs", e))?;
    for fl in &fls {
        if let Some(id) = fl.flow_log_id() {
            if !opts.dry_run {
                ec2.delete_flow_logs()
                    .flow_log_ids(id)
                    .send()
                    .await
                    .map_err(|e| aws_error("flow-log", "DeleteFlowLogs", e))?;
            }
            say!(format!("flow-log {id}"));
        }
    }
    let group = r.log_group_name();
    let found = clients
        .logs
        .describe_log_groups()
        .log_group_name_prefix(&group)
        .send()
        .await
        .map_err(|e| aws_error("log-group", "DescribeLogGroups", e))?
        .log_groups()
        .iter()
        .find(|g| g.log_group_name() == Some(group.as_str()))
        .cloned();
    let group_exists = match &found {
        Some(g) if crate::stack::log_group_is_stacks(&clients.logs, g, stack).await? => true,
        Some(_) => {
            progress(&format!(
                "left log-group {group}: it is not this stack's (no {STACK_TAG}={stack} tag)"
            ));
            false
        }
        None => false,
    };
    if group_exists && !opts.delete_logs {
        progress(&format!(
            "kept log-group {group}: the flow logs are the evidence (--delete-logs deletes them)"
        ));
    } else if group_exists && opts.dry_run {
        say!(format!("log-group {group}"));
    } else if group_exists {
        match clients
            .logs
            .delete_log_group()
            .log_group_name(&group)
            .send()
            .await
        {
            Ok(_) => say!(format!("log-group {group}")),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) => {}
            Err(e) => return Err(aws_error("log-group", "DeleteLogGroup", e)),
        }
    }
    for which in ["studio-execution", "flow-logs"] {
        let name = r.role_name(which);
        // Only the stack's own role: one of the same name without its tag is someone else's.
        let role = match clients.iam.get_role().role_name(&name).send().await {
            Ok(got) => got.role().cloned(),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_no_such_entity_exception()) =>
            {
                None
            }
            Err(e) => return Err(aws_error(&format!("iam-role/{name}"), "GetRole", e)),
        };
        let Some(role) = role else {
            continue;
        };
        if !role
            .tags()
            .iter()
            .any(|t| t.key() == STACK_TAG && t.value() == stack)
        {
            progress(&format!(
                "left iam-role {name}: it is not this stack's (no {STACK_TAG}={stack} tag)"
            ));
            continue;
        }
        let gone = opts.dry_run || delete_role(clients, &name).await?;
        if gone {
            say!(format!("iam-role {name}"));
        }
    }

    for vpc in &vpc_ids {
        // The S3 endpoint, then NAT gateways (they hold the Elastic IPs and public subnets).
        let eps: Vec<_> = ec2
            .describe_vpc_endpoints()
            .filters(f("vpc-id", vpc))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| aws_error("s3-endpoint", "DescribeVpcEndpoints", e))?;
        let ids: Vec<String> = eps
            .iter()
            .filter(|e| !matches!(e.state().map(|s| s.as_str()), Some("deleted")))
            .filter_map(|e| e.vpc_endpoint_id().map(String::from))
            .collect();
        if !ids.is_empty() {
            if !opts.dry_run {
                ec2.delete_vpc_endpoints()
                    .set_vpc_endpoint_ids(Some(ids.clone()))
                    .send()
                    .await
                    .map_err(|e| aws_error("s3-endpoint", "DeleteVpcEndpoints", e))?;
            }
            for id in ids {
                say!(format!("vpc-endpoint {id}"));
            }
        }
        let nats: Vec<_> = ec2
            .describe_nat_gateways()
            .filter(f("vpc-id", vpc))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| aws_error("nat-gateway", "DescribeNatGateways", e))?;
        for n in &nats {
            let state = n
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            if state == "deleted" {
                continue;
            }
            let Some(id) = n.nat_gateway_id() else {
                continue;
            };
            if state != "deleting" && !opts.dry_run {
                ec2.delete_nat_gateway()
                    .nat_gateway_id(id)
                    .send()
                    .await
                    .map_err(|e| aws_error("nat-gateway", "DeleteNatGateway", e))?;
            }
            if !opts.dry_run {
                wait_nat_deleted(clients, id, &mut progress).await?;
            }
            say!(format!("nat-gateway {id}"));
        }
        // Route tables: disassociate, then delete (never the VPC's main table).
        let rts: Vec<_> = ec2
            .describe_route_tables()
            .filters(f("vpc-id", vpc))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| aws_error("route-table", "DescribeRouteTables", e))?;
        for rt in &rts {
            if rt.associations().iter().any(|a| a.main() == Some(true)) {
                continue;
            }
            for a in rt.associations() {
                if let Some(aid) = a.route_table_association_id() {
                    if !opts.dry_run {
                        ec2.disassociate_route_table()
                            .association_id(aid)
                            .send()
                            .await
                            .map_err(|e| aws_error("route-table", "DisassociateRouteTable", e))?;
                    }
                }
            }
            if let Some(id) = rt.route_table_id() {
                if !opts.dry_run {
                    ec2.delete_route_table()
                        .route_table_id(id)
                        .send()
                        .await
                        .map_err(|e| aws_error("route-table", "DeleteRouteTable", e))?;
                }
                say!(format!("route-table {id}"));
            }
        }
        // Interfaces Studio leaves behind block subnet and group deletion.
        let enis: Vec<_> = ec2
            .describe_network_interfaces()
            .filters(f("vpc-id", vpc))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| aws_error("network-interface", "DescribeNetworkInterfaces", e))?;
        for eni in &enis {
            if eni.status().map(|s| s.as_str()) == Some("available") {
                if let Some(id) = eni.network_interface_id() {
                    if !opts.dry_run {
                        ec2.delete_network_interface()
                            .network_interface_id(id)
                            .send()
                            .await
                            .map_err(|e| {
                                aws_error("network-interface", "DeleteNetworkInterface", e)
                            })?;
                    }
                    say!(format!("network-interface {id}"));
                }
            }
        }
        // Security groups: ours and those Studio created in the VPC, all but the default.
        let sgs: Vec<_> = ec2
            .describe_security_groups()
            .filters(f("vpc-id", vpc))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| aws_error("security-group", "DescribeSecurityGroups", e))?;
        for g in &sgs {
            if g.group_name() == Some("default") {
                continue;
            }
            if let Some(id) = g.group_id() {
                // Rules that reference another group block its deletion: clear them first.
                if !g.ip_permissions().is_empty() && !opts.dry_run {
                    ec2.revoke_security_group_ingress()
                        .group_id(id)
                        .set_ip_permissions(Some(g.ip_permissions().to_vec()))
                        .send()
                        .await
                        .map_err(|e| {
                            aws_error("security-group", "RevokeSecurityGroupIngress", e)
                        })?;
                }
                if !g.ip_permissions_egress().is_empty() && !opts.dry_run {
                    ec2.revoke_security_group_egress()
                        .group_id(id)
                        .set_ip_permissions(Some(g.ip_permissions_egress().to_vec()))
                        .send()
                        .await
                        .map_err(|e| aws_error("security-group", "RevokeSecurityGroupEgress", e))?;
                }
            }
        }
        for g in &sgs {
            if g.group_name() == Some("default") {
                continue;
            }
            if let Some(id) = g.group_id() {
                // Interfaces of a deleted domain take a while to let go of their groups.
                if !opts.dry_run {
                    crate::retry_passing!(Passing::DependencyLeaving, &mut progress, {
                        ec2.delete_security_group()
                            .group_id(id)
                            .send()
                            .await
                            .map_err(|e| aws_error("security-group", "DeleteSecurityGroup", e))
                    })?;
                }
                say!(format!("security-group {id}"));
            }
        }
        let igws: Vec<_> = ec2
            .describe_internet_gateways()
            .filters(f("attachment.vpc-id", vpc))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| aws_error("internet-gateway", "DescribeInternetGateways", e))?;
        for g in &igws {
            if let Some(id) = g.internet_gateway_id() {
                if !opts.dry_run {
                    ec2.detach_internet_gateway()
                        .internet_gateway_id(id)
                        .vpc_id(vpc)
                        .send()
                        .await
                        .map_err(|e| aws_error("internet-gateway", "DetachInternetGateway", e))?;
                }
            }
        }
        let subnets: Vec<_> = ec2
            .describe_subnets()
            .filters(f("vpc-id", vpc))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| aws_error("subnet", "DescribeSubnets", e))?;
        for s in &subnets {
            if let Some(id) = s.subnet_id() {
                // Mount targets and interfaces SageMaker leaves take a while to go.
                if !opts.dry_run {
                    crate::retry_passing!(Passing::DependencyLeaving, &mut progress, {
                        ec2.delete_subnet()
                            .subnet_id(id)
                            .send()
                            .await
                            .map_err(|e| aws_error("subnet", "DeleteSubnet", e))
                    })?;
                }
                say!(format!("subnet {id}"));
            }
        }
    }
    // Internet gateways and Elastic IPs by tag: also those a crashed `up` left unattached.
    let igws: Vec<_> = ec2
        .describe_internet_gateways()
        .filters(tag.clone())
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| aws_error("internet-gateway", "DescribeInternetGateways", e))?;
    for g in &igws {
        if let Some(id) = g.internet_gateway_id() {
            for a in g.attachments() {
                if let Some(v) = a.vpc_id() {
                    if !opts.dry_run {
                        ec2.detach_internet_gateway()
                            .internet_gateway_id(id)
                            .vpc_id(v)
                            .send()
                            .await
                            .map_err(|e| {
                                aws_error("internet-gateway", "DetachInternetGateway", e)
                            })?;
                    }
                }
            }
            if !opts.dry_run {
                ec2.delete_internet_gateway()
                    .internet_gateway_id(id)
                    .send()
                    .await
                    .map_err(|e| aws_error("internet-gateway", "DeleteInternetGateway", e))?;
            }
            say!(format!("internet-gateway {id}"));
        }
    }
    let eips = ec2
        .describe_addresses()
        .filters(tag.clone())
        .send()
        .await
        .map_err(|e| aws_error("elastic-ip", "DescribeAddresses", e))?;
    for a in eips.addresses() {
        if let Some(id) = a.allocation_id() {
            // The address stays held for a while after its NAT gateway reports deleted.
            if !opts.dry_run {
                crate::retry_passing!(Passing::AddressStillHeld, &mut progress, {
                    ec2.release_address()
                        .allocation_id(id)
                        .send()
                        .await
                        .map_err(|e| aws_error("elastic-ip", "ReleaseAddress", e))
                })?;
            }
            say!(format!("elastic-ip {id}"));
        }
    }
    for vpc in &vpc_ids {
        if !opts.dry_run {
            crate::retry_passing!(Passing::DependencyLeaving, &mut progress, {
                ec2.delete_vpc()
                    .vpc_id(vpc)
                    .send()
                    .await
                    .map_err(|e| aws_error("vpc", "DeleteVpc", e))
            })?;
        }
        say!(format!("vpc {vpc}"));
    }
    Ok(deleted)
}

/// The ids of the domains named `name`, whatever their status (a `down` that was interrupted
/// finds its domain Deleting or Delete_Failed), over every page of ListDomains.
async fn domain_ids(clients: &Clients, name: &str) -> Result<Vec<String>, ProvisionError> {
    let mut ids = Vec::new();
    let mut pages = clients.sagemaker.list_domains().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws_error("studio-domain", "ListDomains", e))?;
        for d in page.domains() {
            if d.domain_name() == Some(name) {
                ids.extend(d.domain_id().map(String::from));
            }
        }
    }
    Ok(ids)
}

/// Polls until `pending` says nothing is left, with progress, for at most `bound`.
async fn wait_until_none<P, F, Fut>(
    what: &str,
    bound: Duration,
    progress: &mut P,
    mut pending: F,
) -> Result<(), ProvisionError>
where
    P: FnMut(&str) + ?Sized,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, ProvisionError>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        let left = pending().await?;
        if left == 0 {
            return Ok(());
        }
        if started.elapsed() > bound {
            return Err(ProvisionError::Timeout {
                resource: what.to_string(),
                waited: started.elapsed(),
                state: format!("{left} still deleting"),
            });
        }
        progress(&format!(
            "waiting for {left} {what} to be deleted ({}s)",
            started.elapsed().as_secs()
        ));
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(15));
    }
}

/// Deletes a Studio domain as AWS allows it: its apps (which take minutes to go), then its
/// spaces, then its user profiles, then the domain with its home EFS volume, waiting on each
/// and on the domain by id until AWS no longer knows it.
async fn delete_domain<P: FnMut(&str) + ?Sized>(
    clients: &Clients,
    id: &str,
    dry_run: bool,
    progress: &mut P,
) -> Result<Vec<String>, ProvisionError> {
    use aws_sdk_sagemaker::types::{AppStatus, RetentionPolicy, RetentionType};
    let sm = &clients.sagemaker;
    let res = format!("studio-domain {id}");
    let mut deleted = Vec::new();

    let apps = || async {
        let mut all = Vec::new();
        let mut pages = sm.list_apps().domain_id_equals(id).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(&res, "ListApps", e))?;
            all.extend(page.apps().iter().cloned());
        }
        Ok::<_, ProvisionError>(all)
    };
    let spaces = || async {
        let mut all = Vec::new();
        let mut pages = sm
            .list_spaces()
            .domain_id_equals(id)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(&res, "ListSpaces", e))?;
            all.extend(page.spaces().iter().cloned());
        }
        Ok::<_, ProvisionError>(all)
    };
    let profiles = || async {
        let mut all = Vec::new();
        let mut pages = sm
            .list_user_profiles()
            .domain_id_equals(id)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error(&res, "ListUserProfiles", e))?;
            all.extend(page.user_profiles().iter().cloned());
        }
        Ok::<_, ProvisionError>(all)
    };
    for app in apps().await? {
        if matches!(
            app.status(),
            Some(AppStatus::Deleted) | Some(AppStatus::Deleting)
        ) {
            continue;
        }
        let (Some(kind), Some(name)) = (app.app_type(), app.app_name()) else {
            continue;
        };
        if dry_run {
            deleted.push(format!("studio-app {id}/{}/{name}", kind.as_str()));
            continue;
        }
        sm.delete_app()
            .domain_id(id)
            .app_type(kind.clone())
            .app_name(name)
            .set_user_profile_name(app.user_profile_name().map(String::from))
            .set_space_name(app.space_name().map(String::from))
            .send()
            .await
            .map_err(|e| aws_error(&res, "DeleteApp", e))?;
        deleted.push(format!("studio-app {id}/{}/{name}", kind.as_str()));
        progress(&format!(
            "deleting studio-app {id}/{}/{name}",
            kind.as_str()
        ));
    }
    if dry_run {
        for space in spaces().await? {
            deleted.extend(space.space_name().map(|n| format!("studio-space {id}/{n}")));
        }
        for profile in profiles().await? {
            deleted.extend(
                profile
                    .user_profile_name()
                    .map(|n| format!("studio-user-profile {id}/{n}")),
            );
        }
        deleted.push(res);
        return Ok(deleted);
    }
    // An app can take about 20 minutes to leave Deleting.
    wait_until_none(
        "studio apps",
        Duration::from_secs(40 * 60),
        progress,
        || async {
            Ok(apps()
                .await?
                .iter()
                .filter(|a| a.status() != Some(&AppStatus::Deleted))
                .count())
        },
    )
    .await?;

    for space in spaces().await? {
        if space.status().map(|s| s.as_str()) == Some("Deleting") {
            continue;
        }
        let Some(name) = space.space_name() else {
            continue;
        };
        crate::retry_passing!(Passing::DependencyLeaving, progress, {
            sm.delete_space()
                .domain_id(id)
                .space_name(name)
                .send()
                .await
                .map_err(|e| aws_error(&res, "DeleteSpace", e))
        })?;
        deleted.push(format!("studio-space {id}/{name}"));
    }
    wait_until_none(
        "studio spaces",
        Duration::from_secs(20 * 60),
        progress,
        || async { Ok(spaces().await?.len()) },
    )
    .await?;

    for profile in profiles().await? {
        if profile.status().map(|s| s.as_str()) == Some("Deleting") {
            continue;
        }
        let Some(name) = profile.user_profile_name() else {
            continue;
        };
        crate::retry_passing!(Passing::DependencyLeaving, progress, {
            sm.delete_user_profile()
                .domain_id(id)
                .user_profile_name(name)
                .send()
                .await
                .map_err(|e| aws_error(&res, "DeleteUserProfile", e))
        })?;
        deleted.push(format!("studio-user-profile {id}/{name}"));
    }
    wait_until_none(
        "studio user profiles",
        Duration::from_secs(20 * 60),
        progress,
        || async { Ok(profiles().await?.len()) },
    )
    .await?;

    crate::retry_passing!(Passing::DependencyLeaving, progress, {
        sm.delete_domain()
            .domain_id(id)
            .retention_policy(
                RetentionPolicy::builder()
                    .home_efs_file_system(RetentionType::Delete)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| aws_error(&res, "DeleteDomain", e))
    })?;
    // The domain is gone when DescribeDomain no longer knows it (a Deleting domain is still
    // there, and its ENIs with it); Delete_Failed is an answer, not something to wait out.
    wait_until_none(
        "studio domain",
        Duration::from_secs(30 * 60),
        progress,
        || async {
            match sm.describe_domain().domain_id(id).send().await {
                Ok(d) => match d.status().map(|s| s.as_str()) {
                    Some("Delete_Failed") => Err(ProvisionError::Conflict(format!(
                        "{res} could not be deleted: {}; fix that and run down again",
                        d.failure_reason().unwrap_or("no reason given")
                    ))),
                    _ => Ok(1),
                },
                Err(e) => {
                    let e = aws_error(&res, "DescribeDomain", e);
                    match &e {
                        ProvisionError::Aws { code, message, .. }
                            if code == "ResourceNotFound"
                                || (code == "ValidationException"
                                    && message.contains("Could not find")) =>
                        {
                            Ok(0)
                        }
                        _ => Err(e),
                    }
                }
            }
        },
    )
    .await?;
    deleted.push(res);
    Ok(deleted)
}

pub(crate) async fn wait_nat_deleted<P: FnMut(&str) + ?Sized>(
    clients: &Clients,
    id: &str,
    progress: &mut P,
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

/// Deletes a role with its policies; false when it did not exist.
async fn delete_role(clients: &Clients, name: &str) -> Result<bool, ProvisionError> {
    let iam = &clients.iam;
    let res = format!("iam-role/{name}");
    let inline = match iam.list_role_policies().role_name(name).send().await {
        Ok(p) => p.policy_names().to_vec(),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_no_such_entity_exception()) =>
        {
            return Ok(false)
        }
        Err(e) => return Err(aws_error(&res, "ListRolePolicies", e)),
    };
    for p in inline {
        iam.delete_role_policy()
            .role_name(name)
            .policy_name(&p)
            .send()
            .await
            .map_err(|e| aws_error(&res, "DeleteRolePolicy", e))?;
    }
    let attached = iam
        .list_attached_role_policies()
        .role_name(name)
        .send()
        .await
        .map_err(|e| aws_error(&res, "ListAttachedRolePolicies", e))?;
    for p in attached.attached_policies() {
        if let Some(arn) = p.policy_arn() {
            iam.detach_role_policy()
                .role_name(name)
                .policy_arn(arn)
                .send()
                .await
                .map_err(|e| aws_error(&res, "DetachRolePolicy", e))?;
        }
    }
    iam.delete_role()
        .role_name(name)
        .send()
        .await
        .map_err(|e| aws_error(&res, "DeleteRole", e))?;
    Ok(true)
}
