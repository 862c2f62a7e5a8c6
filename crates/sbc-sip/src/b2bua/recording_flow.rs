//! What recording does in the core: start a session with the next SRS target, read its
//! answers, re-offer on updates (hold, codec change, pause), fail over, end with BYE, and
//! take the admin plane's commands.
//!
//! Stop times travel in the BYE. RFC 7866 has the SRC deliver metadata snapshots in the
//! recording session's INVITE, re-INVITE or UPDATE, and RFC 7865 gives the session a
//! `<stop-time>` and each participant a `<disassociate-time>`. We put the final snapshot
//! (`application/rs-metadata+xml`, `Content-Disposition: recording-session`) in the body
//! of the BYE that ends the recording (call end, admin stop, an SRS replaced after a
//! failure that left its connection up): RFC 3261 lets any request carry a body, the BYE
//! is sent anyway, and no extra round trip can hold the call's teardown (a final
//! re-INVITE would need a deadline and a second wait for an SRS that may already be
//! failing). The cost: an SRS that reads metadata only from INVITE and UPDATE ignores the
//! body and sees the BYE's arrival as the end, which is what it saw before.
//!
//! Owns: no state of its own (`recording.rs` does). Must not: end or refuse a call
//! except the `required` refusal while the callee's INVITE is held, nor wait on the SRS
//! to tear a call down.

use std::sync::LazyLock;
use std::time::{Instant, SystemTime};

use sbc_core::config::{BodySettings, OnFailure, RecordingMode};
use sbc_core::media::{CallRef, LegSide};
use sbc_core::recording::{RecordingCommand, RecordingError, RecordingId, RecordingState};
use sbc_core::tap::TapLegs;
use tracing::{debug, info};

use super::calls::{contact_uri, Hop, Leg};
use super::pairs::Timer;
use super::recording::{
    command_fits, side_index, unix, AuditEvent, AuditTo, CallRecording, Held, Pending,
    RecordingFailure, Session, Stream,
};
use super::responses::Refusal;
use super::topology::{self, BodyPolicy};
use super::{B2bua, ConnId, ConnKind, Dest};
use crate::message::{response_to, tag, Method, SipMessage};
use crate::routing::TargetId;
use crate::siprec::{self, MetaStream, OfferStream, Participant};
use crate::transaction::TimerConfig;
use sbc_core::audit::RecordingEvent;

/// The sides a `legs` setting records, caller first.
fn sides(legs: TapLegs) -> Vec<LegSide> {
    [LegSide::Caller, LegSide::Callee]
        .into_iter()
        .filter(|s| legs.includes(*s))
        .collect()
}

/// The RFC 7989 Session-ID of a request, if it has one.
fn session_id_of(msg: &SipMessage) -> Option<String> {
    let v = msg.header("session-id")?.trim();
    let local = v.split(';').next()?.trim();
    (local.len() == 32 && local.bytes().all(|b| b.is_ascii_hexdigit())).then(|| v.to_string())
}

impl B2bua {
    /// The initial INVITE of `call` went through media: record it if its tenant records
    /// every call. True if the callee's INVITE is to be held until an SRS accepts.
    pub(super) fn recording_begin(
        &mut self,
        now: Instant,
        call: CallRef,
        invite: &SipMessage,
    ) -> bool {
        let Some(c) = self.calls.get(call) else {
            return false;
        };
        let Some(recorder) = self.recordings.tenants.get(&c.tenant).cloned() else {
            return false;
        };
        let rec = self.new_recording(call, recorder.clone(), invite);
        self.recordings.insert(call, rec);
        if recorder.settings.mode != RecordingMode::Always {
            return false;
        }
        let required = recorder.settings.on_failure == OnFailure::Required;
        if required {
            if let Some(r) = self.recordings.get_mut(call) {
                r.required_pending = true;
            }
        }
        self.start_session(now, call, 0);
        required
    }

    fn new_recording(
        &mut self,
        call: CallRef,
        recorder: std::sync::Arc<super::recording::Recorder>,
        invite: &SipMessage,
    ) -> CallRecording {
        let session_id = session_id_of(invite).unwrap_or_else(|| {
            format!("{}{};remote={}", self.token(), self.token(), "0".repeat(32))
        });
        let tenant = self
            .calls
            .get(call)
            .map(|c| c.tenant.clone())
            .unwrap_or_else(|| sbc_core::tenant::TenantId::from(""));
        CallRecording {
            tenant,
            recorder,
            session: None,
            history: Vec::new(),
            failovers: 0,
            gap_from: None,
            held: None,
            paused: false,
            held_sides: [false, false],
            required_pending: false,
            session_id,
            parties: [
                invite.header("from").unwrap_or_default().to_string(),
                invite.header("to").unwrap_or_default().to_string(),
            ],
        }
    }

    /// Hold the callee's INVITE of pair `held.pair` until the SRS answers.
    pub(super) fn recording_hold(&mut self, call: CallRef, held: Held) {
        if let Some(p) = self.pairs.get_mut(held.pair) {
            // The try's timeout starts when the INVITE leaves.
            p.try_deadline = None;
        }
        let Some(r) = self.recordings.get_mut(call) else {
            return;
        };
        r.held = Some(held);
        // The recording may have failed before the INVITE could be held.
        if !std::mem::take(&mut r.required_pending) {
            self.recording_given_up(self.clock, call);
        }
    }

    /// Prepare the streams and send the INVITE of a new session to SRS target `target`.
    fn start_session(&mut self, now: Instant, call: CallRef, target: usize) {
        let Some(rec) = self.recordings.get(call) else {
            return;
        };
        let recorder = rec.recorder.clone();
        let Some(candidate) = recorder.srs.get(target).cloned() else {
            return;
        };
        let id = RecordingId(rand::Rng::gen(&mut self.rng));
        let streams = match self.prepare_streams(call, &recorder) {
            Ok(s) => s,
            Err(()) => {
                self.session_failed_at_start(now, call, id, target, RecordingFailure::Media);
                return;
            }
        };
        let listener = self.listener_for(candidate.transport, 0);
        let local_party = format!("<{}>", self.contact_of(listener).trim_matches(['<', '>']));
        let dialog = Leg {
            call_id: format!("{}{}", self.token(), self.token()),
            local_tag: self.token(),
            remote_tag: None,
            local_party,
            remote_party: format!("<{}>", candidate.request_uri("")),
            next_cseq: 1,
            invite_cseq: 1,
            remote_target: candidate.request_uri(""),
            route_set: Vec::new(),
            conn: None,
        };
        let rng = &mut self.rng;
        let ids = [rand::Rng::gen(rng), rand::Rng::gen(rng)];
        let session = Session {
            id,
            target,
            dialog,
            listener,
            streams,
            pending: None,
            sdp_id: rand::Rng::gen::<u32>(rng).into(),
            sdp_version: 1,
            ids,
            state: RecordingState::Offering,
            started: self.cfg.wall_clock.wall(now),
            accepted_unix: None,
            update_wanted: false,
        };
        let call_id = session.dialog.call_id.clone();
        if let Some(rec) = self.recordings.get_mut(call) {
            rec.session = Some(session);
        }
        self.recordings.index(&call_id, call);
        self.send_srs_invite(now, call, None);
        metrics::gauge!("sbc_recording_active").set(self.recordings.active() as f64);
    }

    /// One prepared stream per recorded leg; on a failure the ones made are released.
    fn prepare_streams(
        &mut self,
        call: CallRef,
        recorder: &super::recording::Recorder,
    ) -> Result<Vec<Stream>, ()> {
        let Some(media) = self.recordings.media.clone() else {
            return Err(());
        };
        let mut out: Vec<Stream> = Vec::new();
        for (i, side) in sides(recorder.settings.legs).into_iter().enumerate() {
            match media.prepare_stream(call, side, recorder.settings.transport) {
                Ok(p) => out.push(Stream {
                    id: p.id,
                    side,
                    label: i as u32 + 1,
                    local: p.local,
                    key: p.key,
                    formats: p.formats,
                }),
                Err(e) => {
                    debug!(call = %call, error = %e, "recording stream not prepared");
                    for s in &out {
                        media.release_stream(s.id);
                    }
                    return Err(());
                }
            }
        }
        Ok(out)
    }

    /// The multipart body of the session's current offer and metadata.
    fn session_body(
        &self,
        rec: &CallRecording,
        s: &Session,
        stop: Option<SystemTime>,
    ) -> (String, Vec<u8>, String) {
        let suite = rec.recorder.settings.transport.suite();
        let fallback: Vec<sbc_core::recording::RtpFormat> = s
            .streams
            .iter()
            .find(|x| !x.formats.is_empty())
            .map(|x| x.formats.clone())
            .unwrap_or_default();
        let offer: Vec<OfferStream<'_>> = s
            .streams
            .iter()
            .map(|st| OfferStream {
                label: st.label,
                local: st.local,
                crypto: suite.zip(st.key.as_ref().map(|k| k.expose())),
                formats: if st.formats.is_empty() {
                    &fallback
                } else {
                    &st.formats
                },
                active: rec.active(st.side),
            })
            .collect();
        let sdp = siprec::sdp_offer(s.sdp_id, s.sdp_version, &offer);
        let xml = self.session_metadata(rec, s, stop);
        let boundary = format!("sbc-{:016x}{:08x}", s.ids[0] as u64, s.sdp_version);
        let (ctype, body) = siprec::multipart(&boundary, &sdp, &xml);
        (ctype, body, boundary)
    }

    /// The session's RFC 7865 metadata document; with `stop`, the final one (stop times).
    fn session_metadata(
        &self,
        rec: &CallRecording,
        s: &Session,
        stop: Option<SystemTime>,
    ) -> String {
        let redaction = rec.recorder.settings.identities.redaction();
        let caller = Participant::from_header(&rec.parties[0], redaction);
        let callee = Participant::from_header(&rec.parties[1], redaction);
        let meta: Vec<MetaStream> = s
            .streams
            .iter()
            .map(|st| MetaStream {
                label: st.label,
                sender: st.side,
            })
            .collect();
        let gap = rec.gap_from.map(|(prev, from)| siprec::Gap {
            previous: prev.0,
            from,
            until: s.started,
        });
        siprec::metadata_xml(&siprec::Metadata {
            ids: s.ids,
            session_id: &rec.session_id,
            caller: &caller,
            callee: &callee,
            streams: &meta,
            start: s.started,
            // A clock stepped back between start and stop must not give a stop before
            // the start the SRS was told.
            stop: stop.map(|t| t.max(s.started)),
            gap,
        })
    }

    /// Send the session's INVITE (initial or re-INVITE), with the current offer.
    fn send_srs_invite(&mut self, now: Instant, call: CallRef, stop: Option<SystemTime>) {
        let branch = self.branch();
        let Some(rec) = self.recordings.get(call) else {
            return;
        };
        let Some(s) = rec.session.as_ref() else {
            return;
        };
        let Some(candidate) = rec.recorder.srs.get(s.target).cloned() else {
            return;
        };
        let timeout = rec.recorder.settings.answer_timeout;
        let (ctype, body, _) = self.session_body(rec, s, stop);
        let contact = format!("{};+sip.src", self.contact_of(s.listener));
        let advertised = self.advertised(s.listener).to_string();
        let max_forwards = self.cfg.max_forwards;
        let Some(s) = self
            .recordings
            .get_mut(call)
            .and_then(|r| r.session.as_mut())
        else {
            return;
        };
        let cseq = s.dialog.take_cseq();
        s.dialog.invite_cseq = cseq;
        let hop = Hop {
            transport: candidate.transport,
            advertised: &advertised,
            branch: &branch,
            max_forwards,
        };
        let mut m = s.dialog.request(Method::Invite, cseq, hop);
        m.push_header("Contact", contact);
        // RFC 7866 §6.1.1: the SRC requires the siprec option tag.
        m.push_header("Require", siprec::OPTION_TAG);
        m.push_header("Accept", "application/sdp, application/rs-metadata+xml");
        m.push_header("Content-Type", ctype);
        m.set_body(body);
        s.pending = Some(Pending {
            cseq,
            deadline: now + timeout,
            request: m.clone(),
        });
        self.timers.push(now + timeout, Timer::Recording(call));
        self.send(Dest::Target(candidate.target), m);
        self.recordings.publish(call);
    }

    /// A response on an SRS dialog: true if it was one (handled here).
    pub(super) fn on_srs_response(&mut self, now: Instant, conn: ConnId, msg: &SipMessage) -> bool {
        let Some(call) = msg
            .call_id()
            .and_then(|c| self.recordings.by_sip_call_id(c))
        else {
            return false;
        };
        let Some((code, (cseq, method))) = msg.status().zip(msg.cseq()) else {
            return true;
        };
        let Some(rec) = self.recordings.get(call) else {
            return true;
        };
        let Some(s) = rec.session.as_ref() else {
            return true;
        };
        let target = rec.recorder.srs.get(s.target).map(|c| c.target);
        let from_srs = target.is_some_and(|t| self.conn_is_target(conn, t));
        let matches = s.pending.as_ref().is_some_and(|p| p.cseq == cseq);
        if !from_srs || method != Method::Invite || !matches || code < 200 {
            return true;
        }
        if (200..300).contains(&code) {
            self.srs_accepted(now, call, msg);
        } else {
            if let Some(s) = self
                .recordings
                .get_mut(call)
                .and_then(|r| r.session.as_mut())
            {
                s.pending = None;
            }
            self.recording_failed(now, call, RecordingFailure::Refused, Some(code));
        }
        true
    }

    fn conn_is_target(&self, conn: ConnId, target: TargetId) -> bool {
        matches!(
            self.conns.get(&conn).map(|c| &c.kind),
            Some(ConnKind::Outbound { target: t }) if *t == target
        )
    }

    /// ACK for an SRS's 2xx (RFC 3261 §13.2.2.4), on the dialog it set up.
    fn ack_srs(&mut self, call: CallRef, cseq: u32) {
        let branch = self.branch();
        let max_forwards = self.cfg.max_forwards;
        let Some(rec) = self.recordings.get(call) else {
            return;
        };
        let Some(s) = rec.session.as_ref() else {
            return;
        };
        let Some(candidate) = rec.recorder.srs.get(s.target) else {
            return;
        };
        let advertised = self.advertised(s.listener).to_string();
        let hop = Hop {
            transport: candidate.transport,
            advertised: &advertised,
            branch: &branch,
            max_forwards,
        };
        let ack = s.dialog.request(Method::Ack, cseq, hop);
        let dest = Dest::Target(candidate.target);
        self.send(dest, ack);
    }

    /// The SRS accepted (INVITE or re-INVITE): learn the dialog, ACK, start the streams.
    fn srs_accepted(&mut self, now: Instant, call: CallRef, msg: &SipMessage) {
        let media = self.recordings.media.clone();
        let Some(rec) = self.recordings.get_mut(call) else {
            return;
        };
        let Some(s) = rec.session.as_mut() else {
            return;
        };
        let Some(p) = s.pending.take() else {
            return;
        };
        if s.dialog.remote_tag.is_none() {
            s.dialog.remote_tag = msg.header("to").and_then(tag).map(str::to_string);
            // RFC 3261 §12.1.2: the UAC's route set is the Record-Route reversed.
            let mut routes: Vec<String> = msg
                .header_values("record-route")
                .map(str::to_string)
                .collect();
            routes.reverse();
            s.dialog.route_set = routes;
            if let Some(t) = msg.header("contact").and_then(contact_uri) {
                s.dialog.remote_target = t;
            }
        }
        let sdp = answer_sdp(msg);
        let dests = sdp
            .as_deref()
            .ok_or(siprec::AnswerError::NoSdp)
            .and_then(|sdp| siprec::parse_answer(sdp, s.streams.len()));
        let first = s.state == RecordingState::Offering;
        self.ack_srs(call, p.cseq);
        let dests = match dests {
            Ok(d) => d,
            Err(e) => {
                debug!(call = %call, error = %e, "SRS answer unusable");
                self.recording_failed(now, call, RecordingFailure::BadAnswer, None);
                return;
            }
        };
        let Some(rec) = self.recordings.get(call) else {
            return;
        };
        let Some(s) = rec.session.as_ref() else {
            return;
        };
        let mut started = true;
        if let Some(media) = &media {
            for (st, dest) in s.streams.iter().zip(&dests) {
                if let Some(d) = dest {
                    started &= media.start_stream(st.id, *d).is_ok();
                }
                media.pause_stream(st.id, !rec.active(st.side));
            }
        }
        if !started {
            self.recording_failed(now, call, RecordingFailure::Media, None);
            return;
        }
        if first {
            self.session_accepted(now, call);
        }
        self.after_transaction(now, call);
    }

    /// Bookkeeping of a first acceptance: state, gauges, counters, audit, a held INVITE.
    fn session_accepted(&mut self, now: Instant, call: CallRef) {
        let wall = self.cfg.wall_clock.wall(now);
        let Some(rec) = self.recordings.get_mut(call) else {
            return;
        };
        let paused = rec.paused;
        let Some(s) = rec.session.as_mut() else {
            return;
        };
        s.state = RecordingState::accepted(paused);
        s.accepted_unix = Some(unix(wall));
        let (id, srs) = (s.id, rec.recorder.srs_uri(s.target));
        let tenant = rec.tenant.clone();
        rec.gap_from = None;
        let held = rec.held.take();
        metrics::counter!("sbc_recording_sessions_total", "tenant" => tenant.to_string(), "outcome" => "accepted").increment(1);
        metrics::gauge!("sbc_recording_active").set(self.recordings.active() as f64);
        AuditTo(self.audit.as_deref()).event(AuditEvent {
            event: RecordingEvent::Started,
            call,
            tenant: &tenant,
            id,
            srs: &srs,
            status: None,
        });
        if let Some(h) = held {
            self.release_held(now, h);
        }
        self.recordings.publish(call);
    }

    /// Send the callee's INVITE that waited for the SRS, its transaction restarted now.
    fn release_held(&mut self, now: Instant, h: Held) {
        let timers: TimerConfig = self.cfg.timers;
        let Some(p) = self.pairs.get_mut(h.pair) else {
            return;
        };
        let reliable = match h.dest {
            Dest::Target(t) => self.routes.transport_of(t).is_none_or(|t| t.is_reliable()),
            Dest::Conn(_) => true,
        };
        p.client = crate::transaction::ClientTransaction::new_over(
            crate::transaction::TxKind::Invite,
            now,
            &timers,
            reliable,
        );
        let call = p.call;
        if let Some(c) = self.calls.get(call) {
            if let Some(p) = self.pairs.get_mut(h.pair) {
                p.try_deadline = (!c.candidates.is_empty()).then(|| now + c.failover.try_timeout);
            }
        }
        self.arm_pair(h.pair);
        self.send(h.dest, h.msg);
    }

    /// A transaction with the SRS ended: send an update that waited for it.
    fn after_transaction(&mut self, now: Instant, call: CallRef) {
        let wanted = self
            .recordings
            .get_mut(call)
            .and_then(|r| r.session.as_mut())
            .is_some_and(|s| std::mem::take(&mut s.update_wanted));
        if wanted {
            self.recording_update(now, call);
        }
        self.recordings.publish(call);
    }

    /// Re-offer to the SRS (hold, resume, codec change, pause): now, or after the
    /// transaction in flight.
    pub(super) fn recording_update(&mut self, now: Instant, call: CallRef) {
        let media = self.recordings.media.clone();
        let Some(s) = self
            .recordings
            .get_mut(call)
            .and_then(|r| r.session.as_mut())
        else {
            return;
        };
        if !matches!(s.state, RecordingState::Recording | RecordingState::Paused)
            || s.pending.is_some()
        {
            s.update_wanted = s.state != RecordingState::Stopped;
            return;
        }
        s.sdp_version += 1;
        // A re-INVITE of the call may have changed the codec: offer what the legs send now.
        if let Some(m) = &media {
            for st in &mut s.streams {
                if let Some(f) = m.stream_formats(st.id).filter(|f| !f.is_empty()) {
                    st.formats = f;
                }
            }
        }
        self.send_srs_invite(now, call, None);
    }

    /// The call's media direction changed (an SDP offer from `from` with `direction`):
    /// streams of sides that no longer send go `a=inactive`.
    pub(super) fn recording_media_changed(
        &mut self,
        now: Instant,
        call: CallRef,
        from: LegSide,
        sdp: &[u8],
    ) {
        let Some(rec) = self.recordings.get_mut(call) else {
            return;
        };
        let text = String::from_utf8_lossy(sdp);
        let dir = ["sendonly", "recvonly", "inactive"]
            .into_iter()
            .find(|d| text.lines().any(|l| l.trim_end() == format!("a={d}")));
        let (from_sends, other_sends) = match dir {
            Some("sendonly") => (true, false),
            Some("recvonly") => (false, true),
            Some(_) => (false, false),
            None => (true, true),
        };
        rec.held_sides[side_index(from)] = !from_sends;
        rec.held_sides[side_index(from.other())] = !other_sends;
        self.recording_update(now, call);
    }

    /// The session's INVITE or re-INVITE got no final answer in time.
    pub(super) fn recording_timeout(&mut self, now: Instant, call: CallRef) {
        let due = self
            .recordings
            .get(call)
            .and_then(|r| r.session.as_ref())
            .and_then(|s| s.pending.as_ref())
            .is_some_and(|p| now >= p.deadline);
        if due {
            self.cancel_pending_invite(call);
            self.recording_failed(now, call, RecordingFailure::Timeout, None);
        }
    }

    /// CANCEL an unanswered initial INVITE to the SRS (RFC 3261 §9.1).
    fn cancel_pending_invite(&mut self, call: CallRef) {
        let Some(rec) = self.recordings.get_mut(call) else {
            return;
        };
        let target = rec
            .session
            .as_ref()
            .and_then(|s| rec.recorder.srs.get(s.target))
            .map(|c| c.target);
        let Some(s) = rec.session.as_mut() else {
            return;
        };
        let Some(p) = s.pending.take() else {
            return;
        };
        if s.state != RecordingState::Offering {
            return;
        }
        let mut cancel =
            SipMessage::new_request(Method::Cancel, p.request.request_uri().unwrap_or_default());
        for h in ["via", "from", "to", "call-id"] {
            if let Some(v) = p.request.header(h) {
                cancel.push_header(h, v);
            }
        }
        cancel.push_header("Max-Forwards", "70");
        cancel.push_header("CSeq", format!("{} CANCEL", p.cseq));
        if let Some(t) = target {
            self.send(Dest::Target(t), cancel);
        }
    }

    /// The session failed: release it, then the next SRS target (a new session), or give
    /// up (a held call is refused 503).
    fn recording_failed(
        &mut self,
        now: Instant,
        call: CallRef,
        why: RecordingFailure,
        status: Option<u16>,
    ) {
        // An accepted session whose SRS is still reachable (not a transport failure)
        // gets its BYE with the final metadata before the next one starts.
        let bye = (why != RecordingFailure::Transport)
            .then(|| self.srs_bye(now, call))
            .flatten();
        let Some((id, target, mid_call)) =
            self.close_session(now, call, RecordingState::Failed, None)
        else {
            return;
        };
        if let Some((dest, bye)) = bye {
            self.send(dest, bye);
        }
        let Some(rec) = self.recordings.get_mut(call) else {
            return;
        };
        let srs = rec.recorder.srs_uri(target);
        let tenant = rec.tenant.clone();
        metrics::counter!("sbc_recording_failures_total", "tenant" => tenant.to_string(), "reason" => why.as_str()).increment(1);
        AuditTo(self.audit.as_deref())
            .failure(AuditEvent::failed(call, &tenant, id, &srs, status), why);
        if mid_call {
            rec.gap_from = Some((id, self.cfg.wall_clock.wall(now)));
        }
        let next = target + 1;
        if why.fails_over(status) && next < rec.recorder.srs.len() {
            rec.failovers += 1;
            info!(event = "recording_failover", call = %call, tenant = %tenant, from = srs, "SRS failed: trying the next");
            self.start_session(now, call, next);
            return;
        }
        metrics::counter!("sbc_recording_sessions_total", "tenant" => tenant.to_string(), "outcome" => "failed").increment(1);
        self.recording_given_up(now, call);
    }

    /// No SRS took the call: a held call is refused 503; otherwise it goes on.
    fn recording_given_up(&mut self, now: Instant, call: CallRef) {
        let Some(rec) = self.recordings.get_mut(call) else {
            return;
        };
        // Not held yet (failed while the INVITE is being relayed): the hold refuses.
        rec.required_pending = false;
        let Some(h) = rec.held.take() else {
            self.recordings.publish(call);
            return;
        };
        let tenant = self.calls.get(call).map(|c| c.tenant.clone());
        warn_refused(call, tenant.as_ref());
        let refusal = Refusal::RecordingUnavailable;
        metrics::counter!("sbc_sip_requests_refused_total", "reason" => refusal.as_str())
            .increment(1);
        if let Some(t) = &tenant {
            metrics::counter!("sbc_sip_calls_failed_total", "tenant" => t.to_string(), "class" => "5xx").increment(1);
        }
        let tag = self
            .calls
            .get(call)
            .map(|c| c.caller.local_tag.clone())
            .unwrap_or_default();
        let resp = self
            .pairs
            .get(h.pair)
            .map(|p| refusal.response(&p.server_req, &tag));
        if let Some(resp) = resp {
            self.respond_upstream(now, h.pair, resp);
        }
        if let Some(p) = self.pairs.get_mut(h.pair) {
            // The held INVITE never left: nothing to wait for downstream.
            p.client.abort();
        }
        self.arm_pair(h.pair);
        self.pairs.remove_if_finished(h.pair);
        self.end_call(call, "recording unavailable");
    }

    /// Close the current session (released streams, history): its id, target index and
    /// whether it had been accepted. `bye` sends BYE (or CANCEL while offering) first.
    fn close_session(
        &mut self,
        now: Instant,
        call: CallRef,
        state: RecordingState,
        stop: Option<SystemTime>,
    ) -> Option<(RecordingId, usize, bool)> {
        let media = self.recordings.media.clone();
        let rec = self.recordings.get_mut(call)?;
        let mut s = rec.session.take()?;
        let accepted = s.accepted_unix.is_some();
        s.state = state;
        s.pending = None;
        if let Some(m) = &media {
            for st in &s.streams {
                m.release_stream(st.id);
            }
        }
        let status = s.status(&rec.recorder, rec.failovers);
        rec.history.push(status);
        let (id, target, call_id) = (s.id, s.target, s.dialog.call_id.clone());
        drop(s);
        let _ = (now, stop);
        self.recordings.unindex(&call_id);
        metrics::gauge!("sbc_recording_active").set(self.recordings.active() as f64);
        self.recordings.publish(call);
        Some((id, target, accepted))
    }

    /// A failure to start (no stream could be prepared): counted and audited like any.
    fn session_failed_at_start(
        &mut self,
        now: Instant,
        call: CallRef,
        id: RecordingId,
        target: usize,
        why: RecordingFailure,
    ) {
        let Some(rec) = self.recordings.get_mut(call) else {
            return;
        };
        let srs = rec.recorder.srs_uri(target);
        let tenant = rec.tenant.clone();
        rec.history.push(sbc_core::recording::RecordingStatus {
            id,
            srs: srs.clone(),
            state: RecordingState::Failed,
            streams: Vec::new(),
            started_unix: None,
            failovers: rec.failovers,
        });
        metrics::counter!("sbc_recording_failures_total", "tenant" => tenant.to_string(), "reason" => why.as_str()).increment(1);
        metrics::counter!("sbc_recording_sessions_total", "tenant" => tenant.to_string(), "outcome" => "failed").increment(1);
        AuditTo(self.audit.as_deref())
            .failure(AuditEvent::failed(call, &tenant, id, &srs, None), why);
        self.recording_given_up(now, call);
    }

    /// End the current session from our side: BYE (an accepted one, carrying the final
    /// metadata with stop times) or CANCEL (one still offering).
    fn stop_session(&mut self, now: Instant, call: CallRef) {
        let bye = self.srs_bye(now, call);
        let cancel_needed = self
            .recordings
            .get(call)
            .and_then(|r| r.session.as_ref())
            .is_some_and(|s| s.state == RecordingState::Offering);
        if cancel_needed {
            self.cancel_pending_invite(call);
        }
        let Some((id, target, _)) = self.close_session(now, call, RecordingState::Stopped, None)
        else {
            return;
        };
        if let Some((dest, bye)) = bye {
            self.send(dest, bye);
        }
        self.count_stopped(call, id, target, RecordingEvent::Stopped);
    }

    /// Count and audit a session that ended normally (`event`: who ended it).
    fn count_stopped(&self, call: CallRef, id: RecordingId, target: usize, event: RecordingEvent) {
        if let Some(rec) = self.recordings.get(call) {
            let srs = rec.recorder.srs_uri(target);
            metrics::counter!("sbc_recording_sessions_total", "tenant" => rec.tenant.to_string(), "outcome" => "stopped").increment(1);
            AuditTo(self.audit.as_deref()).event(AuditEvent {
                event,
                call,
                tenant: &rec.tenant,
                id,
                srs: &srs,
                status: None,
            });
        }
    }

    /// A BYE on the session's dialog, if it has one, carrying the final metadata snapshot
    /// (stop times at `now`; module docs: why in the BYE).
    fn srs_bye(&mut self, now: Instant, call: CallRef) -> Option<(Dest, SipMessage)> {
        let branch = self.branch();
        let max_forwards = self.cfg.max_forwards;
        let stop = self.cfg.wall_clock.wall(now);
        let rec = self.recordings.get(call)?;
        let s = rec.session.as_ref()?;
        s.dialog.remote_tag.as_ref()?;
        let candidate = rec.recorder.srs.get(s.target)?.clone();
        let advertised = self.advertised(s.listener).to_string();
        let xml = self.session_metadata(rec, s, Some(stop));
        let s = self.recordings.get_mut(call)?.session.as_mut()?;
        let cseq = s.dialog.take_cseq();
        let hop = Hop {
            transport: candidate.transport,
            advertised: &advertised,
            branch: &branch,
            max_forwards,
        };
        let mut bye = s.dialog.request(Method::Bye, cseq, hop);
        bye.push_header("Content-Type", siprec::METADATA_TYPE);
        bye.push_header("Content-Disposition", "recording-session");
        bye.set_body(xml.into_bytes());
        Some((Dest::Target(candidate.target), bye))
    }

    /// The call ended: BYE to the SRS, streams released, the recording forgotten.
    pub(super) fn recording_call_ended(&mut self, now: Instant, call: CallRef) {
        if self.recordings.get(call).is_none() {
            return;
        }
        self.stop_session(now, call);
        self.recordings.remove(call);
        metrics::gauge!("sbc_recording_active").set(self.recordings.active() as f64);
    }

    /// A request on an SRS dialog (its BYE ends the recording, never the call): true if
    /// it was one.
    pub(super) fn on_srs_request(&mut self, now: Instant, conn: ConnId, msg: &SipMessage) -> bool {
        let Some(call) = msg
            .call_id()
            .and_then(|c| self.recordings.by_sip_call_id(c))
        else {
            return false;
        };
        let method = msg.method().cloned();
        let ours = self
            .recordings
            .get(call)
            .and_then(|r| r.session.as_ref())
            .is_some_and(|s| msg.header("to").and_then(tag) == Some(s.dialog.local_tag.as_str()));
        let (code, reason) = match (&method, ours) {
            (Some(Method::Ack), _) => return true,
            (_, false) => (481, "Call/Transaction Does Not Exist"),
            (Some(Method::Bye), true) => (200, "OK"),
            _ => (488, "Not Acceptable Here"),
        };
        let resp = response_to(msg, code, reason, None);
        self.outputs
            .push_back(super::Output::Send { conn, msg: resp });
        if code == 200 {
            info!(event = "recording_srs_bye", call = %call, "SRS ended the recording; the call goes on");
            if let Some((id, target, _)) =
                self.close_session(now, call, RecordingState::Stopped, None)
            {
                self.count_stopped(call, id, target, RecordingEvent::StoppedBySrs);
            }
        }
        true
    }

    /// A request for an SRS could not be sent: true if it was one (the session fails).
    pub(super) fn srs_send_failed(&mut self, now: Instant, msg: &SipMessage) -> bool {
        let Some(call) = msg
            .call_id()
            .and_then(|c| self.recordings.by_sip_call_id(c))
        else {
            return false;
        };
        if msg.method() == Some(&Method::Invite) {
            self.recording_failed(now, call, RecordingFailure::Transport, None);
        }
        true
    }

    /// The connection to `target` closed: sessions on it fail (and move on).
    pub(super) fn srs_target_lost(&mut self, now: Instant, target: TargetId) {
        let calls: Vec<CallRef> = self.recordings.calls_on(target);
        for call in calls {
            self.recording_failed(now, call, RecordingFailure::Transport, None);
        }
    }

    /// An admin command for `call` (tenants in `api` mode start and stop; any recorded
    /// call pauses and resumes).
    pub(super) fn recording_command(
        &mut self,
        now: Instant,
        call: CallRef,
        cmd: RecordingCommand,
    ) -> Result<(), RecordingError> {
        let Some(rec) = self.recordings.get(call) else {
            return Err(RecordingError::UnknownCall(call));
        };
        let mode = rec.recorder.settings.mode;
        if matches!(cmd, RecordingCommand::Start | RecordingCommand::Stop)
            && mode != RecordingMode::Api
        {
            return Err(RecordingError::NotApiMode);
        }
        let state = rec.session.as_ref().map(|s| s.state);
        command_fits(cmd, state).map_err(RecordingError::WrongState)?;
        match cmd {
            RecordingCommand::Start => self.start_session(now, call, 0),
            RecordingCommand::Stop => self.stop_session(now, call),
            RecordingCommand::Pause | RecordingCommand::Resume => {
                self.set_paused(now, call, cmd == RecordingCommand::Pause)
            }
        }
        Ok(())
    }

    fn set_paused(&mut self, now: Instant, call: CallRef, paused: bool) {
        let media = self.recordings.media.clone();
        let Some(rec) = self.recordings.get_mut(call) else {
            return;
        };
        rec.paused = paused;
        let held = rec.held_sides;
        let tenant = rec.tenant.clone();
        let Some(s) = rec.session.as_mut() else {
            return;
        };
        s.state = RecordingState::accepted(paused);
        if let Some(m) = &media {
            for st in &s.streams {
                m.pause_stream(st.id, paused || held[side_index(st.side)]);
            }
        }
        let (id, srs) = (s.id, rec.recorder.srs_uri(s.target));
        AuditTo(self.audit.as_deref()).event(AuditEvent {
            event: if paused {
                RecordingEvent::Paused
            } else {
                RecordingEvent::Resumed
            },
            call,
            tenant: &tenant,
            id,
            srs: &srs,
            status: None,
        });
        self.recording_update(now, call);
    }
}

fn warn_refused(call: CallRef, tenant: Option<&sbc_core::tenant::TenantId>) {
    tracing::warn!(
        audit = true,
        event = "recording_required_refused",
        call = %call,
        tenant = tenant.map(|t| t.as_str()).unwrap_or(""),
        "no recording server accepted in time: call refused 503"
    );
}

/// The bodies an SRS's answer may carry: SDP, or `multipart/mixed` with the SDP beside
/// recording metadata. Read by the same bounded parser as every relayed body
/// ([`topology::classify_body`]).
static SRS_ANSWER_BODIES: LazyLock<BodyPolicy> = LazyLock::new(|| {
    BodyPolicy::new(&BodySettings {
        allow: vec![siprec::METADATA_TYPE.to_string()],
    })
});

/// The SDP of an SRS's answer: the body itself, or the `application/sdp` part of a
/// multipart one.
fn answer_sdp(msg: &SipMessage) -> Option<String> {
    let body = topology::classify_body(msg, &SRS_ANSWER_BODIES).ok()?;
    std::str::from_utf8(body.sdp()?).ok().map(str::to_string)
}
