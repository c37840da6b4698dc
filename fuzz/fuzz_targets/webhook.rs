//! A webhook request: the signature and token headers and the body, checked the way the
//! listener checks them, then read as a generic / EventBridge / CloudTrail / Vault payload and
//! matched against configured targets. Half of the inputs are signed with the real key, so the
//! payload parser sees bodies that pass the signature check too. Any body signed with the key
//! is accepted exactly once.
#![no_main]

use std::time::Duration;

use credswap::webhook::auth::{sign, Verdict, Verifier};
use credswap::webhook::payload;
use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;

fuzz_target!(|data: &[u8]| {
    // Layout: flags byte, then signature header \n token header \n body.
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let mut parts = rest.splitn(3, |b| *b == b'\n');
    let signature = parts.next().map(String::from_utf8_lossy);
    let token = parts.next().map(String::from_utf8_lossy);
    let body = parts.next().unwrap_or_default();
    let key = SecretString::from("fuzz-key-0123456789");
    let verifier = Verifier::new(
        vec![key.clone()],
        Some(SecretString::from("fuzz-token")),
        if flags & 2 == 0 {
            "authorization"
        } else {
            "x-api-key"
        },
        Duration::from_secs(300),
    );
    let now = 1_800_000_000;
    let signed = sign(&key, now, body);
    let signature = if flags & 1 == 1 {
        Some(signed.as_str())
    } else {
        signature.as_deref()
    };
    let _ = verifier.check(signature, token.as_deref(), body, now);
    // Any body signed with the real key is accepted once, then refused as a replay.
    let fresh = Verifier::new(
        vec![key.clone()],
        None,
        "authorization",
        Duration::from_secs(300),
    );
    assert!(matches!(
        fresh.check(Some(&signed), None, body, now),
        Verdict::Ok
    ));
    assert!(matches!(
        fresh.check(Some(&signed), None, body, now),
        Verdict::Refused
    ));
    if let Ok(selectors) = payload::parse(body) {
        let targets = fuzz_targets_config();
        for s in &selectors {
            let _ = payload::matches(s, &targets);
        }
    }
});

fn fuzz_targets_config() -> Vec<credswap::config::Target> {
    let text = r#"
[[target]]
name = "app"
url = "postgresql://db.internal/app"
source = { kind = "aws", secret_id = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/app-AbCdEf" }
[[target]]
name = "dyn"
url = "postgresql://db.internal/app"
source = { kind = "vault", address = "https://vault:8200", engine = "database", role = "ro" }
[[target]]
name = "kv"
url = "postgresql://db.internal/app"
source = { kind = "vault", address = "https://vault:8200", path = "app/db" }
"#;
    let env = std::collections::HashMap::<String, String>::new();
    credswap::config::Config::from_toml(text, std::path::Path::new("fuzz.toml"), &env)
        .expect("the fixed configuration is valid")
        .targets
}
