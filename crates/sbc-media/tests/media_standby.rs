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

impl Call {
    fn setup(e: &MediaEngine, id: CallRef, profile: SrtpProfile) -> Call {
        let (caller, callee) = (peer(), peer());
        let (ck, ek) = (key(profile, 0x11), key(profile, 0x33));
        let t = TenantId::from(TENANT);
        let offer = e
            .offer(
                id,
                &t,
                LegSide::Caller,
                &sdp(&caller, profile, &ck),
                &policy(profile),
            )
            .unwrap();
        let offer = sbc_media::sdp::parse(&offer).unwrap();
        let k2 = offer.media[0].crypto[0].key.clone().unwrap();
        let answer = e
            .answer(id, LegSide::Callee, &sdp(&callee, profile, &ek))
            .unwrap();
        let answer = sbc_media::sdp::parse(&answer).unwrap();
        let k4 = answer.media[0].crypto[0].key.clone().unwrap();
        Call {
            caller_side: answer.media[0].port,
            callee_side: offer.media[0].port,
            k1: ctx_for(profile, &ck),
            k2: ctx_for(profile, &k2),
            k3: ctx_for(profile, &ek),
            k4: ctx_for(profile, &k4),
            keys: [&ck, &ek, &k2, &k4].map(master_bytes).to_vec(),
            caller,
            callee,
        }
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

#[test]
fn corrupt_records_are_errors_not_panics() {
    let sink = Arc::new(RecordingSink::default());
    let (a, b) = engines(&sink, Duration::from_millis(200));
    let id = CallRef(13);
    let mut c = Call::setup(&a, id, SrtpProfile::AesCm128HmacSha1_80);
    c.both_ways(1);
    let idx = sink.wait_indexes(id, |v| reported_tx_seq(v).is_some());
    let media = sink.get(id, ReplicaPart::Media).unwrap();
    let secret = media.secret.clone().unwrap();
    a.shutdown();
    let t = TenantId::from(TENANT);
    let m = b.takeover();
    let bad_secret = SecretBytes::new(secret.expose()[..5].to_vec());
    let mut flipped = media.public.clone();
    flipped.truncate(flipped.len() / 2);
    let v2 = String::from_utf8(media.public.clone())
        .unwrap()
        .replacen("\"v\":1", "\"v\":2", 1);
    type Case<'a> = (&'a [u8], &'a SecretBytes, Option<&'a [u8]>);
    let cases: [Case; 6] = [
        (b"", &secret, None),
        (&flipped, &secret, None),
        (v2.as_bytes(), &secret, None),
        (&media.public, &bad_secret, None),
        (&media.public, &SecretBytes::new(vec![1, 200]), None),
        (
            &media.public,
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
    m.restore(id, &t, &media.public, &secret, Some(&idx))
        .unwrap();
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
