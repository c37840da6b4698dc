//! Prometheus metrics (prefix `credswap_`). Event-driven ones (rotations, steps, fetches,
//! queries) are recorded as they happen; state (generations, pool connections, breaker, lease
//! expiry, draining) is read from the target handles when `/metrics` is scraped. No label or value
//! ever holds a secret: labels are target names, triggers, steps, results and source kinds.

use std::sync::atomic::AtomicU64;
use std::time::{Duration, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::targets::{BreakerState, Event, EventKind, Outcome, Step, TargetState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabel {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RotationLabels {
    target: String,
    trigger: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    target: String,
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    target: String,
    source: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    target: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HostLabels {
    target: String,
    host: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    target: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    target: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    target: String,
    reason: String,
}

/// One PostgreSQL front-end session's metric handles, looked up once when it starts so the
/// forwarding path only adds to atomics.
#[derive(Clone, Debug)]
pub struct SessionMetrics {
    clients: Gauge,
    pub to_server: Counter,
    pub to_client: Counter,
}

impl SessionMetrics {
    /// The session ends: one client fewer.
    pub fn ended(&self) {
        self.clients.dec();
    }
}

fn seconds_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// The registry and every metric in it.
pub struct Metrics {
    registry: Registry,
    rotations: Family<RotationLabels, Counter>,
    steps: Family<StepLabels, Histogram, fn() -> Histogram>,
    fetches: Family<FetchLabels, Counter>,
    queries: Family<ResultLabels, Counter>,
    query_seconds: Family<TargetLabel, Histogram, fn() -> Histogram>,
    checkout_wait: Family<TargetLabel, Histogram, fn() -> Histogram>,
    checkout_timeouts: Family<TargetLabel, Counter>,
    generation: Family<TargetLabel, Gauge>,
    connections: Family<StateLabels, Gauge>,
    max_connections: Family<TargetLabel, Gauge>,
    breaker: Family<StateLabels, Gauge>,
    lease_expiry: Family<TargetLabel, Gauge<f64, AtomicU64>>,
    draining: Family<TargetLabel, Gauge>,
    ready: Family<TargetLabel, Gauge>,
    leaks: Family<TargetLabel, Gauge>,
    pg_clients: Family<TargetLabel, Gauge>,
    pg_bytes: Family<DirectionLabels, Counter>,
    pg_ended: Family<ReasonLabels, Counter>,
    pg_reused: Family<TargetLabel, Counter>,
    pg_waiting: Family<TargetLabel, Gauge>,
    pg_wait: Family<TargetLabel, Histogram, fn() -> Histogram>,
    pg_sessions: Family<StateLabels, Gauge>,
    pg_pinned: Family<ReasonLabels, Counter>,
    pg_server_resets: Family<ReasonLabels, Counter>,
    host_connections: Family<HostLabels, Gauge>,
    failovers: Family<TargetLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut m = Metrics {
            rotations: Family::default(),
            steps: Family::new_with_constructor(seconds_buckets as fn() -> Histogram),
            fetches: Family::default(),
            queries: Family::default(),
            query_seconds: Family::new_with_constructor(seconds_buckets as fn() -> Histogram),
            checkout_wait: Family::new_with_constructor(seconds_buckets as fn() -> Histogram),
            checkout_timeouts: Family::default(),
            generation: Family::default(),
            connections: Family::default(),
            max_connections: Family::default(),
            breaker: Family::default(),
            lease_expiry: Family::default(),
            draining: Family::default(),
            ready: Family::default(),
            leaks: Family::default(),
            pg_clients: Family::default(),
            pg_bytes: Family::default(),
            pg_ended: Family::default(),
            pg_reused: Family::default(),
            pg_waiting: Family::default(),
            pg_wait: Family::new_with_constructor(seconds_buckets as fn() -> Histogram),
            pg_sessions: Family::default(),
            pg_pinned: Family::default(),
            pg_server_resets: Family::default(),
            host_connections: Family::default(),
            failovers: Family::default(),
            registry: Registry::with_prefix("credswap"),
        };
        m.registry.register(
            "postgres_clients",
            "Client connections of the PostgreSQL front end, by target",
            m.pg_clients.clone(),
        );
        m.registry.register(
            "postgres_bytes",
            "Bytes forwarded by the PostgreSQL front end, by target and direction",
            m.pg_bytes.clone(),
        );
        m.registry.register(
            "postgres_sessions_ended",
            "PostgreSQL front-end sessions ended, by target and reason",
            m.pg_ended.clone(),
        );
        m.registry.register(
            "postgres_clients_waiting",
            "PostgreSQL front-end clients waiting for a place among the target's pool.max_size sessions",
            m.pg_waiting.clone(),
        );
        m.registry.register(
            "postgres_server_reused",
            "PostgreSQL front-end sessions served by a kept (reset) server connection instead of a new login",
            m.pg_reused.clone(),
        );
        m.registry.register(
            "postgres_server_wait_seconds",
            "Time a PostgreSQL front-end client waited for its server connection",
            m.pg_wait.clone(),
        );
        m.registry.register(
            "postgres_server_sessions",
            "Server sessions of the PostgreSQL front end: serving a client of the live or a draining generation, or idle (kept between clients)",
            m.pg_sessions.clone(),
        );
        m.registry.register(
            "postgres_pinned_clients",
            "Transaction-mode clients pinned to their server connection for the rest of their session, by target and reason",
            m.pg_pinned.clone(),
        );
        m.registry.register(
            "postgres_server_resets",
            "Transaction-mode server connections brought back to their login state after a transaction (reason=reset), or closed because they could not be (failed, statements_changed), by target",
            m.pg_server_resets.clone(),
        );
        m.registry.register(
            "server_connections",
            "Server connections of every generation (HTTP pool and PostgreSQL front end) by host and what the host was last seen to be (primary, standby, unknown)",
            m.host_connections.clone(),
        );
        m.registry.register(
            "failovers",
            "Times a writable target's new connections went to another host than before",
            m.failovers.clone(),
        );
        m.registry.register(
            "rotations",
            "Rotations by target, trigger and result",
            m.rotations.clone(),
        );
        m.registry.register(
            "rotation_step_seconds",
            "Duration of each rotation step",
            m.steps.clone(),
        );
        m.registry.register(
            "secret_fetches",
            "Secret fetches by target, source kind and result",
            m.fetches.clone(),
        );
        m.registry.register(
            "queries",
            "API queries by target and result",
            m.queries.clone(),
        );
        m.registry.register(
            "query_duration_seconds",
            "API query duration, checkout included",
            m.query_seconds.clone(),
        );
        m.registry.register(
            "checkout_wait_seconds",
            "Time waited for a pool connection",
            m.checkout_wait.clone(),
        );
        m.registry.register(
            "checkout_timeouts",
            "Checkouts that gave up waiting",
            m.checkout_timeouts.clone(),
        );
        m.registry.register(
            "generation",
            "Id of the live generation",
            m.generation.clone(),
        );
        m.registry.register(
            "pool_connections",
            "Server connections of the live generation by state",
            m.connections.clone(),
        );
        m.registry.register(
            "pool_max_connections",
            "Pool size limit",
            m.max_connections.clone(),
        );
        m.registry.register(
            "breaker_state",
            "Circuit breaker state (1 for the current one)",
            m.breaker.clone(),
        );
        m.registry.register(
            "lease_expiry_timestamp_seconds",
            "When the live generation's lease expires",
            m.lease_expiry.clone(),
        );
        m.registry.register(
            "draining_connections",
            "Connections of generations being drained",
            m.draining.clone(),
        );
        m.registry.register(
            "target_ready",
            "1 when the target has a live generation and its last rotation worked",
            m.ready.clone(),
        );
        m.registry.register(
            "connection_leaks",
            "Connections held longer than leak_threshold (live generation)",
            m.leaks.clone(),
        );
        m
    }

    /// Records what an event says (rotations, steps, fetches).
    pub fn observe(&self, event: &Event, source_kind: &str) {
        let target = event.target.clone();
        if let EventKind::RotationFinished(r) = &event.kind {
            let result = match &r.outcome {
                Outcome::Swapped { .. } => "swapped",
                Outcome::Unchanged { .. } => "unchanged",
                Outcome::Failed { .. } => "failed",
            };
            self.rotations
                .get_or_create(&RotationLabels {
                    target: target.clone(),
                    trigger: r.trigger.as_str().into(),
                    result: result.into(),
                })
                .inc();
            let fetch = match &r.outcome {
                Outcome::Failed(f) if f.step == Step::Fetch => "error",
                _ => "ok",
            };
            self.fetches
                .get_or_create(&FetchLabels {
                    target: target.clone(),
                    source: source_kind.into(),
                    result: fetch.into(),
                })
                .inc();
            for s in &r.steps {
                self.steps
                    .get_or_create(&StepLabels {
                        target: target.clone(),
                        step: s.step.as_str().into(),
                    })
                    .observe(s.duration.as_secs_f64());
            }
        }
        if let EventKind::Failover { .. } = &event.kind {
            self.failovers
                .get_or_create(&TargetLabel {
                    target: target.clone(),
                })
                .inc();
        }
        if let EventKind::DrainFinished { duration, .. } = &event.kind {
            self.steps
                .get_or_create(&StepLabels {
                    target,
                    step: "drain".into(),
                })
                .observe(duration.as_secs_f64());
        }
    }

    /// One API query's result and duration.
    pub fn query(&self, target: &str, result: &str, took: Duration) {
        self.queries
            .get_or_create(&ResultLabels {
                target: target.into(),
                result: result.into(),
            })
            .inc();
        self.query_seconds
            .get_or_create(&TargetLabel {
                target: target.into(),
            })
            .observe(took.as_secs_f64());
    }

    /// How long a checkout waited, and whether it gave up.
    pub fn checkout(&self, target: &str, waited: Duration, timed_out: bool) {
        let label = TargetLabel {
            target: target.into(),
        };
        self.checkout_wait
            .get_or_create(&label)
            .observe(waited.as_secs_f64());
        if timed_out {
            self.checkout_timeouts.get_or_create(&label).inc();
        }
    }

    /// A PostgreSQL front-end session starts on `target`.
    pub fn postgres_session(&self, target: &str) -> SessionMetrics {
        let dir = |d: &str| {
            self.pg_bytes
                .get_or_create(&DirectionLabels {
                    target: target.into(),
                    direction: d.into(),
                })
                .clone()
        };
        let clients = self
            .pg_clients
            .get_or_create(&TargetLabel {
                target: target.into(),
            })
            .clone();
        clients.inc();
        SessionMetrics {
            clients,
            to_server: dir("to_server"),
            to_client: dir("to_client"),
        }
    }

    /// Why a PostgreSQL front-end session ended (or was refused).
    pub fn postgres_ended(&self, target: &str, reason: &str) {
        self.pg_ended
            .get_or_create(&ReasonLabels {
                target: target.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// A transaction-mode client was pinned to its server connection.
    pub fn postgres_pinned(&self, target: &str, reason: &str) {
        self.pg_pinned
            .get_or_create(&ReasonLabels {
                target: target.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// A transaction-mode server connection was reset after a transaction (`reset`), or
    /// closed because it could not be (`failed`, `statements_changed`).
    pub fn postgres_server_reset(&self, target: &str, result: &str) {
        self.pg_server_resets
            .get_or_create(&ReasonLabels {
                target: target.into(),
                reason: result.into(),
            })
            .inc();
    }

    /// The waiting gauge and wait histogram of `target`, looked up once for a transaction-mode
    /// client (it checks out a connection per transaction).
    pub fn postgres_checkout(&self, target: &str) -> CheckoutMetrics {
        let label = TargetLabel {
            target: target.into(),
        };
        CheckoutMetrics {
            waiting: self.pg_waiting.get_or_create(&label).clone(),
            wait: self.pg_wait.get_or_create(&label).clone(),
        }
    }

    /// A client waits for a place among the target's sessions until the guard drops.
    pub fn postgres_waiting(&self, target: &str) -> impl Drop {
        let gauge = self
            .pg_waiting
            .get_or_create(&TargetLabel {
                target: target.into(),
            })
            .clone();
        gauge.inc();
        WaitingGuard(gauge)
    }

    /// A session got a kept server connection.
    pub fn postgres_server_reused(&self, target: &str) {
        self.pg_reused
            .get_or_create(&TargetLabel {
                target: target.into(),
            })
            .inc();
    }

    /// Server connections kept idle between clients of `target`, now.
    pub fn postgres_idle_servers(&self, target: &str, n: usize) {
        self.pg_sessions
            .get_or_create(&StateLabels {
                target: target.into(),
                state: "idle".into(),
            })
            .set(n as i64);
    }

    /// How long a PostgreSQL front-end client waited for its server connection.
    pub fn postgres_wait(&self, target: &str, waited: Duration) {
        self.pg_wait
            .get_or_create(&TargetLabel {
                target: target.into(),
            })
            .observe(waited.as_secs_f64());
    }

    /// The Prometheus text exposition, with state read from the targets now.
    pub fn render(&self, targets: &crate::targets::Registry) -> String {
        for t in targets.all().iter() {
            let status = t.status();
            let label = TargetLabel {
                target: status.name.clone(),
            };
            self.generation
                .get_or_create(&label)
                .set(status.generation.as_ref().map_or(0, |g| g.id as i64));
            for (state, n) in [("idle", status.pool.idle), ("in_use", status.pool.in_use)] {
                self.connections
                    .get_or_create(&StateLabels {
                        target: status.name.clone(),
                        state: state.into(),
                    })
                    .set(n as i64);
            }
            self.max_connections
                .get_or_create(&label)
                .set(status.pool.max_size as i64);
            for (state, name) in [
                (BreakerState::Closed, "closed"),
                (BreakerState::Open, "open"),
                (BreakerState::HalfOpen, "half_open"),
            ] {
                self.breaker
                    .get_or_create(&StateLabels {
                        target: status.name.clone(),
                        state: name.into(),
                    })
                    .set(i64::from(status.breaker == state));
            }
            let expiry = status
                .generation
                .as_ref()
                .and_then(|g| g.lease_expires_at)
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            self.lease_expiry.get_or_create(&label).set(expiry);
            self.draining.get_or_create(&label).set(
                status
                    .draining
                    .iter()
                    .map(|d| d.remaining_connections as i64)
                    .sum(),
            );
            self.ready.get_or_create(&label).set(i64::from(
                status.generation.is_some() && status.state == TargetState::Ready,
            ));
            self.leaks
                .get_or_create(&label)
                .set(t.current().map_or(0, |g| g.pool.health().leaks() as i64));
            for (state, n) in [
                ("live", status.pool.postgres_sessions as i64),
                (
                    "draining",
                    status
                        .draining
                        .iter()
                        .map(|d| d.postgres_sessions as i64)
                        .sum(),
                ),
            ] {
                self.pg_sessions
                    .get_or_create(&StateLabels {
                        target: status.name.clone(),
                        state: state.into(),
                    })
                    .set(n);
            }
            // Every (host, role) this target's hosts can show is set, so a host that changed
            // role reads 0 under its old one.
            let mut by_host: std::collections::BTreeMap<(String, &str), i64> = Default::default();
            for h in status
                .pool
                .hosts
                .iter()
                .chain(status.draining.iter().flat_map(|d| d.hosts.iter()))
            {
                for role in ["primary", "standby", "unknown"] {
                    by_host.entry((h.host.clone(), role)).or_insert(0);
                }
                let role = h.role.map_or("unknown", |r| r.as_str());
                *by_host.entry((h.host.clone(), role)).or_insert(0) += h.connections as i64;
            }
            for ((host, role), n) in by_host {
                self.host_connections
                    .get_or_create(&HostLabels {
                        target: status.name.clone(),
                        host,
                        role: role.into(),
                    })
                    .set(n);
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// A transaction-mode client's handles on the checkout metrics.
pub struct CheckoutMetrics {
    waiting: Gauge,
    wait: Histogram,
}

impl CheckoutMetrics {
    /// Counts the client as waiting until the guard drops.
    pub fn waiting(&self) -> impl Drop {
        self.waiting.inc();
        WaitingGuard(self.waiting.clone())
    }

    /// How long it waited for its connection.
    pub fn waited(&self, waited: Duration) {
        self.wait.observe(waited.as_secs_f64());
    }
}

/// Counts a waiting client while it lives.
struct WaitingGuard(Gauge);

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
