//! Media relay load generator: SRTP both ways through the real gateway process.
//!
//! Starts `sbc-edge` as a separate process (the binary cargo built for this bench, or
//! `SBC_EDGE_BIN`), sets up `SBC_MEDIA_CALLS` calls (default 50) over SIP/TLS with SDES
//! offers (AES_CM_128_HMAC_SHA1_80) and a callee answering in-process, then sends SRTP at
//! 50 packets/s per stream in both directions for `SBC_MEDIA_SECS` seconds (default 10).
//! Each payload carries its send time (wall clock), its stream index and a packet counter;
//! the receiver decrypts with the keys the gateway announced and times each packet to the
//! kernel's receive timestamp (`SO_TIMESTAMPNS`), so its own pacing does not count.
//!
//! The generator stays out of the way: two threads (one sender, one receiver), a few
//! sockets shared by all calls (`SBC_MEDIA_SOCKETS` per side, default 4), `sendmmsg` /
//! `recvmmsg` through `sbc_media::udp_batch`, both threads waking on a timer rather than per
//! packet, fixed buffers, latencies into vectors allocated before the send phase.
//!
//! With `SBC_MEDIA_TAPS=N` (1-4), every call gets N recording taps (plain RTP, both legs)
//! through the admin API, all to one recorder socket of the generator that counts them.
//!
//! With `SBC_MEDIA_RECORDING=1`, one run measures recording off, then on, over the same
//! calls: a send phase without forks, then every call gets the forks a SIPREC recording
//! with SRTP to the recording server makes (one SRTP fork per leg under its own key, the
//! relay path of `RecordingMedia` streams; started here through the admin tap API, not
//! SIPREC signaling) and a second send phase on fresh SSRCs. It prints both reports and
//! the relay's CPU per packet relayed in each, with their ratio.
//!
//! Prints packets sent / received / lost / failed to decrypt, latency p50/p99/max, the
//! gateway's CPU seconds (utime + stime from `/proc/PID/stat`) per million packets relayed
//! (its `/metrics` counter, sampled before and after the send phase), packets per relay
//! wake-up, and drops by reason. Then hangs up every call, stops the gateway, and exits
//! non-zero if a packet failed to decrypt, reached the wrong stream, or loss exceeded 1 %.
//!
//! Run: `cargo bench --bench media_load` (env vars above to change the load;
//! `SBC_MEDIA_BATCH_US` sets the relay's `[media] batch_interval_us`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sbc_media::srtp::{SrtpContext, SrtpProfile};
use sbc_media::udp_batch::{enable_rx_timestamps, send_batch, RecvBatch, BATCH};
use sbc_sip::message::Method;
use sbc_testkit::media::{ctx, parse_sdp, with_sdp, Sdp};
use sbc_testkit::*;
use util::{cpu_seconds, env};

/// The suite every leg uses (the tenant allows only this one on both sides).
const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";

/// The suite of the callee's leg: `SBC_MEDIA_CALLEE_SUITE`, default [`SUITE`]. rtpengine
/// passes an offerer's key through unchanged when the answerer picks the offerer's own
/// suite (SRTP passthrough: no decryption at all), so a comparison with it sets the
/// callee to AES_CM_128_HMAC_SHA1_32, a suite rtpengine keys itself, and runs sbc-edge
/// the same way. The AES-128 and HMAC-SHA1 work is the same; only the tag is shorter.
fn callee_suite() -> String {
    std::env::var("SBC_MEDIA_CALLEE_SUITE").unwrap_or_else(|_| SUITE.to_string())
}
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
/// The receiver drains its sockets this often. Latency is timed by the kernel's receive
/// timestamp, so this only bounds how much queues in the sockets' buffers.
const RX_TICK: Duration = Duration::from_micros(500);
/// Receive buffer asked for each generator socket.
const RX_SOCKET_BUFFER: usize = 4 << 20;
/// The receiver keeps listening this long after the last packet is sent.
const DRAIN: Duration = Duration::from_secs(1);
/// The admin token the bench configures for itself (operator; its SHA-256 below).
const ADMIN_TOKEN: &str = "foo";
const ADMIN_TOKEN_SHA256: &str = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";
/// How long the gateway may take to print its addresses.
const STARTUP: Duration = Duration::from_secs(30);
/// How long the gateway may take to exit after SIGTERM before it is killed.
const STOP: Duration = Duration::from_secs(10);
/// Loss above this fails the run.
const MAX_LOSS: f64 = 0.01;
/// Port range for the relay (each call takes two pairs: 4 ports).
const PORT_MIN: u16 = 40000;
const PORT_MAX: u16 = 49999;

fn main() -> ExitCode {
    let calls = env("SBC_MEDIA_CALLS", 50) as usize;
    let secs = env("SBC_MEDIA_SECS", 10);
    let taps = env("SBC_MEDIA_TAPS", 0) as usize;
    assert!(taps <= 4, "SBC_MEDIA_TAPS: at most 4 taps per call");
    assert!(
        calls > 0 && secs > 0,
        "SBC_MEDIA_CALLS and SBC_MEDIA_SECS must be > 0"
    );
    assert!(
        calls * 4 <= usize::from(PORT_MAX - PORT_MIN),
        "at most {} calls fit the relay port range",
        (PORT_MAX - PORT_MIN) / 4
    );
    if std::env::var("SBC_MEDIA_PEER").as_deref() == Ok("rtpengine") {
        assert_eq!(taps, 0, "taps are an sbc-edge feature");
        return finish(peer::run_rtpengine(calls, secs));
    }
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

    let socks = Arc::new(Sockets::from_env());
    let mut sip = rt.block_on(Sip::connect(&world, callee, gw.sip));
    let t_setup = Instant::now();
    let set_up: Vec<Call> = (0..calls)
        .map(|i| {
            let (a, b) = socks.of_call(i, calls);
            rt.block_on(sip.setup(i, socks.port(a), socks.port(b)))
        })
        .collect();
    println!(
        "media_load: {calls} calls set up in {:.2} s",
        t_setup.elapsed().as_secs_f64()
    );
    let recorder = (taps > 0).then(|| {
        let r = UdpSocket::bind("127.0.0.1:0").unwrap();
        r.set_nonblocking(true).unwrap();
        let _ = socket2::SockRef::from(&r).set_recv_buffer_size(RX_SOCKET_BUFFER);
        let dest = r.local_addr().unwrap();
        let both = format!(r#"{{"legs":"both","transport":"rtp","destination":"{dest}"}}"#);
        let made = rt.block_on(start_taps(gw.admin, &vec![both; taps]));
        println!("media_load: {made} taps started (plain RTP, both legs) towards {dest}");
        assert_eq!(made, taps * calls, "every call gets its taps");
        r
    });

    let observed = Observed {
        name: "sbc-edge",
        pid: gw.pid,
        admin: Some(gw.admin),
    };
    let report = if env("SBC_MEDIA_RECORDING", 0) == 1 {
        assert_eq!(taps, 0, "SBC_MEDIA_RECORDING compares against no taps");
        recording_off_on(&rt, gw.admin, &set_up, socks, secs, &observed)
    } else {
        run_media(&set_up, socks, recorder, taps, secs, observed, 0)
    };

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

    finish(report)
}

/// `SBC_MEDIA_RECORDING=1`: a send phase without forks, then one with a SIPREC
/// recording's forks on every call (an SRTP fork of each leg toward one recorder socket);
/// prints the first report and the CPU comparison, returns the second.
fn recording_off_on(
    rt: &tokio::runtime::Runtime,
    admin: SocketAddr,
    calls: &[Call],
    socks: Arc<Sockets>,
    secs: u64,
    observed: &Observed,
) -> Report {
    let off = run_media(
        calls,
        Arc::clone(&socks),
        None,
        0,
        secs,
        observed.clone(),
        0,
    );
    off.print();
    let r = UdpSocket::bind("127.0.0.1:0").unwrap();
    r.set_nonblocking(true).unwrap();
    let _ = socket2::SockRef::from(&r).set_recv_buffer_size(RX_SOCKET_BUFFER);
    let dest = r.local_addr().unwrap();
    let fork = |leg: &str| {
        format!(r#"{{"legs":"{leg}","transport":"srtp","suite":"{SUITE}","destination":"{dest}"}}"#)
    };
    let made = rt.block_on(start_taps(admin, &[fork("caller"), fork("callee")]));
    assert_eq!(made, 2 * calls.len(), "every call gets both forks");
    println!("media_load: recording on: {made} SRTP forks (one per leg per call) towards {dest}");
    // Fresh SSRCs: the second phase's packets are new streams to every SRTP context.
    let mut on = run_media(calls, socks, Some(r), 2, secs, observed.clone(), 1);
    // Each leg has one fork: one copy per relayed packet.
    on.tap_copies_per_packet = 1;
    let per_packet = |r: &Report| r.cpu_per_million_relayed().unwrap_or(f64::NAN);
    let (a, b) = (per_packet(&off), per_packet(&on));
    println!(
        "media_load: relay CPU per million packets relayed: recording off {a:.2} s, on {b:.2} s; on/off {:.3}",
        b / a
    );
    on
}

fn finish(report: Report) -> ExitCode {
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
    // The relay's pacing (`[media] batch_interval_us`), when set, else the default.
    let batch = std::env::var("SBC_MEDIA_BATCH_US")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(|us| format!("batch_interval_us = {us}\n"))
        .unwrap_or_default();
    let tenant = world
        .tenant("load", "source_cidrs = [\"127.0.0.0/8\"]", "", callee)
        .replace(
            "[[tenants.routes]]",
            &format!(
                "[tenants.limits]\ncalls_per_second = 1000000.0\ncall_burst = 1000000\n\
                 max_concurrent_calls = 1000000\nmax_pending_invites = 1000000\n\
                 requests_per_second_per_connection = 1000000.0\n\
                 [tenants.media]\ncaller_suites = [\"{SUITE}\"]\ncallee_suites = [\"{}\"]\n\
                 [[tenants.routes]]",
                callee_suite()
            ),
        );
    let text = format!(
        "[logging]\nlevel = \"warn\"\n\
         [admin]\naddress = \"127.0.0.1:0\"\naudit_log = {:?}\n\
         [[admin.tokens]]\nid = \"bench\"\nsha256 = \"{ADMIN_TOKEN_SHA256}\"\nrole = \"operator\"\n\
         [media]\naddress = \"127.0.0.1\"\nport_min = {PORT_MIN}\nport_max = {PORT_MAX}\n{batch}\
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
        let stdout = child.stdout.take().unwrap();
        // Kept in `Gateway` right away: stopped on drop if the banner never comes.
        let mut gw = Gateway {
            child: Some(child),
            pid,
            sip: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            log,
        };
        let Some(printed) = printed_addresses(stdout, STARTUP) else {
            let log = std::fs::read_to_string(&gw.log).unwrap_or_default();
            panic!("gateway did not print its addresses within {STARTUP:?}; its log:\n{log}");
        };
        gw.sip = printed.sip;
        gw.admin = printed.admin;
        gw
    }

    /// SIGTERM (a drain; nothing is left to drain), then kill after `STOP`.
    fn stop(&mut self) -> String {
        match self.child.take() {
            Some(mut child) => terminate(&mut child),
            None => "already stopped".into(),
        }
    }
}

/// SIGTERM, then SIGKILL if `child` has not exited within [`STOP`]: how it ended.
fn terminate(child: &mut Child) -> String {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
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

    /// Call `i`, the caller's SDP naming `caller_port`, the callee's `callee_port`.
    async fn setup(&mut self, i: usize, caller_port: u16, callee_port: u16) -> Call {
        let call_id = format!("media-load-{i}@platform");
        let (offering, offer) = Offering::new(i, "the gateway", caller_port);
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
        let (answering, answer_sdp) = offering.callee_answers(inv.body(), callee_port);
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
        answering.caller_learns(ok.body(), call_id, to)
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

/// One call's SDES exchange as the generator's two peers play it, whatever carries the
/// SDP (SIP through sbc-edge, ng to rtpengine): the caller offers [`SUITE`] with key k1;
/// the callee picks [`callee_suite`] from the relay's offer (key k2) and answers with its
/// own key k3; the caller learns the relay's key k4 from the relay's answer.
struct Offering {
    i: usize,
    /// Who rewrote the SDP, for messages.
    relay: &'static str,
    k1: Vec<u8>,
}

/// The exchange once the callee has answered.
struct Answering {
    offering: Offering,
    gw_callee_port: u16,
    k2: Vec<u8>,
    k3: Vec<u8>,
}

impl Offering {
    /// Call `i`'s offer from the caller, naming `port`: the exchange and the SDP.
    fn new(i: usize, relay: &'static str, port: u16) -> (Offering, String) {
        let k1 = key_material(SUITE);
        let offer = sdp(port, 1, SUITE, &k1);
        (Offering { i, relay, k1 }, offer)
    }

    /// The callee's answer, naming `port`, to the relay's offer `offered`.
    fn callee_answers(self, offered: &[u8], port: u16) -> (Answering, String) {
        let inside = callee_suite();
        let offered_sdp = parse_sdp(offered);
        let (gw_callee_port, crypto) = (offered_sdp.port, offered_sdp.crypto);
        let (tag, _, k2) = crypto
            .into_iter()
            .find(|(_, s, _)| *s == inside)
            .unwrap_or_else(|| panic!("call {}: {} offered no {inside}", self.i, self.relay));
        let k3 = key_material(&inside);
        let answer = sdp(port, tag, &inside, &k3);
        let answering = Answering {
            offering: self,
            gw_callee_port,
            k2,
            k3,
        };
        (answering, answer)
    }
}

impl Answering {
    /// The caller reads the relay's answer `answered`: the call, ready for media.
    fn caller_learns(self, answered: &[u8], call_id: String, to: String) -> Call {
        let Offering { i, relay, k1 } = self.offering;
        let answered_sdp = parse_sdp(answered);
        let (gw_caller_port, crypto) = (answered_sdp.port, answered_sdp.crypto);
        let (_, suite, k4) = crypto
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("call {i}: {relay} answered without a=crypto"));
        assert_eq!(suite, SUITE, "call {i}: answered suite");
        Call {
            call_id,
            to,
            gw_caller_port,
            gw_callee_port: self.gw_callee_port,
            k1,
            k2: self.k2,
            k3: self.k3,
            k4,
        }
    }
}

fn key_material(suite: &str) -> Vec<u8> {
    let p: SrtpProfile = suite.parse().unwrap();
    (0..p.master_key_len() + p.master_salt_len())
        .map(|_| rand::random::<u8>())
        .collect()
}

/// An offer or answer: PCMU at `port`, 20 ms packets, one key of `suite`.
fn sdp(port: u16, tag: u32, suite: &str, key: &[u8]) -> String {
    Sdp::audio(port).ptime().crypto(tag, suite, key).build()
}

// ---------------------------------------------------------------- media

/// The generator's sockets: `per_side` on the caller side, then `per_side` on the callee
/// side. Calls share them in blocks (call i uses socket i·per_side/calls of each side), so
/// the packets one send tick finds due mostly leave from one socket in one `sendmmsg`, and
/// the receiver drains a few sockets with `recvmmsg` instead of polling one per stream.
/// The gateway does not mind: each leg latches the source of its own authenticated
/// packets, and the receiver tells streams apart by the gateway port they come from.
struct Sockets {
    all: Vec<UdpSocket>,
    per_side: usize,
}

impl Sockets {
    /// `SBC_MEDIA_SOCKETS` per side (default 4, at most 64).
    fn from_env() -> Sockets {
        Sockets::bind(env("SBC_MEDIA_SOCKETS", 4).clamp(1, 64) as usize)
    }

    fn bind(per_side: usize) -> Sockets {
        let all = (0..2 * per_side)
            .map(|_| {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_nonblocking(true).unwrap();
                enable_rx_timestamps(s.as_fd()).expect("SO_TIMESTAMPNS");
                // Each socket carries many streams: room for a scheduling hiccup of the
                // receiver (the kernel caps this at net.core.rmem_max).
                let _ = socket2::SockRef::from(&s).set_recv_buffer_size(RX_SOCKET_BUFFER);
                s
            })
            .collect();
        Sockets { all, per_side }
    }

    /// (caller-side, callee-side) socket index of call `i` of `calls`.
    fn of_call(&self, i: usize, calls: usize) -> (usize, usize) {
        let b = i * self.per_side / calls.max(1);
        (b, self.per_side + b)
    }

    fn port(&self, sock: usize) -> u16 {
        self.all[sock].local_addr().unwrap().port()
    }
}

/// One direction of one call, as its sender sees it.
struct TxStream {
    sock: usize,
    dest: SocketAddr,
    ctx: SrtpContext,
    ssrc: u32,
    seq: u16,
    ts: u32,
}

/// One direction of one call, as its receiver sees it.
struct RxStream {
    ctx: SrtpContext,
    /// 0: caller → callee, 1: callee → caller.
    dir: usize,
    last_counter: Option<u32>,
}

#[derive(Default)]
struct TxStats {
    /// Per direction (the caller-side sockets send caller → callee).
    sent: [u64; 2],
    send_errors: u64,
    /// `sendmmsg` calls made.
    batches: u64,
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
    latencies_ns: Vec<u64>,
}

#[derive(Default)]
struct RxTotals {
    dirs: [RxStats; 2],
    /// Datagrams from a port that is no stream's gateway leg.
    unknown_source: u64,
    recv_errors: u64,
    /// Datagrams without a kernel receive timestamp (latency not recorded).
    no_timestamp: u64,
    /// Tap copies received by the recorder socket (plain RTP).
    tap_received: u64,
}

/// Wall-clock ns since the Unix epoch: the clock of the kernel's receive timestamps.
fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Sends one packet per stream every 20 ms, spread evenly over the 20 ms, for `secs`:
/// every `SEND_TICK` it takes the packets that fell due and sends them with one
/// `sendmmsg` per run of packets leaving the same socket.
fn sender(socks: Arc<Sockets>, mut streams: Vec<TxStream>, start: Instant, secs: u64) -> TxStats {
    let n = streams.len() as u64;
    let total = PPS * secs * n;
    let due = |k: u64| start + Duration::from_nanos(k * 1_000_000_000 / (PPS * n));
    let mut stats = TxStats::default();
    let mut bufs = vec![[0u8; TX_BUF]; BATCH];
    let mut lens = [0usize; BATCH];
    let mut dests = [SocketAddr::from(([0, 0, 0, 0], 0)); BATCH];
    let mut k = 0u64;
    while k < total {
        let now = Instant::now();
        let next = due(k);
        if next > now {
            std::thread::sleep((next - now).max(SEND_TICK));
            continue;
        }
        stats.max_lag = stats.max_lag.max(now - next);
        // Everything due by now (packet k is due k/(PPS·n) s after start: no drift).
        let elapsed = u64::try_from(now.duration_since(start).as_nanos()).unwrap_or(u64::MAX);
        let end = (elapsed.saturating_mul(PPS * n) / 1_000_000_000 + 1).min(total);
        while k < end {
            let sock = streams[(k % n) as usize].sock;
            let mut m = 0;
            while k < end && m < BATCH && streams[(k % n) as usize].sock == sock {
                let idx = (k % n) as usize;
                let s = &mut streams[idx];
                let buf = &mut bufs[m];
                buf[0] = 0x80;
                buf[1] = 0; // PT 0 (PCMU)
                buf[2..4].copy_from_slice(&s.seq.to_be_bytes());
                buf[4..8].copy_from_slice(&s.ts.to_be_bytes());
                buf[8..12].copy_from_slice(&s.ssrc.to_be_bytes());
                let p = &mut buf[RTP_HEADER..RTP_HEADER + PAYLOAD];
                p[0..8].copy_from_slice(&wall_ns().to_be_bytes());
                p[8..12].copy_from_slice(&(idx as u32).to_be_bytes());
                p[12..16].copy_from_slice(&((k / n) as u32).to_be_bytes());
                lens[m] = s
                    .ctx
                    .protect_rtp(buf, RTP_HEADER + PAYLOAD)
                    .expect("protect: the buffer has room for the tag");
                dests[m] = s.dest;
                s.seq = s.seq.wrapping_add(1);
                s.ts = s.ts.wrapping_add(PAYLOAD as u32);
                m += 1;
                k += 1;
            }
            let packets = (0..m).map(|j| (&bufs[j][..lens[j]], dests[j]));
            let r = send_batch(socks.all[sock].as_fd(), packets);
            stats.batches += 1;
            stats.sent[usize::from(sock >= socks.per_side)] += r.sent as u64;
            stats.send_errors += r.failed as u64;
        }
    }
    stats
}

/// Every `RX_TICK` until `deadline`, drains every socket with `recvmmsg`, decrypting each
/// packet with its stream's key (found by the gateway port it came from) and timing it
/// from its send time to the kernel's receive timestamp.
fn receiver(
    socks: Arc<Sockets>,
    recorder: Option<UdpSocket>,
    mut streams: Vec<RxStream>,
    by_port: Vec<u32>,
    deadline: Instant,
    capacity: usize,
) -> RxTotals {
    let mut t = RxTotals::default();
    for d in &mut t.dirs {
        d.latencies_ns = Vec::with_capacity(capacity);
    }
    let mut batch = RecvBatch::new(RX_BUF).with_timestamps();
    while Instant::now() < deadline {
        std::thread::sleep(RX_TICK);
        if let Some(r) = &recorder {
            loop {
                match batch.recv(r.as_fd(), RX_BUF) {
                    Ok(n) => {
                        t.tap_received += n as u64;
                        if n < BATCH {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        t.recv_errors += 1;
                        break;
                    }
                }
            }
        }
        for sock in &socks.all {
            loop {
                let n = match batch.recv(sock.as_fd(), RX_BUF) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        t.recv_errors += 1;
                        break;
                    }
                };
                for i in 0..n {
                    let idx = batch
                        .source(i)
                        .and_then(|a| by_port.get(usize::from(a.port())).copied())
                        .filter(|&x| x != u32::MAX);
                    let Some(idx) = idx else {
                        t.unknown_source += 1;
                        continue;
                    };
                    let arrived = batch.rx_time_ns(i);
                    let len = batch.len(i);
                    let s = &mut streams[idx as usize];
                    let d = &mut t.dirs[s.dir];
                    match s.ctx.unprotect_rtp(&mut batch.slot_mut(i)[..len]) {
                        Ok(clear) if clear >= RTP_HEADER + 16 => {
                            let p = &batch.slot(i)[RTP_HEADER..clear];
                            let sent = u64::from_be_bytes(p[0..8].try_into().unwrap());
                            let named = u32::from_be_bytes(p[8..12].try_into().unwrap());
                            let counter = u32::from_be_bytes(p[12..16].try_into().unwrap());
                            d.received += 1;
                            if named != idx {
                                d.misrouted += 1;
                            }
                            if s.last_counter.is_some_and(|c| counter <= c) {
                                d.out_of_order += 1;
                            } else {
                                s.last_counter = Some(counter);
                            }
                            match arrived {
                                Some(at) if d.latencies_ns.len() < d.latencies_ns.capacity() => {
                                    d.latencies_ns.push(at.saturating_sub(sent))
                                }
                                Some(_) => {}
                                None => t.no_timestamp += 1,
                            }
                        }
                        Ok(_) | Err(_) => d.decrypt_failed += 1,
                    }
                }
                if n < BATCH {
                    break;
                }
            }
        }
    }
    t
}

/// What one direction saw.
struct Direction {
    name: &'static str,
    sent: u64,
    rx: RxStats,
}

/// The relay under load, as the generator observes it.
#[derive(Clone)]
struct Observed {
    name: &'static str,
    pid: u32,
    /// sbc-edge's admin address (`/metrics`); none for another relay.
    admin: Option<SocketAddr>,
}

struct Report {
    relay_name: &'static str,
    calls: usize,
    secs: u64,
    dirs: Vec<Direction>,
    tx: TxStats,
    rx_unknown: u64,
    rx_errors: u64,
    rx_no_timestamp: u64,
    taps: usize,
    tap_received: u64,
    /// Copies the taps make of each relayed packet (`taps` for both-leg taps).
    tap_copies_per_packet: u64,
    /// sbc-edge's own counters over the run; none for another relay.
    counted: Option<RelayCounters>,
    gw_cpu_secs: f64,
    gen_cpu_secs: f64,
    wall_secs: f64,
}

/// What sbc-edge's `/metrics` counted between two scrapes.
struct RelayCounters {
    relayed: f64,
    wakeups: f64,
    dropped: BTreeMap<String, f64>,
    tap_dropped: f64,
}

impl RelayCounters {
    fn between(before: &str, after: &str) -> RelayCounters {
        let delta =
            |name: &str| metric(after, name).unwrap_or(0.0) - metric(before, name).unwrap_or(0.0);
        let dropped_before = labelled(before, "sbc_media_packets_dropped_total");
        let dropped = labelled(after, "sbc_media_packets_dropped_total")
            .into_iter()
            .map(|(k, v)| {
                let d = v - dropped_before.get(&k).copied().unwrap_or(0.0);
                (k, d)
            })
            .collect();
        let taps_dropped = |text: &str| {
            labelled(text, "sbc_tap_packets_dropped_total")
                .values()
                .sum::<f64>()
        };
        RelayCounters {
            relayed: delta("sbc_media_packets_relayed_total"),
            wakeups: delta("sbc_media_worker_wakeups_total"),
            dropped,
            tap_dropped: taps_dropped(after) - taps_dropped(before),
        }
    }
}

/// `phase` picks the streams' SSRCs, so a second run over the same calls is new streams.
fn run_media(
    calls: &[Call],
    socks: Arc<Sockets>,
    recorder: Option<UdpSocket>,
    taps: usize,
    secs: u64,
    relay: Observed,
    phase: u32,
) -> Report {
    // Streams 0..c: caller → callee (sent from the call's caller-side socket to the
    // gateway's caller-facing port, arriving from its callee-facing port); c..2c: the
    // other way.
    let c = calls.len();
    let gw_addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let mut tx = Vec::with_capacity(2 * c);
    let mut rx = Vec::with_capacity(2 * c);
    let mut by_port = vec![u32::MAX; 65536];
    let inside = callee_suite();
    for dir in 0..2 {
        for (i, call) in calls.iter().enumerate() {
            let (a, b) = socks.of_call(i, c);
            let idx = dir * c + i;
            let (sock, dest, from, k_tx, k_rx) = if dir == 0 {
                (
                    a,
                    call.gw_caller_port,
                    call.gw_callee_port,
                    &call.k1,
                    &call.k2,
                )
            } else {
                (
                    b,
                    call.gw_callee_port,
                    call.gw_caller_port,
                    &call.k3,
                    &call.k4,
                )
            };
            tx.push(TxStream {
                sock,
                dest: gw_addr(dest),
                ctx: ctx(if dir == 0 { SUITE } else { &inside }, k_tx),
                ssrc: 0x1000_0000 * (dir as u32 + 1) + 0x0100_0000 * phase + i as u32,
                seq: rand::random::<u16>() & 0x7fff,
                ts: rand::random(),
            });
            rx.push(RxStream {
                ctx: ctx(if dir == 0 { &inside } else { SUITE }, k_rx),
                dir,
                last_counter: None,
            });
            by_port[usize::from(from)] = idx as u32;
        }
    }
    let per_dir = (PPS * secs) as usize * c;

    let pid = relay.pid.to_string();
    let scrape_relay = || relay.admin.map(|a| scrape(a).expect("scrape /metrics"));
    let metrics_before = scrape_relay();
    let gw_cpu_before = cpu_seconds(&pid);
    let gen_cpu_before = cpu_seconds("self");
    let t0 = Instant::now();
    let start = t0 + Duration::from_millis(50);
    let rx_deadline = start + Duration::from_secs(secs) + DRAIN;
    let rx_socks = Arc::clone(&socks);
    let rx_thread = std::thread::Builder::new()
        .name("rx".into())
        .spawn(move || receiver(rx_socks, recorder, rx, by_port, rx_deadline, per_dir))
        .unwrap();
    let tx_thread = std::thread::Builder::new()
        .name("tx".into())
        .spawn(move || sender(socks, tx, start, secs))
        .unwrap();
    let tx = tx_thread.join().expect("sender thread");
    let rx = rx_thread.join().expect("receiver thread");
    let wall_secs = t0.elapsed().as_secs_f64();
    let gw_cpu_after = cpu_seconds(&pid);
    let gen_cpu_after = cpu_seconds("self");
    let metrics_after = scrape_relay();
    let counted = metrics_before
        .zip(metrics_after)
        .map(|(before, after)| RelayCounters::between(&before, &after));
    let RxTotals {
        dirs: [ab, ba],
        unknown_source,
        recv_errors,
        no_timestamp,
        tap_received,
    } = rx;
    Report {
        calls: c,
        secs,
        dirs: vec![
            Direction {
                name: "caller→callee",
                sent: tx.sent[0],
                rx: ab,
            },
            Direction {
                name: "callee→caller",
                sent: tx.sent[1],
                rx: ba,
            },
        ],
        tx,
        rx_unknown: unknown_source,
        rx_errors: recv_errors,
        rx_no_timestamp: no_timestamp,
        taps,
        tap_received,
        tap_copies_per_packet: taps as u64,
        counted,
        relay_name: relay.name,
        gw_cpu_secs: gw_cpu_after - gw_cpu_before,
        gen_cpu_secs: gen_cpu_after - gen_cpu_before,
        wall_secs,
    }
}

impl Report {
    fn sent(&self) -> u64 {
        self.dirs.iter().map(|d| d.sent).sum()
    }
    fn received(&self) -> u64 {
        self.dirs.iter().map(|d| d.rx.received).sum()
    }
    fn decrypt_failed(&self) -> u64 {
        self.dirs.iter().map(|d| d.rx.decrypt_failed).sum()
    }
    fn misrouted(&self) -> u64 {
        self.dirs.iter().map(|d| d.rx.misrouted).sum::<u64>() + self.rx_unknown
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
            "## media_load: {}, {} calls, {} s, {PPS} pps per stream each way, {SUITE} outside, {} inside",
            self.relay_name, self.calls, self.secs, callee_suite()
        );
        println!(
            "streams:            {} ({} per direction)",
            self.calls * 2,
            self.calls
        );
        for d in &self.dirs {
            let mut lat = d.rx.latencies_ns.clone();
            lat.sort_unstable();
            println!(
                "{:<14} sent {:>8}  received {:>8}  lost {:>6}  decrypt failed {}  misrouted {}  out of order {}",
                d.name,
                d.sent,
                d.rx.received,
                d.sent.saturating_sub(d.rx.received + d.rx.decrypt_failed),
                d.rx.decrypt_failed,
                d.rx.misrouted,
                d.rx.out_of_order,
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
            "packets:            sent {}  received {}  lost {} ({:.4} %)  failed to decrypt {}  misrouted {}",
            self.sent(),
            self.received(),
            self.lost(),
            self.loss() * 100.0,
            self.decrypt_failed(),
            self.misrouted()
        );
        println!(
            "latency (µs):       p50 {:.0}  p99 {:.0}  max {:.0}  (one way: send call → kernel receive timestamp at the generator; loopback both ways + the relay)",
            pct(&all, 0.50),
            pct(&all, 0.99),
            pct(&all, 1.0)
        );
        println!(
            "generator:          {} sendmmsg calls ({:.1} packets each), send errors {}, recv errors {}, from unknown ports {}, without timestamp {}, max sender lag {} µs",
            self.tx.batches,
            self.sent() as f64 / self.tx.batches.max(1) as f64,
            self.tx.send_errors,
            self.rx_errors,
            self.rx_unknown,
            self.rx_no_timestamp,
            self.tx.max_lag.as_micros()
        );
        if let Some(c) = &self.counted {
            println!(
                "relay relayed:      {:.0} packets ({:.0}/s over the {} s send phase); {:.1} packets per worker wake-up",
                c.relayed,
                c.relayed / self.secs as f64,
                self.secs,
                c.relayed / c.wakeups.max(1.0)
            );
        }
        // CPU shares are over the whole sampled window: send phase plus the drain. Per
        // packet: per packet the relay's own counter says it relayed (sbc-edge), and per
        // packet the generator received intact (the same measure for any relay).
        let per_relayed = self.cpu_per_million_relayed().map_or(String::new(), |v| {
            format!("{v:.2} CPU s per million packets relayed; ")
        });
        println!(
            "relay CPU:          {:.2} s ({:.1} % of one core); {per_relayed}{:.2} CPU s per million packets delivered",
            self.gw_cpu_secs,
            100.0 * self.gw_cpu_secs / self.wall_secs,
            self.gw_cpu_secs / (self.received() as f64 / 1e6).max(1e-9)
        );
        println!(
            "generator CPU:      {:.2} s ({:.1} % of one core)",
            self.gen_cpu_secs,
            100.0 * self.gen_cpu_secs / self.wall_secs
        );
        if self.taps > 0 {
            println!(
                "taps:               {} per call, {} in all; tap copies received {} (expected {}: every relayed RTP packet of a tapped call per tap), gateway tap drops {:.0}",
                self.taps,
                self.taps * self.calls,
                self.tap_received,
                self.received() * self.tap_copies_per_packet,
                self.counted.as_ref().map_or(0.0, |c| c.tap_dropped)
            );
        }
        let Some(counted) = &self.counted else {
            return;
        };
        let drops: Vec<String> = counted
            .dropped
            .iter()
            .map(|(k, v)| format!("{k}={v:.0}"))
            .collect();
        println!(
            "relay dropped:      {}",
            if drops.is_empty() {
                "none (no reason counter present)".to_string()
            } else {
                drops.join("  ")
            }
        );
    }

    /// The relay's CPU seconds per million packets it counted relayed (sbc-edge only).
    fn cpu_per_million_relayed(&self) -> Option<f64> {
        let c = self.counted.as_ref()?;
        Some(self.gw_cpu_secs / (c.relayed / 1e6).max(1e-9))
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

/// Lists the calls through the admin API and starts `per_call` plain-RTP taps (both legs)
/// on each, towards `dest`. Returns how many were started.
/// Starts the taps `specs` (request bodies) on every call; how many were made.
async fn start_taps(admin: SocketAddr, specs: &[String]) -> usize {
    let (status, body) = http(admin, "GET", "/v1/calls", Some(ADMIN_TOKEN), "").await;
    assert_eq!(status, 200, "GET /v1/calls: {body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<String> = list["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    let mut made = 0;
    for id in &ids {
        for spec in specs {
            let (status, body) = http(
                admin,
                "POST",
                &format!("/v1/calls/{id}/taps"),
                Some(ADMIN_TOKEN),
                spec,
            )
            .await;
            assert_eq!(status, 201, "POST tap: {body}");
            made += 1;
        }
    }
    made
}

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

// ---------------------------------------------------------------- the peer: rtpengine

/// The same load through rtpengine (Debian's `rtpengine-daemon`, userspace forwarding:
/// `--table=-1`, as many threads as sbc-edge has relay workers), so the two are measured
/// in one run on one machine. Calls are set up over rtpengine's ng control protocol
/// (bencode over UDP: `offer` / `answer` / `delete`) instead of SIP, with the same SDES
/// offers and answers; each side then gets the key rtpengine announced, exactly as with
/// sbc-edge. `SBC_RTPENGINE_BIN` overrides the binary (default `rtpengine`).
mod peer {
    use super::*;

    /// A bencode value, as much of it as ng replies use (integers and lists are skipped).
    #[derive(Debug)]
    enum B {
        Str(Vec<u8>),
        Other,
        Dict(Vec<(Vec<u8>, B)>),
    }

    fn encode(pairs: &[(&str, &str)], out: &mut Vec<u8>) {
        out.push(b'd');
        for (k, v) in pairs {
            for s in [k, v] {
                out.extend_from_slice(format!("{}:", s.len()).as_bytes());
                out.extend_from_slice(s.as_bytes());
            }
        }
        out.push(b'e');
    }

    fn decode(b: &[u8]) -> Option<(B, &[u8])> {
        match *b.first()? {
            b'i' => {
                let end = b.iter().position(|&c| c == b'e')?;
                Some((B::Other, &b[end + 1..]))
            }
            b'l' | b'd' => {
                let dict = b[0] == b'd';
                let mut rest = &b[1..];
                let mut pairs = Vec::new();
                while *rest.first()? != b'e' {
                    if dict {
                        let (k, r) = decode(rest)?;
                        let (v, r) = decode(r)?;
                        let B::Str(k) = k else { return None };
                        pairs.push((k, v));
                        rest = r;
                    } else {
                        rest = decode(rest)?.1;
                    }
                }
                let v = if dict { B::Dict(pairs) } else { B::Other };
                Some((v, &rest[1..]))
            }
            _ => {
                let colon = b.iter().position(|&c| c == b':')?;
                let n: usize = std::str::from_utf8(&b[..colon]).ok()?.parse().ok()?;
                let s = b.get(colon + 1..colon + 1 + n)?;
                Some((B::Str(s.to_vec()), &b[colon + 1 + n..]))
            }
        }
    }

    fn get<'a>(d: &'a B, key: &str) -> Option<&'a B> {
        match d {
            B::Dict(p) => p.iter().find(|(k, _)| k == key.as_bytes()).map(|(_, v)| v),
            _ => None,
        }
    }

    fn text(b: Option<&B>) -> String {
        match b {
            Some(B::Str(s)) => String::from_utf8_lossy(s).into_owned(),
            other => format!("{other:?}"),
        }
    }

    struct Ng {
        sock: UdpSocket,
        addr: SocketAddr,
        seq: u64,
    }

    impl Ng {
        /// One request, its reply's dictionary (`result` must be `ok`).
        fn call(&mut self, pairs: &[(&str, &str)]) -> B {
            self.seq += 1;
            let cookie = format!("c{}", self.seq);
            let mut msg = format!("{cookie} ").into_bytes();
            encode(pairs, &mut msg);
            for _ in 0..5 {
                self.sock.send_to(&msg, self.addr).unwrap();
                let mut buf = vec![0u8; 65536];
                let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                    continue;
                };
                let reply = &buf[..n];
                let Some(body) = reply.strip_prefix(format!("{cookie} ").as_bytes()) else {
                    continue;
                };
                let (d, _) = decode(body).expect("bencoded ng reply");
                assert_eq!(
                    text(get(&d, "result")),
                    "ok",
                    "rtpengine {:?}: {}",
                    pairs[0].1,
                    text(get(&d, "error-reason"))
                );
                return d;
            }
            panic!("rtpengine did not answer {:?}", pairs[0].1);
        }
    }

    struct Rtpengine {
        child: Child,
    }

    impl Drop for Rtpengine {
        fn drop(&mut self) {
            terminate(&mut self.child);
        }
    }

    pub fn run_rtpengine(calls: usize, secs: u64) -> Report {
        let bin = std::env::var("SBC_RTPENGINE_BIN").unwrap_or_else(|_| "rtpengine".into());
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let ng_port = {
            let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        };
        let log =
            std::env::temp_dir().join(format!("media-load-rtpengine-{}.log", std::process::id()));
        let child = Command::new(&bin)
            .args([
                "--config-file=none",
                "--foreground",
                "--log-stderr",
                "--log-level=4",
                "--interface=127.0.0.1",
                &format!("--listen-ng=127.0.0.1:{ng_port}"),
                &format!("--port-min={PORT_MIN}"),
                &format!("--port-max={PORT_MAX}"),
                "--table=-1",
                &format!("--num-threads={threads}"),
                "--timeout=60",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e} (apt-get install rtpengine-daemon)"));
        let engine = Rtpengine { child };
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut ng = Ng {
            sock,
            addr: SocketAddr::from(([127, 0, 0, 1], ng_port)),
            seq: 0,
        };
        // Up when it answers a ping.
        let deadline = Instant::now() + STARTUP;
        loop {
            ng.seq += 1;
            let mut msg = format!("p{} ", ng.seq).into_bytes();
            encode(&[("command", "ping")], &mut msg);
            ng.sock.send_to(&msg, ng.addr).unwrap();
            let mut buf = [0u8; 512];
            if ng.sock.recv_from(&mut buf).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "rtpengine did not answer ping; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        println!(
            "media_load: rtpengine pid {} ({bin}, userspace, {threads} threads), {calls} calls, {secs} s at {PPS} pps per stream each way",
            engine.child.id()
        );
        let socks = Arc::new(Sockets::from_env());
        let t_setup = Instant::now();
        let mut passthrough = 0;
        let set_up: Vec<Call> = (0..calls)
            .map(|i| {
                let (a, b) = socks.of_call(i, calls);
                let call_id = format!("media-load-{i}");
                let (offering, offer) = Offering::new(i, "rtpengine", socks.port(a));
                let d = ng.call(&[
                    ("command", "offer"),
                    ("call-id", &call_id),
                    ("from-tag", "atag"),
                    ("sdp", &offer),
                ]);
                let (answering, answer) =
                    offering.callee_answers(text(get(&d, "sdp")).as_bytes(), socks.port(b));
                let d = ng.call(&[
                    ("command", "answer"),
                    ("call-id", &call_id),
                    ("from-tag", "atag"),
                    ("to-tag", "btag"),
                    ("sdp", &answer),
                ]);
                let call = answering.caller_learns(
                    text(get(&d, "sdp")).as_bytes(),
                    call_id,
                    String::new(),
                );
                if call.k2 == call.k1 || call.k4 == call.k3 {
                    passthrough += 1;
                }
                call
            })
            .collect();
        println!(
            "media_load: {calls} calls set up over ng in {:.2} s; {} re-keyed by rtpengine (fresh keys per leg), {passthrough} passed through",
            t_setup.elapsed().as_secs_f64(),
            calls - passthrough
        );
        let observed = Observed {
            name: "rtpengine",
            pid: engine.child.id(),
            admin: None,
        };
        let report = run_media(&set_up, socks, None, 0, secs, observed, 0);
        for c in &set_up {
            ng.call(&[
                ("command", "delete"),
                ("call-id", &c.call_id),
                ("from-tag", "atag"),
            ]);
        }
        drop(engine);
        let _ = std::fs::remove_file(&log);
        report
    }
}
