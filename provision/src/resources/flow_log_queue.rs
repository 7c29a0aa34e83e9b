//! The SQS queue that announces each new flow-log object to the daemon, its dead-letter queue
//! (where an object that cannot be read ends up after a few attempts instead of blocking the
//! rest), and the bucket notification that feeds it, filtered to the stack's prefix so one
//! bucket can serve many stacks. The queue admits messages only from that bucket.
//!
//! S3 notifications are at-least-once and the daemon deletes a message only once the object's
//! records are committed, so messages are kept 14 days (the most SQS allows): a daemon that is
//! down for days loses nothing.

use std::collections::HashMap;

use aws_sdk_s3::types::{
    Event, FilterRule, FilterRuleName, NotificationConfiguration, NotificationConfigurationFilter,
    QueueConfiguration, S3KeyFilter,
};
use aws_sdk_sqs::types::QueueAttributeName;

use super::flow_log_bucket::exists;
use super::{decode_policy, flow_log_prefix, flow_log_queue_name, resource, Teardown, PLANNED};
use crate::aws::{aws_error, Clients};
use crate::retry::Passing;
use crate::spec::FlowLogDestination;
use crate::stack::{ChangeKind, Reconciler, STACK_TAG};
use crate::ProvisionError;

resource!(FlowLogQueue, "flow-log-queue");

/// The tag that records which bucket notifies the queue: `down` has no spec to read it from.
const BUCKET_TAG: &str = "egresswatch:bucket";
/// Receives before a message goes to the dead-letter queue.
pub const MAX_RECEIVES: u32 = 5;
const FOURTEEN_DAYS: &str = "1209600";

/// The notification's id in the bucket's configuration: one per stack.
pub fn notification_id(stack: &str) -> String {
    format!("egresswatch-{stack}")
}

/// The attributes the queue must have. `dead_letter_arn` is None for the dead-letter queue.
pub fn wanted_attributes(
    queue_arn: &str,
    dead_letter_arn: Option<&str>,
    bucket_arn: &str,
    bucket_account: Option<&str>,
) -> HashMap<QueueAttributeName, String> {
    let mut a = HashMap::from([
        (
            QueueAttributeName::MessageRetentionPeriod,
            FOURTEEN_DAYS.to_string(),
        ),
        (QueueAttributeName::SqsManagedSseEnabled, "true".to_string()),
    ]);
    if let Some(dlq) = dead_letter_arn {
        // Long enough for a large object; the daemon extends it while it reads one.
        a.insert(QueueAttributeName::VisibilityTimeout, "300".into());
        a.insert(
            QueueAttributeName::ReceiveMessageWaitTimeSeconds,
            "20".into(),
        );
        a.insert(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq, "maxReceiveCount": MAX_RECEIVES})
                .to_string(),
        );
        let mut condition = serde_json::json!({"ArnEquals": {"aws:SourceArn": bucket_arn}});
        if let Some(account) = bucket_account {
            condition["StringEquals"] = serde_json::json!({"aws:SourceAccount": account});
        }
        a.insert(
            QueueAttributeName::Policy,
            serde_json::json!({"Version": "2012-10-17", "Statement": [{"Sid": "FlowLogObjectsFromTheBucket", "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"}, "Action": "sqs:SendMessage", "Resource": queue_arn, "Condition": condition}]})
            .to_string(),
        );
    }
    a
}

/// The attributes that differ from what is wanted (JSON documents compared by meaning).
pub fn differing(
    current: &HashMap<QueueAttributeName, String>,
    wanted: &HashMap<QueueAttributeName, String>,
) -> Vec<QueueAttributeName> {
    let mut out: Vec<_> = wanted
        .iter()
        .filter(|(k, v)| {
            let now = current.get(*k);
            match k {
                QueueAttributeName::Policy => {
                    now.map(|n| decode_policy(n)) != Some(decode_policy(v))
                }
                QueueAttributeName::RedrivePolicy => {
                    // SQS writes maxReceiveCount as a number or a string.
                    let norm = |s: &str| {
                        let j = decode_policy(s);
                        (
                            j["deadLetterTargetArn"].as_str().map(String::from),
                            j["maxReceiveCount"]
                                .to_string()
                                .trim_matches('"')
                                .to_string(),
                        )
                    };
                    now.map(|n| norm(n)) != Some(norm(v))
                }
                _ => now != Some(*v),
            }
        })
        .map(|(k, _)| k.clone())
        .collect();
    out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    out
}

fn queue_missing<E: aws_sdk_sqs::error::ProvideErrorMetadata>(e: &E) -> bool {
    matches!(
        e.code(),
        Some("QueueDoesNotExist" | "AWS.SimpleQueueService.NonExistentQueue")
    )
}

/// The queue's URL, if there is one of that name.
async fn find(clients: &Clients, name: &str) -> Result<Option<String>, ProvisionError> {
    match clients.sqs.get_queue_url().queue_name(name).send().await {
        Ok(got) => Ok(got.queue_url().map(String::from)),
        Err(e) if e.as_service_error().is_some_and(queue_missing) => Ok(None),
        Err(e) => Err(aws_error("flow-log-queue", "GetQueueUrl", e)),
    }
}

async fn tags(clients: &Clients, url: &str) -> Result<HashMap<String, String>, ProvisionError> {
    Ok(clients
        .sqs
        .list_queue_tags()
        .queue_url(url)
        .send()
        .await
        .map_err(|e| aws_error("flow-log-queue", "ListQueueTags", e))?
        .tags()
        .cloned()
        .unwrap_or_default())
}

/// Makes or repairs one queue; returns its URL and ARN (placeholders in a plan that would
/// create it).
async fn queue(
    r: &mut Reconciler<'_>,
    dead_letter: bool,
    dead_letter_arn: &str,
) -> Result<(String, String), ProvisionError> {
    let name = flow_log_queue_name(&r.stack, dead_letter);
    let resource = if dead_letter {
        "flow-log-dead-letter-queue"
    } else {
        "flow-log-queue"
    };
    let arn = format!(
        "arn:{}:sqs:{}:{}:{name}",
        r.partition, r.clients.region, r.out.account_id
    );
    let bucket = r.out.flow_log_bucket.clone();
    let bucket_arn = format!("arn:{}:s3:::{bucket}", r.partition);
    // The stack's own bucket is in this account; a named one may be in the log archive's.
    let bucket_account = r
        .spec
        .flow_log_bucket
        .is_none()
        .then(|| r.out.account_id.clone());
    let wanted = wanted_attributes(
        &arn,
        (!dead_letter).then_some(dead_letter_arn),
        &bucket_arn,
        bucket_account.as_deref(),
    );
    let sqs = r.clients.sqs.clone();
    let url = match find(r.clients, &name).await? {
        Some(url) => {
            let tags = tags(r.clients, &url).await?;
            if tags.get(STACK_TAG) != Some(&r.stack) {
                return Err(ProvisionError::Conflict(format!(
                    "queue {name} exists but is not stack {}'s (it has no {STACK_TAG}={} tag); it is left alone",
                    r.stack, r.stack
                )));
            }
            if !dead_letter
                && tags.get(BUCKET_TAG) != Some(&bucket)
                && r.change(
                    resource,
                    ChangeKind::Update,
                    format!("record bucket {bucket}"),
                    false,
                )
            {
                sqs.tag_queue()
                    .queue_url(&url)
                    .tags(BUCKET_TAG, &bucket)
                    .send()
                    .await
                    .map_err(|e| aws_error(resource, "TagQueue", e))?;
            }
            url
        }
        None => {
            if !r.change(
                resource,
                ChangeKind::Create,
                if dead_letter {
                    format!("queue {name} for objects that cannot be read")
                } else {
                    format!("queue {name}: announces each new object under the stack's prefix")
                },
                false,
            ) {
                return Ok((PLANNED.into(), arn));
            }
            let mut create = sqs
                .create_queue()
                .queue_name(&name)
                .set_attributes(Some(wanted.clone()))
                .tags(STACK_TAG, &r.stack);
            if !dead_letter {
                create = create.tags(BUCKET_TAG, &bucket);
            }
            // `down` then `up` within a minute: SQS keeps a deleted queue's name for 60 s.
            let url = crate::retry_passing!(&[Passing::NameDeletedRecently], &mut *r.progress, {
                create
                    .clone()
                    .send()
                    .await
                    .map_err(|e| aws_error(resource, "CreateQueue", e))
            })?
            .queue_url()
            .unwrap_or_default()
            .to_string();
            return Ok((url, arn));
        }
    };
    let current = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .map_err(|e| aws_error(resource, "GetQueueAttributes", e))?
        .attributes()
        .cloned()
        .unwrap_or_default();
    let changed = differing(&current, &wanted);
    if !changed.is_empty() {
        // Anyone else let in could announce objects that are not flow logs, or none at all.
        let security = changed.contains(&QueueAttributeName::Policy);
        let names: Vec<&str> = changed.iter().map(|k| k.as_str()).collect();
        if r.change(
            resource,
            ChangeKind::Update,
            format!("set {}", names.join(", ")),
            security,
        ) {
            let set: HashMap<_, _> = wanted
                .into_iter()
                .filter(|(k, _)| changed.contains(k))
                .collect();
            sqs.set_queue_attributes()
                .queue_url(&url)
                .set_attributes(Some(set))
                .send()
                .await
                .map_err(|e| aws_error(resource, "SetQueueAttributes", e))?;
        }
    }
    Ok((
        url,
        current
            .get(&QueueAttributeName::QueueArn)
            .cloned()
            .unwrap_or(arn),
    ))
}

/// The bucket's queue configurations with the stack's in place (others' kept as they are).
fn with_ours(
    current: &aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput,
    ours: Option<QueueConfiguration>,
    id: &str,
) -> NotificationConfiguration {
    let mut queues: Vec<QueueConfiguration> = current
        .queue_configurations()
        .iter()
        .filter(|q| q.id() != Some(id))
        .cloned()
        .collect();
    queues.extend(ours);
    NotificationConfiguration::builder()
        .set_queue_configurations(Some(queues))
        .set_topic_configurations(Some(current.topic_configurations().to_vec()))
        .set_lambda_function_configurations(Some(current.lambda_function_configurations().to_vec()))
        .set_event_bridge_configuration(current.event_bridge_configuration().cloned())
        .build()
}

fn prefix_of(q: &QueueConfiguration) -> Option<&str> {
    q.filter()
        .and_then(|f| f.key())
        .and_then(|k| {
            k.filter_rules().iter().find(|r| {
                r.name()
                    .is_some_and(|n| n.as_str().eq_ignore_ascii_case("prefix"))
            })
        })
        .and_then(|r| r.value())
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    if r.spec.flow_log_destination != FlowLogDestination::S3 {
        return Ok(());
    }
    let (dlq_url, dlq_arn) = queue(r, true, "").await?;
    let (url, arn) = queue(r, false, &dlq_arn).await?;
    r.out.flow_log_dead_letter_queue_url = dlq_url;
    r.out.flow_log_queue_url = url.clone();
    let bucket = r.out.flow_log_bucket.clone();
    let prefix = flow_log_prefix(&r.stack);
    let detail = format!("bucket {bucket} announces new objects under {prefix} to the queue");
    if url == PLANNED || exists(r.clients, &bucket).await? != Some(true) {
        // A plan that makes the queue or the bucket: the notification comes with them.
        r.change("flow-log-notification", ChangeKind::Create, detail, false);
        return Ok(());
    }
    let s3 = r.clients.s3.clone();
    let id = notification_id(&r.stack);
    let current = s3
        .get_bucket_notification_configuration()
        .bucket(&bucket)
        .send()
        .await
        .map_err(|e| {
            aws_error(
                "flow-log-notification",
                "GetBucketNotificationConfiguration",
                e,
            )
        })?;
    let existing = current
        .queue_configurations()
        .iter()
        .find(|q| q.id() == Some(id.as_str()));
    let in_spec = existing.is_some_and(|q| {
        q.queue_arn() == arn
            && q.events()
                .iter()
                .any(|e| e.as_str() == "s3:ObjectCreated:*")
            && prefix_of(q) == Some(prefix.as_str())
    });
    if in_spec {
        return Ok(());
    }
    // Without it the daemon hears of no object: it is blind (unless the queue is new).
    let new_queue = r
        .changes
        .iter()
        .any(|c| c.kind == ChangeKind::Create && c.resource == "flow-log-queue");
    if !r.change(
        "flow-log-notification",
        if existing.is_some() {
            ChangeKind::Update
        } else {
            ChangeKind::Create
        },
        detail,
        !new_queue,
    ) {
        return Ok(());
    }
    let ours = QueueConfiguration::builder()
        .id(&id)
        .queue_arn(&arn)
        .events(Event::from("s3:ObjectCreated:*"))
        .filter(
            NotificationConfigurationFilter::builder()
                .key(
                    S3KeyFilter::builder()
                        .filter_rules(
                            FilterRule::builder()
                                .name(FilterRuleName::Prefix)
                                .value(&prefix)
                                .build(),
                        )
                        .build(),
                )
                .build(),
        )
        .build()
        .map_err(|e| ProvisionError::Unexpected(e.to_string()))?;
    let wanted = with_ours(&current, Some(ours), &id);
    // S3 checks that the queue's policy admits it; a policy written a moment ago may not be
    // visible to S3 for up to a minute.
    crate::retry_passing!(&[Passing::DestinationNotYetValid], &mut *r.progress, {
        s3.put_bucket_notification_configuration()
            .bucket(&bucket)
            .notification_configuration(wanted.clone())
            .send()
            .await
            .map_err(|e| {
                aws_error(
                    "flow-log-notification",
                    "PutBucketNotificationConfiguration",
                    e,
                )
            })
    })?;
    Ok(())
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    for dead_letter in [false, true] {
        let name = flow_log_queue_name(&t.stack, dead_letter);
        let Some(url) = find(t.clients, &name).await? else {
            continue;
        };
        let tags = tags(t.clients, &url).await?;
        if tags.get(STACK_TAG) != Some(&t.stack) {
            t.note(&format!(
                "left queue {name}: it is not this stack's (no {STACK_TAG}={} tag)",
                t.stack
            ));
            continue;
        }
        // The bucket (perhaps shared) stops announcing to the queue before it goes.
        if let Some(bucket) = tags.get(BUCKET_TAG) {
            let id = notification_id(&t.stack);
            let current = t
                .clients
                .s3
                .get_bucket_notification_configuration()
                .bucket(bucket)
                .send()
                .await;
            // A bucket deleted meanwhile has nothing left to announce.
            if let Ok(current) = current {
                if current
                    .queue_configurations()
                    .iter()
                    .any(|q| q.id() == Some(id.as_str()))
                {
                    if t.live() {
                        t.clients
                            .s3
                            .put_bucket_notification_configuration()
                            .bucket(bucket)
                            .notification_configuration(with_ours(&current, None, &id))
                            .send()
                            .await
                            .map_err(|e| {
                                aws_error(
                                    "flow-log-notification",
                                    "PutBucketNotificationConfiguration",
                                    e,
                                )
                            })?;
                    }
                    t.say(format!("notification {id} of bucket {bucket}"));
                }
            }
        }
        if t.live() {
            t.clients
                .sqs
                .delete_queue()
                .queue_url(&url)
                .send()
                .await
                .map_err(|e| aws_error("flow-log-queue", "DeleteQueue", e))?;
        }
        t.say(format!("queue {name}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_admits_only_the_bucket_and_redrives_to_its_dead_letter_queue() {
        let a = wanted_attributes(
            "arn:q",
            Some("arn:dlq"),
            "arn:aws:s3:::b",
            Some("111111111111"),
        );
        let policy = decode_policy(&a[&QueueAttributeName::Policy]);
        let cond = &policy["Statement"][0]["Condition"];
        assert_eq!(cond["ArnEquals"]["aws:SourceArn"], "arn:aws:s3:::b");
        assert_eq!(cond["StringEquals"]["aws:SourceAccount"], "111111111111");
        assert_eq!(
            decode_policy(&a[&QueueAttributeName::RedrivePolicy])["deadLetterTargetArn"],
            "arn:dlq"
        );
        let dlq = wanted_attributes("arn:dlq", None, "arn:aws:s3:::b", None);
        assert!(!dlq.contains_key(&QueueAttributeName::Policy));
        assert_eq!(
            dlq[&QueueAttributeName::MessageRetentionPeriod],
            FOURTEEN_DAYS
        );
    }

    #[test]
    fn attributes_compare_by_meaning() {
        let wanted = wanted_attributes("arn:q", Some("arn:dlq"), "arn:aws:s3:::b", None);
        let mut current = wanted.clone();
        // As SQS hands it back: another spacing, the count as a string.
        current.insert(
            QueueAttributeName::RedrivePolicy,
            r#"{"deadLetterTargetArn":"arn:dlq","maxReceiveCount":"5"}"#.into(),
        );
        assert!(differing(&current, &wanted).is_empty());
        current.insert(
            QueueAttributeName::Policy,
            r#"{"Statement":[{"Effect":"Allow","Principal":"*","Action":"sqs:*"}]}"#.into(),
        );
        current.remove(&QueueAttributeName::SqsManagedSseEnabled);
        assert_eq!(
            differing(&current, &wanted),
            [
                QueueAttributeName::Policy,
                QueueAttributeName::SqsManagedSseEnabled
            ]
        );
    }
}
