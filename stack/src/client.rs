//! The choices the provisioner and the monitor make alike when they set up AWS clients, kept
//! here so the two cannot drift apart: each builds its own clients (with only the SDKs it
//! calls) from these.

/// Attempts per call when the user has not chosen a retry policy.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    /// Address S3 by path rather than by per-bucket host name: a custom endpoint (an emulator,
    /// a VPC endpoint) has no per-bucket DNS names.
    pub s3_path_style: bool,
    /// `Some(n)`: adaptive retries, up to `n` attempts. `None`: the user chose a policy
    /// (`AWS_RETRY_MODE` / `AWS_MAX_ATTEMPTS`, as every AWS SDK reads), which the SDK applies.
    pub adaptive_retry_attempts: Option<u32>,
}

/// The settings for clients talking to `endpoint_url` (an override of `AWS_ENDPOINT_URL`), given
/// the process's environment.
pub fn client_settings(endpoint_url: Option<&str>) -> ClientSettings {
    settings(endpoint_url, |name| std::env::var_os(name).is_some())
}

fn settings(endpoint_url: Option<&str>, is_set: impl Fn(&str) -> bool) -> ClientSettings {
    // Throttling, 5xx and dropped connections are retried with exponential backoff, and
    // adaptive mode slows the client down on throttling: a daemon that polls all day should
    // yield to the service rather than hammer it.
    let user_chose = is_set("AWS_RETRY_MODE") || is_set("AWS_MAX_ATTEMPTS");
    ClientSettings {
        s3_path_style: endpoint_url.is_some() || is_set("AWS_ENDPOINT_URL"),
        adaptive_retry_attempts: (!user_chose).then_some(DEFAULT_MAX_ATTEMPTS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_itself_gets_host_names_and_adaptive_retries() {
        assert_eq!(
            settings(None, |_| false),
            ClientSettings {
                s3_path_style: false,
                adaptive_retry_attempts: Some(5)
            }
        );
    }

    #[test]
    fn any_custom_endpoint_addresses_s3_by_path() {
        assert!(settings(Some("http://127.0.0.1:5000"), |_| false).s3_path_style);
        assert!(settings(None, |n| n == "AWS_ENDPOINT_URL").s3_path_style);
    }

    #[test]
    fn the_users_retry_choice_wins() {
        for var in ["AWS_RETRY_MODE", "AWS_MAX_ATTEMPTS"] {
            assert_eq!(
                settings(None, |n| n == var).adaptive_retry_attempts,
                None,
                "{var}"
            );
        }
    }
}

/// An error and its causes in one line, each said once: what the AWS SDK's dispatch failures
/// hide behind "dispatch failure" (no credentials, an unreachable endpoint), without the
/// Rust structures its own formatting appends.
pub fn error_chain<E: std::error::Error + ?Sized>(err: &E) -> String {
    let mut said: Vec<String> = vec![err.to_string()];
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        // A cause often repeats the text of the error it explains.
        if !text.is_empty() && !said.iter().any(|s| s.contains(&text)) {
            said.push(text);
        }
        current = e.source();
    }
    said.join(": ")
}

#[cfg(test)]
mod chain_tests {
    use super::error_chain;

    #[derive(Debug)]
    struct Layer(&'static str, Option<Box<Layer>>);
    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|l| l as _)
        }
    }

    #[test]
    fn every_cause_is_said_once_and_no_structure_is_dumped() {
        let e = Layer(
            "dispatch failure",
            Some(Box::new(Layer(
                "other",
                Some(Box::new(Layer(
                    "no credentials",
                    Some(Box::new(Layer("no credentials", None))),
                ))),
            ))),
        );
        assert_eq!(error_chain(&e), "dispatch failure: other: no credentials");
    }
}
