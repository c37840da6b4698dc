//! Throwaway PostgreSQL clusters on free loopback ports, with TLS and SCRAM.
//!
//! `initdb` runs once per cache into a template (it refuses root, so as the `postgres` user when
//! we are root); each cluster copies the template, writes its own `postgresql.conf` and
//! `pg_hba.conf`, and starts with `pg_ctl -w`. A cluster stops when its handle is dropped, also
//! while a test panics. Its postmaster is recorded ([`super::owned`]) so that `dev/test` can
//! stop a cluster orphaned by a killed test process, and only that.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use tokio_postgres::{Client, NoTls};

use super::pki::Pki;

/// A running cluster.
pub struct Cluster {
    /// The postmaster's record; dropped after the server stops.
    owned: Option<super::owned::Owned>,
    dir: tempfile::TempDir,
    port: u16,
    tls: bool,
    /// Its postmaster was killed ([`Cluster::kill`]): `Drop` starts it once more, so the
    /// crash's shared memory is cleaned up by the server itself.
    killed: bool,
}

/// Where `initdb`, `pg_ctl` and `postgres` live.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .find(|b| b.join("initdb").exists())
        .expect(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: \
             apt-get install postgresql (dev/test does this), or set PG_BIN",
        )
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Runs a PostgreSQL program, as the `postgres` user when we are root.
fn pg_command(program: &str) -> Command {
    let path = bin_dir().join(program);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    }
}

fn give_to_postgres(path: &Path) {
    if is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .expect("chown runs");
        assert!(
            status.success(),
            "chown -R postgres {} failed",
            path.display()
        );
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Cache {
    template: PathBuf,
    pki: Pki,
}

/// The template data directory and the PKI, made once and shared by all test processes.
fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("credswap-pg-cache-v1");
        let ready = root.join("ready");
        if !ready.exists() {
            let staging = PathBuf::from(format!("{}.{}", root.display(), std::process::id()));
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging).unwrap();
            std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755)).unwrap();
            Pki::generate(&staging.join("pki"));
            let data = staging.join("data");
            std::fs::create_dir_all(&data).unwrap();
            give_to_postgres(&data);
            let mut initdb = pg_command("initdb");
            initdb.arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C.UTF-8",
            ]);
            run(initdb, "initdb");
            std::fs::write(staging.join("ready"), "").unwrap();
            // Another test process may have won the race; either copy is good.
            if std::fs::rename(&staging, &root).is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
        }
        assert!(
            ready.exists(),
            "test cluster cache {} is incomplete",
            root.display()
        );
        Cache {
            template: root.join("data"),
            pki: Pki {
                dir: root.join("pki"),
            },
        }
    })
}

/// The test PKI (CA, server and client certificates).
pub fn pki() -> &'static Pki {
    &cache().pki
}

impl Cluster {
    /// A cluster with `ssl=on`: `hostssl` SCRAM for everyone, a client certificate required for
    /// `certuser`, and `hostnossl ... reject`. Listens on 127.0.0.1 and 127.0.0.2; the server
    /// certificate names only `localhost` and `127.0.0.1`.
    pub fn start_tls() -> Cluster {
        Self::start(true)
    }

    /// A cluster with `ssl=off` and SCRAM over plain TCP, for the `allow`/`prefer` cases.
    pub fn start_plain() -> Cluster {
        Self::start(false)
    }

    fn start(tls: bool) -> Cluster {
        let dir = cluster_dir();
        let data = dir.path().join("data");
        run(
            {
                let mut c = Command::new("cp");
                c.arg("-a").arg(&cache().template).arg(&data);
                c
            },
            "copy the template cluster",
        );
        Self::configure_and_start(dir, tls, None)
    }

    /// A streaming standby of `primary` (`pg_basebackup -R`), with TLS as the primary has it,
    /// on its own port: hot standby, so it serves reads.
    pub fn standby_of(primary: &Cluster) -> Cluster {
        let dir = cluster_dir();
        let conninfo = base_backup(dir.path(), primary);
        Self::configure_and_start(dir, primary.tls, Some(conninfo))
    }

    /// Makes this (stopped) cluster a standby of `primary` on its own port again: its data is
    /// replaced by a base backup of the primary, as an old primary rejoins after a failover.
    pub fn rejoin_as_standby_of(&mut self, primary: &Cluster) {
        let _ = pg_ctl_stop(self.dir.path(), "immediate").output();
        self.owned = None;
        run(
            {
                let mut c = Command::new("rm");
                c.arg("-rf").arg(self.dir.path().join("data"));
                c
            },
            "remove the old data directory",
        );
        let conninfo = base_backup(self.dir.path(), primary);
        let conf = self.dir.path().join("data").join("postgresql.auto.conf");
        let text = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(
            &conf,
            format!(
                "{text}\nport = {}\nunix_socket_directories = '{}'\n{conninfo}\n",
                self.port,
                self.dir.path().display()
            ),
        )
        .unwrap();
        self.start_again();
    }

    /// Promotes this standby and waits until it is a primary; returns how long
    /// `pg_promote()` took.
    pub async fn promote(&self) -> std::time::Duration {
        let admin = self.admin().await;
        let started = std::time::Instant::now();
        let promoted: bool = admin
            .query_one("SELECT pg_promote(true, 60)", &[])
            .await
            .expect("pg_promote")
            .get(0);
        assert!(
            promoted,
            "pg_promote() did not finish within 60 s:\n{}",
            self.log()
        );
        started.elapsed()
    }

    /// Whether the server is in recovery (a standby).
    pub async fn in_recovery(&self) -> bool {
        self.admin()
            .await
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0)
    }

    fn configure_and_start(dir: tempfile::TempDir, tls: bool, standby: Option<String>) -> Cluster {
        let cache = cache();
        let data = dir.path().join("data");
        for (from, to) in [
            (cache.pki.server_cert(), "server.crt"),
            (cache.pki.server_key(), "server.key"),
            (cache.pki.ca_cert(), "ca.crt"),
        ] {
            std::fs::copy(from, data.join(to)).unwrap();
        }
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let hba = if tls {
            "local all postgres trust\n\
             local replication postgres trust\n\
             hostssl all certuser 127.0.0.0/8 scram-sha-256 clientcert=verify-full\n\
             hostssl all all 127.0.0.0/8 scram-sha-256\n\
             hostnossl all all 127.0.0.0/8 reject\n"
        } else {
            "local all postgres trust\n\
             local replication postgres trust\n\
             host all all 127.0.0.0/8 scram-sha-256\n"
        };
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        give_to_postgres(dir.path());

        let mut last_error = String::new();
        for _ in 0..5 {
            let port = super::free_port();
            let conf = format!(
                "listen_addresses = '127.0.0.1,127.0.0.2'\nport = {port}\n\
                 unix_socket_directories = '{}'\nssl = {}\nssl_cert_file = 'server.crt'\n\
                 ssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\n\
                 password_encryption = 'scram-sha-256'\nfsync = off\nsynchronous_commit = off\n\
                 full_page_writes = off\nshared_buffers = 16MB\nmax_connections = 200\n\
                 log_min_messages = warning\n{}\n",
                dir.path().display(),
                if tls { "on" } else { "off" },
                standby.as_deref().unwrap_or(""),
            );
            std::fs::write(data.join("postgresql.auto.conf"), conf).unwrap();
            let log = dir.path().join("server.log");
            let logged_before = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
            let out = pg_ctl_start(dir.path()).output().expect("pg_ctl runs");
            // With two listen addresses PostgreSQL starts if it can bind either: a port another
            // test's cluster holds on 127.0.0.1 would leave `localhost` reaching that cluster.
            let log_text = std::fs::read_to_string(&log)
                .map(|t| t.get(logged_before..).unwrap_or_default().to_string())
                .unwrap_or_default();
            if out.status.success() && log_text.contains("could not bind") {
                let _ = pg_ctl_stop(dir.path(), "immediate").output();
                last_error = log_text;
                continue;
            }
            if out.status.success() {
                let owned = Some(own_postmaster(&data));
                return Cluster {
                    owned,
                    dir,
                    port,
                    tls,
                    killed: false,
                };
            }
            last_error = std::fs::read_to_string(&log).unwrap_or_default();
        }
        panic!("PostgreSQL did not start:\n{last_error}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Lets `user` log in over the Unix socket with its password (SCRAM), and reloads.
    pub async fn allow_local(&self, user: &str) {
        let hba = self.dir.path().join("data").join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("local all {user} scram-sha-256\n{rules}")).unwrap();
        self.admin()
            .await
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
    }

    /// A connection string to this cluster's `postgres` database, without credentials.
    pub fn url(&self, host: &str, params: &str) -> String {
        let sep = if params.is_empty() { "" } else { "?" };
        format!("postgresql://{host}:{}/postgres{sep}{params}", self.port)
    }

    /// A superuser session over the Unix socket (trust auth).
    pub async fn admin(&self) -> Client {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(self.dir.path())
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect(NoTls)
            .await
            .expect("admin connection over the Unix socket");
        tokio::spawn(conn);
        client
    }

    /// Waits (at most 5 s) until at least `n` sessions are running a statement that starts with
    /// `prefix`: the point where a test knows its statements reached the server.
    pub async fn wait_running(&self, prefix: &str, n: i64) {
        let admin = self.admin().await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let running: i64 = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND starts_with(query, $1)",
                    &[&prefix],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            if running >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{running} of {n} statements `{prefix}` running after 5 s"
            );
            tokio::task::yield_now().await;
        }
    }

    /// Creates a login role; the password travels as a SCRAM verifier computed here.
    pub async fn create_role(&self, name: &str, password: &str) {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        self.admin()
            .await
            .batch_execute(&format!(
                "CREATE ROLE \"{name}\" LOGIN PASSWORD '{verifier}'"
            ))
            .await
            .unwrap();
    }

    /// Changes a role's password (SCRAM verifier computed here, no plaintext on the wire).
    pub async fn set_password(&self, name: &str, password: &str) {
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        self.admin()
            .await
            .batch_execute(&format!("ALTER ROLE \"{name}\" PASSWORD '{verifier}'"))
            .await
            .unwrap();
    }

    /// Stops the server (fast shutdown: sessions are terminated), keeping its data and port.
    pub fn stop(&self) {
        run(pg_ctl_stop(self.dir.path(), "fast"), "pg_ctl stop");
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&mut self) {
        run(pg_ctl_start(self.dir.path()), "pg_ctl start");
        self.owned = Some(own_postmaster(&self.dir.path().join("data")));
    }

    /// Kills the postmaster with SIGKILL, as a crash would, and waits until it is gone (its
    /// listening socket closes with it; its backends notice and exit on their own).
    pub fn kill(&mut self) {
        let pid = postmaster_pid(&self.dir.path().join("data"));
        let process = rustix::process::Pid::from_raw(pid as i32).expect("a positive pid");
        rustix::process::kill_process(process, rustix::process::Signal::KILL)
            .expect("the test may signal the server it started");
        self.killed = true;
        self.owned = None;
        // Not our child, so there is no wait(): its /proc entry goes (or turns zombie) when
        // it has died.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, r)| !r.starts_with('Z'))
        }) {
            assert!(
                std::time::Instant::now() < deadline,
                "postmaster {pid} still alive 10 s after SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// The server log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

/// A new cluster's directory (its socket and log; the data below it), readable by the
/// `postgres` user.
fn cluster_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("credswap-test-pg-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Copies `primary` into `dir/data` with `pg_basebackup -R` (standby.signal written); returns
/// its `primary_conninfo` line, to keep when the configuration is rewritten.
fn base_backup(dir: &Path, primary: &Cluster) -> String {
    give_to_postgres(dir);
    let data = dir.join("data");
    let mut c = pg_command("pg_basebackup");
    c.arg("-D")
        .arg(&data)
        .arg("-h")
        .arg(primary.socket_dir())
        .args([
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-R",
            "-X",
            "stream",
            "--no-sync",
        ]);
    run(c, "pg_basebackup");
    std::fs::read_to_string(data.join("postgresql.auto.conf"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("primary_conninfo"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The pid of a started cluster's postmaster: the first line of postmaster.pid.
fn postmaster_pid(data: &Path) -> u32 {
    std::fs::read_to_string(data.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()))
        .expect("a started cluster has postmaster.pid")
}

/// Records the postmaster of a started cluster.
fn own_postmaster(data: &Path) -> super::owned::Owned {
    super::owned::record(postmaster_pid(data), "postgres")
}

/// `pg_ctl start` for the cluster in `dir` (data in `dir/data`, log in `dir/server.log`),
/// waiting up to 30 s.
fn pg_ctl_start(dir: &Path) -> Command {
    let mut c = pg_command("pg_ctl");
    c.arg("-D")
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("server.log"))
        .args(["-w", "-t", "30", "start"]);
    c
}

/// `pg_ctl stop` of the cluster in `dir`, in `mode` (`fast`, `immediate`), waiting.
fn pg_ctl_stop(dir: &Path, mode: &str) -> Command {
    let mut c = pg_command("pg_ctl");
    c.arg("-D")
        .arg(dir.join("data"))
        .args(["-m", mode, "-w", "stop"]);
    c
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.killed {
            // Crash recovery removes what the killed server left; the stop below ends it.
            let started = pg_ctl_start(self.dir.path()).output();
            if started.is_ok_and(|o| o.status.success()) {
                self.owned = Some(own_postmaster(&self.dir.path().join("data")));
            }
        }
        let _ = pg_ctl_stop(self.dir.path(), "immediate").output();
        self.owned = None;
    }
}
