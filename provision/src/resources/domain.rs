//! The SageMaker Studio domain: IAM auth, `VpcOnly` in the private subnets, the stack's
//! security group and execution role for users and for shared spaces alike. Every setting
//! that decides where Studio's traffic goes is checked, and a user profile that names its own
//! security groups is set back. `down` deletes a used domain as AWS allows it: apps (which
//! take minutes), spaces, user profiles, then the domain with its home EFS volume, waiting on
//! each; the users' home directories only when asked.

use std::time::{Duration, Instant};

use aws_sdk_sagemaker::operation::describe_domain::DescribeDomainOutput;
use aws_sdk_sagemaker::types::{
    AppNetworkAccessType, AppStatus, AuthMode, DefaultSpaceSettings, RetentionPolicy,
    RetentionType, UserProfileDetails, UserSettings,
};

use super::{domain_name, resource, Teardown, PLANNED};
use crate::aws::{aws_error, Clients};
use crate::retry::Passing;
use crate::stack::{Change, ChangeKind, Mode, Reconciler, STACK_TAG};
use crate::ProvisionError;

resource!(StudioDomain, "studio-domain");

/// What the domain's network settings must be.
pub struct Wanted<'a> {
    pub security_group: &'a str,
    pub role_arn: &'a str,
    pub subnets: &'a [String],
}

/// Each setting that differs, with what it is set to.
pub fn drift(d: &DescribeDomainOutput, want: &Wanted<'_>) -> Vec<String> {
    let mut drift = Vec::new();
    let mode = d
        .app_network_access_type()
        .map(|m| m.as_str().to_string())
        .unwrap_or_default();
    if mode != "VpcOnly" {
        drift.push(format!("network access is {mode}, set VpcOnly"));
    }
    let sg = [want.security_group.to_string()];
    let user = d.default_user_settings();
    if user.map(|u| u.security_groups()) != Some(&sg[..]) {
        drift.push(format!(
            "users' security groups are {:?}, set [{}]",
            user.map(|u| u.security_groups()).unwrap_or_default(),
            sg[0]
        ));
    }
    if user.and_then(|u| u.execution_role()) != Some(want.role_arn) {
        drift.push(format!(
            "users' execution role is {}, set {}",
            user.and_then(|u| u.execution_role()).unwrap_or("none"),
            want.role_arn
        ));
    }
    let space = d.default_space_settings();
    if space.map(|s| s.security_groups()) != Some(&sg[..])
        || space.and_then(|s| s.execution_role()) != Some(want.role_arn)
    {
        drift.push("shared spaces' security groups or role differ, set the stack's".into());
    }
    let mut subnets = d.subnet_ids().to_vec();
    subnets.sort();
    let mut wanted = want.subnets.to_vec();
    wanted.sort();
    if subnets != wanted {
        drift.push(format!("subnets are {subnets:?}, set {wanted:?}"));
    }
    drift
}

/// Every domain named `name`, whatever its status, as (id, status).
async fn domains_named(
    clients: &Clients,
    name: &str,
) -> Result<Vec<(String, String)>, ProvisionError> {
    // ListDomains answers 10 to a page unless asked: every page.
    let mut found = Vec::new();
    let mut pages = clients.sagemaker.list_domains().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws_error("studio-domain", "ListDomains", e))?;
        for d in page.domains() {
            if d.domain_name() == Some(name) {
                if let Some(id) = d.domain_id() {
                    let status = d.status().map(|s| s.as_str()).unwrap_or_default();
                    found.push((id.to_string(), status.to_string()));
                }
            }
        }
    }
    Ok(found)
}

/// Every user profile of the domain.
async fn user_profiles(
    clients: &Clients,
    domain: &str,
) -> Result<Vec<UserProfileDetails>, ProvisionError> {
    let mut all = Vec::new();
    let mut pages = clients
        .sagemaker
        .list_user_profiles()
        .domain_id_equals(domain)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws_error("studio-user-profile", "ListUserProfiles", e))?;
        all.extend(page.user_profiles().iter().cloned());
    }
    Ok(all)
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    if !r.spec.studio_domain {
        return Ok(());
    }
    let sm = r.clients.sagemaker.clone();
    let private: Vec<String> = r.out.private_subnets.iter().map(|s| s.id.clone()).collect();
    let name = domain_name(&r.stack);
    let live = domains_named(r.clients, &name)
        .await?
        .into_iter()
        .find(|(_, status)| !matches!(status.as_str(), "Deleting" | "Delete_Failed"));
    let Some((id, _)) = live else {
        return create(r, &name, private).await;
    };
    let d = sm
        .describe_domain()
        .domain_id(&id)
        .send()
        .await
        .map_err(|e| aws_error("studio-domain", "DescribeDomain", e))?;
    r.out.domain_id = id.clone();
    if d.vpc_id() != Some(r.out.vpc_id.as_str()) {
        return Err(ProvisionError::Conflict(format!(
            "Studio domain {id} is in VPC {}, not the stack's {}: delete it or rename the stack",
            d.vpc_id().unwrap_or("?"),
            r.out.vpc_id
        )));
    }
    let status = d.status().map(|s| s.as_str()).unwrap_or_default();
    if status.ends_with("Failed") {
        // Nothing `up` can repair: said, and left for a person.
        let detail = format!(
            "the domain is {status}: {}",
            d.failure_reason().unwrap_or("no reason given")
        );
        if r.mode == Mode::Plan {
            r.changes.push(Change {
                resource: "studio-domain".into(),
                kind: ChangeKind::Update,
                detail,
                security: false,
            });
        } else {
            (r.progress)(&format!("warning: studio-domain {id}: {detail}"));
        }
    }
    let sg = r.out.security_group_id.clone();
    let role = r.out.studio_role_arn.clone();
    let want = Wanted {
        security_group: &sg,
        role_arn: &role,
        subnets: &private,
    };
    let found = drift(&d, &want);
    user_profile_overrides(r, &id).await?;
    // Every setting that decides where Studio's traffic goes, in one repair.
    if !found.is_empty() && r.change("studio-domain", ChangeKind::Update, found.join("; "), true) {
        let updated = sm
            .update_domain()
            .domain_id(&id)
            .app_network_access_type(AppNetworkAccessType::VpcOnly)
            .default_user_settings(
                UserSettings::builder()
                    .execution_role(&role)
                    .security_groups(&sg)
                    .build(),
            )
            .default_space_settings(
                DefaultSpaceSettings::builder()
                    .execution_role(&role)
                    .security_groups(&sg)
                    .build(),
            )
            .set_subnet_ids(Some(private))
            .send()
            .await
            .map_err(|e| aws_error("studio-domain", "UpdateDomain", e));
        if let Err(e) = updated {
            return Err(refused_while_apps_run(r.clients, &id, e).await);
        }
    }
    Ok(())
}

async fn create(
    r: &mut Reconciler<'_>,
    name: &str,
    private: Vec<String>,
) -> Result<(), ProvisionError> {
    if !r.change(
        "studio-domain",
        ChangeKind::Create,
        "SageMaker Studio domain: IAM auth, VpcOnly, private subnets",
        false,
    ) {
        r.out.domain_id = PLANNED.into();
        return Ok(());
    }
    let sm = r.clients.sagemaker.clone();
    let (role, sg) = (
        r.out.studio_role_arn.clone(),
        r.out.security_group_id.clone(),
    );
    // A role made seconds ago cannot be assumed by SageMaker yet.
    let c = crate::retry_passing!(&[Passing::RoleNotYetAssumable], &mut *r.progress, {
        sm.create_domain()
            .domain_name(name)
            .auth_mode(AuthMode::Iam)
            .default_user_settings(
                UserSettings::builder()
                    .execution_role(&role)
                    .security_groups(&sg)
                    .build(),
            )
            // Shared spaces get the domain's groups and role only when named here.
            .default_space_settings(
                DefaultSpaceSettings::builder()
                    .execution_role(&role)
                    .security_groups(&sg)
                    .build(),
            )
            .set_subnet_ids(Some(private.clone()))
            .vpc_id(&r.out.vpc_id)
            .app_network_access_type(AppNetworkAccessType::VpcOnly)
            .tags(
                aws_sdk_sagemaker::types::Tag::builder()
                    .key(STACK_TAG)
                    .value(&r.stack)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| aws_error("studio-domain", "CreateDomain", e))
    })?;
    // Some implementations return only the ARN; its last segment is the id.
    r.out.domain_id = c
        .domain_id()
        .map(String::from)
        .or_else(|| {
            c.domain_arn()
                .and_then(|a| a.rsplit('/').next())
                .map(String::from)
        })
        .unwrap_or_default();
    wait_in_service(r).await
}

/// A user profile can name its own security groups, overriding the domain's: its apps then
/// leave through groups the stack does not control. Set back to the stack's group.
async fn user_profile_overrides(
    r: &mut Reconciler<'_>,
    domain: &str,
) -> Result<(), ProvisionError> {
    let sm = r.clients.sagemaker.clone();
    let ours = r.out.security_group_id.clone();
    for name in user_profiles(r.clients, domain)
        .await?
        .iter()
        .filter_map(|p| p.user_profile_name())
    {
        let p = sm
            .describe_user_profile()
            .domain_id(domain)
            .user_profile_name(name)
            .send()
            .await
            .map_err(|e| aws_error("studio-user-profile", "DescribeUserProfile", e))?;
        let groups = p
            .user_settings()
            .map(|u| u.security_groups().to_vec())
            .unwrap_or_default();
        if groups.is_empty() || groups == [ours.clone()] {
            continue;
        }
        let detail = format!(
            "user profile {name} overrides the security groups with {groups:?}; set [{ours}]"
        );
        if r.change("studio-user-profile", ChangeKind::Update, detail, true) {
            sm.update_user_profile()
                .domain_id(domain)
                .user_profile_name(name)
                .user_settings(UserSettings::builder().security_groups(&ours).build())
                .send()
                .await
                .map_err(|e| aws_error("studio-user-profile", "UpdateUserProfile", e))?;
        }
    }
    Ok(())
}

/// Waits until the new domain is InService; creation takes several minutes on AWS.
async fn wait_in_service(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    let id = r.out.domain_id.clone();
    let started = Instant::now();
    loop {
        let d = r
            .clients
            .sagemaker
            .describe_domain()
            .domain_id(&id)
            .send()
            .await
            .map_err(|e| aws_error("studio-domain", "DescribeDomain", e))?;
        let status = d
            .status()
            .map(|s| s.as_str().to_string())
            .unwrap_or_default();
        match status.as_str() {
            "InService" | "" => return Ok(()),
            "Failed" | "Update_Failed" => {
                return Err(ProvisionError::Conflict(format!(
                    "studio-domain {id} failed: {}",
                    d.failure_reason().unwrap_or("no reason given")
                )))
            }
            _ if started.elapsed() > r.wait_timeout => {
                return Err(ProvisionError::Timeout {
                    resource: format!("studio-domain {id}"),
                    waited: started.elapsed(),
                    state: status,
                })
            }
            _ => {
                (r.progress)(&format!(
                    "waiting for studio-domain {id} ({status}, {}s)",
                    started.elapsed().as_secs()
                ));
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    }
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let clients = t.clients;
    let stack = t.stack.clone();
    // Only a domain that is the stack's: in its VPC, or carrying its tag; another of the same
    // name is someone else's.
    let mut ours = Vec::new();
    for (id, _) in domains_named(clients, &domain_name(&stack)).await? {
        let d = clients
            .sagemaker
            .describe_domain()
            .domain_id(&id)
            .send()
            .await
            .map_err(|e| aws_error("studio-domain", "DescribeDomain", e))?;
        let in_our_vpc = d.vpc_id().is_some_and(|v| t.vpc_ids.iter().any(|o| o == v));
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
                .any(|tag| tag.key() == Some(STACK_TAG) && tag.value() == Some(stack.as_str())),
            _ => false,
        };
        if in_our_vpc || tagged {
            ours.push((id, d.home_efs_file_system_id().map(String::from)));
        } else {
            t.note(&format!(
                "left studio-domain {id}: it is not this stack's (in VPC {}, without the {STACK_TAG}={stack} tag)",
                d.vpc_id().unwrap_or("?")
            ));
        }
    }
    // Users' home directories are not the stack's to delete unasked: refused before anything
    // is deleted (the domain is the first resource `down` deletes), and a dry run says so
    // too rather than list what the real run would refuse to delete.
    if !t.opts.delete_home_data {
        if let Some((id, efs)) = ours.first() {
            let efs = efs.as_deref().unwrap_or("its home EFS volume");
            return Err(ProvisionError::Conflict(format!(
                "studio-domain {id} keeps its users' home directories on {efs}; `down` deletes them with the domain only when asked (--delete-home-data). Copy what must be kept first; nothing {} deleted",
                if t.live() { "was" } else { "would be" }
            )));
        }
    }
    for (id, _) in &ours {
        delete_one(t, id).await?;
    }
    Ok(())
}

/// Polls until `pending` says nothing is left, with progress, for at most `bound`.
async fn wait_until_none<F, Fut>(
    what: &str,
    bound: Duration,
    progress: &mut (dyn FnMut(&str) + Send),
    mut pending: F,
) -> Result<(), ProvisionError>
where
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

/// Every app of the domain, in any state.
async fn list_apps(
    clients: &Clients,
    id: &str,
    resource: &str,
) -> Result<Vec<aws_sdk_sagemaker::types::AppDetails>, ProvisionError> {
    let mut all = Vec::new();
    let mut pages = clients
        .sagemaker
        .list_apps()
        .domain_id_equals(id)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| aws_error(resource, "ListApps", e))?;
        all.extend(page.apps().iter().cloned());
    }
    Ok(all)
}

/// UpdateDomain refused because apps are running: which ones, and what to do, instead of
/// AWS's bare refusal. The drift stays until they stop; nothing else of `up` waits on it.
async fn refused_while_apps_run(clients: &Clients, id: &str, e: ProvisionError) -> ProvisionError {
    let ProvisionError::Aws { code, message, .. } = &e else {
        return e;
    };
    let in_use = code == "ResourceInUse"
        || (code == "ValidationException" && message.to_ascii_lowercase().contains("inservice"));
    if !in_use {
        return e;
    }
    let running: Vec<String> = match list_apps(clients, id, "studio-domain").await {
        Ok(apps) => apps
            .iter()
            .filter(|a| a.status() == Some(&AppStatus::InService))
            .map(|a| {
                format!(
                    "{}/{} ({})",
                    a.user_profile_name().or(a.space_name()).unwrap_or("?"),
                    a.app_name().unwrap_or("?"),
                    a.app_type().map(|t| t.as_str()).unwrap_or("?")
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    ProvisionError::Conflict(format!(
        "studio-domain {id}: AWS refuses to change its network settings while apps run ({message}); \
         the security drift above stays until {} stop{}: stop them in Studio or with \
         `aws sagemaker delete-app --domain-id {id} ...`, then run up again (everything else is in spec)",
        if running.is_empty() {
            "the domain's apps".to_string()
        } else {
            format!("{} app(s) [{}]", running.len(), running.join(", "))
        },
        if running.len() == 1 { "s" } else { "" }
    ))
}

/// Deletes one domain and what people made in it, waiting on each step and on the domain by
/// id until AWS no longer knows it.
async fn delete_one(t: &mut Teardown<'_>, id: &str) -> Result<(), ProvisionError> {
    let clients = t.clients;
    let sm = &clients.sagemaker;
    let res = format!("studio-domain {id}");

    let apps = || list_apps(clients, id, &res);
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
        if t.live() {
            sm.delete_app()
                .domain_id(id)
                .app_type(kind.clone())
                .app_name(name)
                .set_user_profile_name(app.user_profile_name().map(String::from))
                .set_space_name(app.space_name().map(String::from))
                .send()
                .await
                .map_err(|e| aws_error(&res, "DeleteApp", e))?;
        }
        t.say(format!("studio-app {id}/{}/{name}", kind.as_str()));
    }
    if !t.live() {
        for space in spaces().await? {
            if let Some(n) = space.space_name() {
                t.say(format!("studio-space {id}/{n}"));
            }
        }
        for profile in user_profiles(clients, id).await? {
            if let Some(n) = profile.user_profile_name() {
                t.say(format!("studio-user-profile {id}/{n}"));
            }
        }
        t.say(res);
        return Ok(());
    }
    // An app can take about 20 minutes to leave Deleting.
    wait_until_none(
        "studio apps",
        Duration::from_secs(40 * 60),
        &mut *t.progress,
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
        crate::retry_passing!(&[Passing::DependencyLeaving], &mut *t.progress, {
            sm.delete_space()
                .domain_id(id)
                .space_name(name)
                .send()
                .await
                .map_err(|e| aws_error(&res, "DeleteSpace", e))
        })?;
        t.say(format!("studio-space {id}/{name}"));
    }
    wait_until_none(
        "studio spaces",
        Duration::from_secs(20 * 60),
        &mut *t.progress,
        || async { Ok(spaces().await?.len()) },
    )
    .await?;

    for profile in user_profiles(clients, id).await? {
        if profile.status().map(|s| s.as_str()) == Some("Deleting") {
            continue;
        }
        let Some(name) = profile.user_profile_name() else {
            continue;
        };
        crate::retry_passing!(&[Passing::DependencyLeaving], &mut *t.progress, {
            sm.delete_user_profile()
                .domain_id(id)
                .user_profile_name(name)
                .send()
                .await
                .map_err(|e| aws_error(&res, "DeleteUserProfile", e))
        })?;
        t.say(format!("studio-user-profile {id}/{name}"));
    }
    wait_until_none(
        "studio user profiles",
        Duration::from_secs(20 * 60),
        &mut *t.progress,
        || async { Ok(user_profiles(clients, id).await?.len()) },
    )
    .await?;

    crate::retry_passing!(&[Passing::DependencyLeaving], &mut *t.progress, {
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
    // there, and its interfaces with it); Delete_Failed is an answer, not something to wait out.
    wait_until_none(
        "studio domain",
        Duration::from_secs(30 * 60),
        &mut *t.progress,
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
    t.say(res);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_spec(
    ) -> aws_sdk_sagemaker::operation::describe_domain::builders::DescribeDomainOutputBuilder {
        DescribeDomainOutput::builder()
            .app_network_access_type(AppNetworkAccessType::VpcOnly)
            .default_user_settings(
                UserSettings::builder()
                    .execution_role("arn:role")
                    .security_groups("sg-1")
                    .build(),
            )
            .default_space_settings(
                DefaultSpaceSettings::builder()
                    .execution_role("arn:role")
                    .security_groups("sg-1")
                    .build(),
            )
            .subnet_ids("subnet-b")
            .subnet_ids("subnet-a")
    }

    const SUBNETS: [String; 0] = [];

    fn want(subnets: &[String]) -> Wanted<'_> {
        Wanted {
            security_group: "sg-1",
            role_arn: "arn:role",
            subnets,
        }
    }

    #[test]
    fn a_domain_in_spec_has_no_drift_whatever_the_subnet_order() {
        let subnets = ["subnet-a".to_string(), "subnet-b".to_string()];
        assert!(drift(&in_spec().build(), &want(&subnets)).is_empty());
        assert_eq!(drift(&in_spec().build(), &want(&SUBNETS)).len(), 1);
    }

    #[test]
    fn public_internet_access_and_a_shared_space_without_the_group_are_drift() {
        let subnets = ["subnet-a".to_string(), "subnet-b".to_string()];
        let d = in_spec()
            .app_network_access_type(AppNetworkAccessType::PublicInternetOnly)
            .default_space_settings(
                DefaultSpaceSettings::builder()
                    .execution_role("arn:role")
                    .build(),
            )
            .build();
        assert_eq!(
            drift(&d, &want(&subnets)),
            [
                "network access is PublicInternetOnly, set VpcOnly",
                "shared spaces' security groups or role differ, set the stack's"
            ]
        );
    }
}
