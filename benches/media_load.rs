//! Media relay load generator: SRTP both ways through the real gateway process.
//!
//! Starts `sbc-edge` as a separate process (the binary cargo built for this bench, or
//! `SBC_EDGE_BIN`), sets up `SBC_MEDIA_CALLS` calls (default 50) over SIP/TLS with SDES
//! offers (AES_CM_128_HMAC_SHA1_80) and a callee answering in-process, then sends SRTP at
//! 50 packets/s per stream in both directions for `SBC_MEDIA_SECS` seconds (default 10).
//! Each packet's payload carries its send time (ns since the run began), its stream index
//! and a packet counter; receivers decrypt with the keys the gateway announced and record
//! the one-way time through the relay.
//!
//! The generator stays out of the way: one sender thread and one receiver thread per
//! direction (a mio poll loop over non-blocking sockets), fixed buffers, latencies into a
//! vector allocated before the send phase. Nothing allocates per packet.
//!
//! Prints streams, packets sent / received / lost / failed to decrypt, latency
//! p50/p99/max, the gateway's CPU seconds (utime + stime from `/proc/PID/stat`) per
//! million packets relayed (its `/metrics` counter, sampled before and after the send
//! phase) and its drops by reason. Then hangs up every call, stops the gateway, and exits
//! non-zero if a packet failed to decrypt, reached the wrong stream, or loss exceeded 1 %.
//!
//! Run: `cargo bench --bench media_load` (env vars above to change the load).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use mio::{Events, Interest, Poll, Token};
use sbc_media::srtp::{MasterKey, SrtpConfig, SrtpContext, SrtpProfile};
use sbc_sip::message::{Method, SipMessage};

/// The suite every leg uses (the tenant allows only this one on both sides).
const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";
/// Packets per second per stream: 20 ms packetization.
const PPS: u64 = 50;
/// RTP header without CSRCs or extensions.
const RTP_HEADER: usize = 12;
/// 20 ms of G.711.
const PAYLOAD: usize = 160;
/// Room for the packet plus the SRTP tag (10 bytes for _80), with margin.
const TX_BUF: usize = 256;
/// Larger than anything the relay sends back (it forwards what we sent, re-keyed).
const RX_BUF: usize = 2048;
/// The sender sleeps at least this long between bursts; packets that fell due meanwhile go
/// out back to back, each time-stamped as it is sent. Measured at 200 calls (one run each,
/// shared 2-core machine): sleeping until each packet's own due time (every 100 µs per
/// direction) cost the generator 52 % of a core (latency p50/p99 54/1881 µs); 1 ms ticks
/// 34 % but bursts of ~10 packets queue in the relay (p50/p99 241/1323 µs); 250 µs ticks
/// 44 % (p50/p99 89/234 µs).
const SEND_TICK: Duration = Duration::from_micros(250);
/// Receivers keep listening this long after the last packet is sent.
const DRAIN: Duration = Duration::from_secs(1);
/// Most datagrams read from one socket per readiness event before the poll loop moves
/// on; the rest are read in the next round (50 pps per stream keeps this far away).
const MAX_BURST: usize = 64;
/// How long the gateway may take to print its addresses.
const STARTUP: Duration = Duration::from_secs(30);
/// How long the gateway may take to exit after SIGTERM before it is killed.
const STOP: Duration = Duration::from_secs(10);
/// Loss above this fails the run.
const MAX_LOSS: f64 = 0.01;
/// Port range for the relay (each call takes two pairs: 4 ports).
const PORT_MIN: u16 = 40000;
const PORT_MAX: u16 = 49999;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let calls = env("SBC_MEDIA_CALLS", 50) as usize;
    let secs = env("SBC_MEDIA_SECS", 10);
    assert!(
        calls > 0 && secs > 0,
        "SBC_MEDIA_CALLS and SBC_MEDIA_SECS must be > 0"
    );
    assert!(
        calls * 4 <= usize::from(PORT_MAX - PORT_MIN),
        "at most {} calls fit the relay port range",
        (PORT_MAX - PORT_MIN) / 4
    );
    let bin = gateway_binary();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let world = World::new("media-load");
    let callee = rt.block_on(Callee::new(&world.callee_leaf));
    let config = write_config(&world, callee.addr);
    let mut gw = Gateway::start(&bin, &config, &world.dir);
    println!(
        "media_load: gateway pid {} (SIP {}, admin {}), {calls} calls, {secs} s at {PPS} pps per stream each way",
        gw.pid, gw.sip, gw.admin
    );

    let mut sip = rt.block_on(Sip::connect(&world, callee, gw.sip));
    let t_setup = Instant::now();
    let set_up: Vec<Call> = (0..calls).map(|i| rt.block_on(sip.setup(i))).collect();
    println!(
        "media_load: {calls} calls set up in {:.2} s",
        t_setup.elapsed().as_secs_f64()
    );

    let report = run_media(&set_up, secs, &gw);

    let t_bye = Instant::now();
    for c in &set_up {
        rt.block_on(sip.hang_up(c));
    }
    let after_bye = scrape(gw.admin).unwrap_or_default();
    println!(
        "media_load: {calls} calls hung up in {:.2} s; gateway active dialogs now {}",
        t_bye.elapsed().as_secs_f64(),
        metric(&after_bye, "sbc_sip_active_dialogs").unwrap_or(f64::NAN)
    );
    let status = gw.stop();
    println!("media_load: gateway stopped ({status})");
    drop(sip);
    let _ = std::fs::remove_dir_all(&world.dir);

    report.print();
    match report.verdict() {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("media_load: FAILED: {why}");
            ExitCode::FAILURE
        }
    }
}

/// `SBC_EDGE_BIN`, else the binary cargo built alongside this bench (the bench profile
/// inherits `release`, so this is `target/release/sbc-edge`), else a release build.
fn gateway_binary() -> PathBuf {
    if let Ok(p) = std::env::var("SBC_EDGE_BIN") {
        return PathBuf::from(p);
    }
    let built = PathBuf::from(env!("CARGO_BIN_EXE_sbc-edge"));
    if built.exists() {
        return built;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let release = root.join("target/release/sbc-edge");
    if !release.exists() {
        println!("media_load: building the gateway: cargo build --release --bin sbc-edge");
        let ok = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--release", "--bin", "sbc-edge"])
            .current_dir(root)
            .status()
            .expect("run cargo")
            .success();
        assert!(ok, "cargo build --release failed");
    }
    release
}

fn write_config(world: &World, callee: SocketAddr) -> PathBuf {
    let tenant = world
        .tenant("load", "source_cidrs = [\"127.0.0.0/8\"]", "", callee)
        .replace(
            "[[tenants.routes]]",
            &format!(
                "[tenants.limits]\ncalls_per_second = 1000000.0\ncall_burst = 1000000\n\
                 max_concurrent_calls = 1000000\nmax_pending_invites = 1000000\n\
                 requests_per_second_per_connection = 1000000.0\n\
                 [tenants.media]\ncaller_suites = [\"{SUITE}\"]\ncallee_suites = [\"{SUITE}\"]\n\
                 [[tenants.routes]]"
            ),
        );
    let text = format!(
        "[logging]\nlevel = \"warn\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\naudit_log = {:?}\n\
         [media]\naddress = \"127.0.0.1\"\nport_min = {PORT_MIN}\nport_max = {PORT_MAX}\n\
         [flood_guard]\nallowlist = [\"127.0.0.0/8\"]\n\
         {}\n{tenant}",
        world.dir.join("audit.log").display().to_string(),
        world.listener("")
    );
    let path = world.dir.join("sbc-edge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The gateway process; stopped on drop if `stop` was not called (e.g. on a panic).
struct Gateway {
    child: Option<Child>,
    pid: u32,
    sip: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Gateway {
    fn start(bin: &Path, config: &Path, dir: &Path) -> Gateway {
        let log = dir.join("gateway.log");
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let pid = child.id();
        // Read stdout on a thread (it also keeps the pipe drained until the gateway exits).
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more: keep draining.
                    continue;
                }
            }
        });
        let mut gw = Gateway {
            child: Some(child),
            pid,
            sip: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let deadline = Instant::now() + STARTUP;
        let (mut sip, mut admin) = (None, None);
        while sip.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("sips:").nth(1) {
                        if line.contains("SIP over TLS listener") {
                            sip = rest.trim().parse().ok();
                        }
                    }
                    if let Some(rest) = line.strip_prefix("  admin plane: http://") {
                        admin = rest.split_whitespace().next().and_then(|a| a.parse().ok());
                    }
                }
                Err(_) => {
                    let log = std::fs::read_to_string(&gw.log).unwrap_or_default();
                    panic!(
                        "gateway did not print its addresses within {STARTUP:?}; its log:\n{log}"
                    );
                }
            }
        }
        gw.sip = sip.unwrap();
        gw.admin = admin.unwrap();
        gw
    }

    /// SIGTERM (a drain; nothing is left to drain), then kill after `STOP`.
    fn stop(&mut self) -> String {
        let Some(mut child) = self.child.take() else {
            return "already stopped".into();
        };
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let deadline = Instant::now() + STOP;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return format!("SIGTERM: {status}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
        format!("did not exit within {STOP:?} of SIGTERM; killed: {status}")
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

// ---------------------------------------------------------------- SIP signaling

/// One established call: its sockets, the gateway's ports and the four keys.
struct Call {
    call_id: String,
    to: String,
    /// The caller's RTP socket (the SDP offer's port) and the callee's (the answer's).
    caller_rtp: UdpSocket,
    callee_rtp: UdpSocket,
    /// The gateway's port facing the caller (from the 200's SDP) and the callee (INVITE).
    gw_caller_port: u16,
    gw_callee_port: u16,
    /// Caller → gateway (ours), gateway → callee (offered by the gateway),
    /// callee → gateway (ours), gateway → caller (answered by the gateway).
    k1: Vec<u8>,
    k2: Vec<u8>,
    k3: Vec<u8>,
    k4: Vec<u8>,
}

const FROM: &str = "\"Alice\" <sips:alice@platform.example>;tag=atag";

struct Sip {
    caller: Peer,
    callee: Callee,
    /// The gateway's pooled connection to the callee, once it connected.
    callee_conn: Option<Peer>,
}

impl Sip {
    async fn connect(world: &World, callee: Callee, gw: SocketAddr) -> Sip {
        Sip {
            caller: Peer::connect(gw, &world.gw_ca.pem, None).await,
            callee,
            callee_conn: None,
        }
    }

    async fn setup(&mut self, i: usize) -> Call {
        let caller_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let callee_rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let k1 = key_material();
        let call_id = format!("media-load-{i}@platform");
        let offer = sdp(caller_rtp.local_addr().unwrap().port(), 1, &k1);
        self.caller
            .send(&with_sdp(
                invite("+15550000", &call_id, &format!("z9hG4bKml{i}"), "atag"),
                &offer,
            ))
            .await;
        if self.callee_conn.is_none() {
            self.callee_conn = Some(self.callee.accept().await);
        }
        let c = self.callee_conn.as_mut().unwrap();
        let inv = c.recv_where(|m| m.method() == Some(&Method::Invite)).await;
        let (gw_callee_port, offered) = parse_sdp(inv.body());
        let (tag, _, k2) = offered
            .into_iter()
            .find(|(_, s, _)| s == SUITE)
            .unwrap_or_else(|| panic!("call {i}: the gateway offered no {SUITE}"));
        let k3 = key_material();
        let answer_sdp = sdp(callee_rtp.local_addr().unwrap().port(), tag, &k3);
        c.send(&with_sdp(
            answer(&inv, 200, &format!("btag{i}")),
            &answer_sdp,
        ))
        .await;
        let ok = self
            .caller
            .recv_where(|m| {
                m.status() == Some(200) && m.cseq().map(|c| c.1) == Some(Method::Invite)
            })
            .await;
        let (gw_caller_port, answered) = parse_sdp(ok.body());
        let (_, suite, k4) = answered
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("call {i}: 200 without a=crypto"));
        assert_eq!(suite, SUITE, "call {i}: answered suite");
        let to = ok.header("to").unwrap().to_string();
        self.caller
            .send(&in_dialog(
                "ACK",
                "sips:sbc@127.0.0.1",
                &format!("z9hG4bKmla{i}"),
                FROM,
                &to,
                &call_id,
                1,
            ))
            .await;
        Call {
            call_id,
            to,
            caller_rtp,
            callee_rtp,
            gw_caller_port,
            gw_callee_port,
            k1,
            k2,
            k3,
            k4,
        }
    }

    async fn hang_up(&mut self, call: &Call) {
        let bye = in_dialog(
            "BYE",
            "sips:sbc@127.0.0.1",
            &format!("z9hG4bKmlb-{}", call.call_id),
            FROM,
            &call.to,
            &call.call_id,
            2,
        );
        self.caller.send(&bye).await;
        let c = self.callee_conn.as_mut().unwrap();
        let out = c.recv_where(|m| m.method() == Some(&Method::Bye)).await;
        c.send(&answer(&out, 200, "btag")).await;
        self.caller
            .recv_where(|m| m.status() == Some(200) && m.cseq().map(|c| c.1) == Some(Method::Bye))
            .await;
    }
}

fn key_material() -> Vec<u8> {
    let p: SrtpProfile = SUITE.parse().unwrap();
    (0..p.master_key_len() + p.master_salt_len())
        .map(|_| rand::random::<u8>())
        .collect()
}

fn sdp(port: u16, tag: u32, key: &[u8]) -> String {
    format!(
        "v=0\r\no=peer 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\n\
         a=crypto:{tag} {SUITE} inline:{}\r\n",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// (m=audio port, crypto lines as (tag, suite, key material)).
fn parse_sdp(body: &[u8]) -> (u16, Vec<(u32, String, Vec<u8>)>) {
    let text = std::str::from_utf8(body).unwrap();
    let mut port = 0;
    let mut crypto = Vec::new();
    for line in text.lines() {
        if let Some(m) = line.strip_prefix("m=audio ") {
            port = m.split_whitespace().next().unwrap().parse().unwrap();
        } else if let Some(c) = line.strip_prefix("a=crypto:") {
            let mut parts = c.split_whitespace();
            let tag = parts.next().unwrap().parse().unwrap();
            let suite = parts.next().unwrap().to_string();
            let inline = parts.next().unwrap().strip_prefix("inline:").unwrap();
            let key = base64::engine::general_purpose::STANDARD
                .decode(inline.split('|').next().unwrap())
                .unwrap();
            crypto.push((tag, suite, key));
        }
    }
    assert_ne!(port, 0, "SDP without m=audio:\n{text}");
    (port, crypto)
}

fn with_sdp(mut m: SipMessage, body: &str) -> SipMessage {
    m.set_header("Content-Type", "application/sdp");
    m.set_body(body.as_bytes().to_vec());
    m
}

fn ctx(key: &[u8]) -> SrtpContext {
    let profile: SrtpProfile = SUITE.parse().unwrap();
    let master = MasterKey::from_concatenated(profile, key).unwrap();
    SrtpContext::new(profile, &master, SrtpConfig::default()).unwrap()
}

// ---------------------------------------------------------------- media

struct TxStream {
    sock: Arc<mio::net::UdpSocket>,
    dest: SocketAddr,
    ctx: SrtpContext,
    ssrc: u32,
    seq: u16,
    ts: u32,
}

struct RxStream {
    sock: Arc<mio::net::UdpSocket>,
    ctx: SrtpContext,
    last_counter: Option<u32>,
}

#[derive(Default)]
struct TxStats {
    sent: u64,
    send_errors: u64,
    /// The largest lag behind schedule seen (sender overloaded if this grows).
    max_lag: Duration,
}

#[derive(Default)]
struct RxStats {
    received: u64,
    decrypt_failed: u64,
    /// Authentic packets whose payload names another stream (the relay crossed calls).
    misrouted: u64,
    /// Counter not above the last one seen on its stream (duplicate or reordered).
    out_of_order: u64,
    recv_errors: u64,
    latencies_ns: Vec<u64>,
}

/// Nanoseconds since `t0`, saturating (a run lasts minutes, far from u64's 584 years).
fn ns_since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Sends one packet per stream every 20 ms, spread evenly over the 20 ms (in bursts at most
/// `SEND_TICK` apart), for `secs`.
fn sender(mut streams: Vec<TxStream>, t0: Instant, start: Instant, secs: u64) -> TxStats {
    let n = streams.len() as u64;
    let total = PPS * secs * n;
    let mut stats = TxStats::default();
    let mut buf = [0u8; TX_BUF];
    for k in 0..total {
        // Packet k is due k/(PPS·n) s after start (exact integer schedule, no drift).
        let due = start + Duration::from_nanos(k * 1_000_000_000 / (PPS * n));
        let now = Instant::now();
        if due > now {
            std::thread::sleep((due - now).max(SEND_TICK));
        } else {
            stats.max_lag = stats.max_lag.max(now - due);
        }
        let idx = (k % n) as usize;
        let s = &mut streams[idx];
        buf[0] = 0x80;
        buf[1] = 0; // PT 0 (PCMU)
        buf[2..4].copy_from_slice(&s.seq.to_be_bytes());
        buf[4..8].copy_from_slice(&s.ts.to_be_bytes());
        buf[8..12].copy_from_slice(&s.ssrc.to_be_bytes());
        let p = &mut buf[RTP_HEADER..RTP_HEADER + PAYLOAD];
        p[0..8].copy_from_slice(&ns_since(t0).to_be_bytes());
        p[8..12].copy_from_slice(&(idx as u32).to_be_bytes());
        p[12..16].copy_from_slice(&((k / n) as u32).to_be_bytes());
        let len = s
            .ctx
            .protect_rtp(&mut buf, RTP_HEADER + PAYLOAD)
            .expect("protect: the buffer has room for the tag");
        s.seq = s.seq.wrapping_add(1);
        s.ts = s.ts.wrapping_add(PAYLOAD as u32);
        // The socket is non-blocking (shared with the receiver's poll): on a full send
        // buffer, yield and retry a bounded number of times.
        let mut sent = false;
        for _ in 0..1000 {
            match s.sock.send_to(&buf[..len], s.dest) {
                Ok(_) => {
                    sent = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(_) => break,
            }
        }
        if sent {
            stats.sent += 1;
        } else {
            stats.send_errors += 1;
        }
    }
    stats
}

/// Polls every stream's socket until `deadline`, decrypting and timing each packet.
fn receiver(
    mut poll: Poll,
    mut streams: Vec<RxStream>,
    t0: Instant,
    deadline: Instant,
    capacity: usize,
) -> RxStats {
    let mut stats = RxStats {
        latencies_ns: Vec::with_capacity(capacity),
        ..RxStats::default()
    };
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; RX_BUF];
    // Sockets with data left after MAX_BURST reads (edge-triggered: no new event for them).
    let mut pending: Vec<usize> = Vec::with_capacity(streams.len());
    let mut again: Vec<usize> = Vec::with_capacity(streams.len());
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let wait = if pending.is_empty() {
            (deadline - now).min(Duration::from_millis(100))
        } else {
            Duration::ZERO
        };
        match poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("poll: {e}"),
        }
        again.clear();
        let ready = events.iter().map(|e| e.token().0).chain(pending.drain(..));
        for i in ready {
            let s = &mut streams[i];
            let mut drained = false;
            for _ in 0..MAX_BURST {
                let n = match s.sock.recv_from(&mut buf) {
                    Ok((n, _)) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        drained = true;
                        break;
                    }
                    Err(_) => {
                        stats.recv_errors += 1;
                        continue;
                    }
                };
                let arrived = ns_since(t0);
                match s.ctx.unprotect_rtp(&mut buf[..n]) {
                    Ok(len) if len >= RTP_HEADER + 16 => {
                        let p = &buf[RTP_HEADER..len];
                        let sent = u64::from_be_bytes(p[0..8].try_into().unwrap());
                        let idx = u32::from_be_bytes(p[8..12].try_into().unwrap());
                        let counter = u32::from_be_bytes(p[12..16].try_into().unwrap());
                        stats.received += 1;
                        if idx as usize != i {
                            stats.misrouted += 1;
                        }
                        if s.last_counter.is_some_and(|c| counter <= c) {
                            stats.out_of_order += 1;
                        } else {
                            s.last_counter = Some(counter);
                        }
                        if stats.latencies_ns.len() < stats.latencies_ns.capacity() {
                            stats.latencies_ns.push(arrived.saturating_sub(sent));
                        }
                    }
                    Ok(_) | Err(_) => stats.decrypt_failed += 1,
                }
            }
            if !drained {
                again.push(i);
            }
        }
        std::mem::swap(&mut pending, &mut again);
    }
    stats
}

/// What one direction saw.
struct Direction {
    name: &'static str,
    tx: TxStats,
    rx: RxStats,
}

struct Report {
    streams: usize,
    secs: u64,
    dirs: Vec<Direction>,
    relayed: f64,
    dropped: BTreeMap<String, f64>,
    gw_cpu_secs: f64,
    gen_cpu_secs: f64,
    wall_secs: f64,
}

fn run_media(calls: &[Call], secs: u64, gw: &Gateway) -> Report {
    // Two directions: caller → callee (send on the caller's socket to the gateway's
    // caller-facing port, receive on the callee's socket) and callee → caller.
    let mut tx_ab = Vec::new();
    let mut tx_ba = Vec::new();
    let mut rx_ab = Vec::new();
    let mut rx_ba = Vec::new();
    let poll_ab = Poll::new().unwrap();
    let poll_ba = Poll::new().unwrap();
    let gw_addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    for (i, c) in calls.iter().enumerate() {
        let mut a = mio_socket(&c.caller_rtp);
        let mut b = mio_socket(&c.callee_rtp);
        // The caller's socket receives callee → caller, the callee's caller → callee.
        poll_ba
            .registry()
            .register(&mut a, Token(i), Interest::READABLE)
            .unwrap();
        poll_ab
            .registry()
            .register(&mut b, Token(i), Interest::READABLE)
            .unwrap();
        let (a, b) = (Arc::new(a), Arc::new(b));
        tx_ab.push(TxStream {
            sock: a.clone(),
            dest: gw_addr(c.gw_caller_port),
            ctx: ctx(&c.k1),
            ssrc: 0x1000_0000 + i as u32,
            seq: rand::random::<u16>() & 0x7fff,
            ts: rand::random(),
        });
        rx_ab.push(RxStream {
            sock: b.clone(),
            ctx: ctx(&c.k2),
            last_counter: None,
        });
        tx_ba.push(TxStream {
            sock: b,
            dest: gw_addr(c.gw_callee_port),
            ctx: ctx(&c.k3),
            ssrc: 0x2000_0000 + i as u32,
            seq: rand::random::<u16>() & 0x7fff,
            ts: rand::random(),
        });
        rx_ba.push(RxStream {
            sock: a,
            ctx: ctx(&c.k4),
            last_counter: None,
        });
    }
    let per_dir = (PPS * secs) as usize * calls.len();

    let metrics_before = scrape(gw.admin).expect("scrape /metrics before");
    let gw_cpu_before = cpu_ticks(&gw.pid.to_string());
    let gen_cpu_before = cpu_ticks("self");
    let t0 = Instant::now();
    let start = t0 + Duration::from_millis(50);
    let rx_deadline = start + Duration::from_secs(secs) + DRAIN;
    let spawn_rx = |name: &str, poll, streams| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || receiver(poll, streams, t0, rx_deadline, per_dir))
            .unwrap()
    };
    let rx_ab = spawn_rx("rx-ab", poll_ab, rx_ab);
    let rx_ba = spawn_rx("rx-ba", poll_ba, rx_ba);
    let spawn_tx = |name: &str, streams| {
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || sender(streams, t0, start, secs))
            .unwrap()
    };
    let tx_ab = spawn_tx("tx-ab", tx_ab);
    let tx_ba = spawn_tx("tx-ba", tx_ba);
    let dirs = vec![
        Direction {
            name: "caller→callee",
            tx: tx_ab.join().expect("sender thread"),
            rx: rx_ab.join().expect("receiver thread"),
        },
        Direction {
            name: "callee→caller",
            tx: tx_ba.join().expect("sender thread"),
            rx: rx_ba.join().expect("receiver thread"),
        },
    ];
    let wall_secs = t0.elapsed().as_secs_f64();
    let gw_cpu_after = cpu_ticks(&gw.pid.to_string());
    let gen_cpu_after = cpu_ticks("self");
    let metrics_after = scrape(gw.admin).expect("scrape /metrics after");

    let relayed = metric(&metrics_after, "sbc_media_packets_relayed_total").unwrap_or(0.0)
        - metric(&metrics_before, "sbc_media_packets_relayed_total").unwrap_or(0.0);
    let before = labelled(&metrics_before, "sbc_media_packets_dropped_total");
    let dropped = labelled(&metrics_after, "sbc_media_packets_dropped_total")
        .into_iter()
        .map(|(k, v)| {
            let d = v - before.get(&k).copied().unwrap_or(0.0);
            (k, d)
        })
        .collect();
    let tck = clock_ticks();
    Report {
        streams: calls.len(),
        secs,
        dirs,
        relayed,
        dropped,
        gw_cpu_secs: (gw_cpu_after - gw_cpu_before) as f64 / tck,
        gen_cpu_secs: (gen_cpu_after - gen_cpu_before) as f64 / tck,
        wall_secs,
    }
}

/// A non-blocking mio socket sharing the file description of `s`.
fn mio_socket(s: &UdpSocket) -> mio::net::UdpSocket {
    let s = s.try_clone().unwrap();
    s.set_nonblocking(true).unwrap();
    mio::net::UdpSocket::from_std(s)
}

impl Report {
    fn sent(&self) -> u64 {
        self.dirs.iter().map(|d| d.tx.sent).sum()
    }
    fn received(&self) -> u64 {
        self.dirs.iter().map(|d| d.rx.received).sum()
    }
    fn decrypt_failed(&self) -> u64 {
        self.dirs.iter().map(|d| d.rx.decrypt_failed).sum()
    }
    fn misrouted(&self) -> u64 {
        self.dirs.iter().map(|d| d.rx.misrouted).sum()
    }
    fn lost(&self) -> u64 {
        self.sent()
            .saturating_sub(self.received() + self.decrypt_failed())
    }
    fn loss(&self) -> f64 {
        self.lost() as f64 / self.sent().max(1) as f64
    }

    fn print(&self) {
        println!();
        println!(
            "## media_load: {} calls, {} s, {PPS} pps per stream each way, {SUITE}",
            self.streams, self.secs
        );
        println!(
            "streams:            {} ({} per direction)",
            self.streams * 2,
            self.streams
        );
        for d in &self.dirs {
            let mut lat = d.rx.latencies_ns.clone();
            lat.sort_unstable();
            println!(
                "{:<14} sent {:>8}  received {:>8}  lost {:>6}  decrypt failed {}  misrouted {}  out of order {}  send errors {}  recv errors {}  max sender lag {} µs",
                d.name,
                d.tx.sent,
                d.rx.received,
                d.tx.sent.saturating_sub(d.rx.received + d.rx.decrypt_failed),
                d.rx.decrypt_failed,
                d.rx.misrouted,
                d.rx.out_of_order,
                d.tx.send_errors,
                d.rx.recv_errors,
                d.tx.max_lag.as_micros()
            );
            println!(
                "{:<14} latency µs p50 {:.0}  p99 {:.0}  p99.9 {:.0}  max {:.0}",
                "",
                pct(&lat, 0.50),
                pct(&lat, 0.99),
                pct(&lat, 0.999),
                pct(&lat, 1.0)
            );
        }
        let mut all: Vec<u64> = self
            .dirs
            .iter()
            .flat_map(|d| d.rx.latencies_ns.iter().copied())
            .collect();
        all.sort_unstable();
        println!(
            "packets:            sent {}  received {}  lost {} ({:.3} %)  failed to decrypt {}  misrouted {}",
            self.sent(),
            self.received(),
            self.lost(),
            self.loss() * 100.0,
            self.decrypt_failed(),
            self.misrouted()
        );
        println!(
            "latency (µs):       p50 {:.0}  p99 {:.0}  max {:.0}  (one way, send call → recv return, incl. loopback and poll wake-up)",
            pct(&all, 0.50),
            pct(&all, 0.99),
            pct(&all, 1.0)
        );
        println!(
            "gateway relayed:    {:.0} packets ({:.0}/s over the {} s send phase)",
            self.relayed,
            self.relayed / self.secs as f64,
            self.secs
        );
        // CPU shares are over the whole sampled window: send phase plus the drain.
        println!(
            "gateway CPU:        {:.2} s ({:.1} % of one core); {:.2} CPU s per million packets relayed",
            self.gw_cpu_secs,
            100.0 * self.gw_cpu_secs / self.wall_secs,
            self.gw_cpu_secs / (self.relayed / 1e6).max(1e-9)
        );
        println!(
            "generator CPU:      {:.2} s ({:.1} % of one core)",
            self.gen_cpu_secs,
            100.0 * self.gen_cpu_secs / self.wall_secs
        );
        let drops: Vec<String> = self
            .dropped
            .iter()
            .map(|(k, v)| format!("{k}={v:.0}"))
            .collect();
        println!(
            "gateway dropped:    {}",
            if drops.is_empty() {
                "none (no reason counter present)".to_string()
            } else {
                drops.join("  ")
            }
        );
    }

    fn verdict(&self) -> Result<(), String> {
        if self.sent() == 0 {
            return Err("nothing was sent".into());
        }
        if self.decrypt_failed() > 0 {
            return Err(format!(
                "{} packets failed to decrypt",
                self.decrypt_failed()
            ));
        }
        if self.misrouted() > 0 {
            return Err(format!(
                "{} packets reached the wrong stream",
                self.misrouted()
            ));
        }
        if self.loss() > MAX_LOSS {
            return Err(format!(
                "loss {:.3} % > {:.0} %",
                self.loss() * 100.0,
                MAX_LOSS * 100.0
            ));
        }
        Ok(())
    }
}

/// The `q` quantile of sorted nanoseconds, in µs (nearest rank).
fn pct(sorted_ns: &[u64], q: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted_ns.len() as f64 * q).ceil() as usize).clamp(1, sorted_ns.len()) - 1;
    sorted_ns[i] as f64 / 1000.0
}

// ---------------------------------------------------------------- gateway observation

/// `GET /metrics` over HTTP/1.0 (no chunking), body only.
fn scrape(admin: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!("/metrics: {head}")));
    }
    Ok(body.to_string())
}

/// The value of an unlabelled sample `name`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

/// `name{reason="x"} v` samples as reason → v (the whole label set if not just reason).
fn labelled(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?.strip_prefix('{')?;
            let (labels, value) = rest.split_once("} ")?;
            let key = labels
                .strip_prefix("reason=\"")
                .and_then(|r| r.strip_suffix('"'))
                .unwrap_or(labels);
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// utime + stime of `/proc/<pid>/stat` in clock ticks (fields 14 and 15).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14 → index 11.
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

/// `getconf CLK_TCK`, 100 if that fails.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
