//! SIPREC recording sessions of a call (RFC 7866), through
//! [`sbc_core::recording::RecordingControl`] (the B2BUA's recording client).
//!
//! | endpoint | token | answers |
//! |---|---|---|
//! | `GET /v1/calls/{id}/recordings` | any | the call's recording sessions, oldest first |
//! | `POST /v1/calls/{id}/recordings/{action}` | operator, recorder | `action` is `start`, `stop`, `pause` or `resume`: 202 queued for the recording client |
//!
//! `GET` answers `{"recordings": [{"recording_id": "16 hex", "srs": "sips:...", "state":
//! "offering"|"recording"|"paused"|"stopped"|"failed", "streams": ["tap id", ...],
//! "started": RFC 3339 or null, "failovers": n}]}`; the streams are also listed, with their
//! counters, by `GET /v1/calls/{id}/taps` (`"recording": true`). `POST` answers 202
//! `{"call": id, "action": action, "queued": true}`: the outcome shows in the `GET` and
//! the audit log. Refusals: 403 for a viewer, 404 for an unknown call or another tenant's
//! (alike) or an unknown action, 409 when the tenant has no `[tenants.recording]`, is in
//! mode `always` (start and stop), or the command does not fit the session's state, 503
//! when the signaling core does not take it, 501 when no recording client is wired
//! ([`crate::AdminState::recordings`] is `None`). Every request is audited, with the
//! call and tenant, like the taps.
//!
//! Owns: these routes' JSON and status mapping. Must not: build SIP or touch media (the
//! command is handed over, never waited for).

use std::time::{Duration, SystemTime};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sbc_core::media::CallRef;
use sbc_core::recording::{RecordingCommand, RecordingError, RecordingStatus};
use serde::Serialize;

use crate::api::{call_listing, json_error, visible_call, with_audit, App, Caller};
use crate::config::Role;

#[derive(Debug, Serialize)]
struct RecordingJson {
    recording_id: String,
    srs: String,
    state: &'static str,
    streams: Vec<String>,
    started: Option<String>,
    failovers: u32,
}

#[derive(Debug, Serialize)]
struct RecordingListJson {
    recordings: Vec<RecordingJson>,
}

fn recording_json(r: &RecordingStatus) -> RecordingJson {
    RecordingJson {
        recording_id: r.id.to_string(),
        srs: r.srs.clone(),
        state: r.state.as_str(),
        streams: r.streams.iter().map(ToString::to_string).collect(),
        started: r
            .started_unix
            .map(|s| sbc_core::time::rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s))),
        failovers: r.failovers,
    }
}

fn unavailable() -> Response {
    json_error(
        StatusCode::NOT_IMPLEMENTED,
        "recording is not available: no recording client (SIPREC) is wired",
    )
}

fn action(name: &str) -> Option<RecordingCommand> {
    [
        RecordingCommand::Start,
        RecordingCommand::Stop,
        RecordingCommand::Pause,
        RecordingCommand::Resume,
    ]
    .into_iter()
    .find(|c| c.as_str() == name)
}

/// What a refused command answers.
fn recording_error(e: &RecordingError) -> Response {
    match e {
        RecordingError::UnknownCall(_) => json_error(StatusCode::NOT_FOUND, "no such call"),
        RecordingError::NotConfigured | RecordingError::NotApiMode => {
            json_error(StatusCode::CONFLICT, &e.to_string())
        }
        RecordingError::WrongState(m) => json_error(StatusCode::CONFLICT, m),
        RecordingError::Unavailable(_) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
        }
        _ => json_error(StatusCode::SERVICE_UNAVAILABLE, "recording command refused"),
    }
}

/// `GET /v1/calls/{id}/recordings`.
pub(crate) async fn list_recordings(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let Some(control) = app.state.recordings.clone() else {
        return unavailable();
    };
    call_listing(&app, &token.role, id.ok().map(|Path(id)| id), |media| {
        let list = media
            .and_then(|m| control.recordings(m))
            .unwrap_or_default();
        RecordingListJson {
            recordings: list.iter().map(recording_json).collect(),
        }
    })
}

/// `POST /v1/calls/{id}/recordings/{action}`.
pub(crate) async fn command_recording(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    if !matches!(token.role, Role::Operator | Role::Recorder(_)) {
        return json_error(
            StatusCode::FORBIDDEN,
            "recording commands need an operator or recorder token",
        );
    }
    let Some(control) = app.state.recordings.clone() else {
        return unavailable();
    };
    let (id, name) = match path {
        Ok(Path((id, name))) => (Some(id), name),
        Err(_) => (None, String::new()),
    };
    let (id, call) = match visible_call(&app, &token.role, id) {
        Ok(c) => c,
        Err(resp) => return *resp,
    };
    let audited = |resp| with_audit(resp, Some(call.tenant.clone()), Some(id.clone()));
    let Some(cmd) = action(&name) else {
        return audited(json_error(
            StatusCode::NOT_FOUND,
            "no such recording action: start, stop, pause or resume",
        ));
    };
    let Some(media) = app.state.registry.media_ref(&id) else {
        return audited(json_error(StatusCode::NOT_FOUND, "no such call"));
    };
    // Synchronous and quick: the recording client only queues the command.
    if let Err(e) = control.command(CallRef(media), cmd) {
        tracing::info!(token = %token.id, tenant = %call.tenant, call = %id,
            action = cmd.as_str(), reason = %e, "recording command refused");
        return audited(recording_error(&e));
    }
    tracing::info!(token = %token.id, tenant = %call.tenant, call = %id,
        action = cmd.as_str(), "recording command queued");
    let body = serde_json::json!({
        "call": id.to_string(),
        "action": cmd.as_str(),
        "queued": true,
    });
    audited((StatusCode::ACCEPTED, Json(body)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sbc_core::recording::{RecordingId, RecordingState};
    use sbc_core::tap::TapId;

    #[test]
    fn actions_and_json() {
        for c in [
            RecordingCommand::Start,
            RecordingCommand::Stop,
            RecordingCommand::Pause,
            RecordingCommand::Resume,
        ] {
            assert_eq!(action(c.as_str()), Some(c));
        }
        assert_eq!(action("Start"), None);
        assert_eq!(action(""), None);
        let j = serde_json::to_value(recording_json(&RecordingStatus {
            id: RecordingId(0xab),
            srs: "sips:srs@rec.example".to_string(),
            state: RecordingState::Paused,
            streams: vec![TapId(1), TapId(2)],
            started_unix: Some(0),
            failovers: 1,
        }))
        .unwrap_or_default();
        assert_eq!(j["recording_id"], "00000000000000ab");
        assert_eq!(j["state"], "paused");
        assert_eq!(j["streams"][1], "0000000000000002");
        assert_eq!(j["started"], "1970-01-01T00:00:00.000Z");
        assert_eq!(j["failovers"], 1);
    }

    #[test]
    fn errors_map_to_statuses() {
        let status = |e: RecordingError| recording_error(&e).status().as_u16();
        assert_eq!(status(RecordingError::UnknownCall(CallRef(1))), 404);
        assert_eq!(status(RecordingError::NotConfigured), 409);
        assert_eq!(status(RecordingError::NotApiMode), 409);
        assert_eq!(status(RecordingError::WrongState("not recording")), 409);
        assert_eq!(status(RecordingError::Unavailable("queue full")), 503);
    }
}
