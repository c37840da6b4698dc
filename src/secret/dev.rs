//! `DATABASE_URL` with a password: for a developer's laptop, never production.

use secrecy::{ExposeSecret, SecretString};
use std::sync::OnceLock;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use super::{BoxFuture, Credentials, SecretError, SecretSource, Stage};

/// Credentials fixed at start-up from `DATABASE_URL`.
#[derive(Debug)]
pub struct DevSource {
    username: String,
    password: SecretString,
}

impl DevSource {
    pub fn new(username: String, password: SecretString) -> Self {
        tracing::warn!(
            user = %username,
            "credentials come from DATABASE_URL: the development source, not for production"
        );
        DevSource { username, password }
    }
}

impl SecretSource for DevSource {
    fn kind(&self) -> &'static str {
        "development"
    }

    fn describe(&self) -> String {
        "DATABASE_URL".to_string()
    }

    fn fetch(&self, stage: Stage) -> BoxFuture<'_, Result<Credentials, SecretError>> {
        Box::pin(async move {
            if stage != Stage::Current {
                return Err(SecretError::Unsupported {
                    what: self.describe(),
                    detail: "has only one version".into(),
                });
            }
            let version = content_version(self.password.expose_secret().as_bytes());
            let mut c = Credentials::new(self.username.clone(), "", version);
            c.password = self.password.clone();
            Ok(c)
        })
    }
}

/// A version label derived from content: HMAC-SHA256 under a key drawn at process start, so
/// it tells versions apart without offering a hash of a password to guess against. Stable for
/// the life of the process, which is all a version label is used for.
pub(crate) fn content_version(content: &[u8]) -> String {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(|| {
        let mut k = [0u8; 32];
        rand::fill(&mut k);
        k
    });
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(content);
    let tag = mac.finalize().into_bytes();
    let hex: String = tag.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("h:{hex}")
}
