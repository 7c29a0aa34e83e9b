//! The stack's IAM roles: Studio's execution role and the role the flow-log service delivers
//! with. Each lives under the project's IAM path (so the provisioner's own policy can be
//! limited to it), carries the stack's tag (a role of the same name without it is someone
//! else's and is never changed), and has exactly the spec's trust policy, inline policy and
//! managed policy: whatever else is put on or attached to it widens what a notebook may do and
//! is removed.

use super::{
    bucket_arns, decode_policy, log_group_name, role_name, Resource, Step, Teardown, PLANNED,
};
use crate::aws::{aws_error, Clients};
use crate::spec::StackSpec;
use crate::stack::{ChangeKind, Reconciler, STACK_TAG};
use crate::ProvisionError;

/// The IAM path of every role the stack makes.
pub const ROLE_PATH: &str = "/egresswatch/";
/// The name of the inline policy the spec gives a role.
const INLINE_POLICY: &str = "egresswatch";

/// What a role should be.
pub struct RoleSpec {
    pub which: &'static str,
    pub trust: serde_json::Value,
    pub inline: serde_json::Value,
    pub managed: Option<String>,
}

/// Studio's execution role: what Studio apps need, and denials of what escapes the network
/// design even when a broader policy (the managed one) allows it.
pub fn studio(spec: &StackSpec, partition: &str, region: &str, account: &str) -> RoleSpec {
    let trust = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "sagemaker.amazonaws.com"}, "Action": "sts:AssumeRole"}]});
    let mut statements = vec![
        serde_json::json!({"Sid": "StudioLogs", "Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"], "Resource": format!("arn:{partition}:logs:{region}:{account}:log-group:/aws/sagemaker/*")}),
        serde_json::json!({"Sid": "StudioImages", "Effect": "Allow", "Action": ["ecr:GetAuthorizationToken", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"], "Resource": "*"}),
        serde_json::json!({"Sid": "StudioNetworkInterfaces", "Effect": "Allow", "Action": ["ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission", "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission", "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeDhcpOptions"], "Resource": "*"}),
        // What launching and using Studio apps needs (SageMaker Role Manager's "Run Studio
        // Applications"), on this account's Studio resources only.
        serde_json::json!({"Sid": "StudioApps", "Effect": "Allow", "Action": ["sagemaker:CreateApp", "sagemaker:DeleteApp", "sagemaker:DescribeApp", "sagemaker:DescribeDomain", "sagemaker:DescribeUserProfile", "sagemaker:CreateSpace", "sagemaker:UpdateSpace", "sagemaker:DeleteSpace", "sagemaker:DescribeSpace", "sagemaker:ListTags", "sagemaker:AddTags"], "Resource": [
            format!("arn:{partition}:sagemaker:{region}:{account}:domain/*"),
            format!("arn:{partition}:sagemaker:{region}:{account}:user-profile/*"),
            format!("arn:{partition}:sagemaker:{region}:{account}:space/*"),
            format!("arn:{partition}:sagemaker:{region}:{account}:app/*"),
        ]}),
        // Listing takes no resource ARN: these actions are authorised on "*" only.
        serde_json::json!({"Sid": "StudioLists", "Effect": "Allow", "Action": ["sagemaker:ListApps", "sagemaker:ListDomains", "sagemaker:ListUserProfiles", "sagemaker:ListSpaces"], "Resource": "*"}),
        // Work started outside the VPC, a notebook instance with direct internet access, and
        // changes to the domain itself (VpcOnly, its groups).
        serde_json::json!({"Sid": "DenyWorkOutsideTheVpc", "Effect": "Deny", "Action": ["sagemaker:CreateTrainingJob", "sagemaker:CreateProcessingJob", "sagemaker:CreateHyperParameterTuningJob", "sagemaker:CreateModel", "sagemaker:CreateNotebookInstance", "sagemaker:CreateAutoMLJob", "sagemaker:CreateAutoMLJobV2", "sagemaker:CreateMonitoringSchedule", "sagemaker:CreateDataQualityJobDefinition", "sagemaker:CreateModelQualityJobDefinition", "sagemaker:CreateModelBiasJobDefinition", "sagemaker:CreateModelExplainabilityJobDefinition", "sagemaker:CreateCompilationJob", "sagemaker:CreateOptimizationJob"], "Resource": "*",
            "Condition": {"Null": {"sagemaker:VpcSubnets": "true"}}}),
        serde_json::json!({"Sid": "DenyDirectInternetAccess", "Effect": "Deny", "Action": ["sagemaker:CreateNotebookInstance"], "Resource": "*",
            "Condition": {"StringEquals": {"sagemaker:DirectInternetAccess": "Enabled"}}}),
        // New ways out of the VPC that skip the NAT (a gateway endpoint to any bucket, a route
        // to an internet gateway), even where the managed policy would allow them.
        serde_json::json!({"Sid": "DenyNewPathsOutOfTheVpc", "Effect": "Deny", "Action": ["ec2:CreateVpcEndpoint", "ec2:ModifyVpcEndpoint", "ec2:CreateRoute", "ec2:ReplaceRoute", "ec2:AttachInternetGateway", "ec2:CreateNatGateway", "ec2:CreateVpcPeeringConnection"], "Resource": "*"}),
        serde_json::json!({"Sid": "DenyChangingTheDomain", "Effect": "Deny", "Action": ["sagemaker:CreateDomain", "sagemaker:UpdateDomain", "sagemaker:DeleteDomain"], "Resource": "*"}),
    ];
    if !spec.s3_endpoint_buckets.is_empty() {
        let res = bucket_arns(partition, &spec.s3_endpoint_buckets);
        statements.push(serde_json::json!({"Sid": "StudioData", "Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"], "Resource": res}));
    }
    RoleSpec {
        which: "studio-execution",
        trust,
        inline: serde_json::json!({"Version": "2012-10-17", "Statement": statements}),
        managed: spec
            .studio_managed_policy
            .then(|| format!("arn:{partition}:iam::aws:policy/AmazonSageMakerFullAccess")),
    }
}

/// The flow-log delivery role: assumable only by this account's flow logs, writing only to
/// the stack's log group.
pub fn flow_logs(stack: &str, partition: &str, region: &str, account: &str) -> RoleSpec {
    let trust = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "vpc-flow-logs.amazonaws.com"}, "Action": "sts:AssumeRole",
        "Condition": {"StringEquals": {"aws:SourceAccount": account}, "ArnLike": {"aws:SourceArn": format!("arn:{partition}:ec2:{region}:{account}:vpc-flow-log/*")}}}]});
    let group_arn = format!(
        "arn:{partition}:logs:{region}:{account}:log-group:{}",
        log_group_name(stack)
    );
    RoleSpec {
        which: "flow-logs",
        trust,
        inline: serde_json::json!({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"], "Resource": [group_arn.clone(), format!("{group_arn}:*")]},
            {"Effect": "Allow", "Action": ["logs:DescribeLogGroups"], "Resource": "*"}]}),
        managed: None,
    }
}

pub struct StudioRole;

impl Resource for StudioRole {
    fn name(&self) -> &'static str {
        "iam-role/studio-execution"
    }
    fn reconcile<'a>(&'a self, r: &'a mut Reconciler<'_>) -> Step<'a> {
        Box::pin(async move {
            let want = studio(&r.spec, &r.partition, &r.clients.region, &r.out.account_id);
            r.out.studio_role_arn = reconcile(r, want).await?;
            Ok(())
        })
    }
    fn delete<'a>(&'a self, t: &'a mut Teardown<'_>) -> Step<'a> {
        Box::pin(delete(t, "studio-execution"))
    }
}

pub struct FlowLogRole;

impl Resource for FlowLogRole {
    fn name(&self) -> &'static str {
        "iam-role/flow-logs"
    }
    fn reconcile<'a>(&'a self, r: &'a mut Reconciler<'_>) -> Step<'a> {
        Box::pin(async move {
            // Delivery to S3 goes through the bucket's policy, without a role.
            if r.spec.flow_log_destination == crate::spec::FlowLogDestination::S3 {
                return Ok(());
            }
            let want = flow_logs(&r.stack, &r.partition, &r.clients.region, &r.out.account_id);
            r.out.flow_log_role_arn = reconcile(r, want).await?;
            Ok(())
        })
    }
    fn delete<'a>(&'a self, t: &'a mut Teardown<'_>) -> Step<'a> {
        Box::pin(delete(t, "flow-logs"))
    }
}

/// IAM's answer for a role, policy or version that does not exist.
pub(super) fn not_found<E: aws_sdk_iam::error::ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("NoSuchEntity")
}

fn is_stacks(role: &aws_sdk_iam::types::Role, stack: &str) -> bool {
    role.tags()
        .iter()
        .any(|t| t.key() == STACK_TAG && t.value() == stack)
}

/// Reconciles one role; returns its ARN (or the planned placeholder).
async fn reconcile(r: &mut Reconciler<'_>, want: RoleSpec) -> Result<String, ProvisionError> {
    let iam = r.clients.iam.clone();
    let name = role_name(&r.stack, want.which);
    let resource = format!("iam-role/{}", want.which);
    let found = match iam.get_role().role_name(&name).send().await {
        Ok(got) => got.role().cloned(),
        Err(e) if e.as_service_error().is_some_and(not_found) => None,
        Err(e) => return Err(aws_error(&resource, "GetRole", e)),
    };
    let mut replaced = false;
    if let Some(role) = &found {
        if !is_stacks(role, &r.stack) {
            return Err(ProvisionError::Conflict(format!(
                "IAM role {name} exists but is not stack {}'s (it has no {STACK_TAG}={} tag); it is left alone: choose another stack name, or remove or tag that role",
                r.stack, r.stack
            )));
        }
        // A role's path cannot change; one made outside the project's path is made again
        // in it (what refers to its ARN is repaired after it).
        if role.path() != ROLE_PATH
            && r.change(
                &resource,
                ChangeKind::Replace,
                format!(
                    "role {name} is under IAM path {} rather than {ROLE_PATH}, which the provisioner's policy is limited to",
                    role.path()
                ),
                false,
            )
        {
            delete_role(r.clients, &name).await?;
            replaced = true;
        }
    }
    let boundary = crate::policies::role_boundary_arn(&r.partition, &r.out.account_id);
    let arn = match found.filter(|_| !replaced) {
        Some(role) => {
            let carried = role
                .permissions_boundary()
                .and_then(|b| b.permissions_boundary_arn());
            if carried != Some(boundary.as_str())
                && r.change(
                    &resource,
                    ChangeKind::Update,
                    format!("put it under the permissions boundary {boundary}"),
                    true,
                )
            {
                iam.put_role_permissions_boundary()
                    .role_name(&name)
                    .permissions_boundary(&boundary)
                    .send()
                    .await
                    .map_err(|e| aws_error(&resource, "PutRolePermissionsBoundary", e))?;
            }
            if decode_policy(role.assume_role_policy_document().unwrap_or("")) != want.trust
                && r.change(
                    &resource,
                    ChangeKind::Update,
                    "restore the trust policy",
                    true,
                )
            {
                iam.update_assume_role_policy()
                    .role_name(&name)
                    .policy_document(want.trust.to_string())
                    .send()
                    .await
                    .map_err(|e| aws_error(&resource, "UpdateAssumeRolePolicy", e))?;
            }
            role.arn().to_string()
        }
        None => {
            if !replaced
                && !r.change(
                    &resource,
                    ChangeKind::Create,
                    format!("IAM role {ROLE_PATH}{name}"),
                    false,
                )
            {
                return Ok(PLANNED.into());
            }
            let created = iam
                .create_role()
                .role_name(&name)
                .path(ROLE_PATH)
                .permissions_boundary(&boundary)
                .assume_role_policy_document(want.trust.to_string())
                .description(format!("egresswatch stack {}: {}", r.stack, want.which))
                .tags(
                    aws_sdk_iam::types::Tag::builder()
                        .key(STACK_TAG)
                        .value(&r.stack)
                        .build()
                        .map_err(|e| ProvisionError::Unexpected(e.to_string()))?,
                )
                .send()
                .await
                .map_err(|e| aws_error(&resource, "CreateRole", e))?;
            created
                .role()
                .map(|r| r.arn().to_string())
                .unwrap_or_default()
        }
    };
    let current = if arn == PLANNED {
        None
    } else {
        match iam
            .get_role_policy()
            .role_name(&name)
            .policy_name(INLINE_POLICY)
            .send()
            .await
        {
            Ok(p) => Some(decode_policy(p.policy_document())),
            Err(e) if e.as_service_error().is_some_and(not_found) => None,
            Err(e) => return Err(aws_error(&resource, "GetRolePolicy", e)),
        }
    };
    if current.as_ref() != Some(&want.inline)
        && r.change(
            &resource,
            if current.is_some() {
                ChangeKind::Update
            } else {
                ChangeKind::Create
            },
            "inline policy",
            current.is_some(),
        )
    {
        iam.put_role_policy()
            .role_name(&name)
            .policy_name(INLINE_POLICY)
            .policy_document(want.inline.to_string())
            .send()
            .await
            .map_err(|e| aws_error(&resource, "PutRolePolicy", e))?;
    }
    if arn == PLANNED {
        return Ok(arn);
    }
    let inline_names: Vec<String> = iam
        .list_role_policies()
        .role_name(&name)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| aws_error(&resource, "ListRolePolicies", e))?;
    for extra in inline_names.iter().filter(|p| p.as_str() != INLINE_POLICY) {
        if r.change(
            &resource,
            ChangeKind::Update,
            format!("remove inline policy {extra}, which the spec does not give"),
            true,
        ) {
            iam.delete_role_policy()
                .role_name(&name)
                .policy_name(extra)
                .send()
                .await
                .map_err(|e| aws_error(&resource, "DeleteRolePolicy", e))?;
        }
    }
    let attached: Vec<String> = iam
        .list_attached_role_policies()
        .role_name(&name)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| aws_error(&resource, "ListAttachedRolePolicies", e))?
        .iter()
        .filter_map(|p| p.policy_arn().map(String::from))
        .collect();
    for extra in attached
        .iter()
        .filter(|a| Some(a.as_str()) != want.managed.as_deref())
    {
        if r.change(
            &resource,
            ChangeKind::Update,
            format!("detach {extra}, which the spec does not give"),
            true,
        ) {
            iam.detach_role_policy()
                .role_name(&name)
                .policy_arn(extra)
                .send()
                .await
                .map_err(|e| aws_error(&resource, "DetachRolePolicy", e))?;
        }
    }
    if let Some(policy_arn) = &want.managed {
        if !attached.contains(policy_arn)
            && r.change(
                &resource,
                ChangeKind::Update,
                format!("attach {policy_arn}"),
                false,
            )
        {
            iam.attach_role_policy()
                .role_name(&name)
                .policy_arn(policy_arn)
                .send()
                .await
                .map_err(|e| aws_error(&resource, "AttachRolePolicy", e))?;
        }
    }
    Ok(arn)
}

async fn delete(t: &mut Teardown<'_>, which: &str) -> Result<(), ProvisionError> {
    let name = role_name(&t.stack, which);
    let role = match t.clients.iam.get_role().role_name(&name).send().await {
        Ok(got) => got.role().cloned(),
        Err(e) if e.as_service_error().is_some_and(not_found) => None,
        Err(e) => return Err(aws_error(&format!("iam-role/{name}"), "GetRole", e)),
    };
    let Some(role) = role else {
        return Ok(());
    };
    // Only the stack's own role: one of the same name without its tag is someone else's.
    if !is_stacks(&role, &t.stack) {
        t.note(&format!(
            "left iam-role {name}: it is not this stack's (no {STACK_TAG}={} tag)",
            t.stack
        ));
        return Ok(());
    }
    if !t.live() || delete_role(t.clients, &name).await? {
        t.say(format!("iam-role {name}"));
    }
    Ok(())
}

/// Deletes a role with its policies; false when it did not exist.
async fn delete_role(clients: &Clients, name: &str) -> Result<bool, ProvisionError> {
    let iam = &clients.iam;
    let res = format!("iam-role/{name}");
    let inline: Vec<String> = match iam
        .list_role_policies()
        .role_name(name)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
    {
        Ok(names) => names,
        Err(e) if e.as_service_error().is_some_and(not_found) => return Ok(false),
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
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| aws_error(&res, "ListAttachedRolePolicies", e))?;
    for arn in attached.iter().filter_map(|p| p.policy_arn()) {
        iam.detach_role_policy()
            .role_name(name)
            .policy_arn(arn)
            .send()
            .await
            .map_err(|e| aws_error(&res, "DetachRolePolicy", e))?;
    }
    iam.delete_role()
        .role_name(name)
        .send()
        .await
        .map_err(|e| aws_error(&res, "DeleteRole", e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flow_log_role_is_confined_to_the_accounts_flow_logs_and_the_stacks_group() {
        let want = flow_logs("research", "aws-us-gov", "us-gov-west-1", "111111111111");
        let cond = &want.trust["Statement"][0]["Condition"];
        assert_eq!(cond["StringEquals"]["aws:SourceAccount"], "111111111111");
        assert_eq!(
            cond["ArnLike"]["aws:SourceArn"],
            "arn:aws-us-gov:ec2:us-gov-west-1:111111111111:vpc-flow-log/*"
        );
        assert_eq!(
            want.inline["Statement"][0]["Resource"][0],
            "arn:aws-us-gov:logs:us-gov-west-1:111111111111:log-group:/egresswatch/research/flow-logs"
        );
    }

    #[test]
    fn the_studio_role_denies_work_outside_the_vpc_even_with_the_managed_policy() {
        let spec = StackSpec {
            studio_managed_policy: true,
            ..StackSpec::default()
        };
        let want = studio(&spec, "aws", "eu-west-1", "111111111111");
        assert_eq!(
            want.managed.as_deref(),
            Some("arn:aws:iam::aws:policy/AmazonSageMakerFullAccess")
        );
        let statements = want.inline["Statement"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let deny = statements
            .iter()
            .find(|s| s["Sid"] == "DenyWorkOutsideTheVpc")
            .expect("the deny statement");
        assert_eq!(deny["Effect"], "Deny");
        assert_eq!(deny["Condition"]["Null"]["sagemaker:VpcSubnets"], "true");
        assert!(statements
            .iter()
            .any(|s| s["Sid"] == "DenyChangingTheDomain" && s["Effect"] == "Deny"));
    }
}
