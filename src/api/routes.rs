//! The endpoints. Every request is checked against the peer's uid: targets by their
//! allow-lists, rotation by `api.admin_uids`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Extension, FromRequest, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;

use super::budget::Budget;
use super::query::{self, BatchRequest, QueryRequest};
use super::session;
use super::ApiState;
use crate::config::access::Peer;
use crate::http::{ApiError, Body};
use crate::targets::{Checkout, CheckoutError, TargetHandle, TargetStatus, Trigger};

/// The peer of the connection a request came on, read once at accept.
#[derive(Clone, Debug)]
pub struct PeerInfo(pub Option<Peer>);

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

/// Reads the body of a request whose peer has been checked already: a peer that may not make
/// the request is answered before its body is read (within `api.max_body_bytes`).
async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    Body::from_request(request, &()).await.map(|Body(b)| b)
}

impl ApiState {
    fn peer(&self, info: &PeerInfo) -> Result<Peer, ApiError> {
        let peer = info
            .0
            .clone()
            .ok_or_else(|| ApiError::forbidden("the peer's credentials could not be read"))?;
        self.limiter
            .take(peer.uid)
            .map_err(ApiError::rate_limited)?;
        Ok(peer)
    }

    fn is_admin(&self, peer: &Peer) -> bool {
        self.api.admin_uids.contains(&peer.uid)
    }

    /// The target, if `peer` may use it. To a peer that is not an admin, a target that does
    /// not exist and one it may not use look the same (403, no allow-lists shown); the log says
    /// which (throttled).
    fn authorize(&self, peer: &Peer, name: &str) -> Result<Arc<TargetHandle>, ApiError> {
        let target = self.targets.get(name);
        match &target {
            Some(t) if self.is_admin(peer) || t.allows(peer).is_some() => {
                return Ok(t.clone());
            }
            None if self.is_admin(peer) => {
                return Err(ApiError::not_found(format!("no target named \"{name}\"")));
            }
            _ => {}
        }
        if let Some(held) = self.refusals.allow() {
            tracing::warn!(
                uid = peer.uid,
                gid = peer.gid,
                pid = peer.pid,
                target_name = name,
                exists = target.is_some(),
                refusals_not_logged = held,
                "refused: peer not allowed to use the target"
            );
        }
        Err(ApiError::forbidden(format!(
            "uid {} may not use target \"{name}\" (or it does not exist); an operator can add the uid or its group to the target's allow-lists",
            peer.uid,
        )))
    }

    fn require_admin(&self, peer: &Peer, what: &str) -> Result<(), ApiError> {
        if self.is_admin(peer) {
            return Ok(());
        }
        if let Some(held) = self.refusals.allow() {
            tracing::warn!(
                uid = peer.uid,
                pid = peer.pid,
                action = what,
                refusals_not_logged = held,
                "refused: not an admin"
            );
        }
        Err(ApiError::forbidden(format!(
            "uid {} may not {what}: that takes an admin (api.admin_uids)",
            peer.uid
        )))
    }

    /// The budget of one query or batch: the target's `statement_timeout` caps the deadline
    /// a client asks for.
    fn budget(
        &self,
        target: &TargetHandle,
        timeout_ms: Option<u64>,
        max_rows: Option<usize>,
    ) -> Budget {
        let ceiling = target.settings().pool.statement_timeout;
        let asked = timeout_ms.map(Duration::from_millis);
        let timeout = match (asked, ceiling.is_zero()) {
            (Some(a), false) => Some(a.min(ceiling)),
            (Some(a), true) => Some(a),
            (None, false) => Some(ceiling),
            (None, true) => None,
        };
        Budget::new(
            max_rows.unwrap_or(self.api.max_rows).min(self.api.max_rows),
            self.api.max_response_bytes,
            timeout,
            &self.response_memory,
        )
    }
}

pub async fn health(State(state): State<Arc<ApiState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started.elapsed().as_secs(),
    }))
}

/// Whether every target has a live generation (for any peer: a probe's yes or no), and the
/// state of the targets this peer may use (their reasons name stores and hosts).
pub async fn ready(
    State(state): State<Arc<ApiState>>,
    Extension(info): Extension<PeerInfo>,
) -> Response {
    let targets: Vec<_> = state
        .targets
        .all()
        .iter()
        .filter(|t| {
            info.0
                .as_ref()
                .is_some_and(|peer| state.authorize_quiet(peer, t))
        })
        .map(|t| {
            let s = t.status();
            json!({"name": s.name, "state": s.state, "generation": s.generation.map(|g| g.id), "reason": s.reason})
        })
        .collect();
    let ready = state.targets.all_live();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready, "targets": targets}))).into_response()
}

pub async fn targets(
    State(state): State<Arc<ApiState>>,
    Extension(info): Extension<PeerInfo>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let peer = state.peer(&info)?;
    let list: Vec<_> = state
        .targets
        .all()
        .iter()
        .filter(|t| state.authorize_quiet(&peer, t))
        .map(|t| t.status())
        .collect();
    Ok(Json(json!({ "targets": list })))
}

impl ApiState {
    /// Whether `peer` may see events of the target named `name`, by its access lists now.
    fn may_see(&self, peer: &Peer, name: &str) -> bool {
        self.is_admin(peer)
            || self
                .targets
                .get(name)
                .is_some_and(|t| t.allows(peer).is_some())
    }

    fn authorize_quiet(&self, peer: &Peer, target: &TargetHandle) -> bool {
        self.is_admin(peer) || target.allows(peer).is_some()
    }
}

pub async fn target(
    State(state): State<Arc<ApiState>>,
    Extension(info): Extension<PeerInfo>,
    Path(name): Path<String>,
) -> Result<Json<TargetStatus>, ApiError> {
    let peer = state.peer(&info)?;
    Ok(Json(state.authorize(&peer, &name)?.status()))
}

pub async fn query(
    State(state): State<Arc<ApiState>>,
    Extension(info): Extension<PeerInfo>,
    Path(name): Path<String>,
    http_request: Request,
) -> Result<Response, ApiError> {
    let peer = state.peer(&info)?;
    let target = state.authorize(&peer, &name)?;
    let request: QueryRequest = parse(&read_body(http_request).await?)?;
    let effect = session::effect(&request.sql)?;
    let started = Instant::now();
    let result = async {
        let conn = checkout(&state, &target).await?;
        let mut reuse = session::Reuse::new(&conn);
        let mut budget = state.budget(&target, request.timeout_ms, request.max_rows);
        let result = query::run(
            &conn,
            &request.sql,
            &request.params,
            request.row_format,
            &mut budget,
        )
        .await;
        if let Err(e) = &result {
            query::check_still_writable(&conn, e).await;
        }
        if effect == session::Effect::None && session::leaves_clean(result.as_ref().err()) {
            reuse.keep();
        }
        drop(reuse);
        drop(conn);
        budget.respond(result?)
    }
    .await;
    state.metrics.query(
        &name,
        if result.is_ok() { "ok" } else { "error" },
        started.elapsed(),
    );
    result
}

async fn checkout(state: &ApiState, target: &TargetHandle) -> Result<Checkout, ApiError> {
    let started = Instant::now();
    let result = target.checkout().await;
    let timed_out = matches!(result, Err(CheckoutError::Exhausted { .. }));
    state
        .metrics
        .checkout(target.name(), started.elapsed(), timed_out);
    result.map_err(ApiError::from)
}

pub async fn batch(
    State(state): State<Arc<ApiState>>,
    Extension(info): Extension<PeerInfo>,
    Path(name): Path<String>,
    http_request: Request,
) -> Result<Response, ApiError> {
    let peer = state.peer(&info)?;
    let target = state.authorize(&peer, &name)?;
    let request: BatchRequest = parse(&read_body(http_request).await?)?;
    if request.statements.is_empty() {
        return Err(ApiError::bad_request("statements is empty"));
    }
    if request.statements.len() > state.api.max_batch_statements {
        return Err(ApiError::payload_too_large(format!(
            "the batch has {} statements; at most {} are accepted (api.max_batch_statements)",
            request.statements.len(),
            state.api.max_batch_statements
        )));
    }
    let mut effect = session::Effect::None;
    for (i, s) in request.statements.iter().enumerate() {
        effect = effect.max(session::effect(&s.sql).map_err(|mut e| {
            e.message = format!("statement {i}: {}", e.message);
            e
        })?);
    }
    let started = Instant::now();
    let result = async {
        let conn = checkout(&state, &target).await?;
        let mut reuse = session::Reuse::new(&conn);
        let mut budget = state.budget(&target, request.timeout_ms, None);
        let result = query::run_batch(&conn, &request, &mut budget).await;
        if effect == session::Effect::None
            && session::leaves_clean(result.as_ref().err().map(|(_, e)| e))
        {
            reuse.keep();
        }
        drop(reuse);
        drop(conn);
        let results = result.map_err(|(i, mut e)| {
            e.message = format!(
                "statement {i}: {}{}",
                e.message,
                if request.transaction {
                    " (the transaction was rolled back)"
                } else {
                    ""
                }
            );
            e
        })?;
        budget.respond(BatchAnswer { results })
    }
    .await;
    state.metrics.query(
        &name,
        if result.is_ok() { "ok" } else { "error" },
        started.elapsed(),
    );
    result
}

/// What `/batch` answers.
#[derive(serde::Serialize)]
struct BatchAnswer {
    results: Vec<query::QueryResult>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    #[serde(default)]
    force: bool,
    #[serde(default)]
    wait: bool,
}

pub async fn rotate(
    State(state): State<Arc<ApiState>>,
    Extension(info): Extension<PeerInfo>,
    Path(name): Path<String>,
    http_request: Request,
) -> Result<Response, ApiError> {
    let peer = state.peer(&info)?;
    let target = state.authorize(&peer, &name)?;
    state.require_admin(&peer, "rotate")?;
    let body = read_body(http_request).await?;
    let request: RotateRequest = if body.is_empty() {
        RotateRequest::default()
    } else {
        parse(&body)?
    };
    tracing::info!(uid = peer.uid, pid = peer.pid, target_name = %name, force = request.force, "rotation requested through the API");
    match target
        .rotate(Trigger::Api, request.force, request.wait)
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
    {
        Some(report) => Ok(Json(report).into_response()),
        None => Ok((
            StatusCode::ACCEPTED,
            Json(json!({"accepted": true, "target": name})),
        )
            .into_response()),
    }
}

pub async fn reload(
    State(state): State<Arc<ApiState>>,
    Extension(info): Extension<PeerInfo>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let peer = state.peer(&info)?;
    state.require_admin(&peer, "reload")?;
    let Some(tx) = &state.reload else {
        return Err(ApiError::unavailable("reload is not available"));
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    tx.send(reply)
        .await
        .map_err(|_| ApiError::unavailable("the daemon is shutting down"))?;
    match answer.await {
        Ok(Ok(r)) => Ok(Json(json!({
            "added": r.added, "removed": r.removed, "changed": r.changed, "unchanged": r.unchanged,
            "kept_old": r.kept_old.iter().map(|(n, why)| json!({"target": n, "reason": why})).collect::<Vec<_>>(),
        }))),
        Ok(Err(e)) => Err(ApiError::bad_request(e)),
        Err(_) => Err(ApiError::unavailable("the daemon is shutting down")),
    }
}

pub async fn events(
    State(state): State<Arc<ApiState>>,
    Extension(info): Extension<PeerInfo>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let peer = state.peer(&info)?;
    let rx = state.targets.subscribe();
    // Each event is checked against the target's allow-lists as they are when it happens, and
    // the stream ends when the daemon stops (graceful shutdown would otherwise wait for it).
    let context = (rx, state.clone(), peer, state.shutdown.clone());
    let stream =
        futures_util::stream::unfold(context, |(mut rx, state, peer, mut stop)| async move {
            loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    _ = stop.wait() => return None,
                };
                match received {
                    Ok(event) if state.may_see(&peer, &event.target) => {
                        let name = serde_json::to_value(&event.kind)
                            .ok()
                            .and_then(|v| {
                                v.get("event").and_then(|e| e.as_str()).map(str::to_string)
                            })
                            .unwrap_or_else(|| "event".into());
                        let sse = SseEvent::default()
                            .event(name)
                            .json_data(&event)
                            .unwrap_or_else(|_| {
                                SseEvent::default().comment("unserialisable event")
                            });
                        return Some((Ok(sse), (rx, state, peer, stop)));
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        let sse = SseEvent::default()
                            .event("lagged")
                            .data(format!("{n} events were dropped"));
                        return Some((Ok(sse), (rx, state, peer, stop)));
                    }
                    Err(_) => return None,
                }
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The Prometheus exposition, for admins and `api.metrics_uids` (it names every target).
pub async fn metrics(
    State(state): State<Arc<ApiState>>,
    Extension(info): Extension<PeerInfo>,
) -> Result<Response, ApiError> {
    let peer = state.peer(&info)?;
    if !state.is_admin(&peer) && !state.api.metrics_uids.contains(&peer.uid) {
        return Err(ApiError::forbidden(format!(
            "uid {} may not read /metrics: that takes an admin or a uid in api.metrics_uids",
            peer.uid
        )));
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(&state.targets),
    )
        .into_response())
}

pub async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint; see docs/api.md")
}

pub async fn method_not_allowed() -> ApiError {
    let mut e = ApiError::bad_request("method not allowed on this endpoint");
    e.status = StatusCode::METHOD_NOT_ALLOWED;
    e
}
