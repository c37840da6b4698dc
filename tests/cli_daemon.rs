//! The CLI against a running daemon, the socket's life, and shutdown.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::daemon::{bin, Daemon};
use support::pg::{pki, Cluster};
use support::CANARY_PASSWORD;

async fn start() -> (Cluster, tempfile::TempDir, Daemon) {
    let db = Cluster::start_tls();
    db.create_role("app", CANARY_PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = support::credentials_file(dir.path(), "app.json", "app", CANARY_PASSWORD);
    let config = format!(
        "[[target]]\nname = \"app\"\nurl = \"{}\"\nmin_rotation_interval = \"0s\"\nsource = {{ kind = \"file\", path = \"{}\" }}\n",
        db.url("localhost", &format!("sslmode=verify-full&sslrootcert={}", pki().ca_cert().display())),
        secret.display()
    );
    let d = Daemon::start(&config, "").await;
    d.wait_ready().await;
    (db, dir, d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_rotate_query_and_exit_codes() {
    let (db, _dir, mut d) = start().await;
    let mut outputs = Vec::new();

    let (code, out, err) = d.cli(&["status"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("TARGET  STATE"), "{out}");
    assert!(out.contains("app     ready  g1   app"), "{out}");
    // The hosts under it: the one host, a primary with the generation's connections on it.
    let hosts = out.split_once("\n\n").map(|(_, h)| h).unwrap_or_default();
    assert!(hosts.starts_with("TARGET  HOST"), "{out}");
    let line = hosts.lines().nth(1).unwrap_or_default();
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells[..3],
        ["app", &format!("localhost:{}", db.port()), "primary"],
        "{out}"
    );
    assert!(cells[3].parse::<u32>().is_ok_and(|n| n > 0), "{out}");
    assert_eq!(cells[4], "no", "{out}");
    outputs.push(out);
    let (code, out, _) = d.cli(&["status", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["targets"][0]["generation"]["id"], 1);
    outputs.push(out);

    let (code, out, err) = d.cli(&["rotate", "app", "--force", "--wait"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("app: swapped to generation 2"), "{out}");
    assert!(out.contains("steps: fetch"), "{out}");
    for step in [
        "fetching credentials",
        "connecting",
        "verified",
        "swapped",
        "draining",
        "old generation g1 drained",
    ] {
        assert!(
            err.contains(step),
            "rotate --wait does not show \"{step}\":\n{err}"
        );
    }
    outputs.push(out + &err);
    let (code, out, _) = d.cli(&["rotate", "app", "--wait"]);
    assert_eq!(code, 0);
    assert!(out.contains("unchanged"), "{out}");

    let (code, out, err) = d.cli(&[
        "query",
        "app",
        "SELECT $1::int4 + 1 AS n, $2::text AS s, current_user AS u",
        "41",
        "hello",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "n   s      u\n42  hello  app\n(SELECT 1)\n");
    let (code, out, _) = d.cli(&["query", "app", "SELECT 1 AS one", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["rows"], json!([[1]]));
    outputs.push(out);

    // Exit codes: failed, usage, unavailable.
    let (code, _, err) = d.cli(&["query", "app", "SELECT * FROM nope"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("relation \"nope\" does not exist (SQLSTATE 42P01)"),
        "{err}"
    );
    let (code, _, err) = d.cli(&["query", "nope", "SELECT 1"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = d.cli(&["query", "app", "SELECT $1::int4", "not-a-number"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("parameter $1 is int4"), "{err}");

    for o in &outputs {
        support::assert_no_canary("CLI output", o);
    }
    support::assert_no_canary("daemon log", &d.log());

    // SIGTERM: exit 0, socket removed.
    let socket = d.socket_path().to_path_buf();
    assert_eq!(d.terminate(), Some(0));
    assert!(!socket.exists(), "the socket file is removed at shutdown");
    let out = std::process::Command::new(bin())
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "no daemon: unavailable");
    assert!(String::from_utf8_lossy(&out.stderr).contains("is credswap running?"));
}

#[tokio::test]
async fn a_second_daemon_refuses_and_a_stale_socket_is_replaced() {
    let (_db, _dir, mut d) = start().await;
    // A second daemon on the same socket refuses to start and leaves the first alone.
    let out = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another credswap is already listening on"),
        "{err}"
    );
    assert_eq!(d.get("/v1/health").await.0, 200);

    // A crash leaves the socket file behind: the next start replaces it.
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(d.socket_path().exists(), "SIGKILL leaves the file");
    let config = d.config.clone();
    let restarted = std::process::Command::new(bin())
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    d.child = Some(restarted);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while d.get_health().await != Some(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "did not restart over the stale socket"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends `sql` through the socket in a task of its own (it outlives the daemon's shutdown).
fn spawn_query(
    d: &Daemon,
    sql: &str,
) -> tokio::task::JoinHandle<Result<credswap::api::client::Reply, credswap::api::client::ClientError>>
{
    let socket = d.socket_path().to_path_buf();
    let body = json!({ "sql": sql }).to_string();
    tokio::spawn(async move {
        credswap::api::client::request(
            &socket,
            "POST",
            "/v1/targets/app/query",
            Some(body),
            Duration::from_secs(90),
        )
        .await
    })
}

/// SIGTERM (a second one if the first was sent): the exit code, and whether the socket file was
/// left behind (checked before the temporary directory goes away with the handle).
async fn terminate(mut d: Daemon) -> (Option<i32>, bool) {
    tokio::task::spawn_blocking(move || {
        let code = d.terminate();
        (code, d.socket_path().exists())
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_running_query_finish() {
    let (db, _dir, d) = start().await;
    let query = spawn_query(&d, "SELECT pg_sleep(1.5), 'finished' AS outcome");
    db.wait_running("SELECT pg_sleep(1.5)", 1).await;
    let (code, socket_left) = terminate(d).await;
    let reply = query.await.unwrap().unwrap();
    assert_eq!(reply.status, 200);
    let v: Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(v["rows"][0][1], "finished");
    assert_eq!(code, Some(0));
    assert!(!socket_left, "the socket file is removed");
}

/// A second SIGTERM during a graceful shutdown exits at once with 130, even with a request still
/// running, and takes the socket file with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let (db, _dir, d) = start().await;
    let query = spawn_query(&d, "SELECT pg_sleep(60)");
    db.wait_running("SELECT pg_sleep(60)", 1).await;
    let pid = rustix::process::Pid::from_raw(d.pid()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    // The first signal is being handled once the daemon says it is shutting down.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d.log().contains("shutting down") {
        assert!(
            std::time::Instant::now() < deadline,
            "no shutdown after SIGTERM:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = std::time::Instant::now();
    let (code, socket_left) = terminate(d).await;
    assert_eq!(code, Some(130), "the second signal's exit code");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exited at once, not after the running query or the 30 s shutdown timeout: {:?}",
        started.elapsed()
    );
    assert!(!socket_left, "the socket file is removed on the way out");
    let reply = query.await.unwrap();
    assert!(
        reply.is_err(),
        "the running request ends with the connection, not an answer"
    );
}

/// An open `/v1/events` stream does not hold up a stop: it ends at shutdown, and the daemon
/// exits well within `daemon.shutdown_timeout` (30 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_an_open_event_stream_exits_promptly() {
    let (_db, _dir, d) = start().await;
    let (subscribed, is_subscribed) = tokio::sync::oneshot::channel();
    let socket = d.socket_path().to_path_buf();
    let stream = tokio::spawn(async move {
        credswap::api::client::events(&socket, "/v1/events", subscribed, |_, _| true).await
    });
    tokio::time::timeout(Duration::from_secs(5), is_subscribed)
        .await
        .expect("subscribed to /v1/events")
        .expect("the event stream started");
    let started = std::time::Instant::now();
    let (code, socket_left) = terminate(d).await;
    assert_eq!(code, Some(0), "a clean stop");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the open stream held the stop for {:?}",
        started.elapsed()
    );
    assert!(!socket_left);
    let ended = tokio::time::timeout(Duration::from_secs(5), stream)
        .await
        .expect("the client's stream ended with the daemon");
    assert!(ended.is_ok(), "the client's stream task did not panic");
}

/// A `socket_group` the daemon is not a member of (the unit grants no CAP_CHOWN) stops the
/// start with an error that names the setting and the fix, not a bare EPERM.
#[test]
fn a_socket_group_the_daemon_is_not_in_is_explained() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let config = dir.path().join("credswap.toml");
    std::fs::write(
        &config,
        format!(
            "[api]\nsocket = \"{}/api.sock\"\nsocket_group = \"daemon\"\n\n[[target]]\nname = \"app\"\nurl = \"postgresql://localhost/app\"\nsource = {{ kind = \"file\", path = \"{}/app.json\" }}\n",
            dir.path().display(),
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    // uid and gid 65534 (nobody/nogroup), no supplementary groups, no capabilities.
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(bin())
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .expect("setpriv runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("(api.socket_group): the daemon is not a member of that group"),
        "{err}"
    );
    assert!(err.contains("SupplementaryGroups="), "{err}");
    assert!(
        !dir.path().join("api.sock").exists(),
        "no socket left behind"
    );
}
