//! TLS handshake load generator: one TLS connection per "call", the way platforms that do
//! not reuse connections behave, against the real gateway process.
//!
//! Starts `sbc-edge` as a separate process (the binary cargo built for this bench, or
//! `SBC_EDGE_BIN`) on loopback with the testkit's throwaway PKI (an ECDSA P-256 leaf, or
//! RSA 2048 with `--key rsa`), the flood guard's allowlist covering 127.0.0.0/8 (every client shares
//! that source: the per-source handshake limit would otherwise stop the load at 20/s, which
//! is its job). Then `--clients` tasks (default 16) each loop as fast as they can for
//! `--secs` (default 60): TCP connect, TLS handshake, one SIP OPTIONS and its answer,
//! close (close_notify + FIN). Two modes, one after the other (`--mode full|resumed|both`,
//! default both):
//!
//! - **full**: a client config without session storage, so every handshake is full;
//! - **resumed**: a client config per task, each with rustls' in-memory session store (one
//!   platform node each): after a priming connection each handshake resumes with a TLS 1.3
//!   ticket (the gateway sends two per connection and a resumption uses one, so the store
//!   never runs dry).
//!
//! Prints per mode: connections per second sustained, failures (connect, handshake or
//! answer, each bounded by a 10 s timeout), how many handshakes the client saw resumed,
//! the gateway's own `sbc_tls_handshakes_total{side="inbound",kind}` increase, and the
//! gateway's CPU (utime + stime of `/proc/PID/stat`, all threads) per connection. The
//! generator runs on the same machine and its CPU is printed too. Exits non-zero if any
//! connection failed.
//!
//! Run: `cargo bench --bench tls_handshakes -- --secs 60 [--clients 16] [--mode both]
//! [--key ecdsa|rsa]`
//! (`SBC_TLS_CLIENTS` also sets the default of `--clients`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use sbc_testkit::process::Spawned;
use sbc_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use util::{cpu_seconds, env};

/// Longest one connection (connect + handshake + OPTIONS + answer) may take before it is
/// counted failed.
const PER_CONNECTION: Duration = Duration::from_secs(10);

struct Args {
    secs: u64,
    clients: usize,
    modes: Vec<Mode>,
    /// The listener's key: ECDSA P-256 (default) or RSA 2048 (`--key rsa`).
    rsa: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Full,
    Resumed,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Resumed => "resumed",
        }
    }
}

fn args() -> Args {
    let mut a = Args {
        secs: 60,
        clients: env("SBC_TLS_CLIENTS", 16) as usize,
        modes: vec![Mode::Full, Mode::Resumed],
        rsa: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--secs" => a.secs = value.parse().expect("--secs N"),
            "--clients" => a.clients = value.parse().expect("--clients N"),
            "--mode" => {
                a.modes = match value.as_str() {
                    "full" => vec![Mode::Full],
                    "resumed" => vec![Mode::Resumed],
                    "both" => vec![Mode::Full, Mode::Resumed],
                    m => panic!("--mode full|resumed|both, not {m:?}"),
                }
            }
            "--key" => {
                a.rsa = match value.as_str() {
                    "ecdsa" => false,
                    "rsa" => true,
                    k => panic!("--key ecdsa|rsa, not {k:?}"),
                }
            }
            // cargo bench passes `--bench`; anything else is not ours either.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    assert!(
        a.secs > 0 && a.clients > 0,
        "--secs and --clients must be > 0"
    );
    a
}

fn write_config(world: &World, callee: SocketAddr) -> std::path::PathBuf {
    let tenant = world
        .tenant("load", "source_cidrs = [\"127.0.0.0/8\"]", "", callee)
        .replace(
            "[[tenants.routes]]",
            "[tenants.limits]\ncalls_per_second = 1000000.0\ncall_burst = 1000000\n\
             requests_per_second_per_connection = 1000000.0\n[[tenants.routes]]",
        );
    let text = format!(
        "[logging]\nlevel = \"warn\"\n[media]\nenabled = false\n\
         [admin]\naddress = \"127.0.0.1:0\"\naudit_log = {:?}\n\
         [flood_guard]\nallowlist = [\"127.0.0.0/8\"]\n{}\n{tenant}",
        world.dir.join("audit.log").display().to_string(),
        world.listener("")
    );
    let path = world.dir.join("sbc-edge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Counters of one run, shared by the client tasks.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
}

/// One "call": connect, handshake, OPTIONS, answer, close. `Ok(resumed)`.
async fn one(
    addr: SocketAddr,
    tls: &tokio_rustls::TlsConnector,
    options: &[u8],
) -> Result<bool, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").unwrap();
    let mut s = tls
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    s.write_all(options)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 4096];
    let mut got = Vec::new();
    // The answer's head is enough: a status line and the end of the headers.
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the answer".into());
        }
        got.extend_from_slice(&buf[..n]);
    }
    if !got.starts_with(b"SIP/2.0 ") {
        return Err("not a SIP answer".into());
    }
    let _ = s.shutdown().await;
    Ok(resumed)
}

async fn client(
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
    index: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut n = 0u64;
    let mut first_error = true;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let options = sip(&options_text(&format!("z9hG4bKhs{index}x{n}"))).to_bytes();
        match tokio::time::timeout(PER_CONNECTION, one(addr, &tls, &options)).await {
            Ok(Ok(resumed)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                if resumed {
                    tally.resumed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Err(e)) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                if first_error {
                    eprintln!("tls_handshakes: client {index}: {e}");
                    first_error = false;
                }
            }
            Err(_) => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn scrape_handshakes(admin: SocketAddr) -> (f64, f64) {
    let text = sbc_testkit::http::request(admin, "GET", "/metrics", None)
        .await
        .text();
    let get = |kind: &str| {
        metric_sample(
            &text,
            "sbc_tls_handshakes_total",
            &["side=\"inbound\"", &format!("kind=\"{kind}\"")],
        )
        .unwrap_or(0.0)
    };
    (get("full"), get("resumed"))
}

/// One mode for `secs`; returns the number of failures.
async fn run(mode: Mode, args: &Args, world: &World, gw: &Spawned) -> u64 {
    let addr = gw.printed.sip;
    // One client config (so one session store) per task, like one platform node each.
    let mut connectors = Vec::new();
    for i in 0..args.clients {
        let mut cfg = (*client_config(&world.gw_ca.pem, None)).clone();
        if mode == Mode::Full {
            cfg.resumption = rustls::client::Resumption::disabled();
        }
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        if mode == Mode::Resumed {
            // Prime the store: the first connection of a store is always full.
            let options = sip(&options_text(&format!("z9hG4bKprime{i}"))).to_bytes();
            one(addr, &tls, &options).await.expect("priming connection");
        }
        connectors.push(tls);
    }
    let pid = gw.pid().to_string();
    let (full0, resumed0) = scrape_handshakes(gw.printed.admin).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let (gw_cpu0, me_cpu0) = (cpu_seconds(&pid), cpu_seconds("self"));
    let t0 = Instant::now();
    let tasks: Vec<_> = connectors
        .into_iter()
        .enumerate()
        .map(|(i, tls)| tokio::spawn(client(addr, tls, i, stop.clone(), tally.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(args.secs)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (gw_cpu, me_cpu) = (cpu_seconds(&pid) - gw_cpu0, cpu_seconds("self") - me_cpu0);
    let (full1, resumed1) = scrape_handshakes(gw.printed.admin).await;
    let ok = tally.ok.load(Ordering::Relaxed);
    let failed = tally.failed.load(Ordering::Relaxed);
    let resumed = tally.resumed.load(Ordering::Relaxed);
    println!(
        "{:<8} {:>9.1} {:>8} {:>7} {:>9} {:>13} {:>13} {:>10.0} {:>9.0} %  {:>9.0} %",
        mode.name(),
        ok as f64 / elapsed,
        ok,
        failed,
        resumed,
        full1 - full0,
        resumed1 - resumed0,
        if ok > 0 {
            gw_cpu / ok as f64 * 1e6
        } else {
            f64::NAN
        },
        gw_cpu / elapsed * 100.0,
        me_cpu / elapsed * 100.0,
    );
    failed
}

fn main() -> ExitCode {
    let args = args();
    let bin =
        std::env::var("SBC_EDGE_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_sbc-edge").into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = World::new("tls-handshakes");
    if args.rsa {
        let leaf = world.gw_ca.issue_rsa(&["localhost", "127.0.0.1"]);
        std::fs::write(&world.gw_cert, &leaf.cert_pem).unwrap();
        std::fs::write(&world.gw_key, &leaf.key_pem).unwrap();
    }
    let callee = rt.block_on(Callee::new(&world.callee_leaf));
    let config = write_config(&world, callee.addr);
    let gw = Spawned::start(&bin, &config, &[("RUST_LOG", "warn")]);
    println!(
        "tls_handshakes: gateway pid {} (SIP {}), listener key {}, {} client tasks, {} s per mode, {} cores",
        gw.pid(),
        gw.printed.sip,
        if args.rsa { "RSA 2048" } else { "ECDSA P-256" },
        args.clients,
        args.secs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<8} {:>9} {:>8} {:>7} {:>9} {:>13} {:>13} {:>10} {:>11} {:>11}",
        "mode",
        "conn/s",
        "ok",
        "failed",
        "resumed",
        "gw counted",
        "gw counted",
        "gw CPU µs",
        "gw CPU",
        "generator"
    );
    println!(
        "{:<8} {:>9} {:>8} {:>7} {:>9} {:>13} {:>13} {:>10} {:>11} {:>11}",
        "", "", "", "", "(client)", "full", "resumed", "per conn", "", "CPU"
    );
    let mut failures = 0;
    for mode in &args.modes {
        failures += rt.block_on(run(*mode, &args, &world, &gw));
    }
    drop(gw);
    let _ = std::fs::remove_dir_all(&world.dir);
    if failures > 0 {
        eprintln!("tls_handshakes: FAILED: {failures} connection(s) failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
