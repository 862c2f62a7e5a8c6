//! Cross-check against the pure-Rust `webrtc-srtp` crate for every profile it has (all
//! six): random packets round-trip both ways and the protected bytes are identical.

#![allow(clippy::unwrap_used)]

use rand::{Rng, SeedableRng};
use sbc_media::srtp::{MasterKey, SrtpConfig, SrtpContext, SrtpProfile};
use sbc_testkit::media::random_rtcp;
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

fn theirs(p: SrtpProfile) -> ProtectionProfile {
    match p {
        SrtpProfile::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpProfile::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        SrtpProfile::Aes256CmHmacSha1_80 => ProtectionProfile::Aes256CmHmacSha1_80,
        SrtpProfile::Aes256CmHmacSha1_32 => ProtectionProfile::Aes256CmHmacSha1_32,
        SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
        other => panic!("no webrtc-srtp mapping for {other}"),
    }
}

fn random_rtp(rng: &mut impl Rng, seq: u16, ssrc: u32) -> Vec<u8> {
    let csrcs = rng.gen_range(0..4u8);
    let mut p = vec![0x80 | csrcs, rng.gen_range(0..128u8)];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&rng.gen::<u32>().to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for _ in 0..csrcs {
        p.extend_from_slice(&rng.gen::<u32>().to_be_bytes());
    }
    let n = rng.gen_range(1..1200);
    p.extend((0..n).map(|_| rng.gen::<u8>()));
    p
}

#[test]
fn byte_exact_and_both_ways_with_webrtc_srtp() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    for profile in SrtpProfile::ALL {
        let key: Vec<u8> = (0..profile.master_key_len()).map(|_| rng.gen()).collect();
        let salt: Vec<u8> = (0..profile.master_salt_len()).map(|_| rng.gen()).collect();
        let mk = MasterKey::new(&key, &salt);
        let mut our_tx = SrtpContext::new(profile, &mk, SrtpConfig::default()).unwrap();
        let mut our_rx = SrtpContext::new(profile, &mk, SrtpConfig::default()).unwrap();
        let mut their_tx = Context::new(&key, &salt, theirs(profile), None, None).unwrap();
        let mut their_rx = Context::new(&key, &salt, theirs(profile), None, None).unwrap();

        let ssrc: u32 = rng.gen();
        // Start near the wrap so the ROC changes during the run.
        let mut seq: u16 = 65500;
        for i in 0..200 {
            let plain = random_rtp(&mut rng, seq, ssrc);
            seq = seq.wrapping_add(1);

            let mut buf = plain.clone();
            buf.resize(plain.len() + our_tx.rtp_overhead(), 0);
            let n = our_tx.protect_rtp(&mut buf, plain.len()).unwrap();
            let ours = &buf[..n];
            let theirs_p = their_tx.encrypt_rtp(&plain).unwrap();
            assert_eq!(ours, &theirs_p[..], "{profile}: SRTP packet {i} differs");

            // Ours -> theirs.
            let dec = their_rx.decrypt_rtp(ours).unwrap();
            assert_eq!(&dec[..], &plain[..], "{profile}: webrtc-srtp decrypt {i}");
            // Theirs -> ours.
            let mut b = theirs_p.to_vec();
            let m = our_rx.unprotect_rtp(&mut b).unwrap();
            assert_eq!(&b[..m], &plain[..], "{profile}: our unprotect {i}");
        }

        for i in 0..50 {
            let plain = random_rtcp(&mut rng, ssrc);
            let mut buf = plain.clone();
            buf.resize(plain.len() + our_tx.rtcp_overhead(), 0);
            let n = our_tx.protect_rtcp(&mut buf, plain.len()).unwrap();
            let ours = &buf[..n];
            let theirs_p = their_tx.encrypt_rtcp(&plain).unwrap();
            assert_eq!(ours, &theirs_p[..], "{profile}: SRTCP packet {i} differs");
            let dec = their_rx.decrypt_rtcp(ours).unwrap();
            assert_eq!(&dec[..], &plain[..], "{profile}: webrtc-srtp SRTCP {i}");
            let mut b = theirs_p.to_vec();
            let m = our_rx.unprotect_rtcp(&mut b).unwrap();
            assert_eq!(&b[..m], &plain[..], "{profile}: our SRTCP unprotect {i}");
        }
    }
}
