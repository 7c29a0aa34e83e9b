//! AWS clients for the provisioner, built from the standard credential chain, with an
//! interceptor that counts calls (and mutating calls) so `up` can prove it changed nothing,
//! and turns SDK errors into messages that name the resource, the call and what to do.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::ProvisionError;

/// Whether an operation changes anything: AWS read calls are named Describe*, List*, Get*,
/// Head* (S3).
pub fn is_mutating(operation: &str) -> bool {
    !["Describe", "List", "Get", "Head"]
        .iter()
        .any(|read| operation.starts_with(read))
}

/// Counts every call the clients make, and the mutating ones by name.
#[derive(Debug, Default)]
pub struct CallLog {
    calls: AtomicU64,
    mutating: AtomicU64,
    mutating_names: std::sync::Mutex<Vec<String>>,
    /// Test hook: refuse the N-th mutating call (1-based) as if the process died there.
    fail_at: AtomicU64,
}

impl CallLog {
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }
    pub fn mutating(&self) -> u64 {
        self.mutating.load(Ordering::SeqCst)
    }
    /// The mutating operations made, in order.
    pub fn mutating_names(&self) -> Vec<String> {
        self.mutating_names
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
    /// Makes the `n`-th mutating call from now on fail before it is sent (0 disables). This
    /// simulates a crash part-way through `up`, which no emulator can be made to produce.
    pub fn fail_mutating_call(&self, n: u64) {
        self.fail_at.store(
            if n == 0 { 0 } else { self.mutating() + n },
            Ordering::SeqCst,
        );
    }
}

#[derive(Debug, Clone)]
struct CountCalls(Arc<CallLog>);

/// The error the fault hook raises.
#[derive(Debug)]
pub struct InjectedFault(pub String);
impl fmt::Display for InjectedFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "injected fault before {}", self.0)
    }
}
impl std::error::Error for InjectedFault {}

impl Intercept for CountCalls {
    fn name(&self) -> &'static str {
        "egresswatch.CountCalls"
    }

    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        self.0.calls.fetch_add(1, Ordering::SeqCst);
        let name = cfg
            .load::<Metadata>()
            .map(|m| m.name().to_string())
            .unwrap_or_default();
        if is_mutating(&name) {
            let n = self.0.mutating.fetch_add(1, Ordering::SeqCst) + 1;
            if let Ok(mut names) = self.0.mutating_names.lock() {
                names.push(name.clone());
            }
            if self.0.fail_at.load(Ordering::SeqCst) == n {
                return Err(Box::new(InjectedFault(name)));
            }
        }
        Ok(())
    }
}

/// The service clients the stack needs, sharing one configuration and one call log.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub iam: aws_sdk_iam::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub sagemaker: aws_sdk_sagemaker::Client,
    pub sts: aws_sdk_sts::Client,
    /// For flow logs delivered to S3: the bucket and its notification.
    pub s3: aws_sdk_s3::Client,
    /// For flow logs delivered to S3: the queue that announces the objects.
    pub sqs: aws_sdk_sqs::Client,
    /// For `down`: mount targets a Studio home volume left in the stack's subnets.
    pub efs: aws_sdk_efs::Client,
    /// For `log-kms-key-arn`: whether the key's policy admits log delivery.
    pub kms: aws_sdk_kms::Client,
    pub region: String,
    pub calls: Arc<CallLog>,
}

impl Clients {
    /// Loads the standard AWS configuration (environment, profile, SSO, instance role).
    /// `endpoint_url` overrides `AWS_ENDPOINT_URL` for every service.
    pub async fn from_env(
        region: Option<String>,
        endpoint_url: Option<String>,
    ) -> Result<Self, ProvisionError> {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r));
        }
        let settings = egresswatch_stack::client::client_settings(endpoint_url.as_deref());
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(attempts) = settings.adaptive_retry_attempts {
            loader = loader.retry_config(
                aws_config::retry::RetryConfig::adaptive().with_max_attempts(attempts),
            );
        }
        let shared = loader.load().await;
        let region = shared
            .region()
            .map(|r| r.to_string())
            .ok_or(ProvisionError::NoRegion)?;
        let calls = Arc::new(CallLog::default());
        let counter = CountCalls(calls.clone());
        let ec2 = aws_sdk_ec2::Client::from_conf(
            aws_sdk_ec2::config::Builder::from(&shared)
                .interceptor(counter.clone())
                .build(),
        );
        let iam = aws_sdk_iam::Client::from_conf(
            aws_sdk_iam::config::Builder::from(&shared)
                .interceptor(counter.clone())
                .build(),
        );
        let logs = aws_sdk_cloudwatchlogs::Client::from_conf(
            aws_sdk_cloudwatchlogs::config::Builder::from(&shared)
                .interceptor(counter.clone())
                .build(),
        );
        let sagemaker = aws_sdk_sagemaker::Client::from_conf(
            aws_sdk_sagemaker::config::Builder::from(&shared)
                .interceptor(counter.clone())
                .build(),
        );
        let sts = aws_sdk_sts::Client::from_conf(
            aws_sdk_sts::config::Builder::from(&shared)
                .interceptor(counter.clone())
                .build(),
        );
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&shared)
                .force_path_style(settings.s3_path_style)
                .interceptor(counter.clone())
                .build(),
        );
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::config::Builder::from(&shared)
                .interceptor(counter.clone())
                .build(),
        );
        let efs = aws_sdk_efs::Client::from_conf(
            aws_sdk_efs::config::Builder::from(&shared)
                .interceptor(counter.clone())
                .build(),
        );
        let kms = aws_sdk_kms::Client::from_conf(
            aws_sdk_kms::config::Builder::from(&shared)
                .interceptor(counter)
                .build(),
        );
        Ok(Clients {
            ec2,
            iam,
            logs,
            sagemaker,
            sts,
            s3,
            sqs,
            efs,
            kms,
            region,
            calls,
        })
    }

    /// The account and partition the credentials belong to (STS GetCallerIdentity, which
    /// needs no permission): ARNs are right in aws-cn and aws-us-gov, and a plan for a new
    /// stack knows its account.
    pub async fn caller(&self) -> Result<(String, String), ProvisionError> {
        let me = self
            .sts
            .get_caller_identity()
            .send()
            .await
            .map_err(|e| aws_error("caller", "GetCallerIdentity", e))?;
        let account = me.account().unwrap_or_default().to_string();
        let partition = me
            .arn()
            .and_then(|a| a.split(':').nth(1))
            .filter(|p| !p.is_empty())
            .map_or_else(|| partition(&self.region).to_string(), String::from);
        Ok((account, partition))
    }
}

/// The partition a region belongs to, for ARNs: `arn:aws-cn:` in China, `arn:aws-us-gov:` in
/// GovCloud, the isolated partitions by their prefixes, `arn:aws:` elsewhere.
pub fn partition(region: &str) -> &'static str {
    const PREFIXES: [(&str, &str); 6] = [
        ("cn-", "aws-cn"),
        ("us-gov-", "aws-us-gov"),
        ("us-isob-", "aws-iso-b"),
        ("us-isof-", "aws-iso-f"),
        ("eu-isoe-", "aws-iso-e"),
        ("us-iso-", "aws-iso"),
    ];
    PREFIXES
        .iter()
        .find(|(prefix, _)| region.starts_with(prefix))
        .map_or("aws", |(_, p)| p)
}

/// Turns an SDK error into one that names the resource and the call, with advice.
pub fn aws_error<E>(resource: &str, call: &'static str, err: E) -> ProvisionError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.code().unwrap_or("").to_string();
    let message = match err.message() {
        Some(m) => m.to_string(),
        None => egresswatch_stack::client::error_chain(&err),
    };
    ProvisionError::Aws {
        resource: resource.to_string(),
        call,
        hint: hint_for(&code, &message),
        code,
        message,
    }
}

fn hint_for(code: &str, message: &str) -> &'static str {
    let c = code.to_ascii_lowercase();
    if c.contains("accessdenied") || c.contains("unauthorized") {
        "the caller lacks a permission this call needs: see README, \"IAM permissions\""
    } else if c.contains("limitexceeded") || c.contains("quota") || c.contains("addresslimit") {
        "an account quota is exhausted: request an increase in Service Quotas or free resources"
    } else if c.contains("expiredtoken")
        || c.contains("invalidclienttokenid")
        || c.contains("unrecognizedclient")
        || c.contains("signaturedoesnotmatch")
        || c.contains("authfailure")
    {
        "the AWS credentials are invalid or expired: refresh them (aws sso login, or the AWS_* variables)"
    } else if message.contains("dispatch failure") || message.contains("credentials") {
        "no AWS credentials were found or the endpoint is unreachable: set a profile or AWS_ACCESS_KEY_ID, and check AWS_ENDPOINT_URL / --endpoint-url"
    } else if c.contains("optinrequired") || c.contains("invalidregion") {
        "the region is not enabled for this account: check AWS_REGION / --region"
    } else if c.contains("throttl") || c.contains("requestlimitexceeded") {
        "AWS is throttling the account: run again in a minute"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::partition;

    #[test]
    fn each_region_is_in_its_partition() {
        for (region, want) in [
            ("us-east-1", "aws"),
            ("eu-central-1", "aws"),
            ("cn-north-1", "aws-cn"),
            ("cn-northwest-1", "aws-cn"),
            ("us-gov-west-1", "aws-us-gov"),
            ("us-iso-east-1", "aws-iso"),
            ("us-isob-east-1", "aws-iso-b"),
        ] {
            assert_eq!(partition(region), want, "{region}");
        }
    }
}
