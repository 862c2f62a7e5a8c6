//! Hot standby wiring in the real binary (issue #16), on loopback without root:
//! `sbc-edge cluster takeover|status` against running gateways (exit codes and reasons),
//! the embedded default unchanged (no standby: 409), a cluster key file that is missing
//! or malformed stopping the start with its name, and `freebind` listeners and media
//! binding an address this host does not hold.
//!
//! The tests that need Redis (a standby reporting its peer; a live call taken over through
//! the CLI from a SIGKILLed peer, signaling only and with SRTP both ways) print why they
//! skip when `redis-server` is not installed (`.ci/run`'s cluster stage installs it). The
//! two nodes of a pair share loopback here: SIP on the same port of 127.0.0.1 and
//! 127.0.0.2 (one advertised `sbc.test:port`, as on a VIP), media on 127.0.0.1. The
//! failover between network namespaces with keepalived is `tests/cluster_failover.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use sbc_testkit::process::{run, Spawned};
use sbc_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_sbc-edge");
const OPS: &str = "ops-standby-6d5c4b3a29180f7e";
const VIEW: &str = "view-standby-1a2b3c4d5e6f7089";
/// A bound on one CLI run (its own request timeout is 15 s).
const CLI_WITHIN: Duration = Duration::from_secs(30);
/// TEST-NET-3 (RFC 5737): never an address of a test host.
const ABSENT: &str = "203.0.113.77";

fn admin_section(world: &World) -> String {
    format!(
        "[admin]\naddress = \"127.0.0.1:0\"\naudit_log = {:?}\n\
[[admin.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n\
[[admin.tokens]]\nid = \"view\"\nsha256 = \"{}\"\nrole = \"viewer\"\ntenant = \"demo\"\n",
        world.dir.join("audit.log"),
        sbc_admin::token_sha256_hex(OPS),
        sbc_admin::token_sha256_hex(VIEW),
    )
}

fn tenant(world: &World) -> String {
    world.tenant(
        "demo",
        "source_cidrs = [\"127.0.0.0/8\"]",
        "",
        "127.0.0.1:9".parse().unwrap(),
    )
}

/// A gateway config: media off unless `media` says otherwise, `extra` appended.
fn config(world: &World, listener: &str, media: &str, extra: &str) -> PathBuf {
    let media = if media.is_empty() {
        "[media]\nenabled = false\n"
    } else {
        media
    };
    let text = format!(
        "{media}{}{listener}{}{extra}",
        admin_section(world),
        tenant(world)
    );
    let file = world.dir.join(format!("sbc-edge-{}.toml", rand_tag()));
    std::fs::write(&file, text).unwrap();
    file
}

fn rand_tag() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

fn token_file(world: &World, token: &str) -> PathBuf {
    let p = world.dir.join(format!("token-{}", rand_tag()));
    std::fs::write(&p, format!("{token}\n")).unwrap();
    p
}

/// `sbc-edge cluster ARGS --admin http://ADMIN [--token-file F]`: (exit code, stdout,
/// stderr), off the runtime's threads.
async fn cluster_cli(
    admin: std::net::SocketAddr,
    token: Option<&Path>,
    args: &[&str],
) -> (i32, String, String) {
    let mut all: Vec<String> = vec!["cluster".into()];
    all.extend(args.iter().map(|a| a.to_string()));
    all.push("--admin".into());
    all.push(format!("http://{admin}"));
    if let Some(t) = token {
        all.push("--token-file".into());
        all.push(t.display().to_string());
    }
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&dyn AsRef<std::ffi::OsStr>> = all
            .iter()
            .map(|a| a as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        run(BIN, &refs, CLI_WITHIN)
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn cluster_cli_on_a_gateway_without_standby_exits_non_zero_saying_why() {
    let world = World::new("standby-cli-none");
    let file = config(&world, &world.listener(""), "", "");
    let gw = Spawned::start(BIN, &file, &[]);
    let admin = gw.printed.admin;
    let ops = token_file(&world, OPS);
    let view = token_file(&world, VIEW);

    for cmd in ["takeover", "status"] {
        let (code, out, err) = cluster_cli(admin, Some(&ops), &[cmd]).await;
        assert_eq!(code, 1, "{cmd}: {out}{err}");
        assert!(
            err.contains("409") && err.contains("not a standby"),
            "{cmd}: {err}"
        );
        let (code, _, err) = cluster_cli(admin, Some(&view), &[cmd]).await;
        assert_eq!(code, 1, "{cmd} as a viewer");
        assert!(err.contains("403") && err.contains("operator"), "{err}");
        let (code, _, err) = cluster_cli(admin, None, &[cmd]).await;
        assert_eq!(code, 1);
        assert!(err.contains("no admin token"), "{err}");
    }
    // A gateway that is not there: non-zero, saying so.
    drop(gw);
    let (code, _, err) = cluster_cli(admin, Some(&ops), &["takeover"]).await;
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
}

#[tokio::test]
async fn the_embedded_default_still_starts_without_a_standby() {
    let dir = temp_dir("standby-demo").join("demo");
    let gw = Spawned::with_args(BIN, &[&"--demo-dir", &dir, &"--demo-any-port"], &[]);
    let token = dir.join("operator.token");
    let (code, _, err) = cluster_cli(gw.printed.admin, Some(&token), &["status"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a standby"), "{err}");
    assert!(
        !gw.logs().contains("standby_started"),
        "no standby without [cluster.standby]"
    );
}

/// A `[cluster]` with a standby whose key file is `key_file`; Redis is never reached
/// (port 1), which must not matter for the checks of the key file.
fn standby_config(world: &World, key_file: &Path) -> PathBuf {
    config(
        world,
        &world.listener(""),
        "",
        &format!(
            "[cluster]\nnode_id = \"edge-b\"\nredis = \"127.0.0.1:1\"\n\
[cluster.standby]\npeer = \"edge-a\"\nkey_file = {key_file:?}\n"
        ),
    )
}

#[tokio::test]
async fn a_missing_or_malformed_key_file_stops_the_start_naming_it() {
    let world = World::new("standby-bad-key");
    let missing = world.dir.join("no-such-cluster.key");
    let short = world.dir.join("short-cluster.key");
    std::fs::write(&short, "00112233\n").unwrap();
    let not_hex = world.dir.join("not-hex-cluster.key");
    std::fs::write(&not_hex, format!("{}\n", "zz".repeat(32))).unwrap();
    for key in [&missing, &short, &not_hex] {
        let file = standby_config(&world, key);
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            run(BIN, &[&"--config", &file], Duration::from_secs(30))
        })
        .await
        .unwrap();
        assert_ne!(code, 0, "{}: started:\n{out}", key.display());
        let name = key.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            err.contains(&name),
            "{}: the error names the file:\n{err}",
            key.display()
        );
        assert!(
            !out.contains("admin plane: http"),
            "stopped before serving:\n{out}"
        );
    }
}

/// A good key file and a Redis that does not answer: the gateway starts anyway (the
/// standby never blocks the start on Redis), reports its peer, and a takeover exits
/// non-zero saying the store did not answer.
#[tokio::test]
async fn a_standby_starts_without_redis_and_its_takeover_says_why_it_failed() {
    let world = World::new("standby-no-redis");
    let key = world.dir.join("cluster.key");
    std::fs::write(&key, format!("{}\n", "0f".repeat(32))).unwrap();
    let gw = Spawned::start(BIN, &standby_config(&world, &key), &[]);
    gw.logged(&["standby_started"], Duration::from_secs(5))
        .await;
    let ops = token_file(&world, OPS);
    let (code, out, err) = cluster_cli(gw.printed.admin, Some(&ops), &["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("peer:          edge-a") && out.contains("warm calls:    0"),
        "{out}"
    );
    let (code, _, err) = cluster_cli(gw.printed.admin, Some(&ops), &["takeover"]).await;
    assert_eq!(code, 1);
    assert!(
        err.contains("503") && err.contains("cluster store"),
        "{err}"
    );
}

#[tokio::test]
async fn freebind_listener_and_media_bind_an_address_this_host_does_not_hold() {
    let world = World::new("standby-freebind");
    let listener = |freebind: bool| {
        world
            .listener(&format!("freebind = {freebind}\n"))
            .replace("127.0.0.1:0", &format!("{ABSENT}:0"))
    };
    let media = |freebind: bool| {
        let ports = sbc_testkit::ports::free_udp_range(20);
        format!(
            "[media]\naddress = \"{ABSENT}\"\nfreebind = {freebind}\nport_min = {}\nport_max = {}\n",
            ports.0, ports.1
        )
    };
    let file = config(&world, &listener(true), &media(true), "");
    let gw = Spawned::start(BIN, &file, &[]);
    assert_eq!(gw.printed.sip.ip().to_string(), ABSENT);
    let (status, _) = http(gw.printed.admin, "GET", "/healthz", None, "").await;
    assert_eq!(status, 200);
    drop(gw);

    // Without freebind the same address does not bind: the start fails naming it (unless
    // the host binds any address, net.ipv4.ip_nonlocal_bind = 1).
    let nonlocal = std::fs::read_to_string("/proc/sys/net/ipv4/ip_nonlocal_bind")
        .is_ok_and(|v| v.trim() == "1");
    if nonlocal {
        eprintln!("net.ipv4.ip_nonlocal_bind = 1: the plain bind comparison is skipped");
        return;
    }
    for (l, m) in [(false, true), (true, false)] {
        let file = config(&world, &listener(l), &media(m), "");
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            run(BIN, &[&"--config", &file], Duration::from_secs(30))
        })
        .await
        .unwrap();
        assert_ne!(code, 0, "listener freebind {l}, media freebind {m}:\n{out}");
        assert!(
            err.contains(ABSENT) || err.contains("bind"),
            "listener freebind {l}, media freebind {m}: {err}"
        );
    }
}

// ---------- with Redis: a takeover of a live call through the CLI ----------

fn redis_missing() -> bool {
    match sbc_testkit::redis::missing() {
        Some(why) => {
            eprintln!("skipping the standby takeover test: {why}");
            true
        }
        None => false,
    }
}

/// A pair on loopback with its Redis, cluster key and route target: SIP of A on
/// 127.0.0.1 and of B on 127.0.0.2, on the same port (one advertised `sbc.test:port`, as
/// on a VIP), each `[cluster.standby]` for the other, both with `media`.
struct Pair {
    world: World,
    redis: sbc_testkit::redis::RedisProcess,
    key: PathBuf,
    callee: Callee,
    media: String,
    sip_a: std::net::SocketAddr,
    sip_b: std::net::SocketAddr,
}

impl Pair {
    async fn new(tag: &str, media: impl FnOnce() -> String) -> Pair {
        let world = World::new(tag);
        let redis = sbc_testkit::redis::RedisProcess::server(&world.dir);
        let key = world.dir.join("cluster.key");
        std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
        let callee = Callee::new(&world.callee_leaf).await;
        let port = sbc_testkit::redis::free_port();
        Pair {
            sip_a: format!("127.0.0.1:{port}").parse().unwrap(),
            sip_b: format!("127.0.0.2:{port}").parse().unwrap(),
            world,
            redis,
            key,
            callee,
            media: media(),
        }
    }

    /// Both nodes, started and standing by.
    async fn start(&self) -> (Spawned, Spawned) {
        let a = Spawned::start(BIN, &node_config(self, "edge-a", "edge-b", self.sip_a), &[]);
        let b = Spawned::start(BIN, &node_config(self, "edge-b", "edge-a", self.sip_b), &[]);
        for node in [&a, &b] {
            node.logged(&["standby_started"], Duration::from_secs(5))
                .await;
        }
        (a, b)
    }

    /// SIGKILLs A and waits for it to be gone: on one host its sockets are freed only
    /// once it has exited (between hosts the VIP move takes longer than that).
    async fn kill_a(a: &mut Spawned) {
        a.signal(process::Signal::SIGKILL);
        assert!(a.exited(Duration::from_secs(10)).await.is_some(), "A exits");
    }

    /// Waits until B holds one call of A warm.
    async fn warm_on_b(b: &Spawned) {
        let warm = process::eventually(Duration::from_secs(10), async || {
            standby_status(b.printed.admin).await["warm_calls"] == 1
        })
        .await;
        assert!(
            warm,
            "B holds A's call warm: {}",
            standby_status(b.printed.admin).await
        );
    }
}

fn node_config(pair: &Pair, node: &str, peer: &str, sip: std::net::SocketAddr) -> PathBuf {
    let Pair {
        world,
        redis,
        key,
        callee,
        media,
        ..
    } = pair;
    let (redis, callee) = (redis.addr(), callee.addr);
    let listener = world
        .listener("advertised_host = \"sbc.test\"\nfreebind = true\n")
        .replace("127.0.0.1:0", &sip.to_string());
    let tenant = world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", callee);
    let text = format!(
        "{media}{LOOPBACK_FLOOD_GUARD}{}{listener}{tenant}\
[cluster]\nnode_id = \"{node}\"\nredis = \"{redis}\"\nheartbeat_ms = 200\nkey_prefix = \"hs\"\n\
[cluster.standby]\npeer = \"{peer}\"\nkey_file = {key:?}\n",
        admin_section(world).replace("audit.log", &format!("audit-{node}.log")),
    );
    let file = world.dir.join(format!("{node}.toml"));
    std::fs::write(&file, text).unwrap();
    file
}

fn is_status(code: u16) -> impl Fn(&sbc_sip::message::SipMessage) -> bool {
    move |m| m.status() == Some(code)
}

fn is_method(method: sbc_sip::message::Method) -> impl Fn(&sbc_sip::message::SipMessage) -> bool {
    move |m| m.method() == Some(&method)
}

/// The standby's status as JSON.
async fn standby_status(admin: std::net::SocketAddr) -> serde_json::Value {
    let (status, body) = http(admin, "GET", "/v1/cluster/standby", Some(OPS), "").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Node A serves a call; node B (standby for A) holds it warm; A is SIGKILLed; `sbc-edge
/// cluster takeover` on B claims and installs it; the caller reconnects to B's listener
/// and a re-INVITE and a BYE reach the callee through B with CSeq continuing above A's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_takes_over_a_live_call_from_a_killed_peer() {
    use sbc_sip::message::Method;
    if redis_missing() {
        return;
    }
    let pair = Pair::new("standby-takeover", || "[media]\nenabled = false\n".into()).await;
    let (world, callee, sip_a, sip_b) = (&pair.world, &pair.callee, pair.sip_a, pair.sip_b);
    let (mut a, b) = pair.start().await;

    // The call through A, up to 200/ACK.
    let call_id = "takeover-1@platform";
    let from = "\"Alice\" <sips:alice@platform.example>;tag=atag";
    let mut caller = Peer::connect(sip_a, &world.gw_ca.pem, None).await;
    caller
        .send(&invite("+15551234", call_id, "z9hG4bKt1", "atag"))
        .await;
    let mut callee_a = callee.accept().await;
    let out_inv = callee_a.recv_where(is_method(Method::Invite)).await;
    callee_a.send(&answer(&out_inv, 200, "btag")).await;
    let ok = caller.recv_where(is_status(200)).await;
    let to = ok.header("to").unwrap().to_string();
    caller
        .send(&in_dialog(
            "ACK",
            "sips:sbc@sbc.test",
            "z9hG4bKt2",
            from,
            &to,
            call_id,
            1,
        ))
        .await;
    callee_a.recv_where(is_method(Method::Ack)).await;
    let a_cseq = out_inv.cseq().unwrap().0;

    Pair::warm_on_b(&b).await;
    let ops = token_file(world, OPS);
    let (code, out, err) = cluster_cli(b.printed.admin, Some(&ops), &["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("peer:          edge-a") && out.contains("warm calls:    1"),
        "{out}"
    );

    // A dies; B takes over through the CLI.
    Pair::kill_a(&mut a).await;
    drop(callee_a);
    let (code, out, err) = cluster_cli(b.printed.admin, Some(&ops), &["takeover"]).await;
    assert_eq!(code, 0, "{out}{err}\n{}", b.logs());
    assert!(out.contains("1 of 1 claimed calls installed"), "{out}");
    eprintln!("B: {}", out.trim());
    let v = standby_status(b.printed.admin).await;
    assert_eq!(v["last_takeover"]["installed"], 1, "{v}");

    // The caller reconnects (to the VIP: B's listener) and re-INVITEs; B sends it to the
    // callee on a new connection with CSeq continuing above A's.
    let mut caller = Peer::connect(sip_b, &world.gw_ca.pem, None).await;
    let mut reinv = in_dialog(
        "INVITE",
        "sips:sbc@sbc.test",
        "z9hG4bKt3",
        from,
        &to,
        call_id,
        2,
    );
    reinv.push_header("Content-Type", "application/sdp");
    reinv.set_body(SDP.replace('\n', "\r\n").into_bytes());
    caller.send(&reinv).await;
    let mut callee_b = callee.accept().await;
    let out_reinv = callee_b.recv_where(is_method(Method::Invite)).await;
    let re_cseq = out_reinv.cseq().unwrap().0;
    assert!(
        re_cseq > a_cseq,
        "CSeq {re_cseq} continues above A's {a_cseq}"
    );
    assert_eq!(
        out_reinv.call_id(),
        out_inv.call_id(),
        "the same callee dialog"
    );
    callee_b.send(&answer(&out_reinv, 200, "btag")).await;
    let ok = caller.recv_where(is_status(200)).await;
    assert_eq!(ok.cseq().unwrap(), (2, Method::Invite));
    caller
        .send(&in_dialog(
            "ACK",
            "sips:sbc@sbc.test",
            "z9hG4bKt4",
            from,
            &to,
            call_id,
            2,
        ))
        .await;
    callee_b.recv_where(is_method(Method::Ack)).await;

    caller
        .send(&in_dialog(
            "BYE",
            "sips:sbc@sbc.test",
            "z9hG4bKt5",
            from,
            &to,
            call_id,
            3,
        ))
        .await;
    let out_bye = callee_b.recv_where(is_method(Method::Bye)).await;
    assert!(out_bye.cseq().unwrap().0 > re_cseq);
    callee_b.send(&answer(&out_bye, 200, "btag")).await;
    let ok = caller.recv_where(is_status(200)).await;
    assert_eq!(ok.cseq().unwrap(), (3, Method::Bye));

    // Idempotent: a second takeover claims nothing. Audited on B.
    let (code, out, _) = cluster_cli(b.printed.admin, Some(&ops), &["takeover"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("nothing to claim"), "{out}");
    let audit = std::fs::read_to_string(world.dir.join("audit-edge-b.log")).unwrap();
    assert!(audit.contains("/v1/cluster/takeover"), "{audit}");
    assert!(audit.contains("taken_over"), "{audit}");
}

/// SRTP both ways between two loopback peers through the gateway: what each side sends,
/// encrypted with its own key, and the contexts that check what it gets.
struct Media {
    caller: std::net::UdpSocket,
    callee: std::net::UdpSocket,
    /// The gateway's caller-facing and callee-facing RTP ports.
    to_gw_from_caller: u16,
    to_gw_from_callee: u16,
    caller_tx: sbc_media::srtp::SrtpContext,
    caller_rx: sbc_media::srtp::SrtpContext,
    callee_tx: sbc_media::srtp::SrtpContext,
    callee_rx: sbc_media::srtp::SrtpContext,
    seq: u16,
}

/// Packets that arrived, and those that did not authenticate, each way.
#[derive(Debug, Default, PartialEq, Eq)]
struct Counts {
    to_callee: u32,
    to_caller: u32,
    auth_failures: u32,
}

impl Media {
    /// `n` packets each way, 20 ms apart (50 packets/s); what arrived.
    fn exchange(&mut self, n: u16) -> Counts {
        use sbc_testkit::media::{recv_packet, rtp, send_srtp};
        let mut c = Counts::default();
        for s in [&self.caller, &self.callee] {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
        }
        for _ in 0..n {
            let seq = self.seq;
            self.seq = self.seq.wrapping_add(1);
            let up = rtp(seq, 0x1111_0001, &[0xa5; 160]);
            send_srtp(
                &self.caller,
                &mut self.caller_tx,
                &up,
                self.to_gw_from_caller,
            );
            let down = rtp(seq, 0x2222_0002, &[0x5a; 160]);
            send_srtp(
                &self.callee,
                &mut self.callee_tx,
                &down,
                self.to_gw_from_callee,
            );
            for (sock, ctx, got) in [
                (&self.callee, &mut self.callee_rx, &mut c.to_callee),
                (&self.caller, &mut self.caller_rx, &mut c.to_caller),
            ] {
                if let Some(mut p) = recv_packet(sock) {
                    match ctx.unprotect_rtp(&mut p) {
                        Ok(_) => *got += 1,
                        Err(_) => c.auth_failures += 1,
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }
}

const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";

/// The media variant of the takeover above: an SRTP call through node A (media relayed
/// on 127.0.0.1, the VIP of this loopback pair), A SIGKILLed mid-call, `sbc-edge cluster
/// takeover` on B, and the same peers keep sending with the same keys: B relays both
/// ways on A's ports with no authentication failure at either end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_takes_over_a_live_srtp_call_and_media_resumes() {
    use sbc_sip::message::Method;
    use sbc_testkit::media::{ctx, parse_sdp, peer, with_sdp, Sdp};
    if redis_missing() {
        return;
    }
    let pair = Pair::new("standby-media", || {
        let (lo, hi) = sbc_testkit::ports::free_udp_range(40);
        format!(
            "[media]\naddress = \"127.0.0.1\"\nfreebind = true\nport_min = {lo}\nport_max = {hi}\n"
        )
    })
    .await;
    let (world, callee, sip_a) = (&pair.world, &pair.callee, pair.sip_a);
    let (mut a, b) = pair.start().await;

    // The call through A with SDES keys of our own on both ends.
    let (caller_sock, callee_sock) = (peer(), peer());
    let caller_key: Vec<u8> = (1..=30).collect();
    let callee_key: Vec<u8> = (101..=130).collect();
    let call_id = "takeover-media@platform";
    let from = "\"Alice\" <sips:alice@platform.example>;tag=atag";
    let offer = Sdp::audio(caller_sock.local_addr().unwrap().port())
        .crypto(1, SUITE, &caller_key)
        .build();
    let mut caller = Peer::connect(sip_a, &world.gw_ca.pem, None).await;
    caller
        .send(&with_sdp(
            invite("+15551234", call_id, "z9hG4bKm1", "atag"),
            &offer,
        ))
        .await;
    let mut callee_a = callee.accept().await;
    let out_inv = callee_a.recv_where(is_method(Method::Invite)).await;
    let gw_offer = parse_sdp(out_inv.body());
    let (tag, gw_to_callee_key) = gw_offer.crypto_for(SUITE);
    let answer_sdp = Sdp::audio(callee_sock.local_addr().unwrap().port())
        .crypto(tag, SUITE, &callee_key)
        .build();
    callee_a
        .send(&with_sdp(answer(&out_inv, 200, "btag"), &answer_sdp))
        .await;
    let ok = caller.recv_where(is_status(200)).await;
    let gw_answer = parse_sdp(ok.body());
    let to = ok.header("to").unwrap().to_string();
    caller
        .send(&in_dialog(
            "ACK",
            "sips:sbc@sbc.test",
            "z9hG4bKm2",
            from,
            &to,
            call_id,
            1,
        ))
        .await;
    let mut media = Media {
        caller: caller_sock,
        callee: callee_sock,
        to_gw_from_caller: gw_answer.port,
        to_gw_from_callee: gw_offer.port,
        caller_tx: ctx(SUITE, &caller_key),
        caller_rx: ctx(SUITE, &gw_answer.crypto_for(SUITE).1),
        callee_tx: ctx(SUITE, &callee_key),
        callee_rx: ctx(SUITE, &gw_to_callee_key),
        seq: 1000,
    };
    let before = tokio::task::spawn_blocking(move || {
        let c = media.exchange(25);
        (media, c)
    })
    .await
    .unwrap();
    let (mut media, through_a) = before;
    assert_eq!(through_a.auth_failures, 0, "{through_a:?}");
    assert!(
        through_a.to_callee >= 20 && through_a.to_caller >= 20,
        "media through A: {through_a:?}"
    );
    Pair::warm_on_b(&b).await;

    // A dies mid-call; B takes over; the peers go on as if nothing happened.
    Pair::kill_a(&mut a).await;
    drop(callee_a);
    let ops = token_file(world, OPS);
    let (code, out, err) = cluster_cli(b.printed.admin, Some(&ops), &["takeover"]).await;
    assert_eq!(code, 0, "{out}{err}\n{}", b.logs());
    assert!(
        out.contains("1 of 1 claimed calls installed"),
        "{out}\n{}",
        b.logs()
    );
    let (media_after, through_b) = tokio::task::spawn_blocking(move || {
        let c = media.exchange(50);
        (media, c)
    })
    .await
    .unwrap();
    eprintln!(
        "B: {} / through A {through_a:?} / through B {through_b:?}",
        out.trim()
    );
    assert_eq!(through_b.auth_failures, 0, "{through_b:?}");
    assert!(
        through_b.to_callee >= 45 && through_b.to_caller >= 45,
        "media through B: {through_b:?}\n{}",
        b.logs()
    );
    drop(media_after);
}
