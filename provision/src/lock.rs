//! One run at a time per stack. Two `up` runs started together would both find no VPC and
//! both create one; the stack's lock is a CloudWatch Logs group whose creation AWS makes
//! atomic (the second CreateLogGroup fails with ResourceAlreadyExists). A lock older than any
//! run can last belongs to a run that crashed, and is taken over.

use std::time::Duration;

use crate::aws::{aws_error, Clients};
use crate::ProvisionError;

/// Longer than the longest run: NAT gateways, the domain and its apps all waited out.
const STALE: Duration = Duration::from_secs(3 * 3600);

pub struct StackLock<'c> {
    clients: &'c Clients,
    name: String,
}

pub fn lock_name(stack: &str) -> String {
    format!("/egresswatch/{stack}/lock")
}

impl<'c> StackLock<'c> {
    /// Takes the stack's lock, or says who holds it since when.
    pub async fn acquire(
        clients: &'c Clients,
        stack: &str,
    ) -> Result<StackLock<'c>, ProvisionError> {
        let name = lock_name(stack);
        for attempt in 0..2 {
            match clients
                .logs
                .create_log_group()
                .log_group_name(&name)
                .tags(crate::stack::STACK_TAG, stack)
                .send()
                .await
            {
                Ok(_) => return Ok(StackLock { clients, name }),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_resource_already_exists_exception()) =>
                {
                    let since = clients
                        .logs
                        .describe_log_groups()
                        .log_group_name_prefix(&name)
                        .send()
                        .await
                        .map_err(|e| aws_error("stack-lock", "DescribeLogGroups", e))?
                        .log_groups()
                        .iter()
                        .find(|g| g.log_group_name() == Some(name.as_str()))
                        .and_then(|g| g.creation_time());
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0);
                    let age = Duration::from_millis(
                        now_ms.saturating_sub(since.unwrap_or(now_ms)).max(0) as u64,
                    );
                    if attempt == 0 && age > STALE {
                        // A run that crashed left it: take it over (one of two racing takers
                        // wins the CreateLogGroup that follows).
                        let _ = clients
                            .logs
                            .delete_log_group()
                            .log_group_name(&name)
                            .send()
                            .await;
                        continue;
                    }
                    return Err(ProvisionError::Conflict(format!(
                        "another run of stack {stack} holds its lock (log group {name}, taken {}s ago); wait for it to finish. If no run is going on (one crashed), `egresswatch provision unlock --stack {stack}` removes the lock; it is also taken over after {}h",
                        age.as_secs(),
                        STALE.as_secs() / 3600
                    )));
                }
                Err(e) => return Err(aws_error("stack-lock", "CreateLogGroup", e)),
            }
        }
        Err(ProvisionError::Conflict(format!(
            "stack {stack}: another run took over its stale lock first"
        )))
    }

    /// Gives the lock back. A lock that cannot be deleted goes stale and is taken over later.
    pub async fn release(self) {
        if let Err(e) = self
            .clients
            .logs
            .delete_log_group()
            .log_group_name(&self.name)
            .send()
            .await
        {
            let e = aws_error("stack-lock", "DeleteLogGroup", e);
            tracing::warn!(lock = %self.name, error = %e, "the stack's lock was not released; it is taken over once stale");
        }
    }
}

/// Removes a lock a crashed run left (`provision unlock`); false when there was none.
pub async fn unlock(clients: &Clients, stack: &str) -> Result<bool, ProvisionError> {
    match clients
        .logs
        .delete_log_group()
        .log_group_name(lock_name(stack))
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_resource_not_found_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(aws_error("stack-lock", "DeleteLogGroup", e)),
    }
}
