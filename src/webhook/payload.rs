//! What a webhook asks to rotate: a target by name, an AWS secret (generic, EventBridge
//! `Secret Label Updated`, or CloudTrail events of Secrets Manager), or a Vault path.

use serde_json::Value;

use crate::config::{Source, Target};

/// One thing a webhook names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    Target(String),
    SecretId(String),
    VaultPath(String),
}

/// CloudTrail events of Secrets Manager that mean "the secret changed".
const SECRET_EVENTS: &[&str] = &[
    "PutSecretValue",
    "UpdateSecretVersionStage",
    "RotateSecret",
    "RotationSucceeded",
    "UpdateSecret",
];

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

/// Reads a webhook body. The error says what was expected, never echoing the body.
pub fn parse(body: &[u8]) -> Result<Vec<Selector>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e})"))?;
    if !v.is_object() {
        return Err("the body must be a JSON object".into());
    }
    let mut out = Vec::new();
    if let Some(t) = v.get("target").and_then(Value::as_str) {
        out.push(Selector::Target(t.to_string()));
    }
    if let Some(s) = v.get("secret_id").and_then(Value::as_str) {
        out.push(Selector::SecretId(s.to_string()));
    }
    if let Some(p) = v.get("vault_path").and_then(Value::as_str) {
        out.push(Selector::VaultPath(p.to_string()));
    }
    let detail_type = v
        .get("detail-type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let source = v.get("source").and_then(Value::as_str).unwrap_or_default();
    if detail_type == "Secret Label Updated" {
        match str_at(&v, &["detail", "name"]).or_else(|| str_at(&v, &["detail", "arn"])) {
            Some(name) => out.push(Selector::SecretId(name.to_string())),
            None => return Err("a Secret Label Updated event without detail.name".into()),
        }
    } else if source == "aws.secretsmanager" {
        let event = str_at(&v, &["detail", "eventName"]).unwrap_or_default();
        if !SECRET_EVENTS.contains(&event) {
            return Err(format!(
                "the Secrets Manager event \"{event}\" does not change a secret; send one of {}",
                SECRET_EVENTS.join(", ")
            ));
        }
        let id = str_at(&v, &["detail", "requestParameters", "secretId"])
            .or_else(|| str_at(&v, &["detail", "responseElements", "arn"]))
            .or_else(|| str_at(&v, &["detail", "responseElements", "aRN"]))
            .or_else(|| str_at(&v, &["detail", "additionalEventData", "SecretId"]))
            .or_else(|| {
                v.get("resources")
                    .and_then(|r| r.get(0))
                    .and_then(Value::as_str)
            });
        match id {
            Some(id) => out.push(Selector::SecretId(id.to_string())),
            None => return Err(format!("the {event} event names no secret")),
        }
    }
    if out.is_empty() {
        return Err("nothing to rotate: send {\"target\": ...}, {\"secret_id\": ...}, {\"vault_path\": ...} or a Secrets Manager event".into());
    }
    Ok(out)
}

/// The secret's name from an ARN (`arn:aws:secretsmanager:R:A:secret:NAME-AbCdEf`), else the
/// string itself.
fn secret_name(id: &str) -> &str {
    match id.split_once(":secret:") {
        Some((_, rest)) => match rest.rsplit_once('-') {
            Some((name, suffix)) if suffix.len() == 6 => name,
            _ => rest,
        },
        None => id,
    }
}

/// The targets a selector names.
pub fn matches<'a>(
    selector: &Selector,
    targets: impl IntoIterator<Item = &'a Target>,
) -> Vec<String> {
    targets
        .into_iter()
        .filter(|t| match (selector, &t.source) {
            (Selector::Target(name), _) => &t.name == name,
            (Selector::SecretId(id), Source::Aws(a)) => {
                a.secret_id == *id || secret_name(&a.secret_id) == secret_name(id)
            }
            (Selector::VaultPath(p), Source::Vault(v)) => {
                let p = p.trim_matches('/');
                let mount = v.mount();
                let mut paths = Vec::new();
                if let Some(role) = &v.role {
                    paths.push(format!("{mount}/creds/{role}"));
                    paths.push(format!("{mount}/static-creds/{role}"));
                }
                if let Some(path) = &v.path {
                    paths.push(format!("{mount}/data/{path}"));
                    paths.push(format!("{mount}/{path}"));
                }
                paths.iter().any(|c| c == p)
            }
            _ => false,
        })
        .map(|t| t.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arn_names() {
        assert_eq!(
            secret_name("arn:aws:secretsmanager:us-west-2:123456789012:secret:prod/app-AbCdEf"),
            "prod/app"
        );
        assert_eq!(secret_name("prod/app"), "prod/app");
    }

    #[test]
    fn refusals() {
        assert!(parse(b"[1]").is_err());
        assert!(parse(b"{}").unwrap_err().starts_with("nothing to rotate"));
        assert!(parse(b"not json")
            .unwrap_err()
            .starts_with("the body is not JSON"));
    }
}
