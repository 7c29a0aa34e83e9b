//! The stack as reconciled desired state: [`STACK`], the ordered list of its resources (each
//! one file under `resources/`). `plan`, `up` and `status` walk it forwards; `down` walks it
//! backwards. One code path serves `plan` (records what it would do, calls nothing that
//! mutates) and `up` (does it), so the plan is exactly what `up` will do.

use std::time::Duration;

use aws_sdk_ec2::types::{Filter, ResourceType, TagSpecification};
use serde::Serialize;

use crate::aws::Clients;
use crate::resources::{self, filter, tag, Resource};
use crate::spec::StackSpec;
use crate::ProvisionError;

/// Every resource of the stack, in the order they depend on each other.
pub const STACK: &[&dyn Resource] = &[
    &resources::vpc::Vpc,
    &resources::subnets::Subnets,
    &resources::internet_gateway::InternetGateway,
    &resources::nat_gateway::NatGateways,
    &resources::route_tables::RouteTables,
    &resources::network_acl::NetworkAcl,
    // Only once no route points at them any more.
    &resources::nat_gateway::RetiredNatGateways,
    &resources::s3_endpoint::S3Endpoint,
    &resources::security_group::SecurityGroup,
    // Nothing to make; in `down`, what Studio left holding the groups and subnets goes first.
    &resources::studio_leftovers::StudioLeftovers,
    &resources::default_security_group::DefaultSecurityGroup,
    &resources::role_boundary::RoleBoundary,
    &resources::role::StudioRole,
    &resources::role::FlowLogRole,
    &resources::log_group::FlowLogGroup,
    &resources::flow_log_bucket::FlowLogBucket,
    &resources::flow_log_queue::FlowLogQueue,
    &resources::flow_log::FlowLog,
    &resources::domain::StudioDomain,
];

// The tags and outputs are shared with the monitor, which reads what the provisioner wrote.
pub use egresswatch_stack::{NatOut, Outputs, SubnetOut, RESOURCE_TAG, STACK_TAG};

/// Whether the run may change anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plan,
    Apply,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Create,
    Update,
    Replace,
    Delete,
}

/// One difference between the account and the spec, and what reconciling it does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub resource: String,
    pub kind: ChangeKind,
    pub detail: String,
    /// The difference weakens the egress controls (an extra egress rule, a missing flow log…).
    pub security: bool,
}

/// Whether a plan's changes say the stack is there at all: a plan that would create the VPC
/// found no stack, and its outputs describe nothing real.
pub fn stack_exists(changes: &[Change]) -> bool {
    !changes
        .iter()
        .any(|c| c.resource == "vpc" && c.kind == ChangeKind::Create)
}

/// A run over the stack: `plan`, `up` or `status`.
pub struct Reconciler<'c> {
    pub clients: &'c Clients,
    pub spec: StackSpec,
    pub stack: String,
    pub mode: Mode,
    pub changes: Vec<Change>,
    pub out: Outputs,
    /// How long to wait for a NAT gateway or domain to become available.
    pub wait_timeout: Duration,
    /// `aws`, `aws-cn`, `aws-us-gov`…: from the caller's identity once `run` starts.
    pub(crate) partition: String,
    /// Filled in by the route tables for the S3 endpoint.
    pub(crate) private_route_tables: Vec<String>,
    pub(crate) progress: Box<dyn FnMut(&str) + Send + 'c>,
}

impl<'c> Reconciler<'c> {
    pub fn new(clients: &'c Clients, spec: StackSpec, stack: &str, mode: Mode) -> Self {
        Reconciler {
            clients,
            spec,
            stack: stack.to_string(),
            mode,
            changes: Vec::new(),
            out: Outputs {
                stack: stack.to_string(),
                region: clients.region.clone(),
                ..Outputs::default()
            },
            wait_timeout: Duration::from_secs(15 * 60),
            partition: crate::aws::partition(&clients.region).to_string(),
            private_route_tables: Vec::new(),
            progress: Box::new(|_| {}),
        }
    }

    /// Receives a line for each long wait and each change made.
    pub fn on_progress(mut self, f: impl FnMut(&str) + Send + 'c) -> Self {
        self.progress = Box::new(f);
        self
    }

    pub(crate) fn name(&self, resource: &str) -> String {
        format!("{}-{resource}", self.stack)
    }

    pub(crate) fn tags(&self, resource_type: ResourceType, resource: &str) -> TagSpecification {
        TagSpecification::builder()
            .resource_type(resource_type)
            .tags(tag(STACK_TAG, &self.stack))
            .tags(tag(RESOURCE_TAG, resource))
            .tags(tag("Name", &self.name(resource)))
            .build()
    }

    pub(crate) fn stack_filter(&self) -> Filter {
        filter(&format!("tag:{STACK_TAG}"), &self.stack)
    }

    /// Records a change; returns true when it should be carried out now.
    pub(crate) fn change(
        &mut self,
        resource: &str,
        kind: ChangeKind,
        detail: impl Into<String>,
        security: bool,
    ) -> bool {
        let c = Change {
            resource: resource.to_string(),
            kind,
            detail: detail.into(),
            security,
        };
        if self.mode == Mode::Apply {
            // The kind in lower case; the detail as written (VpcOnly, EIP and ARNs keep their
            // spelling).
            let kind = format!("{:?}", c.kind).to_lowercase();
            (self.progress)(&format!("{kind} {}: {}", c.resource, c.detail));
        }
        self.changes.push(c);
        self.mode == Mode::Apply
    }

    /// Reconciles every resource in dependency order.
    pub async fn run(&mut self) -> Result<(), ProvisionError> {
        let (account, partition) = self.clients.caller().await?;
        self.out.account_id = account;
        self.partition = partition;
        for resource in STACK {
            resource.reconcile(self).await?;
        }
        Ok(())
    }
}
