//! The customer KMS key flow logs are written with (`log-kms-key-arn`): before the stack uses
//! it, its key policy must let the service that writes the logs use it, or delivery fails with
//! an access error that AWS reports only as a failed delivery status, and `up` would re-create
//! the flow log forever. CloudWatch Logs encrypts as `logs.REGION.amazonaws.com`; delivery to
//! S3 as `delivery.logs.amazonaws.com` (VPC user guide, flow logs to S3, SSE-KMS; CloudWatch
//! Logs user guide, encrypt log data with KMS).

use serde_json::Value;

use crate::aws::{aws_error, Clients};
use crate::ProvisionError;

/// The KMS action the writer must be allowed, whose absence fails delivery.
const NEEDED_ACTION: &str = "kms:GenerateDataKey";

/// Checks that `key`'s policy admits `service`. A key whose policy cannot be read (another
/// account's key, or no `kms:GetKeyPolicy`) is reported through `progress` and let be.
pub async fn check(
    clients: &Clients,
    key: &str,
    service: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ProvisionError> {
    let got = clients
        .kms
        .get_key_policy()
        .key_id(key)
        .policy_name("default")
        .send()
        .await
        .map_err(|e| aws_error("log-kms-key", "GetKeyPolicy", e));
    let policy = match got {
        Ok(p) => p.policy().unwrap_or_default().to_string(),
        Err(ProvisionError::Aws { code, message, .. }) if code == "NotFoundException" => {
            return Err(ProvisionError::Spec(format!(
                "log-kms-key-arn = \"{key}\": KMS does not know this key ({message})"
            )))
        }
        Err(ProvisionError::Aws { code, message, .. }) => {
            progress(&format!(
                "could not read the key policy of {key} ({code}: {message}); make sure it lets {service} use the key, or flow-log delivery fails"
            ));
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let doc: Value = serde_json::from_str(&policy).map_err(|e| {
        ProvisionError::Unexpected(format!("the key policy of {key} is not JSON: {e}"))
    })?;
    if admits(&doc, service) {
        return Ok(());
    }
    Err(ProvisionError::Conflict(format!(
        "log-kms-key-arn = \"{key}\": its key policy does not let {service} use the key ({NEEDED_ACTION}*), so flow-log delivery would fail with an access error. Add a statement such as {{\"Effect\": \"Allow\", \"Principal\": {{\"Service\": \"{service}\"}}, \"Action\": [\"kms:Encrypt*\", \"kms:Decrypt*\", \"kms:ReEncrypt*\", \"kms:GenerateDataKey*\", \"kms:Describe*\"], \"Resource\": \"*\"}} to the key policy, then run up again"
    )))
}

/// Whether the policy allows `service` the action delivery needs and no statement denies it.
/// Conditions are not evaluated: a statement that names the service is taken as meant for it.
pub fn admits(policy: &Value, service: &str) -> bool {
    let statements: Vec<&Value> = match &policy["Statement"] {
        Value::Array(a) => a.iter().collect(),
        s @ Value::Object(_) => vec![s],
        _ => return false,
    };
    let applies =
        |s: &Value| names_principal(&s["Principal"], service) && allows_action(&s["Action"]);
    let effect = |s: &Value, e: &str| s["Effect"].as_str() == Some(e);
    statements.iter().any(|s| effect(s, "Allow") && applies(s))
        && !statements.iter().any(|s| effect(s, "Deny") && applies(s))
}

fn names_principal(principal: &Value, service: &str) -> bool {
    match principal {
        Value::String(s) => s == "*",
        Value::Object(m) => {
            let any = |v: &Value, want: &str| match v {
                Value::String(s) => s == want || s == "*",
                Value::Array(a) => a.iter().any(|x| x.as_str() == Some(want) || x == "*"),
                _ => false,
            };
            m.get("Service").is_some_and(|v| any(v, service))
                || m.get("AWS").is_some_and(|v| any(v, "*"))
        }
        _ => false,
    }
}

fn allows_action(action: &Value) -> bool {
    let matches = |pattern: &str| {
        wildcard(
            &pattern.to_ascii_lowercase(),
            &NEEDED_ACTION.to_ascii_lowercase(),
        )
    };
    match action {
        Value::String(s) => matches(s),
        Value::Array(a) => a.iter().filter_map(Value::as_str).any(matches),
        _ => false,
    }
}

/// IAM's `*` and `?` wildcards.
fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn root_only() -> Value {
        json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
             "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "kms:*", "Resource": "*"}
        ]})
    }

    #[test]
    fn the_default_key_policy_admits_no_service() {
        assert!(!admits(&root_only(), "delivery.logs.amazonaws.com"));
    }

    #[test]
    fn a_statement_for_the_service_admits_it_and_only_it() {
        let mut p = root_only();
        p["Statement"].as_array_mut().unwrap().push(json!({
            "Sid": "Allow VPC Flow Logs to use the key", "Effect": "Allow",
            "Principal": {"Service": ["delivery.logs.amazonaws.com"]},
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
            "Resource": "*"
        }));
        assert!(admits(&p, "delivery.logs.amazonaws.com"));
        assert!(!admits(&p, "logs.us-east-1.amazonaws.com"));
        // The CloudWatch Logs example: one service, every kms:*-ish action, a condition.
        let logs = json!({"Statement": {
            "Effect": "Allow", "Principal": {"Service": "logs.us-east-1.amazonaws.com"},
            "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"],
            "Resource": "*",
            "Condition": {"ArnLike": {"kms:EncryptionContext:aws:logs:arn": "arn:aws:logs:us-east-1:123456789012:*"}}
        }});
        assert!(admits(&logs, "logs.us-east-1.amazonaws.com"));
    }

    #[test]
    fn a_deny_or_the_wrong_action_keeps_the_service_out() {
        let p = json!({"Statement": [
            {"Effect": "Allow", "Principal": {"Service": "delivery.logs.amazonaws.com"}, "Action": "kms:*", "Resource": "*"},
            {"Effect": "Deny", "Principal": "*", "Action": "kms:GenerateDataKey*", "Resource": "*"}
        ]});
        assert!(!admits(&p, "delivery.logs.amazonaws.com"));
        let decrypt_only = json!({"Statement": [
            {"Effect": "Allow", "Principal": {"Service": "delivery.logs.amazonaws.com"}, "Action": "kms:Decrypt", "Resource": "*"}
        ]});
        assert!(!admits(&decrypt_only, "delivery.logs.amazonaws.com"));
    }

    #[test]
    fn wildcards_match_as_iam_does() {
        assert!(wildcard("kms:*", "kms:generatedatakey"));
        assert!(wildcard("kms:generatedatakey*", "kms:generatedatakey"));
        assert!(wildcard("kms:gen?ratedatakey", "kms:generatedatakey"));
        assert!(!wildcard("kms:decrypt*", "kms:generatedatakey"));
        assert!(wildcard("*", "kms:generatedatakey"));
    }
}
