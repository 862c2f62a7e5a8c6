//! Candidate primitives for the SRTP hot path, measured side by side so the choice in
//! `src/srtp/crypto.rs` can be re-checked: AES-CTR (RustCrypto vs aws-lc-rs),
//! HMAC-SHA1 with a pre-keyed state (RustCrypto vs aws-lc-rs vs ring) and AES-128-GCM
//! (RustCrypto vs ring vs aws-lc-rs), at 160 and 1200 byte payloads.
//!
//! `cargo bench -p sbc-media --bench primitives`

#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn primitives(c: &mut Criterion) {
    let key = [7u8; 16];
    let hkey = [9u8; 20];
    let mut g = c.benchmark_group("primitives");
    g.measurement_time(Duration::from_secs(1))
        .warm_up_time(Duration::from_millis(300))
        .sample_size(20);
    for payload in [160usize, 1200] {
        let mut buf = vec![0u8; 12 + payload + 16];
        let len = 12 + payload;

        {
            use aes::cipher::{InnerIvInit, KeyInit, StreamCipher, StreamCipherCoreWrapper};
            let aes = aes::Aes128::new(&key.into());
            g.bench_function(BenchmarkId::new("ctr/rustcrypto", payload), |b| {
                b.iter(|| {
                    let iv = [1u8; 16];
                    let core = ctr::CtrCore::<&aes::Aes128, ctr::flavors::Ctr128BE>::inner_iv_init(
                        &aes,
                        &iv.into(),
                    );
                    StreamCipherCoreWrapper::from_core(core).apply_keystream(&mut buf[12..len]);
                    black_box(&buf);
                })
            });
        }
        {
            use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_128};
            let k = EncryptingKey::ctr(UnboundCipherKey::new(&AES_128, &key).unwrap()).unwrap();
            g.bench_function(BenchmarkId::new("ctr/aws-lc-rs", payload), |b| {
                b.iter(|| {
                    let iv = [1u8; 16];
                    k.less_safe_encrypt(&mut buf[12..len], EncryptionContext::Iv128(iv.into()))
                        .unwrap();
                    black_box(&buf);
                })
            });
        }
        {
            // AES work if the keystream were padded to whole 64-block VAES-512 batches (rejected
            // in `src/srtp/crypto.rs`: slower than `ctr`'s per-block tail), no XOR.
            use aes::cipher::{Block, BlockCipherEncrypt, KeyInit};
            let aes = aes::Aes128::new(&key.into());
            let mut ks =
                vec![Block::<aes::Aes128>::default(); payload.div_ceil(16).div_ceil(64) * 64];
            g.bench_function(BenchmarkId::new("aes-batches-only", payload), |b| {
                b.iter(|| {
                    aes.encrypt_blocks(&mut ks);
                    black_box(&ks);
                })
            });
        }
        {
            // The SHA-1 floor of an SRTP HMAC: only the compressions it needs (the
            // payload + 12-byte header + 4-byte ROC, padding, one outer block), no HMAC
            // around them. `src/srtp/crypto.rs` HmacSha1 does exactly these.
            use aes::cipher::{consts::U64, Array};
            let inner = (12 + payload + 4 + 9).div_ceil(64);
            let blocks = vec![0x5au8; (inner + 1) * 64];
            g.bench_function(BenchmarkId::new("sha1-compress-only", payload), |b| {
                b.iter(|| {
                    let mut state = [1u32, 2, 3, 4, 5];
                    let (chunks, _) = Array::<u8, U64>::slice_as_chunks(&blocks);
                    sha1::block_api::compress(&mut state, Array::cast_slice_to_core(chunks));
                    black_box(state);
                })
            });
        }
        {
            use hmac::{KeyInit, Mac};
            let m = <hmac::Hmac<sha1::Sha1> as KeyInit>::new_from_slice(&hkey).unwrap();
            g.bench_function(BenchmarkId::new("hmac-sha1/rustcrypto", payload), |b| {
                b.iter(|| {
                    let mut h = m.clone();
                    h.update(&buf[..len]);
                    h.update(&[0, 0, 0, 1]);
                    black_box(h.finalize().into_bytes());
                })
            });
        }
        {
            use aws_lc_rs::hmac;
            let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &hkey);
            g.bench_function(BenchmarkId::new("hmac-sha1/aws-lc-rs", payload), |b| {
                b.iter(|| {
                    let mut h = hmac::Context::with_key(&k);
                    h.update(&buf[..len]);
                    h.update(&[0, 0, 0, 1]);
                    black_box(h.sign());
                })
            });
        }
        {
            use ring::hmac;
            let k = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &hkey);
            g.bench_function(BenchmarkId::new("hmac-sha1/ring", payload), |b| {
                b.iter(|| {
                    let mut h = hmac::Context::with_key(&k);
                    h.update(&buf[..len]);
                    h.update(&[0, 0, 0, 1]);
                    black_box(h.sign());
                })
            });
        }
        {
            use aes_gcm::{AeadInOut, KeyInit};
            let c = aes_gcm::Aes128Gcm::new(&key.into());
            g.bench_function(BenchmarkId::new("gcm/rustcrypto", payload), |b| {
                b.iter(|| {
                    let (h, p) = buf.split_at_mut(12);
                    let t = c
                        .encrypt_inout_detached(&[3u8; 12].into(), h, (&mut p[..payload]).into())
                        .unwrap();
                    let _ = black_box(t);
                })
            });
        }
        {
            use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
            let k = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).unwrap());
            g.bench_function(BenchmarkId::new("gcm/ring", payload), |b| {
                b.iter(|| {
                    let (h, p) = buf.split_at_mut(12);
                    let n = Nonce::assume_unique_for_key([3u8; 12]);
                    let t = k
                        .seal_in_place_separate_tag(n, Aad::from(&*h), &mut p[..payload])
                        .unwrap();
                    let _ = black_box(t);
                })
            });
        }
        {
            use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
            let k = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).unwrap());
            g.bench_function(BenchmarkId::new("gcm/aws-lc-rs", payload), |b| {
                b.iter(|| {
                    let (h, p) = buf.split_at_mut(12);
                    let n = Nonce::assume_unique_for_key([3u8; 12]);
                    let t = k
                        .seal_in_place_separate_tag(n, Aad::from(&*h), &mut p[..payload])
                        .unwrap();
                    let _ = black_box(t);
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, primitives);
criterion_main!(benches);
