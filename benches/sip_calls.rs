//! Calls-per-second load generator over real TLS on loopback.
//!
//! Starts the gateway in-process, a callee that answers every INVITE with 200 and every
//! BYE with 200, and `SBC_LOAD_CALLERS` caller connections (default 8) that each place
//! calls back to back: INVITE → 100 → 200 → ACK → BYE → 200. Runs for
//! `SBC_LOAD_SECS` seconds (default 10) or `SBC_LOAD_MAX_CALLS` calls (default 200000),
//! whichever comes first, then prints completed calls per second, failures and call-setup
//! latency (INVITE sent → 200 received) percentiles.
//!
//! Run: `cargo bench --bench sip_calls` (env vars above to change the load).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sbc_sip::message::Method;
use sbc_testkit::*;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let secs = env("SBC_LOAD_SECS", 10);
    let callers = env("SBC_LOAD_CALLERS", 8) as usize;
    let max_calls = env("SBC_LOAD_MAX_CALLS", 200_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(Duration::from_secs(secs), callers, max_calls));
}

async fn run(duration: Duration, callers: usize, max_calls: u64) {
    let world = World::new("load");
    let callee = Callee::new(&world.callee_leaf).await;
    let text = format!(
        "{}\n{}",
        world.listener(""),
        world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee.addr)
    );
    // Lift the demo tenant's call-rate limits: this measures the gateway, not admission.
    let text = text.replace(
        "[[tenants.routes]]",
        "[tenants.limits]\ncalls_per_second = 1000000.0\ncall_burst = 1000000\nmax_concurrent_calls = 1000000\n[[tenants.routes]]",
    );
    let gw = start_gateway(world.config(&text)).await;
    let addr = gw.sip_addrs[0];

    // Callee: answer everything on the pooled connection(s).
    let stop = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        loop {
            let mut conn = callee.accept().await;
            tokio::spawn(async move {
                while let Some(m) = conn.recv_within(Duration::from_secs(3600)).await {
                    match m.method() {
                        Some(Method::Invite) | Some(Method::Bye) => {
                            let r = answer(&m, 200, "btag");
                            conn.send(&r).await;
                        }
                        _ => {}
                    }
                }
            });
        }
    });

    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut handles = Vec::new();
    for c in 0..callers {
        let (ca, done, failed, stop) = (
            world.gw_ca.pem.clone(),
            done.clone(),
            failed.clone(),
            stop.clone(),
        );
        handles.push(tokio::spawn(async move {
            let mut peer = Peer::connect(addr, &ca, None).await;
            let mut latencies = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                if done.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed) >= max_calls {
                    break;
                }
                n += 1;
                let call_id = format!("load-{c}-{n}@platform");
                let t0 = Instant::now();
                peer.send(&invite(
                    "+1555",
                    &call_id,
                    &format!("z9hG4bKl{c}x{n}"),
                    "atag",
                ))
                .await;
                let ok = loop {
                    match peer.recv_within(Duration::from_secs(5)).await {
                        Some(m) if m.status() == Some(100) => continue,
                        other => break other,
                    }
                };
                let Some(ok) = ok.filter(|m| m.status() == Some(200)) else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                latencies.push(t0.elapsed());
                let to = ok.header("to").unwrap().to_string();
                let from = "\"Alice\" <sips:alice@platform.example>;tag=atag";
                peer.send(&in_dialog(
                    "ACK",
                    "sips:sbc@127.0.0.1",
                    &format!("z9hG4bKla{c}x{n}"),
                    from,
                    &to,
                    &call_id,
                    1,
                ))
                .await;
                peer.send(&in_dialog(
                    "BYE",
                    "sips:sbc@127.0.0.1",
                    &format!("z9hG4bKlb{c}x{n}"),
                    from,
                    &to,
                    &call_id,
                    2,
                ))
                .await;
                match peer.recv_within(Duration::from_secs(5)).await {
                    Some(m)
                        if m.status() == Some(200)
                            && m.cseq().map(|c| c.1) == Some(Method::Bye) =>
                    {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat[i].as_secs_f64() * 1e3
    };
    let done = done.load(Ordering::Relaxed);
    println!("sip_calls: {callers} caller connections over TLS, {elapsed:.1} s");
    println!(
        "  completed calls: {done} ({:.0} calls/s; each INVITE/100/200/ACK/BYE/200 through the B2BUA)",
        done as f64 / elapsed
    );
    println!("  failed calls:    {}", failed.load(Ordering::Relaxed));
    println!(
        "  setup latency:   p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!("  gateway state after the run: {:?}", gw.stats());
}
