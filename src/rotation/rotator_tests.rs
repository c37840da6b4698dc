//! The rotator's state machine, on tokio's paused clock: a scripted secret source and a pool
//! builder that never touches a server. Virtual time advances only when every task waits, so
//! each test runs in milliseconds and no sleep stands in for an event.

use std::sync::Mutex;

use tokio::sync::broadcast;

use super::*;
use crate::config::BreakerSettings;
use crate::pool::ConnectError;
use crate::targets::{BreakerState, Event};

/// A source whose answers the test sets, and which records when it was asked.
#[derive(Debug, Default)]
struct Scripted {
    version: Mutex<String>,
    failing: Mutex<Option<SecretError>>,
    /// How long a fetch takes (triggers arriving meanwhile must coalesce).
    takes: Duration,
    calls: Mutex<Vec<(Instant, Stage)>>,
}

impl Scripted {
    fn calls(&self) -> Vec<(Instant, Stage)> {
        self.calls.lock().unwrap().clone()
    }
    fn current_calls(&self) -> usize {
        self.calls()
            .iter()
            .filter(|(_, s)| *s == Stage::Current)
            .count()
    }
}

impl SecretSource for Scripted {
    fn kind(&self) -> &'static str {
        "scripted"
    }
    fn describe(&self) -> String {
        "scripted source".into()
    }
    fn fetch(&self, stage: Stage) -> BoxFuture<'_, Result<Credentials, SecretError>> {
        Box::pin(async move {
            self.calls.lock().unwrap().push((Instant::now(), stage));
            tokio::time::sleep(self.takes).await;
            if let Some(e) = self.failing.lock().unwrap().clone() {
                return Err(e);
            }
            if stage != Stage::Current {
                return Err(SecretError::Unsupported {
                    what: self.describe(),
                    detail: "no stages".into(),
                });
            }
            let version = self.version.lock().unwrap().clone();
            Ok(Credentials::new("app", "pw", version))
        })
    }
}

/// Builds pools without connecting; refuses the credentials while `refuse` is set.
#[derive(Default)]
struct Offline {
    refuse: std::sync::atomic::AtomicBool,
    builds: std::sync::atomic::AtomicUsize,
}

impl PoolBuilder for Offline {
    fn build<'a>(
        &'a self,
        conn: &'a ConnInfo,
        settings: &'a PoolSettings,
        creds: &'a Credentials,
        options: BuildOptions,
    ) -> BoxFuture<'a, Result<VerifiedPool, PoolError>> {
        Box::pin(async move {
            self.builds
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.refuse.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(PoolError::Connect(ConnectError::Auth {
                    server: "127.0.0.1:1".into(),
                    user: creds.username.clone(),
                    code: "28P01".into(),
                    message: "password authentication failed".into(),
                }));
            }
            VerifiedPool::unverified(conn, settings, creds, options)
        })
    }
}

struct Harness {
    target: Arc<TargetHandle>,
    source: Arc<Scripted>,
    builder: Arc<Offline>,
    events: broadcast::Receiver<Event>,
    _stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

fn start(source: Scripted, tune: impl FnOnce(&mut Target)) -> Harness {
    let conn = ConnInfo::parse("postgresql://127.0.0.1:1/app?sslmode=disable").unwrap();
    let mut cfg = Target::new(
        "t",
        conn,
        Source::Development {
            username: "app".into(),
            password: "unused".to_string().into(),
        },
    );
    cfg.pool.min_idle = 0;
    cfg.min_rotation_interval = Duration::from_secs(1);
    tune(&mut cfg);
    let (events_tx, events) = broadcast::channel(1024);
    let (target, commands) = TargetHandle::new(&cfg, "scripted".into(), events_tx);
    let (stop, stop_rx) = watch::channel(false);
    let source = Arc::new(source);
    let builder = Arc::new(Offline::default());
    let mut rotator = Rotator::new(target.clone(), cfg, commands, stop_rx, false);
    rotator.source = Some(source.clone());
    rotator.builder = builder.clone();
    Harness {
        target,
        source,
        builder,
        events,
        _stop: stop,
        task: tokio::spawn(rotator.run()),
    }
}

fn versioned(v: &str) -> Scripted {
    Scripted {
        version: Mutex::new(v.into()),
        ..Scripted::default()
    }
}

/// A source whose store is down.
fn unavailable(detail: &str) -> Scripted {
    let source = versioned("v1");
    *source.failing.lock().unwrap() = Some(SecretError::Unavailable {
        what: "scripted source".into(),
        detail: detail.into(),
    });
    source
}

/// The rotator task ends with its test, also when an assertion fails.
impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Harness {
    /// An API rotation, waited for.
    async fn rotate_and_wait(&self) -> RotationReport {
        self.target
            .rotate(Trigger::Api, false, true)
            .await
            .expect("the rotator runs")
            .expect("asked to wait, so there is a report")
    }

    /// The next finished rotation's report.
    async fn finished(&mut self) -> RotationReport {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(3600), self.events.recv())
                .await
                .expect("a rotation finishes within an hour of virtual time")
                .expect("the event stream stays open");
            if let EventKind::RotationFinished(r) = e.kind {
                return r;
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn startup_swaps_and_an_unchanged_version_does_not() {
    let mut h = start(versioned("v1"), |_| {});
    let r = h.finished().await;
    assert!(
        matches!(r.outcome, Outcome::Swapped { generation: 1 }),
        "{r:?}"
    );
    let r = h.rotate_and_wait().await;
    assert!(
        matches!(
            r.outcome,
            Outcome::Unchanged {
                generation: Some(1)
            }
        ),
        "{r:?}"
    );
    *h.source.version.lock().unwrap() = "v2".into();
    let r = h.rotate_and_wait().await;
    assert!(
        matches!(r.outcome, Outcome::Swapped { generation: 2 }),
        "{r:?}"
    );
    assert_eq!(h.target.current().unwrap().credential_version, "v2");
}

/// Triggers that arrive while a rotation runs are merged into one follow-up.
#[tokio::test(start_paused = true)]
async fn a_storm_of_triggers_coalesces_into_one_follow_up() {
    let mut h = start(
        Scripted {
            takes: Duration::from_millis(500),
            ..versioned("v1")
        },
        |c| c.min_rotation_interval = Duration::ZERO,
    );
    h.finished().await;
    let first = h.target.rotate(Trigger::Webhook, false, false).await;
    assert!(first.is_ok());
    // The first fetch is under way; 100 more triggers arrive during it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..100 {
        h.target
            .rotate(Trigger::Webhook, false, false)
            .await
            .unwrap();
    }
    h.finished().await;
    h.finished().await;
    // Nothing else is pending: a minute later there are still only the start-up fetch and two.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(h.source.current_calls(), 3, "{:?}", h.source.calls());
}

/// A trigger within `min_rotation_interval` of the last attempt waits for the interval; an
/// authentication failure does not.
#[tokio::test(start_paused = true)]
async fn min_rotation_interval_gates_all_but_auth_failures() {
    let mut h = start(versioned("v1"), |c| {
        c.min_rotation_interval = Duration::from_secs(10)
    });
    h.finished().await;
    let start_fetch = h.source.calls()[0].0;
    h.target.rotate(Trigger::Api, false, false).await.unwrap();
    h.finished().await;
    let gated = h.source.calls()[1].0;
    assert!(
        gated - start_fetch >= Duration::from_secs(10),
        "ran {:?} after the last attempt",
        gated - start_fetch
    );
    h.target.auth_failure.notify_one();
    h.finished().await;
    let auth = h.source.calls()[2].0;
    assert!(
        auth - gated < Duration::from_secs(1),
        "an auth failure waited {:?}",
        auth - gated
    );
}

/// A failing store is retried with exponential backoff and full jitter: every wait is at most
/// `initial * 2^(n-1)` (capped at `max`), and the target is degraded with the reason.
#[tokio::test(start_paused = true)]
async fn failures_back_off_exponentially_within_the_cap() {
    let source = unavailable("connection refused");
    let mut h = start(source, |c| {
        c.min_rotation_interval = Duration::ZERO;
        c.retry.initial = Duration::from_secs(1);
        c.retry.max = Duration::from_secs(8);
        c.breaker = BreakerSettings {
            failures: 1000,
            open_for: Duration::from_secs(1),
        };
    });
    for _ in 0..8 {
        let r = h.finished().await;
        assert!(
            matches!(&r.outcome, Outcome::Failed(f) if f.step == Step::Fetch && matches!(f.cause, FailureCause::Secret(_))),
            "{r:?}"
        );
    }
    let times: Vec<Instant> = h.source.calls().iter().map(|(t, _)| *t).collect();
    for (n, pair) in times.windows(2).enumerate() {
        let cap = Duration::from_secs(1 << n.min(3));
        let gap = pair[1] - pair[0];
        assert!(
            gap <= cap,
            "wait {} was {gap:?}, over its cap {cap:?}",
            n + 1
        );
    }
    let status = h.target.status();
    assert_eq!(status.state, TargetState::Degraded);
    assert!(
        status.reason.as_deref().unwrap().contains("fetch failed"),
        "{:?}",
        status.reason
    );
}

/// After `failures` store errors in a row the breaker opens: rotations fail at once without
/// calling the store, and the retry waits for `open_for`, when one probe goes through.
#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_repeated_store_failures_and_probes_later() {
    let source = unavailable("down");
    let mut h = start(source, |c| {
        c.retry.initial = Duration::from_millis(100);
        c.retry.max = Duration::from_millis(100);
        c.min_rotation_interval = Duration::ZERO;
        c.breaker = BreakerSettings {
            failures: 3,
            open_for: Duration::from_secs(30),
        };
    });
    for _ in 0..3 {
        h.finished().await;
    }
    assert_eq!(h.source.current_calls(), 3);
    let r = h.rotate_and_wait().await;
    assert!(
        matches!(&r.outcome, Outcome::Failed(f) if matches!(f.cause, FailureCause::BreakerOpen { failures: 3, .. })),
        "{r:?}"
    );
    assert_eq!(
        h.source.current_calls(),
        3,
        "an open breaker does not call the store"
    );
    assert_eq!(h.target.status().breaker, BreakerState::Open);
    // The store heals; the probe after open_for succeeds and closes the breaker.
    *h.source.failing.lock().unwrap() = None;
    loop {
        let r = h.finished().await;
        if matches!(r.outcome, Outcome::Swapped { .. }) {
            break;
        }
    }
    assert_eq!(h.source.current_calls(), 4, "exactly one probe");
    assert_eq!(h.target.status().breaker, BreakerState::Closed);
    assert_eq!(h.target.status().state, TargetState::Ready);
}

/// The live pool's credentials refused: the rotator fetches at once, and with new credentials
/// that work it swaps.
#[tokio::test(start_paused = true)]
async fn an_auth_failure_fetches_at_once_and_swaps_to_working_credentials() {
    let mut h = start(versioned("v1"), |c| {
        c.min_rotation_interval = Duration::from_secs(3600)
    });
    h.finished().await;
    *h.source.version.lock().unwrap() = "v2".into();
    let before = Instant::now();
    h.target.auth_failure.notify_one();
    let r = h.finished().await;
    assert_eq!(r.trigger, Trigger::AuthFailure);
    assert!(
        matches!(r.outcome, Outcome::Swapped { generation: 2 }),
        "{r:?}"
    );
    assert!(Instant::now() - before < Duration::from_secs(1));
    // Credentials the database refuses never replace the live generation.
    *h.source.version.lock().unwrap() = "v3".into();
    h.builder
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    h.target.auth_failure.notify_one();
    let r = h.finished().await;
    assert!(
        matches!(&r.outcome, Outcome::Failed(f) if f.step == Step::Connect && f.cause.is_auth()),
        "{r:?}"
    );
    assert_eq!(h.target.current().unwrap().credential_version, "v2");
}

/// The password changed behind credswap's back (not in the store): every new connection is
/// refused and the pool reports each refusal. The rotator backs off instead of fetching once a
/// refusal, and the target stays degraded with the reason; it never turns ready on an
/// unchanged version it knows is refused.
#[tokio::test(start_paused = true)]
async fn refused_credentials_back_off_and_stay_degraded() {
    let mut h = start(versioned("v1"), |c| {
        c.min_rotation_interval = Duration::ZERO;
        c.retry.initial = Duration::from_secs(1);
        c.retry.max = Duration::from_secs(300);
    });
    h.finished().await;
    h.builder
        .refuse
        .store(true, std::sync::atomic::Ordering::SeqCst);
    // The pool's background connects: a refusal every 100 ms.
    let notify = h.target.auth_failure.clone();
    let reporter = tokio::spawn(async move {
        loop {
            notify.notify_one();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let until = Instant::now() + Duration::from_secs(60);
    let mut rotations = 0;
    while Instant::now() < until {
        let Ok(Ok(e)) = tokio::time::timeout_at(until, h.events.recv()).await else {
            break;
        };
        if let EventKind::RotationFinished(r) = e.kind {
            rotations += 1;
            assert!(matches!(r.outcome, Outcome::Failed(_)), "{r:?}");
            let status = h.target.status();
            assert_eq!(status.state, TargetState::Degraded, "{status:?}");
            assert!(
                status
                    .reason
                    .as_deref()
                    .unwrap()
                    .contains("authentication failed"),
                "{:?}",
                status.reason
            );
        }
    }
    reporter.abort();
    // Backoff doubles from 1 s (full jitter): at most about log2(60) + a few in a minute,
    // where a retry per refusal would have been 600.
    assert!(
        (2..=16).contains(&rotations),
        "{rotations} rotations in a minute of refusals"
    );
    assert_eq!(
        h.target.current().unwrap().id,
        1,
        "the live generation keeps serving"
    );
}
