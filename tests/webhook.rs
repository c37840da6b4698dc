//! Rotation webhooks: authentication, payloads (generic, EventBridge, CloudTrail, Vault),
//! refusals, a storm, and fuzzed input.

mod support;

use std::sync::Arc;
use std::time::Duration;

use credswap::config::{Config, Source, WebhookConfig};
use credswap::rotation::Engine;
use credswap::secret::aws::AwsSourceConfig;
use credswap::secret::file::{FileFormat, FileSourceConfig};
use credswap::secret::vault::{VaultAuth, VaultEngine, VaultSourceConfig};
use credswap::targets::{EventKind, Trigger};
use credswap::webhook::{self, auth};
use secrecy::SecretString;
use serde_json::{json, Value};
use support::pg::{pki, Cluster};

const KEY1: &str = "webhook-key-one-canary-9c1";
const KEY2: &str = "webhook-key-two-canary-77e";
const TOKEN: &str = "webhook-token-canary-4b0";

use support::write_private;

struct Setup {
    _db: Cluster,
    _dir: tempfile::TempDir,
    engine: Arc<Engine>,
    listener: Option<webhook::Listener>,
    url: String,
    http: reqwest::Client,
}

/// How the test reaches the listener.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Tls,
    Unix,
}

async fn setup(transport: Transport, rate: f64) -> Setup {
    let tls = transport == Transport::Tls;
    credswap::tls::install_default_provider();
    let db = Cluster::start_tls();
    db.create_role("app", "pw").await;
    let dir = tempfile::tempdir().unwrap();
    let secret = write_private(
        dir.path(),
        "app.json",
        &json!({"username": "app", "password": "pw"}).to_string(),
    );
    let file = Source::File(FileSourceConfig {
        path: secret,
        format: FileFormat::Json,
        username_key: "username".into(),
        password_key: "password".into(),
    });
    let mut app = support::engine::target(&db, "app", file);
    app.min_rotation_interval = Duration::from_secs(1);
    // Targets that are only matched, never rotated successfully (nothing listens there).
    let dead = "http://127.0.0.1:9".to_string();
    let aws = |name: &str, id: &str| {
        let mut t = support::engine::target(
            &db,
            name,
            Source::Aws(AwsSourceConfig {
                secret_id: id.into(),
                region: Some("us-east-1".into()),
                endpoint_url: Some(dead.clone()),
                version_stage: "AWSCURRENT".into(),
                username_key: "username".into(),
                password_key: "password".into(),
                timeout: Duration::from_millis(200),
            }),
        );
        t.retry.initial = Duration::from_secs(60);
        t
    };
    let mut vault = support::engine::target(
        &db,
        "dyn",
        Source::Vault(VaultSourceConfig {
            address: dead.clone(),
            ca_file: None,
            namespace: None,
            auth: VaultAuth::Token {
                token_file: Some(write_private(dir.path(), "vt", "x")),
            },
            engine: VaultEngine::Database,
            mount: None,
            path: None,
            role: Some("app-rw".into()),
            username_key: "username".into(),
            password_key: "password".into(),
            revoke_on_drain: true,
            timeout: Duration::from_millis(200),
        }),
    );
    vault.retry.initial = Duration::from_secs(60);
    let targets = vec![
        app,
        aws("billing", "prod/billing"),
        aws(
            "orders",
            "arn:aws:secretsmanager:us-west-2:123456789012:secret:prod/orders-AbCdEf",
        ),
        vault,
    ];
    let engine = Arc::new(Engine::start(&Config::for_targets(targets.clone())));
    let mut cfg = WebhookConfig {
        listen: "127.0.0.1:0".into(),
        unix_socket: None,
        tls_cert_file: None,
        tls_key_file: None,
        hmac_key_files: vec![
            write_private(dir.path(), "k1", KEY1),
            write_private(dir.path(), "k2", KEY2),
        ],
        token_file: Some(write_private(dir.path(), "token", TOKEN)),
        token_header: "authorization".into(),
        max_skew: Duration::from_secs(300),
        rate_limit_per_second: rate,
        rate_limit_burst: rate as u32,
        header_read_timeout: Duration::from_secs(10),
    };
    let mut http = reqwest::Client::builder();
    if tls {
        cfg.tls_cert_file = Some(pki().server_cert());
        let key = dir.path().join("server.key");
        std::fs::copy(pki().server_key(), &key).unwrap();
        cfg.tls_key_file = Some(key);
        let ca = reqwest::Certificate::from_pem(&std::fs::read(pki().ca_cert()).unwrap()).unwrap();
        http = http.add_root_certificate(ca);
    }
    if transport == Transport::Unix {
        let path = dir.path().join("webhook.sock");
        cfg.listen = String::new();
        cfg.unix_socket = Some(path.clone());
        http = http.unix_socket(path);
    }
    let listener = webhook::start(&cfg, engine.registry(), Default::default())
        .await
        .unwrap();
    let (scheme, port) = match transport {
        Transport::Tls => ("https", listener.local_addr.unwrap().port()),
        Transport::Tcp => ("http", listener.local_addr.unwrap().port()),
        // The host and port are ignored: every request goes to the socket.
        Transport::Unix => ("http", 80),
    };
    Setup {
        _db: db,
        _dir: dir,
        engine,
        listener: Some(listener),
        url: format!("{scheme}://localhost:{port}/v1/webhooks/rotate"),
        http: http.build().unwrap(),
    }
}

impl Setup {
    async fn post(&self, body: &[u8], headers: &[(&str, String)]) -> (u16, Value, String) {
        let mut req = self.http.post(&self.url).body(body.to_vec());
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        support::capture::record("webhook", &format!("POST {} -> {status}", self.url), &text);
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    }

    async fn signed(&self, body: &Value, key: &str) -> (u16, Value, String) {
        let bytes = body.to_string().into_bytes();
        let sig = auth::sign(&SecretString::from(key.to_string()), auth::now(), &bytes);
        self.post(&bytes, &[("x-credswap-signature", sig)]).await
    }

    async fn stop(mut self) {
        self.listener.take().unwrap().stop().await;
        self.engine.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_and_refusals() {
    let s = setup(Transport::Tcp, 1000.0).await;
    let body = json!({"target": "app"});
    let (code, v, _) = s.signed(&body, KEY1).await;
    assert_eq!((code, &v["targets"]), (202, &json!(["app"])));
    // Key rollover: the second key is accepted too.
    assert_eq!(
        s.signed(&json!({"target": "app", "n": 2}), KEY2).await.0,
        202
    );
    // A bearer token for senders that cannot sign.
    assert_eq!(
        s.post(
            body.to_string().as_bytes(),
            &[("authorization", format!("Bearer {TOKEN}"))]
        )
        .await
        .0,
        202
    );

    let bytes = body.to_string().into_bytes();
    let key1 = SecretString::from(KEY1.to_string());
    let now = auth::now();
    let replayed = auth::sign(&key1, now, br#"{"target":"app","replay":1}"#);
    assert_eq!(
        s.post(
            br#"{"target":"app","replay":1}"#,
            &[("x-credswap-signature", replayed.clone())]
        )
        .await
        .0,
        202
    );
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, String)>);
    let refusals: Vec<Case> = vec![
        ("no signature", bytes.clone(), vec![]),
        (
            "bad signature",
            bytes.clone(),
            vec![(
                "x-credswap-signature",
                format!("t={now},v1={}", "ab".repeat(32)),
            )],
        ),
        (
            "old timestamp",
            bytes.clone(),
            vec![("x-credswap-signature", auth::sign(&key1, now - 301, &bytes))],
        ),
        (
            "future timestamp",
            bytes.clone(),
            vec![("x-credswap-signature", auth::sign(&key1, now + 301, &bytes))],
        ),
        (
            "replay",
            br#"{"target":"app","replay":1}"#.to_vec(),
            vec![("x-credswap-signature", replayed)],
        ),
        (
            "unknown key",
            bytes.clone(),
            vec![(
                "x-credswap-signature",
                auth::sign(&SecretString::from("other".to_string()), now, &bytes),
            )],
        ),
        (
            "token mismatch",
            bytes.clone(),
            vec![("authorization", "Bearer nope".to_string())],
        ),
        (
            "signed other body",
            b"{\"target\":\"billing\"}".to_vec(),
            vec![("x-credswap-signature", auth::sign(&key1, now, &bytes))],
        ),
    ];
    for (what, body, headers) in refusals {
        let (code, v, text) = s.post(&body, &headers).await;
        assert_eq!(code, 401, "{what}");
        assert_eq!(
            v["error"]["message"], "invalid or missing signature or token",
            "{what}"
        );
        for secret in [KEY1, KEY2, TOKEN] {
            assert!(!text.contains(secret), "{what}: a key leaked");
        }
    }
    // Size, shape and matching.
    let big = json!({"target": "app", "pad": "x".repeat(70 * 1024)});
    assert_eq!(s.signed(&big, KEY1).await.0, 413);
    let bytes = b"{not json".to_vec();
    let sig = auth::sign(&key1, auth::now(), &bytes);
    assert_eq!(
        s.post(&bytes, &[("x-credswap-signature", sig)]).await.0,
        400
    );
    let (code, v, _) = s.signed(&json!({"target": "nope"}), KEY1).await;
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_and_vault_payloads_map_to_targets() {
    let s = setup(Transport::Tcp, 1000.0).await;
    let arn = "arn:aws:secretsmanager:us-west-2:123456789012:secret:prod/billing-a1b2c3";
    let cases = vec![
        (
            "generic secret_id",
            json!({"secret_id": "prod/billing", "reason": "manual"}),
            vec!["billing"],
        ),
        (
            "secret_id as ARN",
            json!({"secret_id": arn}),
            vec!["billing"],
        ),
        (
            "Secret Label Updated",
            json!({
                "version": "0", "id": "2c6b0c42-8bd1-4c57-9b5a-1f3bb6b2b1a1", "detail-type": "Secret Label Updated",
                "source": "aws.secretsmanager", "account": "123456789012", "time": "2026-11-28T12:00:00Z",
                "region": "us-west-2", "resources": [arn],
                "detail": {"name": "prod/billing", "versionId": "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE", "labelUpdated": "AWSCURRENT"}
            }),
            vec!["billing"],
        ),
        // The CloudTrail event shapes from the Secrets Manager user guide ("Monitor with EventBridge").
        (
            "CloudTrail PutSecretValue",
            json!({
                "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718", "detail-type": "AWS API Call via CloudTrail",
                "source": "aws.secretsmanager", "account": "123456789012", "time": "2026-11-28T12:00:00Z", "region": "us-west-2",
                "resources": [],
                "detail": {"eventVersion": "1.08", "eventSource": "secretsmanager.amazonaws.com", "eventName": "PutSecretValue",
                           "awsRegion": "us-west-2", "requestParameters": {"secretId": arn, "clientRequestToken": "EXAMPLE2-90ab-cdef-fedc-ba987EXAMPLE"},
                           "responseElements": {"arn": arn}, "eventType": "AwsApiCall"}
            }),
            vec!["billing"],
        ),
        (
            "CloudTrail UpdateSecretVersionStage",
            json!({
                "detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
                "detail": {"eventName": "UpdateSecretVersionStage", "requestParameters": {"secretId": "prod/orders", "versionStage": "AWSCURRENT",
                           "moveToVersionId": "EXAMPLE1-90ab-cdef-fedc-ba987EXAMPLE"}, "responseElements": null}
            }),
            vec!["orders"],
        ),
        (
            "CloudTrail aRN spelling",
            json!({
                "detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
                "detail": {"eventName": "RotateSecret", "requestParameters": null,
                           "responseElements": {"aRN": "arn:aws:secretsmanager:us-west-2:123456789012:secret:prod/orders-AbCdEf"}}
            }),
            vec!["orders"],
        ),
        (
            "RotationSucceeded",
            json!({
                "version": "0", "id": "5a1f7c4e-0b1d-4a53-8d6e-5c3b2a9e4f10", "detail-type": "AWS Service Event via CloudTrail",
                "source": "aws.secretsmanager", "account": "123456789012", "time": "2026-11-28T12:00:00Z", "region": "us-west-2", "resources": [],
                "detail": {"eventVersion": "1.05", "eventSource": "secretsmanager.amazonaws.com", "eventName": "RotationSucceeded",
                           "additionalEventData": {"SecretId": arn}, "eventType": "AwsServiceEvent"}
            }),
            vec!["billing"],
        ),
        (
            "Vault path",
            json!({"vault_path": "database/creds/app-rw"}),
            vec!["dyn"],
        ),
        (
            "target and secret",
            json!({"target": "app", "secret_id": "prod/billing"}),
            vec!["app", "billing"],
        ),
    ];
    for (what, body, want) in cases {
        let (code, v, _) = s.signed(&body, KEY1).await;
        assert_eq!(code, 202, "{what}: {v}");
        assert_eq!(v["targets"], json!(want), "{what}");
    }
    // An unrelated Secrets Manager API call is not a rotation.
    let (code, _, _) = s.signed(&json!({"source": "aws.secretsmanager", "detail": {"eventName": "GetSecretValue", "requestParameters": {"secretId": "prod/billing"}}}), KEY1).await;
    assert_eq!(code, 400);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_500_webhooks_in_a_second_causes_at_most_two_rotations() {
    let s = setup(Transport::Tcp, 10_000.0).await;
    assert!(s
        .engine
        .wait_ready(Duration::from_secs(5))
        .await
        .ready
        .contains(&"app".to_string()));
    let mut events = s.engine.subscribe();
    let started = std::time::Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..500 {
        let body = json!({"target": "app", "n": i}).to_string().into_bytes();
        let sig = auth::sign(&SecretString::from(KEY1.to_string()), auth::now(), &body);
        let (http, url) = (s.http.clone(), s.url.clone());
        sends.spawn(async move {
            http.post(url)
                .header("x-credswap-signature", sig)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        });
    }
    while let Some(code) = sends.join_next().await {
        assert_eq!(code.unwrap(), 202);
    }
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "sent in {:?}",
        started.elapsed()
    );
    let mut rotations = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while let Ok(Ok(e)) = tokio::time::timeout_at(until, events.recv()).await {
        if e.target == "app"
            && matches!(
                e.kind,
                EventKind::RotationStarted {
                    trigger: Trigger::Webhook,
                    ..
                }
            )
        {
            rotations += 1;
        }
    }
    assert!((1..=2).contains(&rotations), "{rotations} rotations");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_input_always_gets_a_4xx() {
    use rand::RngExt;
    let s = setup(Transport::Tcp, 100_000.0).await;
    let mut rng = rand::rng();
    let key = SecretString::from(KEY1.to_string());
    for i in 0..400 {
        let body: Vec<u8> = if i % 2 == 0 {
            (0..rng.random_range(0..512))
                .map(|_| rng.random::<u8>())
                .collect()
        } else {
            random_json(&mut rng, 3).to_string().into_bytes()
        };
        // Half signed (to reach the parser), half not.
        let headers = if i % 4 < 2 {
            vec![("x-credswap-signature", auth::sign(&key, auth::now(), &body))]
        } else {
            vec![]
        };
        let (code, _, _) = s.post(&body, &headers).await;
        assert!((400..500).contains(&code), "input {i} got {code}");
    }
    assert_eq!(
        s.signed(&json!({"target": "app"}), KEY1).await.0,
        202,
        "still serving"
    );
    s.stop().await;
}

fn random_json(rng: &mut impl rand::Rng, depth: u32) -> Value {
    use rand::RngExt;
    match rng.random_range(0..if depth == 0 { 4 } else { 6 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        // Never a configured target's name: random input must never be a valid request.
        3 => json!(
            [
                "target",
                "secret_id",
                "vault_path",
                "nope",
                "\u{0}",
                "detail-type"
            ][rng.random_range(0..6)]
        ),
        4 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => {
            let keys = [
                "target",
                "secret_id",
                "vault_path",
                "detail",
                "source",
                "detail-type",
                "eventName",
                "x",
            ];
            Value::Object(
                (0..rng.random_range(0..4))
                    .map(|_| {
                        (
                            keys[rng.random_range(0..keys.len())].to_string(),
                            random_json(rng, depth - 1),
                        )
                    })
                    .collect(),
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_and_the_sign_command() {
    let s = setup(Transport::Tls, 1000.0).await;
    assert!(s.url.starts_with("https://"));
    assert_eq!(s.signed(&json!({"target": "app"}), KEY1).await.0, 202);
    // `credswap webhook sign` prints headers that the listener accepts.
    let dir = tempfile::tempdir().unwrap();
    let key = write_private(dir.path(), "key", KEY2);
    let body = br#"{"target":"app","from":"cli"}"#;
    let mut child = std::process::Command::new(support::daemon::bin())
        .args(["webhook", "sign", "--key-file"])
        .arg(&key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(KEY2));
    let sig = text
        .lines()
        .find_map(|l| l.strip_prefix("X-Credswap-Signature: "))
        .unwrap()
        .to_string();
    assert_eq!(s.post(body, &[("x-credswap-signature", sig)]).await.0, 202);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_socket_listener() {
    let s = setup(Transport::Unix, 1000.0).await;
    assert!(
        s.listener.as_ref().unwrap().local_addr.is_none(),
        "no TCP listener"
    );
    assert_eq!(s.signed(&json!({"target": "app"}), KEY1).await.0, 202);
    assert_eq!(s.post(br#"{"target":"app"}"#, &[]).await.0, 401);
    s.stop().await;
}

/// A sender that never finishes its request head loses the connection after
/// `webhook.header_read_timeout` (10 s here) instead of holding it forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_request_head_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup(Transport::Tcp, 100.0).await;
    let port = s.listener.as_ref().unwrap().local_addr.unwrap().port();
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    c.write_all(b"POST /v1/webhooks/rotate HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the half-sent request kept its connection");
}

/// A request whose headers alone fail (no token, no signature that could pass) is refused with
/// 401 before its body is read: a head announcing 60,000 bytes that never come is answered at
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_by_its_headers_is_answered_before_its_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup(Transport::Tcp, 100.0).await;
    let port = s.listener.as_ref().unwrap().local_addr.unwrap().port();
    for signature in ["", "x-credswap-signature: t=1,v1=00\r\n"] {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let head = format!(
            "POST /v1/webhooks/rotate HTTP/1.1\r\nhost: x\r\n{signature}content-type: application/json\r\ncontent-length: 60000\r\n\r\n"
        );
        c.write_all(head.as_bytes()).await.unwrap();
        let mut answer = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("no answer before the body ({signature:?})"))
            .unwrap();
        assert_eq!(&answer, b"HTTP/1.1 401", "{signature:?}");
    }
}
