//! `down`: deletes everything the stack owns by walking the stack's resources in reverse
//! dependency order, each waiting where AWS needs it and tolerating what is already gone,
//! until nothing carries the stack tag.

use crate::aws::Clients;
use crate::resources::{every_page, filter, Teardown};
use crate::stack::{STACK, STACK_TAG};
use crate::ProvisionError;

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
    progress: impl FnMut(&str) + Send,
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
    mut progress: impl FnMut(&str) + Send,
) -> Result<Vec<String>, ProvisionError> {
    // Every page: the stack's network is what lives in the VPCs carrying its tag.
    let vpc_ids = every_page!(
        clients
            .ec2
            .describe_vpcs()
            .filters(filter(&format!("tag:{STACK_TAG}"), stack)),
        "vpc",
        "DescribeVpcs"
    )?
    .iter()
    .filter_map(|v| v.vpc_id().map(String::from))
    .collect();
    let (account, _) = clients.caller().await?;
    let mut teardown = Teardown {
        clients,
        stack: stack.to_string(),
        account,
        opts,
        vpc_ids,
        deleted: Vec::new(),
        progress: &mut progress,
    };
    for resource in STACK.iter().rev() {
        resource.delete(&mut teardown).await?;
    }
    Ok(teardown.deleted)
}
