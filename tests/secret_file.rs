//! The file source: formats, systemd credentials, permissions, change detection.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use credswap::secret::file::{FileFormat, FileSource, FileSourceConfig};
use credswap::secret::{SecretError, SecretSource, Stage};
use secrecy::ExposeSecret;
use support::CANARY_PASSWORD;

fn cfg(path: &Path) -> FileSourceConfig {
    FileSourceConfig {
        path: path.to_path_buf(),
        format: FileFormat::Auto,
        username_key: "username".into(),
        password_key: "password".into(),
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[tokio::test]
async fn json_and_key_value() {
    support::logs::capture();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("c.json");
    write(
        &json,
        &format!(r#"{{"username":"app","password":"{CANARY_PASSWORD}","host":"db2","port":6432}}"#),
    );
    let src = FileSource::new(&cfg(&json)).unwrap();
    let c = src.fetch(Stage::Current).await.unwrap();
    assert_eq!(c.username, "app");
    assert_eq!(c.password.expose_secret(), CANARY_PASSWORD);
    assert_eq!(c.overrides.host.as_deref(), Some("db2"));
    assert_eq!(c.overrides.port, Some(6432));
    assert!(!c.version.contains(CANARY_PASSWORD));
    assert!(c.version.starts_with("h:"), "{}", c.version);

    let env = dir.path().join("c.env");
    write(&env, &format!("username=app\npassword={CANARY_PASSWORD}\n"));
    let c2 = FileSource::new(&cfg(&env))
        .unwrap()
        .fetch(Stage::Current)
        .await
        .unwrap();
    assert_eq!(c2.password.expose_secret(), CANARY_PASSWORD);

    // Stages other than the current one do not exist for a file.
    assert!(matches!(
        src.fetch(Stage::Pending).await,
        Err(SecretError::Unsupported { .. })
    ));

    support::assert_no_canary("Debug of credentials", &format!("{c:?} {c2:?} {src:?}"));
    support::assert_no_canary("logs", &support::logs::captured());
}

#[tokio::test]
async fn systemd_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("app-rw"),
        &format!(r#"{{"username":"app","password":"{CANARY_PASSWORD}"}}"#),
    );
    let relative = cfg(Path::new("app-rw"));
    let src = FileSource::with_credentials_dir(&relative, Some(dir.path().to_path_buf())).unwrap();
    assert_eq!(src.path(), dir.path().join("app-rw"));
    assert_eq!(src.fetch(Stage::Current).await.unwrap().username, "app");
    let err = FileSource::with_credentials_dir(&relative, None).unwrap_err();
    assert!(
        err.to_string()
            .contains("$CREDENTIALS_DIRECTORY, which is not set"),
        "{err}"
    );
}

#[tokio::test]
async fn refusals() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    write(
        &path,
        &format!(r#"{{"username":"app","password":"{CANARY_PASSWORD}"}}"#),
    );
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = FileSource::new(&cfg(&path))
        .unwrap()
        .fetch(Stage::Current)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "access to credentials file {p} denied: refused: the file is accessible to other users (mode 0644); fix: chmod o-rwx {p}",
            p = path.display()
        )
    );
    assert!(!err.retryable());
    let missing = FileSource::new(&cfg(&dir.path().join("nope")))
        .unwrap()
        .fetch(Stage::Current)
        .await
        .unwrap_err();
    assert!(
        matches!(missing, SecretError::NotFound { .. }),
        "{missing:?}"
    );
    write(
        &path,
        &format!(r#"{{"user":"app","password":"{CANARY_PASSWORD}"}}"#),
    );
    let bad = FileSource::new(&cfg(&path))
        .unwrap()
        .fetch(Stage::Current)
        .await
        .unwrap_err();
    assert_eq!(
        bad.to_string(),
        format!(
            "credentials file {} is malformed: missing key \"username\"",
            path.display()
        )
    );
}

#[tokio::test]
async fn a_change_is_noticed_by_write_and_by_rename() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    write(&path, r#"{"username":"app","password":"one"}"#);
    let src = FileSource::new(&cfg(&path)).unwrap();
    let v1 = src.fetch(Stage::Current).await.unwrap().version;

    // Written in place.
    write(&path, r#"{"username":"app","password":"two"}"#);
    tokio::time::timeout(Duration::from_secs(1), src.changed())
        .await
        .expect("a write is noticed within a second");
    let v2 = src.fetch(Stage::Current).await.unwrap().version;
    assert_ne!(v1, v2);

    // Replaced atomically by a rename.
    let tmp = dir.path().join("c.json.tmp");
    write(&tmp, r#"{"username":"app","password":"three"}"#);
    std::fs::rename(&tmp, &path).unwrap();
    tokio::time::timeout(Duration::from_secs(1), src.changed())
        .await
        .expect("a rename is noticed within a second");
    let v3 = src.fetch(Stage::Current).await.unwrap();
    assert_ne!(v3.version, v2);
    assert_eq!(v3.password.expose_secret(), "three");

    // Touching the file without changing it is not a change.
    let same = std::fs::read(&path).unwrap();
    std::fs::write(&path, same).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(800), src.changed())
            .await
            .is_err(),
        "the same content must not count as a change"
    );
}
