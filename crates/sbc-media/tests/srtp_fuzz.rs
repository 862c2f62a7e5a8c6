//! Arbitrary bytes into unprotect never panic, for every profile, with and without MKI,
//! and never create per-SSRC state.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use sbc_media::srtp::{MasterKey, Mki, SrtpConfig, SrtpContext, SrtpProfile};

fn ctx(profile: SrtpProfile, mki: bool) -> SrtpContext {
    let mk = MasterKey::new(
        &vec![3; profile.master_key_len()],
        &vec![4; profile.master_salt_len()],
    );
    let mut cfg = SrtpConfig::default();
    if mki {
        cfg = cfg.with_mki(Mki::new(&[0x80]).unwrap());
    }
    SrtpContext::new(profile, &mk, cfg).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn unprotect_arbitrary_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        v2 in any::<bool>(),
        mki in any::<bool>(),
    ) {
        for profile in SrtpProfile::ALL {
            let mut c = ctx(profile, mki);
            let mut b = bytes.clone();
            if v2 && !b.is_empty() {
                b[0] = 0x80 | (b[0] & 0x3f);
            }
            prop_assert!(c.unprotect_rtp(&mut b.clone()).is_err());
            prop_assert!(c.unprotect_rtcp(&mut b).is_err());
            prop_assert_eq!(c.rx_ssrc_count(), 0);
        }
    }

    #[test]
    fn protect_arbitrary_bytes_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..300),
        room in 0usize..40,
    ) {
        for profile in SrtpProfile::ALL {
            let mut c = ctx(profile, false);
            let len = bytes.len();
            let mut b = bytes.clone();
            b.resize(len + room, 0);
            if let Ok(n) = c.protect_rtp(&mut b, len) {
                prop_assert_eq!(n, len + profile.rtp_tag_len());
            }
            let mut b = bytes.clone();
            b.resize(len + room, 0);
            if let Ok(n) = c.protect_rtcp(&mut b, len) {
                prop_assert_eq!(n, len + c.rtcp_overhead());
            }
        }
    }
}
