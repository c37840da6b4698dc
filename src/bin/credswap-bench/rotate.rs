//! Rotations at a fixed interval, each a real password change: a new password is set on the
//! role in PostgreSQL (as a SCRAM verifier), written to the store, and the daemon is told
//! through the API or a signed webhook, alternately. Time runs from the moment the store
//! holds the new secret and the trigger is sent, to the `rotation_finished` (swapped) and
//! `drain_finished` (old generation) events on `/v1/events`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use credswap::api::client;

/// Where a new password is written before the trigger.
#[derive(Clone, Debug)]
pub enum Store {
    /// The store makes its own credentials (Vault dynamic roles): nothing to write.
    None,
    /// A JSON credentials file, replaced atomically.
    File(PathBuf),
    /// An AWS Secrets Manager secret (`PutSecretValue`, endpoint from `AWS_ENDPOINT_URL`).
    Aws(String),
}

impl std::str::FromStr for Store {
    type Err = String;
    fn from_str(s: &str) -> Result<Store, String> {
        match s.split_once(':') {
            None if s == "none" => Ok(Store::None),
            Some(("file", p)) => Ok(Store::File(p.into())),
            Some(("aws", id)) => Ok(Store::Aws(id.into())),
            _ => Err("expected none, file:PATH or aws:SECRET_ID".into()),
        }
    }
}

/// What the rotation loop needs.
pub struct RotatePlan {
    pub socket: PathBuf,
    pub target: String,
    pub rotations: usize,
    pub interval: Duration,
    pub store: Store,
    /// libpq conninfo of a superuser, for `ALTER ROLE`.
    pub pg_admin: Option<String>,
    /// Roles whose passwords change, in turn.
    pub roles: Vec<String>,
    /// `127.0.0.1:PORT` of the webhook listener and its HMAC key file; none: API only.
    pub webhook: Option<(String, PathBuf)>,
    pub force: bool,
    /// How long one rotation may take before it counts as timed out.
    pub deadline: Duration,
}

/// A received event: when, its name, its data.
type Received = (Instant, String, Value);

fn percentiles(h: &Histogram<u64>) -> Value {
    let ms = |v: u64| (v as f64 / 10.0).round() / 100.0;
    if h.is_empty() {
        return Value::Null;
    }
    json!({
        "n": h.len(),
        "p50": ms(h.value_at_quantile(0.5)),
        "p99": ms(h.value_at_quantile(0.99)),
        "max": ms(h.max()),
    })
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

/// How long one request to the daemon may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn live_generation(socket: &Path, target: &str) -> anyhow::Result<u64> {
    let reply = client::request(
        socket,
        "GET",
        &format!("/v1/targets/{target}"),
        None,
        REQUEST_TIMEOUT,
    )
    .await?;
    let v: Value = serde_json::from_slice(&reply.body)?;
    v["generation"]["id"]
        .as_u64()
        .with_context(|| format!("target {target} has no live generation"))
}

fn new_password() -> String {
    use rand::distr::{Alphanumeric, SampleString};
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// Sets the role's password and writes it to the store.
struct Changer {
    admin: Option<tokio_postgres::Client>,
    aws: Option<aws_sdk_secretsmanager::Client>,
    plan_store: Store,
    roles: Vec<String>,
}

impl Changer {
    async fn new(plan: &RotatePlan) -> anyhow::Result<Changer> {
        let admin = match (&plan.store, &plan.pg_admin) {
            (Store::None, _) => None,
            (_, None) => bail!("--pg-admin is needed to change the password in PostgreSQL"),
            (_, Some(conninfo)) => {
                let (client, conn) = tokio_postgres::connect(conninfo, tokio_postgres::NoTls)
                    .await
                    .context("connecting as the PostgreSQL admin")?;
                // The connection task ends by itself once the client is dropped.
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Some(client)
            }
        };
        let aws = match &plan.store {
            Store::Aws(_) => Some(aws_sdk_secretsmanager::Client::new(
                &aws_config::defaults(aws_config::BehaviorVersion::latest())
                    .load()
                    .await,
            )),
            _ => None,
        };
        Ok(Changer {
            admin,
            aws,
            plan_store: plan.store.clone(),
            roles: plan.roles.clone(),
        })
    }

    /// The i-th change: a new password for the i-th role (in turn), then the store.
    async fn change(&self, i: usize) -> anyhow::Result<()> {
        let Some(admin) = &self.admin else {
            return Ok(());
        };
        let user = &self.roles[i % self.roles.len()];
        let password = new_password();
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let role = postgres_protocol::escape::escape_identifier(user);
        admin
            .batch_execute(&format!("ALTER ROLE {role} PASSWORD '{verifier}'"))
            .await
            .context("ALTER ROLE")?;
        let secret = json!({"username": user, "password": password}).to_string();
        match &self.plan_store {
            Store::None => {}
            Store::File(path) => {
                let tmp = path.with_extension("bench-tmp");
                tokio::fs::write(&tmp, &secret).await?;
                tokio::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).await?;
                tokio::fs::rename(&tmp, path).await?;
            }
            Store::Aws(id) => {
                self.aws
                    .as_ref()
                    .expect("made for the aws store")
                    .put_secret_value()
                    .secret_id(id)
                    .secret_string(secret)
                    .send()
                    .await
                    .context("PutSecretValue")?;
            }
        }
        Ok(())
    }
}

/// Sends the i-th trigger: even ones through the API, odd ones as signed webhooks (if any).
async fn trigger(
    plan: &RotatePlan,
    webhook: &reqwest::Client,
    key: Option<&SecretString>,
    i: usize,
) -> anyhow::Result<&'static str> {
    if let (Some((address, _)), Some(key), true) = (&plan.webhook, key, i % 2 == 1) {
        let body = match &plan.store {
            Store::Aws(id) => json!({"secret_id": id, "id": format!("bench-{i}")}),
            _ => json!({"target": plan.target, "id": format!("bench-{i}")}),
        }
        .to_string();
        let signature =
            credswap::webhook::auth::sign(key, credswap::webhook::auth::now(), body.as_bytes());
        let reply = webhook
            .post(format!("http://{address}/v1/webhooks/rotate"))
            .header(credswap::webhook::auth::SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await?;
        if reply.status() != 202 {
            bail!(
                "webhook answered {}: {}",
                reply.status(),
                reply.text().await?
            );
        }
        Ok("webhook")
    } else {
        let body = json!({"force": plan.force, "wait": false}).to_string();
        let reply = client::request(
            &plan.socket,
            "POST",
            &format!("/v1/targets/{}/rotate", plan.target),
            Some(body),
            REQUEST_TIMEOUT,
        )
        .await?;
        if reply.status != 202 {
            bail!(
                "rotate answered {}: {}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        }
        Ok("api")
    }
}

/// Subscribes to `/v1/events`; returns once subscribed.
async fn subscribe(
    socket: &Path,
) -> anyhow::Result<(
    mpsc::UnboundedReceiver<Received>,
    tokio::task::JoinHandle<()>,
)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let socket = socket.to_path_buf();
    let task = tokio::spawn(async move {
        let _ =
            credswap::api::client::events(&socket, "/v1/events", subscribed_tx, |name, data| {
                let value = serde_json::from_str(data).unwrap_or(Value::Null);
                tx.send((Instant::now(), name.to_string(), value)).is_ok()
            })
            .await;
    });
    tokio::time::timeout(Duration::from_secs(5), subscribed)
        .await
        .context("subscribing to /v1/events")?
        .context("the event stream ended before it started")?;
    Ok((rx, task))
}

/// Runs the rotations; returns their report.
pub async fn run(plan: &RotatePlan) -> anyhow::Result<Value> {
    let key = match &plan.webhook {
        Some((_, file)) => Some(credswap::webhook::auth::read_secret_file(file)?),
        None => None,
    };
    // Plain HTTP on loopback: no root store to load.
    let webhook = reqwest::Client::builder()
        .tls_certs_only(Vec::new())
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    let changer = Changer::new(plan).await?;
    let (mut events, events_task) = subscribe(&plan.socket).await?;
    let mut previous = live_generation(&plan.socket, &plan.target).await?;
    let mut to_swapped = histogram();
    let mut to_drained = histogram();
    let mut steps: BTreeMap<String, Histogram<u64>> = BTreeMap::new();
    let mut by_trigger: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();
    let mut drained_at: HashMap<u64, Instant> = HashMap::new();
    let mut next = Instant::now();
    for i in 0..plan.rotations {
        tokio::time::sleep_until(next.into()).await;
        changer.change(i).await?;
        let t0 = Instant::now();
        next = t0 + plan.interval;
        match trigger(plan, &webhook, key.as_ref(), i).await {
            Ok(how) => *by_trigger.entry(how).or_default() += 1,
            Err(e) => {
                failures.push(format!("rotation {i}: trigger: {e:#}"));
                continue;
            }
        }
        let deadline = tokio::time::Instant::from(t0 + plan.deadline);
        let mut ours: HashSet<u64> = HashSet::new();
        let mut swapped: Option<u64> = None;
        let outcome: Result<(), String> = loop {
            if swapped.is_some() {
                if let Some(at) = drained_at.get(&previous) {
                    to_drained
                        .saturating_record(at.saturating_duration_since(t0).as_micros() as u64);
                    break Ok(());
                }
            }
            let Ok(received) = tokio::time::timeout_at(deadline, events.recv()).await else {
                break Err(format!(
                    "rotation {i}: no {} within {:?}",
                    if swapped.is_some() { "drain" } else { "swap" },
                    plan.deadline
                ));
            };
            let Some((at, name, data)) = received else {
                break Err("the event stream ended".into());
            };
            if data["target"] != plan.target.as_str() {
                continue;
            }
            match name.as_str() {
                "drain_finished" => {
                    if let Some(g) = data["generation"].as_u64() {
                        drained_at.insert(g, at);
                    }
                }
                "rotation_started" => {
                    if let Some(r) = data["rotation"].as_u64() {
                        ours.insert(r);
                    }
                }
                "rotation_finished"
                    if data["rotation"].as_u64().is_some_and(|r| ours.contains(&r)) =>
                {
                    match data["result"].as_str() {
                        Some("swapped") if swapped.is_none() => {
                            to_swapped.saturating_record(
                                at.saturating_duration_since(t0).as_micros() as u64,
                            );
                            for s in data["steps"].as_array().into_iter().flatten() {
                                if let (Some(step), Some(ms)) =
                                    (s["step"].as_str(), s["duration"].as_f64())
                                {
                                    steps
                                        .entry(step.to_string())
                                        .or_insert_with(histogram)
                                        .saturating_record((ms * 1000.0) as u64);
                                }
                            }
                            swapped = data["generation"].as_u64();
                        }
                        Some("failed") if swapped.is_none() => {
                            break Err(format!(
                                "rotation {i}: failed at {}: {}",
                                data["step"], data["error"]
                            ));
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        };
        match outcome {
            Ok(()) => previous = swapped.expect("set before the drain is awaited"),
            Err(e) => {
                failures.push(e);
                if let Ok(g) = live_generation(&plan.socket, &plan.target).await {
                    previous = g;
                }
            }
        }
    }
    events_task.abort();
    Ok(json!({
        "requested": plan.rotations,
        "swapped": to_swapped.len(),
        "drained": to_drained.len(),
        "by_trigger": by_trigger,
        "failures": failures,
        "trigger_to_swapped_ms": percentiles(&to_swapped),
        "trigger_to_drained_ms": percentiles(&to_drained),
        "steps_ms": steps.iter().map(|(k, h)| (k.clone(), percentiles(h))).collect::<BTreeMap<_, _>>(),
    }))
}
