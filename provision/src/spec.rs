//! The stack spec: what `provision` stands up, read from TOML. Every key is optional and
//! defaults to the secure choice; values AWS would reject are rejected here, by name, even
//! where an emulator would accept them.

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::ProvisionError;

/// Retention values CloudWatch Logs accepts (PutRetentionPolicy).
pub const ALLOWED_RETENTION_DAYS: [i32; 22] = [
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922,
    3288, 3653,
];

// The monitor parses records in this format, so it lives where both sides read it.
pub use egresswatch_stack::{flow_log_format, FLOW_LOG_FIELDS};

/// What the S3 gateway endpoint lets through. The endpoint is the decision record's largest
/// residual path: traffic on it bypasses the NAT, so a policy that allows every bucket lets
/// data leave to an attacker's bucket unseen by NAT-based monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum S3EndpointAccess {
    /// Buckets the account owns (`aws:ResourceAccount`), the listed accounts' and buckets, and
    /// the AWS-owned buckets Studio reads (ECR image layers, Amazon Linux repositories,
    /// JumpStart).
    #[default]
    Account,
    /// Only the listed buckets and those AWS-owned buckets: the strictest.
    Listed,
    /// Every bucket of every account: what AWS creates by default.
    Any,
}

/// Where the flow log delivers its records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowLogDestination {
    /// A CloudWatch Logs group: read within GetLogEvents' per-account quota.
    #[default]
    Cloudwatch,
    /// Objects in S3, announced on an SQS queue: about half the price per GB, no read quota,
    /// and how organisations centralise logs.
    S3,
}

/// The file format of flow-log objects in S3.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowLogFileFormat {
    /// Gzip-compressed text with a header line.
    #[default]
    Text,
    /// Gzip-compressed Parquet: smaller, and faster for Athena.
    Parquet,
}

impl FlowLogFileFormat {
    /// The value of CreateFlowLogs' `DestinationOptions.FileFormat`.
    pub fn as_aws(self) -> &'static str {
        match self {
            FlowLogFileFormat::Text => "plain-text",
            FlowLogFileFormat::Parquet => "parquet",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default, rename_all = "kebab-case")]
pub struct StackSpec {
    /// The VPC's IPv4 range.
    pub vpc_cidr: Ipv4Net,
    /// One public subnet per availability zone; they hold only the NAT gateway(s).
    pub public_subnets: Vec<Ipv4Net>,
    /// One private subnet per availability zone, for Studio (2–4 addresses per user).
    pub private_subnets: Vec<Ipv4Net>,
    /// Availability zones by name or id; empty means the region's first ones by id.
    pub availability_zones: Vec<String>,
    /// One NAT gateway per zone (resilient, costs more) instead of one for all.
    pub nat_gateway_per_az: bool,
    /// Which buckets the S3 gateway endpoint lets the VPC reach (see [`S3EndpointAccess`]).
    pub s3_endpoint_access: S3EndpointAccess,
    /// Buckets of other accounts the endpoint allows as well (a partner's, a public dataset's).
    pub s3_endpoint_buckets: Vec<String>,
    /// Other accounts whose buckets the endpoint allows, with `s3-endpoint-access = "account"`.
    pub s3_endpoint_accounts: Vec<String>,
    /// Days CloudWatch Logs keeps flow logs (one of the values AWS accepts).
    pub log_retention_days: i32,
    /// KMS key ARN to encrypt the log group with; its key policy must allow CloudWatch Logs.
    pub log_kms_key_arn: Option<String>,
    /// Attach the AWS managed AmazonSageMakerFullAccess policy to the Studio role.
    pub studio_managed_policy: bool,
    /// Create the SageMaker Studio domain.
    pub studio_domain: bool,
    /// Where the flow log delivers (see [`FlowLogDestination`]).
    pub flow_log_destination: FlowLogDestination,
    /// With S3: an existing bucket to deliver to (an organisation's log archive), whose
    /// policy must admit the delivery already. None: the stack makes and owns its own bucket.
    pub flow_log_bucket: Option<String>,
    /// With S3: text or Parquet objects.
    pub flow_log_file_format: FlowLogFileFormat,
    /// With S3: Hive-compatible prefixes (`aws-account-id=…/aws-region=…/year=…`).
    pub flow_log_hive_prefixes: bool,
    /// With S3: a prefix per hour rather than per day.
    pub flow_log_hourly_partitions: bool,
}

/// The tag on the stack's VPC saying how many parts the recorded spec has; the parts are
/// `egresswatch:spec-1` … `egresswatch:spec-N`. EC2 tag values hold 256 characters, so the
/// spec (JSON, base64 so that only characters every AWS service takes in a tag are used) is
/// split.
pub const SPEC_TAG: &str = "egresswatch:spec";
const SPEC_PART: usize = 256;

impl StackSpec {
    /// The spec as the VPC's tags record it, so `status`, `outputs` and `down` need no spec
    /// file (as Terraform keeps its configuration in its state).
    pub fn to_tags(&self) -> Vec<(String, String)> {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let encoded = aws_smithy_types::base64::encode(json);
        let parts: Vec<&str> = encoded
            .as_bytes()
            .chunks(SPEC_PART)
            .filter_map(|c| std::str::from_utf8(c).ok())
            .collect();
        let mut tags = vec![(SPEC_TAG.to_string(), parts.len().to_string())];
        for (i, part) in parts.iter().enumerate() {
            tags.push((format!("{SPEC_TAG}-{}", i + 1), (*part).to_string()));
        }
        tags
    }

    /// The spec the tags record; None when they record none (a stack made by an earlier
    /// version), an error when they are damaged.
    pub fn from_tags<'a>(
        tags: impl IntoIterator<Item = (&'a str, &'a str)> + Clone,
    ) -> Option<Result<StackSpec, String>> {
        let find = |key: &str| {
            tags.clone()
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v)
        };
        let count: usize = match find(SPEC_TAG)?.parse() {
            Ok(n) => n,
            Err(e) => return Some(Err(format!("tag {SPEC_TAG}: {e}"))),
        };
        let mut encoded = String::new();
        for i in 1..=count {
            match find(&format!("{SPEC_TAG}-{i}")) {
                Some(part) => encoded.push_str(part),
                None => return Some(Err(format!("tag {SPEC_TAG}-{i} is missing"))),
            }
        }
        Some(
            aws_smithy_types::base64::decode(&encoded)
                .map_err(|e| format!("the recorded spec is not base64: {e}"))
                .and_then(|json| {
                    serde_json::from_slice(&json)
                        .map_err(|e| format!("the recorded spec does not read: {e}"))
                }),
        )
    }
}

impl Default for StackSpec {
    fn default() -> Self {
        let net = |s: &str| s.parse::<Ipv4Net>().expect("valid default CIDR");
        StackSpec {
            vpc_cidr: net("10.42.0.0/16"),
            public_subnets: vec![net("10.42.0.0/24"), net("10.42.1.0/24")],
            private_subnets: vec![net("10.42.16.0/20"), net("10.42.32.0/20")],
            availability_zones: vec![],
            nat_gateway_per_az: false,
            s3_endpoint_access: S3EndpointAccess::Account,
            s3_endpoint_buckets: vec![],
            s3_endpoint_accounts: vec![],
            log_retention_days: 90,
            log_kms_key_arn: None,
            studio_managed_policy: false,
            studio_domain: true,
            flow_log_destination: FlowLogDestination::Cloudwatch,
            flow_log_bucket: None,
            flow_log_file_format: FlowLogFileFormat::Text,
            flow_log_hive_prefixes: false,
            flow_log_hourly_partitions: true,
        }
    }
}

/// The commented spec `provision init` writes.
pub const SPEC_TEMPLATE: &str = r#"# egresswatch stack spec. Every key is optional; the values shown are the defaults.

# The VPC's IPv4 range.
vpc-cidr = "10.42.0.0/16"

# One public subnet per availability zone; they hold only the NAT gateway(s).
public-subnets = ["10.42.0.0/24", "10.42.1.0/24"]

# One private subnet per availability zone, for SageMaker Studio. Size them for 2-4 addresses
# per user.
private-subnets = ["10.42.16.0/20", "10.42.32.0/20"]

# Availability zones by name ("us-east-1a") or id ("use1-az1"), one per subnet pair. Empty:
# the region's first zones by id (ids name the same zone in every account), skipping one that
# takes no new subnets.
availability-zones = []

# One NAT gateway per zone (survives a zone outage; each costs about USD 0.045/hour plus
# data) instead of one shared NAT gateway.
nat-gateway-per-az = false

# What the S3 gateway endpoint lets the VPC reach. Traffic on it bypasses the NAT, so an
# endpoint that allows every bucket lets data leave to anyone's bucket unseen.
#   "account": buckets this account owns, the accounts and buckets listed below, and
#              read-only the AWS-owned buckets Studio needs (ECR image layers, Amazon Linux
#              repositories, JumpStart models). The default.
#   "listed":  only the buckets listed below and those AWS-owned buckets. Strictest: the
#              account's own buckets (SageMaker's default bucket included) need listing.
#   "any":     every bucket of every account (AWS's default endpoint policy).
s3-endpoint-access = "account"
# Other accounts' buckets to allow (a partner's drop, a public dataset).
s3-endpoint-buckets = []
# Other accounts whose buckets "account" allows too.
s3-endpoint-accounts = []

# Days CloudWatch Logs keeps the flow logs. One of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180,
# 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653.
log-retention-days = 90

# KMS key ARN for the log group (its key policy must allow logs.<region>.amazonaws.com).
# log-kms-key-arn = "arn:aws:kms:us-east-1:123456789012:key/..."

# Attach the AWS managed policy AmazonSageMakerFullAccess to the Studio execution role.
# Off: the role gets a scoped inline policy only.
studio-managed-policy = false

# Create the SageMaker Studio domain (VpcOnly, IAM auth) in the private subnets.
studio-domain = true

# Where the flow log delivers.
#   "cloudwatch": a log group, /egresswatch/NAME/flow-logs. The daemon reads it within
#                 GetLogEvents' quota (25 calls/s per account and region, 10 in some).
#   "s3":         gzip objects in S3 every ~5 minutes, announced on an SQS queue the stack
#                 makes (with a dead-letter queue). About half the price per GB, no read quota.
flow-log-destination = "cloudwatch"
# With "s3": an existing bucket (an organisation's log archive) instead of one the stack makes.
# Its policy must already let delivery.logs.amazonaws.com write; only the queue and the bucket
# notification for this stack's prefix are the stack's then.
# flow-log-bucket = "org-log-archive"
# With "s3": "text" (gzip, a header line) or "parquet".
flow-log-file-format = "text"
# With "s3": Hive-compatible prefixes (aws-account-id=.../year=...), and one prefix per hour.
flow-log-hive-prefixes = false
flow-log-hourly-partitions = true
"#;

impl StackSpec {
    /// Reads and checks a spec file.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ProvisionError> {
        let spec: StackSpec =
            toml::from_str(text).map_err(|e| ProvisionError::Spec(format!("{origin}: {e}")))?;
        spec.validate()
            .map_err(|e| ProvisionError::Spec(format!("{origin}: {e}")))?;
        Ok(spec)
    }

    /// Checks the rules AWS enforces (and some an emulator does not).
    pub fn validate(&self) -> Result<(), String> {
        if !ALLOWED_RETENTION_DAYS.contains(&self.log_retention_days) {
            return Err(format!(
                "log-retention-days = {} is not a value CloudWatch Logs accepts ({})",
                self.log_retention_days,
                ALLOWED_RETENTION_DAYS.map(|d| d.to_string()).join(", ")
            ));
        }
        let prefix = self.vpc_cidr.prefix_len();
        if !(16..=28).contains(&prefix) {
            return Err(format!(
                "vpc-cidr = \"{}\": a VPC's prefix must be /16 to /28",
                self.vpc_cidr
            ));
        }
        if self.public_subnets.len() < 2 || self.private_subnets.len() < 2 {
            return Err("public-subnets and private-subnets need at least 2 entries each (two availability zones)".into());
        }
        if self.public_subnets.len() != self.private_subnets.len() {
            return Err(
                "public-subnets and private-subnets need one entry per availability zone each"
                    .into(),
            );
        }
        if !self.availability_zones.is_empty()
            && self.availability_zones.len() != self.private_subnets.len()
        {
            return Err("availability-zones needs one zone per subnet pair, or none".into());
        }
        let all: Vec<(&str, &Ipv4Net)> = self
            .public_subnets
            .iter()
            .map(|n| ("public-subnets", n))
            .chain(self.private_subnets.iter().map(|n| ("private-subnets", n)))
            .collect();
        for (i, (key, net)) in all.iter().enumerate() {
            if !self.vpc_cidr.contains(*net) {
                return Err(format!(
                    "{key}: \"{net}\" is not inside vpc-cidr \"{}\"",
                    self.vpc_cidr
                ));
            }
            if net.prefix_len() > 28 {
                return Err(format!(
                    "{key}: \"{net}\" is smaller than /28, the smallest subnet AWS allows"
                ));
            }
            for (other_key, other) in &all[i + 1..] {
                if net.contains(*other) || other.contains(*net) {
                    return Err(format!(
                        "{key}: \"{net}\" overlaps {other_key}: \"{other}\""
                    ));
                }
            }
        }
        for a in &self.s3_endpoint_accounts {
            if a.len() != 12 || !a.bytes().all(|c| c.is_ascii_digit()) {
                return Err(format!(
                    "s3-endpoint-accounts: \"{a}\" is not a 12-digit AWS account id"
                ));
            }
        }
        if let Some(b) = &self.flow_log_bucket {
            if self.flow_log_destination != FlowLogDestination::S3 {
                return Err(format!(
                    "flow-log-bucket = \"{b}\" needs flow-log-destination = \"s3\""
                ));
            }
            validate_bucket_name(b).map_err(|e| format!("flow-log-bucket: {e}"))?;
        }
        for b in &self.s3_endpoint_buckets {
            if b.is_empty() || b.contains('/') || b.contains('*') && b.len() < 2 {
                return Err(format!("s3-endpoint-buckets: \"{b}\" is not a bucket name"));
            }
        }
        Ok(())
    }

    pub fn zones(&self) -> usize {
        self.private_subnets.len()
    }
}

/// Checks a bucket name against S3's rules for new buckets (general purpose buckets naming
/// rules): 3 to 63 characters of lowercase letters, digits, dots and hyphens, beginning and
/// ending with a letter or digit, not an IP address.
pub fn validate_bucket_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-');
    let ends_ok = |c: Option<u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || !ends_ok(name.bytes().next())
        || !ends_ok(name.bytes().last())
        || name.contains("..")
        || name.parse::<std::net::Ipv4Addr>().is_ok()
    {
        return Err(format!(
            "\"{name}\" is not a bucket name S3 accepts (3-63 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit)"
        ));
    }
    Ok(())
}

/// Longest suffix the stack's name is given in an IAM role name (`NAME-studio-execution`).
const LONGEST_ROLE_SUFFIX: usize = "-studio-execution".len();

/// Checks a stack name against every name it becomes part of: IAM role names (64 characters
/// at most), the Studio domain's name (letters, digits and hyphens, starting and ending with a
/// letter or digit), the log group's name and the tags.
pub fn validate_stack_name(name: &str) -> Result<(), String> {
    let longest = 64 - LONGEST_ROLE_SUFFIX;
    if name.is_empty() {
        return Err("the stack name is empty".into());
    }
    if name.len() > longest {
        return Err(format!(
            "stack name \"{name}\" has {} characters; at most {longest} fit in the IAM role name \"{name}-studio-execution\" (64 at most)",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
    {
        return Err(format!(
            "stack name \"{name}\" contains {c:?}; the Studio domain's name allows only letters, digits and hyphens"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(format!(
            "stack name \"{name}\" must start and end with a letter or digit (the Studio domain's name must)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_recorded_in_tags_reads_back_the_same() {
        let spec = StackSpec {
            s3_endpoint_buckets: (0..20).map(|i| format!("partner-bucket-{i}")).collect(),
            flow_log_destination: FlowLogDestination::S3,
            ..StackSpec::default()
        };
        let tags = spec.to_tags();
        assert!(tags.len() > 3, "{tags:?}");
        assert!(tags.iter().all(|(k, v)| k.len() <= 128 && v.len() <= 256));
        let view = || tags.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        assert_eq!(StackSpec::from_tags(view()).unwrap().unwrap(), spec);
        // None recorded (a stack from an earlier version), and a part missing.
        assert!(StackSpec::from_tags(std::iter::empty::<(&str, &str)>()).is_none());
        let missing: Vec<(&str, &str)> =
            view().filter(|(k, _)| *k != "egresswatch:spec-2").collect();
        let e = StackSpec::from_tags(missing.iter().copied())
            .unwrap()
            .unwrap_err();
        assert_eq!(e, "tag egresswatch:spec-2 is missing");
    }

    #[test]
    fn stack_names_that_would_break_a_name_aws_checks_are_refused() {
        assert!(validate_stack_name("research-2").is_ok());
        assert!(validate_stack_name(&"a".repeat(47)).is_ok());
        let long = validate_stack_name(&"a".repeat(48)).unwrap_err();
        assert!(long.contains("at most 47"), "{long}");
        assert!(validate_stack_name("team_a").unwrap_err().contains("'_'"));
        assert!(validate_stack_name("-x")
            .unwrap_err()
            .contains("start and end"));
        assert!(validate_stack_name("").is_err());
    }

    #[test]
    fn template_is_the_default() {
        assert_eq!(
            StackSpec::from_toml(SPEC_TEMPLATE, "init").unwrap(),
            StackSpec::default()
        );
        assert_eq!(
            StackSpec::from_toml("", "empty").unwrap(),
            StackSpec::default()
        );
    }

    #[test]
    fn bad_values_are_named() {
        let e = StackSpec::from_toml("log-retention-days = 45", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s.toml") && e.contains("log-retention-days = 45"),
            "{e}"
        );
        let e = StackSpec::from_toml("vpc-cidrs = \"10.0.0.0/16\"", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field") && e.contains("vpc-cidrs"),
            "{e}"
        );
        let e = StackSpec::from_toml("vpc-cidr = \"10.0.0.0/16\"", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not inside vpc-cidr"), "{e}");
        let e = StackSpec::from_toml(
            "private-subnets = [\"10.42.0.0/20\", \"10.42.32.0/20\"]",
            "s.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("overlaps"), "{e}");
        let e = StackSpec::from_toml("vpc-cidr = \"banana\"", "s.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vpc-cidr") || e.contains("invalid"), "{e}");
    }

    #[test]
    fn format_has_the_attribution_fields() {
        let f = flow_log_format();
        assert!(f.starts_with("${version} ${account-id}"));
        assert!(!f.ends_with(' '));
        for needed in [
            "${pkt-srcaddr}",
            "${pkt-dstaddr}",
            "${flow-direction}",
            "${traffic-path}",
            "${az-id}",
            "${tcp-flags}",
            "${instance-id}",
            "${subnet-id}",
            "${vpc-id}",
            "${type}",
        ] {
            assert!(f.contains(needed), "{needed}");
        }
    }
}
