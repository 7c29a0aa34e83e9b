//! The stack's AWS resources, one per file, each behind [`Resource`]: it finds itself (by the
//! `egresswatch:stack` tag or a deterministic name whose tag it checks), says how it differs
//! from the spec, creates or repairs itself in `up`, and deletes what of it the stack owns in
//! `down`. The stack (`crate::stack::STACK`) is the ordered list; `down` walks it in reverse, so
//! the order of creation and of deletion cannot drift apart.
//!
//! The comparisons that decide a change are plain functions over what AWS answered, each file's
//! unit tests exercise them without an emulator.

pub mod default_security_group;
pub mod domain;
pub mod flow_log;
pub mod flow_log_bucket;
pub mod flow_log_queue;
pub mod internet_gateway;
pub mod log_group;
pub mod nat_gateway;
pub mod network_acl;
pub mod role;
pub mod role_boundary;
pub mod route_tables;
pub mod s3_endpoint;
pub mod security_group;
pub mod studio_leftovers;
pub mod subnets;
pub mod vpc;

use std::future::Future;
use std::pin::Pin;

use aws_sdk_ec2::types::{Filter, Tag};

use crate::aws::Clients;
use crate::down::DownOptions;
use crate::stack::Reconciler;
use crate::ProvisionError;

/// One reconcile or delete step of a resource.
pub type Step<'a> = Pin<Box<dyn Future<Output = Result<(), ProvisionError>> + Send + 'a>>;

/// One AWS resource (or one set of like resources, such as the subnets) of the stack.
pub trait Resource: Sync {
    /// How plans, progress and errors name it.
    fn name(&self) -> &'static str;
    /// Finds the resource, records how it differs from the spec and, when the run applies,
    /// creates or repairs it. Fills in its part of the outputs.
    fn reconcile<'a>(&'a self, r: &'a mut Reconciler<'_>) -> Step<'a>;
    /// Deletes what of it the stack owns; with `dry_run`, lists it. Tolerates what is gone.
    fn delete<'a>(&'a self, t: &'a mut Teardown<'_>) -> Step<'a>;
}

/// Implements [`Resource`] for a unit struct from the file's `reconcile` and `delete` fns.
macro_rules! resource {
    ($ty:ident, $name:literal) => {
        pub struct $ty;
        impl $crate::resources::Resource for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn reconcile<'a>(
                &'a self,
                r: &'a mut $crate::stack::Reconciler<'_>,
            ) -> $crate::resources::Step<'a> {
                Box::pin(reconcile(r))
            }
            fn delete<'a>(
                &'a self,
                t: &'a mut $crate::resources::Teardown<'_>,
            ) -> $crate::resources::Step<'a> {
                Box::pin(delete(t))
            }
        }
    };
}
pub(crate) use resource;

/// A `down` in progress: what it may delete, the VPCs it found, and what it has deleted.
pub struct Teardown<'p> {
    pub clients: &'p Clients,
    pub stack: String,
    /// The account the credentials belong to: part of names that are global (the bucket).
    pub account: String,
    pub opts: DownOptions,
    /// The VPCs carrying the stack's tag: what lives in them is the stack's network.
    pub vpc_ids: Vec<String>,
    pub deleted: Vec<String>,
    pub progress: &'p mut (dyn FnMut(&str) + Send),
}

impl Teardown<'_> {
    /// Records a deletion (or, with `dry_run`, one that would happen).
    pub fn say(&mut self, line: String) {
        let verb = if self.opts.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        (self.progress)(&format!("{verb} {line}"));
        self.deleted.push(line);
    }

    /// Something the operator should know that is not a deletion.
    pub fn note(&mut self, line: &str) {
        (self.progress)(line);
    }

    /// Whether calls that change something are made.
    pub fn live(&self) -> bool {
        !self.opts.dry_run
    }

    pub fn tag_filter(&self) -> Filter {
        filter(&format!("tag:{}", crate::stack::STACK_TAG), &self.stack)
    }
}

/// What the plan shows for an id that exists only once `up` made it.
pub const PLANNED: &str = "(known after up)";

pub fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

pub fn has_tag(tags: &[Tag], key: &str, value: &str) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(key) && t.value() == Some(value))
}

/// Each bucket and everything in it, as policy resources.
pub fn bucket_arns(partition: &str, buckets: &[String]) -> Vec<String> {
    buckets
        .iter()
        .flat_map(|b| {
            [
                format!("arn:{partition}:s3:::{b}"),
                format!("arn:{partition}:s3:::{b}/*"),
            ]
        })
        .collect()
}

/// A policy document as AWS returns it (IAM URL-encodes them) or as we wrote it, as JSON, so
/// two documents compare by meaning and not by spacing.
pub fn decode_policy(doc: &str) -> serde_json::Value {
    let decoded = percent_encoding::percent_decode_str(doc).decode_utf8_lossy();
    serde_json::from_str(&decoded).unwrap_or(serde_json::Value::Null)
}

// The monitor finds the log group, bucket and queue by these names too.
pub use egresswatch_stack::names::{
    domain_name, flow_log_bucket_name, flow_log_prefix, flow_log_queue_name, log_group_name,
    role_name,
};

/// Every page of an EC2 Describe call's items, as one Vec, or the call's error for `resource`.
macro_rules! every_page {
    ($req:expr, $resource:expr, $call:literal) => {
        $req.into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| $crate::aws::aws_error($resource, $call, e))
    };
}
pub(crate) use every_page;
