//! The flow log's CloudWatch Logs group: named after the stack, tagged, with the spec's
//! retention and KMS key. It holds the evidence, so `down` keeps it unless `--delete-logs`
//! (as CDK retains log groups and Terraform offers skip_destroy).

use aws_sdk_cloudwatchlogs::types::LogGroup;

use super::{log_group_name, resource, Teardown};
use crate::aws::aws_error;
use crate::stack::{ChangeKind, Reconciler, STACK_TAG};
use crate::ProvisionError;

resource!(FlowLogGroup, "log-group");

/// The group of exactly this name, if there is one.
async fn find(
    logs: &aws_sdk_cloudwatchlogs::Client,
    name: &str,
) -> Result<Option<LogGroup>, ProvisionError> {
    let groups = logs
        .describe_log_groups()
        .log_group_name_prefix(name)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .map_err(|e| aws_error("log-group", "DescribeLogGroups", e))?;
    Ok(groups
        .into_iter()
        .find(|g| g.log_group_name() == Some(name)))
}

/// Whether a log group carries the stack's tag (an untagged one of the same name is
/// someone else's).
pub async fn is_stacks(
    logs: &aws_sdk_cloudwatchlogs::Client,
    group: &LogGroup,
    stack: &str,
) -> Result<bool, ProvisionError> {
    // DescribeLogGroups gives the ARN with a trailing `:*`; the tagging API wants it without.
    let Some(arn) = group.arn().map(|a| a.trim_end_matches(":*").to_string()) else {
        return Ok(false);
    };
    let tags = logs
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .map_err(|e| aws_error("log-group", "ListTagsForResource", e))?;
    Ok(tags
        .tags()
        .is_some_and(|t| t.get(STACK_TAG).map(String::as_str) == Some(stack)))
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    if r.spec.flow_log_destination == crate::spec::FlowLogDestination::S3 {
        // A group left from before a switch to S3 is kept: it holds the evidence until then.
        return Ok(());
    }
    r.out.flow_log_destination = "cloudwatch".into();
    let logs = r.clients.logs.clone();
    let name = log_group_name(&r.stack);
    r.out.log_group = name.clone();
    let existing = find(&logs, &name).await?;
    if let Some(g) = &existing {
        if !is_stacks(&logs, g, &r.stack).await? {
            return Err(ProvisionError::Conflict(format!(
                "log group {name} exists but is not stack {}'s (it has no {STACK_TAG}={} tag); it is left alone: choose another stack name, or remove or tag that log group",
                r.stack, r.stack
            )));
        }
    }
    let key = r.spec.log_kms_key_arn.clone();
    if let Some(k) = &key {
        let service = format!("logs.{}.amazonaws.com", r.clients.region);
        crate::log_key::check(r.clients, k, &service, &mut *r.progress).await?;
    }
    let retention = match existing {
        Some(g) => {
            if key.is_some()
                && g.kms_key_id() != key.as_deref()
                && r.change(
                    "log-group",
                    ChangeKind::Update,
                    "encrypt with the spec's KMS key",
                    true,
                )
            {
                logs.associate_kms_key()
                    .log_group_name(&name)
                    .kms_key_id(key.unwrap_or_default())
                    .send()
                    .await
                    .map_err(|e| aws_error("log-group", "AssociateKmsKey", e))?;
            }
            g.retention_in_days()
        }
        None => {
            if !r.change(
                "log-group",
                ChangeKind::Create,
                format!("log group {name}, {} days", r.spec.log_retention_days),
                false,
            ) {
                return Ok(());
            }
            logs.create_log_group()
                .log_group_name(&name)
                .set_kms_key_id(key)
                .tags(STACK_TAG, &r.stack)
                .send()
                .await
                .map_err(|e| aws_error("log-group", "CreateLogGroup", e))?;
            None
        }
    };
    let days = r.spec.log_retention_days;
    if retention != Some(days)
        && r.change(
            "log-group",
            ChangeKind::Update,
            format!("retention {days} days"),
            false,
        )
    {
        logs.put_retention_policy()
            .log_group_name(&name)
            .retention_in_days(days)
            .send()
            .await
            .map_err(|e| aws_error("log-group", "PutRetentionPolicy", e))?;
    }
    Ok(())
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let logs = t.clients.logs.clone();
    let name = log_group_name(&t.stack);
    let Some(group) = find(&logs, &name).await? else {
        return Ok(());
    };
    if !is_stacks(&logs, &group, &t.stack).await? {
        t.note(&format!(
            "left log-group {name}: it is not this stack's (no {STACK_TAG}={} tag)",
            t.stack
        ));
        return Ok(());
    }
    if !t.opts.delete_logs {
        t.note(&format!(
            "kept log-group {name}: the flow logs are the evidence (--delete-logs deletes them)"
        ));
        return Ok(());
    }
    if t.live() {
        match logs.delete_log_group().log_group_name(&name).send().await {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                return Ok(())
            }
            Err(e) => return Err(aws_error("log-group", "DeleteLogGroup", e)),
        }
    }
    t.say(format!("log-group {name}"));
    Ok(())
}
