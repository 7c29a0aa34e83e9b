//! The S3 gateway endpoint on the private route tables, with a policy that admits only the
//! account's own buckets (or the listed ones) and the AWS-owned buckets Studio reads: without
//! it, data could leave to any bucket in the world through the endpoint, never touching the
//! NAT. Also finds the S3 prefix list the monitor needs to tell that path apart.

use aws_sdk_ec2::types::{ResourceType, VpcEndpointType};

use super::{bucket_arns, decode_policy, every_page, filter, resource, Teardown, PLANNED};
use crate::aws::aws_error;
use crate::retry::Passing;
use crate::spec::{S3EndpointAccess, StackSpec};
use crate::stack::{ChangeKind, Reconciler};
use crate::ProvisionError;

resource!(S3Endpoint, "s3-endpoint");

/// The endpoint policy the spec asks for.
pub fn policy(spec: &StackSpec, partition: &str, region: &str, account: &str) -> String {
    if spec.s3_endpoint_access == S3EndpointAccess::Any {
        return serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*"}]}).to_string();
    }
    let mut statements = Vec::new();
    if spec.s3_endpoint_access == S3EndpointAccess::Account {
        let mut accounts = vec![account.to_string()];
        accounts.extend(spec.s3_endpoint_accounts.iter().cloned());
        accounts.retain(|a| !a.is_empty());
        statements.push(serde_json::json!({"Sid": "OwnAccountsBuckets", "Effect": "Allow", "Principal": "*", "Action": "*", "Resource": "*",
            "Condition": {"StringEquals": {"aws:ResourceAccount": accounts}}}));
    }
    // Read-only, the AWS-owned buckets Studio needs: ECR serves image layers from the first,
    // the Amazon Linux repositories (1, 2 and 2023) the next four, JumpStart its models the
    // last.
    statements.push(serde_json::json!({"Sid": "AwsOwnedBucketsStudioReads", "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": [
        format!("arn:{partition}:s3:::prod-{region}-starport-layer-bucket/*"),
        format!("arn:{partition}:s3:::packages.{region}.amazonaws.com/*"),
        format!("arn:{partition}:s3:::repo.{region}.amazonaws.com/*"),
        format!("arn:{partition}:s3:::amazonlinux-2-repos-{region}/*"),
        format!("arn:{partition}:s3:::al2023-repos-{region}-de612dc2/*"),
        format!("arn:{partition}:s3:::jumpstart-cache-prod-{region}"),
        format!("arn:{partition}:s3:::jumpstart-cache-prod-{region}/*"),
    ]}));
    if !spec.s3_endpoint_buckets.is_empty() {
        let resources = bucket_arns(partition, &spec.s3_endpoint_buckets);
        statements.push(serde_json::json!({"Sid": "ListedBuckets", "Effect": "Allow", "Principal": "*", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket", "s3:GetBucketLocation"], "Resource": resources}));
    }
    serde_json::json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

async fn reconcile(r: &mut Reconciler<'_>) -> Result<(), ProvisionError> {
    let ec2 = r.clients.ec2.clone();
    let service = format!("com.amazonaws.{}.s3", r.clients.region);
    let policy = policy(&r.spec, &r.partition, &r.clients.region, &r.out.account_id);
    let existing = if r.out.vpc_id == PLANNED {
        None
    } else {
        every_page!(
            ec2.describe_vpc_endpoints()
                .filters(filter("vpc-id", &r.out.vpc_id))
                .filters(r.stack_filter()),
            "s3-endpoint",
            "DescribeVpcEndpoints"
        )?
        .into_iter()
        .find(|e| !matches!(e.state().map(|s| s.as_str()), Some("deleted" | "deleting")))
    };
    let tables = r.private_route_tables.clone();
    match existing {
        None => {
            if r.change(
                "s3-endpoint",
                ChangeKind::Create,
                "S3 gateway endpoint on the private route tables",
                false,
            ) {
                // The VPC and the route tables may have been made a moment ago.
                let tags = r.tags(ResourceType::VpcEndpoint, "s3-endpoint");
                let c = crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                    ec2.create_vpc_endpoint()
                        .vpc_id(&r.out.vpc_id)
                        .service_name(&service)
                        .vpc_endpoint_type(VpcEndpointType::Gateway)
                        .set_route_table_ids(Some(tables.clone()))
                        .policy_document(&policy)
                        .tag_specifications(tags.clone())
                        .send()
                        .await
                        .map_err(|e| aws_error("s3-endpoint", "CreateVpcEndpoint", e))
                })?;
                r.out.s3_endpoint_id = c
                    .vpc_endpoint()
                    .and_then(|e| e.vpc_endpoint_id())
                    .unwrap_or_default()
                    .to_string();
            } else {
                r.out.s3_endpoint_id = PLANNED.into();
            }
        }
        Some(e) => {
            let id = e.vpc_endpoint_id().unwrap_or_default().to_string();
            r.out.s3_endpoint_id = id.clone();
            let missing: Vec<String> = tables
                .iter()
                .filter(|t| !e.route_table_ids().contains(t))
                .cloned()
                .collect();
            let policy_differs =
                e.policy_document().map(decode_policy) != Some(decode_policy(&policy));
            if (!missing.is_empty() || policy_differs)
                && r.change(
                    "s3-endpoint",
                    ChangeKind::Update,
                    if policy_differs {
                        "restore the endpoint policy"
                    } else {
                        "add the private route tables"
                    },
                    policy_differs,
                )
            {
                crate::retry_passing!(&[Passing::NotYetVisible], &mut *r.progress, {
                    let mut m = ec2
                        .modify_vpc_endpoint()
                        .vpc_endpoint_id(&id)
                        .set_add_route_table_ids(Some(missing.clone()));
                    if policy_differs {
                        m = m.policy_document(&policy);
                    }
                    m.send()
                        .await
                        .map_err(|e| aws_error("s3-endpoint", "ModifyVpcEndpoint", e))
                })?;
            }
        }
    }
    if r.out.vpc_id != PLANNED {
        let lists = every_page!(
            ec2.describe_prefix_lists()
                .filters(filter("prefix-list-name", &service)),
            "s3-endpoint",
            "DescribePrefixLists"
        )?;
        let list = lists.first();
        r.out.s3_prefix_list_id = list
            .and_then(|p| p.prefix_list_id())
            .unwrap_or_default()
            .to_string();
        // DescribePrefixLists also answers with the ranges, but AWS recommends the managed
        // prefix list calls (and moto fills in only theirs).
        r.out.s3_prefix_list_cidrs.clear();
        if !r.out.s3_prefix_list_id.is_empty() {
            let entries = every_page!(
                ec2.get_managed_prefix_list_entries()
                    .prefix_list_id(&r.out.s3_prefix_list_id),
                "s3-endpoint",
                "GetManagedPrefixListEntries"
            )?;
            r.out.s3_prefix_list_cidrs = entries
                .iter()
                .filter_map(|e| e.cidr().map(String::from))
                .collect();
        }
    }
    Ok(())
}

async fn delete(t: &mut Teardown<'_>) -> Result<(), ProvisionError> {
    let ec2 = t.clients.ec2.clone();
    for vpc in t.vpc_ids.clone() {
        let ids: Vec<String> = every_page!(
            ec2.describe_vpc_endpoints().filters(filter("vpc-id", &vpc)),
            "s3-endpoint",
            "DescribeVpcEndpoints"
        )?
        .iter()
        .filter(|e| e.state().map(|s| s.as_str()) != Some("deleted"))
        .filter_map(|e| e.vpc_endpoint_id().map(String::from))
        .collect();
        if ids.is_empty() {
            continue;
        }
        if t.live() {
            // Listed a moment ago yet, right after its create (an `up` that failed on, then
            // `down`), not known to every EC2 host.
            crate::retry_passing!(&[Passing::NotYetVisible], &mut *t.progress, {
                ec2.delete_vpc_endpoints()
                    .set_vpc_endpoint_ids(Some(ids.clone()))
                    .send()
                    .await
                    .map_err(|e| aws_error("s3-endpoint", "DeleteVpcEndpoints", e))
            })?;
        }
        for id in ids {
            t.say(format!("vpc-endpoint {id}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statements(doc: &str) -> Vec<serde_json::Value> {
        decode_policy(doc)["Statement"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    #[test]
    fn by_default_only_the_accounts_own_buckets_and_studios_aws_buckets() {
        let spec = StackSpec {
            s3_endpoint_accounts: vec!["222222222222".into()],
            ..StackSpec::default()
        };
        let s = statements(&policy(&spec, "aws", "eu-west-1", "111111111111"));
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0]["Condition"]["StringEquals"]["aws:ResourceAccount"],
            serde_json::json!(["111111111111", "222222222222"])
        );
        // The AWS-owned buckets are readable only.
        assert_eq!(
            s[1]["Action"],
            serde_json::json!(["s3:GetObject", "s3:ListBucket"])
        );
        assert!(s[1]["Resource"][0]
            .as_str()
            .is_some_and(|r| r == "arn:aws:s3:::prod-eu-west-1-starport-layer-bucket/*"));
    }

    #[test]
    fn listed_mode_names_only_the_listed_buckets_in_the_partition() {
        let spec = StackSpec {
            s3_endpoint_access: S3EndpointAccess::Listed,
            s3_endpoint_buckets: vec!["research-data".into()],
            ..StackSpec::default()
        };
        let s = statements(&policy(&spec, "aws-cn", "cn-north-1", "111111111111"));
        assert!(s.iter().all(|st| st.get("Condition").is_none()));
        assert_eq!(
            s[1]["Resource"],
            serde_json::json!([
                "arn:aws-cn:s3:::research-data",
                "arn:aws-cn:s3:::research-data/*"
            ])
        );
    }
}
