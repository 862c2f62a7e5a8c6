//! The HTTP endpoints, their authorization and their audit lines.
//!
//! | endpoint | token | answers |
//! |---|---|---|
//! | `GET /healthz` | none | 200 `ok` while the process serves HTTP |
//! | `GET /readyz` | none | 200 `ready` when ready and not draining (saying so when the cluster admits from its local share), else 503 |
//! | `GET /metrics` | none | Prometheus text (no secrets: counters labelled by tenant, direction, reason) |
//! | `GET /v1/calls[?tenant=T]` | any | calls the token may see |
//! | `GET /v1/calls/{id}` | any | one call, 404 if absent or another tenant's |
//! | `GET /v1/tenants/{id}/usage` | any | usage against limits, 404 for another tenant |
//! | `GET /v1/trunks[?tenant=T]` | any | route targets the token may see: priority, weight, up/down, last change, failed pings, quarantine left (501 if not wired) |
//! | `POST /v1/drain` | operator | starts draining (readyz then 503) |
//! | `POST /v1/reload` | operator | the SIGHUP reload, through [`crate::ReloadHook`]: 200 applied, 409 refused, 501 not wired |
//! | `POST /v1/calls/{id}/taps` | operator, recorder | starts a recording tap: 201 with its id (and SRTP key, once) |
//! | `GET /v1/calls/{id}/taps` | any | the call's taps and their counters |
//! | `DELETE /v1/taps/{tap_id}` | operator, recorder | stops a tap: 204 |
//! | `GET /v1/calls/{id}/tap/ws[?legs=&resume_after_ms=]` | operator, recorder | a live tap over a WebSocket (see `ws_tap.rs`) |
//! | `GET /v1/calls/{id}/recordings` | any | the call's SIPREC recording sessions (see `recordings.rs`; 501 if not wired) |
//! | `POST /v1/calls/{id}/recordings/{start,stop,pause,resume}` | operator, recorder | 202: the command is queued for the recording client (see `recordings.rs`) |
//! | `GET /v1/log-level` | any | the log filter in force (501 if `main` wired no control) |
//! | `PUT /v1/log-level` | operator | `{"level": "debug"}` replaces the log filter (see `log_level.rs`) |
//! | `POST /v1/cluster/takeover` | operator | hot standby: claim and install the peer's calls now; the summary (see `standby.rs`; 409 when not a standby, 503 when Redis does not answer) |
//! | `GET /v1/cluster/standby` | operator | hot standby: peer, calls held warm, replication lag, last takeover (409 when not a standby) |
//!
//! Taps answer 501 when no media relay is wired ([`AdminState::taps`] is `None`). A
//! recorder token reaches only its tenant's calls and taps; another tenant's look like none
//! (404). A viewer may list taps but not start or stop them (403). A tap's SRTP key is in
//! the 201 answer only: never in a later answer, a log line or the audit log.
//!
//! Every `/v1` request, allowed or not, writes one audit line before its answer leaves; if
//! the line cannot be written the answer is a 500 instead. A tenant-scoped token asking for
//! another tenant's call or usage gets the same 404 as for one that does not exist.
//!
//! Must not: hold a lock across an `.await` (the registry and audit locks are taken and
//! released inside synchronous calls), put a token or a SIP Call-ID in an answer or log.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use sbc_core::media::CallRef;
use sbc_core::registry::{CallId, CallSnapshot};
use sbc_core::tap::{
    TapControl, TapError, TapId, TapLegs, TapSpec, TapStatus, TapSuite, TapTransport,
};
use sbc_core::tenant::TenantId;
use sbc_core::trunks::{TrunkBoard, TrunkStatus};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{error, warn};

use crate::audit::AuditEntry;
use crate::auth::{authenticate, AuthFailure};
use crate::config::{Role, TokenEntry};
use crate::AdminState;

/// Longest call id looked up; registry ids are 16 characters.
const MAX_CALL_ID_LEN: usize = 64;

/// The settings a reload replaces (SIGHUP): the tokens and number masking.
#[derive(Debug)]
pub(crate) struct Live {
    pub(crate) tokens: Vec<TokenEntry>,
    pub(crate) redact_numbers: bool,
}

/// What the router shares between requests.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) state: AdminState,
    /// Swapped whole by a reload; read by cloning the `Arc` (the lock is never held
    /// across an `.await`).
    pub(crate) live: RwLock<Arc<Live>>,
    /// Bounds the WebSocket taps open at once.
    pub(crate) ws_taps: Arc<Semaphore>,
    /// The process's log filter, once `main` hands its control over.
    pub(crate) log_level: crate::log_level::Slot,
    /// What `POST /v1/reload` runs; set once by [`crate::AdminHandle::on_reload`].
    pub(crate) reload: ReloadSlot,
    /// Route targets' health; set once by [`crate::AdminHandle::set_trunk_board`].
    pub(crate) trunks: std::sync::OnceLock<Arc<TrunkBoard>>,
    /// Cluster admission (`[cluster]`); set once by [`crate::AdminHandle::set_cluster`].
    pub(crate) cluster: ClusterSlot,
    /// The hot standby (`[cluster.standby]`); set once by [`crate::AdminHandle::set_standby`].
    pub(crate) standby: crate::standby::Slot,
}

/// Where the cluster view is kept.
#[derive(Default)]
pub(crate) struct ClusterSlot(
    pub(crate) std::sync::OnceLock<Arc<dyn sbc_core::cluster::ClusterInfo>>,
);

impl std::fmt::Debug for ClusterSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSlot(wired: {})", self.0.get().is_some())
    }
}

/// Where the reload hook is kept (a `Debug` wrapper around it).
#[derive(Default)]
pub(crate) struct ReloadSlot(pub(crate) std::sync::OnceLock<crate::ReloadHook>);

impl std::fmt::Debug for ReloadSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReloadSlot(wired: {})", self.0.get().is_some())
    }
}

impl Shared {
    pub(crate) fn new(state: AdminState, live: Live) -> Shared {
        Shared {
            state,
            live: RwLock::new(Arc::new(live)),
            ws_taps: Arc::new(Semaphore::new(crate::ws_tap::MAX_WS_TAPS)),
            log_level: crate::log_level::Slot::default(),
            reload: ReloadSlot::default(),
            trunks: std::sync::OnceLock::new(),
            cluster: ClusterSlot::default(),
            standby: crate::standby::Slot::default(),
        }
    }

    /// The current tokens and masking.
    pub(crate) fn live(&self) -> Arc<Live> {
        // Replaced whole under the lock, so a poisoned one still holds a whole value.
        Arc::clone(&self.live.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the tokens and masking; requests already authenticated finish as they are.
    pub(crate) fn replace_live(&self, live: Live) {
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(live);
    }

    pub(crate) fn redact_numbers(&self) -> bool {
        self.live().redact_numbers
    }
}

pub(crate) type App = Arc<Shared>;

/// The authenticated caller, put into request extensions by [`authorize_and_audit`].
#[derive(Debug, Clone)]
pub(crate) struct Caller(pub(crate) TokenEntry);

/// What a `/v1` answer was about, put into response extensions for the audit line.
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditInfo {
    pub(crate) tenant: Option<TenantId>,
    pub(crate) call: Option<CallId>,
}

pub(crate) fn router(app: App) -> Router {
    let v1 = Router::new()
        .route("/v1/calls", get(list_calls))
        .route("/v1/calls/{id}", get(get_call))
        .route("/v1/tenants/{id}/usage", get(tenant_usage))
        .route("/v1/trunks", get(list_trunks))
        .route("/v1/drain", post(drain))
        .route("/v1/reload", post(reload))
        .route("/v1/calls/{id}/taps", get(list_taps).post(start_tap))
        .route("/v1/taps/{tap_id}", delete(stop_tap))
        .route("/v1/calls/{id}/tap/ws", get(crate::ws_tap::tap_ws))
        .route(
            "/v1/calls/{id}/recordings",
            get(crate::recordings::list_recordings),
        )
        .route(
            "/v1/calls/{id}/recordings/{action}",
            post(crate::recordings::command_recording),
        )
        .route(
            "/v1/log-level",
            get(crate::log_level::get_level).put(crate::log_level::set_level),
        )
        .route("/v1/cluster/takeover", post(crate::standby::takeover))
        .route("/v1/cluster/standby", get(crate::standby::status))
        .route_layer(middleware::from_fn_with_state(
            app.clone(),
            authorize_and_audit,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(v1)
        .fallback(not_found)
        .layer(middleware::from_fn(count_requests))
        .with_state(app)
}

pub(crate) fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

pub(crate) fn with_audit(
    mut resp: Response,
    tenant: Option<TenantId>,
    call: Option<CallId>,
) -> Response {
    resp.extensions_mut().insert(AuditInfo { tenant, call });
    resp
}

async fn not_found() -> Response {
    json_error(StatusCode::NOT_FOUND, "no such endpoint")
}

/// `sbc_admin_requests_total{endpoint, status}`: endpoint is the route template (bounded),
/// never the concrete path (which holds call and tenant ids).
async fn count_requests(req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let resp = next.run(req).await;
    metrics::counter!(
        "sbc_admin_requests_total",
        "endpoint" => endpoint,
        "status" => resp.status().as_u16().to_string()
    )
    .increment(1);
    resp
}

/// Authenticate the bearer token, run the handler, write the audit line.
async fn authorize_and_audit(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let caller = authenticate(&app.live().tokens, presented).cloned();
    let (resp, token) = match caller {
        Err(failure) => {
            metrics::counter!("sbc_admin_auth_failures_total", "reason" => failure.as_str())
                .increment(1);
            (unauthorized(failure), None)
        }
        Ok(entry) => {
            req.extensions_mut().insert(Caller(entry.clone()));
            (next.run(req).await, Some(entry))
        }
    };
    let info = resp
        .extensions()
        .get::<AuditInfo>()
        .cloned()
        .unwrap_or_default();
    let status = resp.status().as_u16();
    if audit(&app, token.as_ref(), info, method, path, status) {
        resp
    } else {
        json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "audit log unavailable; nothing was served",
        )
    }
}

/// Writes one audit line; false (logged and counted) if it could not be written.
pub(crate) fn audit(
    app: &Shared,
    token: Option<&TokenEntry>,
    info: AuditInfo,
    method: String,
    path: String,
    status: u16,
) -> bool {
    let entry = AuditEntry {
        time: SystemTime::now(),
        token: token.map(|t| t.id.clone()),
        role: token.map(|t| t.role.name()),
        token_tenant: token.and_then(|t| t.role.tenant()).map(|t| t.to_string()),
        tenant: info.tenant.map(|t| t.to_string()),
        call: info.call.map(|c| c.to_string()),
        method,
        path,
        status,
    };
    // Synchronous: the audit mutex is taken and released inside `record`.
    match app.state.audit.record(&entry) {
        Ok(()) => true,
        Err(e) => {
            error!(error = %e, "audit log write failed");
            metrics::counter!("sbc_admin_audit_failures_total").increment(1);
            false
        }
    }
}

fn unauthorized(failure: AuthFailure) -> Response {
    let mut resp = json_error(
        StatusCode::UNAUTHORIZED,
        match failure {
            AuthFailure::Missing => "bearer token required",
            AuthFailure::Malformed => "malformed Authorization header; expected `Bearer <token>`",
            AuthFailure::Unknown => "invalid token",
        },
    );
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"sbc-admin\""),
    );
    resp
}

async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
        .into_response()
}

async fn readyz(State(app): State<App>) -> Response {
    let drain = &app.state.drain;
    let (status, text) = if drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if !drain.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    } else if app.cluster.0.get().is_some_and(|c| c.status().fallback) {
        // Still serving: admission uses this node's share of each limit.
        (
            StatusCode::OK,
            "ready (cluster: Redis not answering, admitting from this node's local share)\n",
        )
    } else {
        (StatusCode::OK, "ready\n")
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn metrics_text(State(app): State<App>) -> Response {
    // CPU, memory, descriptors and threads as of this scrape (reads /proc/self; cheap).
    crate::process_metrics().collect();
    let body = app.state.prometheus.render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

// ---- call data ----

#[derive(Debug, Serialize)]
struct LegJson {
    direction: &'static str,
    packets_received: u64,
    packets_sent: u64,
    packets_lost: u64,
}

#[derive(Debug, Serialize)]
struct CallJson {
    id: String,
    tenant: String,
    start: String,
    state: &'static str,
    caller: String,
    callee: String,
    legs: Vec<LegJson>,
}

#[derive(Debug, Serialize)]
struct CallListJson {
    calls: Vec<CallJson>,
}

/// A phone number with its middle hidden: `+15551234534` → `+1555****34`. The mask has a
/// fixed width, so the number's length is hidden too. E.164-length numbers (11 characters
/// or more) keep 5 leading and 2 trailing characters, 8 to 10 characters keep 3 and 2 (so
/// at least 3 stay hidden), shorter ones (extensions) are masked whole.
pub fn mask_number(number: &str) -> String {
    let chars: Vec<char> = number.chars().collect();
    let keep = match chars.len() {
        0..=7 => return "****".to_string(),
        8..=10 => 3,
        _ => 5,
    };
    let head: String = chars[..keep].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{head}****{tail}")
}

fn call_json(c: &CallSnapshot, redact: bool) -> CallJson {
    let number = |n: &str| {
        if redact {
            mask_number(n)
        } else {
            n.to_string()
        }
    };
    CallJson {
        id: c.id.to_string(),
        tenant: c.tenant.to_string(),
        start: sbc_core::time::rfc3339(c.start),
        state: c.state.as_str(),
        caller: number(&c.caller),
        callee: number(&c.callee),
        legs: c
            .legs
            .iter()
            .map(|l| LegJson {
                direction: l.direction.as_str(),
                packets_received: l.counters.packets_received,
                packets_sent: l.counters.packets_sent,
                packets_lost: l.counters.packets_lost,
            })
            .collect(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    tenant: Option<String>,
}

/// The tenant a request may be answered for: the one asked for if the caller may see it and
/// it is configured, else `None` (a 404, same as for a tenant that does not exist).
fn visible_tenant(app: &Shared, role: &Role, asked: &str) -> Option<TenantId> {
    let tenant = TenantId::from(asked);
    (role.may_see(&tenant) && app.state.tenants.contains(&tenant)).then_some(tenant)
}

/// The tenant a list (`/v1/calls`, `/v1/trunks`) is scoped to: `?tenant=` if the caller may
/// see it, else the caller's own tenant (`None`: every tenant, for operators); 400 for any
/// other query parameter, 404 for a tenant the caller may not see.
fn list_scope(
    app: &Shared,
    role: &Role,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Option<TenantId>, Box<Response>> {
    let Ok(Query(query)) = query else {
        return Err(Box::new(json_error(
            StatusCode::BAD_REQUEST,
            "the only query parameter is `tenant`",
        )));
    };
    match (&query.tenant, role.tenant()) {
        (Some(asked), _) => visible_tenant(app, role, asked)
            .map(Some)
            .ok_or_else(|| Box::new(json_error(StatusCode::NOT_FOUND, "no such tenant"))),
        (None, own) => Ok(own.cloned()),
    }
}

async fn list_calls(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let scope = match list_scope(&app, &token.role, query) {
        Ok(scope) => scope,
        Err(refused) => return *refused,
    };
    // `snapshot` copies under the registry lock and releases it before returning.
    let calls = app.state.registry.snapshot(scope.as_ref());
    let body = CallListJson {
        calls: calls
            .iter()
            .map(|c| call_json(c, app.redact_numbers()))
            .collect(),
    };
    with_audit(Json(body).into_response(), scope, None)
}

#[derive(Debug, Serialize)]
struct TrunkJson {
    tenant: String,
    target: String,
    priority: u16,
    weight: u16,
    state: &'static str,
    health_checks: bool,
    last_change: Option<String>,
    consecutive_failures: u32,
    quarantine_remaining_secs: u64,
}

#[derive(Debug, Serialize)]
struct TrunkListJson {
    trunks: Vec<TrunkJson>,
}

fn trunk_json(t: &TrunkStatus, now: SystemTime) -> TrunkJson {
    let remaining = t
        .quarantined_until
        .and_then(|u| u.duration_since(now).ok())
        .map_or(0, |d| d.as_secs_f64().ceil() as u64);
    TrunkJson {
        tenant: t.tenant.to_string(),
        target: t.target.clone(),
        priority: t.priority,
        weight: t.weight,
        state: if t.up { "up" } else { "down" },
        health_checks: t.checked,
        last_change: t.last_change.map(sbc_core::time::rfc3339),
        consecutive_failures: t.consecutive_failures,
        quarantine_remaining_secs: remaining,
    }
}

/// `GET /v1/trunks`: route targets scoped like `/v1/calls` (a tenant token sees its own).
async fn list_trunks(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let scope = match list_scope(&app, &token.role, query) {
        Ok(scope) => scope,
        Err(refused) => return *refused,
    };
    let Some(board) = app.trunks.get() else {
        return with_audit(
            json_error(StatusCode::NOT_IMPLEMENTED, "trunk health is not wired"),
            scope,
            None,
        );
    };
    let now = SystemTime::now();
    let body = TrunkListJson {
        trunks: board
            .snapshot(scope.as_ref())
            .iter()
            .map(|t| trunk_json(t, now))
            .collect(),
    };
    with_audit(Json(body).into_response(), scope, None)
}

async fn get_call(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(id)) = id else {
        return json_error(StatusCode::NOT_FOUND, "no such call");
    };
    if id.len() > MAX_CALL_ID_LEN {
        return json_error(StatusCode::NOT_FOUND, "no such call");
    }
    let id = CallId::from(id.as_str());
    match app.state.registry.get(&id) {
        Some(call) if token.role.may_see(&call.tenant) => {
            let tenant = call.tenant.clone();
            with_audit(
                Json(call_json(&call, app.redact_numbers())).into_response(),
                Some(tenant),
                Some(id),
            )
        }
        // Another tenant's call looks exactly like no call. The audit line (operators only)
        // still records whose call was asked for.
        found => with_audit(
            json_error(StatusCode::NOT_FOUND, "no such call"),
            found.map(|c| c.tenant),
            Some(id),
        ),
    }
}

#[derive(Debug, Serialize)]
struct LimitsJson {
    calls_per_second: f64,
    call_burst: u32,
    max_concurrent_calls: u32,
    max_pending_invites: u32,
    requests_per_second_per_connection: f64,
}

#[derive(Debug, Serialize)]
struct UsageJson {
    tenant: String,
    active_calls: u32,
    pending_invites: u32,
    admitted_total: u64,
    refused_total: u64,
    limits: LimitsJson,
    /// With `[cluster]`: the tenant's calls on every node and this node's share.
    #[serde(skip_serializing_if = "Option::is_none")]
    cluster: Option<ClusterUsageJson>,
}

#[derive(Debug, Serialize)]
struct ClusterUsageJson {
    /// Live calls on every node, from Redis (null when Redis does not answer).
    active_calls: Option<u32>,
    /// This node's calls among them.
    node_active_calls: u32,
    /// Live media streams (leased at call admission) on every node, from Redis (null
    /// when Redis does not answer).
    media_streams: Option<u32>,
    /// This node's streams among them.
    node_media_streams: u32,
    live_nodes: u32,
    /// True while Redis does not answer (admission by local share).
    fallback: bool,
    /// `max_concurrent_calls / live_nodes`: what this node may hold in a fallback
    /// (less when other nodes held more than theirs when Redis went away).
    node_share_max_concurrent_calls: u32,
}

async fn tenant_usage(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(asked)) = id else {
        return json_error(StatusCode::NOT_FOUND, "no such tenant");
    };
    let Some(tenant) = visible_tenant(&app, &token.role, &asked) else {
        return json_error(StatusCode::NOT_FOUND, "no such tenant");
    };
    let Some(u) = (app.state.usage)(&tenant) else {
        return with_audit(
            json_error(StatusCode::NOT_FOUND, "no such tenant"),
            Some(tenant),
            None,
        );
    };
    let body = UsageJson {
        tenant: tenant.to_string(),
        active_calls: u.active_calls,
        pending_invites: u.pending_invites,
        admitted_total: u.admitted_total,
        refused_total: u.refused_total,
        limits: LimitsJson {
            calls_per_second: u.limits.calls_per_second,
            call_burst: u.limits.call_burst,
            max_concurrent_calls: u.limits.max_concurrent_calls,
            max_pending_invites: u.limits.max_pending_invites,
            requests_per_second_per_connection: u.limits.requests_per_second_per_connection,
        },
        cluster: None,
    };
    let mut body = body;
    if let Some(c) = app.cluster.0.get() {
        let status = c.status();
        let counts = c.cluster_counts(&tenant).await;
        body.cluster = Some(ClusterUsageJson {
            active_calls: counts.map(|n| n.calls),
            node_active_calls: c.node_calls(&tenant),
            media_streams: counts.map(|n| n.streams),
            node_media_streams: c.node_streams(&tenant),
            live_nodes: status.live_nodes,
            fallback: status.fallback,
            node_share_max_concurrent_calls: sbc_core::cluster::share_of(
                u.limits.max_concurrent_calls,
                status.live_nodes,
            ),
        });
    }
    with_audit(Json(body).into_response(), Some(tenant), None)
}

async fn drain(State(app): State<App>, Extension(Caller(token)): Extension<Caller>) -> Response {
    if token.role != Role::Operator {
        return json_error(StatusCode::FORBIDDEN, "drain needs an operator token");
    }
    let started = app.state.drain.start_drain();
    if started {
        warn!(token = %token.id, "drain started through the admin API");
    }
    (
        StatusCode::OK,
        Json(serde_json::json!({ "draining": true, "already_draining": !started })),
    )
        .into_response()
}

/// `POST /v1/reload`: what SIGHUP does, for operators; the answer says what happened.
async fn reload(State(app): State<App>, Extension(Caller(token)): Extension<Caller>) -> Response {
    if token.role != Role::Operator {
        return json_error(StatusCode::FORBIDDEN, "reload needs an operator token");
    }
    let Some(hook) = app.reload.0.get().cloned() else {
        return json_error(
            StatusCode::NOT_IMPLEMENTED,
            "reload is not available on this gateway",
        );
    };
    warn!(token = %token.id, "reload requested through the admin API");
    match hook().await {
        Ok(detail) => (
            StatusCode::OK,
            Json(serde_json::json!({ "reloaded": true, "detail": detail })),
        )
            .into_response(),
        Err(reason) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "reloaded": false, "error": reason })),
        )
            .into_response(),
    }
}

// ---- recording taps ----

/// Largest tap request body: the four fields fit in well under 512 bytes.
const MAX_TAP_BODY: usize = 4096;
/// Longest `destination` looked at: a DNS name (253) plus `:port`.
const MAX_DESTINATION_LEN: usize = 260;
/// How long a `destination` name may take to resolve.
const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TapRequest {
    legs: String,
    transport: String,
    suite: Option<String>,
    destination: String,
}

#[derive(Debug, Serialize)]
struct TapJson {
    tap_id: String,
    legs: &'static str,
    transport: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    suite: Option<&'static str>,
    destination: String,
    packets_sent: u64,
    packets_dropped: u64,
    /// A stream of a SIPREC recording session (see `recordings.rs`): `DELETE
    /// /v1/taps/{tap_id}` does not stop it (404); the recording commands do.
    recording: bool,
    paused: bool,
}

#[derive(Debug, Serialize)]
struct TapListJson {
    taps: Vec<TapJson>,
}

fn tap_json(t: &TapStatus) -> TapJson {
    TapJson {
        tap_id: t.id.to_string(),
        legs: t.legs.as_str(),
        transport: t.transport.as_str(),
        suite: t.transport.suite().map(TapSuite::as_str),
        destination: t.destination.to_string(),
        packets_sent: t.packets_sent,
        packets_dropped: t.packets_dropped,
        recording: t.recording,
        paused: t.paused,
    }
}

fn taps_unavailable() -> Response {
    json_error(
        StatusCode::NOT_IMPLEMENTED,
        "recording taps are not available: the media relay is off",
    )
}

fn may_change_taps(role: &Role) -> bool {
    matches!(role, Role::Operator | Role::Recorder(_))
}

/// The call a tap request names, if the caller may see it; else the 404 to answer.
fn tap_call(
    app: &Shared,
    role: &Role,
    id: Result<Path<String>, PathRejection>,
) -> Result<(CallId, CallSnapshot), Box<Response>> {
    visible_call(app, role, id.ok().map(|Path(id)| id))
}

/// The call `id` names (`None`: the path did not parse), if the caller may see it; else
/// the 404 to answer, alike for another tenant's call (its audit line says whose).
pub(crate) fn visible_call(
    app: &Shared,
    role: &Role,
    id: Option<String>,
) -> Result<(CallId, CallSnapshot), Box<Response>> {
    let no_call = || json_error(StatusCode::NOT_FOUND, "no such call");
    let Some(id) = id else {
        return Err(Box::new(no_call()));
    };
    if id.len() > MAX_CALL_ID_LEN {
        return Err(Box::new(no_call()));
    }
    let id = CallId::from(id.as_str());
    match app.state.registry.get(&id) {
        Some(call) if role.may_see(&call.tenant) => Ok((id, call)),
        // Another tenant's call looks exactly like no call; the audit line says whose.
        found => Err(Box::new(with_audit(
            no_call(),
            found.map(|c| c.tenant),
            Some(id),
        ))),
    }
}

/// The request body as a tap spec, or what is wrong with it.
async fn tap_spec(body: &[u8]) -> Result<TapSpec, String> {
    if body.len() > MAX_TAP_BODY {
        return Err(format!("body larger than {MAX_TAP_BODY} bytes"));
    }
    let req: TapRequest = serde_json::from_slice(body).map_err(|e| {
        format!(
            "expected {{\"legs\": \"both\"|\"caller\"|\"callee\", \"transport\": \"rtp\"|\"srtp\", \
             \"suite\": (srtp only), \"destination\": \"host:port\"}}: {e}"
        )
    })?;
    let legs: TapLegs = req.legs.parse().map_err(|e: TapError| e.to_string())?;
    let transport = match (req.transport.as_str(), req.suite.as_deref()) {
        ("rtp", None) => TapTransport::Rtp,
        ("rtp", Some(_)) => return Err("suite is for transport \"srtp\" only".to_string()),
        ("srtp", None) => TapTransport::Srtp(TapSuite::AesCm128HmacSha1_80),
        ("srtp", Some(s)) => TapTransport::Srtp(s.parse().map_err(|e: TapError| e.to_string())?),
        _ => return Err("transport must be \"rtp\" or \"srtp\"".to_string()),
    };
    let destination = resolve_destination(&req.destination).await?;
    Ok(TapSpec {
        legs,
        transport,
        destination,
    })
}

/// `ip:port`, `[ipv6]:port`, or `name:port` (resolved, first address).
async fn resolve_destination(dest: &str) -> Result<std::net::SocketAddr, String> {
    if dest.len() > MAX_DESTINATION_LEN {
        return Err("destination too long".to_string());
    }
    let addr = match dest.parse::<std::net::SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let Some((host, port)) = dest.rsplit_once(':') else {
                return Err("destination must be host:port".to_string());
            };
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err("destination must be host:port".to_string());
            }
            let found = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(dest))
                .await
                .map_err(|_| "destination does not resolve in time".to_string())?
                .map_err(|_| "destination does not resolve".to_string())?
                .next();
            found.ok_or_else(|| "destination does not resolve".to_string())?
        }
    };
    if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err("destination must be a unicast address with a non-zero port".to_string());
    }
    Ok(addr)
}

/// A tap about to be started on a call, once the checks shared by `POST .../taps` and
/// the WebSocket tap have passed.
pub(crate) struct TapStart {
    pub(crate) taps: Arc<dyn TapControl>,
    pub(crate) id: CallId,
    pub(crate) tenant: TenantId,
}

impl TapStart {
    /// A role that may start taps (else 403 saying `forbidden`), a media relay (else 501)
    /// and a call the caller may see (else 404, which looks the same for another
    /// tenant's call).
    pub(crate) fn check(
        app: &Shared,
        role: &Role,
        id: Result<Path<String>, PathRejection>,
        forbidden: &str,
    ) -> Result<TapStart, Box<Response>> {
        if !may_change_taps(role) {
            return Err(Box::new(json_error(StatusCode::FORBIDDEN, forbidden)));
        }
        let Some(taps) = app.state.taps.clone() else {
            return Err(Box::new(taps_unavailable()));
        };
        let (id, call) = tap_call(app, role, id)?;
        Ok(TapStart {
            taps,
            id,
            tenant: call.tenant,
        })
    }

    /// The call's media, as the relay numbers it; 409 when it has none (not answered
    /// yet, or ended).
    pub(crate) fn media(&self, app: &Shared) -> Result<CallRef, Box<Response>> {
        app.state
            .registry
            .media_ref(&self.id)
            .map(CallRef)
            .ok_or_else(|| Box::new(no_media()))
    }

    /// `resp`, marked for the audit line with this call and tenant.
    pub(crate) fn audited(&self, resp: Response) -> Response {
        with_audit(resp, Some(self.tenant.clone()), Some(self.id.clone()))
    }
}

/// 409: the call is known but its media is not (yet, or any more).
fn no_media() -> Response {
    json_error(
        StatusCode::CONFLICT,
        "the call has no media to tap (not answered yet, or ended)",
    )
}

pub(crate) fn tap_error(e: &TapError) -> Response {
    match e {
        TapError::UnknownCall(_) | TapError::NoMedia(_) => no_media(),
        TapError::TooMany { .. } => json_error(StatusCode::CONFLICT, &e.to_string()),
        TapError::Invalid(m) => json_error(StatusCode::BAD_REQUEST, m),
        _ => json_error(StatusCode::SERVICE_UNAVAILABLE, "tap could not be started"),
    }
}

async fn start_tap(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Response {
    let start = match TapStart::check(
        &app,
        &token.role,
        id,
        "starting a tap needs an operator or recorder token",
    ) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let spec = match tap_spec(&body).await {
        Ok(s) => s,
        Err(msg) => return start.audited(json_error(StatusCode::BAD_REQUEST, &msg)),
    };
    let call = match start.media(&app) {
        Ok(c) => c,
        Err(resp) => return start.audited(*resp),
    };
    // Synchronous and quick: the media side only records the tap and tells a worker.
    let info = match start.taps.start_tap(call, spec) {
        Ok(i) => i,
        Err(e) => return start.audited(tap_error(&e)),
    };
    let (tenant, id) = (&start.tenant, &start.id);
    tracing::info!(token = %token.id, tenant = %tenant, call = %id, tap = %info.id,
        legs = spec.legs.as_str(), transport = spec.transport.as_str(), "recording tap started");
    let mut body = serde_json::json!({
        "tap_id": info.id.to_string(),
        "legs": spec.legs.as_str(),
        "transport": spec.transport.as_str(),
        "destination": spec.destination.to_string(),
    });
    if let Some(suite) = spec.transport.suite() {
        body["suite"] = suite.as_str().into();
    }
    if let Some(key) = &info.key {
        body["key"] = key.expose().into();
    }
    start.audited((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_taps(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(taps) = app.state.taps.clone() else {
        return taps_unavailable();
    };
    call_listing(&app, &token.role, id.ok().map(|Path(id)| id), |media| {
        let list = media.map(|m| taps.list_taps(m)).unwrap_or_default();
        TapListJson {
            taps: list.iter().map(tap_json).collect(),
        }
    })
}

/// A listing about one call (its taps, its recordings): the call the caller may see
/// (else the 404 of [`visible_call`]), `list` run on the call's media number (`None`
/// before it has one), the answer audited with the call and its tenant.
pub(crate) fn call_listing<T: Serialize>(
    app: &Shared,
    role: &Role,
    id: Option<String>,
    list: impl FnOnce(Option<CallRef>) -> T,
) -> Response {
    let (id, call) = match visible_call(app, role, id) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let body = list(app.state.registry.media_ref(&id).map(CallRef));
    with_audit(Json(body).into_response(), Some(call.tenant), Some(id))
}

async fn stop_tap(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
    tap: Result<Path<String>, PathRejection>,
) -> Response {
    if !may_change_taps(&token.role) {
        return json_error(
            StatusCode::FORBIDDEN,
            "stopping a tap needs an operator or recorder token",
        );
    }
    let Some(taps) = app.state.taps.clone() else {
        return taps_unavailable();
    };
    let no_tap = || json_error(StatusCode::NOT_FOUND, "no such tap");
    let Some(tap) = tap.ok().and_then(|Path(t)| t.parse::<TapId>().ok()) else {
        return no_tap();
    };
    let Some(owner) = taps.tap_owner(tap) else {
        return no_tap();
    };
    let call = app.state.registry.find_by_media_ref(owner.call.0);
    if !token.role.may_see(&owner.tenant) {
        return with_audit(no_tap(), Some(owner.tenant), call);
    }
    if !taps.stop_tap(tap) {
        // Stopped meanwhile (another request, or the call ended).
        return with_audit(no_tap(), Some(owner.tenant), call);
    }
    tracing::info!(token = %token.id, tenant = %owner.tenant, %tap, "recording tap stopped");
    with_audit(
        StatusCode::NO_CONTENT.into_response(),
        Some(owner.tenant),
        call,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(mask_number("+15551234534"), "+1555****34");
        assert_eq!(mask_number("+442071234567"), "+4420****67");
        assert_eq!(mask_number("12345678"), "123****78");
        assert_eq!(mask_number("5551234567"), "555****67");
        assert_eq!(mask_number("1234567"), "****");
        assert_eq!(mask_number("1001"), "****");
        assert_eq!(mask_number(""), "****");
        // Multi-byte characters do not split.
        assert_eq!(mask_number("ééééééééé"), "ééé****éé");
    }
}
