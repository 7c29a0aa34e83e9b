//! `egresswatch-provision`: the network of the architecture decision as reconciled desired
//! state. A VPC with public and private subnets in two zones, a NAT gateway, an S3 gateway
//! endpoint, an HTTPS-only security group, IAM roles, a flow log to CloudWatch Logs in a
//! format that attributes NAT traffic, and a VpcOnly SageMaker Studio domain. The tags in AWS
//! are the state: there is no state file to lose.

pub mod aws;
pub(crate) mod down;
pub mod lock;
pub mod log_key;
pub mod logs;
pub mod policies;
pub mod resources;
pub mod retry;
pub mod spec;
pub mod stack;

use std::time::Duration;

pub use aws::{CallLog, Clients};
pub use down::{down, DownOptions};
pub use spec::{flow_log_format, StackSpec, FLOW_LOG_FIELDS, SPEC_TEMPLATE};
pub use stack::{stack_exists, Change, ChangeKind, Mode, Outputs, Reconciler, STACK_TAG};

/// Everything that can stop a provisioning run, each with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{resource}: {call} failed: {}{message}{}", if code.is_empty() { String::new() } else { format!("{code} ") }, if hint.is_empty() { String::new() } else { format!("\n  hint: {hint}") })]
    Aws {
        resource: String,
        call: &'static str,
        code: String,
        message: String,
        hint: &'static str,
    },
    #[error("no AWS region is configured: set AWS_REGION, a profile's region, or pass --region")]
    NoRegion,
    #[error("stack spec: {0}")]
    Spec(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{resource} is still {state} after {}s; it may finish on its own: run the command again to carry on", waited.as_secs())]
    Timeout {
        resource: String,
        waited: Duration,
        state: String,
    },
    #[error("unexpected reply from AWS: {0}")]
    Unexpected(String),
}

/// The spec the stack's VPC records (see [`StackSpec::to_tags`]); None when there is no such
/// stack, or it was made before specs were recorded.
pub async fn recorded_spec(
    clients: &Clients,
    stack: &str,
) -> Result<Option<StackSpec>, ProvisionError> {
    let vpcs = clients
        .ec2
        .describe_vpcs()
        .filters(resources::filter(&format!("tag:{STACK_TAG}"), stack))
        .send()
        .await
        .map_err(|e| aws::aws_error("vpc", "DescribeVpcs", e))?;
    let Some(vpc) = vpcs.vpcs().first() else {
        return Ok(None);
    };
    let tags: Vec<(&str, &str)> = vpc
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?, t.value()?)))
        .collect();
    StackSpec::from_tags(tags.iter().copied())
        .transpose()
        .map_err(|e| ProvisionError::Spec(format!("stack {stack}: {e}")))
}

/// Reconciles (or, in `Mode::Plan`, only inspects) the stack; returns the changes and outputs.
pub async fn reconcile(
    clients: &Clients,
    spec: &StackSpec,
    stack: &str,
    mode: Mode,
    progress: impl FnMut(&str) + Send,
) -> Result<(Vec<Change>, Outputs), ProvisionError> {
    spec::validate_stack_name(stack).map_err(ProvisionError::Spec)?;
    // Only a run that changes things needs the stack to itself.
    let lock = match mode {
        Mode::Apply => Some(lock::StackLock::acquire(clients, stack).await?),
        Mode::Plan => None,
    };
    let mut r = Reconciler::new(clients, spec.clone(), stack, mode).on_progress(progress);
    let result = r.run().await;
    if let Some(lock) = lock {
        lock.release().await;
    }
    result?;
    Ok((r.changes, r.out))
}
