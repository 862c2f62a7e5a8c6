//! Behaviour of the SRTP engine through its public API: round trips, rollover, replay,
//! tampering, truncation, MKI, SSRC bound and configuration limits.

#![allow(clippy::unwrap_used)]

use sbc_media::srtp::{MasterKey, Mki, SrtpConfig, SrtpContext, SrtpError, SrtpProfile};
use sbc_testkit::media::Rtp;

fn master(profile: SrtpProfile, seed: u8) -> MasterKey {
    let key: Vec<u8> = (0..profile.master_key_len())
        .map(|i| seed.wrapping_add(i as u8))
        .collect();
    let salt: Vec<u8> = (0..profile.master_salt_len())
        .map(|i| seed.wrapping_mul(3).wrapping_add(i as u8))
        .collect();
    MasterKey::new(&key, &salt)
}

fn pair(profile: SrtpProfile, config: SrtpConfig) -> (SrtpContext, SrtpContext) {
    let mk = master(profile, 7);
    (
        SrtpContext::new(profile, &mk, config.clone()).unwrap(),
        SrtpContext::new(profile, &mk, config).unwrap(),
    )
}

/// RTP packet (payload type 96, timestamp 0x1234) with `csrcs` CSRCs, an optional
/// one-word header extension and a deterministic payload; returned with 64 bytes of
/// tailroom.
fn packet(seq: u16, ssrc: u32, payload: usize, csrcs: u8, ext: bool) -> (Vec<u8>, usize) {
    let payload: Vec<u8> = (0..payload)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seq as u8))
        .collect();
    Rtp::new(seq, ssrc)
        .payload_type(0x60)
        .timestamp(0x1234)
        .csrcs(csrcs)
        .extension(ext)
        .payload(&payload)
        .build_with_tailroom(64)
}

fn rtcp(ssrc: u32, body: usize) -> (Vec<u8>, usize) {
    let mut p = vec![0x80, 200, 0, 6];
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..body).map(|i| i as u8));
    let len = p.len();
    p.resize(len + 64, 0);
    (p, len)
}

fn protect(tx: &mut SrtpContext, seq: u16, ssrc: u32) -> Vec<u8> {
    let (mut b, len) = packet(seq, ssrc, 160, 0, false);
    let n = tx.protect_rtp(&mut b, len).unwrap();
    b.truncate(n);
    b
}

#[test]
fn round_trip_every_profile_with_csrc_and_extension() {
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile, SrtpConfig::default());
        for (i, (csrcs, ext)) in [(0, false), (2, false), (0, true), (15, true)]
            .into_iter()
            .enumerate()
        {
            let (plain, len) = packet(100 + i as u16, 0xcafe, 33 + i, csrcs, ext);
            let mut buf = plain.clone();
            let n = tx.protect_rtp(&mut buf, len).unwrap();
            assert_eq!(n, len + profile.rtp_tag_len(), "{profile}");
            assert_ne!(&buf[..len], &plain[..len], "{profile}: payload encrypted");
            let m = rx.unprotect_rtp(&mut buf[..n]).unwrap();
            assert_eq!(&buf[..m], &plain[..len], "{profile}");
        }
        let (plain, len) = rtcp(0xcafe, 40);
        let mut buf = plain.clone();
        let n = tx.protect_rtcp(&mut buf, len).unwrap();
        assert_eq!(n, len + 4 + profile.rtcp_tag_len(), "{profile}");
        let m = rx.unprotect_rtcp(&mut buf[..n]).unwrap();
        assert_eq!(&buf[..m], &plain[..len], "{profile}");
        assert_eq!(rx.rx_ssrc_count(), 1);
    }
}

#[test]
fn rollover_protect_increments_roc_and_receiver_follows() {
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile, SrtpConfig::default());
        let mut sent = Vec::new();
        for seq in (65530..=65535).chain(0..5) {
            sent.push((seq, protect(&mut tx, seq, 1)));
        }
        // A receiver that never saw the wrap cannot guess ROC 1 for seq 0 if the packet
        // was protected with ROC 0, and vice versa: the tag binds the ROC.
        for (seq, p) in &sent {
            let mut b = p.clone();
            let n = rx.unprotect_rtp(&mut b).unwrap();
            assert_eq!(u16::from_be_bytes([b[2], b[3]]), *seq);
            assert_eq!(n, p.len() - profile.rtp_tag_len());
        }
        // Sending seq 0 with ROC 0 again must differ from what ROC 1 produced.
        let (mut tx2, _) = pair(profile, SrtpConfig::default());
        let roc0 = protect(&mut tx2, 0, 1);
        assert_ne!(roc0, sent[6].1, "{profile}: ROC must enter the transform");
    }
}

#[test]
fn reordering_around_the_wrap() {
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile, SrtpConfig::default());
        let pkts: Vec<(u16, Vec<u8>)> = [65533u16, 65534, 65535, 0, 1, 2]
            .into_iter()
            .map(|s| (s, protect(&mut tx, s, 9)))
            .collect();
        // Deliver: 65533, 0, 65535, 2, 65534, 1 — late packets from ROC 0 after ROC 1.
        for &i in &[0usize, 3, 2, 5, 1, 4] {
            let mut b = pkts[i].1.clone();
            assert!(
                rx.unprotect_rtp(&mut b).is_ok(),
                "{profile}: seq {} after reordering",
                pkts[i].0
            );
        }
        // Every one of them is now a replay.
        for (seq, p) in &pkts {
            let mut b = p.clone();
            assert_eq!(
                rx.unprotect_rtp(&mut b),
                Err(SrtpError::Replayed),
                "{profile}: seq {seq}"
            );
        }
    }
}

#[test]
fn sender_reordering_across_wrap_keeps_roc() {
    // The sender protects 0 (ROC 1) then a late 65535 (ROC 0): the receiver must accept
    // both, which only works if the sender used ROC 0 for the late one.
    let profile = SrtpProfile::AesCm128HmacSha1_80;
    let (mut tx, mut rx) = pair(profile, SrtpConfig::default());
    let a = protect(&mut tx, 65534, 3);
    let b = protect(&mut tx, 0, 3);
    let c = protect(&mut tx, 65535, 3);
    for p in [a, b, c] {
        let mut p = p;
        rx.unprotect_rtp(&mut p).unwrap();
    }
}

#[test]
fn replay_window_rules() {
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile, SrtpConfig::default().with_replay_window(64));
        let pkts: Vec<Vec<u8>> = (0..200u16).map(|s| protect(&mut tx, s, 5)).collect();
        let mut deliver = |i: usize| {
            let mut b = pkts[i].clone();
            rx.unprotect_rtp(&mut b)
        };
        assert_eq!(deliver(150).map(|_| ()), Ok(()));
        assert_eq!(
            deliver(150),
            Err(SrtpError::Replayed),
            "{profile}: duplicate"
        );
        assert_eq!(deliver(140).map(|_| ()), Ok(()), "{profile}: out of order");
        assert_eq!(
            deliver(87).map(|_| ()),
            Ok(()),
            "{profile}: oldest in window"
        );
        assert_eq!(deliver(86), Err(SrtpError::Replayed), "{profile}: too old");
        assert_eq!(deliver(199).map(|_| ()), Ok(()));
        assert_eq!(deliver(140), Err(SrtpError::Replayed));
    }
}

#[test]
fn srtcp_replay_and_index() {
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile, SrtpConfig::default());
        let mut pkts = Vec::new();
        for i in 0..3u32 {
            let (mut b, len) = rtcp(77, 20);
            let n = tx.protect_rtcp(&mut b, len).unwrap();
            b.truncate(n);
            // E flag set, index counts from 1 (as libsrtp and webrtc-srtp).
            let at = if profile.is_aead() { len + 16 } else { len };
            assert_eq!(&b[at..at + 4], &(0x8000_0000u32 | (i + 1)).to_be_bytes());
            pkts.push(b);
        }
        for i in [2usize, 0, 1] {
            let mut b = pkts[i].clone();
            rx.unprotect_rtcp(&mut b).unwrap();
        }
        let mut b = pkts[1].clone();
        assert_eq!(rx.unprotect_rtcp(&mut b), Err(SrtpError::Replayed));
    }
}

#[test]
fn every_flipped_byte_is_rejected() {
    for profile in SrtpProfile::ALL {
        let (mut tx, _) = pair(profile, SrtpConfig::default());
        let good = protect(&mut tx, 1000, 0x1234);
        for i in 0..good.len() {
            for bit in [0x01u8, 0x80] {
                let mut rx = pair(profile, SrtpConfig::default()).1;
                let mut b = good.clone();
                b[i] ^= bit;
                let r = rx.unprotect_rtp(&mut b);
                assert!(r.is_err(), "{profile}: byte {i} bit {bit:#x} accepted");
            }
        }
        let (mut b, len) = rtcp(0x1234, 28);
        let n = tx.protect_rtcp(&mut b, len).unwrap();
        b.truncate(n);
        for i in 0..b.len() {
            let mut rx = pair(profile, SrtpConfig::default()).1;
            let mut t = b.clone();
            t[i] ^= 0x04;
            assert!(
                rx.unprotect_rtcp(&mut t).is_err(),
                "{profile}: RTCP byte {i}"
            );
        }
    }
}

#[test]
fn every_truncation_is_rejected() {
    for profile in SrtpProfile::ALL {
        let (mut tx, _) = pair(profile, SrtpConfig::default());
        let good = protect(&mut tx, 1, 2);
        for cut in 0..good.len() {
            let mut rx = pair(profile, SrtpConfig::default()).1;
            let mut b = good[..cut].to_vec();
            let r = rx.unprotect_rtp(&mut b);
            assert!(r.is_err(), "{profile}: truncated to {cut}");
        }
        let mut rx = pair(profile, SrtpConfig::default()).1;
        assert_eq!(rx.unprotect_rtp(&mut []), Err(SrtpError::TooShort));
        assert_eq!(
            rx.unprotect_rtcp(&mut [0x80, 200]),
            Err(SrtpError::TooShort)
        );
        assert_eq!(
            rx.rx_ssrc_count(),
            0,
            "no state from unauthenticated packets"
        );
    }
}

#[test]
fn tailroom_is_checked() {
    for profile in SrtpProfile::ALL {
        let (mut tx, _) = pair(profile, SrtpConfig::default());
        let (b, len) = packet(1, 2, 20, 0, false);
        let mut short = b[..len + profile.rtp_tag_len() - 1].to_vec();
        assert_eq!(
            tx.protect_rtp(&mut short, len),
            Err(SrtpError::BufferTooSmall {
                needed: len + profile.rtp_tag_len(),
                available: len + profile.rtp_tag_len() - 1
            })
        );
        let mut exact = b[..len + profile.rtp_tag_len()].to_vec();
        assert_eq!(
            tx.protect_rtp(&mut exact, len),
            Ok(len + profile.rtp_tag_len())
        );
        let (b, len) = rtcp(2, 8);
        let mut short = b[..len + tx.rtcp_overhead() - 1].to_vec();
        assert!(matches!(
            tx.protect_rtcp(&mut short, len),
            Err(SrtpError::BufferTooSmall { .. })
        ));
        // `len` beyond the buffer.
        assert!(matches!(
            tx.protect_rtp(&mut [0u8; 4], 5),
            Err(SrtpError::BufferTooSmall { .. })
        ));
    }
}

#[test]
fn mki_is_sent_and_checked() {
    for profile in SrtpProfile::ALL {
        let cfg = SrtpConfig::default().with_mki(Mki::new(&[0xde, 0xad, 0, 1]).unwrap());
        let (mut tx, mut rx) = pair(profile, cfg.clone());
        assert_eq!(tx.rtp_overhead(), profile.rtp_tag_len() + 4);
        let (plain, len) = packet(10, 3, 50, 0, false);
        let mut b = plain.clone();
        let n = tx.protect_rtp(&mut b, len).unwrap();
        assert_eq!(n, len + 4 + profile.rtp_tag_len());
        let mki_at = if profile.is_aead() { len + 16 } else { len };
        assert_eq!(&b[mki_at..mki_at + 4], &[0xde, 0xad, 0, 1]);

        // Wrong MKI: rejected before any crypto.
        let mut wrong = b[..n].to_vec();
        wrong[mki_at + 3] = 2;
        assert_eq!(rx.unprotect_rtp(&mut wrong), Err(SrtpError::BadMki));
        // A context with a different MKI rejects it too.
        let other = SrtpConfig::default().with_mki(Mki::new(&[9]).unwrap());
        let mut rx2 = pair(profile, other).1;
        assert!(rx2.unprotect_rtp(&mut b[..n].to_vec()).is_err());

        let m = rx.unprotect_rtp(&mut b[..n]).unwrap();
        assert_eq!(&b[..m], &plain[..len]);

        // SRTCP.
        let (plain, len) = rtcp(3, 16);
        let mut b = plain.clone();
        let n = tx.protect_rtcp(&mut b, len).unwrap();
        assert_eq!(n, len + 4 + 4 + profile.rtcp_tag_len());
        let mut wrong = b[..n].to_vec();
        let mki_at = if profile.is_aead() { len + 20 } else { len + 4 };
        wrong[mki_at] ^= 0xff;
        assert_eq!(rx.unprotect_rtcp(&mut wrong), Err(SrtpError::BadMki));
        let m = rx.unprotect_rtcp(&mut b[..n]).unwrap();
        assert_eq!(&b[..m], &plain[..len]);
    }
    assert!(Mki::new(&[]).is_err());
    assert!(Mki::new(&[0; 129]).is_err());
}

#[test]
fn ssrc_count_is_bounded_and_state_needs_authentication() {
    for profile in SrtpProfile::ALL {
        let cfg = SrtpConfig::default().with_max_ssrcs(2);
        let (mut tx, mut rx) = pair(profile, cfg);
        // Garbage from a new SSRC creates no state.
        let mut junk = protect(&mut pair(profile, SrtpConfig::default()).0, 1, 50);
        let last = junk.len() - 1;
        junk[last] ^= 1;
        assert_eq!(
            rx.unprotect_rtp(&mut junk),
            Err(SrtpError::AuthenticationFailed)
        );
        assert_eq!(rx.rx_ssrc_count(), 0);

        for ssrc in [1, 2] {
            let mut p = protect(&mut tx, 1, ssrc);
            rx.unprotect_rtp(&mut p).unwrap();
        }
        assert_eq!(rx.rx_ssrc_count(), 2);
        let (mut b, len) = packet(1, 3, 10, 0, false);
        assert_eq!(tx.protect_rtp(&mut b, len), Err(SrtpError::TooManySsrcs));
        let mut tx_big = pair(profile, SrtpConfig::default()).0;
        let mut p = protect(&mut tx_big, 1, 3);
        assert_eq!(rx.unprotect_rtp(&mut p), Err(SrtpError::TooManySsrcs));
        // Known SSRCs still work; removing one frees a slot.
        let mut p2 = protect(&mut tx, 2, 2);
        assert!(rx.unprotect_rtp(&mut p2).is_ok());
        assert!(rx.remove_ssrc(1));
        let mut p = protect(&mut tx_big, 2, 3);
        assert!(rx.unprotect_rtp(&mut p).is_ok());
    }
}

#[test]
fn config_and_key_validation() {
    let p = SrtpProfile::AesCm128HmacSha1_80;
    let mk = master(p, 1);
    for cfg in [
        SrtpConfig::default().with_replay_window(0),
        SrtpConfig::default().with_replay_window(1025),
        SrtpConfig::default().with_max_ssrcs(0),
        SrtpConfig::default().with_max_ssrcs(100_000),
    ] {
        assert!(matches!(
            SrtpContext::new(p, &mk, cfg),
            Err(SrtpError::InvalidConfig(_))
        ));
    }
    assert!(SrtpContext::new(p, &mk, SrtpConfig::default().with_replay_window(1024)).is_ok());
    assert_eq!(
        SrtpContext::new(SrtpProfile::AeadAes256Gcm, &mk, SrtpConfig::default()).err(),
        Some(SrtpError::BadKeyLength {
            expected: 32,
            got: 16
        })
    );
    let ctx = SrtpContext::new(p, &mk, SrtpConfig::default()).unwrap();
    let dbg = format!("{ctx:?} {mk:?}");
    let key_hex: String = mk.key.iter().map(|b| format!("{b:02x}")).collect();
    assert!(!dbg.contains(&key_hex), "{dbg}");
    assert!(!dbg.contains(&format!("{:?}", mk.key)), "{dbg}");
}

#[test]
fn non_v2_and_garbage_headers_are_rejected() {
    for profile in SrtpProfile::ALL {
        let (mut tx, mut rx) = pair(profile, SrtpConfig::default());
        let (mut b, len) = packet(1, 1, 10, 0, false);
        b[0] = 0x40;
        assert!(matches!(
            tx.protect_rtp(&mut b, len),
            Err(SrtpError::InvalidPacket(_))
        ));
        let mut p = protect(&mut tx, 1, 1);
        p[0] = 0xc0 | (p[0] & 0x3f);
        p[0] &= 0x3f;
        assert!(matches!(
            rx.unprotect_rtp(&mut p),
            Err(SrtpError::InvalidPacket(_))
        ));
        // Extension length pointing past the end.
        let mut p = protect(&mut tx, 2, 1);
        p[0] |= 0x10;
        p[14] = 0xff;
        p[15] = 0xff;
        assert!(rx.unprotect_rtp(&mut p).is_err());
    }
}
