//! The stack's names for what AWS finds by name rather than by tag. The provisioner creates the
//! resources under these names and the monitor reads from them, so a name changed here changes
//! for both.

/// An IAM role of the stack (`which`: `studio-execution`, `flow-logs`): role names are per account.
pub fn role_name(stack: &str, which: &str) -> String {
    format!("{stack}-{which}")
}

/// The CloudWatch Logs group the flow log delivers to.
pub fn log_group_name(stack: &str) -> String {
    format!("/egresswatch/{stack}/flow-logs")
}

pub fn domain_name(stack: &str) -> String {
    stack.to_string()
}

/// The key prefix of the stack's flow-log objects, in its own bucket or a shared one.
pub fn flow_log_prefix(stack: &str) -> String {
    format!("egresswatch/{stack}/")
}

/// The bucket the stack makes for its flow logs: bucket names are global, so the account and
/// region are part of it; S3 wants them lowercase.
pub fn flow_log_bucket_name(stack: &str, account: &str, region: &str) -> String {
    format!(
        "{}-flow-logs-{account}-{region}",
        stack.to_ascii_lowercase()
    )
}

/// The queue that announces new flow-log objects, and its dead-letter queue.
pub fn flow_log_queue_name(stack: &str, dead_letter: bool) -> String {
    if dead_letter {
        format!("{stack}-flow-logs-dead-letter")
    } else {
        format!("{stack}-flow-logs")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Stacks already provisioned carry these names: a change here would make `up` create a
    // second set of resources and the monitor read from an empty group.
    #[test]
    fn names_are_what_existing_stacks_carry() {
        assert_eq!(
            role_name("prod", "studio-execution"),
            "prod-studio-execution"
        );
        assert_eq!(role_name("prod", "flow-logs"), "prod-flow-logs");
        assert_eq!(log_group_name("prod"), "/egresswatch/prod/flow-logs");
        assert_eq!(domain_name("prod"), "prod");
        assert_eq!(flow_log_prefix("prod"), "egresswatch/prod/");
        assert_eq!(flow_log_queue_name("prod", false), "prod-flow-logs");
        assert_eq!(
            flow_log_queue_name("prod", true),
            "prod-flow-logs-dead-letter"
        );
    }

    #[test]
    fn the_bucket_name_is_lowercase_and_global() {
        assert_eq!(
            flow_log_bucket_name("Team-A", "123456789012", "eu-west-1"),
            "team-a-flow-logs-123456789012-eu-west-1"
        );
        // Other names keep the stack's case: IAM and CloudWatch Logs accept it.
        assert_eq!(log_group_name("Team-A"), "/egresswatch/Team-A/flow-logs");
        assert_eq!(flow_log_queue_name("Team-A", false), "Team-A-flow-logs");
    }

    #[test]
    fn the_prefix_ends_in_a_slash() {
        for stack in ["a", "prod", "team-a"] {
            assert!(flow_log_prefix(stack).ends_with('/'), "{stack}");
        }
    }
}
