//! The flow-log format the stack's flow log is created with. The monitor parses records in it
//! when the flow log cannot be asked (a file, a test), so both sides take it from here.

/// The flow-log fields the monitor needs to attribute NAT traffic to workloads: every v2 field,
/// the interface's VPC/subnet/instance, TCP flags, packet-level addresses (the NAT ENI's
/// `pkt-srcaddr`/`pkt-dstaddr` name the workload and the remote), AWS service names,
/// direction, path and the reject reason.
pub const FLOW_LOG_FIELDS: [&str; 30] = [
    "version",
    "account-id",
    "interface-id",
    "srcaddr",
    "dstaddr",
    "srcport",
    "dstport",
    "protocol",
    "packets",
    "bytes",
    "start",
    "end",
    "action",
    "log-status",
    "vpc-id",
    "subnet-id",
    "instance-id",
    "tcp-flags",
    "type",
    "pkt-srcaddr",
    "pkt-dstaddr",
    "region",
    "az-id",
    "pkt-src-aws-service",
    "pkt-dst-aws-service",
    "flow-direction",
    "traffic-path",
    "sublocation-type",
    "sublocation-id",
    "reject-reason",
];

/// The `LogFormat` string the flow log is created with.
pub fn flow_log_format() -> String {
    FLOW_LOG_FIELDS
        .iter()
        .map(|f| format!("${{{f}}}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_names_every_field_once_in_order() {
        let format = flow_log_format();
        let fields: Vec<&str> = format
            .split(' ')
            .map(|f| f.trim_start_matches("${").trim_end_matches('}'))
            .collect();
        assert_eq!(fields, FLOW_LOG_FIELDS);
        assert!(format.starts_with("${version} ${account-id} ${interface-id} "));
        let mut unique = fields.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), fields.len());
    }
}
