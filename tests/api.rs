//! The Unix socket API end to end: the real daemon, a real TLS cluster, real HTTP.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::Daemon;
use support::pg::{pki, Cluster};
use support::CANARY_PASSWORD;

fn secret(dir: &Path, name: &str, user: &str, password: &str) -> String {
    support::credentials_file(dir, name, user, password)
        .display()
        .to_string()
}

fn target_toml(db: &Cluster, name: &str, secret: &str, extra: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nurl = \"{}\"\nmin_rotation_interval = \"0s\"\ndrain_timeout = \"2s\"\n{extra}\nsource = {{ kind = \"file\", path = \"{secret}\" }}\n",
        db.url("localhost", &format!("sslmode=verify-full&sslrootcert={}", pki().ca_cert().display()))
    )
}

/// A daemon with one target `app` (its own `extra_target` settings) and `extra_api` keys.
async fn one_target(extra_target: &str, extra_api: &str) -> (Cluster, tempfile::TempDir, Daemon) {
    let db = Cluster::start_tls();
    db.create_role("app", CANARY_PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let s = secret(dir.path(), "app.json", "app", CANARY_PASSWORD);
    let d = Daemon::start(&target_toml(&db, "app", &s, extra_target), extra_api).await;
    d.wait_ready().await;
    (db, dir, d)
}

/// Every response the tests saw, for the OpenAPI check at the end.
struct Seen(Vec<Value>);

impl Seen {
    fn record(&mut self, method: &str, path: &str, status: u16, body: &Value) {
        self.0
            .push(json!({"method": method, "path": path, "status": status, "body": body}));
    }
}

async fn setup() -> (Cluster, tempfile::TempDir, Daemon) {
    let db = Cluster::start_tls();
    db.create_role("app", CANARY_PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let s = secret(dir.path(), "app.json", "app", CANARY_PASSWORD);
    let config = target_toml(
        &db,
        "app",
        &s,
        "allow_uids = [65534]\npool = { max_size = 4, checkout_timeout = \"300ms\", leak_threshold = \"200ms\" }",
    ) + &target_toml(&db, "other", &s, "");
    let daemon = Daemon::start(&config, "socket_mode = \"0666\"").await;
    daemon.wait_ready().await;
    (db, dir, daemon)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_types_limits_and_no_leaks() {
    let (db, _dir, d) = setup().await;
    let mut seen = Seen(Vec::new());
    macro_rules! call {
        ($method:expr, $path:expr, $body:expr) => {{
            let (status, v, text) = d.call($method, $path, $body).await;
            seen.record($method, $path, status, &v);
            (status, v, text)
        }};
    }
    let mut texts = Vec::new();

    let (s, v, _) = call!("GET", "/v1/health", None);
    assert_eq!((s, v["status"].as_str()), (200, Some("ok")));
    let (s, v, _) = call!("GET", "/v1/ready", None);
    assert_eq!((s, v["ready"].as_bool()), (200, Some(true)));
    let (s, v, t) = call!("GET", "/v1/targets", None);
    assert_eq!(s, 200);
    assert_eq!(v["targets"].as_array().unwrap().len(), 2);
    texts.push(t);
    let (s, v, t) = call!("GET", "/v1/targets/app", None);
    assert_eq!(s, 200);
    assert_eq!(v["state"], "ready");
    assert_eq!(v["generation"]["id"], 1);
    assert_eq!(v["generation"]["username"], "app");
    assert_eq!(v["generation"]["tls"], true);
    texts.push(t);
    let (s, v, _) = call!("GET", "/v1/targets/nope", None);
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));
    // (Not recorded for the spec check: the path is not in the spec, by design.)
    let (s, v, _) = d.get("/v1/nowhere").await;
    assert_eq!((s, v["error"]["code"].as_str()), (404, Some("not_found")));

    // The type round trip: parameters bound by the statement's types, results mapped back.
    let sql = "SELECT $1::bool AS b, $2::int2 AS i2, $3::int4 AS i4, $4::int8 AS i8, $5::float4 AS f4, \
               $6::float8 AS f8, $7::numeric AS n, $8::text AS t, $9::varchar AS vc, $10::json AS j, \
               $11::jsonb AS jb, $12::uuid AS u, $13::date AS d, $14::time AS tm, $15::timestamp AS ts, \
               $16::timestamptz AS tz, $17::interval AS iv, $18::bytea AS by, $19::inet AS ip, \
               $20::int4[] AS ia, $21::text[] AS ta, $22::text AS nul, $23::cidr AS net, $24::int8[] AS ia2";
    let params = json!([
        true, 32767, 2147483647, 9007199254740993u64, 1.5, 2.25,
        "12345678901234567890.123456789", "text", "varchar", {"a": [1, 2]}, {"b": null},
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "2024-02-29", "13:14:15.5",
        "2024-02-29T13:14:15.123456", "2024-02-29T13:14:15Z", "P1Y2M3DT4H5M6S", "AAEC/w==",
        "192.168.0.1", [1, null, 3], ["a", "b\"c"], null, "10.0.0.0/8", [[1, 2], [3, 4]]
    ]);
    let (s, v, t) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": sql, "params": params}))
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["rows"][0],
        json!([
            true, 32767, 2147483647, 9007199254740993u64, 1.5, 2.25,
            "12345678901234567890.123456789", "text", "varchar", {"a": [1, 2]}, {"b": null},
            "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "2024-02-29", "13:14:15.5",
            "2024-02-29T13:14:15.123456", "2024-02-29T13:14:15Z", "P1Y2M3DT4H5M6S", "AAEC/w==",
            "192.168.0.1", [1, null, 3], ["a", "b\"c"], null, "10.0.0.0/8", [[1, 2], [3, 4]]
        ])
    );
    assert_eq!(v["columns"][6], json!({"name": "n", "type": "numeric"}));
    assert_eq!(v["row_count"], 1);
    assert_eq!(v["command"], "SELECT");
    texts.push(t);

    // Rows as objects; DML counts; SQL errors carry the SQLSTATE.
    let (s, v, _) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": "SELECT 1 AS one, 'x' AS two", "row_format": "object"}))
    );
    assert_eq!((s, &v["rows"][0]), (200, &json!({"one": 1, "two": "x"})));
    db.admin()
        .await
        .batch_execute("CREATE TABLE t (id int primary key, v text); GRANT ALL ON t TO app")
        .await
        .unwrap();
    let (s, v, _) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": "INSERT INTO t SELECT g, 'v' FROM generate_series(1, 5) g"}))
    );
    assert_eq!(
        (s, &v["row_count"], &v["command"]),
        (200, &json!(5), &json!("INSERT"))
    );
    let (s, v, _) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": "SELECT * FROM missing_table"}))
    );
    assert_eq!(
        (
            s,
            v["error"]["code"].as_str(),
            v["error"]["sqlstate"].as_str()
        ),
        (400, Some("sql_error"), Some("42P01"))
    );

    // Bad requests name what is wrong.
    let (s, v, _) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": "SELECT $1::int4 + $2::int4", "params": [1, "two"]}))
    );
    assert_eq!(s, 400);
    assert_eq!(
        v["error"]["message"],
        "parameter $2 is int4; expected an integer, got a string"
    );
    let (s, v, _) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": "SELECT 1::money AS price"}))
    );
    assert_eq!(s, 400);
    assert_eq!(v["error"]["message"], "column \"price\" has type money, which has no JSON mapping; cast it in the query, e.g. \"price\"::text");
    let (s, v, _) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sqll": "SELECT 1"}))
    );
    assert_eq!(s, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `sqll`"),
        "{v}"
    );
    let (s, _, _) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": "SELECT $1::int4", "params": []}))
    );
    assert_eq!(s, 400);

    // A batch is all or nothing.
    let batch = json!({"statements": [
        {"sql": "INSERT INTO t VALUES (100, 'new')"},
        {"sql": "INSERT INTO t VALUES (1, 'duplicate')"}
    ]});
    let (s, v, _) = call!("POST", "/v1/targets/app/batch", Some(batch));
    assert_eq!((s, v["error"]["sqlstate"].as_str()), (400, Some("23505")));
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("statement 1:"),
        "{v}"
    );
    let (_, v, _) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": "SELECT count(*) FROM t WHERE id = 100"}))
    );
    assert_eq!(v["rows"][0][0], 0, "the first insert was rolled back");
    let (s, v, _) = call!(
        "POST",
        "/v1/targets/app/batch",
        Some(json!({"statements": [
            {"sql": "INSERT INTO t VALUES (100, 'new')"}, {"sql": "SELECT v FROM t WHERE id = $1", "params": [100]}
        ]}))
    );
    assert_eq!((s, &v["results"][1]["rows"][0][0]), (200, &json!("new")));

    // Limits.
    let big = "x".repeat(1 << 20);
    let (s, v, _) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": "SELECT $1::text", "params": [big]}))
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let (s, v, _) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": "SELECT generate_series(1, 100)", "max_rows": 10}))
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let started = Instant::now();
    let (s, v, _) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": "SELECT pg_sleep(5)", "timeout_ms": 200}))
    );
    assert_eq!((s, v["error"]["code"].as_str()), (504, Some("timeout")));
    assert!(started.elapsed() < Duration::from_secs(2));
    // The cancelled statement left the connection usable.
    let (s, _, _) = call!(
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": "SELECT 1"}))
    );
    assert_eq!(s, 200);

    // Pool exhaustion: four long statements hold the four connections.
    let holders: Vec<_> = (0..4)
        .map(|_| {
            let socket = d.socket_path().to_path_buf();
            tokio::spawn(async move {
                credswap::api::client::request(
                    &socket,
                    "POST",
                    "/v1/targets/app/query",
                    Some(json!({"sql": "SELECT pg_sleep(1.5)"}).to_string()),
                    Duration::from_secs(10),
                )
                .await
                .unwrap()
                .status
            })
        })
        .collect();
    db.wait_running("SELECT pg_sleep(1.5)", 4).await;
    let started = Instant::now();
    let r = credswap::api::client::request(
        d.socket_path(),
        "POST",
        "/v1/targets/app/query",
        Some(json!({"sql": "SELECT 1"}).to_string()),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (r.status, v["error"]["code"].as_str()),
        (503, Some("pool_exhausted"))
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered in {:?}",
        started.elapsed()
    );
    seen.record("POST", "/v1/targets/app/query", r.status, &v);
    for h in holders {
        assert_eq!(h.await.unwrap(), 200);
    }
    // Those connections were held past leak_threshold (200 ms): logged and counted.
    let r = d.metrics().await;
    let leaks: f64 = r
        .lines()
        .find_map(|l| l.strip_prefix("credswap_connection_leaks{target=\"app\"} "))
        .and_then(|v| v.trim().parse().ok())
        .expect("the leak gauge is exported");
    assert!(leaks >= 4.0, "{leaks} leaks counted");
    assert!(d
        .log()
        .contains("a connection was held longer than leak_threshold"));

    // Events and metrics.
    let (s, v, _) = call!(
        "POST",
        "/v1/targets/app/rotate",
        Some(json!({"force": true, "wait": true}))
    );
    assert_eq!(
        (s, v["result"].as_str(), v["generation"].as_u64()),
        (200, Some("swapped"), Some(2))
    );
    let (s, v, _) = call!("POST", "/v1/targets/app/rotate", Some(json!({})));
    assert_eq!((s, v["accepted"].as_bool()), (202, Some(true)));
    let metrics = d.metrics().await;
    for needle in [
        "credswap_rotations_total{target=\"app\",trigger=\"api\",result=\"swapped\"} 1",
        "credswap_generation{target=\"app\"} 2",
        "credswap_queries_total{target=\"app\",result=\"ok\"}",
        "credswap_checkout_timeouts_total{target=\"app\"} 1",
        "credswap_pool_max_connections{target=\"app\"} 4",
        "credswap_breaker_state{target=\"app\",state=\"closed\"} 1",
        "credswap_rotation_step_seconds_bucket{",
        "credswap_secret_fetches_total{target=\"app\",source=\"file\",result=\"ok\"}",
    ] {
        assert!(
            metrics.contains(needle),
            "metrics lack {needle}:\n{metrics}"
        );
    }
    texts.push(metrics);

    // No response, metric or log line holds the password.
    for t in &texts {
        support::assert_no_canary("API response", t);
    }
    support::assert_no_canary("daemon log", &d.log());

    // Every response seen matches the OpenAPI spec.
    let file = d.dir.path().join("responses.json");
    std::fs::write(&file, serde_json::to_string(&seen.0).unwrap()).unwrap();
    support::openapi::check(&file);
}

#[tokio::test]
async fn peers_and_admins() {
    let (_db, _dir, d) = setup().await;
    // Run the CLI as `nobody` (uid 65534): allowed on app, not on other, not an admin.
    let as_nobody = |args: &[&str]| {
        let out = std::process::Command::new("runuser")
            .args(["-u", "nobody", "--"])
            .arg(support::daemon::bin())
            .arg("--socket")
            .arg(d.socket_path())
            .args(args)
            .output()
            .expect("runuser runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = as_nobody(&["query", "app", "SELECT current_user"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("app"), "{out}");
    let (code, _, err) = as_nobody(&["query", "other", "SELECT 1"]);
    assert_eq!(code, 77, "{err}");
    assert!(
        err.contains("uid 65534 may not use target \"other\""),
        "{err}"
    );
    let (code, _, err) = as_nobody(&["rotate", "app"]);
    assert_eq!(code, 77, "{err}");
    assert!(
        err.contains("uid 65534 may not rotate: that takes an admin (api.admin_uids)"),
        "{err}"
    );
    // The refusal is logged with the peer's uid and pid.
    assert!(
        d.log()
            .contains("refused: peer not allowed to use the target")
            && d.log().contains("uid=65534"),
        "{}",
        d.log()
    );
    // nobody sees only its own target.
    let (code, out, _) = as_nobody(&["status", "--json"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["targets"].as_array().unwrap().len(), 1);

    // A target that does not exist looks like one nobody may not use: no names are given away.
    let (code, _, missing) = as_nobody(&["query", "nope", "SELECT 1"]);
    assert_eq!(code, 77, "{missing}");
    let (_, _, forbidden) = as_nobody(&["query", "other", "SELECT 1"]);
    assert_eq!(
        missing.replace("\"nope\"", "\"?\""),
        forbidden.replace("\"other\"", "\"?\"")
    );
    assert!(
        !forbidden.contains("65534]") && !forbidden.contains("[0]"),
        "no allow-lists shown: {forbidden}"
    );

    // /v1/ready lists only nobody's target; /metrics is for admins and metrics_uids.
    let curl = |path: &str| {
        let out = std::process::Command::new("runuser")
            .args([
                "-u",
                "nobody",
                "--",
                "curl",
                "-s",
                "-w",
                "\n%{http_code}",
                "--unix-socket",
            ])
            .arg(d.socket_path())
            .arg(format!("http://credswap{path}"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let ready = curl("/v1/ready");
    let (body, code) = ready.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{ready}");
    let v: Value = serde_json::from_str(body).unwrap();
    let names: Vec<&str> = v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["app"]);
    let metrics = curl("/metrics");
    assert!(metrics.ends_with("\n403"), "{metrics}");
    assert!(!metrics.contains("credswap_"), "{metrics}");
}

#[tokio::test]
async fn rate_limit_per_uid() {
    let db = Cluster::start_tls();
    db.create_role("app", "pw").await;
    let dir = tempfile::tempdir().unwrap();
    let s = secret(dir.path(), "app.json", "app", "pw");
    let d = Daemon::start(
        &target_toml(&db, "app", &s, ""),
        "rate_limit_per_second = 1.0\nrate_limit_burst = 3",
    )
    .await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        let (s, v, _) = d.get("/v1/targets/app").await;
        codes.push((s, v["error"]["code"].as_str().map(str::to_string)));
    }
    assert_eq!(codes[..3].iter().filter(|(s, _)| *s == 200).count(), 3);
    assert_eq!(codes[3], (429, Some("rate_limited".to_string())));
    let r = credswap::api::client::request(
        d.socket_path(),
        "GET",
        "/v1/targets/app",
        None,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_keep_working_through_rotations_via_the_socket() {
    let db = Cluster::start_tls();
    db.create_role("app", "pw-0").await;
    let dir = tempfile::tempdir().unwrap();
    let s = secret(dir.path(), "app.json", "app", "pw-0");
    let d = Daemon::start(&target_toml(&db, "app", &s, "pool = { max_size = 8 }"), "").await;
    d.wait_ready().await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let socket = d.socket_path().to_path_buf();
            let stop = stop.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, Vec::new());
                while !*stop.borrow() {
                    match credswap::api::client::request(
                        &socket,
                        "POST",
                        "/v1/targets/app/query",
                        Some(json!({"sql": "SELECT 1"}).to_string()),
                        Duration::from_secs(10),
                    )
                    .await
                    {
                        Ok(r) if r.status == 200 => ok += 1,
                        Ok(r) => failed.push(String::from_utf8_lossy(&r.body).into_owned()),
                        Err(e) => failed.push(e.to_string()),
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    for i in 1..=20 {
        let pw = format!("pw-{i}");
        db.set_password("app", &pw).await;
        secret(dir.path(), "app.json", "app", &pw);
        // The file watcher may notice the new file before this request: either way one swap.
        let (s, v, _) = d
            .call(
                "POST",
                "/v1/targets/app/rotate",
                Some(json!({"wait": true})),
            )
            .await;
        assert_eq!(s, 200, "{v}");
        assert!(
            matches!(v["result"].as_str(), Some("swapped" | "unchanged")),
            "{v}"
        );
    }
    let (_, v, _) = d.get("/v1/targets/app").await;
    assert_eq!(
        v["generation"]["id"], 21,
        "one new generation per password: {v}"
    );
    stop_tx.send_replace(true);
    let (mut ok, mut failed) = (0, Vec::new());
    for c in clients {
        let (o, f) = c.await.unwrap();
        ok += o;
        failed.extend(f);
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}\n{}",
        failed.len(),
        failed.first(),
        d.log()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(ok > 200, "{ok}");
}

/// `socket_group` and `socket_mode` are on the socket file before it appears, and an answer
/// larger than `max_response_bytes` is refused with a typed error, not truncated.
#[tokio::test]
async fn socket_group_and_response_size_limit() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let db = Cluster::start_tls();
    db.create_role("app", CANARY_PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let s = secret(dir.path(), "app.json", "app", CANARY_PASSWORD);
    let group =
        credswap::config::access::group_id("nogroup").expect("Debian has the group nogroup");
    let d = Daemon::start(
        &target_toml(&db, "app", &s, ""),
        "socket_mode = \"0660\"\nsocket_group = \"nogroup\"\nmax_response_bytes = 2048",
    )
    .await;
    d.wait_ready().await;
    let meta = std::fs::metadata(d.socket_path()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), group, "the socket belongs to nogroup");

    let (status, v, _) = d
        .query(
            "app",
            json!({"sql": "SELECT repeat('x', 100) FROM generate_series(1, 15)"}),
        )
        .await;
    assert_eq!(status, 200, "15 rows of ~100 bytes fit in 2048: {v}");
    let (status, v, _) = d
        .query(
            "app",
            json!({"sql": "SELECT repeat('x', 100) FROM generate_series(1, 30)"}),
        )
        .await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{v}"
    );
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("larger than 2048 bytes"), "{message}");
    // The connection went back to the pool in a usable state.
    let (status, _, _) = d.query("app", json!({"sql": "SELECT 1"})).await;
    assert_eq!(status, 200);
}

/// `allow_gids` matches a peer by its primary gid (from `SO_PEERCRED`) and by its supplementary
/// groups (read at accept, off the runtime); a peer in neither is refused.
#[tokio::test]
async fn group_allow_lists_match_primary_and_supplementary_groups() {
    let db = Cluster::start_tls();
    db.create_role("app", CANARY_PASSWORD).await;
    let dir = tempfile::tempdir().unwrap();
    let s = secret(dir.path(), "app.json", "app", CANARY_PASSWORD);
    let config = target_toml(&db, "primary", &s, "allow_gids = [4343]")
        + &target_toml(&db, "supplementary", &s, "allow_gids = [4444]")
        + &target_toml(&db, "neither", &s, "allow_gids = [4545]");
    let d = Daemon::start(&config, "socket_mode = \"0666\"").await;
    d.wait_ready().await;
    // uid 65534, primary gid 4343, supplementary group 4444.
    let query = |target: &str| {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=4343", "--groups=4444", "--"])
            .arg(support::daemon::bin())
            .arg("--socket")
            .arg(d.socket_path())
            .args(["query", target, "SELECT 1"])
            .output()
            .expect("setpriv runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(query("primary").0, 0, "{}", query("primary").1);
    assert_eq!(query("supplementary").0, 0, "{}", query("supplementary").1);
    let (code, err) = query("neither");
    assert_eq!(code, 77, "{err}");
}

/// Connections beyond `api.max_connections_per_uid` are answered 503 with the limit named and
/// closed; a freed place is usable again.
#[tokio::test]
async fn connections_per_uid_are_limited() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_db, _dir, d) = one_target("", "max_connections_per_uid = 2").await;
    // Two connections, each admitted (answered once) and kept open. Until the daemon has seen
    // the harness's own earlier connections close, their places may still be taken: retry.
    let mut held = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while held.len() < 2 {
        let mut c = tokio::net::UnixStream::connect(d.socket_path())
            .await
            .unwrap();
        c.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        c.read_exact(&mut head).await.unwrap();
        if &head == b"HTTP/1.1 200" {
            held.push(c);
        } else {
            assert!(std::time::Instant::now() < deadline, "never admitted");
            tokio::task::yield_now().await;
        }
    }
    let mut third = tokio::net::UnixStream::connect(d.socket_path())
        .await
        .unwrap();
    third
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), third.read_to_string(&mut answer))
        .await
        .expect("the refusal comes at once and the connection closes")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("too many connections from this peer: the limit is 2"),
        "{answer}"
    );
    drop(held.pop());
    // The freed place is taken by the next connection (the daemon notices the close first).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while d.get_health().await != Some(200) {
        assert!(std::time::Instant::now() < deadline, "no place freed");
        tokio::task::yield_now().await;
    }
}

/// A connection that sends only part of a request head, or nothing after its last answer, is
/// closed after `api.header_read_timeout`, freeing its descriptor.
#[tokio::test]
async fn unfinished_and_idle_connections_are_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_db, _dir, d) = one_target("", "header_read_timeout = \"1s\"").await;
    let mut partial = tokio::net::UnixStream::connect(d.socket_path())
        .await
        .unwrap();
    partial
        .write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut idle = tokio::net::UnixStream::connect(d.socket_path())
        .await
        .unwrap();
    idle.write_all(b"GET /v1/health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    for (what, conn) in [
        ("partial head", &mut partial),
        ("idle keep-alive", &mut idle),
    ] {
        let mut rest = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(15), conn.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "the {what} connection stayed open");
    }
}

/// Nothing one request does to its session reaches the next caller on the same pooled
/// connection (`max_size = 1`): settings, temporary tables, listens, transaction control, a
/// statement cancelled at its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_caller_gets_a_clean_session() {
    let (_db, _dir, d) = one_target("pool = { max_size = 1, min_idle = 1 }", "").await;
    let one = |sql: &str| json!({ "sql": sql });
    let value = |v: &Value| v["rows"][0][0].clone();

    // A plain statement keeps its connection: no reconnect, no reset.
    let first = backend_pid(&d).await;
    assert_eq!(
        backend_pid(&d).await,
        first,
        "plain statements reuse the session"
    );

    let default_path = value(&d.query("app", one("SHOW search_path")).await.1);
    for change in [
        "SET search_path TO other",
        "SELECT set_config('search_path', 'other', false)",
    ] {
        assert_eq!(d.query("app", one(change)).await.0, 200, "{change}");
        let (_, v, _) = d.query("app", one("SHOW search_path")).await;
        assert_eq!(value(&v), default_path, "after {change}");
    }
    assert_eq!(
        d.query("app", one("CREATE TEMP TABLE leftover (x int)"))
            .await
            .0,
        200
    );
    let (_, v, _) = d
        .query("app", one("SELECT to_regclass('pg_temp.leftover') IS NULL"))
        .await;
    assert_eq!(value(&v), json!(true), "no temporary table left");
    assert_eq!(d.query("app", one("LISTEN leftover")).await.0, 200);
    let (_, v, _) = d
        .query(
            "app",
            one("SELECT count(*)::int FROM pg_listening_channels()"),
        )
        .await;
    assert_eq!(value(&v), json!(0), "no listen left");

    // Transaction control is refused, and says where to go instead.
    let (code, v, _) = d.query("app", one("BEGIN")).await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("/batch"),
        "{v}"
    );
    let (code, v, _) = d
        .call(
            "POST",
            "/v1/targets/app/batch",
            Some(json!({"statements": [{"sql": "SELECT 1"}, {"sql": "COMMIT"}]})),
        )
        .await;
    assert_eq!(code, 400, "{v}");
    // Had BEGIN run, an error would now abort the open transaction and the next statement
    // would fail with 25P02.
    let (code, v, _) = d.query("app", one("SELECT 1/0")).await;
    assert_eq!(
        (code, v["error"]["sqlstate"].as_str()),
        (400, Some("22012"))
    );
    let (code, v, _) = d.query("app", one("SELECT 1")).await;
    assert_eq!(code, 200, "not inside a transaction: {v}");

    // A statement cancelled at its timeout: its connection is not handed out again.
    let before = backend_pid(&d).await;
    let (code, _, _) = d
        .query(
            "app",
            json!({"sql": "SELECT pg_sleep(5)", "timeout_ms": 200}),
        )
        .await;
    assert_eq!(code, 504);
    assert_ne!(
        backend_pid(&d).await,
        before,
        "a new session after the cancelled one"
    );
}

async fn backend_pid(d: &Daemon) -> Value {
    d.query("app", json!({"sql": "SELECT pg_backend_pid()"}))
        .await
        .1["rows"][0][0]
        .clone()
}

/// A batch is bounded as a whole: at most `api.max_batch_statements` statements, `max_rows` and
/// `max_response_bytes` for all its statements together, one deadline for all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_bounded_as_a_whole() {
    let (_db, _dir, d) = one_target(
        "",
        "max_batch_statements = 3\nmax_rows = 10\nmax_response_bytes = 4096",
    )
    .await;
    let batch = |statements: &[&str], timeout_ms: u64| {
        let body = json!({
            "statements": statements.iter().map(|s| json!({"sql": s})).collect::<Vec<_>>(),
            "timeout_ms": timeout_ms,
        });
        d.call("POST", "/v1/targets/app/batch", Some(body))
    };
    let refused = |v: &Value, status: u16, s: u16, words: &str| {
        assert_eq!(s, status, "{v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{message}");
    };
    let (s, v, _) = batch(&["SELECT 1"; 4], 10_000).await;
    refused(
        &v,
        413,
        s,
        "at most 3 are accepted (api.max_batch_statements)",
    );

    // Each statement alone fits; together they do not.
    let big = "SELECT repeat('x', 1500)";
    let (s, v, _) = d.query("app", json!({ "sql": big })).await;
    assert_eq!(s, 200, "{v}");
    let (s, v, _) = batch(&[big, big, big], 10_000).await;
    refused(&v, 413, s, "larger than 4096 bytes");
    refused(&v, 413, s, "all its statements together");

    let six = "SELECT g FROM generate_series(1, 6) g";
    let (s, v, _) = d.query("app", json!({ "sql": six })).await;
    assert_eq!(s, 200, "{v}");
    let (s, v, _) = batch(&[six, six], 10_000).await;
    refused(&v, 413, s, "more than 10 rows");

    // Three statements of 0.6 s each, 1.5 s for the batch: each alone would finish in time.
    let nap = "SELECT pg_sleep(0.6)";
    let (s, v, _) = batch(&[nap, nap, nap], 1500).await;
    refused(&v, 504, s, "did not finish within 1500 ms");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("statement 2:"),
        "{v}"
    );
    let (s, v, _) = batch(&[nap, nap], 1500).await;
    assert_eq!(s, 200, "{v}");
}

/// Answers share one daemon-wide budget (`api.max_response_memory`): while one request holds
/// most of it, another large answer is refused at once with 503 naming the limit; once the
/// first has been answered, the same request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_memory_is_shared_by_all_requests() {
    let (db, _dir, d) = one_target(
        "",
        "max_response_bytes = 40000\nmax_response_memory = 81920",
    )
    .await;
    let holder = {
        let socket = d.socket_path().to_path_buf();
        let body = json!({"statements": [
            {"sql": "SELECT repeat('x', 30000)"},
            {"sql": "SELECT pg_sleep(1.5)"},
        ]});
        tokio::spawn(async move {
            credswap::api::client::request(
                &socket,
                "POST",
                "/v1/targets/app/batch",
                Some(body.to_string()),
                Duration::from_secs(30),
            )
            .await
            .unwrap()
        })
    };
    db.wait_running("SELECT pg_sleep(1.5)", 1).await;
    let large = json!({"sql": "SELECT repeat('y', 30000)"});
    let (s, v, _) = d.query("app", large.clone()).await;
    assert_eq!(s, 503, "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("api.max_response_memory, 81920 bytes"),
        "{message}"
    );
    // A small answer still fits beside the held one.
    let (s, v, _) = d.query("app", json!({"sql": "SELECT 1"})).await;
    assert_eq!(s, 200, "{v}");
    let held = holder.await.unwrap();
    assert_eq!(held.status, 200, "{}", String::from_utf8_lossy(&held.body));
    let (s, v, _) = d.query("app", large).await;
    assert_eq!(s, 200, "{v}");
}

/// A peer that may not use a target is answered 403 before its request body is read: a
/// request head announcing a large body that never comes is refused at once.
#[tokio::test]
async fn refused_peers_are_answered_before_their_body_is_read() {
    let (_db, _dir, d) = one_target("allow_uids = [4242]", "socket_mode = \"0666\"").await;
    let script = r#"
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(5)
s.connect(sys.argv[1])
s.sendall(b"POST /v1/targets/app/query HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000000\r\n\r\n")
try:
    print(s.recv(4096).decode().split("\r\n")[0])
except socket.timeout:
    print("no answer within 5 s")
"#;
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["python3", "-c", script])
        .arg(d.socket_path())
        .output()
        .expect("setpriv and python3 run");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert_eq!(answer.trim(), "HTTP/1.1 403 Forbidden", "{out:?}");
}

/// A query's answer is sent with its length (not chunked): it is encoded whole before it is
/// sent, and simple HTTP clients (the load generator's) read by `content-length`.
#[tokio::test]
async fn answers_carry_their_length() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_db, _dir, d) = one_target("", "").await;
    let body = r#"{"sql": "SELECT 1 AS one"}"#;
    let mut c = tokio::net::UnixStream::connect(d.socket_path())
        .await
        .unwrap();
    c.write_all(
        format!(
            "POST /v1/targets/app/query HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    let (head, payload) = answer.split_once("\r\n\r\n").expect("a head and a body");
    let head = head.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}", payload.len())),
        "{head}\n{payload}"
    );
}
