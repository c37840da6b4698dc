//! AWS Secrets Manager against moto.

mod support;

use std::time::Duration;

use credswap::secret::aws::{AwsSource, AwsSourceConfig};
use credswap::secret::{SecretError, SecretSource, Stage};
use secrecy::ExposeSecret;
use support::servers::Moto;
use support::CANARY_PASSWORD;

fn cfg(moto: &Moto, secret_id: &str) -> AwsSourceConfig {
    AwsSourceConfig {
        secret_id: secret_id.into(),
        region: Some("us-east-1".into()),
        endpoint_url: Some(moto.endpoint()),
        version_stage: "AWSCURRENT".into(),
        username_key: "username".into(),
        password_key: "password".into(),
        timeout: Duration::from_secs(5),
    }
}

fn rds(user: &str, password: &str) -> String {
    format!(
        r#"{{"engine":"postgres","host":"db.internal","port":5432,"dbname":"app","username":"{user}","password":"{password}"}}"#
    )
}

#[tokio::test]
async fn fetch_stages_and_versions() {
    support::logs::capture();
    let moto = Moto::start();
    let sm = moto.client().await;
    let created = sm
        .create_secret()
        .name("prod/app/rw")
        .secret_string(rds("app", CANARY_PASSWORD))
        .send()
        .await
        .unwrap();
    let v1 = created.version_id().unwrap().to_string();
    let src = AwsSource::new(&cfg(&moto, "prod/app/rw")).await;
    let c = src.fetch(Stage::Current).await.unwrap();
    assert_eq!(c.username, "app");
    assert_eq!(c.password.expose_secret(), CANARY_PASSWORD);
    assert_eq!(c.version, v1);
    assert_eq!(c.overrides.dbname.as_deref(), Some("app"));

    // A rotation's setSecret step: the new password is AWSPENDING, AWSCURRENT unchanged.
    let put = sm
        .put_secret_value()
        .secret_id("prod/app/rw")
        .secret_string(rds("app", "second-password"))
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
    let v2 = put.version_id().unwrap().to_string();
    let pending = src.fetch(Stage::Pending).await.unwrap();
    assert_eq!(pending.version, v2);
    assert_eq!(pending.password.expose_secret(), "second-password");
    assert_eq!(src.fetch(Stage::Current).await.unwrap().version, v1);

    // finishSecret: AWSCURRENT moves to the new version.
    sm.update_secret_version_stage()
        .secret_id("prod/app/rw")
        .version_stage("AWSCURRENT")
        .move_to_version_id(&v2)
        .remove_from_version_id(&v1)
        .send()
        .await
        .unwrap();
    let current = src.fetch(Stage::Current).await.unwrap();
    assert_eq!(current.version, v2);
    assert_eq!(current.password.expose_secret(), "second-password");
    let previous = src.fetch(Stage::Previous).await.unwrap();
    assert_eq!(previous.version, v1);

    support::assert_no_canary("Debug", &format!("{c:?} {src:?}"));
    support::assert_no_canary("logs", &support::logs::captured());
}

#[tokio::test]
async fn errors() {
    support::logs::capture();
    let moto = Moto::start();
    let sm = moto.client().await;

    let err = AwsSource::new(&cfg(&moto, "no/such/secret"))
        .await
        .fetch(Stage::Current)
        .await
        .unwrap_err();
    assert_eq!(
        err,
        SecretError::NotFound {
            what: "aws secret no/such/secret (AWSCURRENT)".into()
        }
    );
    assert!(!err.retryable());

    for (name, text, want) in [
        (
            "m1",
            format!(r#"{{"password":"{CANARY_PASSWORD}"}}"#),
            "missing key \"username\"",
        ),
        (
            "m2",
            r#"{"username":"app"}"#.to_string(),
            "missing key \"password\"",
        ),
        (
            "m3",
            format!("password={CANARY_PASSWORD}"),
            "not valid JSON",
        ),
    ] {
        sm.create_secret()
            .name(name)
            .secret_string(&text)
            .send()
            .await
            .unwrap();
        let err = AwsSource::new(&cfg(&moto, name))
            .await
            .fetch(Stage::Current)
            .await
            .unwrap_err();
        match &err {
            SecretError::Malformed { detail, .. } => {
                assert!(detail.contains(want), "{name}: {detail}")
            }
            other => panic!("{name}: {other:?}"),
        }
        support::assert_no_canary("malformed error", &format!("{err} {err:?}"));
    }

    // No AWSPENDING version.
    sm.create_secret()
        .name("ok")
        .secret_string(rds("app", "x"))
        .send()
        .await
        .unwrap();
    let err = AwsSource::new(&cfg(&moto, "ok"))
        .await
        .fetch(Stage::Pending)
        .await
        .unwrap_err();
    assert!(matches!(err, SecretError::NotFound { .. }), "{err:?}");

    // Nothing listens there: unavailable, and worth retrying.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut c = cfg(&moto, "ok");
    c.endpoint_url = Some(format!("http://127.0.0.1:{dead}"));
    let err = AwsSource::new(&c)
        .await
        .fetch(Stage::Current)
        .await
        .unwrap_err();
    assert!(matches!(err, SecretError::Unavailable { .. }), "{err:?}");
    assert!(err.retryable());
    support::assert_no_canary("logs", &support::logs::captured());
}
