//! SRTP protect/unprotect, every profile, 172-byte (12 + 160, 20 ms G.711) and 1212-byte
//! (12 + 1200, video) RTP packets: ours (`sbc_media::srtp`), libsrtp 2.3 (with
//! `--features libsrtp`) and webrtc-srtp, in one run. After criterion, prints a table of
//! median ns/packet and our ratio to libsrtp.
//!
//! `cargo bench --bench srtp --features libsrtp` (see benches/README.md).
//!
//! Every iteration copies the plaintext (or SRTP) packet into a work buffer first, for
//! all three implementations alike, because all of them transform in place or consume
//! their input. Protect uses a fresh sequence number per iteration (libsrtp refuses to
//! re-protect an index). Unprotect measures real unprotects: packets are pre-protected
//! in batches with increasing sequence numbers (untimed) and each is unprotected exactly
//! once by a receiver with a 128-packet replay window (webrtc-srtp is given one too).

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, BenchmarkId, Criterion};
use sbc_media::srtp::{MasterKey, SrtpConfig, SrtpContext, SrtpProfile};
use webrtc_srtp::context::Context as WebrtcContext;
use webrtc_srtp::option::srtp_replay_protection;
use webrtc_srtp::protection_profile::ProtectionProfile;

const SIZES: [usize; 2] = [172, 1212];
// 256 packets of <= 1240 bytes stay in L2, so unprotect measures crypto, not DRAM.
const BATCH: usize = 256;
const SSRC: u32 = 0x1234_5678;

fn master(profile: SrtpProfile) -> MasterKey {
    let key: Vec<u8> = (0..profile.master_key_len() as u8).collect();
    let salt: Vec<u8> = (0..profile.master_salt_len() as u8)
        .map(|b| b ^ 0x5a)
        .collect();
    MasterKey::new(&key, &salt)
}

fn rtp_packet(size: usize) -> Vec<u8> {
    let mut p = vec![0x80, 0x00, 0, 0, 0, 0, 0x10, 0x00];
    p.extend_from_slice(&SSRC.to_be_bytes());
    p.extend((0..size - 12).map(|i| i as u8));
    p
}

fn set_seq(p: &mut [u8], seq: u16) {
    p[2..4].copy_from_slice(&seq.to_be_bytes());
}

fn webrtc_profile(p: SrtpProfile) -> Option<ProtectionProfile> {
    Some(match p {
        SrtpProfile::AesCm128HmacSha1_80 => ProtectionProfile::Aes128CmHmacSha1_80,
        SrtpProfile::AesCm128HmacSha1_32 => ProtectionProfile::Aes128CmHmacSha1_32,
        SrtpProfile::Aes256CmHmacSha1_80 => ProtectionProfile::Aes256CmHmacSha1_80,
        SrtpProfile::Aes256CmHmacSha1_32 => ProtectionProfile::Aes256CmHmacSha1_32,
        SrtpProfile::AeadAes128Gcm => ProtectionProfile::AeadAes128Gcm,
        SrtpProfile::AeadAes256Gcm => ProtectionProfile::AeadAes256Gcm,
        _ => return None,
    })
}

fn ours_ctx(profile: SrtpProfile) -> SrtpContext {
    SrtpContext::new(profile, &master(profile), SrtpConfig::default()).unwrap()
}

/// A batch of SRTP packets with consecutive sequence numbers starting at `*seq`.
fn protected_batch(tx: &mut SrtpContext, plain: &[u8], seq: &mut u16) -> Vec<Vec<u8>> {
    (0..BATCH)
        .map(|_| {
            let mut b = plain.to_vec();
            set_seq(&mut b, *seq);
            *seq = seq.wrapping_add(1);
            b.resize(plain.len() + tx.rtp_overhead(), 0);
            let n = tx.protect_rtp(&mut b, plain.len()).unwrap();
            b.truncate(n);
            b
        })
        .collect()
}

/// Times `unprotect` over `iters` packets, pre-protecting them in untimed batches.
fn time_unprotect(
    iters: u64,
    profile: SrtpProfile,
    plain: &[u8],
    mut unprotect: impl FnMut(&[u8]),
) -> Duration {
    let mut tx = ours_ctx(profile);
    let mut seq = 0u16;
    let mut total = Duration::ZERO;
    let mut left = iters as usize;
    while left > 0 {
        let batch = protected_batch(&mut tx, plain, &mut seq);
        let n = left.min(BATCH);
        let start = Instant::now();
        for p in &batch[..n] {
            unprotect(p);
        }
        total += start.elapsed();
        left -= n;
    }
    total
}

fn bench_ours(c: &mut Criterion) {
    for profile in SrtpProfile::ALL {
        for size in SIZES {
            let plain = rtp_packet(size);
            let id = BenchmarkId::new(format!("ours-{profile}"), size);

            let mut tx = ours_ctx(profile);
            let mut buf = vec![0u8; size + 64];
            let mut seq = 0u16;
            c.benchmark_group("protect")
                .bench_function(id.clone(), |b| {
                    b.iter(|| {
                        buf[..size].copy_from_slice(&plain);
                        set_seq(&mut buf, seq);
                        seq = seq.wrapping_add(1);
                        black_box(tx.protect_rtp(&mut buf, size).unwrap());
                    })
                });

            c.benchmark_group("unprotect").bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut rx = ours_ctx(profile);
                    let mut work = vec![0u8; size + 64];
                    time_unprotect(iters, profile, &plain, |p| {
                        let w = &mut work[..p.len()];
                        w.copy_from_slice(p);
                        black_box(rx.unprotect_rtp(w).unwrap());
                    })
                })
            });
        }
    }
}

fn bench_webrtc(c: &mut Criterion) {
    for profile in SrtpProfile::ALL {
        let Some(wp) = webrtc_profile(profile) else {
            continue;
        };
        let mk = master(profile);
        for size in SIZES {
            let plain = rtp_packet(size);
            let id = BenchmarkId::new(format!("webrtc-{profile}"), size);

            let mut tx = WebrtcContext::new(&mk.key, &mk.salt, wp, None, None).unwrap();
            let mut buf = plain.clone();
            let mut seq = 0u16;
            c.benchmark_group("protect")
                .bench_function(id.clone(), |b| {
                    b.iter(|| {
                        buf.copy_from_slice(&plain);
                        set_seq(&mut buf, seq);
                        seq = seq.wrapping_add(1);
                        black_box(tx.encrypt_rtp(&buf).unwrap());
                    })
                });

            c.benchmark_group("unprotect").bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut rx = WebrtcContext::new(
                        &mk.key,
                        &mk.salt,
                        wp,
                        Some(srtp_replay_protection(128)),
                        None,
                    )
                    .unwrap();
                    let mut work = Vec::with_capacity(size + 64);
                    time_unprotect(iters, profile, &plain, |p| {
                        work.clear();
                        work.extend_from_slice(p);
                        black_box(rx.decrypt_rtp(&work).unwrap());
                    })
                })
            });
        }
    }
}

#[cfg(feature = "libsrtp")]
fn bench_libsrtp(c: &mut Criterion) {
    use srtp_interop::libsrtp::LibSrtp;
    for profile in SrtpProfile::ALL {
        let mk = master(profile);
        for size in SIZES {
            let plain = rtp_packet(size);
            let id = BenchmarkId::new(format!("libsrtp-{profile}"), size);

            let mut tx = LibSrtp::sender(profile, &mk).unwrap();
            let mut buf = Vec::with_capacity(size + 128);
            let mut seq = 0u16;
            c.benchmark_group("protect")
                .bench_function(id.clone(), |b| {
                    b.iter(|| {
                        buf.clear();
                        buf.extend_from_slice(&plain);
                        set_seq(&mut buf, seq);
                        seq = seq.wrapping_add(1);
                        tx.protect(&mut buf).unwrap();
                        black_box(&buf);
                    })
                });

            c.benchmark_group("unprotect").bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut rx = LibSrtp::receiver(profile, &mk, 128).unwrap();
                    let mut work = Vec::with_capacity(size + 128);
                    time_unprotect(iters, profile, &plain, |p| {
                        work.clear();
                        work.extend_from_slice(p);
                        rx.unprotect(&mut work).unwrap();
                        black_box(&work);
                    })
                })
            });
        }
    }
}

#[cfg(not(feature = "libsrtp"))]
fn bench_libsrtp(_: &mut Criterion) {}

fn config() -> Criterion {
    // The machine has 2 shared cores: keep the whole run to a few minutes.
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(10)
        .configure_from_args()
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_ours, bench_libsrtp, bench_webrtc
}

/// Median ns from criterion's `estimates.json` for one benchmark, if it ran.
fn median_ns(op: &str, imp: &str, profile: SrtpProfile, size: usize) -> Option<f64> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let path = format!("{target}/criterion/{op}/{imp}-{profile}/{size}/new/estimates.json");
    let json = std::fs::read_to_string(path).ok()?;
    let median = &json[json.find("\"median\"")?..];
    let pe = &median[median.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = pe.find([',', '}'])?;
    pe[..end].trim().parse().ok()
}

fn print_table() {
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
    println!();
    println!("median ns/packet (lower is better); ratio = ours / libsrtp2");
    println!();
    println!("| op | profile | bytes | ours | libsrtp2 | webrtc-srtp | ours/libsrtp |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for op in ["protect", "unprotect"] {
        for profile in SrtpProfile::ALL {
            for size in SIZES {
                let ours = median_ns(op, "ours", profile, size);
                if ours.is_none() {
                    continue;
                }
                let lib = median_ns(op, "libsrtp", profile, size);
                let web = median_ns(op, "webrtc", profile, size);
                let ratio = match (ours, lib) {
                    (Some(o), Some(l)) if l > 0.0 => format!("{:.2}", o / l),
                    _ => "-".into(),
                };
                println!(
                    "| {op} | {profile} | {size} | {} | {} | {} | {ratio} |",
                    cell(ours),
                    cell(lib),
                    cell(web)
                );
            }
        }
    }
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_table();
}
