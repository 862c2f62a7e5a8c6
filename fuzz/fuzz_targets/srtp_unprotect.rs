//! SRTP/SRTCP unprotect (crates/sbc-media/src/srtp/context.rs) on arbitrary bytes, for
//! every profile: never panics, and a packet it accepts fits the buffer it came in.
//! Then the same bytes as an RTP or RTCP packet we protect: a second context with the
//! same key unprotects it back to exactly those bytes. The first byte picks the
//! profile; the rest is the packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sbc_media::srtp::{MasterKey, SrtpConfig, SrtpContext, SrtpProfile};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, packet)) = data.split_first() else {
        return;
    };
    let profile = SrtpProfile::ALL[usize::from(pick) % SrtpProfile::ALL.len()];
    let key = vec![0x2bu8; profile.master_key_len()];
    let salt = vec![0x5du8; profile.master_salt_len()];
    let master = MasterKey::new(&key, &salt);
    let Ok(mut ctx) = SrtpContext::new(profile, &master, SrtpConfig::default()) else {
        panic!("a valid key for {profile} is refused");
    };
    let mut buf = packet.to_vec();
    if let Ok(n) = ctx.unprotect_rtp(&mut buf) {
        assert!(n <= packet.len());
    }
    let mut buf = packet.to_vec();
    if let Ok(n) = ctx.unprotect_rtcp(&mut buf) {
        assert!(n <= packet.len());
    }

    let new = || SrtpContext::new(profile, &master, SrtpConfig::default());
    let (Ok(mut tx), Ok(mut rx)) = (new(), new()) else {
        panic!("a valid key for {profile} is refused");
    };
    let mut buf = packet.to_vec();
    buf.resize(packet.len() + tx.rtp_overhead(), 0);
    if let Ok(n) = tx.protect_rtp(&mut buf, packet.len()) {
        let m = rx.unprotect_rtp(&mut buf[..n]).expect("our own SRTP packet");
        assert_eq!(&buf[..m], packet, "RTP round trip");
    }
    let mut buf = packet.to_vec();
    buf.resize(packet.len() + tx.rtcp_overhead(), 0);
    if let Ok(n) = tx.protect_rtcp(&mut buf, packet.len()) {
        let m = rx.unprotect_rtcp(&mut buf[..n]).expect("our own SRTCP packet");
        assert_eq!(&buf[..m], packet, "RTCP round trip");
    }
});
