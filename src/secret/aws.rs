//! AWS Secrets Manager. The version stage is always passed explicitly (default `AWSCURRENT`):
//! without it some implementations return a stale version after a stage move.

use crate::secret::wipe::SecretText;
use secrecy::zeroize::Zeroizing;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;

use super::payload::{self, KeyNames};
use super::{BoxFuture, Credentials, SecretError, SecretSource, Stage};
pub use crate::config::sources::AwsSourceConfig;

/// Credentials from Secrets Manager.
#[derive(Debug)]
pub struct AwsSource {
    cfg: AwsSourceConfig,
    client: aws_sdk_secretsmanager::Client,
}

impl AwsSource {
    /// Loads the AWS configuration from the standard chain (environment, profile, web identity,
    /// instance metadata).
    pub async fn new(cfg: &AwsSourceConfig) -> AwsSource {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_timeout(cfg.timeout)
                    .connect_timeout(cfg.timeout.min(Duration::from_secs(3)))
                    .build(),
            )
            // The rotator has its own backoff; one quick retry here covers a dropped packet.
            .retry_config(RetryConfig::standard().with_max_attempts(2));
        if let Some(region) = &cfg.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &cfg.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        AwsSource {
            cfg: cfg.clone(),
            client: aws_sdk_secretsmanager::Client::new(&sdk),
        }
    }

    fn label(&self, stage: Stage) -> &str {
        match stage {
            Stage::Current => &self.cfg.version_stage,
            Stage::Pending => "AWSPENDING",
            Stage::Previous => "AWSPREVIOUS",
        }
    }
}

fn map_error(e: SdkError<GetSecretValueError>, what: String) -> SecretError {
    let code = e.code().unwrap_or_default().to_string();
    let detail = match e.message() {
        Some(m) => format!("{code}: {m}"),
        None => DisplayErrorContext(&e).to_string(),
    };
    if let SdkError::ServiceError(service) = &e {
        if let GetSecretValueError::ResourceNotFoundException(_) = service.err() {
            return SecretError::NotFound { what };
        }
    }
    match code.as_str() {
        "AccessDeniedException" => SecretError::AccessDenied { what, detail },
        "ThrottlingException" | "TooManyRequestsException" | "RequestLimitExceeded" => {
            SecretError::Throttled { what, detail }
        }
        "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "ExpiredTokenException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken" => SecretError::StoreAuth { what, detail },
        "DecryptionFailure" => SecretError::AccessDenied { what, detail },
        "InvalidRequestException" | "InvalidParameterException" => {
            SecretError::Unsupported { what, detail }
        }
        _ => SecretError::Unavailable { what, detail },
    }
}

impl SecretSource for AwsSource {
    fn kind(&self) -> &'static str {
        "aws"
    }

    fn describe(&self) -> String {
        format!("aws secret {}", self.cfg.secret_id)
    }

    fn fetch(&self, stage: Stage) -> BoxFuture<'_, Result<Credentials, SecretError>> {
        Box::pin(async move {
            let label = self.label(stage).to_string();
            let what = format!("{} ({label})", self.describe());
            let out = self
                .client
                .get_secret_value()
                .secret_id(&self.cfg.secret_id)
                .version_stage(&label)
                .send()
                .await
                .map_err(|e| map_error(e, what.clone()))?;
            let version = out.version_id().unwrap_or_default().to_string();
            // Taken out of the SDK's answer (not copied) so that it is zeroed when dropped.
            let mut out = out;
            let text = match (out.secret_string.take(), out.secret_binary.take()) {
                (Some(s), _) => SecretText::new(s),
                (None, Some(b)) => {
                    SecretText::new(String::from_utf8(b.into_inner()).map_err(|e| {
                        drop(Zeroizing::new(e.into_bytes()));
                        SecretError::Malformed {
                            what: what.clone(),
                            detail: "SecretBinary is not UTF-8 text".into(),
                        }
                    })?)
                }
                (None, None) => {
                    return Err(SecretError::Malformed {
                        what,
                        detail: "the secret has no value".into(),
                    })
                }
            };
            let keys = KeyNames {
                username: self.cfg.username_key.clone(),
                password: self.cfg.password_key.clone(),
            };
            let p = payload::from_json_text(&text, &keys, &what)?;
            Ok(Credentials {
                username: p.username,
                password: p.password,
                version,
                lease: None,
                overrides: p.overrides,
                next_rotation: None,
            })
        })
    }
}
