//! Credentials in a file: JSON (`{"username": ..., "password": ...}` or the RDS format) or
//! `KEY=VALUE` lines; a relative path is looked up in `$CREDENTIALS_DIRECTORY`, where systemd's
//! `LoadCredential=` puts them.
//!
//! A change — written in place or replaced by a rename — is noticed by polling the file's
//! identity (device, inode, size, mtime) every 250 ms: cheap, and it works on the ramfs systemd
//! uses for credentials, where inotify on a replaced file is easy to get wrong.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use super::dev::content_version;
use super::payload::{self, KeyNames};
use super::wipe::SecretText;
use super::{BoxFuture, Credentials, SecretError, SecretSource, Stage};
pub use crate::config::sources::{FileFormat, FileSourceConfig};

/// How often the file is checked for a change.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Identity of the file on disk: any change to it means "read again".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
        }
    }
}

/// Reads credentials from a file and notices when it changes.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    format: FileFormat,
    keys: KeyNames,
    /// The version last handed out by `fetch`, and the file stamp last looked at.
    seen: Mutex<(Option<String>, Option<Stamp>)>,
}

impl FileSource {
    /// Resolves a relative path against `$CREDENTIALS_DIRECTORY`.
    pub fn new(cfg: &FileSourceConfig) -> Result<FileSource, SecretError> {
        Self::with_credentials_dir(
            cfg,
            std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
        )
    }

    /// As [`FileSource::new`], with the credentials directory given.
    pub fn with_credentials_dir(
        cfg: &FileSourceConfig,
        credentials_dir: Option<PathBuf>,
    ) -> Result<FileSource, SecretError> {
        let path = if cfg.path.is_absolute() {
            cfg.path.clone()
        } else {
            match credentials_dir {
                Some(dir) => dir.join(&cfg.path),
                None => {
                    return Err(SecretError::Unsupported {
                        what: format!("credentials file {}", cfg.path.display()),
                        detail: "a relative path is looked up in $CREDENTIALS_DIRECTORY, which is not set; fix: give an absolute path, or load it with systemd's LoadCredential=".into(),
                    })
                }
            }
        };
        Ok(FileSource {
            path,
            format: cfg.format,
            keys: KeyNames {
                username: cfg.username_key.clone(),
                password: cfg.password_key.clone(),
            },
            seen: Mutex::new((None, None)),
        })
    }

    /// The resolved path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn what(&self) -> String {
        format!("credentials file {}", self.path.display())
    }

    async fn read(&self) -> Result<(SecretText, Stamp), SecretError> {
        let meta = tokio::fs::metadata(&self.path)
            .await
            .map_err(|e| self.io_error(e))?;
        let mode = meta.mode() & 0o777;
        if mode & 0o007 != 0 {
            return Err(SecretError::AccessDenied {
                what: self.what(),
                detail: format!(
                    "refused: the file is accessible to other users (mode {mode:04o}); fix: chmod o-rwx {}",
                    self.path.display()
                ),
            });
        }
        let text = SecretText::new(
            tokio::fs::read_to_string(&self.path)
                .await
                .map_err(|e| self.io_error(e))?,
        );
        Ok((text, Stamp::of(&meta)))
    }

    fn io_error(&self, e: std::io::Error) -> SecretError {
        match e.kind() {
            std::io::ErrorKind::NotFound => SecretError::NotFound { what: self.what() },
            std::io::ErrorKind::PermissionDenied => SecretError::AccessDenied {
                what: self.what(),
                detail: e.to_string(),
            },
            _ => SecretError::Unavailable {
                what: self.what(),
                detail: e.to_string(),
            },
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, (Option<String>, Option<Stamp>)> {
        self.seen
            .lock()
            .expect("the lock is never held across a panic")
    }
}

impl SecretSource for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn describe(&self) -> String {
        self.what()
    }

    fn fetch(&self, stage: Stage) -> BoxFuture<'_, Result<Credentials, SecretError>> {
        Box::pin(async move {
            if stage != Stage::Current {
                return Err(SecretError::Unsupported {
                    what: self.what(),
                    detail: "a file has only its current version".into(),
                });
            }
            let (text, stamp) = self.read().await?;
            let version = content_version(text.as_bytes());
            // Remember what was read even if it does not parse, so `changed` waits for the
            // next edit instead of reporting this content again.
            *self.seen() = (Some(version.clone()), Some(stamp));
            let what = self.what();
            let parsed = match self.format {
                FileFormat::Auto => payload::from_auto(&text, &self.keys, &what),
                FileFormat::Json => payload::from_json_text(&text, &self.keys, &what),
                FileFormat::Env => payload::from_key_value(&text, &self.keys, &what),
            }?;
            Ok(Credentials {
                username: parsed.username,
                password: parsed.password,
                version,
                lease: None,
                overrides: parsed.overrides,
                next_rotation: None,
            })
        })
    }

    fn changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut ticker = tokio::time::interval(POLL_INTERVAL);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                // A rename in progress can leave no file for a moment: look again next tick.
                let Ok(meta) = tokio::fs::metadata(&self.path).await else {
                    continue;
                };
                let stamp = Stamp::of(&meta);
                let (version, last_stamp) = self.seen().clone();
                if last_stamp == Some(stamp) {
                    continue;
                }
                let Ok(bytes) = tokio::fs::read(&self.path).await else {
                    continue;
                };
                let current = content_version(&bytes);
                let mut seen = self.seen();
                seen.1 = Some(stamp);
                if version.as_deref() != Some(current.as_str()) {
                    return;
                }
            }
        })
    }
}
