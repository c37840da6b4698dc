//! Real drivers through the PostgreSQL front end: node-pg (npm `pg`, pinned in
//! tests/drivers/package.json, installed by dev/setup) and psycopg 3 (in the venv). Each script
//! runs queries, named/automatic prepared statements, an error inside a transaction, COPY in
//! and out, a 100 MB value, LISTEN/NOTIFY and a cancel of `pg_sleep`.

mod support;

use std::path::Path;
use std::process::Command;

use support::frontend::setup;

fn run(what: &str, mut cmd: Command, socket_dir: &Path) -> String {
    let out = cmd
        .env("PGHOST", socket_dir)
        .env("PGDATABASE", "app")
        .env_remove("PGPASSWORD")
        .output()
        .unwrap_or_else(|e| panic!("{what} does not run ({e}); dev/setup installs it"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    support::assert_no_canary(what, &text);
    assert!(out.status.success(), "{what} failed:\n{text}");
    assert!(text.contains("all ok"), "{what}:\n{text}");
    text
}

/// node-pg's checks against target `app` set up with `extra_target`.
async fn node_pg_with(extra_target: &str) {
    let s = setup(extra_target).await;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/drivers");
    assert!(
        dir.join("node_modules/pg").exists(),
        "node-pg is not installed: run dev/setup (npm ci in tests/drivers)"
    );
    let mut cmd = Command::new("node");
    cmd.arg(dir.join("node_pg.js")).current_dir(&dir);
    let out = run("node-pg", cmd, s.socket_dir());
    assert!(out.contains("query ok, user app"), "{out}");
}

/// psycopg's checks against target `app` set up with `extra_target`.
async fn psycopg_with(extra_target: &str) {
    let s = setup(extra_target).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "the venv is missing: run dev/setup");
    let mut cmd = Command::new(python);
    cmd.arg(root.join("tests/drivers/psycopg_check.py"));
    let out = run("psycopg", cmd, s.socket_dir());
    assert!(out.contains("query ok, user app"), "{out}");
}

/// In transaction mode (on three server connections) the scripts' temporary table pins their
/// session, LISTEN pins the listener, and the rest moves between connections.
const TRANSACTION_MODE: &str = "pool_mode = \"transaction\"\npool = { max_size = 3 }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pg() {
    node_pg_with("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg() {
    psycopg_with("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_pg_in_transaction_mode() {
    node_pg_with(TRANSACTION_MODE).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_in_transaction_mode() {
    psycopg_with(TRANSACTION_MODE).await;
}
