//! Every policy the project writes or asks for, rendered for one account, region and
//! partition: the provisioner's and the monitor's own (templates in `provision/policies/`),
//! and those the stack puts on its roles, bucket, queue and S3 endpoint (built by the
//! resources that apply them). `provision policies` prints them for a security review
//! before `up`; `deploy/iam/` holds the two identity policies rendered with placeholders;
//! `scripts/lint-iam` runs parliament and cloudsplaining over all of them.

use serde::Serialize;

use crate::resources::{
    flow_log_bucket, flow_log_bucket_name, flow_log_prefix, flow_log_queue, flow_log_queue_name,
    role, s3_endpoint,
};
use crate::spec::{FlowLogDestination, StackSpec};

const PROVISIONER: &str = include_str!("../policies/provisioner.json");
const MONITOR: &str = include_str!("../policies/monitor.json");
const ROLE_BOUNDARY: &str = include_str!("../policies/role-boundary.json");

/// The name of the permissions boundary every role the stack makes carries (one per account,
/// shared by its stacks, under the project's IAM path).
pub const ROLE_BOUNDARY_NAME: &str = "egresswatch-role-boundary";

/// Who a policy governs: an identity's permissions, a role's trust, a resource's own, or the
/// permissions boundary that caps the stack's roles whatever their policies say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyKind {
    Identity,
    Trust,
    Resource,
    Boundary,
}

/// One rendered policy and what it is attached to.
#[derive(Clone, Debug, Serialize)]
pub struct RenderedPolicy {
    /// A file-name-like identifier: `provisioner`, `studio-execution-role`, `flow-log-bucket`.
    pub name: &'static str,
    pub kind: PolicyKind,
    /// What carries it, in words.
    pub attached_to: String,
    pub document: serde_json::Value,
}

/// Where the stack is: the values a policy is rendered with.
#[derive(Clone, Debug)]
pub struct Target<'a> {
    pub stack: &'a str,
    pub partition: &'a str,
    pub region: &'a str,
    pub account: &'a str,
}

/// Fills a template's `${Name}` placeholders. Templates are the project's own files, so an
/// unknown placeholder or a result that is not JSON is a bug, reported as such.
fn fill(template: &str, values: &[(&str, &str)]) -> Result<serde_json::Value, String> {
    let mut text = template.to_string();
    for (name, value) in values {
        text = text.replace(&format!("${{{name}}}"), value);
    }
    if let Some(at) = text.find("${") {
        let rest: String = text[at..].chars().take(24).collect();
        return Err(format!(
            "policy template has an unfilled placeholder at {rest}"
        ));
    }
    serde_json::from_str(&text).map_err(|e| format!("policy template is not JSON: {e}"))
}

/// The provisioner's own policy (what `provision up`/`down` call), for one partition and
/// account.
pub fn provisioner(partition: &str, account: &str) -> Result<serde_json::Value, String> {
    fill(
        PROVISIONER,
        &[("Partition", partition), ("Account", account)],
    )
}

/// The ARN of the stack roles' permissions boundary.
pub fn role_boundary_arn(partition: &str, account: &str) -> String {
    format!(
        "arn:{partition}:iam::{account}:policy{}{ROLE_BOUNDARY_NAME}",
        crate::resources::role::ROLE_PATH
    )
}

/// The permissions boundary of every role the stack makes: what the Studio and flow-log
/// roles may do at the most, so that the provisioner, which writes those roles' policies,
/// cannot make a role that does more (IAM's answer to a role-writer's self-escalation).
pub fn role_boundary(partition: &str, account: &str) -> Result<serde_json::Value, String> {
    fill(
        ROLE_BOUNDARY,
        &[("Partition", partition), ("Account", account)],
    )
}

/// The monitor's own policy (its read calls) for one stack delivering to `bucket`.
pub fn monitor(t: &Target<'_>, bucket: &str) -> Result<serde_json::Value, String> {
    fill(
        MONITOR,
        &[
            ("Partition", t.partition),
            ("Account", t.account),
            ("Region", t.region),
            ("Stack", t.stack),
            ("Bucket", bucket),
        ],
    )
}

/// Every policy for `spec` at `t`, identity policies first.
pub fn render(spec: &StackSpec, t: &Target<'_>) -> Result<Vec<RenderedPolicy>, String> {
    let bucket = flow_log_bucket::bucket_of(spec, t.stack, t.account, t.region);
    let mut out = vec![
        RenderedPolicy {
            name: "provisioner",
            kind: PolicyKind::Identity,
            attached_to: "whoever runs `egresswatch provision`".into(),
            document: provisioner(t.partition, t.account)?,
        },
        RenderedPolicy {
            name: "monitor",
            kind: PolicyKind::Identity,
            attached_to: "the monitor's instance or task role".into(),
            document: monitor(t, &bucket)?,
        },
    ];
    out.push(RenderedPolicy {
        name: "role-boundary",
        kind: PolicyKind::Boundary,
        attached_to: format!(
            "managed policy {}, the permissions boundary of the stack's roles",
            role_boundary_arn(t.partition, t.account)
        ),
        document: role_boundary(t.partition, t.account)?,
    });
    let studio = role::studio(spec, t.partition, t.region, t.account);
    out.push(RenderedPolicy {
        name: "studio-execution-role",
        kind: PolicyKind::Identity,
        attached_to: format!(
            "IAM role {}{} (inline policy)",
            role::ROLE_PATH,
            crate::resources::role_name(t.stack, studio.which)
        ),
        document: studio.inline,
    });
    out.push(RenderedPolicy {
        name: "studio-execution-role-trust",
        kind: PolicyKind::Trust,
        attached_to: "the Studio execution role".into(),
        document: studio.trust,
    });
    if spec.flow_log_destination == FlowLogDestination::S3 {
        let prefix = flow_log_prefix(t.stack);
        out.push(RenderedPolicy {
            name: "flow-log-bucket",
            kind: PolicyKind::Resource,
            attached_to: format!("S3 bucket {bucket}"),
            document: flow_log_bucket::bucket_policy(
                &bucket,
                &prefix,
                t.partition,
                t.region,
                t.account,
            ),
        });
        let queue_arn = |dead_letter: bool| {
            format!(
                "arn:{}:sqs:{}:{}:{}",
                t.partition,
                t.region,
                t.account,
                flow_log_queue_name(t.stack, dead_letter)
            )
        };
        let bucket_arn = format!("arn:{}:s3:::{bucket}", t.partition);
        let owner =
            (bucket == flow_log_bucket_name(t.stack, t.account, t.region)).then_some(t.account);
        let attributes = flow_log_queue::wanted_attributes(
            &queue_arn(false),
            Some(&queue_arn(true)),
            &bucket_arn,
            owner,
        );
        if let Some(policy) = attributes.get(&aws_sdk_sqs::types::QueueAttributeName::Policy) {
            out.push(RenderedPolicy {
                name: "flow-log-queue",
                kind: PolicyKind::Resource,
                attached_to: format!("SQS queue {}", flow_log_queue_name(t.stack, false)),
                document: serde_json::from_str(policy).map_err(|e| e.to_string())?,
            });
        }
    } else {
        let flow = role::flow_logs(t.stack, t.partition, t.region, t.account);
        out.push(RenderedPolicy {
            name: "flow-log-role",
            kind: PolicyKind::Identity,
            attached_to: format!(
                "IAM role {}{} (inline policy)",
                role::ROLE_PATH,
                crate::resources::role_name(t.stack, flow.which)
            ),
            document: flow.inline,
        });
        out.push(RenderedPolicy {
            name: "flow-log-role-trust",
            kind: PolicyKind::Trust,
            attached_to: "the flow-log delivery role".into(),
            document: flow.trust,
        });
    }
    out.push(RenderedPolicy {
        name: "s3-endpoint",
        kind: PolicyKind::Resource,
        attached_to: "the S3 gateway endpoint".into(),
        document: serde_json::from_str(&s3_endpoint::policy(
            spec,
            t.partition,
            t.region,
            t.account,
        ))
        .map_err(|e| e.to_string())?,
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actions_and_resources(v: &serde_json::Value) -> Vec<String> {
        let mut out = Vec::new();
        for s in v["Statement"].as_array().unwrap() {
            for key in ["Resource", "Action"] {
                match &s[key] {
                    serde_json::Value::String(x) => out.push(x.clone()),
                    serde_json::Value::Array(a) => {
                        out.extend(a.iter().map(|x| x.as_str().unwrap().to_string()))
                    }
                    _ => {}
                }
            }
        }
        out
    }

    #[test]
    fn every_policy_renders_for_every_partition_with_nothing_left_unfilled() {
        for partition in ["aws", "aws-cn", "aws-us-gov"] {
            for destination in [FlowLogDestination::Cloudwatch, FlowLogDestination::S3] {
                let spec = StackSpec {
                    flow_log_destination: destination,
                    ..StackSpec::default()
                };
                let t = Target {
                    stack: "research",
                    partition,
                    region: "eu-west-1",
                    account: "111111111111",
                };
                let all = render(&spec, &t).unwrap();
                assert!(all.len() >= 6, "{}", all.len());
                for p in &all {
                    for v in actions_and_resources(&p.document) {
                        if v.starts_with("arn:") {
                            assert!(
                                v.starts_with(&format!("arn:{partition}:")),
                                "{} in {}",
                                v,
                                p.name
                            );
                        }
                        assert!(!v.contains("${"), "{v}");
                    }
                }
            }
        }
    }

    /// `deploy/iam/` is the two identity policies rendered with placeholders for an operator
    /// to fill in. `EGRESSWATCH_WRITE_DEPLOY=1 cargo test -p egresswatch-provision deploy`
    /// writes them after a template changes.
    #[test]
    fn deploy_iam_is_the_templates_rendered_with_placeholders() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/iam");
        let t = Target {
            stack: "STACK",
            partition: "aws",
            region: "REGION",
            account: "ACCOUNT_ID",
        };
        let files = [
            (
                "provisioner-policy.json",
                provisioner("aws", "ACCOUNT_ID").unwrap(),
            ),
            ("monitor-policy.json", monitor(&t, "BUCKET").unwrap()),
        ];
        for (file, want) in files {
            let path = dir.join(file);
            if std::env::var_os("EGRESSWATCH_WRITE_DEPLOY").is_some() {
                let text = serde_json::to_string_pretty(&want).unwrap() + "\n";
                std::fs::write(&path, text).unwrap();
            }
            let got: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert!(
                got == want,
                "{} differs from provision/policies/; regenerate it (see this test's comment)",
                path.display()
            );
        }
    }

    #[test]
    fn an_unfilled_placeholder_is_an_error_not_a_policy() {
        let e = fill("{\"Resource\": \"${Nope}\"}", &[]).unwrap_err();
        assert!(e.contains("${Nope}"), "{e}");
    }
}
