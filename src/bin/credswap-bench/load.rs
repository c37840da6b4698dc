//! N clients, each on its own keep-alive connection (api) or pool checkout (direct), running
//! the query mix until told to stop; latencies go into one HDR histogram per client, merged at
//! the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credswap::pool::VerifiedPool;
use hdrhistogram::Histogram;

use crate::http::{self, LeanConnection};

/// What each request runs.
#[derive(Clone, Copy, Debug, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QueryMix {
    /// `SELECT 1`.
    Select1,
    /// `pgbench -S`'s statement: one row of pgbench_accounts by primary key.
    Lookup,
    /// Half of each.
    Mix,
}

const SELECT_1: &str = "SELECT 1";
const LOOKUP: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// One request of the mix: the statement and, for the lookup, the key.
struct Statement {
    sql: &'static str,
    aid: Option<i32>,
}

impl QueryMix {
    fn pick(self, rows: i32, n: u64) -> Statement {
        let lookup = match self {
            QueryMix::Select1 => false,
            QueryMix::Lookup => true,
            QueryMix::Mix => n % 2 == 1,
        };
        if lookup {
            Statement {
                sql: LOOKUP,
                aid: Some(rand::random_range(1..=rows)),
            }
        } else {
            Statement {
                sql: SELECT_1,
                aid: None,
            }
        }
    }
}

/// Where requests go.
pub enum Client {
    /// Through the daemon: `POST /v1/targets/{t}/query` on one kept-alive connection.
    Api { conn: LeanConnection, path: String },
    /// The floor: the same statements on a pool inside this process.
    Direct { pool: Arc<VerifiedPool> },
}

impl Client {
    /// Runs one statement; the error is a short code (API error code, SQLSTATE or kind).
    async fn run(&mut self, s: &Statement) -> Result<(), String> {
        match self {
            Client::Api { conn, path } => {
                let body = match s.aid {
                    None => format!(r#"{{"sql":"{}"}}"#, s.sql),
                    Some(aid) => format!(r#"{{"sql":"{}","params":[{aid}]}}"#, s.sql),
                };
                let reply = conn
                    .post(path, body.as_bytes())
                    .await
                    .map_err(|_| "transport".to_string())?;
                if reply.status == 200 {
                    Ok(())
                } else {
                    Err(http::error_code(&reply))
                }
            }
            Client::Direct { pool } => {
                let conn = pool.get().await.map_err(|e| format!("pool: {e}"))?;
                let statement = conn.prepare_cached(s.sql).await.map_err(sql_code)?;
                let rows = match s.aid {
                    None => conn.query(&statement, &[]).await,
                    Some(aid) => conn.query(&statement, &[&aid]).await,
                }
                .map_err(sql_code)?;
                let _value: i32 = rows
                    .first()
                    .ok_or_else(|| "no_row".to_string())?
                    .try_get(0)
                    .map_err(|_| "decode".to_string())?;
                Ok(())
            }
        }
    }
}

fn sql_code(e: tokio_postgres::Error) -> String {
    e.code()
        .map(|c| format!("sqlstate_{}", c.code()))
        .unwrap_or_else(|| "connection".into())
}

/// What one load run did.
pub struct LoadReport {
    /// Requests that finished inside the measured window.
    pub requests: u64,
    /// Failed requests over the whole run, by code.
    pub errors: BTreeMap<String, u64>,
    /// Latency of the requests in the window, in nanoseconds.
    pub latency: Histogram<u64>,
    pub window: Duration,
}

impl LoadReport {
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn json(&self) -> serde_json::Value {
        let us = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        serde_json::json!({
            "requests": self.requests,
            "failed": self.failed(),
            "errors": self.errors,
            "window_s": self.window.as_secs_f64(),
            "throughput_per_s": (self.requests as f64 / self.window.as_secs_f64()).round(),
            "latency_us": {
                "p50": us(0.5), "p90": us(0.9), "p99": us(0.99), "p99_9": us(0.999),
                "max": self.latency.max() as f64 / 1000.0,
                "mean": (self.latency.mean() / 100.0).round() / 10.0,
            },
        })
    }
}

/// How long and how hard.
#[derive(Clone, Copy)]
pub struct LoadPlan {
    pub warmup: Duration,
    /// The measured window; `None`: until `stop` is set.
    pub duration: Option<Duration>,
    pub mix: QueryMix,
    /// pgbench_accounts rows to pick keys from.
    pub rows: i32,
}

/// Runs `plan` with one client per `clients` entry.
pub async fn run(clients: Vec<Client>, plan: LoadPlan, stop: Arc<AtomicBool>) -> LoadReport {
    let started = Instant::now();
    let measure_from = started + plan.warmup;
    let end = plan.duration.map(|d| measure_from + d);
    let mut tasks = tokio::task::JoinSet::new();
    for mut client in clients {
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut latency =
                Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds");
            let mut errors = BTreeMap::<String, u64>::new();
            let mut requests = 0u64;
            let mut n = 0u64;
            loop {
                let t0 = Instant::now();
                if stop.load(Ordering::Relaxed) || end.is_some_and(|e| t0 >= e) {
                    break;
                }
                n += 1;
                let result = client.run(&plan.mix.pick(plan.rows, n)).await;
                let took = t0.elapsed();
                match result {
                    Ok(()) if t0 >= measure_from => {
                        requests += 1;
                        latency.saturating_record(took.as_nanos() as u64);
                    }
                    Ok(()) => {}
                    Err(code) => *errors.entry(code).or_default() += 1,
                }
            }
            (latency, errors, requests)
        });
    }
    let mut report = LoadReport {
        requests: 0,
        errors: BTreeMap::new(),
        latency: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds"),
        window: Duration::ZERO,
    };
    while let Some(done) = tasks.join_next().await {
        let (latency, errors, requests) = done.expect("a load client does not panic");
        report
            .latency
            .add(&latency)
            .expect("histograms with the same bounds add");
        for (code, n) in errors {
            *report.errors.entry(code).or_default() += n;
        }
        report.requests += requests;
    }
    report.window = Instant::now().saturating_duration_since(measure_from);
    if let Some(d) = plan.duration {
        report.window = report.window.min(d).max(Duration::from_millis(1));
    }
    report
}
