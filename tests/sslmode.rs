//! libpq's six sslmodes against a TLS cluster and a plain one, through the verified pool.

mod support;

use credswap::config::PoolSettings;
use credswap::dsn::ConnInfo;
use credswap::pool::{BuildOptions, ConnectError, PoolError, VerifiedPool};
use credswap::secret::Credentials;
use support::pg::{pki, Cluster};

const USER: &str = "app";
const PASSWORD: &str = "app-password-1";

async fn connect(url: &str, user: &str, password: &str) -> Result<VerifiedPool, PoolError> {
    let conn = ConnInfo::parse(url).expect("test URL parses");
    let settings = PoolSettings {
        min_idle: 0,
        ..PoolSettings::default()
    };
    VerifiedPool::build(
        &conn,
        &settings,
        &Credentials::new(user, password, "v1"),
        BuildOptions::named("credswap-test"),
    )
    .await
}

/// What happened: `Ok(encrypted)` or the error.
async fn outcome(url: &str) -> Result<bool, PoolError> {
    connect(url, USER, PASSWORD).await.map(|p| p.tls_in_use())
}

fn ca() -> String {
    pki().ca_cert().display().to_string()
}

#[tokio::test]
async fn matrix_against_tls_cluster() {
    let db = Cluster::start_tls();
    db.create_role(USER, PASSWORD).await;
    let root = format!("sslrootcert={}", ca());
    for (mode, expect) in [
        // hostnossl ... reject: a plain session is refused with 28000.
        ("sslmode=disable", None),
        // allow: plain first, refused, then TLS.
        ("sslmode=allow", Some(true)),
        ("sslmode=prefer", Some(true)),
        ("sslmode=require", Some(true)),
        (&format!("sslmode=verify-ca&{root}") as &str, Some(true)),
        (&format!("sslmode=verify-full&{root}"), Some(true)),
    ] {
        let result = outcome(&db.url("localhost", mode)).await;
        match (expect, result) {
            (Some(tls), Ok(got)) => assert_eq!(got, tls, "{mode}: pg_stat_ssl"),
            (None, Err(PoolError::Connect(ConnectError::Auth { code, message, .. }))) => {
                assert_eq!(code, "28000", "{mode}");
                assert!(message.contains("no encryption"), "{mode}: {message}");
            }
            (expect, result) => panic!("{mode}: expected {expect:?}, got {result:?}"),
        }
    }
}

#[tokio::test]
async fn matrix_against_plain_cluster() {
    let db = Cluster::start_plain();
    db.create_role(USER, PASSWORD).await;
    let root = format!("sslrootcert={}", ca());
    for mode in ["sslmode=disable", "sslmode=allow", "sslmode=prefer"] {
        let tls = outcome(&db.url("127.0.0.1", mode))
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
        assert!(!tls, "{mode}: the session must be unencrypted");
    }
    for mode in [
        "sslmode=require".to_string(),
        format!("sslmode=verify-ca&{root}"),
        format!("sslmode=verify-full&{root}"),
    ] {
        match outcome(&db.url("127.0.0.1", &mode)).await {
            Err(PoolError::Connect(ConnectError::TlsNotSupported { .. })) => {}
            other => panic!("{mode}: expected TlsNotSupported, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn host_name_and_ca_checks() {
    let db = Cluster::start_tls();
    db.create_role(USER, PASSWORD).await;
    let good = format!("sslrootcert={}", ca());
    let wrong = format!("sslrootcert={}", pki().wrong_ca_cert().display());

    // 127.0.0.2 is not in the certificate: verify-full refuses, verify-ca accepts.
    match outcome(&db.url("127.0.0.2", &format!("sslmode=verify-full&{good}"))).await {
        Err(PoolError::Connect(ConnectError::TlsNameMismatch { host, .. })) => {
            assert_eq!(host, "127.0.0.2")
        }
        other => panic!("verify-full on 127.0.0.2: {other:?}"),
    }
    assert!(
        outcome(&db.url("127.0.0.2", &format!("sslmode=verify-ca&{good}")))
            .await
            .unwrap()
    );
    // The IP address SAN is honoured by verify-full.
    assert!(
        outcome(&db.url("127.0.0.1", &format!("sslmode=verify-full&{good}")))
            .await
            .unwrap()
    );

    // A CA that did not sign the server certificate fails both verify modes, and require
    // too once a root file is given (libpq: require + root file = verify-ca).
    for mode in ["verify-ca", "verify-full", "require"] {
        match outcome(&db.url("localhost", &format!("sslmode={mode}&{wrong}"))).await {
            Err(PoolError::Connect(ConnectError::TlsUnknownIssuer { .. })) => {}
            other => panic!("{mode} with the wrong CA: {other:?}"),
        }
    }
    // require without a root file accepts a certificate from a CA nobody trusts.
    assert!(outcome(&db.url("localhost", "sslmode=require"))
        .await
        .unwrap());
    // prefer with the wrong CA: the TLS attempt fails, the plain retry is refused by
    // hostnossl, and the TLS error is the one reported.
    match outcome(&db.url("localhost", &format!("sslmode=prefer&{wrong}"))).await {
        Err(PoolError::Connect(ConnectError::TlsUnknownIssuer { .. })) => {}
        other => panic!("prefer with the wrong CA: {other:?}"),
    }
}

#[tokio::test]
async fn client_certificates() {
    let db = Cluster::start_tls();
    db.create_role("certuser", PASSWORD).await;
    let p = pki();
    for (cert, key) in [
        (p.client_cert(), p.client_key_pkcs8()),
        (p.client_cert(), p.client_key_pkcs1()),
        (p.ec_client_cert(), p.ec_client_key_pkcs8()),
        (p.ec_client_cert(), p.ec_client_key_sec1()),
    ] {
        let url = db.url(
            "localhost",
            &format!(
                "sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
                ca(),
                cert.display(),
                key.display()
            ),
        );
        let pool = connect(&url, "certuser", PASSWORD)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", key.display()));
        assert!(pool.tls_in_use());
    }
    // Without a certificate the server refuses (clientcert=verify-full).
    let url = db.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    );
    match connect(&url, "certuser", PASSWORD).await {
        Err(PoolError::Connect(e @ ConnectError::Auth { .. })) => {
            assert!(e.to_string().contains("28000"), "{e}")
        }
        other => panic!("certuser without a certificate: {other:?}"),
    }
}

#[tokio::test]
async fn group_readable_key_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("client.key");
    std::fs::copy(pki().client_key_pkcs8(), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let url = format!(
        "postgresql://localhost:1/db?sslmode=require&sslcert={}&sslkey={}",
        pki().client_cert().display(),
        key.display()
    );
    let err = connect(&url, USER, PASSWORD).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "TLS configuration: private key file {k} has group or world access (mode 0644); \
             fix: chmod 0600 {k} (or 0640 if owned by root)",
            k = key.display()
        )
    );
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_without_the_password() {
    let db = Cluster::start_tls();
    db.create_role(USER, PASSWORD).await;
    let canary = support::CANARY_PASSWORD;
    let url = db.url(
        "localhost",
        &format!("sslmode=verify-full&sslrootcert={}", ca()),
    );
    let err = connect(&url, USER, canary).await.unwrap_err();
    assert!(err.is_auth(), "{err:?}");
    match &err {
        PoolError::Connect(ConnectError::Auth { code, .. }) => assert_eq!(code, "28P01"),
        other => panic!("{other:?}"),
    }
    support::assert_no_canary("Display", &err.to_string());
    support::assert_no_canary("Debug", &format!("{err:?}"));
}

#[tokio::test]
async fn unreachable_server() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = outcome(&format!("postgresql://127.0.0.1:{port}/db?sslmode=require"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, PoolError::Connect(ConnectError::Unreachable { .. })),
        "{err:?}"
    );
}
