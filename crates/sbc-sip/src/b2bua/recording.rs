//! The SIPREC recording client (SRC, RFC 7866): per recorded call, one recording session
//! at a time with a recording server (SRS): its SIP dialog (a [`Leg`]: Call-ID, tags,
//! CSeq, remote target, route set), the transaction in flight and its deadline, the
//! recorded streams (prepared by media as taps, [`TapId`]), the SRS target tried, the SDP
//! and metadata versions; and the call's earlier sessions for the admin plane.
//!
//! When: `always` tenants start when the caller's offer has been through media (the
//! initial INVITE relayed); with `on_failure = "required"` the callee's INVITE is held
//! until an SRS accepted, and the call is refused 503 if none does within the deadline.
//! `api` tenants start and stop from the admin plane ([`Input::Recording`]).
//!
//! Owns: [`Recordings`] (the table), [`Recorder`] (a tenant's settings with its SRS
//! targets), [`RecordingBoard`] (the status table the admin plane reads), the failure
//! reasons. Must not: build body text (`crate::siprec` does), touch media beyond the
//! [`RecordingMedia`] calls, or end the call because of its recording (only the
//! `required` refusal during setup does), or log key material.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sbc_core::config::{RecordingMode, RecordingSettings};
use sbc_core::media::{CallRef, LegSide};
use sbc_core::recording::{
    RecordingCommand, RecordingId, RecordingMedia, RecordingState, RecordingStatus, RtpFormat,
};
use sbc_core::tap::{TapId, TapKey};
use sbc_core::tenant::TenantId;
use tracing::{info, warn};

use super::calls::Leg;
use super::pairs::PairId;
use super::Dest;
use crate::message::SipMessage;
use crate::routing::Candidate;

/// A tenant's recording: its settings and its SRS targets as the transport reaches them.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub settings: RecordingSettings,
    /// In failover order, one per `settings.srs`.
    pub srs: Vec<Candidate>,
}

impl Recorder {
    /// SRS target `index` as configured (empty if there is none).
    pub fn srs_uri(&self, index: usize) -> String {
        self.settings
            .srs
            .get(index)
            .map(|t| t.to_string())
            .unwrap_or_default()
    }
}

/// Why a recording session failed (a closed set: the `reason` label of
/// `sbc_recording_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordingFailure {
    /// The SRS answered the INVITE with a final failure.
    Refused,
    /// No final answer within `answer_timeout_ms` (or a re-INVITE's).
    Timeout,
    /// The SRS connection could not be opened, or closed.
    Transport,
    /// Media could not prepare or start a stream.
    Media,
    /// The SRS's SDP answer was unusable.
    BadAnswer,
}

impl RecordingFailure {
    pub const ALL: [RecordingFailure; 5] = [
        RecordingFailure::Refused,
        RecordingFailure::Timeout,
        RecordingFailure::Transport,
        RecordingFailure::Media,
        RecordingFailure::BadAnswer,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RecordingFailure::Refused => "refused",
            RecordingFailure::Timeout => "timeout",
            RecordingFailure::Transport => "transport",
            RecordingFailure::Media => "media",
            RecordingFailure::BadAnswer => "bad_answer",
        }
    }

    /// True if the next SRS target is tried (RFC 7866 leaves it to the SRC; we move on
    /// for what says "this server, now": 408, 5xx, timeouts, transport and bad answers).
    pub fn fails_over(self, status: Option<u16>) -> bool {
        match self {
            RecordingFailure::Refused => {
                status.is_some_and(|s| s == 408 || (500..600).contains(&s))
            }
            RecordingFailure::Media => false,
            _ => true,
        }
    }
}

/// How a recording session ended (the `outcome` label of `sbc_recording_sessions_total`).
pub const OUTCOMES: [&str; 3] = ["accepted", "failed", "stopped"];

/// The recording status of every recorded call, written by the core, read by the admin
/// plane (one short lock each side; the core never waits on a reader for long).
#[derive(Debug, Default)]
pub struct RecordingBoard {
    calls: Mutex<HashMap<CallRef, (RecordingMode, Vec<RecordingStatus>)>>,
}

impl RecordingBoard {
    /// The call's sessions, oldest first.
    pub fn get(&self, call: CallRef) -> Option<Vec<RecordingStatus>> {
        self.calls.lock().ok()?.get(&call).map(|(_, l)| l.clone())
    }

    /// The recording mode of the call's tenant (`None`: the call is not recordable).
    pub fn mode(&self, call: CallRef) -> Option<RecordingMode> {
        self.calls.lock().ok()?.get(&call).map(|(m, _)| *m)
    }

    fn set(&self, call: CallRef, mode: RecordingMode, list: Vec<RecordingStatus>) {
        if let Ok(mut m) = self.calls.lock() {
            m.insert(call, (mode, list));
        }
    }

    fn remove(&self, call: CallRef) {
        if let Ok(mut m) = self.calls.lock() {
            m.remove(&call);
        }
    }

    /// The calls the core tracks (recorded or recordable), in no order.
    pub fn calls(&self) -> Vec<CallRef> {
        self.calls
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }

    /// True if the core tracks `call` (recorded or recordable).
    pub fn knows(&self, call: CallRef) -> bool {
        self.calls.lock().is_ok_and(|m| m.contains_key(&call))
    }
}

/// One recorded stream: a tap prepared by media.
#[derive(Debug)]
pub(crate) struct Stream {
    pub id: TapId,
    pub side: LegSide,
    pub label: u32,
    pub local: SocketAddr,
    /// The SDES key offered (kept for re-offers; zeroized on drop, never logged).
    pub key: Option<TapKey>,
    pub formats: Vec<RtpFormat>,
}

/// The transaction in flight with the SRS.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub cseq: u32,
    pub deadline: Instant,
    /// The request (for CANCEL of an INVITE still unanswered).
    pub request: SipMessage,
}

/// One recording session (one SRS dialog).
#[derive(Debug)]
pub(crate) struct Session {
    pub id: RecordingId,
    /// Index into the recorder's `srs`.
    pub target: usize,
    pub dialog: Leg,
    pub listener: usize,
    pub streams: Vec<Stream>,
    pub pending: Option<Pending>,
    /// SDP session id and version (RFC 4566 `o=`), bumped on each re-offer.
    pub sdp_id: u64,
    pub sdp_version: u64,
    /// Seeds of the metadata's element ids.
    pub ids: [u128; 2],
    pub state: RecordingState,
    pub started: SystemTime,
    pub accepted_unix: Option<u64>,
    /// An update (hold, pause, codec) waits for the pending transaction.
    pub update_wanted: bool,
}

/// A callee INVITE held until an SRS accepts (`on_failure = "required"`).
#[derive(Debug)]
pub(crate) struct Held {
    pub pair: PairId,
    pub dest: Dest,
    pub msg: SipMessage,
}

/// A recorded (or recordable) call.
#[derive(Debug)]
pub(crate) struct CallRecording {
    pub tenant: TenantId,
    pub recorder: Arc<Recorder>,
    pub session: Option<Session>,
    /// Earlier sessions, for the admin plane.
    pub history: Vec<RecordingStatus>,
    /// SRS targets failed so far (before one answered, or mid-call).
    pub failovers: u32,
    /// A session that failed mid-call: its id and when, for the next one's gap element.
    pub gap_from: Option<(RecordingId, SystemTime)>,
    pub held: Option<Held>,
    /// Paused from the admin plane.
    pub paused: bool,
    /// `required`: the callee's INVITE is about to be held; cleared by a failure first.
    pub required_pending: bool,
    /// Per side (caller, callee): its media is on hold (its stream `a=inactive`).
    pub held_sides: [bool; 2],
    /// The call's RFC 7989 Session-ID, or one we made.
    pub session_id: String,
    /// Participants' header values (From, To of the caller's leg).
    pub parties: [String; 2],
}

impl CallRecording {
    /// The admin plane's view: earlier sessions then the current one.
    pub fn statuses(&self) -> Vec<RecordingStatus> {
        let mut v = self.history.clone();
        if let Some(s) = &self.session {
            v.push(s.status(&self.recorder, self.failovers));
        }
        v
    }

    /// Whether `side`'s stream is sent now (`a=sendonly`) or not (`a=inactive`).
    pub fn active(&self, side: LegSide) -> bool {
        !self.paused && !self.held_sides[side_index(side)]
    }
}

impl Session {
    pub fn status(&self, recorder: &Recorder, failovers: u32) -> RecordingStatus {
        RecordingStatus {
            id: self.id,
            srs: recorder.srs_uri(self.target),
            state: self.state,
            streams: self.streams.iter().map(|s| s.id).collect(),
            started_unix: self.accepted_unix,
            failovers,
        }
    }
}

pub(crate) fn side_index(side: LegSide) -> usize {
    match side {
        LegSide::Caller => 0,
        LegSide::Callee => 1,
    }
}

pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The table of recorded calls and the index from SRS dialog Call-IDs.
#[derive(Debug, Default)]
pub(crate) struct Recordings {
    pub media: Option<Arc<dyn RecordingMedia>>,
    pub tenants: HashMap<TenantId, Arc<Recorder>>,
    pub board: Arc<RecordingBoard>,
    calls: HashMap<CallRef, CallRecording>,
    by_call_id: HashMap<String, CallRef>,
}

impl Recordings {
    pub fn get(&self, call: CallRef) -> Option<&CallRecording> {
        self.calls.get(&call)
    }

    pub fn get_mut(&mut self, call: CallRef) -> Option<&mut CallRecording> {
        self.calls.get_mut(&call)
    }

    pub fn insert(&mut self, call: CallRef, rec: CallRecording) {
        self.calls.insert(call, rec);
        self.publish(call);
    }

    pub fn remove(&mut self, call: CallRef) -> Option<CallRecording> {
        let rec = self.calls.remove(&call)?;
        if let Some(s) = &rec.session {
            self.by_call_id.remove(&s.dialog.call_id);
        }
        self.board.remove(call);
        Some(rec)
    }

    /// The call whose SRS dialog has this Call-ID.
    pub fn by_sip_call_id(&self, call_id: &str) -> Option<CallRef> {
        self.by_call_id.get(call_id).copied()
    }

    pub fn index(&mut self, call_id: &str, call: CallRef) {
        self.by_call_id.insert(call_id.to_string(), call);
    }

    pub fn unindex(&mut self, call_id: &str) {
        self.by_call_id.remove(call_id);
    }

    /// Copy the call's status to the board.
    pub fn publish(&self, call: CallRef) {
        if let Some(r) = self.calls.get(&call) {
            self.board.set(call, r.recorder.settings.mode, r.statuses());
        }
    }

    /// Sessions recording or paused now (the `sbc_recording_active` gauge).
    pub fn active(&self) -> usize {
        self.calls
            .values()
            .filter(|r| {
                r.session.as_ref().is_some_and(|s| {
                    matches!(s.state, RecordingState::Recording | RecordingState::Paused)
                })
            })
            .count()
    }

    /// The earliest deadline of a transaction in flight.
    pub fn deadline(&self, call: CallRef) -> Option<Instant> {
        self.calls
            .get(&call)?
            .session
            .as_ref()?
            .pending
            .as_ref()
            .map(|p| p.deadline)
    }

    /// The SRS targets of every session running now (kept across a reload).
    pub fn targets(&self) -> Vec<crate::routing::TargetId> {
        self.calls
            .values()
            .filter_map(|r| {
                let s = r.session.as_ref()?;
                r.recorder.srs.get(s.target).map(|c| c.target)
            })
            .collect()
    }

    /// Calls whose current session runs over SRS target `target`.
    pub fn calls_on(&self, target: crate::routing::TargetId) -> Vec<CallRef> {
        self.calls
            .iter()
            .filter(|(_, r)| {
                r.session
                    .as_ref()
                    .and_then(|s| r.recorder.srs.get(s.target))
                    .is_some_and(|c| c.target == target)
            })
            .map(|(c, _)| *c)
            .collect()
    }
}

/// An audit line of the recording's life (the `recording` event field says which).
pub(crate) fn audit(
    event: &'static str,
    call: CallRef,
    tenant: &TenantId,
    id: RecordingId,
    srs: &str,
) {
    info!(
        audit = true,
        event,
        call = %call,
        tenant = %tenant,
        recording = %id,
        srs,
        "recording {}",
        event.trim_start_matches("recording_")
    );
}

/// An audit line of a failure.
pub(crate) fn audit_failure(
    call: CallRef,
    tenant: &TenantId,
    id: RecordingId,
    srs: &str,
    why: RecordingFailure,
    status: Option<u16>,
) {
    warn!(
        audit = true,
        event = "recording_failed",
        call = %call,
        tenant = %tenant,
        recording = %id,
        srs,
        reason = why.as_str(),
        status = status.unwrap_or(0),
        "recording session failed"
    );
}

/// A command's refusal text when it does not fit the state.
pub(crate) fn command_fits(
    cmd: RecordingCommand,
    state: Option<RecordingState>,
) -> Result<(), &'static str> {
    use RecordingState as S;
    match (cmd, state) {
        (RecordingCommand::Start, None | Some(S::Stopped | S::Failed)) => Ok(()),
        (RecordingCommand::Start, _) => Err("already recording"),
        (RecordingCommand::Stop, Some(S::Offering | S::Recording | S::Paused)) => Ok(()),
        (RecordingCommand::Stop, _) => Err("not recording"),
        (RecordingCommand::Pause, Some(S::Recording)) => Ok(()),
        (RecordingCommand::Pause, _) => Err("pause needs a running recording"),
        (RecordingCommand::Resume, Some(S::Paused)) => Ok(()),
        (RecordingCommand::Resume, _) => Err("resume needs a paused recording"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_reasons_match_the_metrics_catalog() {
        let names: Vec<&str> = RecordingFailure::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names, sbc_core::metrics_catalog::RECORDING_FAILURES);
        assert_eq!(
            OUTCOMES.as_slice(),
            sbc_core::metrics_catalog::RECORDING_OUTCOMES
        );
    }

    #[test]
    fn failover_rules() {
        assert!(RecordingFailure::Refused.fails_over(Some(503)));
        assert!(RecordingFailure::Refused.fails_over(Some(408)));
        assert!(!RecordingFailure::Refused.fails_over(Some(488)));
        assert!(RecordingFailure::Timeout.fails_over(None));
        assert!(!RecordingFailure::Media.fails_over(None));
    }

    #[test]
    fn commands_fit_states() {
        assert!(command_fits(RecordingCommand::Start, None).is_ok());
        assert!(command_fits(RecordingCommand::Start, Some(RecordingState::Recording)).is_err());
        assert!(command_fits(RecordingCommand::Pause, Some(RecordingState::Recording)).is_ok());
        assert!(command_fits(RecordingCommand::Resume, Some(RecordingState::Recording)).is_err());
        assert!(command_fits(RecordingCommand::Stop, Some(RecordingState::Paused)).is_ok());
    }
}
