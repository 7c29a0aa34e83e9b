//! The stack's outputs: what `egresswatch provision outputs` prints and the monitor reads from
//! its `outputs-file`. Files written by earlier versions stay readable: fields added later
//! default to empty.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Everything the monitor needs to know about the stack.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outputs {
    pub stack: String,
    pub region: String,
    pub account_id: String,
    pub vpc_id: String,
    pub vpc_cidr: String,
    pub public_subnets: Vec<SubnetOut>,
    pub private_subnets: Vec<SubnetOut>,
    pub nat_gateways: Vec<NatOut>,
    pub internet_gateway_id: String,
    pub s3_endpoint_id: String,
    pub s3_prefix_list_id: String,
    /// The ranges of that prefix list when the outputs were written. AWS adds ranges to it
    /// over time, so the monitor asks again at start when it can reach EC2.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub s3_prefix_list_cidrs: Vec<String>,
    pub security_group_id: String,
    pub studio_role_arn: String,
    pub flow_log_role_arn: String,
    pub log_group: String,
    pub flow_log_id: String,
    pub flow_log_format: String,
    pub domain_id: String,
    /// `cloudwatch` or `s3`.
    #[serde(default)]
    pub flow_log_destination: String,
    /// With S3: the bucket, the key prefix the stack's objects are under (ending in `/`), the
    /// file format (`text` or `parquet`), and the queues that announce them.
    #[serde(default)]
    pub flow_log_bucket: String,
    #[serde(default)]
    pub flow_log_prefix: String,
    #[serde(default)]
    pub flow_log_file_format: String,
    #[serde(default)]
    pub flow_log_queue_url: String,
    #[serde(default)]
    pub flow_log_dead_letter_queue_url: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SubnetOut {
    pub id: String,
    pub cidr: String,
    pub availability_zone: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NatOut {
    pub id: String,
    pub subnet_id: String,
    pub network_interface_id: String,
    pub private_ip: String,
    pub public_ip: String,
    pub allocation_id: String,
}

impl Outputs {
    pub fn from_json(text: &str) -> Result<Outputs, String> {
        serde_json::from_str(text).map_err(|e| format!("not `provision outputs` JSON: {e}"))
    }

    /// Reads an outputs file; errors name the file.
    pub fn read(path: &Path) -> Result<Outputs, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Outputs::from_json(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Written by the provisioner before its types moved here: deployed monitors hold files
    // like these, and `provision outputs` must go on writing them byte for byte.
    const WITH_S3: &str = include_str!("../testdata/outputs-s3.json");
    const BEFORE_S3: &str = include_str!("../testdata/outputs-before-s3.json");

    #[test]
    fn outputs_read_back_equal_and_write_the_same_text() {
        let out = Outputs::from_json(WITH_S3).unwrap();
        assert_eq!(out.stack, "prod");
        assert_eq!(out.s3_prefix_list_id, "pl-6da54004");
        assert_eq!(out.nat_gateways[0].network_interface_id, "eni-0d1");
        assert_eq!(out.private_subnets[1].cidr, "10.0.144.0/20");
        assert_eq!(out.flow_log_prefix, "egresswatch/prod/");
        assert_eq!(out.flow_log_format, crate::flow_log_format());
        let written = serde_json::to_string_pretty(&out).unwrap();
        assert_eq!(written, WITH_S3.trim_end());
        assert_eq!(Outputs::from_json(&written).unwrap(), out);
    }

    #[test]
    fn outputs_from_before_s3_delivery_still_read() {
        let out = Outputs::from_json(BEFORE_S3).unwrap();
        let mut want = Outputs::from_json(WITH_S3).unwrap();
        want.flow_log_destination.clear();
        want.flow_log_bucket.clear();
        want.flow_log_prefix.clear();
        want.flow_log_file_format.clear();
        want.flow_log_queue_url.clear();
        want.flow_log_dead_letter_queue_url.clear();
        assert_eq!(out, want);
    }

    #[test]
    fn a_file_missing_a_field_the_monitor_needs_is_refused() {
        let without_vpc = WITH_S3.replace("\"vpc_cidr\": \"10.0.0.0/16\",", "");
        let e = Outputs::from_json(&without_vpc).unwrap_err();
        assert!(
            e.contains("not `provision outputs` JSON") && e.contains("vpc_cidr"),
            "{e}"
        );
    }

    #[test]
    fn reading_a_file_names_it() {
        let dir = std::env::temp_dir().join(format!("ew-stack-outputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("outputs.json");
        std::fs::write(&good, WITH_S3).unwrap();
        assert_eq!(
            Outputs::read(&good).unwrap(),
            Outputs::from_json(WITH_S3).unwrap()
        );
        let bad = dir.join("bad.json");
        std::fs::write(&bad, "{}").unwrap();
        let e = Outputs::read(&bad).unwrap_err();
        assert!(e.starts_with(&format!("{}: not", bad.display())), "{e}");
        let missing = dir.join("missing.json");
        assert!(Outputs::read(&missing)
            .unwrap_err()
            .starts_with(&missing.display().to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
