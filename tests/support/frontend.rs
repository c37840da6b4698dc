//! A daemon with the PostgreSQL front end on: its socket directory (`.s.PGSQL.5432`, mode 0666
//! so other uids can try), a TLS cluster with the role `app` (which may create tables), and two
//! targets: `app` (the test's own settings) and `other` (allowed to uid 4242 only).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::daemon::Daemon;
use super::pg::{pki, Cluster};
use super::CANARY_PASSWORD;
use tokio_postgres::NoTls;

pub struct Setup {
    pub db: Cluster,
    pub dir: tempfile::TempDir,
    pub daemon: Daemon,
}

impl Setup {
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A tokio-postgres session through credswap (no password, no TLS: the local socket).
    pub async fn client(
        &self,
        target: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(self.socket_dir())
            .port(5432)
            .user("whoever")
            .dbname(target)
            .connect(NoTls)
            .await?;
        tokio::spawn(conn);
        Ok(client)
    }
}

pub fn target(db: &Cluster, name: &str, secret: &Path, extra: &str) -> String {
    let source = format!("{{ kind = \"file\", path = \"{}\" }}", secret.display());
    target_with(db, name, &source, extra)
}

/// A target on `db` with its `source` table (inline TOML).
pub fn target_with(db: &Cluster, name: &str, source: &str, extra: &str) -> String {
    // A 2 s drain unless the test sets its own.
    let drain = if extra.contains("drain_timeout") {
        ""
    } else {
        "drain_timeout = \"2s\"\n"
    };
    format!(
        "[[target]]\nname = \"{name}\"\nurl = \"{}\"\n{drain}min_rotation_interval = \"0s\"\n{extra}\nsource = {source}\n",
        db.url("localhost", &format!("sslmode=verify-full&sslrootcert={}", pki().ca_cert().display())),
    )
}

pub async fn setup(extra_target: &str) -> Setup {
    setup_with("", extra_target).await
}

/// [`setup`] with more keys in the `[postgres]` table.
pub async fn setup_with(extra_postgres: &str, extra_target: &str) -> Setup {
    let db = Cluster::start_tls();
    db.create_role("app", CANARY_PASSWORD).await;
    db.admin()
        .await
        .batch_execute("GRANT ALL ON SCHEMA public TO app")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = super::credentials_file(dir.path(), "app.json", "app", CANARY_PASSWORD);
    let config = format!(
        "[postgres]\nsocket_dir = \"{}\"\nsocket_mode = \"0666\"\n{extra_postgres}\n\n{}",
        dir.path().display(),
        target(&db, "app", &secret, extra_target)
    ) + &target(&db, "other", &secret, "allow_uids = [4242]");
    let daemon = Daemon::start(&config, "").await;
    daemon.wait_ready().await;
    Setup { db, dir, daemon }
}
