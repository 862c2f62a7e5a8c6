//! `GET` and `PUT /v1/log-level`: the process's log filter, read by any token and changed
//! by operators, through the [`LogLevelControl`] that `main` hands over
//! ([`crate::AdminHandle::set_log_level_control`]). Without one both answer 501.
//!
//! Owns: the request and answer shapes and who may change the level. Must not: touch the
//! log subscriber itself (it is `main`'s), or log the token (only its id).

use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sbc_core::config::{valid_log_filter, MAX_LOG_FILTER_LEN};
use sbc_core::reload::LogLevelControl;
use serde::Deserialize;

use crate::api::{json_error, App, Caller};
use crate::config::Role;

/// Largest request body: the filter itself plus `{"level":""}`.
const MAX_BODY: usize = MAX_LOG_FILTER_LEN + 64;

/// Where `main`'s [`LogLevelControl`] is kept once handed over.
#[derive(Default)]
pub(crate) struct Slot(RwLock<Option<Arc<dyn LogLevelControl>>>);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.get().is_some() {
            "LogLevel(wired)"
        } else {
            "LogLevel(none)"
        })
    }
}

impl Slot {
    pub(crate) fn set(&self, control: Arc<dyn LogLevelControl>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(control);
    }

    fn get(&self) -> Option<Arc<dyn LogLevelControl>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLevelRequest {
    level: String,
}

fn unavailable() -> Response {
    json_error(
        StatusCode::NOT_IMPLEMENTED,
        "the log level cannot be changed in this process",
    )
}

/// `GET /v1/log-level`: any token.
pub(crate) async fn get_level(State(app): State<App>) -> Response {
    match app.log_level.get() {
        Some(c) => Json(serde_json::json!({ "level": c.current() })).into_response(),
        None => unavailable(),
    }
}

/// `PUT /v1/log-level` with `{"level": "debug"}`: operators only.
pub(crate) async fn set_level(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
    body: Bytes,
) -> Response {
    if token.role != Role::Operator {
        return json_error(
            StatusCode::FORBIDDEN,
            "changing the log level needs an operator token",
        );
    }
    let Some(control) = app.log_level.get() else {
        return unavailable();
    };
    if body.len() > MAX_BODY {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!("body larger than {MAX_BODY} bytes"),
        );
    }
    let req: LogLevelRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"level\": \"<filter>\"}}: {e}"),
            )
        }
    };
    if !valid_log_filter(&req.level) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "`level` must be a log filter such as `debug` or `sbc_sip=debug,info`",
        );
    }
    let previous = control.current();
    if let Err(e) = control.set(&req.level) {
        return json_error(StatusCode::BAD_REQUEST, &e);
    }
    // Logged at warn so the change shows whatever the new level is.
    tracing::warn!(event = "log_level_changed", token = %token.id, from = %previous,
        to = %req.level, "log level changed through the admin API");
    Json(serde_json::json!({ "level": req.level, "previous": previous })).into_response()
}
