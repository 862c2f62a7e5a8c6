//! The per-packet path allocates nothing: a counting global allocator sees zero
//! allocations over thousands of protect/unprotect calls, for every profile, once the
//! per-SSRC state exists.
//!
//! `harness = false`: the allocator counts every thread, and libtest's own threads
//! allocate while a test runs, so this binary runs its one check on the main thread
//! with no other threads alive.

#![allow(clippy::unwrap_used)]

use sbc_media::srtp::{MasterKey, Mki, SrtpConfig, SrtpContext, SrtpProfile};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

// `stats_alloc` wraps the system allocator and counts; the workspace forbids `unsafe`
// in our own code, so the GlobalAlloc impl lives in that crate.
#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

fn allocations(region: &Region<'_, std::alloc::System>) -> usize {
    let c = region.change();
    c.allocations + c.reallocations
}

// 1000 rounds x 2 SSRCs x 4 calls = 8000 protect/unprotect calls per configuration.
const ROUNDS: u16 = 1000;

fn run(profile: SrtpProfile, config: SrtpConfig) -> usize {
    let key = vec![0x11; profile.master_key_len()];
    let salt = vec![0x22; profile.master_salt_len()];
    let mk = MasterKey::new(&key, &salt);
    let mut tx = SrtpContext::new(profile, &mk, config.clone()).unwrap();
    let mut rx = SrtpContext::new(profile, &mk, config).unwrap();
    let mut buf = [0u8; 1500];
    let ssrcs = [0x1111_1111u32, 0x2222_2222];

    let mut one_round = |seq: u16, buf: &mut [u8; 1500]| {
        for ssrc in ssrcs {
            let len = 12 + 160 + usize::from(seq % 1000);
            buf[..len].fill(0xa5);
            buf[0] = 0x80;
            buf[1] = 0x00;
            buf[2..4].copy_from_slice(&seq.to_be_bytes());
            buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
            let n = tx.protect_rtp(buf, len).unwrap();
            let m = rx.unprotect_rtp(&mut buf[..n]).unwrap();
            assert_eq!(m, len);

            let len = 8 + 44;
            buf[..len].fill(0x5a);
            buf[0] = 0x80;
            buf[1] = 200;
            buf[4..8].copy_from_slice(&ssrc.to_be_bytes());
            let n = tx.protect_rtcp(buf, len).unwrap();
            let m = rx.unprotect_rtcp(&mut buf[..n]).unwrap();
            assert_eq!(m, len);
        }
    };

    // Warm-up: creates the per-SSRC state on both sides.
    one_round(65535 - ROUNDS / 2, &mut buf);
    let region = Region::new(GLOBAL);
    // Crosses the 65535 -> 0 wrap too.
    for i in 1..=ROUNDS {
        one_round(i.wrapping_add(65535 - ROUNDS / 2), &mut buf);
    }
    allocations(&region)
}

fn main() {
    no_allocation_per_packet_for_any_profile();
    println!("test no_allocation_per_packet_for_any_profile ... ok");
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

fn no_allocation_per_packet_for_any_profile() {
    // Sanity check that the counter works at all.
    let region = Region::new(GLOBAL);
    let v = std::hint::black_box(vec![1u8; 32]);
    assert!(allocations(&region) > 0);
    drop(v);

    for profile in SrtpProfile::ALL {
        let n = run(profile, SrtpConfig::default());
        assert_eq!(n, 0, "{profile}: {n} allocations in {ROUNDS} rounds");
        let with_mki = SrtpConfig::default().with_mki(Mki::new(&[1, 2, 3]).unwrap());
        let n = run(profile, with_mki);
        assert_eq!(n, 0, "{profile} with MKI: {n} allocations");
    }
}
