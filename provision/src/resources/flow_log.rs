//! The VPC flow log: ALL traffic, 60-second aggregation, the custom format whose extra fields
//! tie every NAT flow to the workload behind it, delivered to the stack's log group by the
//! stack's role. A flow log cannot be changed in place: one that differs, or whose delivery
//! fails (the monitor is blind then), is made again.

use aws_sdk_ec2::types::{
    DestinationFileFormat, DestinationOptionsRequest, FlowLog as AwsFlowLog, FlowLogsResourceType,
    LogDestinationType, ResourceType, TrafficType,
};

use super::{every_page, filter, has_tag, log_group_name, resource, Teardown, PLANNED};
use crate::aws::aws_error;
use crate::retry::Passing;
use crate::spec::{flow_log_format, FlowLogDestination};
use crate::stack::{ChangeKind, Reconciler, STACK_TAG};
use crate::ProvisionError;

resource!(FlowLog, "flow-log");

/// What the stack's flow log must be.
pub struct Wanted<'a> {
    pub format: &'a str,
    pub destination: Destination<'a>,
}

/// Where it delivers.
pub enum Destination<'a> {
    /// A log group, written with a role.
    Logs { group: &'a str, role_arn: &'a str },
    /// A bucket and prefix (`arn:…:s3:::bucket/prefix/`), with the object options.
    S3 {
        arn: String,
        file_format: &'static str,
        hive_prefixes: bool,
        hourly: bool,
    },
}

/// Each way the flow log differs from what is wanted; empty when it is in spec.
pub fn faults(f: &AwsFlowLog, want: &Wanted<'_>) -> Vec<String> {
    let mut why = Vec::new();
    if f.log_format() != Some(want.format) {
        why.push("record format differs".to_string());
    }
    match &want.destination {
        Destination::Logs { group, role_arn } => {
            if f.log_destination_type().map(|t| t.as_str()) != Some("cloud-watch-logs") {
                why.push("it does not deliver to CloudWatch Logs".into());
            }
            if f.log_group_name() != Some(*group) {
                why.push("log group differs".into());
            }
            if f.deliver_logs_permission_arn() != Some(*role_arn) {
                why.push("delivery role differs".into());
            }
        }
        Destination::S3 {
            arn,
            file_format,
            hive_prefixes,
            hourly,
        } => {
            if f.log_destination_type().map(|t| t.as_str()) != Some("s3") {
                why.push("it does not deliver to S3".into());
            }
            let trim = |a: &str| a.trim_end_matches('/').to_string();
            if f.log_destination().map(trim) != Some(trim(arn)) {
                why.push("bucket or prefix differs".into());
            }
            // AWS returns the options it keeps (an emulator may keep none).
            if let Some(o) = f.destination_options() {
                if o.file_format().map(|f| f.as_str()) != Some(*file_format) {
                    why.push("file format differs".into());
                }
                if o.hive_compatible_partitions() != Some(*hive_prefixes)
                    || o.per_hour_partition() != Some(*hourly)
                {
                    why.push("partitioning differs".into());
                }
            }
        }
    }
    if f.traffic_type().map(|t| t.as_str()) != Some("ALL") {
        why.push("traffic type is not ALL".into());
    }
    if f.max_aggregation_interval() != Some(60) {
        why.push("aggregation interval is not 60 s".into());
    }
    if f.deliver_logs_status() == Some("FAILED") {
        why.push(format!(
            "its delivery fails ({})",
            f.deliver_logs_error_message().unwrap_or("no reason given")
        ));
    }
    why
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    let ec2 = r.clients.ec2.clone();
    let format = flow_log_format();
    r.out.flow_log_format = format.clone();
    let group = log_group_name(&r.stack);
    let existing = if r.out.vpc_id == PLANNED {
        vec![]
    } else {
        every_page!(
            ec2.describe_flow_logs()
                .filter(filter("resource-id", &r.out.vpc_id)),
            "flow-log",
            "DescribeFlowLogs"
        )?
    };
    let role_arn = r.out.flow_log_role_arn.clone();
    let s3 = r.spec.flow_log_destination == FlowLogDestination::S3;
    let destination = if s3 {
        Destination::S3 {
            arn: format!(
                "arn:{}:s3:::{}/{}",
                r.partition, r.out.flow_log_bucket, r.out.flow_log_prefix
            ),
            file_format: r.spec.flow_log_file_format.as_aws(),
            hive_prefixes: r.spec.flow_log_hive_prefixes,
            hourly: r.spec.flow_log_hourly_partitions,
        }
    } else {
        Destination::Logs {
            group: &group,
            role_arn: &role_arn,
        }
    };
    let want = Wanted {
        format: &format,
        destination,
    };
    let mut keep = None;
    let ours: Vec<_> = existing
        .iter()
        .filter(|f| has_tag(f.tags(), STACK_TAG, &r.stack))
        .collect();
    for f in ours {
        let id = f.flow_log_id().unwrap_or_default().to_string();
        let why = faults(f, &want);
        if why.is_empty() && keep.is_none() {
            keep = Some(id);
            continue;
        }
        let detail = if why.is_empty() {
            format!("delete duplicate flow log {id}")
        } else {
            format!(
                "flow log {id}: {} (a flow log cannot be changed in place)",
                why.join(", ")
            )
        };
        if r.change("flow-log", ChangeKind::Replace, detail, true) {
            ec2.delete_flow_logs()
                .flow_log_ids(&id)
                .send()
                .await
                .map_err(|e| aws_error("flow-log", "DeleteFlowLogs", e))?;
        }
    }
    if let Some(id) = keep {
        r.out.flow_log_id = id;
        return Ok(());
    }
    let vpc_exists = r.out.vpc_id != PLANNED;
    if !r.change(
        "flow-log",
        ChangeKind::Create,
        "VPC flow log: ALL traffic, 60 s, custom format with NAT attribution fields",
        vpc_exists,
    ) {
        r.out.flow_log_id = PLANNED.into();
        return Ok(());
    }
    let tags = r.tags(ResourceType::VpcFlowLog, "flow-log");
    // A role made seconds ago cannot be assumed by the flow-log service yet.
    let request = ec2
        .create_flow_logs()
        .resource_ids(&r.out.vpc_id)
        .resource_type(FlowLogsResourceType::Vpc)
        .traffic_type(TrafficType::All)
        .log_format(&format)
        .max_aggregation_interval(60)
        .tag_specifications(tags);
    let request = match &want.destination {
        Destination::Logs { group, role_arn } => request
            .log_destination_type(LogDestinationType::CloudWatchLogs)
            .log_group_name(*group)
            .deliver_logs_permission_arn(*role_arn),
        Destination::S3 {
            arn,
            file_format,
            hive_prefixes,
            hourly,
        } => request
            .log_destination_type(LogDestinationType::S3)
            .log_destination(arn)
            .destination_options(
                DestinationOptionsRequest::builder()
                    .file_format(DestinationFileFormat::from(*file_format))
                    .hive_compatible_partitions(*hive_prefixes)
                    .per_hour_partition(*hourly)
                    .build(),
            ),
    };
    // A role made seconds ago cannot be assumed by the flow-log service yet, and a VPC made
    // seconds ago may not be known to every EC2 host.
    let c = crate::retry_passing!(
        &[Passing::RoleNotYetAssumable, Passing::NotYetVisible],
        &mut *r.progress,
        {
            request
                .clone()
                .send()
                .await
                .map_err(|e| aws_error("flow-log", "CreateFlowLogs", e))
        }
    )?;
    if let Some(u) = c.unsuccessful().first() {
        let msg = u
            .error()
            .and_then(|e| e.message())
            .unwrap_or("unknown error");
        return Err(ProvisionError::Conflict(format!(
            "CreateFlowLogs refused the flow log: {msg}"
        )));
    }
    r.out.flow_log_id = c.flow_log_ids().first().cloned().unwrap_or_default();
    Ok(())
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let ec2 = t.clients.ec2.clone();
    let found = every_page!(
        ec2.describe_flow_logs().filter(t.tag_filter()),
        "flow-log",
        "DescribeFlowLogs"
    )?;
    for id in found.iter().filter_map(|f| f.flow_log_id()) {
        if t.live() {
            ec2.delete_flow_logs()
                .flow_log_ids(id)
                .send()
                .await
                .map_err(|e| aws_error("flow-log", "DeleteFlowLogs", e))?;
        }
        t.say(format!("flow-log {id}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_spec() -> aws_sdk_ec2::types::builders::FlowLogBuilder {
        AwsFlowLog::builder()
            .flow_log_id("fl-1")
            .log_format("${version} ${pkt-srcaddr}")
            .log_group_name("/egresswatch/s/flow-logs")
            .traffic_type(TrafficType::All)
            .log_destination_type(LogDestinationType::CloudWatchLogs)
            .max_aggregation_interval(60)
            .deliver_logs_permission_arn("arn:aws:iam::1:role/egresswatch/s-flow-logs")
            .deliver_logs_status("SUCCESS")
    }

    const WANT: Wanted<'static> = Wanted {
        format: "${version} ${pkt-srcaddr}",
        destination: Destination::Logs {
            group: "/egresswatch/s/flow-logs",
            role_arn: "arn:aws:iam::1:role/egresswatch/s-flow-logs",
        },
    };

    #[test]
    fn a_flow_log_in_spec_has_no_faults() {
        assert!(faults(&in_spec().build(), &WANT).is_empty());
    }

    #[test]
    fn each_difference_is_named() {
        let f = in_spec()
            .traffic_type(TrafficType::Reject)
            .max_aggregation_interval(600)
            .deliver_logs_status("FAILED")
            .deliver_logs_error_message("Access error")
            .build();
        assert_eq!(
            faults(&f, &WANT),
            [
                "traffic type is not ALL",
                "aggregation interval is not 60 s",
                "its delivery fails (Access error)"
            ]
        );
        let f = in_spec().log_format("${version}").build();
        assert_eq!(faults(&f, &WANT), ["record format differs"]);
    }

    #[test]
    fn an_s3_flow_log_is_checked_for_its_bucket_prefix_and_options() {
        let want = Wanted {
            format: "${version} ${pkt-srcaddr}",
            destination: Destination::S3 {
                arn: "arn:aws:s3:::b/egresswatch/s/".into(),
                file_format: "parquet",
                hive_prefixes: false,
                hourly: true,
            },
        };
        let s3 = |options: aws_sdk_ec2::types::DestinationOptionsResponse| {
            in_spec()
                .log_destination_type(LogDestinationType::S3)
                .log_destination("arn:aws:s3:::b/egresswatch/s")
                .destination_options(options)
                .build()
        };
        let kept = aws_sdk_ec2::types::DestinationOptionsResponse::builder()
            .file_format(DestinationFileFormat::Parquet)
            .hive_compatible_partitions(false)
            .per_hour_partition(true);
        assert!(faults(&s3(kept.clone().build()), &want).is_empty());
        assert_eq!(
            faults(
                &s3(kept.file_format(DestinationFileFormat::PlainText).build()),
                &want
            ),
            ["file format differs"]
        );
        // The CloudWatch flow log of before is not what an S3 spec wants.
        assert_eq!(
            faults(&in_spec().build(), &want),
            ["it does not deliver to S3", "bucket or prefix differs"]
        );
    }
}
