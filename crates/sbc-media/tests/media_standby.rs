//! Hot standby, media side (issue #16), end to end on loopback without Redis: engine A
//! relays an SRTP call with known keys both ways and replicates it to a recording
//! [`ReplicaSink`] (a test double keeping each part's latest update); A shuts down (its
//! ports close); engine B restores the call from the stored parts on the same ports and
//! the same far ends keep sending under their running contexts: every packet relayed
//! by B must authenticate at the far ends, and B must see no authentication failure.
//! Each test uses its own port ranges so they run in parallel.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::UdpSocket;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use sbc_core::media::{CallRef, LegPolicy, LegSide, MediaControl, MediaPolicy, SrtpMode};
use sbc_core::standby::{ReplicaPart, ReplicaSink, ReplicaUpdate, SecretBytes};
use sbc_core::tap::{TapControl, TapLegs, TapSpec, TapSuite, TapTransport};
use sbc_core::tenant::TenantId;
use sbc_media::engine::MediaEngine;
use sbc_media::srtp::{MasterKey, SrtpContext, SrtpProfile};
use sbc_testkit::media::*;

const CALLER_SSRC: u32 = 0x1111_1111;
const CALLEE_SSRC: u32 = 0x2222_2222;
const TENANT: &str = "t1";

/// Keeps the latest update of each call and part, as the store would.
#[derive(Debug, Default)]
struct RecordingSink {
    parts: Mutex<HashMap<(CallRef, ReplicaPart), ReplicaUpdate>>,
    puts: Mutex<Vec<(CallRef, ReplicaPart)>>,
}

impl ReplicaSink for RecordingSink {
    fn put(&self, update: ReplicaUpdate) {
        self.puts.lock().unwrap().push((update.call, update.part));
        self.parts
            .lock()
            .unwrap()
            .insert((update.call, update.part), update);
    }
    fn remove(&self, call: CallRef) {
        self.parts.lock().unwrap().retain(|(c, _), _| *c != call);
    }
}

impl RecordingSink {
    fn get(&self, call: CallRef, part: ReplicaPart) -> Option<ReplicaUpdate> {
        self.parts.lock().unwrap().get(&(call, part)).cloned()
    }

    /// The call's Indexes part once `ok` holds for it (parsed as JSON), within 3 s.
    fn wait_indexes(&self, call: CallRef, ok: impl Fn(&serde_json::Value) -> bool) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if let Some(u) = self.get(call, ReplicaPart::Indexes) {
                let v: serde_json::Value = serde_json::from_slice(&u.public).unwrap();
                if ok(&v) {
                    return u.public;
                }
            }
            assert!(Instant::now() < deadline, "no index report as expected");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The highest tx sequence number of the callee-facing leg reported for the caller's SSRC.
fn reported_tx_seq(v: &serde_json::Value) -> Option<(u64, u64)> {
    let tx = v["streams"][0]["legs"][1]["tx"].as_array()?;
    tx.iter()
        .find(|s| s[0].as_u64() == Some(u64::from(CALLER_SSRC)))
        .map(|s| (s[1].as_u64().unwrap(), s[2].as_u64().unwrap()))
}

fn policy(profile: SrtpProfile) -> MediaPolicy {
    let leg = || LegPolicy {
        srtp: SrtpMode::Required,
        suites: vec![profile.as_str().to_string()],
    };
    MediaPolicy {
        caller: leg(),
        callee: leg(),
        ..MediaPolicy::default()
    }
}

fn key(profile: SrtpProfile, byte: u8) -> MasterKey {
    let n = profile.master_key_len() + profile.master_salt_len();
    MasterKey::from_concatenated(profile, &vec![byte; n]).unwrap()
}

/// The far ends of one SRTP call and their running contexts.
struct Call {
    caller: UdpSocket,
    callee: UdpSocket,
    /// The engine's ports toward the caller and the callee.
    caller_side: u16,
    callee_side: u16,
    /// caller -> engine, engine -> callee, callee -> engine, engine -> caller.
    k1: SrtpContext,
    k2: SrtpContext,
    k3: SrtpContext,
    k4: SrtpContext,
    /// Every key of the call (key || salt), to look for in what must not hold them.
    keys: Vec<Vec<u8>>,
}

fn sdp(sock: &UdpSocket, profile: SrtpProfile, key: &MasterKey) -> Vec<u8> {
    Sdp::audio(sock.local_addr().unwrap().port())
        .rtcp_mux()
        .crypto(1, profile.as_str(), &master_bytes(key))
        .bytes()
}

/// A call offered by its caller, not answered yet.
struct Offered {
    profile: SrtpProfile,
    caller: UdpSocket,
    callee: UdpSocket,
    caller_key: MasterKey,
    callee_key: MasterKey,
    /// The caller's SDP and the engine's offer to the callee.
    caller_sdp: Vec<u8>,
    offer: Vec<u8>,
}

impl Offered {
    fn new(e: &MediaEngine, id: CallRef, profile: SrtpProfile) -> Offered {
        let (caller, callee) = (peer(), peer());
        let caller_key = key(profile, 0x11);
        let caller_sdp = sdp(&caller, profile, &caller_key);
        let offer = e
            .offer(
                id,
                &TenantId::from(TENANT),
                LegSide::Caller,
                &caller_sdp,
                &policy(profile),
            )
            .unwrap();
        Offered {
            profile,
            caller,
            callee,
            caller_key,
            callee_key: key(profile, 0x33),
            caller_sdp,
            offer,
        }
    }

    /// The callee answers through `e` (which may not be the engine that offered).
    fn answer(self, e: &MediaEngine, id: CallRef) -> Call {
        let p = self.profile;
        let answer = e
            .answer(id, LegSide::Callee, &sdp(&self.callee, p, &self.callee_key))
            .unwrap();
        let answer = sbc_media::sdp::parse(&answer).unwrap();
        let offer = sbc_media::sdp::parse(&self.offer).unwrap();
        let k2 = offer.media[0].crypto[0].key.clone().unwrap();
        let k4 = answer.media[0].crypto[0].key.clone().unwrap();
        let (ck, ek) = (&self.caller_key, &self.callee_key);
        Call {
            caller_side: answer.media[0].port,
            callee_side: offer.media[0].port,
            k1: ctx_for(p, ck),
            k2: ctx_for(p, &k2),
            k3: ctx_for(p, ek),
            k4: ctx_for(p, &k4),
            keys: [ck, ek, &k2, &k4].map(master_bytes).to_vec(),
            caller: self.caller,
            callee: self.callee,
        }
    }
}

impl Call {
    fn setup(e: &MediaEngine, id: CallRef, profile: SrtpProfile) -> Call {
        Offered::new(e, id, profile).answer(e, id)
    }

    /// One packet each way with sequence number `seq`; both arrive and authenticate.
    fn both_ways(&mut self, seq: u16) {
        let a = rtp(seq, CALLER_SSRC, format!("caller {seq}").as_bytes());
        send_srtp(&self.caller, &mut self.k1, &a, self.caller_side);
        assert_eq!(
            recv_srtp(&self.callee, &mut self.k2),
            a,
            "caller -> callee {seq:#x}"
        );
        let b = rtp(seq, CALLEE_SSRC, format!("callee {seq}").as_bytes());
        send_srtp(&self.callee, &mut self.k3, &b, self.callee_side);
        assert_eq!(
            recv_srtp(&self.caller, &mut self.k4),
            b,
            "callee -> caller {seq:#x}"
        );
    }

    /// One SRTCP receiver report each way; both authenticate.
    fn rtcp_both_ways(&mut self) {
        for (from, to, k_out, k_in, port, ssrc) in [
            (
                &self.caller,
                &self.callee,
                &mut self.k1,
                &mut self.k2,
                self.caller_side,
                CALLER_SSRC,
            ),
            (
                &self.callee,
                &self.caller,
                &mut self.k3,
                &mut self.k4,
                self.callee_side,
                CALLEE_SSRC,
            ),
        ] {
            let mut rr = vec![0x80, 201, 0, 1];
            rr.extend_from_slice(&ssrc.to_be_bytes());
            let mut buf = rr.clone();
            buf.resize(rr.len() + 64, 0);
            let n = k_out.protect_rtcp(&mut buf, rr.len()).unwrap();
            from.send_to(&buf[..n], ("127.0.0.1", port)).unwrap();
            let mut got = recv_packet(to).expect("relayed RTCP");
            let m = k_in.unprotect_rtcp(&mut got).expect("SRTCP authenticates");
            assert_eq!(&got[..m], &rr[..]);
        }
    }
}

/// A and B, with A's replica going to `sink`.
fn engines(sink: &Arc<RecordingSink>, refresh: Duration) -> (MediaEngine, MediaEngine) {
    let a = engine(40, Duration::from_secs(30));
    a.set_replica_sink(sink.clone(), refresh);
    let b = engine(40, Duration::from_secs(30));
    (a, b)
}

/// Restores `call` on `b` from what `sink` holds.
fn restore(b: &MediaEngine, sink: &RecordingSink, call: CallRef) {
    let media = sink.get(call, ReplicaPart::Media).expect("a media part");
    let idx = sink.get(call, ReplicaPart::Indexes).map(|u| u.public);
    let secret = media.secret.clone().expect("the media part has a secret");
    b.takeover()
        .restore(
            call,
            &TenantId::from(TENANT),
            &media.public,
            &secret,
            idx.as_deref(),
        )
        .unwrap();
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Neither the clear part nor any Debug output holds a key, raw or base64.
fn assert_no_key(u: &ReplicaUpdate, keys: &[Vec<u8>]) {
    let debug = format!("{u:?}");
    for k in keys {
        let b64 = base64::engine::general_purpose::STANDARD.encode(k);
        assert!(!contains(&u.public, k), "raw key in the public part");
        assert!(
            !contains(&u.public, b64.as_bytes()),
            "base64 key in the public part"
        );
        assert!(
            !contains(&u.public, hex::encode(k).as_bytes()),
            "hex key in the public part"
        );
        assert!(
            !debug.contains(&b64) && !debug.contains(&hex::encode(k)),
            "key in Debug"
        );
        assert!(
            contains(u.secret.as_ref().unwrap().expose(), k),
            "the secret holds it"
        );
    }
}

fn failover_for(profile: SrtpProfile) {
    let sink = Arc::new(RecordingSink::default());
    let (a, b) = engines(&sink, Duration::from_millis(200));
    let id = CallRef(7);
    let mut c = Call::setup(&a, id, profile);
    for seq in 1000..1020 {
        c.both_ways(seq);
    }
    c.rtcp_both_ways();
    // A refresh after the last packet (every 200 ms here).
    sink.wait_indexes(id, |v| reported_tx_seq(v) == Some((0, 1019)));
    let media = sink.get(id, ReplicaPart::Media).unwrap();
    assert_no_key(&media, &c.keys);
    // A dies: its sockets close with its workers.
    a.shutdown();
    restore(&b, &sink, id);
    for seq in 1020..1040 {
        c.both_ways(seq);
    }
    c.rtcp_both_ways();
    // Counters are published once per worker wake-up: wait for the last one.
    let deadline = Instant::now() + PACKET_WAIT;
    let mut s = b.stats();
    while s.packets_relayed < 42 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        s = b.stats();
    }
    assert_eq!(s.packets_dropped_auth, 0, "{profile:?}: {s:?}");
    assert_eq!(
        s.packets_relayed, 42,
        "{profile:?}: 20 RTP and 1 RTCP each way: {s:?}"
    );
    assert_eq!(s.active_streams, 1);
}

#[test]
fn every_suite_survives_a_failover_without_an_authentication_failure() {
    for p in SrtpProfile::ALL {
        failover_for(p);
    }
}

#[test]
fn a_stream_straddling_the_sequence_wrap_across_the_failover() {
    let sink = Arc::new(RecordingSink::default());
    // A refresh far longer than the test: only the 0x8000 crossing reports.
    let (a, b) = engines(&sink, Duration::from_secs(600));
    let id = CallRef(9);
    let mut c = Call::setup(&a, id, SrtpProfile::AeadAes128Gcm);
    // Steps of 1000 (lost packets, as far as anyone can tell): a half cycle in 33 packets.
    let mut seq: u16 = 0x7f00;
    for _ in 0..4 {
        c.both_ways(seq);
        seq = seq.wrapping_add(100);
    }
    assert!(seq > 0x8000, "crossed");
    let idx = sink.wait_indexes(id, |v| reported_tx_seq(v).is_some_and(|(_, s)| s >= 0x8000));
    let v: serde_json::Value = serde_json::from_slice(&idx).unwrap();
    assert_eq!(reported_tx_seq(&v).unwrap().0, 0, "ROC 0 before the wrap");
    // A goes on toward the wrap; nothing more is reported (refresh 600 s).
    while seq < 0xf000 {
        c.both_ways(seq);
        seq = seq.wrapping_add(1000);
    }
    let v: serde_json::Value =
        serde_json::from_slice(&sink.get(id, ReplicaPart::Indexes).unwrap().public).unwrap();
    assert!(
        reported_tx_seq(&v).unwrap().1 < 0x9000,
        "the record is stale: {v}"
    );
    a.shutdown();
    restore(&b, &sink, id);
    // The wrap happens on B: 0xf000.. then 0x0000.. with ROC 1 at the far ends.
    for _ in 0..12 {
        c.both_ways(seq);
        seq = seq.wrapping_add(500);
    }
    assert!(seq < 0x2000, "wrapped on B");
    let s = b.stats();
    assert_eq!(s.packets_dropped_auth, 0, "{s:?}");
    // And a restore whose first packet is already past the wrap (the far ends, at ROC 1,
    // keep sending to C, restored from the same stale record at ROC 0).
    b.shutdown();
    let c2 = engine(40, Duration::from_secs(30));
    restore(&c2, &sink, id);
    for _ in 0..5 {
        c.both_ways(seq);
        seq = seq.wrapping_add(500);
    }
    assert_eq!(c2.stats().packets_dropped_auth, 0);
}

#[test]
fn an_srtp_tap_resumes_on_the_standby_under_its_key() {
    let sink = Arc::new(RecordingSink::default());
    let (a, b) = engines(&sink, Duration::from_millis(200));
    let id = CallRef(11);
    let mut c = Call::setup(&a, id, SrtpProfile::AesCm128HmacSha1_80);
    let recorder = peer();
    let spec = TapSpec {
        legs: TapLegs::Both,
        transport: TapTransport::Srtp(TapSuite::Aes256CmHmacSha1_80),
        destination: recorder.local_addr().unwrap(),
    };
    let info = a.start_tap(id, spec).unwrap();
    let inline = info.key.as_ref().unwrap().expose();
    let material = base64::engine::general_purpose::STANDARD
        .decode(inline.strip_prefix("inline:").unwrap())
        .unwrap();
    let p = SrtpProfile::Aes256CmHmacSha1_80;
    let mut rec = ctx_for(p, &MasterKey::from_concatenated(p, &material).unwrap());
    let copies = |n: usize, rec: &mut SrtpContext| {
        for _ in 0..n {
            let mut pkt = recv_packet(&recorder).expect("a tap copy");
            rec.unprotect_rtp(&mut pkt).expect("the copy authenticates");
        }
    };
    for seq in 1..=10 {
        c.both_ways(seq);
    }
    copies(20, &mut rec);
    sink.wait_indexes(id, |v| v["taps"].as_array().is_some_and(|t| !t.is_empty()));
    let mut keys = c.keys.clone();
    keys.push(material.clone());
    assert_no_key(&sink.get(id, ReplicaPart::Media).unwrap(), &keys);
    a.shutdown();
    restore(&b, &sink, id);
    let taps = b.list_taps(id);
    assert_eq!(taps.len(), 1, "the tap is listed on B");
    assert_eq!(taps[0].destination, recorder.local_addr().unwrap());
    for seq in 11..=20 {
        c.both_ways(seq);
    }
    copies(20, &mut rec);
}

/// A call relayed by A (one packet each way) and replicated, A shut down: B, the far
/// ends, and the stored media part, its secret and the indexes part.
struct Replicated {
    b: MediaEngine,
    call: Call,
    media: Vec<u8>,
    secret: SecretBytes,
    indexes: Vec<u8>,
}

fn replicated(id: CallRef, profile: SrtpProfile) -> Replicated {
    let sink = Arc::new(RecordingSink::default());
    let (a, b) = engines(&sink, Duration::from_millis(100));
    let mut call = Call::setup(&a, id, profile);
    call.both_ways(1);
    let indexes = sink.wait_indexes(id, |v| reported_tx_seq(v).is_some());
    let media = sink.get(id, ReplicaPart::Media).unwrap();
    a.shutdown();
    Replicated {
        b,
        call,
        secret: media.secret.clone().unwrap(),
        media: media.public,
        indexes,
    }
}

#[test]
fn corrupt_records_are_errors_not_panics() {
    let id = CallRef(13);
    let Replicated {
        b,
        call: mut c,
        media,
        secret,
        indexes: idx,
    } = replicated(id, SrtpProfile::AesCm128HmacSha1_80);
    let t = TenantId::from(TENANT);
    let m = b.takeover();
    let bad_secret = SecretBytes::new(secret.expose()[..5].to_vec());
    let mut flipped = media.clone();
    flipped.truncate(flipped.len() / 2);
    let v2 = String::from_utf8(media.clone())
        .unwrap()
        .replacen("\"v\":1", "\"v\":2", 1);
    type Case<'a> = (&'a [u8], &'a SecretBytes, Option<&'a [u8]>);
    let cases: [Case; 6] = [
        (b"", &secret, None),
        (&flipped, &secret, None),
        (v2.as_bytes(), &secret, None),
        (&media, &bad_secret, None),
        (&media, &SecretBytes::new(vec![1, 200]), None),
        (
            &media,
            &secret,
            Some(b"{\"v\":1,\"streams\":[{\"index\":0}]}"),
        ),
    ];
    for (i, (public, secret, idx)) in cases.into_iter().enumerate() {
        let r = m.restore(id, &t, public, secret, idx);
        assert!(r.is_err(), "case {i} refused");
        let shown = format!("{:?}", r.unwrap_err());
        for k in &c.keys {
            assert!(!shown.contains(&hex::encode(k)), "no key in the error");
        }
    }
    assert_eq!(b.stats().active_calls, 0, "nothing half-installed");
    // The good record still restores (the failed attempts released the ports).
    m.restore(id, &t, &media, &secret, Some(&idx)).unwrap();
    c.both_ways(2);
}

#[test]
fn restored_streams_count_in_the_tenant_quota_and_taken_ports_are_refused() {
    let sink = Arc::new(RecordingSink::default());
    let (a, b) = engines(&sink, Duration::from_millis(200));
    let id = CallRef(15);
    let _c = Call::setup(&a, id, SrtpProfile::AesCm128HmacSha1_80);
    let media = sink.get(id, ReplicaPart::Media).unwrap();
    let secret = media.secret.clone().unwrap();
    let t = TenantId::from(TENANT);
    // A still holds the ports: B cannot bind them, and says so as NoPorts.
    let r = b.takeover().restore(id, &t, &media.public, &secret, None);
    assert_eq!(r, Err(sbc_core::media::MediaError::NoPorts));
    a.shutdown();
    b.takeover()
        .restore(id, &t, &media.public, &secret, None)
        .unwrap();
    // A tenant limited to one stream has it: a new call is refused.
    let mut pol = policy(SrtpProfile::AesCm128HmacSha1_80);
    pol.max_streams = 1;
    let caller = peer();
    let k = key(SrtpProfile::AesCm128HmacSha1_80, 0x55);
    let r = b.offer(
        CallRef(16),
        &t,
        LegSide::Caller,
        &sdp(&caller, SrtpProfile::AesCm128HmacSha1_80, &k),
        &pol,
    );
    assert_eq!(r, Err(sbc_core::media::MediaError::TenantStreams));
}

/// The `o=` line's session id and version.
fn origin(sdp: &[u8]) -> (String, String) {
    let s = String::from_utf8_lossy(sdp);
    let o = s.lines().find(|l| l.starts_with("o=")).unwrap();
    let f: Vec<&str> = o.split(' ').collect();
    (f[1].to_string(), f[2].to_string())
}

#[test]
fn an_offer_taken_over_before_its_answer_is_answered_on_the_standby() {
    let sink = Arc::new(RecordingSink::default());
    let (a, b) = engines(&sink, Duration::from_millis(200));
    let id = CallRef(17);
    let p = SrtpProfile::AeadAes256Gcm;
    let t = TenantId::from(TENANT);
    let offered = Offered::new(&a, id, p);
    let (offer, caller_sdp) = (offered.offer.clone(), offered.caller_sdp.clone());
    let parsed = sbc_media::sdp::parse(&offer).unwrap();
    let k2 = parsed.media[0].crypto[0].key.clone().unwrap();
    // Ringing: A dies before the callee answers.
    a.shutdown();
    let b_sink = Arc::new(RecordingSink::default());
    b.set_replica_sink(b_sink.clone(), Duration::from_millis(200));
    restore(&b, &sink, id);
    assert!(
        b_sink.get(id, ReplicaPart::Media).is_some(),
        "put at restore"
    );
    let ek = offered.callee_key.clone();
    let mut c = offered.answer(&b, id);
    for seq in 1..=5 {
        c.both_ways(seq);
    }
    // A re-offer through B keeps our key toward the callee and the o= session.
    let again = b
        .offer(id, &t, LegSide::Caller, &caller_sdp, &policy(p))
        .unwrap();
    let again_parsed = sbc_media::sdp::parse(&again).unwrap();
    let k2_again = again_parsed.media[0].crypto[0].key.clone().unwrap();
    assert_eq!(
        master_bytes(&k2_again),
        master_bytes(&k2),
        "same key re-sent"
    );
    assert_eq!(again_parsed.media[0].port, parsed.media[0].port);
    let (sid, ver) = origin(&offer);
    let (sid2, ver2) = origin(&again);
    assert_eq!(sid, sid2, "same o= session");
    assert!(ver2.parse::<u64>().unwrap() >= ver.parse::<u64>().unwrap());
    b.answer(id, LegSide::Callee, &sdp(&c.callee, p, &ek))
        .unwrap();
    for seq in 6..=10 {
        c.both_ways(seq);
    }
    assert_eq!(b.stats().packets_dropped_auth, 0);
    // B now owns the call: it replicates it itself, committed streams included.
    let b_media = b_sink
        .get(id, ReplicaPart::Media)
        .expect("B puts the media part");
    let v: serde_json::Value = serde_json::from_slice(&b_media.public).unwrap();
    assert_eq!(v["streams"][0]["committed"], true, "{v}");
    assert_no_key(&b_media, &c.keys);
    b_sink.wait_indexes(id, |v| reported_tx_seq(v) == Some((0, 10)));
}

#[test]
fn nothing_is_put_after_delete() {
    let sink = Arc::new(RecordingSink::default());
    let (a, _b) = engines(&sink, Duration::from_millis(50));
    let id = CallRef(19);
    let mut c = Call::setup(&a, id, SrtpProfile::AesCm128HmacSha1_80);
    c.both_ways(1);
    sink.wait_indexes(id, |v| reported_tx_seq(v).is_some());
    let before = sink.puts.lock().unwrap().len();
    a.delete(id);
    // Several refresh periods and ticks: the workers may still report the call once,
    // but nothing reaches the sink for a deleted call.
    std::thread::sleep(Duration::from_millis(400));
    let puts = sink.puts.lock().unwrap();
    assert_eq!(
        puts.len(),
        before,
        "no put after delete: {:?}",
        &puts[before..]
    );
}

#[test]
fn a_stored_address_this_host_does_not_hold_is_bound_with_freebind() {
    let sink = Arc::new(RecordingSink::default());
    let (a, b) = engines(&sink, Duration::from_millis(200));
    let id = CallRef(21);
    let _c = Call::setup(&a, id, SrtpProfile::AesCm128HmacSha1_80);
    let media = sink.get(id, ReplicaPart::Media).unwrap();
    // The record as a node on a virtual IP wrote it (TEST-NET-3, RFC 5737: never here).
    let on_vip = String::from_utf8(media.public.clone())
        .unwrap()
        .replace("\"address\":\"127.0.0.1\"", "\"address\":\"203.0.113.77\"");
    assert!(on_vip.contains("203.0.113.77"), "{on_vip}");
    b.takeover()
        .restore(
            id,
            &TenantId::from(TENANT),
            on_vip.as_bytes(),
            media.secret.as_ref().unwrap(),
            None,
        )
        .unwrap();
    let deadline = Instant::now() + PACKET_WAIT;
    while b.stats().active_streams == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(b.stats().active_streams, 1, "the worker runs the stream");
    // Outside B's pool: its own accounting is untouched.
    assert_eq!(b.stats().ports_in_use, 0);
}

#[test]
fn mutated_records_never_panic() {
    use rand::{Rng, SeedableRng};
    let Replicated {
        b,
        media,
        secret,
        indexes: idx,
        ..
    } = replicated(CallRef(23), SrtpProfile::AeadAes128Gcm);
    let t = TenantId::from(TENANT);
    let m = b.takeover();
    let mut rng = rand::rngs::StdRng::seed_from_u64(16);
    let mutate = |rng: &mut rand::rngs::StdRng, v: &[u8]| -> Vec<u8> {
        let mut v = v.to_vec();
        match rng.gen_range(0..3) {
            0 => {
                let i = rng.gen_range(0..v.len());
                v[i] = rng.gen();
            }
            1 => v.truncate(rng.gen_range(0..v.len())),
            _ => {
                let i = rng.gen_range(0..v.len());
                v.insert(i, b"0123456789-,:{}[]\"e"[rng.gen_range(0..19)]);
            }
        }
        v
    };
    let mut refused = 0;
    for n in 0..300u64 {
        let call = CallRef(1000 + n);
        let (public, sec, ix) = match n % 3 {
            0 => (mutate(&mut rng, &media), secret.clone(), idx.clone()),
            1 => (
                media.clone(),
                SecretBytes::new(mutate(&mut rng, secret.expose())),
                idx.clone(),
            ),
            _ => (media.clone(), secret.clone(), mutate(&mut rng, &idx)),
        };
        if m.restore(call, &t, &public, &sec, Some(&ix)).is_err() {
            refused += 1;
        } else {
            b.delete(call);
        }
    }
    assert!(refused > 100, "most mutations are refused: {refused}");
}
