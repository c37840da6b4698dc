//! The verified pool against a real TLS cluster: startup options, checkout limits, the error
//! sink, and closed connections.

mod support;

use std::time::{Duration, Instant};

use credswap::config::PoolSettings;
use credswap::dsn::ConnInfo;
use credswap::pool::{BuildOptions, ConnectError, PoolError, VerifiedPool};
use credswap::secret::Credentials;
use support::pg::{pki, Cluster};

const USER: &str = "app";
const PASSWORD: &str = "app-password-1";

fn url(db: &Cluster, extra: &str) -> ConnInfo {
    ConnInfo::parse(&db.url(
        "localhost",
        &format!(
            "sslmode=verify-full&sslrootcert={}{extra}",
            pki().ca_cert().display()
        ),
    ))
    .unwrap()
}

async fn cluster() -> Cluster {
    let db = Cluster::start_tls();
    db.create_role(USER, PASSWORD).await;
    db
}

#[tokio::test]
async fn startup_options_reach_the_server() {
    let db = cluster().await;
    let settings = PoolSettings {
        statement_timeout: Duration::from_millis(300),
        ..PoolSettings::default()
    };
    let conn = url(&db, "&options=-c%20search_path%3Dcredswap_test");
    let pool = VerifiedPool::build(
        &conn,
        &settings,
        &Credentials::new(USER, PASSWORD, "v1"),
        BuildOptions::named("credswap/app/g1"),
    )
    .await
    .unwrap();
    let c = pool.get().await.unwrap();
    let row = c.query_one("SELECT current_setting('statement_timeout'), current_setting('search_path'), current_setting('application_name')", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "300ms");
    assert_eq!(row.get::<_, String>(1), "credswap_test");
    assert_eq!(row.get::<_, String>(2), "credswap/app/g1");
    // The statement timeout is enforced by the server.
    let err = c.query_one("SELECT pg_sleep(5)", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"));
    // And the operator sees the pool's sessions by application_name.
    let seen = db
        .admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'credswap/app/g1' AND usename = $1",
            &[&USER],
        )
        .await
        .unwrap();
    assert!(seen.get::<_, i64>(0) >= 1);
}

#[tokio::test]
async fn checkout_times_out_quickly_when_exhausted() {
    let db = cluster().await;
    let settings = PoolSettings {
        max_size: 1,
        min_idle: 0,
        checkout_timeout: Duration::from_millis(200),
        ..PoolSettings::default()
    };
    let pool = VerifiedPool::build(
        &url(&db, ""),
        &settings,
        &Credentials::new(USER, PASSWORD, "v1"),
        BuildOptions::named("t"),
    )
    .await
    .unwrap();
    let held = pool.get().await.unwrap();
    let started = Instant::now();
    let err = pool.get().await.unwrap_err();
    let waited = started.elapsed();
    match &err {
        PoolError::CheckoutTimeout { waited, last_error } => {
            assert!(*waited >= Duration::from_millis(200), "{waited:?}");
            assert!(last_error.is_none(), "{last_error:?}");
        }
        other => panic!("{other:?}"),
    }
    assert!(waited >= Duration::from_millis(200));
    drop(held);
    pool.get().await.expect("the connection is free again");
}

#[tokio::test]
async fn error_sink_keeps_the_real_cause() {
    let db = cluster().await;
    let settings = PoolSettings {
        max_size: 2,
        min_idle: 0,
        checkout_timeout: Duration::from_millis(500),
        ..PoolSettings::default()
    };
    let pool = VerifiedPool::build(
        &url(&db, ""),
        &settings,
        &Credentials::new(USER, PASSWORD, "v1"),
        BuildOptions::named("t"),
    )
    .await
    .unwrap();
    let _held = pool.get().await.unwrap();
    // The password changes under the pool: sessions already open keep working, new logins fail.
    db.set_password(USER, "rotated-password-2").await;
    let err = pool.get().await.unwrap_err();
    assert!(
        err.is_auth(),
        "bb8 would say only \"timed out\"; we keep the cause: {err}"
    );
    match &err {
        PoolError::CheckoutTimeout {
            last_error: Some(ConnectError::Auth { code, .. }),
            ..
        } => assert_eq!(code, "28P01"),
        other => panic!("{other:?}"),
    }
    assert!(pool.health().connect_failures() >= 1);
    assert!(
        err.to_string().contains("password authentication failed"),
        "{err}"
    );
}

#[tokio::test]
async fn a_connection_closed_by_the_server_is_not_handed_out() {
    let db = cluster().await;
    let settings = PoolSettings {
        max_size: 1,
        min_idle: 0,
        ..PoolSettings::default()
    };
    let pool = VerifiedPool::build(
        &url(&db, ""),
        &settings,
        &Credentials::new(USER, PASSWORD, "v1"),
        BuildOptions::named("t"),
    )
    .await
    .unwrap();
    let old_pid: i32 = {
        let c = pool.get().await.unwrap();
        c.query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0)
    };
    let admin = db.admin().await;
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&old_pid])
        .await
        .unwrap();
    // Wait (bounded) for the client side to see the close; no notification exists for it, so
    // poll the pool, which must never hand out the closed connection meanwhile.
    let deadline = Instant::now() + Duration::from_secs(10);
    let new_pid: i32 = loop {
        assert!(
            Instant::now() < deadline,
            "the pool did not replace the terminated connection"
        );
        let c = pool.get().await.unwrap();
        assert!(!c.is_closed(), "get() handed out a closed connection");
        match c.query_one("SELECT pg_backend_pid()", &[]).await {
            Ok(row) => break row.get(0),
            // The server's "terminating connection" (57P01) and close were not yet processed
            // when this connection was checked out; dropping it marks it broken.
            Err(e)
                if e.is_closed()
                    || e.code() == Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN) =>
            {
                tokio::task::yield_now().await
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_ne!(new_pid, old_pid);
    assert!(pool.state().statistics.connections_closed_broken >= 1);
}
