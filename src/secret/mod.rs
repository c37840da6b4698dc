//! Credentials and where they come from.
//!
//! A credential's password lives in a [`SecretString`] from the moment it is read until it is
//! handed to the PostgreSQL driver; `Debug` shows `[REDACTED]` and nothing here implements
//! `Display` for it.

use secrecy::SecretString;

/// A database login as a secret source delivers it.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The role to log in as; not secret.
    pub username: String,
    /// The password; never logged, printed or serialised.
    pub password: SecretString,
    /// An opaque version label (AWS VersionId, Vault version, content hash): safe to show, used
    /// to skip rotations when nothing changed.
    pub version: String,
}

impl Credentials {
    /// Credentials with a version label.
    pub fn new(
        username: impl Into<String>,
        password: impl Into<String>,
        version: impl Into<String>,
    ) -> Self {
        Credentials {
            username: username.into(),
            password: SecretString::from(password.into()),
            version: version.into(),
        }
    }
}
