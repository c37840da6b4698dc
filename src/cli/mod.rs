//! The command line. `anyhow` would live here, at the edge; the library below returns typed
//! errors, and each command maps them to an exit code:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 1 | the operation failed (a SQL error, a failed rotation) |
//! | 2 | usage: bad arguments, unknown target, malformed request |
//! | 69 | unavailable: the daemon is not running, or a target has no live pool (`EX_UNAVAILABLE`) |
//! | 77 | refused: this uid may not do that (`EX_NOPERM`) |
//! | 78 | the configuration is invalid (`EX_CONFIG`) |

mod output;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{json, Value};

use crate::api::client;
use crate::config::{self, Config, ProcessEnv};

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNAVAILABLE: u8 = 69;
pub const EXIT_REFUSED: u8 = 77;
pub const EXIT_CONFIG: u8 = 78;

#[derive(Parser, Debug)]
#[command(
    name = "credswap",
    version,
    about = "Live, verified PostgreSQL pools with rotating credentials"
)]
struct Cli {
    /// Configuration file (default: $CREDSWAP_CONFIG, else DATABASE_URL alone).
    #[arg(long, short, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The daemon's API socket (default: from the configuration, else /run/credswap/credswap.sock).
    #[arg(long, global = true, env = "CREDSWAP_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log format of `run`.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon.
    Run,
    /// Validate the configuration and print it as credswap will use it, secrets redacted.
    CheckConfig {
        /// The file to check (same as --config).
        file: Option<PathBuf>,
    },
    /// Show every target: state, generation, pool, last rotation.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Rotate a target's credentials now (admin).
    Rotate {
        target: String,
        /// Build a new generation even if the secret has not changed.
        #[arg(long)]
        force: bool,
        /// Wait for the rotation and show its steps.
        #[arg(long)]
        wait: bool,
    },
    /// Webhook helpers.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Run a statement on a target's current pool.
    Query {
        target: String,
        sql: String,
        /// Parameters for $1, $2, ...: JSON values (`42`, `true`, `null`, `"text"`), or plain text.
        params: Vec<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum WebhookCommand {
    /// Print the headers that sign a webhook body, for curl or for wiring a sender.
    Sign {
        /// The HMAC key file (the same file the daemon's webhook.hmac_key_files names).
        #[arg(long, value_name = "FILE")]
        key_file: PathBuf,
        /// The body to sign: a file, or - for standard input.
        #[arg(long, value_name = "FILE|-", default_value = "-")]
        body: String,
    },
}

fn webhook_sign(key_file: &std::path::Path, body: &str) -> ExitCode {
    use std::io::Read;
    let key = match crate::webhook::auth::read_secret_file(key_file) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("credswap: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let bytes = if body == "-" {
        let mut buf = Vec::new();
        if let Err(e) = std::io::stdin().read_to_end(&mut buf) {
            eprintln!("credswap: cannot read standard input: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
        buf
    } else {
        match std::fs::read(body) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("credswap: cannot read {body}: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    };
    let header = crate::webhook::auth::sign(&key, crate::webhook::auth::now(), &bytes);
    println!("X-Credswap-Signature: {header}");
    println!("Content-Type: application/json");
    ExitCode::SUCCESS
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime can be built");
    match cli.command {
        Command::CheckConfig { ref file } => check_config(file.clone().or(cli.config.clone())),
        Command::Webhook(WebhookCommand::Sign {
            ref key_file,
            ref body,
        }) => webhook_sign(key_file, body),
        Command::Run => {
            init_logs(cli.log_format);
            match Config::load(cli.config.as_deref(), &ProcessEnv) {
                Err(errors) => {
                    for e in &errors.0 {
                        tracing::error!("{e}");
                        eprintln!("credswap: {e}");
                    }
                    ExitCode::from(EXIT_CONFIG)
                }
                Ok(config) => match runtime.block_on(crate::service::run(config)) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!("{e}");
                        eprintln!("credswap: {e}");
                        ExitCode::from(EXIT_UNAVAILABLE)
                    }
                },
            }
        }
        _ => {
            let socket = socket_path(&cli);
            runtime.block_on(talk(cli.command, socket))
        }
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colours only on a terminal: journald and log files get plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn socket_path(cli: &Cli) -> PathBuf {
    if let Some(s) = &cli.socket {
        return s.clone();
    }
    if let Some(file) = cli
        .config
        .clone()
        .or_else(|| std::env::var_os("CREDSWAP_CONFIG").map(PathBuf::from))
    {
        if let Ok(c) = Config::load(Some(&file), &ProcessEnv) {
            return c.api.socket;
        }
    }
    config::Api::defaults().socket
}

fn check_config(file: Option<PathBuf>) -> ExitCode {
    match Config::load(file.as_deref(), &ProcessEnv) {
        Ok(config) => {
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            let origin = config.file.as_ref().map_or_else(
                || "the environment".to_string(),
                |f| f.display().to_string(),
            );
            println!("# credswap: configuration from {origin} is valid");
            print!("{}", config::render_effective(&config));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("credswap: the configuration is not valid:");
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// The exit code for an error answer from the daemon, by its error code.
fn exit_for(status: u16, code: Option<&str>) -> u8 {
    match (status, code) {
        (200..=299, _) => 0,
        (_, Some("forbidden")) | (403, _) => EXIT_REFUSED,
        (_, Some("bad_request" | "not_found" | "payload_too_large")) => EXIT_USAGE,
        (_, Some("unavailable" | "pool_exhausted" | "rate_limited")) => EXIT_UNAVAILABLE,
        _ => EXIT_FAILED,
    }
}

/// Prints an API error and returns its exit code.
fn fail(reply: &client::Reply) -> ExitCode {
    let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    let msg = v["error"]["message"].as_str().map_or_else(
        || String::from_utf8_lossy(&reply.body).into_owned(),
        str::to_string,
    );
    match v["error"]["sqlstate"].as_str() {
        Some(state) => eprintln!("credswap: {msg} (SQLSTATE {state})"),
        None => eprintln!("credswap: {msg}"),
    }
    ExitCode::from(exit_for(reply.status, v["error"]["code"].as_str()))
}

const TIMEOUT: Duration = Duration::from_secs(120);

async fn talk(command: Command, socket: PathBuf) -> ExitCode {
    let result = match command {
        Command::Status { json } => status(&socket, json).await,
        Command::Rotate {
            target,
            force,
            wait,
        } => rotate(&socket, &target, force, wait).await,
        Command::Query {
            target,
            sql,
            params,
            json,
        } => query(&socket, &target, &sql, &params, json).await,
        Command::Run | Command::CheckConfig { .. } | Command::Webhook(_) => {
            unreachable!("handled before")
        }
    };
    result.unwrap_or_else(|e| {
        eprintln!("credswap: {e}");
        ExitCode::from(EXIT_UNAVAILABLE)
    })
}

async fn status(socket: &std::path::Path, as_json: bool) -> Result<ExitCode, client::ClientError> {
    let reply = client::request(socket, "GET", "/v1/targets", None, TIMEOUT).await?;
    if reply.status != 200 {
        return Ok(fail(&reply));
    }
    let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", output::status_table(&v));
        let hosts = output::hosts_table(&v);
        if !hosts.is_empty() {
            print!("\n{hosts}");
        }
    }
    let all_ready = v["targets"]
        .as_array()
        .is_some_and(|ts| ts.iter().all(|t| t["state"] == "ready"));
    Ok(if all_ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_UNAVAILABLE)
    })
}

async fn rotate(
    socket: &std::path::Path,
    target: &str,
    force: bool,
    wait: bool,
) -> Result<ExitCode, client::ClientError> {
    // Show the steps as they happen: follow the event stream while the rotation runs.
    let (subscribed, is_subscribed) = tokio::sync::oneshot::channel();
    let watcher = wait.then(|| {
        let socket = socket.to_path_buf();
        let target = target.to_string();
        tokio::spawn(async move {
            let _ = client::events(&socket, "/v1/events", subscribed, |name, data| {
                let v: Value = serde_json::from_str(data).unwrap_or(Value::Null);
                if v["target"] != target.as_str() {
                    return true;
                }
                match name {
                    "step" => {
                        let words = match v["step"].as_str().unwrap_or_default() {
                            "fetch" => "fetching credentials",
                            "connect" => "connecting",
                            "verify" => "verified",
                            "warm" => "opening connections",
                            "swap" => "swapped",
                            "drain" => "draining the old generation",
                            other => other,
                        };
                        let done = matches!(words, "verified" | "swapped");
                        eprintln!("  {words}{}", if done { "" } else { "..." });
                        true
                    }
                    "drain_finished" => {
                        eprintln!(
                            "  old generation g{} drained in {:.0} ms",
                            v["generation"],
                            v["duration"].as_f64().unwrap_or(0.0)
                        );
                        false
                    }
                    _ => true,
                }
            })
            .await;
        })
    });
    if wait {
        // Subscribe before asking, so the first steps are not missed.
        let _ = tokio::time::timeout(Duration::from_secs(2), is_subscribed).await;
    }
    let body = json!({"force": force, "wait": wait}).to_string();
    let reply = client::request(
        socket,
        "POST",
        &format!("/v1/targets/{target}/rotate"),
        Some(body),
        TIMEOUT,
    )
    .await?;
    if reply.status >= 300 {
        if let Some(w) = watcher {
            w.abort();
        }
        return Ok(fail(&reply));
    }
    if !wait {
        println!("rotation of {target} requested");
        return Ok(ExitCode::SUCCESS);
    }
    let report: report::ReportView = match serde_json::from_slice(&reply.body) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{target}: the daemon's rotation report could not be read: {e}");
            return Ok(ExitCode::from(EXIT_FAILED));
        }
    };
    let code = match &report.outcome {
        report::OutcomeView::Swapped { generation } => {
            println!("{target}: swapped to generation {generation}");
            // Let the drain line appear if it comes soon; never wait past a few seconds.
            if let Some(w) = watcher {
                let _ = tokio::time::timeout(Duration::from_secs(3), w).await;
            }
            ExitCode::SUCCESS
        }
        report::OutcomeView::Unchanged => {
            println!("{target}: unchanged (the secret has the same version; --force builds a new generation anyway)");
            ExitCode::SUCCESS
        }
        report::OutcomeView::Failed { step, error, .. } => {
            eprintln!("{target}: rotation failed at {step}: {error}");
            ExitCode::from(EXIT_FAILED)
        }
    };
    if !report.steps.is_empty() {
        let line: Vec<String> = report
            .steps
            .iter()
            .map(|s| format!("{} {:.1} ms", s.step, s.duration))
            .collect();
        println!("  steps: {}", line.join(", "));
    }
    Ok(code)
}

async fn query(
    socket: &std::path::Path,
    target: &str,
    sql: &str,
    params: &[String],
    as_json: bool,
) -> Result<ExitCode, client::ClientError> {
    let params: Vec<Value> = params
        .iter()
        .map(|p| serde_json::from_str(p).unwrap_or_else(|_| Value::String(p.clone())))
        .collect();
    let body = json!({"sql": sql, "params": params}).to_string();
    let reply = client::request(
        socket,
        "POST",
        &format!("/v1/targets/{target}/query"),
        Some(body),
        TIMEOUT,
    )
    .await?;
    if reply.status != 200 {
        return Ok(fail(&reply));
    }
    let v: Value = serde_json::from_slice(&reply.body).unwrap_or(Value::Null);
    if as_json {
        println!("{}", serde_json::to_string(&v).unwrap_or_default());
    } else {
        print!("{}", output::query_table(&v));
    }
    Ok(ExitCode::SUCCESS)
}
