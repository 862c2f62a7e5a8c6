//! `POST /v1/cluster/takeover` and `GET /v1/cluster/standby`: the hot standby (issue #16)
//! from the admin plane, through the [`StandbyControl`] the gateway hands over
//! ([`crate::AdminHandle::set_standby`]) when `[cluster.standby]` is configured.
//!
//! Both are for operator tokens only: a takeover moves every tenant's calls, and the
//! status counts every tenant's calls (a tenant-scoped token seeing it would learn about
//! other tenants). A node without a standby answers 409 with why, so keepalived's notify
//! hook (`sbc-edge cluster takeover`) fails loudly on a node set up wrong. The audit line
//! is written by the `/v1` middleware like for every request; the outcome is logged here.
//!
//! Owns: the answer shapes and who may ask. Must not: claim or install anything itself
//! (sbc-cluster does, behind the trait), or hold a lock across the takeover's `.await`.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sbc_core::standby::{StandbyControl, StandbyStatus, TakeoverError, TakeoverSummary};

use crate::api::{json_error, App, Caller};
use crate::config::Role;

/// Where the gateway's standby control is kept once handed over.
#[derive(Default)]
pub(crate) struct Slot(OnceLock<Arc<dyn StandbyControl>>);

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Standby(wired: {})", self.0.get().is_some())
    }
}

impl Slot {
    /// Once: a second call returns false and changes nothing.
    pub(crate) fn set(&self, control: Arc<dyn StandbyControl>) -> bool {
        self.0.set(control).is_ok()
    }

    fn get(&self) -> Option<Arc<dyn StandbyControl>> {
        self.0.get().cloned()
    }
}

/// 409: what [`TakeoverError::NotStandby`] says, for a node without `[cluster.standby]`.
fn not_standby() -> Response {
    json_error(StatusCode::CONFLICT, &TakeoverError::NotStandby.to_string())
}

fn operators_only(what: &str) -> Response {
    json_error(
        StatusCode::FORBIDDEN,
        &format!("{what} needs an operator token"),
    )
}

/// A takeover's outcome as JSON.
pub(crate) fn summary_json(s: &TakeoverSummary) -> serde_json::Value {
    serde_json::json!({
        "claimed": s.claimed,
        "installed": s.installed,
        "refused": s.claimed.saturating_sub(s.installed),
        "duration_ms": s.duration_ms,
    })
}

/// A standby's status as JSON (`peer` null on a node that only replicates its own calls).
pub(crate) fn status_json(s: &StandbyStatus) -> serde_json::Value {
    serde_json::json!({
        "peer": (!s.peer.is_empty()).then_some(s.peer.as_str()),
        "warm_calls": s.warm_calls,
        "lag_ms": s.lag_ms,
        "last_takeover": s.last_takeover.as_ref().map(summary_json),
    })
}

/// `POST /v1/cluster/takeover`: claim and install every call of the peer, now.
pub(crate) async fn takeover(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
) -> Response {
    if token.role != Role::Operator {
        return operators_only("a cluster takeover");
    }
    let Some(control) = app.standby.get() else {
        return not_standby();
    };
    tracing::warn!(event = "takeover_requested", token = %token.id,
        "cluster takeover requested through the admin API");
    match control.take_over().await {
        Ok(summary) => {
            tracing::warn!(
                event = "takeover_done",
                token = %token.id,
                claimed = summary.claimed,
                installed = summary.installed,
                duration_ms = summary.duration_ms,
                "cluster takeover done"
            );
            Json(summary_json(&summary)).into_response()
        }
        Err(TakeoverError::NotStandby) => not_standby(),
        Err(e @ TakeoverError::Store(_)) => {
            tracing::error!(event = "takeover_failed", token = %token.id, error = %e,
                "cluster takeover failed: retry it (the claim is idempotent)");
            json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
    }
}

/// `GET /v1/cluster/standby`: the peer, its calls held warm, the replication lag and the
/// last takeover.
pub(crate) async fn status(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
) -> Response {
    if token.role != Role::Operator {
        return operators_only("the standby status");
    }
    match app.standby.get() {
        Some(control) => Json(status_json(&control.status())).into_response(),
        None => not_standby(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes() {
        let s = TakeoverSummary {
            claimed: 5,
            installed: 4,
            duration_ms: 120,
        };
        assert_eq!(
            summary_json(&s),
            serde_json::json!({"claimed": 5, "installed": 4, "refused": 1, "duration_ms": 120})
        );
        let st = StandbyStatus {
            peer: String::new(),
            warm_calls: 0,
            lag_ms: None,
            last_takeover: None,
        };
        let v = status_json(&st);
        assert!(v["peer"].is_null() && v["lag_ms"].is_null() && v["last_takeover"].is_null());
        let st = StandbyStatus {
            peer: "A".into(),
            warm_calls: 3,
            lag_ms: Some(7),
            last_takeover: Some(s),
        };
        let v = status_json(&st);
        assert_eq!(v["peer"], "A");
        assert_eq!(v["warm_calls"], 3);
        assert_eq!(v["lag_ms"], 7);
        assert_eq!(v["last_takeover"]["installed"], 4);
    }
}
