//! Cross-check `sbc_media::srtp` against libsrtp 2.3 for every profile: random packets
//! round-trip both ways and the protected bytes are identical. Only with `--features
//! libsrtp`.

#![cfg(feature = "libsrtp")]
#![allow(clippy::unwrap_used)]

use rand::{Rng, SeedableRng};
use sbc_media::srtp::{MasterKey, SrtpConfig, SrtpContext, SrtpError, SrtpProfile};
use srtp_interop::libsrtp::{drain_openssl_errors, policy, LibSrtp};

fn random_rtp(rng: &mut impl Rng, seq: u16, ssrc: u32) -> Vec<u8> {
    let csrcs = rng.gen_range(0..3u8);
    let ext = rng.gen_bool(0.3);
    let mut p = vec![
        0x80 | csrcs | if ext { 0x10 } else { 0 },
        rng.gen_range(0..128u8),
    ];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&rng.gen::<u32>().to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    for _ in 0..csrcs {
        p.extend_from_slice(&rng.gen::<u32>().to_be_bytes());
    }
    if ext {
        let words = rng.gen_range(0..3u16);
        p.extend_from_slice(&[0xbe, 0xde]);
        p.extend_from_slice(&words.to_be_bytes());
        p.extend((0..words * 4).map(|_| rng.gen::<u8>()));
    }
    let n = rng.gen_range(0..1200);
    p.extend((0..n).map(|_| rng.gen::<u8>()));
    p
}

fn random_rtcp(rng: &mut impl Rng, ssrc: u32) -> Vec<u8> {
    let words = rng.gen_range(1..40u16);
    let mut p = vec![0x80, 200];
    p.extend_from_slice(&words.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend((0..usize::from(words) * 4).map(|_| rng.gen::<u8>()));
    p
}

#[test]
fn every_profile_is_mapped() {
    for profile in SrtpProfile::ALL {
        assert!(policy(profile).is_some(), "{profile}");
    }
}

#[test]
fn byte_exact_and_both_ways_with_libsrtp() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x11b5_47b2);
    for profile in SrtpProfile::ALL {
        let key: Vec<u8> = (0..profile.master_key_len()).map(|_| rng.gen()).collect();
        let salt: Vec<u8> = (0..profile.master_salt_len()).map(|_| rng.gen()).collect();
        let mk = MasterKey::new(&key, &salt);
        let mut our_tx = SrtpContext::new(profile, &mk, SrtpConfig::default()).unwrap();
        let mut our_rx = SrtpContext::new(profile, &mk, SrtpConfig::default()).unwrap();
        let mut lib_tx = LibSrtp::sender(profile, &mk).unwrap();
        let mut lib_rx = LibSrtp::receiver(profile, &mk, 0).unwrap();

        for ssrc in [rng.gen::<u32>(), rng.gen::<u32>()] {
            // Start near the wrap so the ROC changes during the run.
            let mut seq: u16 = 65480;
            for i in 0..150 {
                let plain = random_rtp(&mut rng, seq, ssrc);
                seq = seq.wrapping_add(1);

                let mut buf = plain.clone();
                buf.resize(plain.len() + our_tx.rtp_overhead(), 0);
                let n = our_tx.protect_rtp(&mut buf, plain.len()).unwrap();
                buf.truncate(n);

                let mut lib = plain.clone();
                lib_tx.protect(&mut lib).unwrap();
                assert_eq!(buf, lib, "{profile}: SRTP packet {i} differs from libsrtp");

                // Ours -> libsrtp.
                let mut b = buf.clone();
                lib_rx.unprotect(&mut b).unwrap();
                assert_eq!(b, plain, "{profile}: libsrtp unprotect of ours, packet {i}");
                // libsrtp -> ours.
                let m = our_rx.unprotect_rtp(&mut lib).unwrap();
                assert_eq!(&lib[..m], &plain[..], "{profile}: our unprotect {i}");
            }

            for i in 0..40 {
                let plain = random_rtcp(&mut rng, ssrc);
                let mut buf = plain.clone();
                buf.resize(plain.len() + our_tx.rtcp_overhead(), 0);
                let n = our_tx.protect_rtcp(&mut buf, plain.len()).unwrap();
                buf.truncate(n);
                let mut lib = plain.clone();
                lib_tx.protect_rtcp(&mut lib).unwrap();
                assert_eq!(buf, lib, "{profile}: SRTCP packet {i} differs from libsrtp");

                let mut b = buf.clone();
                lib_rx.unprotect_rtcp(&mut b).unwrap();
                assert_eq!(b, plain, "{profile}: libsrtp SRTCP unprotect {i}");
                let m = our_rx.unprotect_rtcp(&mut lib).unwrap();
                assert_eq!(&lib[..m], &plain[..], "{profile}: our SRTCP unprotect {i}");
            }
        }
    }
}

#[test]
fn tampered_packets_rejected_by_both() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for profile in SrtpProfile::ALL {
        let mk = MasterKey::new(
            &vec![0x42; profile.master_key_len()],
            &vec![0x24; profile.master_salt_len()],
        );
        let mut lib_tx = LibSrtp::sender(profile, &mk).unwrap();
        let plain = random_rtp(&mut rng, 9, 0xabcd);
        let mut good = plain.clone();
        lib_tx.protect(&mut good).unwrap();
        // Flip a payload byte and a tag byte.
        for at in [good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            let mut ours = SrtpContext::new(profile, &mk, SrtpConfig::default()).unwrap();
            assert_eq!(
                ours.unprotect_rtp(&mut bad.clone()),
                Err(SrtpError::AuthenticationFailed),
                "{profile}"
            );
            let mut lib_rx = LibSrtp::receiver(profile, &mk, 0).unwrap();
            assert!(lib_rx.unprotect(&mut bad).is_err(), "{profile}");
        }
    }
}

/// Documents the libsrtp 2.3 + OpenSSL 3 behaviour described on
/// `drain_openssl_errors`: GCM protect leaves errors on the thread's OpenSSL error
/// queue, AES-CM does not, and neither affects the results checked above.
#[test]
fn libsrtp_gcm_leaves_openssl_errors_behind() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    drain_openssl_errors();
    let mut left = Vec::new();
    for profile in SrtpProfile::ALL {
        let mk = MasterKey::new(
            &vec![1; profile.master_key_len()],
            &vec![2; profile.master_salt_len()],
        );
        let mut tx = LibSrtp::sender(profile, &mk).unwrap();
        let mut rx = LibSrtp::receiver(profile, &mk, 0).unwrap();
        drain_openssl_errors();
        let plain = random_rtp(&mut rng, 1, 5);
        let mut b = plain.clone();
        tx.protect(&mut b).unwrap();
        rx.unprotect(&mut b).unwrap();
        assert_eq!(b, plain);
        left.push((profile, drain_openssl_errors()));
    }
    eprintln!("OpenSSL errors left per protect+unprotect: {left:?}");
    for (profile, n) in left {
        if profile.is_aead() {
            assert!(n > 0, "{profile}: expected libsrtp 2.3 GCM to leave errors");
        } else {
            assert_eq!(n, 0, "{profile}");
        }
    }
}
