//! SIPREC recording (RFC 7866 / RFC 7865): the interfaces between the B2BUA (the
//! recording client, SRC), the media relay (which forks each recorded leg to the
//! recording server, SRS) and the admin plane (start / stop / pause in `api` mode).
//!
//! A recorded stream *is* a tap (`crate::tap`): the same fork after unprotect, the same
//! per-call worker, the same counters and drop reasons, one id vocabulary ([`TapId`]).
//! What differs is the order of events: the SRC must put the stream's address and SDES
//! key in its offer before the SRS answers with a destination, so a recorded stream is
//! first *prepared* (socket bound, key made), then *started* toward the answered address,
//! and may be *paused* (`a=inactive`) without losing its SRTP state (rollover counters,
//! so a resumed stream never reuses keystream).
//!
//! Owns: the recording vocabulary ([`RecordingMedia`], [`RecordingControl`] and their
//! values). Must not: open sockets, build SIP, SDP or XML.

use std::fmt;
use std::net::SocketAddr;

use crate::media::{CallRef, LegSide};
use crate::tap::{TapError, TapId, TapKey, TapTransport};

/// One RTP payload format of a recorded leg, as the leg's SDP names it, for the SRC's
/// offer (`a=rtpmap:<payload_type> <encoding>/<clock_rate>[/<channels>]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpFormat {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    /// Audio channels when the rtpmap names them.
    pub channels: Option<u8>,
    /// The `a=fmtp` parameters for this payload type, if any (verbatim).
    pub fmtp: Option<String>,
}

/// A recorded stream prepared for the SRC's offer: the send socket is bound, the key made.
/// Nothing is sent until [`RecordingMedia::start_stream`].
#[derive(Debug)]
pub struct PreparedStream {
    /// The stream's id from now on (also its id among the call's taps).
    pub id: TapId,
    /// The local address the offer names in `c=` / `m=` (the fork's source address).
    pub local: SocketAddr,
    /// For SRTP: the SDES key the offer carries (`a=crypto`), handed out once; the
    /// media side keeps its own copy inside the SRTP context. Never log it.
    pub key: Option<TapKey>,
    /// The leg's payload formats as its last answered SDP named them (first is preferred).
    pub formats: Vec<RtpFormat>,
}

/// What the recording client needs from media. Every method returns quickly and never
/// blocks on I/O (like [`crate::tap::TapControl`], whose taps these streams are).
pub trait RecordingMedia: Send + Sync + fmt::Debug {
    /// Prepare forking what `leg` sends on `call` (its first audio stream) to an SRS, as
    /// plain RTP or SRTP under a fresh key. Fails like a tap: unknown call, no media yet,
    /// too many forks on the call.
    fn prepare_stream(
        &self,
        call: CallRef,
        leg: LegSide,
        transport: TapTransport,
    ) -> Result<PreparedStream, TapError>;

    /// The SRS answered: start forking to `destination`. Calling it again on a started
    /// stream moves it (an SRS re-INVITE changed the address) and keeps its SRTP state.
    fn start_stream(&self, stream: TapId, destination: SocketAddr) -> Result<(), TapError>;

    /// Pause (no copies leave; `a=inactive`) or resume. False for an unknown stream.
    fn pause_stream(&self, stream: TapId, paused: bool) -> bool;

    /// Stop and release a prepared or started stream. False for an unknown stream.
    fn release_stream(&self, stream: TapId) -> bool;

    /// The RTP formats the stream's leg sends now (its latest SDP, after a re-INVITE
    /// changed the codec); `None` for an unknown stream or a leg with no formats yet.
    /// A re-offer to the SRS carries these, not the ones from prepare time.
    fn stream_formats(&self, stream: TapId) -> Option<Vec<RtpFormat>>;
}

/// A recording session, as the SRC numbers it (unpredictable, 16 hex digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordingId(pub u64);

impl fmt::Display for RecordingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Where a recording session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordingState {
    /// INVITE sent to an SRS, no final answer yet.
    Offering,
    /// The SRS accepted; media is forked.
    Recording,
    /// Paused from the admin plane (`a=inactive` sent).
    Paused,
    /// Ended: by the call's end, a stop, or the SRS's BYE.
    Stopped,
    /// Every SRS target refused or failed.
    Failed,
}

impl RecordingState {
    /// The state of a session an SRS has accepted: paused from the admin plane or not.
    pub fn accepted(paused: bool) -> RecordingState {
        if paused {
            RecordingState::Paused
        } else {
            RecordingState::Recording
        }
    }

    /// The API name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Offering => "offering",
            RecordingState::Recording => "recording",
            RecordingState::Paused => "paused",
            RecordingState::Stopped => "stopped",
            RecordingState::Failed => "failed",
        }
    }
}

/// One recording session of a call, for `GET /v1/calls/{id}/recordings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingStatus {
    pub id: RecordingId,
    /// The SRS target URI currently (or last) used, as configured.
    pub srs: String,
    pub state: RecordingState,
    /// The forked streams (their tap ids and counters are in the call's taps).
    pub streams: Vec<TapId>,
    /// Unix seconds when the SRS accepted (None before).
    pub started_unix: Option<u64>,
    /// SRS targets that failed before this one answered, or mid-call.
    pub failovers: u32,
}

/// What the admin plane may ask of a call's recording (tenants in `api` mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordingCommand {
    Start,
    Stop,
    Pause,
    Resume,
}

impl RecordingCommand {
    /// The API name (the action in `POST /v1/calls/{id}/recordings/{action}`).
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingCommand::Start => "start",
            RecordingCommand::Stop => "stop",
            RecordingCommand::Pause => "pause",
            RecordingCommand::Resume => "resume",
        }
    }
}

/// Why a recording command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    /// No such live call.
    #[error("unknown call {0}")]
    UnknownCall(CallRef),
    /// The call's tenant has no `[tenants.recording]`.
    #[error("recording is not configured for this tenant")]
    NotConfigured,
    /// Start / stop are for tenants in `api` mode (`always` records every call).
    #[error("recording mode is \"always\": start and stop are not available")]
    NotApiMode,
    /// The command does not fit the recording's state (start while recording, pause
    /// while not recording, ...).
    #[error("{0}")]
    WrongState(&'static str),
    /// The signaling core did not take the command (shutting down, queue full).
    #[error("recording unavailable: {0}")]
    Unavailable(&'static str),
}

/// What the admin plane needs from the recording client (implemented by sbc-sip's
/// server, which hands commands to the B2BUA). Never blocks.
pub trait RecordingControl: Send + Sync + fmt::Debug {
    /// The call's recording sessions, oldest first; `None` for an unknown call.
    fn recordings(&self, call: CallRef) -> Option<Vec<RecordingStatus>>;

    /// Queue `cmd` for `call`. `Ok` means accepted for the B2BUA; the outcome shows in
    /// [`RecordingControl::recordings`] and the audit log.
    fn command(&self, call: CallRef, cmd: RecordingCommand) -> Result<(), RecordingError>;
}
