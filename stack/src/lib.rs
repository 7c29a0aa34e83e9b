//! `egresswatch-stack`: what the provisioner and the monitor both need to know about a stack,
//! without either's AWS dependencies. The provisioner writes these values and the monitor reads
//! them, so keeping one copy is what keeps the two agreeing: the outputs `provision outputs`
//! prints, the flow-log format the stack's flow log is created with, the names AWS finds the
//! stack's resources by, the tags that mark them, and how both set up their AWS clients.

pub mod client;
pub mod format;
pub mod names;
pub mod outputs;

pub use format::{flow_log_format, FLOW_LOG_FIELDS};
pub use names::{
    domain_name, flow_log_bucket_name, flow_log_prefix, flow_log_queue_name, log_group_name,
    role_name,
};
pub use outputs::{NatOut, Outputs, SubnetOut};

/// The tag that marks a resource as the stack's: its value is the stack's name. The tags in AWS
/// are the provisioner's state, and the monitor finds the stack's resources by them.
pub const STACK_TAG: &str = "egresswatch:stack";
/// Which of the stack's resources it is, where one kind has several roles.
pub const RESOURCE_TAG: &str = "egresswatch:resource";
