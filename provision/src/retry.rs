//! Retrying exactly the refusals real AWS gives for a while and then stops giving: a resource
//! not yet visible right after it was created, a role not yet assumable right after it was
//! made, an address still held just after its NAT gateway went, a dependency still leaving, a
//! queue policy S3 cannot see yet, a queue name still reserved after its queue was deleted.
//! Each kind has its own bound; anything else fails at once (moto shows none of these, so the
//! tests inject them through testkit's AWS behaviour layer).

use std::time::{Duration, Instant};

use crate::ProvisionError;

/// Which passing refusal a call may meet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passing {
    /// Describe or modify right after create: NotFound until EC2 is consistent
    /// (ec2/latest/devguide/eventual-consistency.html).
    NotYetVisible,
    /// A role created seconds ago, not yet assumable by the service (CreateFlowLogs
    /// "Unable to assume given IAM role", CreateDomain "execution role ... is invalid").
    RoleNotYetAssumable,
    /// ReleaseAddress for a while after its NAT gateway reports deleted (AuthFailure,
    /// InvalidIPAddress.InUse).
    AddressStillHeld,
    /// A subnet, group or VPC still holding interfaces or mount targets that are leaving, or
    /// a VPC whose NAT gateway's public address is still being unmapped (DetachInternetGateway).
    DependencyLeaving,
    /// PutBucketNotificationConfiguration right after the queue's policy was written: S3
    /// cannot yet see that the policy admits it ("Unable to validate the following destination
    /// configurations"; SQS attribute changes take up to 60 s to propagate).
    DestinationNotYetValid,
    /// CreateQueue of a name whose queue was deleted less than 60 s ago (QueueDeletedRecently):
    /// `down` then `up` of one stack.
    NameDeletedRecently,
}

impl Passing {
    /// Whether `e` is this kind of passing refusal.
    pub fn matches(self, e: &ProvisionError) -> bool {
        let ProvisionError::Aws { code, message, .. } = e else {
            return false;
        };
        let m = message.to_ascii_lowercase();
        match self {
            Passing::NotYetVisible => code.ends_with("NotFound"),
            Passing::RoleNotYetAssumable => {
                (code == "InvalidParameter" || code == "ValidationException")
                    && (m.contains("unable to assume") || m.contains("sts:assumerole"))
            }
            Passing::AddressStillHeld => code == "AuthFailure" || code == "InvalidIPAddress.InUse",
            Passing::DependencyLeaving => code == "DependencyViolation" || code == "ResourceInUse",
            Passing::DestinationNotYetValid => {
                code == "InvalidArgument"
                    && m.contains("unable to validate the following destination")
            }
            Passing::NameDeletedRecently => code.ends_with("QueueDeletedRecently"),
        }
    }

    /// How long this kind is worth waiting for before the error is the answer.
    fn bound(self) -> Duration {
        match self {
            Passing::NotYetVisible => Duration::from_secs(120),
            Passing::RoleNotYetAssumable => Duration::from_secs(180),
            Passing::AddressStillHeld => Duration::from_secs(300),
            Passing::DependencyLeaving => Duration::from_secs(900),
            Passing::DestinationNotYetValid => Duration::from_secs(120),
            Passing::NameDeletedRecently => Duration::from_secs(90),
        }
    }
}

/// Exponential backoff (0.5 s doubling to 15 s) for one call that may meet any of `kinds`,
/// each bounded by its own limit from the first attempt.
pub struct Backoff {
    kinds: &'static [Passing],
    started: Instant,
    delay: Duration,
    pub attempts: u32,
}

impl Backoff {
    pub fn new(kinds: &'static [Passing]) -> Self {
        Backoff {
            kinds,
            started: Instant::now(),
            delay: Duration::from_millis(500),
            attempts: 0,
        }
    }

    /// Waits before the next attempt if `e` is one of this call's passing refusals and its
    /// bound is not reached; otherwise hands the error back.
    pub async fn after<P: FnMut(&str) + ?Sized>(
        &mut self,
        e: ProvisionError,
        progress: &mut P,
    ) -> Result<(), ProvisionError> {
        let Some(kind) = self.kinds.iter().find(|k| k.matches(&e)) else {
            return Err(e);
        };
        let bound = kind.bound();
        if self.started.elapsed() + self.delay > bound {
            return Err(e);
        }
        self.attempts += 1;
        progress(&format!(
            "retrying in {:.1}s ({} so far, up to {}s): {e}",
            self.delay.as_secs_f64(),
            self.attempts,
            bound.as_secs()
        ));
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(15));
        Ok(())
    }
}

/// Runs `call` until it succeeds or fails with something other than a passing refusal of
/// `kinds` (or that kind's bound is reached).
#[macro_export]
macro_rules! retry_passing {
    ($kinds:expr, $progress:expr, $call:expr) => {{
        let mut backoff = $crate::retry::Backoff::new($kinds);
        loop {
            match $call {
                Ok(v) => break Ok(v),
                Err(e) => {
                    if let Err(e) = backoff.after(e, $progress).await {
                        break Err(e);
                    }
                }
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws(code: &str, message: &str) -> ProvisionError {
        ProvisionError::Aws {
            resource: "r".into(),
            call: "Call",
            code: code.into(),
            message: message.into(),
            hint: "",
        }
    }

    const EVERY: [Passing; 6] = [
        Passing::NotYetVisible,
        Passing::RoleNotYetAssumable,
        Passing::AddressStillHeld,
        Passing::DependencyLeaving,
        Passing::DestinationNotYetValid,
        Passing::NameDeletedRecently,
    ];

    #[test]
    fn each_kind_retries_only_its_own_refusals() {
        use Passing::*;
        let cases = [
            (aws("InvalidGroup.NotFound", "The security group 'sg-1' does not exist"), NotYetVisible),
            (aws("NatGatewayNotFound", "The Nat Gateway nat-1 was not found"), NotYetVisible),
            (aws("InvalidParameter", "Unable to assume given IAM role: 'arn:aws:iam::1:role/x'"), RoleNotYetAssumable),
            (aws("ValidationException", "The execution role ARN \"x\" is invalid. Please ensure that the role exists and that its trust relationship policy allows the action \"sts:AssumeRole\" for the service principal \"sagemaker.amazonaws.com\"."), RoleNotYetAssumable),
            (aws("AuthFailure", "You do not have permission to access the specified resource."), AddressStillHeld),
            (aws("DependencyViolation", "The subnet 'subnet-1' has dependencies and cannot be deleted."), DependencyLeaving),
            (aws("DependencyViolation", "Network vpc-1 has some mapped public address(es). Please unmap those public address(es) before detaching the gateway."), DependencyLeaving),
            (aws("InvalidArgument", "Unable to validate the following destination configurations"), DestinationNotYetValid),
            (aws("AWS.SimpleQueueService.QueueDeletedRecently", "You must wait 60 seconds after deleting a queue before you can create another with the same name."), NameDeletedRecently),
        ];
        for (e, kind) in &cases {
            for other in EVERY {
                assert_eq!(other.matches(e), other == *kind, "{other:?} on {e}");
            }
        }
        // What is wrong for good is never retried.
        for e in [
            aws(
                "UnauthorizedOperation",
                "You are not authorized to perform this operation.",
            ),
            aws("InvalidParameter", "LogFormat is invalid"),
            aws("NoSuchEntity", "role not found"),
            aws(
                "InvalidArgument",
                "Overlapping suffixes for the same event type",
            ),
            ProvisionError::Conflict("x".into()),
        ] {
            for kind in EVERY {
                assert!(!kind.matches(&e), "{kind:?} on {e}");
            }
        }
    }

    #[tokio::test]
    async fn a_refusal_that_passes_is_waited_out_and_one_that_does_not_fails_at_once() {
        let mut calls = 0;
        let mut said = Vec::new();
        let mut progress = |s: &str| said.push(s.to_string());
        let got: Result<u32, ProvisionError> =
            retry_passing!(&[Passing::NotYetVisible], &mut progress, {
                calls += 1;
                if calls < 3 {
                    Err(aws("InvalidGroup.NotFound", "not yet"))
                } else {
                    Ok(7)
                }
            });
        assert_eq!(got.unwrap(), 7);
        assert_eq!(said.len(), 2);
        let mut progress = |_: &str| {};
        let mut calls = 0;
        let got: Result<u32, ProvisionError> =
            retry_passing!(&[Passing::NotYetVisible], &mut progress, {
                calls += 1;
                Err(aws("UnauthorizedOperation", "no"))
            });
        assert!(got.is_err());
        assert_eq!(calls, 1);
    }
}
