//! The PostgreSQL front end in transaction mode, with real clients: pgbench, tokio-postgres,
//! node-pg and psycopg share a few server connections, each transaction on a connection of the
//! current generation.

mod support;

use std::path::Path;
use std::process::Command;

use support::frontend::{setup, Setup};

/// A target in transaction mode with `max_size` server connections.
fn transaction_target(max_size: u32) -> String {
    format!("pool_mode = \"transaction\"\npool = {{ max_size = {max_size}, checkout_timeout = \"10s\" }}")
}

fn pgbench(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("pgbench")
        .args(["-h", &dir.display().to_string(), "-p", "5432", "-U", "whoever"])
        .args(args)
        .arg("app")
        .output()
        .expect("pgbench runs (apt-get install postgresql-client)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned()
        + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench {args:?}:\n{text}");
    text
}

/// Server sessions with this `application_name`, as PostgreSQL counts them.
async fn server_sessions(s: &Setup, application_name: &str) -> i64 {
    s.db.admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&application_name],
        )
        .await
        .unwrap()
        .get(0)
}

/// 64 pgbench clients on 8 server connections, in each query mode: every transaction done,
/// none failed, and never more than 8 server sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_64_clients_share_8_server_connections_in_every_query_mode() {
    let s = setup(&transaction_target(8)).await;
    pgbench(s.socket_dir(), &["-i", "-s", "1", "-q"]);
    for mode in ["simple", "extended", "prepared"] {
        let out = pgbench(
            s.socket_dir(),
            &["-M", mode, "-c", "64", "-j", "2", "-t", "50"],
        );
        assert!(
            out.contains("number of transactions actually processed: 3200/3200"),
            "{mode}:\n{out}"
        );
        assert!(out.contains("number of failed transactions: 0"), "{mode}:\n{out}");
        let n = server_sessions(&s, "pgbench").await;
        assert!(n <= 8, "{mode}: {n} server sessions for 64 clients");
    }
    support::assert_no_canary("daemon log", &s.daemon.log());
}
