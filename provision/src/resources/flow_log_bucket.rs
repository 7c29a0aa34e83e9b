//! The bucket flow logs are delivered to with `flow-log-destination = "s3"`: either the
//! stack's own (public access blocked, encrypted, objects expiring after the retention,
//! a policy that lets only this account's log delivery write, and only under the stack's
//! prefix) or an existing one named in the spec, such as an organisation's log archive, whose
//! settings are its owner's and are only checked to exist.
//!
//! The objects are the evidence: `down` keeps the stack's bucket unless `--delete-logs`.

use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, BucketLocationConstraint, CreateBucketConfiguration,
    ExpirationStatus, LifecycleExpiration, LifecycleRule, LifecycleRuleFilter,
    PublicAccessBlockConfiguration, ServerSideEncryption, ServerSideEncryptionByDefault,
    ServerSideEncryptionConfiguration, ServerSideEncryptionRule, Tagging,
};

use super::{decode_policy, flow_log_bucket_name, flow_log_prefix, resource, Teardown};
use crate::aws::{aws_error, Clients};
use crate::spec::{FlowLogDestination, StackSpec};
use crate::stack::{ChangeKind, Reconciler, STACK_TAG};
use crate::ProvisionError;

resource!(FlowLogBucket, "flow-log-bucket");

const LIFECYCLE_RULE: &str = "egresswatch-flow-log-expiry";

/// The policy of the stack's own bucket: log delivery for this account may write under the
/// stack's prefix and read the bucket's ACL (flow-logs-s3-permissions in the VPC user guide),
/// and nothing reaches it without TLS.
pub fn bucket_policy(
    bucket: &str,
    prefix: &str,
    partition: &str,
    region: &str,
    account: &str,
) -> serde_json::Value {
    let bucket_arn = format!("arn:{partition}:s3:::{bucket}");
    let source = format!("arn:{partition}:logs:{region}:{account}:*");
    serde_json::json!({"Version": "2012-10-17", "Statement": [
        // Both layouts: `flow-log-hive-prefixes` writes under aws-account-id=ACCOUNT, and a
        // flow log being switched between them delivers to either meanwhile.
        {"Sid": "AWSLogDeliveryWrite", "Effect": "Allow", "Principal": {"Service": "delivery.logs.amazonaws.com"}, "Action": "s3:PutObject",
         "Resource": [format!("{bucket_arn}/{prefix}AWSLogs/{account}/*"), format!("{bucket_arn}/{prefix}AWSLogs/aws-account-id={account}/*")],
         "Condition": {"StringEquals": {"aws:SourceAccount": account, "s3:x-amz-acl": "bucket-owner-full-control"}, "ArnLike": {"aws:SourceArn": source}}},
        {"Sid": "AWSLogDeliveryAclCheck", "Effect": "Allow", "Principal": {"Service": "delivery.logs.amazonaws.com"}, "Action": ["s3:GetBucketAcl", "s3:ListBucket"],
         "Resource": bucket_arn,
         "Condition": {"StringEquals": {"aws:SourceAccount": account}, "ArnLike": {"aws:SourceArn": source}}},
        {"Sid": "DenyWithoutTls", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": [bucket_arn.clone(), format!("{bucket_arn}/*")],
         "Condition": {"Bool": {"aws:SecureTransport": "false"}}}
    ]})
}

/// The bucket the spec delivers to: the named one, or the stack's own.
pub fn bucket_of(spec: &StackSpec, stack: &str, account: &str, region: &str) -> String {
    spec.flow_log_bucket
        .clone()
        .unwrap_or_else(|| flow_log_bucket_name(stack, account, region))
}

fn code<E: aws_sdk_s3::error::ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> Option<String> {
    match e {
        aws_sdk_s3::error::SdkError::ServiceError(s) => s
            .err()
            .code()
            .map(String::from)
            .or_else(|| Some(s.raw().status().as_u16().to_string())),
        _ => None,
    }
}

/// Whether the bucket exists and this account can reach it: Some(true), no such bucket:
/// Some(false); another account's (HeadBucket answers 403): None.
pub(crate) async fn exists(
    clients: &Clients,
    bucket: &str,
) -> Result<Option<bool>, ProvisionError> {
    match clients.s3.head_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(Some(true)),
        Err(e) => match code(&e).as_deref() {
            Some("NotFound" | "NoSuchBucket" | "404") => Ok(Some(false)),
            Some("Forbidden" | "403") => Ok(None),
            _ => Err(aws_error("flow-log-bucket", "HeadBucket", e)),
        },
    }
}

/// Whether the bucket carries the stack's tag.
async fn is_stacks(clients: &Clients, bucket: &str, stack: &str) -> Result<bool, ProvisionError> {
    match clients.s3.get_bucket_tagging().bucket(bucket).send().await {
        Ok(t) => Ok(t
            .tag_set()
            .iter()
            .any(|t| t.key() == STACK_TAG && t.value() == stack)),
        Err(e) if code(&e).as_deref() == Some("NoSuchTagSet") => Ok(false),
        Err(e) => Err(aws_error("flow-log-bucket", "GetBucketTagging", e)),
    }
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    if r.spec.flow_log_destination != FlowLogDestination::S3 {
        return Ok(());
    }
    let bucket = bucket_of(&r.spec, &r.stack, &r.out.account_id, &r.clients.region);
    r.out.flow_log_destination = "s3".into();
    r.out.flow_log_bucket = bucket.clone();
    r.out.flow_log_prefix = flow_log_prefix(&r.stack);
    r.out.flow_log_file_format = match r.spec.flow_log_file_format {
        crate::spec::FlowLogFileFormat::Text => "text".into(),
        crate::spec::FlowLogFileFormat::Parquet => "parquet".into(),
    };
    let found = exists(r.clients, &bucket).await?;
    if r.spec.flow_log_bucket.is_some() {
        // Someone else's bucket: its settings are theirs; it has to be there.
        return match found {
            Some(true) => Ok(()),
            Some(false) => Err(ProvisionError::Conflict(format!(
                "flow-log-bucket {bucket} does not exist: create it (with a policy that lets delivery.logs.amazonaws.com write) or leave flow-log-bucket out to have the stack make one"
            ))),
            None => Err(ProvisionError::Conflict(format!(
                "flow-log-bucket {bucket} exists but this account cannot reach it (HeadBucket: 403); its owner must let this account read it"
            ))),
        };
    }
    if let Err(e) = crate::spec::validate_bucket_name(&bucket) {
        return Err(ProvisionError::Conflict(format!(
            "the stack's flow-log bucket name is not usable: {e}; name a bucket with flow-log-bucket, or use a shorter stack name"
        )));
    }
    let s3 = r.clients.s3.clone();
    match found {
        None => {
            return Err(ProvisionError::Conflict(format!(
                "bucket {bucket} belongs to another account (bucket names are global); name a bucket with flow-log-bucket"
            )))
        }
        Some(true) => {
            if !is_stacks(r.clients, &bucket, &r.stack).await? {
                return Err(ProvisionError::Conflict(format!(
                    "bucket {bucket} exists but is not stack {}'s (it has no {STACK_TAG}={} tag); it is left alone: name it with flow-log-bucket to deliver into it, or remove or tag it",
                    r.stack, r.stack
                )));
            }
        }
        Some(false) => {
            if !r.change(
                "flow-log-bucket",
                ChangeKind::Create,
                format!("bucket {bucket}: encrypted, public access blocked, objects expire after {} days", r.spec.log_retention_days),
                false,
            ) {
                return Ok(());
            }
            let mut create = s3.create_bucket().bucket(&bucket);
            // us-east-1 is the one region that takes no location constraint.
            if r.clients.region != "us-east-1" {
                create = create.create_bucket_configuration(
                    CreateBucketConfiguration::builder()
                        .location_constraint(BucketLocationConstraint::from(r.clients.region.as_str()))
                        .build(),
                );
            }
            create
                .send()
                .await
                .map_err(|e| aws_error("flow-log-bucket", "CreateBucket", e))?;
            let tag = aws_sdk_s3::types::Tag::builder()
                .key(STACK_TAG)
                .value(&r.stack)
                .build()
                .map_err(|e| ProvisionError::Unexpected(e.to_string()))?;
            s3.put_bucket_tagging()
                .bucket(&bucket)
                .tagging(
                    Tagging::builder()
                        .tag_set(tag)
                        .build()
                        .map_err(|e| ProvisionError::Unexpected(e.to_string()))?,
                )
                .send()
                .await
                .map_err(|e| aws_error("flow-log-bucket", "PutBucketTagging", e))?;
        }
    }
    public_access(r, &bucket).await?;
    encryption(r, &bucket).await?;
    lifecycle(r, &bucket).await?;
    policy(r, &bucket).await
}

async fn public_access(r: &mut Reconciler<'_>, bucket: &str) -> Result<(), ProvisionError> {
    let s3 = r.clients.s3.clone();
    let blocked = match s3.get_public_access_block().bucket(bucket).send().await {
        Ok(got) => got.public_access_block_configuration().is_some_and(|c| {
            c.block_public_acls() == Some(true)
                && c.ignore_public_acls() == Some(true)
                && c.block_public_policy() == Some(true)
                && c.restrict_public_buckets() == Some(true)
        }),
        Err(e) if code(&e).as_deref() == Some("NoSuchPublicAccessBlockConfiguration") => false,
        Err(e) => return Err(aws_error("flow-log-bucket", "GetPublicAccessBlock", e)),
    };
    if !blocked
        && r.change(
            "flow-log-bucket",
            ChangeKind::Update,
            "block all public access",
            true,
        )
    {
        s3.put_public_access_block()
            .bucket(bucket)
            .public_access_block_configuration(
                PublicAccessBlockConfiguration::builder()
                    .block_public_acls(true)
                    .ignore_public_acls(true)
                    .block_public_policy(true)
                    .restrict_public_buckets(true)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| aws_error("flow-log-bucket", "PutPublicAccessBlock", e))?;
    }
    Ok(())
}

async fn encryption(r: &mut Reconciler<'_>, bucket: &str) -> Result<(), ProvisionError> {
    let s3 = r.clients.s3.clone();
    let key = r.spec.log_kms_key_arn.clone();
    if let Some(k) = &key {
        crate::log_key::check(
            r.clients,
            k,
            "delivery.logs.amazonaws.com",
            &mut *r.progress,
        )
        .await?;
    }
    let current = match s3.get_bucket_encryption().bucket(bucket).send().await {
        Ok(got) => got
            .server_side_encryption_configuration()
            .and_then(|c| c.rules().first())
            .and_then(|rule| rule.apply_server_side_encryption_by_default())
            .map(|d| {
                (
                    d.sse_algorithm().clone(),
                    d.kms_master_key_id().map(String::from),
                )
            }),
        Err(e) if code(&e).as_deref() == Some("ServerSideEncryptionConfigurationNotFoundError") => {
            None
        }
        Err(e) => return Err(aws_error("flow-log-bucket", "GetBucketEncryption", e)),
    };
    let wanted = match &key {
        Some(k) => (ServerSideEncryption::AwsKms, Some(k.clone())),
        None => (ServerSideEncryption::Aes256, None),
    };
    if current.as_ref() == Some(&wanted) {
        return Ok(());
    }
    let detail = match &key {
        Some(k) => format!("encrypt objects with KMS key {k}"),
        None => "encrypt objects (SSE-S3)".into(),
    };
    if r.change(
        "flow-log-bucket",
        ChangeKind::Update,
        detail,
        current.is_some(),
    ) {
        let default = ServerSideEncryptionByDefault::builder()
            .sse_algorithm(wanted.0)
            .set_kms_master_key_id(wanted.1)
            .build()
            .map_err(|e| ProvisionError::Unexpected(e.to_string()))?;
        s3.put_bucket_encryption()
            .bucket(bucket)
            .server_side_encryption_configuration(
                ServerSideEncryptionConfiguration::builder()
                    .rules(
                        ServerSideEncryptionRule::builder()
                            .apply_server_side_encryption_by_default(default)
                            .build(),
                    )
                    .build()
                    .map_err(|e| ProvisionError::Unexpected(e.to_string()))?,
            )
            .send()
            .await
            .map_err(|e| aws_error("flow-log-bucket", "PutBucketEncryption", e))?;
    }
    Ok(())
}

async fn lifecycle(r: &mut Reconciler<'_>, bucket: &str) -> Result<(), ProvisionError> {
    let s3 = r.clients.s3.clone();
    let days = r.spec.log_retention_days;
    let rules = match s3
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(got) => got.rules().to_vec(),
        Err(e) if code(&e).as_deref() == Some("NoSuchLifecycleConfiguration") => vec![],
        Err(e) => {
            return Err(aws_error(
                "flow-log-bucket",
                "GetBucketLifecycleConfiguration",
                e,
            ))
        }
    };
    let ours = rules.iter().find(|rule| rule.id() == Some(LIFECYCLE_RULE));
    let in_spec = ours.is_some_and(|rule| {
        rule.status() == &ExpirationStatus::Enabled
            && rule.expiration().and_then(|e| e.days()) == Some(days)
    });
    if in_spec
        || !r.change(
            "flow-log-bucket",
            ChangeKind::Update,
            format!("objects expire after {days} days"),
            false,
        )
    {
        return Ok(());
    }
    let mut keep: Vec<LifecycleRule> = rules
        .into_iter()
        .filter(|rule| rule.id() != Some(LIFECYCLE_RULE))
        .collect();
    keep.push(
        LifecycleRule::builder()
            .id(LIFECYCLE_RULE)
            .status(ExpirationStatus::Enabled)
            .filter(LifecycleRuleFilter::builder().prefix("").build())
            .expiration(LifecycleExpiration::builder().days(days).build())
            .build()
            .map_err(|e| ProvisionError::Unexpected(e.to_string()))?,
    );
    s3.put_bucket_lifecycle_configuration()
        .bucket(bucket)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .set_rules(Some(keep))
                .build()
                .map_err(|e| ProvisionError::Unexpected(e.to_string()))?,
        )
        .send()
        .await
        .map_err(|e| aws_error("flow-log-bucket", "PutBucketLifecycleConfiguration", e))?;
    Ok(())
}

async fn policy(r: &mut Reconciler<'_>, bucket: &str) -> Result<(), ProvisionError> {
    let s3 = r.clients.s3.clone();
    let wanted = bucket_policy(
        bucket,
        &flow_log_prefix(&r.stack),
        &r.partition,
        &r.clients.region,
        &r.out.account_id,
    );
    let current = match s3.get_bucket_policy().bucket(bucket).send().await {
        Ok(got) => got.policy().map(decode_policy),
        Err(e) if code(&e).as_deref() == Some("NoSuchBucketPolicy") => None,
        Err(e) => return Err(aws_error("flow-log-bucket", "GetBucketPolicy", e)),
    };
    if current.as_ref() != Some(&wanted)
        && r.change(
            "flow-log-bucket",
            ChangeKind::Update,
            "bucket policy: only this account's log delivery writes, only over TLS",
            current.is_some(),
        )
    {
        s3.put_bucket_policy()
            .bucket(bucket)
            .policy(wanted.to_string())
            .send()
            .await
            .map_err(|e| aws_error("flow-log-bucket", "PutBucketPolicy", e))?;
    }
    Ok(())
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let bucket = flow_log_bucket_name(&t.stack, &t.account, &t.clients.region);
    if exists(t.clients, &bucket).await? != Some(true) {
        return Ok(());
    }
    if !is_stacks(t.clients, &bucket, &t.stack).await? {
        t.note(&format!(
            "left bucket {bucket}: it is not this stack's (no {STACK_TAG}={} tag)",
            t.stack
        ));
        return Ok(());
    }
    if !t.opts.delete_logs {
        t.note(&format!(
            "kept bucket {bucket}: the flow logs are the evidence (--delete-logs deletes it with its objects)"
        ));
        return Ok(());
    }
    if t.live() {
        let s3 = t.clients.s3.clone();
        // A bucket must be empty to be deleted; DeleteObjects takes 1,000 keys a call, as a
        // ListObjectsV2 page holds.
        let mut pages = s3.list_objects_v2().bucket(&bucket).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| aws_error("flow-log-bucket", "ListObjectsV2", e))?;
            let keys: Vec<_> = page
                .contents()
                .iter()
                .filter_map(|o| o.key())
                .filter_map(|k| {
                    aws_sdk_s3::types::ObjectIdentifier::builder()
                        .key(k)
                        .build()
                        .ok()
                })
                .collect();
            if keys.is_empty() {
                continue;
            }
            s3.delete_objects()
                .bucket(&bucket)
                .delete(
                    aws_sdk_s3::types::Delete::builder()
                        .set_objects(Some(keys))
                        .quiet(true)
                        .build()
                        .map_err(|e| ProvisionError::Unexpected(e.to_string()))?,
                )
                .send()
                .await
                .map_err(|e| aws_error("flow-log-bucket", "DeleteObjects", e))?;
        }
        s3.delete_bucket()
            .bucket(&bucket)
            .send()
            .await
            .map_err(|e| aws_error("flow-log-bucket", "DeleteBucket", e))?;
    }
    t.say(format!("bucket {bucket}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_accounts_log_delivery_writes_and_only_under_the_stacks_prefix() {
        let p = bucket_policy(
            "b",
            "egresswatch/research/",
            "aws",
            "eu-west-1",
            "111111111111",
        );
        let write = &p["Statement"][0];
        assert_eq!(write["Principal"]["Service"], "delivery.logs.amazonaws.com");
        assert_eq!(
            write["Resource"],
            serde_json::json!([
                "arn:aws:s3:::b/egresswatch/research/AWSLogs/111111111111/*",
                "arn:aws:s3:::b/egresswatch/research/AWSLogs/aws-account-id=111111111111/*"
            ])
        );
        assert_eq!(
            p["Statement"][1]["Action"],
            serde_json::json!(["s3:GetBucketAcl", "s3:ListBucket"])
        );
        assert_eq!(
            write["Condition"]["StringEquals"]["aws:SourceAccount"],
            "111111111111"
        );
        assert_eq!(
            write["Condition"]["ArnLike"]["aws:SourceArn"],
            "arn:aws:logs:eu-west-1:111111111111:*"
        );
        assert_eq!(p["Statement"][2]["Effect"], "Deny");
    }

    #[test]
    fn the_stacks_bucket_is_named_for_account_and_region_in_lowercase() {
        let spec = StackSpec::default();
        assert_eq!(
            bucket_of(&spec, "Research", "111111111111", "eu-west-1"),
            "research-flow-logs-111111111111-eu-west-1"
        );
        let named = StackSpec {
            flow_log_bucket: Some("org-archive".into()),
            ..StackSpec::default()
        };
        assert_eq!(bucket_of(&named, "research", "1", "r"), "org-archive");
    }
}
