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

impl Setup {
    /// Server sessions in `pg_stat_activity` matching the SQL `condition`.
    pub async fn count_sessions(&self, condition: &str) -> i64 {
        self.db
            .admin()
            .await
            .query_one(
                &format!("SELECT count(*) FROM pg_stat_activity WHERE {condition}"),
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// A forced rotation of the target `app` through the CLI, which must succeed.
    pub async fn force_rotation(&self) {
        let (code, _, err) = self.daemon.cli(&["rotate", "app", "--force"]);
        assert_eq!(code, 0, "{err}");
    }

    /// Login roles other than the cluster's and OpenBao's admin (Vault's dynamic users).
    pub async fn login_roles(&self) -> i64 {
        self.db
            .admin()
            .await
            .query_one(
                "SELECT count(*) FROM pg_roles WHERE rolcanlogin AND rolname NOT IN ('postgres', 'vaultadmin')",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
}

/// psql through the front end in `dir` (as root, or as `as_user` by runuser): exit code,
/// stdout, stderr.
pub fn psql(dir: &Path, db: &str, sql: &str, as_user: Option<&str>) -> (i32, String, String) {
    let mut cmd = match as_user {
        Some(u) => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", u, "--", "psql"]);
            c
        }
        None => std::process::Command::new("psql"),
    };
    let out = cmd
        .arg(format!("host={} dbname={db}", dir.display()))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env_remove("PGPASSWORD")
        .output()
        .expect("psql runs (apt-get install postgresql-client)");
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

/// The first column of the first row `sql` returns, as text (simple protocol).
pub async fn simple_one(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.unwrap();
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .expect("a row")
}

/// Waits (at most 10 s) until `condition` holds, checking it every 20 ms.
pub async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !condition().await {
        assert!(
            std::time::Instant::now() < deadline,
            "not within 10 s: {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// For password rotations between two roles: `app_b` beside `app`, and `public.ledger` both
/// may write.
pub async fn two_roles_and_a_ledger(s: &Setup) {
    s.db.create_role("app_b", "b-0").await;
    s.db.admin()
        .await
        .batch_execute(
            "GRANT ALL ON SCHEMA public TO app_b; CREATE TABLE public.ledger (x int); \
             GRANT ALL ON public.ledger TO app, app_b",
        )
        .await
        .unwrap();
}

/// Rotation `i` between the two roles of [`two_roles_and_a_ledger`]: a new password for one of
/// them, alternately, and the secret file pointing at it.
pub async fn rotate_password(s: &Setup, i: u64) {
    let (role, password) = if i % 2 == 1 {
        ("app_b", format!("b-{i}"))
    } else {
        ("app", format!("a-{i}"))
    };
    s.db.set_password(role, &password).await;
    super::credentials_file(s.dir.path(), "app.json", role, &password);
}

/// A target `app` fed by OpenBao's database engine (a new login role per rotation, allowed to
/// write `public.ledger`), with `extra` in its table. The OpenBao server must outlive the setup.
pub async fn vault_dynamic(extra: &str) -> (Setup, super::servers::Bao) {
    let db = Cluster::start_tls();
    db.admin()
        .await
        .batch_execute("CREATE TABLE public.ledger (x int)")
        .await
        .unwrap();
    let bao = super::servers::Bao::start();
    bao.database_engine(&db, "10m", &["GRANT ALL ON public.ledger TO \"{{name}}\";"])
        .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let token = super::write_private(dir.path(), "token", super::servers::BAO_ROOT_TOKEN);
    let source = format!(
        "{{ kind = \"vault\", address = \"{}\", engine = \"database\", role = \"dyn\", auth = {{ method = \"token\", token_file = \"{}\" }} }}",
        bao.address(),
        token.display()
    );
    let config = format!(
        "[postgres]\nsocket_dir = \"{}\"\nsocket_mode = \"0666\"\n\n{}",
        dir.path().display(),
        target_with(&db, "app", &source, extra)
    );
    let daemon = Daemon::start(&config, "").await;
    daemon.wait_ready().await;
    (Setup { db, dir, daemon }, bao)
}
