//! Reloading the configuration: SIGHUP and `POST /v1/reload`.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::daemon::Daemon;
use support::pg::{pki, Cluster};

fn target(db: &Cluster, name: &str, secret: &str, extra: &str) -> String {
    format!(
        "[[target]]\nname = \"{name}\"\nurl = \"{}\"\ndrain_timeout = \"2s\"\n{extra}\nsource = {{ kind = \"file\", path = \"{secret}\" }}\n",
        db.url("localhost", &format!("sslmode=verify-full&sslrootcert={}", pki().ca_cert().display()))
    )
}

fn write_config(d: &Daemon, body: &str) {
    let text = format!("[api]\nsocket = \"{}\"\n{body}", d.socket_path().display());
    std::fs::write(&d.config, text).unwrap();
}

fn hup(d: &Daemon) {
    let pid = rustix::process::Pid::from_raw(d.pid()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
}

async fn targets(d: &Daemon) -> Vec<Value> {
    d.get("/v1/targets").await.1["targets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn names(d: &Daemon) -> Vec<String> {
    targets(d)
        .await
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_api_reload() {
    let db = Cluster::start_tls();
    db.create_role("app", "pw").await;
    let dir = tempfile::tempdir().unwrap();
    let secret = support::credentials_file(dir.path(), "app.json", "app", "pw");
    let s = secret.display().to_string();
    let v1 = target(&db, "a", &s, "")
        + &target(&db, "b", &s, "")
        + &target(&db, "c", &s, "pool = { max_size = 5 }");
    let d = Daemon::start(&v1, "").await;
    d.wait_ready().await;
    let before = targets(&d).await;
    let a_built = before[0]["generation"]["built_at"].clone();
    let c_built = before[2]["generation"]["built_at"].clone();

    // a unchanged, b removed, c changed, d added.
    let v2 = target(&db, "a", &s, "")
        + &target(&db, "c", &s, "pool = { max_size = 7 }")
        + &target(&db, "d", &s, "");
    write_config(&d, &v2);
    hup(&d);
    // The new target is listed as soon as the reload registers it, and has a generation once
    // its first pool is built: both are waited for.
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let now = targets(&d).await;
        let listed: Vec<&str> = now.iter().filter_map(|t| t["name"].as_str()).collect();
        if listed == ["a", "c", "d"] && now[2]["generation"]["id"].is_u64() {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "reload did not apply: {listed:?}\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        after[0]["generation"]["built_at"], a_built,
        "a is untouched"
    );
    assert_eq!(after[1]["pool"]["max_size"], 7);
    assert_ne!(after[1]["generation"]["built_at"], c_built, "c was rebuilt");
    assert!(after[2]["generation"]["id"].is_u64(), "d started");
    let (code, v, _) = d.query("c", json!({"sql": "SELECT 1 AS one"})).await;
    assert_eq!((code, &v["rows"]), (200, &json!([[1]])));
    // b drained and stopped: none of its sessions remain.
    let admin = db.admin().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'credswap/b/%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "b's sessions remain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An invalid file is refused; everything keeps running.
    write_config(&d, "[[target]]\nname = \"BROKEN\"\n");
    hup(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d
        .log()
        .contains("configuration refused, the running one stays")
    {
        assert!(Instant::now() < deadline, "no refusal logged:\n{}", d.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(names(&d).await, ["a", "c", "d"]);
    let (code, v, _) = d.call("POST", "/v1/reload", None).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("target[0]: missing field `url`"),
        "{v}"
    );

    // Through the API, with the report.
    write_config(&d, &(v2 + &target(&db, "e", &s, "")));
    let (code, v, _) = d.call("POST", "/v1/reload", None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["added"], json!(["e"]));
    assert_eq!(v["unchanged"], json!(["a", "c", "d"]));
    assert_eq!(names(&d).await, ["a", "c", "d", "e"]);
}

/// An allow-list edit is applied in place: the generation stays (no fetch, no rotation, no
/// drain), the next request sees it, and so does an event stream opened before the edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_change_applies_in_place() {
    let db = Cluster::start_tls();
    db.create_role("app", "pw").await;
    let dir = tempfile::tempdir().unwrap();
    let secret = support::credentials_file(dir.path(), "app.json", "app", "pw");
    let s = secret.display().to_string();
    // The test's uid is not an admin here, so only the target's allow-list decides.
    let admin = "admin_uids = [4242]";
    let me = rustix::process::getuid().as_raw();
    let d = Daemon::start(&target(&db, "a", &s, "allow_uids = [4242]"), admin).await;
    d.wait_ready().await;
    assert_eq!(d.get("/v1/targets/a").await.0, 403, "not allowed yet");

    let (subscribed, is_subscribed) = tokio::sync::oneshot::channel();
    let (seen, rotation_seen) = tokio::sync::oneshot::channel();
    let socket = d.socket_path().to_path_buf();
    let stream = tokio::spawn(async move {
        let mut seen = Some(seen);
        let _ = credswap::api::client::events(&socket, "/v1/events", subscribed, |name, data| {
            if name == "rotation_finished" {
                if let Some(tx) = seen.take() {
                    let _ = tx.send(data.to_string());
                }
                return false;
            }
            true
        })
        .await;
    });
    tokio::time::timeout(Duration::from_secs(5), is_subscribed)
        .await
        .expect("subscribed")
        .expect("the stream started");

    write_config(
        &d,
        &target(&db, "a", &s, &format!("allow_uids = [4242, {me}]")),
    );
    hup(&d);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        let (code, v, _) = d.get("/v1/targets/a").await;
        if code == 200 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the new allow-list never applied:\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        status["generation"]["id"], 1,
        "the same generation: {status}"
    );
    assert_eq!(
        status["last_rotation"]["rotation"], 1,
        "no rotation (so no fetch) since start-up: {status}"
    );
    let (code, v, _) = d.query("a", json!({"sql": "SELECT 1 AS one"})).await;
    assert_eq!((code, &v["rows"]), (200, &json!([[1]])));

    // The stream opened while the peer was refused now carries the target's events.
    db.set_password("app", "pw2").await;
    support::credentials_file(dir.path(), "app.json", "app", "pw2");
    let data = tokio::time::timeout(Duration::from_secs(15), rotation_seen)
        .await
        .expect("the open stream never saw the rotation")
        .unwrap();
    let event: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(
        (event["target"].as_str(), event["result"].as_str()),
        (Some("a"), Some("swapped"))
    );
    stream.abort();
}
