//! Hot standby (issue #16): core A replicates its calls' dialog parts through a
//! recording sink; core B (another harness, same config) installs them as if it had
//! claimed them from the store after A died, and serves the calls. A module of
//! `b2bua_harness.rs` (its harness and helpers), kept in its own file by the state it tests.

use super::*;
use sbc_core::standby::{
    InstallRefusal, MediaTakeover, ReplicaPart, ReplicaSink, ReplicaUpdate, SecretBytes, TakenCall,
};
use sbc_sip::b2bua::{CALLER_WAIT, CSEQ_RESTORE_MARGIN, MAX_REFUSALS_PER_CONNECTION};

/// The store as far as the SIP side sees it: the latest dialog part per call.
#[derive(Debug, Default)]
struct RecordingSink {
    parts: Mutex<HashMap<CallRef, (TenantId, Vec<u8>)>>,
    puts: Mutex<u32>,
    removed: Mutex<Vec<CallRef>>,
}

impl ReplicaSink for RecordingSink {
    fn put(&self, u: ReplicaUpdate) {
        assert_eq!(u.part, ReplicaPart::Dialog);
        assert!(u.secret.is_none(), "dialogs carry no secret");
        *self.puts.lock().unwrap() += 1;
        self.parts
            .lock()
            .unwrap()
            .insert(u.call, (u.tenant, u.public));
    }
    fn remove(&self, call: CallRef) {
        self.parts.lock().unwrap().remove(&call);
        self.removed.lock().unwrap().push(call);
    }
}

impl RecordingSink {
    /// Every call as a claim hands it to the installer.
    fn taken(&self) -> Vec<TakenCall> {
        let mut calls: Vec<_> = self.parts.lock().unwrap().clone().into_iter().collect();
        calls.sort_by_key(|(c, _)| c.0);
        calls
            .into_iter()
            .map(|(call, (tenant, dialog))| taken(call, tenant, Some(dialog), b"media"))
            .collect()
    }

    fn part(&self, call: CallRef) -> serde_json::Value {
        let parts = self.parts.lock().unwrap();
        serde_json::from_slice(&parts[&call].1).unwrap()
    }
}

fn taken(call: CallRef, tenant: TenantId, dialog: Option<Vec<u8>>, media: &[u8]) -> TakenCall {
    TakenCall {
        call,
        tenant,
        epoch: 2,
        dialog,
        media: Some((media.to_vec(), SecretBytes::new(vec![7; 30]))),
        indexes: Some(b"idx".to_vec()),
        lease: None,
    }
}

/// The media engine's takeover, keeping B's media books: a restored call is live
/// media there. `noports` / `bad` media parts fail as the engine would.
#[derive(Debug)]
struct FakeTakeover {
    media: Arc<FakeMedia>,
    restored: Mutex<Vec<CallRef>>,
}

impl MediaTakeover for FakeTakeover {
    fn restore(
        &self,
        call: CallRef,
        _tenant: &TenantId,
        media: &[u8],
        secret: &SecretBytes,
        indexes: Option<&[u8]>,
    ) -> Result<(), MediaError> {
        assert_eq!(secret.len(), 30);
        assert_eq!(indexes, Some(&b"idx"[..]));
        match media {
            b"noports" => Err(MediaError::NoPorts),
            b"bad" => Err(MediaError::NotAcceptable("suite".into())),
            _ => {
                self.media.live.lock().unwrap().insert(call);
                self.restored.lock().unwrap().push(call);
                Ok(())
            }
        }
    }
}

/// A with a recording sink.
fn node_a() -> (Harness, Arc<RecordingSink>) {
    let mut a = Harness::new();
    let sink = Arc::new(RecordingSink::default());
    a.core.set_standby(Some(sink.clone()), None);
    (a, sink)
}

/// B with media takeover (and no sink: it is not replicated further here).
fn node_b() -> (Harness, Arc<FakeTakeover>) {
    let mut b = Harness::new();
    let mt = Arc::new(FakeTakeover {
        media: b.media.clone(),
        restored: Mutex::new(Vec::new()),
    });
    b.core.set_standby(None, Some(mt.clone()));
    (b, mt)
}

/// Install `calls` on B: the route target's connection is re-dialled with one
/// OPTIONS, whose answer is absorbed.
fn install(b: &mut Harness, calls: Vec<TakenCall>) -> sbc_core::standby::InstallReport {
    let report = b.core.install(b.now, calls);
    b.drain_outputs();
    // ACKs sent in place of those the dead node awaited go out too (tested on their
    // own in `a_2xx_whose_ack_went_to_the_dead_node_...`).
    let redials: Vec<SipMessage> = b
        .take_to(To::Callee)
        .into_iter()
        .filter(|m| m.method() != Some(&Method::Ack))
        .collect();
    assert_eq!(
        redials
            .iter()
            .map(|m| m.method().cloned())
            .collect::<Vec<_>>(),
        if report.installed > 0 {
            vec![Some(Method::Options)]
        } else {
            vec![]
        },
        "one re-dial per target"
    );
    assert!(b.take().is_empty(), "nothing else before a request comes");
    for m in redials {
        b.callee_sends(respond(&m, 200, "pbx", false));
        assert!(b.take().is_empty(), "the answer is absorbed");
    }
    report
}

/// The caller's platform reconnecting to B: a new connection of the tenant.
const RECONNECT: ConnId = ConnId(41);

fn reconnect(b: &mut Harness) {
    b.input(Input::Connected {
        conn: RECONNECT,
        kind: ConnKind::Inbound {
            tenant: Some(b.tenant.clone()),
            listener: 0,
        },
    });
}

fn cseq(m: &SipMessage) -> u32 {
    m.cseq().unwrap().0
}

/// A call established on A, taken over by B. Returns (A's sink, B, the INVITE the
/// callee got, the 200 the caller got).
fn taken_over(call_id: &str) -> (Arc<RecordingSink>, Harness, SipMessage, SipMessage) {
    let (mut a, sink) = node_a();
    let (down, ok) = establish(&mut a, call_id);
    let (mut b, _) = node_b();
    let report = install(&mut b, sink.taken());
    assert_eq!(report.installed, 1, "{report:?}");
    assert!(report.refused.is_empty());
    assert_eq!(b.usage().active_calls, 1, "the restored call holds a slot");
    assert_eq!(b.registry.len(), 1, "and a registry entry");
    // Under the admin id A had: a WebSocket tap client reconnects with the same id.
    let ids = |h: &Harness| -> Vec<String> {
        let calls = h.registry.snapshot(None);
        calls.iter().map(|c| c.id.as_str().to_string()).collect()
    };
    assert_eq!(
        ids(&b),
        ids(&a),
        "the call's admin id survives the takeover"
    );
    b.take();
    (sink, b, down, ok)
}

#[test]
fn a_call_is_replicated_from_the_callee_dialog_on_and_removed_when_it_ends() {
    let (mut a, sink) = node_a();
    a.caller_sends(invite("r1", "z9hG4bK-r1"));
    assert_eq!(*sink.puts.lock().unwrap(), 0, "no callee dialog yet");
    let down = a.take_to(To::Callee).remove(0);
    a.callee_sends(respond(&down, 180, "callee-tag", false));
    let part = sink
        .parts
        .lock()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .1
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&part).unwrap();
    assert_eq!(v["v"], 1);
    assert_eq!(v["state"], "setup");
    assert_eq!(v["listener"], "sbc.example.net:5061");
    assert_eq!(v["target"], "pbx.inside:5061");
    assert_eq!(v["callee"]["remote_tag"], "callee-tag");
    assert!(v["early"]["downstream"]["headers"].is_array());
    a.callee_sends(respond(&down, 200, "callee-tag", true));
    let ok = a.take_to(To::Caller).pop().unwrap();
    let call = *sink.parts.lock().unwrap().keys().next().unwrap();
    let v = sink.part(call);
    assert_eq!(v["state"], "established");
    assert!(v["early"].is_null());
    assert_eq!(v["ack_wait"]["side"], "caller", "the 2xx waits for its ACK");
    let puts = *sink.puts.lock().unwrap();
    // The ACK ends the wait: one put, and an ACK again changes nothing.
    a.caller_sends(in_dialog(Method::Ack, &ok, 1, "z9hG4bK-r1a", true));
    assert_eq!(*sink.puts.lock().unwrap(), puts + 1);
    assert!(sink.part(call)["ack_wait"].is_null());
    a.caller_sends(in_dialog(Method::Ack, &ok, 1, "z9hG4bK-r1a", true));
    assert_eq!(*sink.puts.lock().unwrap(), puts + 1);
    // A target refresh: the callee answers a re-INVITE from a new Contact.
    a.caller_sends(in_dialog(Method::Invite, &ok, 2, "z9hG4bK-r1re", true));
    let re = a
        .take_to(To::Callee)
        .into_iter()
        .find(|m| m.method() == Some(&Method::Invite))
        .unwrap();
    let mut moved = sbc_sip::message::response_to(&re, 200, "OK", Some("callee-tag"));
    moved.push_header("Contact", "<sips:pbx@10.9.9.10:5061>");
    a.callee_sends(moved);
    let v = sink.part(call);
    assert_eq!(v["callee"]["remote_target"], "sips:pbx@10.9.9.10:5061");
    assert_eq!(v["callee"]["next_cseq"], cseq(&re) + 1);
    let ok2 = a.take_to(To::Caller).pop().unwrap();
    a.caller_sends(in_dialog(Method::Ack, &ok2, 2, "z9hG4bK-r1rea", true));
    // The callee's BYE: our caller leg's CSeq is taken (put), then the call ends.
    a.callee_sends(in_dialog(
        Method::Bye,
        &respond(&down, 200, "callee-tag", false),
        9,
        "z9hG4bK-r1b",
        false,
    ));
    let bye = a.take_to(To::Caller).remove(0);
    assert_eq!(sink.part(call)["caller"]["next_cseq"], cseq(&bye) + 1);
    a.caller_sends(respond(&bye, 200, "x", false));
    assert_eq!(*sink.removed.lock().unwrap(), vec![call]);
    assert!(sink.parts.lock().unwrap().is_empty());
    a.advance(T1 * 64);
    a.assert_nothing_held();
}

#[test]
fn bye_from_the_caller_on_a_new_connection_reaches_the_callee_with_cseq_above_a() {
    let (sink, mut b, down, ok) = taken_over("t1");
    let _ = sink;
    reconnect(&mut b);
    b.input(Input::Message {
        conn: RECONNECT,
        msg: in_dialog(Method::Bye, &ok, 2, "z9hG4bK-t1bye", true),
    });
    let bye = b.take_to(To::Callee).remove(0);
    assert_eq!(bye.method(), Some(&Method::Bye));
    // A sent the INVITE with CSeq 1 and stored next CSeq 2.
    assert!(cseq(&bye) > cseq(&down));
    assert_eq!(cseq(&bye), 2 + CSEQ_RESTORE_MARGIN);
    assert_eq!(bye.header("call-id"), down.header("call-id"));
    b.callee_sends(respond(&bye, 200, "callee-tag", false));
    let up = b.take_to(To::Other);
    assert_eq!(
        statuses(&up),
        vec![200],
        "the 200 goes back on the new connection"
    );
    b.assert_nothing_held();
}

#[test]
fn bye_from_the_callee_waits_for_the_caller_to_reconnect_then_goes_out_on_it() {
    let (_, mut b, down, _) = taken_over("t2");
    let callee_view = respond(&down, 200, "callee-tag", false);
    b.callee_sends(in_dialog(
        Method::Bye,
        &callee_view,
        5,
        "z9hG4bK-t2bye",
        false,
    ));
    assert!(
        b.take().is_empty(),
        "held: the caller has no connection yet"
    );
    b.advance(Duration::from_secs(3));
    reconnect(&mut b);
    let held = b.take_to(To::Other);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].method(), Some(&Method::Bye));
    // A's caller leg had sent nothing: stored next CSeq 1.
    assert_eq!(cseq(&held[0]), 1 + CSEQ_RESTORE_MARGIN);
    b.input(Input::Message {
        conn: RECONNECT,
        msg: respond(&held[0], 200, "x", false),
    });
    assert_eq!(statuses(&b.take_to(To::Callee)), vec![200]);
    b.assert_nothing_held();
}

#[test]
fn a_caller_that_never_reconnects_ends_the_call_after_the_wait_with_a_log_line() {
    let logs = Capture::default();
    let _guard = logs.install(tracing::Level::INFO);
    let (_, mut b, down, _) = taken_over("t3");
    let callee_view = respond(&down, 200, "callee-tag", false);
    let reinvite = with_body(
        in_dialog(Method::Invite, &callee_view, 5, "z9hG4bK-t3re", false),
        "application/sdp",
        OFFER,
    );
    b.callee_sends(reinvite);
    assert!(b.take_to(To::Other).is_empty());
    b.advance(CALLER_WAIT + Duration::from_secs(1));
    let to_callee = b.take_to(To::Callee);
    assert!(
        to_callee.iter().any(|m| m.method() == Some(&Method::Bye)),
        "the callee's dialog is ended: {to_callee:?}"
    );
    assert!(
        logs.text().contains("restored_caller_absent"),
        "{}",
        logs.text()
    );
    b.advance(T1 * 64);
    b.assert_nothing_held();
}

#[test]
fn re_invites_from_either_side_continue_the_cseq_of_each_leg() {
    let (_, mut b, down, ok) = taken_over("t4");
    reconnect(&mut b);
    let reinvite = with_body(
        in_dialog(Method::Invite, &ok, 2, "z9hG4bK-t4re", true),
        "application/sdp",
        OFFER,
    );
    b.input(Input::Message {
        conn: RECONNECT,
        msg: reinvite,
    });
    let down_re = b.take_to(To::Callee).remove(0);
    assert_eq!(down_re.method(), Some(&Method::Invite));
    assert_eq!(cseq(&down_re), 2 + CSEQ_RESTORE_MARGIN);
    b.callee_sends(respond(&down_re, 200, "callee-tag", true));
    let up = b.take_to(To::Other);
    assert_eq!(statuses(&up), vec![200]);
    b.input(Input::Message {
        conn: RECONNECT,
        msg: in_dialog(Method::Ack, &up[0], 2, "z9hG4bK-t4ack", true),
    });
    let ack = b.take_to(To::Callee).remove(0);
    assert_eq!(
        (ack.method(), cseq(&ack)),
        (Some(&Method::Ack), cseq(&down_re))
    );
    // Now the callee re-INVITEs: the caller leg continues from A's too.
    let callee_view = respond(&down, 200, "callee-tag", false);
    let reinvite = with_body(
        in_dialog(Method::Invite, &callee_view, 7, "z9hG4bK-t4re2", false),
        "application/sdp",
        OFFER,
    );
    b.callee_sends(reinvite);
    let to_caller = b.take_to(To::Other);
    assert_eq!(to_caller[0].method(), Some(&Method::Invite));
    assert_eq!(cseq(&to_caller[0]), 1 + CSEQ_RESTORE_MARGIN);
    // And a second request on the same leg takes the next number.
    b.input(Input::Message {
        conn: RECONNECT,
        msg: respond(&to_caller[0], 200, "x", true),
    });
    b.callee_sends(in_dialog(
        Method::Info,
        &callee_view,
        8,
        "z9hG4bK-t4info",
        false,
    ));
    let info = b
        .take_to(To::Other)
        .into_iter()
        .find(|m| m.method() == Some(&Method::Info))
        .unwrap();
    assert_eq!(cseq(&info), 2 + CSEQ_RESTORE_MARGIN);
}

#[test]
fn an_early_dialog_is_taken_over_and_a_cancel_from_the_caller_ends_it() {
    let (mut a, sink) = node_a();
    let inv = invite("t5", "z9hG4bK-t5");
    a.caller_sends(inv.clone());
    let down = a.take_to(To::Callee).remove(0);
    a.callee_sends(respond(&down, 180, "callee-tag", false));
    let (mut b, _) = node_b();
    let report = install(&mut b, sink.taken());
    assert_eq!(report.installed, 1, "{report:?}");
    assert_eq!(b.usage().pending_invites, 1, "still a pending INVITE");
    reconnect(&mut b);
    let cancel = cancel_of(&inv);
    b.input(Input::Message {
        conn: RECONNECT,
        msg: cancel,
    });
    let up = b.take_to(To::Other);
    assert_eq!(statuses(&up), vec![200, 487]);
    assert_eq!(up[1].header("call-id"), Some("t5"));
    let down_cancel = b.take_to(To::Callee).remove(0);
    assert_eq!(down_cancel.method(), Some(&Method::Cancel));
    assert_eq!(
        down_cancel.header("via"),
        down.header("via"),
        "CANCEL matches A's INVITE"
    );
    b.callee_sends(respond(&down, 487, "callee-tag", false));
    let ack = b.take_to(To::Callee);
    assert_eq!(ack[0].method(), Some(&Method::Ack));
    b.advance(T1 * 64);
    b.assert_nothing_held();
}

#[test]
fn a_cancelled_call_leaves_the_store_at_once() {
    let (mut a, sink) = node_a();
    let inv = invite("t7", "z9hG4bK-t7");
    a.caller_sends(inv.clone());
    let down = a.take_to(To::Callee).remove(0);
    a.callee_sends(respond(&down, 180, "callee-tag", false));
    assert_eq!(sink.parts.lock().unwrap().len(), 1);
    let cancel = cancel_of(&inv);
    a.caller_sends(cancel);
    assert!(
        sink.parts.lock().unwrap().is_empty(),
        "abandoned: nothing to serve"
    );
    assert_eq!(sink.removed.lock().unwrap().len(), 1);
    a.callee_sends(respond(&down, 487, "callee-tag", false));
    a.advance(T1 * 64);
    assert_eq!(sink.removed.lock().unwrap().len(), 1, "removed once");
    a.assert_nothing_held();
}

#[test]
fn an_early_dialog_answered_after_the_takeover_reaches_the_caller_once_adopted() {
    let (mut a, sink) = node_a();
    a.caller_sends(invite("t6", "z9hG4bK-t6"));
    let down = a.take_to(To::Callee).remove(0);
    a.callee_sends(respond(&down, 180, "callee-tag", false));
    let (mut b, _) = node_b();
    assert_eq!(install(&mut b, sink.taken()).installed, 1);
    // The callee answers over B's (re-dialled) connection before the caller is back.
    b.callee_sends(respond(&down, 200, "callee-tag", true));
    assert!(b.take_to(To::Other).is_empty());
    b.advance(Duration::from_secs(2));
    reconnect(&mut b);
    let up = b.take_to(To::Other);
    assert!(statuses(&up).contains(&200), "{:?}", statuses(&up));
    let ok = up.iter().find(|m| m.status() == Some(200)).unwrap().clone();
    ack_then_hang_up(&mut b, &ok, "t6");
}

#[test]
fn a_fenced_call_is_dropped_without_any_message_and_its_record_is_left() {
    let (mut a, sink) = node_a();
    establish(&mut a, "f1");
    let call = *sink.parts.lock().unwrap().keys().next().unwrap();
    a.take();
    assert_eq!(a.core.fence(&[call]), 1);
    assert!(a.take().is_empty(), "no SIP message");
    assert!(a.closed.is_empty());
    assert!(
        sink.removed.lock().unwrap().is_empty(),
        "the new owner's record stays"
    );
    a.advance(T1 * 64);
    assert!(a.take().is_empty());
    a.assert_nothing_held();
}

#[test]
fn a_corrupt_part_is_refused_as_a_bad_record_and_holds_nothing() {
    let (mut b, _) = node_b();
    let t = TenantId::from("acme");
    let report = install(
        &mut b,
        vec![
            taken(CallRef(5), t.clone(), Some(b"{not json".to_vec()), b"m"),
            taken(CallRef(6), t, None, b"m"),
        ],
    );
    assert_eq!(report.installed, 0);
    assert_eq!(
        report.refused,
        vec![
            (CallRef(5), InstallRefusal::BadRecord),
            (CallRef(6), InstallRefusal::BadRecord)
        ]
    );
    b.assert_nothing_held();
}

#[test]
fn a_call_installed_twice_is_refused_the_second_time_and_keeps_one_slot() {
    let (sink, mut b, _, _) = taken_over("d1");
    let again = sink.taken();
    let call = again[0].call;
    let report = install(&mut b, again);
    assert_eq!(report.refused, vec![(call, InstallRefusal::BadRecord)]);
    assert_eq!(b.usage().active_calls, 1);
    assert_eq!(b.registry.len(), 1);
}

/// How one claimed call of the property test is spoiled (or not).
#[derive(Debug, Clone, Copy)]
enum Spoil {
    None,
    Garbage,
    NoDialog,
    OtherVersion,
    UnknownListener,
    UnknownTarget,
    UnknownTenant,
    NoPorts,
    BadMedia,
}

impl Spoil {
    fn expected(self) -> Option<InstallRefusal> {
        match self {
            Spoil::None => None,
            Spoil::Garbage | Spoil::NoDialog | Spoil::OtherVersion => {
                Some(InstallRefusal::BadRecord)
            }
            Spoil::UnknownListener | Spoil::UnknownTarget => Some(InstallRefusal::NoListener),
            Spoil::UnknownTenant => Some(InstallRefusal::UnknownTenant),
            Spoil::NoPorts => Some(InstallRefusal::MediaPorts),
            Spoil::BadMedia => Some(InstallRefusal::Media),
        }
    }

    fn apply(self, mut t: TakenCall) -> TakenCall {
        let edit = |t: &mut TakenCall, key: &str, value: serde_json::Value| {
            let mut v: serde_json::Value =
                serde_json::from_slice(t.dialog.as_ref().unwrap()).unwrap();
            v[key] = value;
            t.dialog = Some(serde_json::to_vec(&v).unwrap());
        };
        match self {
            Spoil::None => {}
            Spoil::Garbage => {
                let d = t.dialog.as_mut().unwrap();
                d.truncate(d.len() / 2);
            }
            Spoil::NoDialog => t.dialog = None,
            Spoil::OtherVersion => edit(&mut t, "v", 2.into()),
            Spoil::UnknownListener => edit(&mut t, "listener", "10.0.0.1:5061".into()),
            Spoil::UnknownTarget => edit(&mut t, "target", "elsewhere:5061".into()),
            Spoil::UnknownTenant => {
                edit(&mut t, "tenant", "nobody".into());
                t.tenant = TenantId::from("nobody");
            }
            Spoil::NoPorts => t.media.as_mut().unwrap().0 = b"noports".to_vec(),
            Spoil::BadMedia => t.media.as_mut().unwrap().0 = b"bad".to_vec(),
        }
        t
    }
}

fn spoil() -> impl Strategy<Value = Spoil> {
    prop_oneof![
        3 => Just(Spoil::None),
        1 => Just(Spoil::Garbage),
        1 => Just(Spoil::NoDialog),
        1 => Just(Spoil::OtherVersion),
        1 => Just(Spoil::UnknownListener),
        1 => Just(Spoil::UnknownTarget),
        1 => Just(Spoil::UnknownTenant),
        1 => Just(Spoil::NoPorts),
        1 => Just(Spoil::BadMedia),
    ]
}

/// The caller, back on `RECONNECT`, ACKs the restored early dialog's 200 `ok` and
/// hangs up; the callee answers the BYE; nothing is held after. Returns what the
/// callee got for the ACK.
fn ack_then_hang_up(b: &mut Harness, ok: &SipMessage, id: &str) -> Vec<SipMessage> {
    b.input(Input::Message {
        conn: RECONNECT,
        msg: in_dialog(Method::Ack, ok, 1, &format!("z9hG4bK-{id}ack"), true),
    });
    assert_eq!(b.usage().pending_invites, 0);
    assert_eq!(b.usage().active_calls, 1);
    let for_ack = b.take_to(To::Callee);
    b.input(Input::Message {
        conn: RECONNECT,
        msg: in_dialog(Method::Bye, ok, 2, &format!("z9hG4bK-{id}bye"), true),
    });
    let bye = b
        .take_to(To::Callee)
        .into_iter()
        .find(|m| m.method() == Some(&Method::Bye))
        .unwrap();
    b.callee_sends(respond(&bye, 200, "callee-tag", false));
    b.advance(T1 * 64);
    b.assert_nothing_held();
    for_ack
}

/// A trunk's own connection to us (RFC 3261 §18.2.2, or its connection to A gone):
/// accepted on the listener from the target's address.
const TRUNK_IN: ConnId = ConnId(51);

fn trunk_connects(h: &mut Harness, targets: Vec<TargetId>) {
    h.input(Input::Connected {
        conn: TRUNK_IN,
        kind: ConnKind::Trunk {
            targets,
            listener: 0,
        },
    });
}

/// `sbc_sip_requests_refused_total{reason}` in `snapshotter`.
fn refused(snapshotter: &metrics_util::debugging::Snapshotter, reason: &str) -> Option<u64> {
    use metrics_util::debugging::DebugValue;
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, _, _, _)| {
            k.key().name() == "sbc_sip_requests_refused_total"
                && k.key().labels().any(|l| l.value() == reason)
        })
        .and_then(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => Some(c),
            _ => None,
        })
}

#[test]
fn bye_from_the_callee_on_its_own_new_connection_reaches_the_caller_once_adopted() {
    let (_, mut b, down, _) = taken_over("k1");
    trunk_connects(&mut b, vec![TARGET]);
    let callee_view = respond(&down, 200, "callee-tag", false);
    b.input(Input::Message {
        conn: TRUNK_IN,
        msg: in_dialog(Method::Bye, &callee_view, 7, "z9hG4bK-k1bye", false),
    });
    assert!(b.take().is_empty(), "held until the caller is back");
    reconnect(&mut b);
    let held = b.take_to(To::Other);
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].method(), Some(&Method::Bye));
    assert_eq!(held[0].header("call-id"), Some("k1"));
    b.input(Input::Message {
        conn: RECONNECT,
        msg: respond(&held[0], 200, "x", false),
    });
    let answered = b.take_to(To::Other);
    assert_eq!(statuses(&answered), vec![200], "on the trunk's connection");
    assert_eq!(answered[0].cseq().unwrap().0, 7);
    assert!(b.take().is_empty());
    b.assert_nothing_held();
}

#[test]
fn a_trunk_that_reconnects_to_a_single_node_is_served_in_its_dialogs() {
    let mut h = Harness::new();
    let (down, ok) = establish(&mut h, "k2");
    trunk_connects(&mut h, vec![TARGET]);
    let callee_view = respond(&down, 200, "callee-tag", false);
    let mut reinvite = in_dialog(Method::Invite, &callee_view, 3, "z9hG4bK-k2re", false);
    reinvite.push_header("Contact", "<sips:pbx@10.9.9.9:5061>");
    let reinvite = with_body(reinvite, "application/sdp", OFFER);
    h.input(Input::Message {
        conn: TRUNK_IN,
        msg: reinvite,
    });
    let up = h.take_to(To::Caller);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].method(), Some(&Method::Invite));
    h.caller_sends(respond(&up[0], 200, "from-k2", true));
    let answered = h.take_to(To::Other);
    assert!(
        statuses(&answered).contains(&200),
        "{:?}",
        statuses(&answered)
    );
    // The BYE from the caller still goes to the target's pooled connection.
    h.caller_sends(in_dialog(Method::Bye, &ok, 2, "z9hG4bK-k2bye", true));
    let bye = h.take_to(To::Callee);
    assert_eq!(bye[0].method(), Some(&Method::Bye));
    h.input(Input::Message {
        conn: TRUNK_IN,
        msg: respond(&bye[0], 200, "callee-tag", false),
    });
    assert_eq!(
        statuses(&h.take_to(To::Caller)),
        vec![200],
        "§18.2.2 answer"
    );
    h.advance(T1 * 64);
    h.assert_nothing_held();
}

#[test]
fn an_early_dialog_answered_on_the_callees_own_connection_reaches_the_caller() {
    let (mut a, sink) = node_a();
    a.caller_sends(invite("k3", "z9hG4bK-k3"));
    let down = a.take_to(To::Callee).remove(0);
    a.callee_sends(respond(&down, 180, "callee-tag", false));
    let (mut b, _) = node_b();
    assert_eq!(install(&mut b, sink.taken()).installed, 1);
    // The callee's connection to A is gone: it sends its 200 to our Via (the VIP).
    trunk_connects(&mut b, vec![TARGET]);
    b.input(Input::Message {
        conn: TRUNK_IN,
        msg: respond(&down, 200, "callee-tag", true),
    });
    let acked = b.take_to(To::Callee);
    b.advance(Duration::from_secs(1));
    reconnect(&mut b);
    let up = b.take_to(To::Other);
    assert!(statuses(&up).contains(&200), "{:?}", statuses(&up));
    let ok = up.iter().find(|m| m.status() == Some(200)).unwrap().clone();
    let acked: Vec<_> = acked
        .into_iter()
        .chain(ack_then_hang_up(&mut b, &ok, "k3"))
        .collect();
    assert_eq!(
        acked
            .iter()
            .filter(|m| m.method() == Some(&Method::Ack))
            .count(),
        1,
        "the 2xx is acknowledged to the callee once"
    );
}

#[test]
fn a_new_invite_from_a_trunks_address_is_refused_like_an_unrecognised_peer() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let logs = Capture::default();
    let _guard = logs.install(tracing::Level::INFO);
    metrics::with_local_recorder(&recorder, || {
        let mut h = Harness::new();
        trunk_connects(&mut h, vec![TARGET]);
        for i in 0..MAX_REFUSALS_PER_CONNECTION {
            h.input(Input::Message {
                conn: TRUNK_IN,
                msg: invite(&format!("k4-{i}"), &format!("z9hG4bK-k4-{i}")),
            });
        }
        let refused_up = h.take_to(To::Other);
        assert_eq!(
            statuses(&refused_up),
            vec![403; MAX_REFUSALS_PER_CONNECTION as usize]
        );
        assert!(h.take().is_empty(), "nothing reaches a target");
        assert_eq!(h.closed, vec![TRUNK_IN], "closed after repeated refusals");
        assert_eq!(h.core.stats().active_calls, 0);
        assert_eq!(h.usage().pending_invites, 0);
    });
    assert_eq!(
        refused(&snapshotter, "unrecognised_peer"),
        Some(u64::from(MAX_REFUSALS_PER_CONNECTION))
    );
    assert!(
        logs.text().contains("trunk_request_refused"),
        "{}",
        logs.text()
    );
}

#[test]
fn a_bye_for_a_dialog_on_another_target_is_refused_on_a_trunks_connection() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (_, mut b, down, ok) = taken_over("k5");
        // Target 2's address: the call's callee leg is on target 0.
        trunk_connects(&mut b, vec![TargetId(2)]);
        let callee_view = respond(&down, 200, "callee-tag", false);
        b.input(Input::Message {
            conn: TRUNK_IN,
            msg: in_dialog(Method::Bye, &callee_view, 7, "z9hG4bK-k5bye", false),
        });
        assert_eq!(statuses(&b.take_to(To::Other)), vec![403]);
        assert!(b.take().is_empty());
        // Nor may it speak for the caller's leg of a dialog.
        reconnect(&mut b);
        let caller_view = in_dialog(Method::Bye, &ok, 9, "z9hG4bK-k5x", true);
        b.input(Input::Message {
            conn: TRUNK_IN,
            msg: caller_view,
        });
        let refused_now: Vec<_> = b.take_to(To::Other);
        assert_eq!(statuses(&refused_now), vec![403]);
        assert_eq!(b.usage().active_calls, 1, "the call goes on");
    });
    assert_eq!(refused(&snapshotter, "unrecognised_peer"), Some(2));
}

/// A: the callee's 2xx relayed to the caller, whose ACK has not come when A dies
/// (the ACK went to A). Returns (A's sink, A, the INVITE the callee got).
fn answered_not_acked(call_id: &str, offer: bool) -> (Arc<RecordingSink>, Harness, SipMessage) {
    let (mut a, sink) = node_a();
    let mut inv = invite(call_id, &format!("z9hG4bK-{call_id}"));
    if !offer {
        inv.remove_header("content-type");
        inv.set_body(Vec::new());
    }
    a.caller_sends(inv);
    let down = a.take_to(To::Callee).remove(0);
    a.callee_sends(respond(&down, 200, "callee-tag", true));
    assert!(statuses(&a.take_to(To::Caller)).contains(&200));
    (sink, a, down)
}

#[test]
fn a_2xx_whose_ack_went_to_the_dead_node_is_acked_to_the_callee_by_the_new_owner() {
    let (sink, _a, down) = answered_not_acked("w1", true);
    let call = *sink.parts.lock().unwrap().keys().next().unwrap();
    let wait = &sink.part(call)["ack_wait"];
    assert_eq!(wait["side"], "caller");
    assert_eq!(wait["answer_in_ack"], false);
    let (mut b, _) = node_b();
    let report = b.core.install(b.now, sink.taken());
    assert_eq!(report.installed, 1);
    b.drain_outputs();
    let out = b.take_to(To::Callee);
    let methods: Vec<_> = out.iter().map(|m| m.method().cloned()).collect();
    assert_eq!(methods, vec![Some(Method::Options), Some(Method::Ack)]);
    let ack = &out[1];
    assert_eq!(cseq(ack), cseq(&down), "the INVITE's CSeq");
    assert_eq!(ack.call_id(), down.call_id());
    assert_eq!(tag(ack.header("to").unwrap()), Some("callee-tag"));
    assert!(ack.body().is_empty());
    // The call goes on past 64*T1: nobody gives up on a missing ACK.
    b.callee_sends(respond(&out[0], 200, "pbx", false));
    reconnect(&mut b);
    b.advance(T1 * 65);
    assert!(b.take().is_empty(), "no BYE either way");
    assert_eq!(b.usage().active_calls, 1);
}

#[test]
fn a_lost_ack_that_carried_the_answer_ends_the_call_on_the_new_owner() {
    let (sink, _a, down) = answered_not_acked("w2", false);
    let call = *sink.parts.lock().unwrap().keys().next().unwrap();
    assert_eq!(sink.part(call)["ack_wait"]["answer_in_ack"], true);
    let (mut b, _) = node_b();
    assert_eq!(b.core.install(b.now, sink.taken()).installed, 1);
    b.drain_outputs();
    let out = b.take_to(To::Callee);
    let methods: Vec<_> = out.iter().map(|m| m.method().cloned()).collect();
    assert_eq!(methods, vec![Some(Method::Options)], "no ACK made up");
    b.callee_sends(respond(&out[0], 200, "pbx", false));
    b.advance(Duration::from_secs(1));
    // Ended once the caller is back: BYE on both legs.
    reconnect(&mut b);
    let up = b.take_to(To::Other);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].method(), Some(&Method::Bye));
    let down_bye = b.take_to(To::Callee);
    assert_eq!(down_bye.len(), 1);
    assert_eq!(down_bye[0].method(), Some(&Method::Bye));
    assert_eq!(down_bye[0].call_id(), down.call_id());
    b.callee_sends(respond(&down_bye[0], 200, "callee-tag", false));
    b.input(Input::Message {
        conn: RECONNECT,
        msg: respond(&up[0], 200, "x", false),
    });
    b.advance(T1 * 64);
    b.assert_nothing_held();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every refusal path of install releases what it took: the admission slot (and
    /// pending INVITE), the moved cluster lease, media, registry entry; the installed
    /// calls hold exactly one of each, and fencing them leaves nothing.
    #[test]
    fn every_install_refusal_releases_its_admission_slot(
        spoils in prop::collection::vec((spoil(), any::<bool>()), 1..8)
    ) {
        let (mut a, sink) = node_a();
        for (i, (_, early)) in spoils.iter().enumerate() {
            let id = format!("p{i}");
            a.caller_sends(invite(&id, &format!("z9hG4bK-{id}")));
            let down = a.take_to(To::Callee).remove(0);
            a.callee_sends(respond(&down, 180, "callee-tag", false));
            if !early {
                a.callee_sends(respond(&down, 200, "callee-tag", true));
            }
        }
        let claimed = sink.taken();
        prop_assert_eq!(claimed.len(), spoils.len());
        let (mut b, mt) = node_b();
        let mut want = Vec::new();
        let released = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let calls: Vec<TakenCall> = claimed
            .into_iter()
            .zip(&spoils)
            .map(|(mut t, (s, _))| {
                if let Some(r) = s.expected() {
                    want.push((t.call, r));
                }
                t.lease = Some(sbc_core::cluster::LeaseGuard(Box::new(CountedLease(
                    released.clone(),
                ))));
                s.apply(t)
            })
            .collect();
        let released_now = || released.load(std::sync::atomic::Ordering::SeqCst);
        let report = install(&mut b, calls);
        prop_assert_eq!(&report.refused, &want);
        let installed = spoils.len() - want.len();
        prop_assert_eq!(report.installed as usize, installed);
        let u = b.usage();
        prop_assert_eq!(u.active_calls as usize, installed);
        prop_assert_eq!(b.registry.len(), installed);
        prop_assert_eq!(b.media.live.lock().unwrap().len(), installed);
        prop_assert_eq!(released_now(), want.len(), "refused calls' leases released");
        let restored = mt.restored.lock().unwrap().clone();
        prop_assert_eq!(b.core.fence(&restored), installed);
        prop_assert_eq!(released_now(), spoils.len(), "and the installed ones' with them");
        b.advance(T1 * 64);
        b.assert_nothing_held();
    }
}
