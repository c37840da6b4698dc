//! Vault/OpenBao sources against a real OpenBao dev server (and a real TLS PostgreSQL for the
//! database engine).

mod support;

use std::time::{Duration, SystemTime};

use credswap::config::PoolSettings;
use credswap::dsn::ConnInfo;
use credswap::pool::{BuildOptions, VerifiedPool};
use credswap::secret::vault::{VaultAuth, VaultEngine, VaultSource, VaultSourceConfig};
use credswap::secret::{lease_refresh_at, Credentials, SecretError, SecretSource, Stage};
use secrecy::ExposeSecret;
use serde_json::json;
use support::pg::{pki, Cluster};
use support::servers::{Bao, BAO_ROOT_TOKEN};
use support::CANARY_PASSWORD;

use support::write_private as secret_file;

fn cfg(bao: &Bao, auth: VaultAuth, engine: VaultEngine, name: &str) -> VaultSourceConfig {
    VaultSourceConfig {
        address: bao.address(),
        ca_file: None,
        namespace: None,
        auth,
        engine,
        mount: if engine == VaultEngine::Kv1 {
            Some("kv1".into())
        } else {
            None
        },
        path: (!engine.uses_role()).then(|| name.to_string()),
        role: engine.uses_role().then(|| name.to_string()),
        username_key: "username".into(),
        password_key: "password".into(),
        revoke_on_drain: true,
        timeout: Duration::from_secs(5),
    }
}

const READ_APP: &str = r#"
path "secret/data/app/*" { capabilities = ["read"] }
path "kv1/app/*" { capabilities = ["read"] }
path "database/creds/*" { capabilities = ["read"] }
path "database/static-creds/*" { capabilities = ["read"] }
path "sys/leases/revoke" { capabilities = ["update"] }
"#;

#[tokio::test]
async fn kv2_and_kv1_with_a_token_file() {
    support::logs::capture();
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    bao.policy("read-app", READ_APP).await;
    let token = bao.token("read-app", "1h", true).await;
    let auth = VaultAuth::Token {
        token_file: Some(secret_file(dir.path(), "token", &token)),
    };

    let v1 = bao
        .kv2_put(
            "app/rw",
            json!({"username": "app", "password": CANARY_PASSWORD}),
        )
        .await;
    let src = VaultSource::new(&cfg(&bao, auth.clone(), VaultEngine::Kv2, "app/rw"))
        .await
        .unwrap();
    let c = src.fetch(Stage::Current).await.unwrap();
    assert_eq!(c.username, "app");
    assert_eq!(c.password.expose_secret(), CANARY_PASSWORD);
    assert_eq!(c.version, format!("kv2:{v1}"));
    let v2 = bao
        .kv2_put("app/rw", json!({"username": "app", "password": "second"}))
        .await;
    let c2 = src.fetch(Stage::Current).await.unwrap();
    assert_eq!(c2.version, format!("kv2:{v2}"));
    assert_eq!(c2.password.expose_secret(), "second");
    assert!(matches!(
        src.fetch(Stage::Pending).await,
        Err(SecretError::Unsupported { .. })
    ));

    bao.enable_kv1().await;
    bao.call(
        "POST",
        "kv1/app/ro",
        Some(json!({"username": "ro", "password": "one"})),
    )
    .await;
    let kv1 = VaultSource::new(&cfg(&bao, auth.clone(), VaultEngine::Kv1, "app/ro"))
        .await
        .unwrap();
    let a = kv1.fetch(Stage::Current).await.unwrap();
    assert_eq!(a.username, "ro");
    bao.call(
        "POST",
        "kv1/app/ro",
        Some(json!({"username": "ro", "password": "two"})),
    )
    .await;
    let b = kv1.fetch(Stage::Current).await.unwrap();
    assert_ne!(a.version, b.version);
    assert_eq!(b.password.expose_secret(), "two");

    // A path the policy does not cover: access denied, and no pointless re-login.
    bao.kv2_put("other/x", json!({"username": "u", "password": "p"}))
        .await;
    let denied = VaultSource::new(&cfg(&bao, auth, VaultEngine::Kv2, "other/x"))
        .await
        .unwrap();
    let err = denied.fetch(Stage::Current).await.unwrap_err();
    assert!(matches!(err, SecretError::AccessDenied { .. }), "{err:?}");
    assert_eq!(denied.session().stats().borrow().logins, 1);

    // Missing key in the secret.
    bao.kv2_put("app/bad", json!({"user": "u", "password": CANARY_PASSWORD}))
        .await;
    let bad = VaultSource::new(&cfg(
        &bao,
        VaultAuth::Token {
            token_file: Some(secret_file(dir.path(), "t2", &token)),
        },
        VaultEngine::Kv2,
        "app/bad",
    ))
    .await
    .unwrap();
    let err = bad.fetch(Stage::Current).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "vault secret/app/bad is malformed: missing key \"username\""
    );

    let logs = support::logs::captured();
    support::assert_no_canary("logs", &logs);
    support::assert_no_canary("Debug", &format!("{c:?} {src:?}"));
    assert!(
        !logs.contains(&token) && !logs.contains(BAO_ROOT_TOKEN),
        "a token was logged"
    );
    assert!(!format!("{src:?} {err:?}").contains(&token));
}

#[tokio::test]
async fn approle_login_renewal_and_relogin() {
    support::logs::capture();
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    bao.policy("read-app", READ_APP).await;
    // Tokens live 3 s: renewal must happen at about 2 s.
    let (role_id, secret_id) = bao.approle("app", "read-app", "3s").await;
    bao.kv2_put(
        "app/rw",
        json!({"username": "app", "password": CANARY_PASSWORD}),
    )
    .await;
    let auth = VaultAuth::Approle {
        role_id_file: secret_file(dir.path(), "role_id", &role_id),
        secret_id_file: secret_file(dir.path(), "secret_id", &secret_id),
        secret_id_wrapped: false,
        mount: "approle".into(),
    };
    let src = VaultSource::new(&cfg(&bao, auth, VaultEngine::Kv2, "app/rw"))
        .await
        .unwrap();
    let mut stats = src.session().stats();
    assert_eq!(stats.borrow().logins, 1);

    // Renewal observed: wait for the counter, bounded.
    tokio::time::timeout(Duration::from_secs(5), stats.wait_for(|s| s.renewals >= 2))
        .await
        .expect("the token was renewed twice within 5 s")
        .unwrap();
    // The original 3 s TTL has long passed; the renewed token still works.
    src.fetch(Stage::Current).await.unwrap();

    // Revoke the token behind its back: the next fetch logs in again and succeeds.
    let token = src.session().client().token().expose_secret().to_string();
    bao.call("POST", "auth/token/revoke", Some(json!({ "token": token })))
        .await;
    let c = src.fetch(Stage::Current).await.unwrap();
    assert_eq!(c.username, "app");
    assert!(stats.borrow().logins >= 2, "{:?}", *stats.borrow());

    let logs = support::logs::captured();
    for secret in [
        CANARY_PASSWORD,
        secret_id.as_str(),
        token.as_str(),
        BAO_ROOT_TOKEN,
    ] {
        assert!(!logs.contains(secret), "a secret was logged");
    }
}

#[tokio::test]
async fn approle_with_a_wrapped_secret_id() {
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    bao.policy("read-app", READ_APP).await;
    let (role_id, _) = bao.approle("app", "read-app", "1h").await;
    let wrapped = bao
        .http_wrapped("POST", "auth/approle/role/app/secret-id", "60s")
        .await;
    bao.kv2_put("app/rw", json!({"username": "app", "password": "p"}))
        .await;
    let auth = VaultAuth::Approle {
        role_id_file: secret_file(dir.path(), "role_id", &role_id),
        secret_id_file: secret_file(dir.path(), "wrapped", &wrapped),
        secret_id_wrapped: true,
        mount: "approle".into(),
    };
    let src = VaultSource::new(&cfg(&bao, auth, VaultEngine::Kv2, "app/rw"))
        .await
        .unwrap();
    assert_eq!(src.fetch(Stage::Current).await.unwrap().username, "app");
    // The wrapping token was used once; a re-login reuses the unwrapped secret_id.
    src.session().login().await.unwrap();
    assert_eq!(src.session().stats().borrow().logins, 2);
}

#[tokio::test]
async fn wrong_credentials_for_the_store() {
    let bao = Bao::start();
    let dir = tempfile::tempdir().unwrap();
    let auth = VaultAuth::Token {
        token_file: Some(secret_file(dir.path(), "token", "not-a-real-token")),
    };
    let err = VaultSource::new(&cfg(&bao, auth, VaultEngine::Kv2, "app/rw"))
        .await
        .unwrap_err();
    assert!(matches!(err, SecretError::StoreAuth { .. }), "{err:?}");
    assert!(err.retryable());
    assert!(!err.to_string().contains("not-a-real-token"));
}

#[tokio::test]
async fn a_namespace_is_sent_with_every_request() {
    let bao = Bao::start();
    bao.call("POST", "sys/namespaces/team", None).await;
    bao.call(
        "POST",
        "team/sys/mounts/secret",
        Some(json!({"type": "kv-v2"})),
    )
    .await;
    bao.call(
        "POST",
        "team/secret/data/app/db",
        Some(json!({"data": {"username": "team_app", "password": CANARY_PASSWORD}})),
    )
    .await;
    // The same path outside the namespace holds another user: the header decides.
    bao.kv2_put(
        "app/db",
        json!({"username": "root_ns_app", "password": "x"}),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let auth = VaultAuth::Token {
        token_file: Some(secret_file(dir.path(), "token", BAO_ROOT_TOKEN)),
    };
    let mut c = cfg(&bao, auth, VaultEngine::Kv2, "app/db");
    c.namespace = Some("team".into());
    let src = VaultSource::new(&c).await.unwrap();
    let creds = src.fetch(Stage::Current).await.unwrap();
    assert_eq!(creds.username, "team_app");
    assert_eq!(creds.password.expose_secret(), CANARY_PASSWORD);

    // A namespace that does not exist fails (at login or at the read), never falls back.
    c.namespace = Some("nowhere".into());
    let err = match VaultSource::new(&c).await {
        Ok(src) => src.fetch(Stage::Current).await.map(|_| ()).unwrap_err(),
        Err(e) => e,
    };
    assert!(!err.to_string().contains(CANARY_PASSWORD), "{err}");
}

/// Mounts the database engine against `db` (TLS, verify-full) with a dynamic role `dyn`
/// (TTL `ttl`) and a static role `st` for the existing user `app_static`.
async fn database_engine(bao: &Bao, db: &Cluster, ttl: &str) {
    bao.database_engine(db, ttl, &[]).await;
    db.create_role("app_static", "initial-static-pw").await;
    bao.call(
        "POST",
        "database/static-roles/st",
        Some(json!({"db_name": "pg", "username": "app_static", "rotation_period": "1h"})),
    )
    .await;
}

async fn logs_in(db: &Cluster, c: &Credentials) -> Result<bool, String> {
    let conn = ConnInfo::parse(&db.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            pki().ca_cert().display()
        ),
    ))
    .unwrap();
    let settings = PoolSettings {
        min_idle: 0,
        ..PoolSettings::default()
    };
    VerifiedPool::build(&conn, &settings, c, BuildOptions::named("t"))
        .await
        .map(|p| p.tls_in_use())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn database_engine_dynamic_and_static() {
    support::logs::capture();
    let db = Cluster::start_tls();
    let bao = Bao::start();
    database_engine(&bao, &db, "15s").await;
    let token = bao.token("read-app", "1h", true).await;
    bao.policy("read-app", READ_APP).await;
    let dir = tempfile::tempdir().unwrap();
    let auth = VaultAuth::Token {
        token_file: Some(secret_file(dir.path(), "token", &token)),
    };

    // Dynamic: a new user with a 15 s lease that really logs in over TLS.
    let dynamic = VaultSource::new(&cfg(&bao, auth.clone(), VaultEngine::Database, "dyn"))
        .await
        .unwrap();
    let first = dynamic.fetch(Stage::Current).await.unwrap();
    let lease = first
        .lease
        .clone()
        .expect("dynamic credentials carry a lease");
    assert_eq!(lease.ttl, Duration::from_secs(15));
    assert_eq!(first.version, lease.id);
    assert!(
        logs_in(&db, &first).await.unwrap(),
        "the session is encrypted"
    );
    // The next fetch is scheduled at 85-95 % of the TTL, before expiry.
    for _ in 0..50 {
        let at = lease_refresh_at(&lease);
        let after = at.duration_since(lease.issued_at).unwrap();
        assert!(
            after >= Duration::from_millis(12_750) && after <= Duration::from_millis(14_250),
            "{after:?}"
        );
        assert!(at < lease.expires_at());
    }
    let second = dynamic.fetch(Stage::Current).await.unwrap();
    assert_ne!(second.username, first.username);
    assert_ne!(second.version, first.version);

    // Revoking the first lease drops its user: it can no longer log in.
    dynamic.revoke(&lease).await.unwrap();
    let err = logs_in(&db, &first).await.unwrap_err();
    assert!(err.contains("authentication failed"), "{err}");
    assert!(logs_in(&db, &second).await.is_ok());

    // Static: the store rotates the password; a fetch after rotate-role sees the new one.
    let stat = VaultSource::new(&cfg(&bao, auth, VaultEngine::DatabaseStatic, "st"))
        .await
        .unwrap();
    let s1 = stat.fetch(Stage::Current).await.unwrap();
    assert_eq!(s1.username, "app_static");
    let next = s1
        .next_rotation
        .expect("static roles say when they rotate next");
    assert!(
        next > SystemTime::now() + Duration::from_secs(3000),
        "rotation_period is 1h"
    );
    assert!(logs_in(&db, &s1).await.is_ok());
    bao.call("POST", "database/rotate-role/st", None).await;
    let s2 = stat.fetch(Stage::Current).await.unwrap();
    assert_ne!(s2.version, s1.version);
    assert_ne!(s2.password.expose_secret(), s1.password.expose_secret());
    assert!(logs_in(&db, &s2).await.is_ok());
    assert!(logs_in(&db, &s1)
        .await
        .unwrap_err()
        .contains("authentication failed"));

    let logs = support::logs::captured();
    for secret in [
        first.password.expose_secret(),
        s2.password.expose_secret(),
        token.as_str(),
    ] {
        assert!(!logs.contains(secret), "a secret was logged");
    }
}

/// OpenBao over TLS, answering (its CA file appears slightly before its listener does), with
/// the KV secret `app/rw` and a token-auth configuration for it (without a `ca_file`); `before`
/// sees the store's CA file before anything connects.
async fn tls_store(
    dir: &std::path::Path,
    before: impl FnOnce(&std::path::Path),
) -> (Bao, VaultSourceConfig, std::path::PathBuf) {
    let bao = Bao::start_tls();
    let ca_file = bao.ca_file();
    before(&ca_file);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while bao
        .call_with(BAO_ROOT_TOKEN, "GET", "sys/health", None)
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "OpenBao TLS did not answer"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bao.kv2_put("app/rw", json!({"username": "app", "password": "p"}))
        .await;
    let auth = VaultAuth::Token {
        token_file: Some(secret_file(dir, "token", BAO_ROOT_TOKEN)),
    };
    let c = cfg(&bao, auth, VaultEngine::Kv2, "app/rw");
    (bao, c, ca_file)
}

#[tokio::test]
async fn the_store_over_tls_with_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_bao, mut c, ca_file) = tls_store(dir.path(), |_| {}).await;
    assert!(c.address.starts_with("https://"));
    // Without its CA the store's certificate is not trusted.
    let err = VaultSource::new(&c).await.unwrap_err();
    assert!(
        matches!(
            err,
            SecretError::Unavailable { .. } | SecretError::StoreAuth { .. }
        ),
        "{err:?}"
    );
    c.ca_file = Some(ca_file);
    let src = VaultSource::new(&c).await.unwrap();
    assert_eq!(src.fetch(Stage::Current).await.unwrap().username, "app");
}

/// A `ca_file` pins the store's CA: the system's roots are not consulted. Here the system
/// trust (`SSL_CERT_FILE`, which the platform verifier reads) holds the store's CA, so the
/// store is trusted without a `ca_file`, and not with the `ca_file` of another CA.
#[tokio::test]
async fn a_ca_file_pins_the_store_ca() {
    let dir = tempfile::tempdir().unwrap();
    // This test runs in a process of its own (nextest), before any client reads the roots.
    let (_bao, mut c, _) = tls_store(dir.path(), |ca| std::env::set_var("SSL_CERT_FILE", ca)).await;
    let src = VaultSource::new(&c)
        .await
        .expect("the system trust holds the store's CA");
    assert_eq!(src.fetch(Stage::Current).await.unwrap().username, "app");
    c.ca_file = Some(pki().ca_cert().to_path_buf());
    let Err(err) = VaultSource::new(&c).await else {
        panic!("a ca_file of another CA was not pinned: the system's roots were used")
    };
    assert!(matches!(err, SecretError::Unavailable { .. }), "{err:?}");
}

/// With `auth = { method = "token" }` and no token file, the daemon takes its token from
/// `$VAULT_TOKEN` (how `bao`/`vault` CLIs and most deployments hand it over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_takes_its_token_from_vault_token() {
    let bao = Bao::start();
    let db = Cluster::start_tls();
    db.create_role("app", CANARY_PASSWORD).await;
    bao.policy("read-app", READ_APP).await;
    let token = bao.token("read-app", "1h", true).await;
    bao.kv2_put(
        "app/env",
        json!({"username": "app", "password": CANARY_PASSWORD}),
    )
    .await;
    let config = format!(
        "[[target]]\nname = \"app\"\nurl = \"{}\"\nsource = {{ kind = \"vault\", address = \"{}\", path = \"app/env\", auth = {{ method = \"token\" }} }}\n",
        db.url("localhost", &format!("sslmode=verify-full&sslrootcert={}", pki().ca_cert().display())),
        bao.address(),
    );
    let d = support::daemon::Daemon::start_with_env(&config, "", &[("VAULT_TOKEN", &token)]).await;
    d.wait_ready().await;
    let (status, v, _) = d.query("app", json!({"sql": "SELECT current_user"})).await;
    assert_eq!((status, &v["rows"][0][0]), (200, &json!("app")), "{v}");
}
