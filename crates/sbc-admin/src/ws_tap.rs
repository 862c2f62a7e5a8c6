//! The WebSocket tap: `GET /v1/calls/{id}/tap/ws[?legs=both|caller|callee]
//! [&resume_after_ms=MS]`, a live listener on one call's media without a UDP recorder.
//!
//! The handler binds one loopback UDP socket per leg and starts ordinary plain-RTP taps
//! toward them through [`TapControl`] (the relay knows nothing of WebSockets; the leg is
//! known by the socket a copy arrives on), then sends over the WebSocket:
//!
//! 1. a text message `{"type":"start","call":ID,"tenant":T,"legs":"both","codec":"PCMU",
//!    "clock_rate":8000,"resumed":false}`: the call's first audio format (`null`s when
//!    unknown); `resumed` says whether `resume_after_ms` was given (see below);
//! 2. one binary message per RTP packet: byte 0 the leg (0 caller, 1 callee), bytes 1..5
//!    the RTP timestamp (big-endian), then the RTP payload (after the fixed header, CSRCs
//!    and extension, padding removed, RFC 3550 §5.1). Datagrams that are not RTP are
//!    skipped and counted;
//! 3. when the call ends (its taps disappear), `{"type":"stop","reason":"call_ended"}`
//!    (`"tap_stopped"` when the taps were stopped through `DELETE /v1/taps/{id}`), then a
//!    close.
//!
//! Authorization is that of `POST /v1/calls/{id}/taps` (operator, or recorder of the
//! call's tenant; viewer 403; another tenant's call 404). The upgrade is audited like any
//! request (status 101); the session's end writes a second line with method `WS-CLOSE`,
//! the same path and the close code as status.
//!
//! Bounds: [`MAX_WS_TAPS`] sessions at once; [`FRAME_QUEUE`] frames between the UDP
//! readers and the WebSocket writer (full: the frame is dropped and counted in
//! `sbc_tap_ws_frames_dropped_total{reason="queue_full"}`, the readers never wait); one
//! WebSocket send may take [`SEND_TIMEOUT`], a slower client is disconnected. The taps are
//! stopped however the session ends (client close, slow client, call end, error).
//!
//! Hot standby (issue #16): the forks are node-local taps
//! ([`TapControl::start_local_tap`]): their loopback destinations mean nothing on another
//! node, so they are left out of the replicated media part and a standby that takes the
//! call over never re-creates them (clear media would go to whatever listens on that
//! port there). Instead the client reconnects to the new owner's admin plane with the
//! same call id (the id is the call's signaling number, which the takeover keeps unless
//! the standby already uses that 64-bit random number, a freak that gives the call a new
//! id) and `resume_after_ms=<unix ms of the last frame it got>`. Then the start message
//! says `"resumed":true` and, before the first frame of each leg, the server sends
//! `{"type":"gap","leg":"caller","from_ms":F,"to_ms":T}`: F is the client's
//! `resume_after_ms`, T the wall-clock time this node read the leg's first packet (at
//! least F). The value may be at most [`RESUME_CLOCK_SKEW`] ahead of this node's clock
//! and at most [`MAX_RESUME_AGE`] old; otherwise the upgrade is a 400 saying which. A
//! resume works the same after a mere network break toward the same node.
//!
//! Must not: block the relay (it only ever sees ordinary taps), log a token.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use sbc_core::registry::CallId;
use sbc_core::tap::{TapControl, TapError, TapId, TapLegs, TapSpec, TapTransport};
use sbc_core::tenant::TenantId;
use serde::Deserialize;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tracing::info;

use crate::api::{audit, json_error, tap_error, App, AuditInfo, Caller, TapStart};
use crate::config::TokenEntry;

/// WebSocket taps open at once: each holds two sockets, two taps and a task; a few
/// monitors per gateway is the use, 32 leaves room without letting one client hold many.
pub const MAX_WS_TAPS: usize = 32;
/// Frames queued for the WebSocket writer: about 10 s of two 20 ms legs (100 frames/s).
pub const FRAME_QUEUE: usize = 1024;
/// Longest one WebSocket send may take before the client counts as too slow.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the session checks that its taps still exist (the call has not ended).
const END_POLL: Duration = Duration::from_millis(250);
/// Polls the taps may be gone while the call is still registered before the end is put
/// down to a `DELETE` rather than the call ending (a media timeout ends the call a moment
/// after it removes the taps).
const GONE_POLLS: u32 = 4;
/// Largest datagram read: above any RTP packet the relay forwards (it reads 2 KiB).
const MAX_DATAGRAM: usize = 4096;
/// Largest message accepted from the client, which has nothing to say but close.
const MAX_CLIENT_MESSAGE: usize = 4096;

/// Oldest `resume_after_ms` accepted: a takeover or a network break is over in seconds;
/// a client away for an hour has lost the thread and opens the tap afresh.
pub const MAX_RESUME_AGE: Duration = Duration::from_secs(3600);
/// How far ahead of this node's clock `resume_after_ms` may be: the client stamps its
/// last frame with its own clock. NTP keeps hosts within milliseconds; 2 s covers an
/// unsynchronised client's usual drift without accepting a made-up future.
pub const RESUME_CLOCK_SKEW: Duration = Duration::from_secs(2);

/// WebSocket close codes (RFC 6455 §7.4.1).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;
const CLOSE_ERROR: u16 = 1011;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WsQuery {
    legs: Option<String>,
    resume_after_ms: Option<u64>,
}

/// Milliseconds since the Unix epoch (0 for a clock set before it).
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Checks a client's `resume_after_ms` against this node's clock `now_ms`.
fn check_resume(after_ms: u64, now_ms: u64) -> Result<u64, &'static str> {
    let skew = u64::try_from(RESUME_CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX);
    let age = u64::try_from(MAX_RESUME_AGE.as_millis()).unwrap_or(u64::MAX);
    if after_ms > now_ms.saturating_add(skew) {
        return Err("resume_after_ms is in the future (more than 2 s ahead of this node's clock)");
    }
    if now_ms.saturating_sub(after_ms) > age {
        return Err("resume_after_ms is older than 1 h; open the tap without it");
    }
    Ok(after_ms)
}

/// What the UDP readers queue for the WebSocket writer.
#[derive(Debug)]
enum Out {
    /// One binary frame.
    Frame(Bytes),
    /// A resumed session's gap before a leg's first frame.
    Gap { leg: u8, from_ms: u64, to_ms: u64 },
}

impl Out {
    fn message(self) -> Message {
        match self {
            Out::Frame(f) => Message::Binary(f),
            Out::Gap {
                leg,
                from_ms,
                to_ms,
            } => {
                let leg = if leg == 0 { "caller" } else { "callee" };
                let gap = serde_json::json!({
                    "type": "gap", "leg": leg, "from_ms": from_ms, "to_ms": to_ms,
                });
                Message::Text(gap.to_string().into())
            }
        }
    }
}

/// Stops the session's taps when dropped, whatever ends the session (a failed upgrade
/// too: axum drops the callback that owns this).
#[derive(Debug)]
struct TapGuard {
    taps: Arc<dyn TapControl>,
    ids: Vec<TapId>,
}

impl Drop for TapGuard {
    fn drop(&mut self) {
        for id in &self.ids {
            // False when the call ended first: nothing left to stop.
            self.taps.stop_tap(*id);
        }
    }
}

/// Why a session ended: the close code and the reason logged and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    CallEnded,
    TapStopped,
    ClientClosed,
    TooSlow,
    Failed,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::CallEnded => "call_ended",
            End::TapStopped => "tap_stopped",
            End::ClientClosed => "client_closed",
            End::TooSlow => "client_too_slow",
            End::Failed => "error",
        }
    }

    fn code(self) -> u16 {
        match self {
            End::CallEnded | End::TapStopped | End::ClientClosed => CLOSE_NORMAL,
            End::TooSlow => CLOSE_POLICY,
            End::Failed => CLOSE_ERROR,
        }
    }
}

fn dropped(reason: &'static str) {
    metrics::counter!("sbc_tap_ws_frames_dropped_total", "reason" => reason).increment(1);
}

/// The RTP timestamp and payload of a datagram, or `None` when it is not RTP (RFC 3550
/// §5.1; RTCP packet types 192..=223 are told apart as in RFC 5761 §4).
fn rtp_payload(p: &[u8]) -> Option<(u32, &[u8])> {
    if p.len() < 12 || p[0] >> 6 != 2 || (192..=223).contains(&p[1]) {
        return None;
    }
    let mut start = 12 + 4 * usize::from(p[0] & 0x0f);
    if p[0] & 0x10 != 0 {
        let ext = p.get(start + 2..start + 4)?;
        start += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    let mut end = p.len();
    if p[0] & 0x20 != 0 {
        let pad = usize::from(*p.last()?);
        end = end.checked_sub(pad).filter(|_| pad > 0)?;
    }
    let payload = p.get(start..end)?;
    let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
    Some((ts, payload))
}

/// One binary frame: leg, timestamp, payload.
fn frame(leg: u8, ts: u32, payload: &[u8]) -> Bytes {
    let mut f = Vec::with_capacity(5 + payload.len());
    f.push(leg);
    f.extend_from_slice(&ts.to_be_bytes());
    f.extend_from_slice(payload);
    Bytes::from(f)
}

/// Reads one leg's tap copies and queues them as frames, never waiting for the writer.
/// Only the first source heard is taken (the relay's tap socket); the socket is on
/// loopback, but another local process could aim at it. A resumed session (`gap_from`
/// set) queues the leg's gap before its first frame, stamped when that packet was read.
async fn read_leg(sock: UdpSocket, leg: u8, tx: mpsc::Sender<Out>, gap_from: Option<u64>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut source: Option<SocketAddr> = None;
    let mut gap = gap_from.map(|from_ms| (from_ms, None::<u64>));
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors and the like: the next datagram may be fine.
            Err(_) => continue,
        };
        if *source.get_or_insert(from) != from {
            dropped("unexpected_source");
            continue;
        }
        let Some((ts, payload)) = buf.get(..n).and_then(rtp_payload) else {
            dropped("malformed");
            continue;
        };
        if let Some((from_ms, first)) = &mut gap {
            let to_ms = *first.get_or_insert_with(|| unix_ms(SystemTime::now()).max(*from_ms));
            let mark = Out::Gap {
                leg,
                from_ms: *from_ms,
                to_ms,
            };
            match tx.try_send(mark) {
                Ok(()) => gap = None,
                // The frame may not go before its gap: both wait for room.
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped("queue_full");
                    continue;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
        match tx.try_send(Out::Frame(frame(leg, ts, payload))) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => dropped("queue_full"),
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// Sends one message within [`SEND_TIMEOUT`].
async fn send(ws: &mut WebSocket, msg: Message) -> Result<(), End> {
    match tokio::time::timeout(SEND_TIMEOUT, ws.send(msg)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::ClientClosed),
        Err(_) => Err(End::TooSlow),
    }
}

async fn send_out(ws: &mut WebSocket, out: Out) -> Result<(), End> {
    let is_frame = matches!(out, Out::Frame(_));
    send(ws, out.message()).await?;
    if is_frame {
        metrics::counter!("sbc_tap_ws_frames_sent_total").increment(1);
    }
    Ok(())
}

/// One upgraded session, with everything the handler set up.
struct Session {
    app: App,
    token: TokenEntry,
    tenant: TenantId,
    call: CallId,
    path: String,
    start: String,
    /// A resumed session's `resume_after_ms`.
    resume_after_ms: Option<u64>,
    guard: TapGuard,
    sockets: Vec<(u8, UdpSocket)>,
    _permit: OwnedSemaphorePermit,
}

impl Session {
    async fn run(self, mut ws: WebSocket) {
        let Session {
            app,
            token,
            tenant,
            call,
            path,
            start,
            resume_after_ms,
            guard,
            sockets,
            _permit,
        } = self;
        let (tx, mut rx) = mpsc::channel(FRAME_QUEUE);
        // Dropping the set aborts the readers.
        let mut readers = JoinSet::new();
        for (leg, sock) in sockets {
            readers.spawn(read_leg(sock, leg, tx.clone(), resume_after_ms));
        }
        drop(tx);
        let end = forward(&mut ws, &mut rx, &app, &call, &guard, start).await;
        drop(guard);
        drop(readers);
        if end != End::TooSlow && end != End::ClientClosed {
            let close = Message::Close(Some(CloseFrame {
                code: end.code(),
                reason: end.as_str().into(),
            }));
            let _ = send(&mut ws, close).await;
        }
        info!(token = %token.id, tenant = %tenant, call = %call, reason = end.as_str(), "WebSocket tap ended");
        let info = AuditInfo {
            tenant: Some(tenant),
            call: Some(call),
        };
        audit(
            &app,
            Some(&token),
            info,
            "WS-CLOSE".to_string(),
            path,
            end.code(),
        );
    }
}

/// Sends `start`, then frames until the call ends, the client leaves or is too slow.
async fn forward(
    ws: &mut WebSocket,
    rx: &mut mpsc::Receiver<Out>,
    app: &App,
    call: &CallId,
    guard: &TapGuard,
    start: String,
) -> End {
    if let Err(end) = send(ws, Message::Text(start.into())).await {
        return end;
    }
    let mut poll = tokio::time::interval(END_POLL);
    let mut gone_polls = 0u32;
    loop {
        tokio::select! {
            f = rx.recv() => match f {
                Some(f) => {
                    if let Err(end) = send_out(ws, f).await {
                        return end;
                    }
                }
                // Every reader stopped: nothing more can come.
                None => return End::Failed,
            },
            msg = ws.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return End::ClientClosed,
                // Pings are answered by the WebSocket layer; anything else is ignored.
                Some(Ok(_)) => {}
            },
            _ = poll.tick() => {
                if guard.ids.iter().all(|id| guard.taps.tap_owner(*id).is_some()) {
                    continue;
                }
                gone_polls += 1;
                let ended = app.state.registry.media_ref(call).is_none();
                if !ended && gone_polls < GONE_POLLS {
                    continue;
                }
                // What arrived before the end still goes out.
                while let Ok(f) = rx.try_recv() {
                    if let Err(end) = send_out(ws, f).await {
                        return end;
                    }
                }
                let end = if ended { End::CallEnded } else { End::TapStopped };
                let stop = serde_json::json!({ "type": "stop", "reason": end.as_str() });
                return match send(ws, Message::Text(stop.to_string().into())).await {
                    Ok(()) => end,
                    Err(e) => e,
                };
            }
        }
    }
}

/// The legs and the checked `resume_after_ms` of the query, or the 400's message.
fn parse_query(
    query: Result<Query<WsQuery>, QueryRejection>,
) -> Result<(TapLegs, Option<u64>), String> {
    let Ok(Query(q)) = query else {
        return Err(
            "query parameters: `legs` (both, caller or callee) and `resume_after_ms` \
             (unix milliseconds)"
                .to_string(),
        );
    };
    let legs = match q.legs {
        None => TapLegs::Both,
        Some(l) => l.parse::<TapLegs>().map_err(|e| e.to_string())?,
    };
    let now_ms = unix_ms(SystemTime::now());
    let resume = q
        .resume_after_ms
        .map(|ms| check_resume(ms, now_ms))
        .transpose()
        .map_err(str::to_string)?;
    Ok((legs, resume))
}

/// One loopback socket and one node-local plain-RTP tap toward it per leg; the guard
/// stops the taps already started if a later one fails (or the session ends).
async fn start_forks(
    taps: &Arc<dyn TapControl>,
    call: sbc_core::media::CallRef,
    legs: TapLegs,
) -> Result<(TapGuard, Vec<(u8, UdpSocket)>), TapError> {
    let sides: &[(u8, TapLegs)] = match legs {
        TapLegs::Both => &[(0, TapLegs::Caller), (1, TapLegs::Callee)],
        TapLegs::Caller => &[(0, TapLegs::Caller)],
        TapLegs::Callee => &[(1, TapLegs::Callee)],
    };
    // Dropped on an early return: stops the taps already started.
    let mut guard = TapGuard {
        taps: Arc::clone(taps),
        ids: Vec::new(),
    };
    let mut sockets = Vec::with_capacity(sides.len());
    for &(leg, one) in sides {
        let bound = match UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await {
            Ok(s) => s.local_addr().map(|a| (s, a)),
            Err(e) => Err(e),
        };
        let Ok((sock, destination)) = bound else {
            return Err(TapError::Unavailable("no local socket".to_string()));
        };
        let spec = TapSpec {
            legs: one,
            transport: TapTransport::Rtp,
            destination,
        };
        guard.ids.push(taps.start_local_tap(call, spec)?.id);
        sockets.push((leg, sock));
    }
    Ok((guard, sockets))
}

/// `GET /v1/calls/{id}/tap/ws`: see the module documentation.
pub(crate) async fn tap_ws(
    State(app): State<App>,
    Extension(Caller(token)): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<WsQuery>, QueryRejection>,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let start = match TapStart::check(
        &app,
        &token.role,
        id,
        "a WebSocket tap needs an operator or recorder token",
    ) {
        Ok(s) => s,
        Err(resp) => return *resp,
    };
    let audited = |resp: Response| start.audited(resp);
    let (legs, resume_after_ms) = match parse_query(query) {
        Ok(q) => q,
        Err(msg) => return audited(json_error(StatusCode::BAD_REQUEST, &msg)),
    };
    let Ok(ws) = ws else {
        return audited(json_error(
            StatusCode::UPGRADE_REQUIRED,
            "expected a WebSocket upgrade (GET with Connection: Upgrade, Upgrade: websocket)",
        ));
    };
    let Ok(permit) = Arc::clone(&app.ws_taps).try_acquire_owned() else {
        return audited(json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many WebSocket taps open; try again later",
        ));
    };
    let call_ref = match start.media(&app) {
        Ok(c) => c,
        Err(resp) => return audited(*resp),
    };
    let TapStart { taps, id, tenant } = &start;
    let (guard, sockets) = match start_forks(taps, call_ref, legs).await {
        Ok(f) => f,
        Err(e) => return audited(tap_error(&e)),
    };
    let format = taps.media_format(call_ref);
    let start = serde_json::json!({
        "type": "start",
        "call": id.to_string(),
        "tenant": tenant.to_string(),
        "legs": legs.as_str(),
        "codec": format.as_ref().map(|f| f.0.as_str()),
        "clock_rate": format.as_ref().map(|f| f.1),
        "resumed": resume_after_ms.is_some(),
    })
    .to_string();
    let tap_ids: Vec<String> = guard.ids.iter().map(TapId::to_string).collect();
    info!(token = %token.id, tenant = %tenant, call = %id, taps = ?tap_ids,
        legs = legs.as_str(), resume_after_ms, "WebSocket tap started");
    if resume_after_ms.is_some() {
        metrics::counter!("sbc_tap_ws_resumed_total").increment(1);
    }
    let session = Session {
        app: Arc::clone(&app),
        token,
        tenant: tenant.clone(),
        call: id.clone(),
        path: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), |p| p.as_str().to_string()),
        start,
        resume_after_ms,
        guard,
        sockets,
        _permit: permit,
    };
    audited(
        ws.max_message_size(MAX_CLIENT_MESSAGE)
            .on_upgrade(move |socket| session.run(socket)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_payloads() {
        let mut p = vec![0x80, 0, 0, 1, 0, 0, 0x01, 0x40, 1, 2, 3, 4];
        p.extend_from_slice(b"voice");
        assert_eq!(rtp_payload(&p), Some((320, &b"voice"[..])));
        // Two CSRCs, an extension of one word, two bytes of padding.
        let mut q = vec![0xb2, 0, 0, 1, 0, 0, 0, 9, 1, 2, 3, 4];
        q.extend_from_slice(&[0; 8]);
        q.extend_from_slice(&[0xbe, 0xde, 0, 1, 7, 7, 7, 7]);
        q.extend_from_slice(b"ab\x00\x02");
        assert_eq!(rtp_payload(&q), Some((9, &b"ab"[..])));
        // Not RTP: short, version 1, RTCP, extension or padding past the end.
        assert_eq!(rtp_payload(&p[..11]), None);
        assert_eq!(rtp_payload(&[0x40; 20]), None);
        assert_eq!(
            rtp_payload(&[0x80, 200, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0]),
            None
        );
        let mut bad_ext = p.clone();
        bad_ext[0] = 0x90;
        bad_ext.truncate(14);
        assert_eq!(rtp_payload(&bad_ext), None);
        let mut bad_pad = p.clone();
        bad_pad[0] = 0xa0;
        bad_pad.push(40);
        assert_eq!(rtp_payload(&bad_pad), None);
        let mut zero_pad = p;
        zero_pad[0] = 0xa0;
        zero_pad.push(0);
        assert_eq!(rtp_payload(&zero_pad), None);
    }

    #[test]
    fn resume_bounds() {
        let now = 1_700_000_000_000;
        assert_eq!(check_resume(now - 5_000, now), Ok(now - 5_000));
        assert_eq!(check_resume(now, now), Ok(now));
        // Within the clock skew, and just past it.
        assert_eq!(check_resume(now + 2_000, now), Ok(now + 2_000));
        assert!(matches!(check_resume(now + 2_001, now), Err(e) if e.contains("future")));
        assert_eq!(check_resume(now - 3_600_000, now), Ok(now - 3_600_000));
        assert!(
            matches!(check_resume(now - 3_600_001, now), Err(e) if e.contains("older than 1 h"))
        );
        assert!(check_resume(0, now).is_err());
        assert!(check_resume(u64::MAX, now).is_err());
    }

    #[test]
    fn gap_messages() {
        let gap = Out::Gap {
            leg: 1,
            from_ms: 10,
            to_ms: 25,
        };
        let Message::Text(t) = gap.message() else {
            panic!("a gap is text");
        };
        let v: Result<serde_json::Value, _> = serde_json::from_str(t.as_str());
        assert_eq!(
            v.ok(),
            Some(serde_json::json!({"type": "gap", "leg": "callee", "from_ms": 10, "to_ms": 25}))
        );
    }

    #[test]
    fn frames() {
        assert_eq!(
            &frame(1, 0x0102_0304, b"xy")[..],
            &[1, 1, 2, 3, 4, b'x', b'y'][..]
        );
    }
}
