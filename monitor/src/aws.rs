//! The monitor's AWS clients: only the services it reads from (CloudWatch Logs, EC2, S3, SQS),
//! built from the standard credential chain with the same endpoint, path-style and retry
//! choices as the provisioner's (`egresswatch_stack::client`), so the daemon does not carry the
//! provisioner's IAM and SageMaker SDKs.

use std::sync::Arc;

/// Stands for one credential chain: sources in one process that share it share one account's
/// call budget (`source::budget::shared`).
#[derive(Debug)]
pub struct Chain;

/// The service clients the sources and the inventory call, sharing one configuration.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub s3: aws_sdk_s3::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub region: String,
    pub chain: Arc<Chain>,
}

impl Clients {
    /// Loads the standard AWS configuration (environment, profile, SSO, instance role).
    /// `endpoint_url` overrides `AWS_ENDPOINT_URL` for every service.
    pub async fn from_env(
        region: Option<String>,
        endpoint_url: Option<String>,
    ) -> Result<Self, String> {
        let settings = egresswatch_stack::client::client_settings(endpoint_url.as_deref());
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(r) = region {
            loader = loader.region(aws_config::Region::new(r));
        }
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(attempts) = settings.adaptive_retry_attempts {
            loader = loader.retry_config(
                aws_config::retry::RetryConfig::adaptive().with_max_attempts(attempts),
            );
        }
        let shared = loader.load().await;
        let region = shared.region().map(|r| r.to_string()).ok_or(
            "no AWS region is configured: set AWS_REGION, a profile's region, or pass --region",
        )?;
        Ok(Clients {
            ec2: aws_sdk_ec2::Client::new(&shared),
            logs: aws_sdk_cloudwatchlogs::Client::new(&shared),
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&shared)
                    .force_path_style(settings.s3_path_style)
                    .build(),
            ),
            sqs: aws_sdk_sqs::Client::new(&shared),
            region,
            chain: Arc::new(Chain),
        })
    }
}
