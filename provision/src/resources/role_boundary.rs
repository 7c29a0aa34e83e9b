//! The permissions boundary of the stack's roles: a managed policy, one per account under the
//! project's IAM path, that caps what any role the provisioner makes may do. The provisioner
//! may create it once and never change or delete it (its own policy denies that), so its
//! credentials cannot raise the ceiling they write roles under; a boundary that differs from
//! the one this version ships is security drift that an administrator resolves. `down` keeps
//! it: other stacks of the account use it.

use super::role::not_found;
use super::Teardown;
use crate::aws::aws_error;
use crate::policies::{role_boundary, role_boundary_arn, ROLE_BOUNDARY_NAME};
use crate::stack::{ChangeKind, Reconciler};
use crate::ProvisionError;

super::resource!(RoleBoundary, "iam-policy/role-boundary");

const RESOURCE: &str = "iam-policy/role-boundary";

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    let iam = r.clients.iam.clone();
    let arn = role_boundary_arn(&r.partition, &r.out.account_id);
    let want =
        role_boundary(&r.partition, &r.out.account_id).map_err(ProvisionError::Unexpected)?;
    let found = match iam.get_policy().policy_arn(&arn).send().await {
        Ok(got) => got.policy().cloned(),
        Err(e) if e.as_service_error().is_some_and(not_found) => None,
        Err(e) => return Err(aws_error(RESOURCE, "GetPolicy", e)),
    };
    let Some(policy) = found else {
        if r.change(
            RESOURCE,
            ChangeKind::Create,
            format!("permissions boundary {arn} for the stack's roles"),
            false,
        ) {
            iam.create_policy()
                .policy_name(ROLE_BOUNDARY_NAME)
                .path(super::role::ROLE_PATH)
                .policy_document(want.to_string())
                .description("egresswatch: the most any role an egresswatch stack makes may do")
                .send()
                .await
                .map_err(|e| aws_error(RESOURCE, "CreatePolicy", e))?;
        }
        return Ok(());
    };
    let version = policy.default_version_id().unwrap_or("v1");
    let doc = iam
        .get_policy_version()
        .policy_arn(&arn)
        .version_id(version)
        .send()
        .await
        .map_err(|e| aws_error(RESOURCE, "GetPolicyVersion", e))?
        .policy_version()
        .and_then(|v| v.document().map(String::from))
        .unwrap_or_default();
    if super::decode_policy(&doc) != want
        && r.change(
            RESOURCE,
            ChangeKind::Update,
            "the boundary differs from this version's (`provision policies` prints it)",
            true,
        )
    {
        return Err(ProvisionError::Conflict(format!(
            "permissions boundary {arn} differs from the one this version of egresswatch ships; \
             the provisioner may not change it (that is what keeps its roles under it): an \
             administrator makes the document printed by `egresswatch provision policies` its \
             default version (iam create-policy-version --set-as-default), then run `up` again"
        )));
    }
    Ok(())
}

async fn delete(_t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    // Shared by every stack of the account, and not the provisioner's to delete.
    Ok(())
}
