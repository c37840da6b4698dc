//! `credswap-bench`: the load generator behind `dev/bench`. It measures the daemon from the
//! outside, as an application sees it, and prints one JSON object on stdout.
//!
//! - `api`: N keep-alive clients on the API socket;
//! - `direct`: the same statements on a verified pool inside this process, built from the same
//!   configuration (same TLS settings, same pool code): the floor any hop adds to;
//! - `rotate`: rotations with real password changes at a fixed interval, with or without `api`
//!   load, counting failed requests and timing each rotation.
#![forbid(unsafe_code)]

mod http;
mod load;
mod rotate;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use credswap::config::{Config, ProcessEnv};
use credswap::pool::{BuildOptions, VerifiedPool};
use credswap::secret::{self, Stage};
use load::{Client, LoadPlan, QueryMix};
use serde_json::json;

#[derive(Parser)]
#[command(
    version,
    about = "Load generator for credswap's benchmarks (dev/bench)"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Requests through the daemon's socket.
    Api {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long)]
        socket: PathBuf,
    },
    /// The same statements on a pool in this process, from the daemon's configuration.
    Direct {
        #[command(flatten)]
        load: LoadArgs,
        /// The daemon's configuration file; the target's URL, TLS, pool and source are used.
        #[arg(long)]
        config: PathBuf,
    },
    /// Rotations with real password changes, under `api` load unless --clients 0.
    Rotate {
        #[command(flatten)]
        load: LoadArgs,
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, default_value_t = 100)]
        rotations: usize,
        /// Time between triggers (a slow rotation delays the next one).
        #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Where the new password goes: none (the store makes it), file:PATH, aws:SECRET_ID.
        #[arg(long, default_value = "none")]
        store: rotate::Store,
        /// libpq conninfo of a superuser that may ALTER ROLE.
        #[arg(long)]
        pg_admin: Option<String>,
        /// The roles whose passwords change, in turn (give two to alternate users: the one
        /// not in use gets the new password, so the live pool never meets a changed one).
        #[arg(long = "role", default_value = "app")]
        roles: Vec<String>,
        /// Webhook listener address (127.0.0.1:PORT); every other trigger goes there.
        #[arg(long, requires = "webhook_key_file")]
        webhook: Option<String>,
        #[arg(long)]
        webhook_key_file: Option<PathBuf>,
        /// Ask for forced rotations.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
struct LoadArgs {
    #[arg(long)]
    target: String,
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Measured time (api, direct).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time first.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, value_enum, default_value = "select1")]
    query: QueryMix,
    /// Rows of pgbench_accounts (`pgbench -i -s 1` makes 100000).
    #[arg(long, default_value_t = 100_000)]
    rows: i32,
}

impl LoadArgs {
    fn plan(&self, duration: Option<Duration>) -> LoadPlan {
        LoadPlan {
            warmup: self.warmup,
            duration,
            mix: self.query,
            rows: self.rows,
        }
    }
}

async fn api_clients(socket: &std::path::Path, args: &LoadArgs) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        clients.push(Client::Api {
            conn: http::LeanConnection::unix(socket).await?,
            path: format!("/v1/targets/{}/query", args.target),
        });
    }
    Ok(clients)
}

async fn direct_pool(config: &std::path::Path, target: &str) -> anyhow::Result<VerifiedPool> {
    let config = Config::load(Some(config), &ProcessEnv).map_err(|e| anyhow::anyhow!("{e}"))?;
    let target = config
        .target(target)
        .with_context(|| format!("no target {target} in the configuration"))?;
    let source = secret::build(&target.source).await?;
    let creds = source.fetch(Stage::Current).await?;
    let pool = VerifiedPool::build(
        &target.conn,
        &target.pool,
        &creds,
        BuildOptions::named("credswap-bench/direct"),
    )
    .await?;
    Ok(pool)
}

fn describe(mode: &str, args: &LoadArgs) -> serde_json::Value {
    json!({"mode": mode, "target": args.target, "clients": args.clients, "query": args.query})
}

async fn run(cli: Cli) -> anyhow::Result<serde_json::Value> {
    let never = Arc::new(AtomicBool::new(false));
    match cli.mode {
        Mode::Api { load, socket } => {
            let clients = api_clients(&socket, &load).await?;
            let report = load::run(clients, load.plan(Some(load.duration)), never).await;
            Ok(json!({"run": describe("api", &load), "load": report.json()}))
        }
        Mode::Direct { load, config } => {
            let pool = Arc::new(direct_pool(&config, &load.target).await?);
            let clients = (0..load.clients)
                .map(|_| Client::Direct { pool: pool.clone() })
                .collect();
            let report = load::run(clients, load.plan(Some(load.duration)), never).await;
            Ok(json!({"run": describe("direct", &load), "load": report.json()}))
        }
        Mode::Rotate {
            load,
            socket,
            rotations,
            interval,
            store,
            pg_admin,
            roles,
            webhook,
            webhook_key_file,
            force,
        } => {
            let plan = rotate::RotatePlan {
                socket: socket.clone(),
                target: load.target.clone(),
                rotations,
                interval,
                store,
                pg_admin,
                roles,
                webhook: webhook.zip(webhook_key_file),
                force,
                deadline: Duration::from_secs(15),
            };
            let stop = Arc::new(AtomicBool::new(false));
            let clients = api_clients(&socket, &load).await?;
            let load_task = (!clients.is_empty()).then(|| {
                let plan = LoadPlan {
                    warmup: Duration::ZERO,
                    ..load.plan(None)
                };
                tokio::spawn(load::run(clients, plan, stop.clone()))
            });
            let rotations = rotate::run(&plan).await;
            stop.store(true, Ordering::Relaxed);
            let load_report = match load_task {
                Some(task) => Some(task.await.context("the load task")?.json()),
                None => None,
            };
            Ok(
                json!({"run": describe("rotate", &load), "rotations": rotations?, "load": load_report}),
            )
        }
    }
}

fn main() -> anyhow::Result<()> {
    credswap::tls::install_default_provider();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let report = runtime.block_on(run(cli))?;
    println!("{report}");
    Ok(())
}
