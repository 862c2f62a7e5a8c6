//! Hot certificates and session resumption in the real binary, over real TLS on loopback:
//!
//! - SIGHUP swaps a listener's certificate and key under a running call: a new client
//!   sees the new certificate while the call set up before ends (BYE) on its old
//!   connection; the reload is counted and the expiry gauge follows the new certificate.
//! - The file poll refuses a certificate that does not match its key: the old certificate
//!   stays in use for new clients, one log line and one count say so (not one per poll);
//!   once the key is replaced too, the poll swaps both.
//! - A second connection with the same client session store resumes (the client sees a
//!   resumed handshake) and the gateway counts it as resumed.
//! - The poll swaps a route's CA bundle: calls to a target the old bundle could not verify
//!   get through once the file holds the right CA.
//! - The gateway resumes its TLS session when it reconnects to a route target.
//! - The flood guard bounds the handshakes one source can start per second: past
//!   `max_handshakes_per_second` its connections are closed before the handshake, counted
//!   by reason, and the next second it is served again.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use sbc_sip::message::{Method, SipMessage};
use sbc_testkit::process::{eventually, Signal, Spawned};
use sbc_testkit::*;

/// Long enough for a reload or a poll on a busy host; every wait is bounded by it.
const WITHIN: Duration = Duration::from_secs(15);

fn config(world: &World, callee: SocketAddr, sip: &str) -> String {
    format!(
        "[media]\nenabled = false\n[sip]\n{sip}\n{LOOPBACK_FLOOD_GUARD}\
[admin]\naddress = \"127.0.0.1:0\"\naudit_log = {:?}\n{}\n{}",
        world.dir.join("audit.log"),
        world.listener(""),
        world.tenant("acme", "source_cidrs = [\"127.0.0.0/8\"]", "", callee),
    )
}

fn is_method(method: Method) -> impl Fn(&SipMessage) -> bool {
    move |m| m.method() == Some(&method)
}

fn is_status(code: u16) -> impl Fn(&SipMessage) -> bool {
    move |m| m.status() == Some(code)
}

/// The leaf certificate a fresh client (no session to resume) is shown now.
async fn presented(sip: SocketAddr, world: &World) -> Vec<u8> {
    let (_, hs) = Peer::handshake(sip, client_config(&world.gw_ca.pem, None))
        .await
        .expect("TLS to the gateway");
    assert!(!hs.resumed, "a fresh client cannot resume");
    hs.leaf
}

async fn scrape(gw: &Spawned) -> String {
    sbc_testkit::http::request(gw.printed.admin, "GET", "/metrics", None)
        .await
        .text()
}

async fn metric(gw: &Spawned, name: &str, labels: &[&str]) -> f64 {
    metric_sample(&scrape(gw).await, name, labels).unwrap_or(0.0)
}

fn leaf_der(pem_file: &str) -> Vec<u8> {
    let pem = std::fs::read_to_string(pem_file).unwrap();
    Leaf {
        cert_pem: pem,
        key_pem: String::new(),
    }
    .leaf_der()
}

/// Seconds from now to 1 January of `year`.
fn secs_until(year: i32) -> f64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // Days from 1970-01-01 to 1 January of `year`, for years 1970..2100.
    let days: i64 = (1970..year)
        .map(|y| if y % 4 == 0 { 366 } else { 365 })
        .sum();
    days as f64 * 86_400.0 - now
}

#[tokio::test]
async fn sighup_swaps_the_certificate_for_new_clients_and_the_running_call_ends_on_its_old_connection(
) {
    let world = World::new("hot-cert-sighup");
    let callee = Callee::new(&world.callee_leaf).await;
    let file = world.dir.join("sbc-edge.toml");
    // Polling off: only the SIGHUP swaps.
    std::fs::write(&file, config(&world, callee.addr, "cert_poll_secs = 0")).unwrap();
    let gw = Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[]);
    let sip = gw.printed.sip;
    let original = leaf_der(&world.gw_cert);
    assert_eq!(presented(sip, &world).await, original);

    // A call over TLS, answered and acknowledged.
    let mut caller = Peer::connect(sip, &world.gw_ca.pem, None).await;
    caller
        .send(&invite("+15551234", "hot@platform", "z9hG4bKh1", "atag"))
        .await;
    let mut leg = callee.accept().await;
    let out_inv = leg.recv_where(is_method(Method::Invite)).await;
    leg.send(&answer(&out_inv, 200, "btag")).await;
    let ok = caller.recv_where(is_status(200)).await;
    let to = ok.header("to").unwrap().to_string();
    let from = "\"Alice\" <sips:alice@platform.example>;tag=atag";
    caller
        .send(&in_dialog(
            "ACK",
            "sips:sbc@127.0.0.1",
            "z9hG4bKh2",
            from,
            &to,
            "hot@platform",
            1,
        ))
        .await;
    leg.recv_where(is_method(Method::Ack)).await;

    // The certificate and key files are replaced (same CA, so clients trust the new one;
    // it expires in 2031, the original in 4096), then SIGHUP.
    let renewed = world.gw_ca.issue_until(&["localhost", "127.0.0.1"], 2031);
    std::fs::write(&world.gw_cert, &renewed.cert_pem).unwrap();
    std::fs::write(&world.gw_key, &renewed.key_pem).unwrap();
    let expiry_before = metric(
        &gw,
        "sbc_tls_certificate_expiry_seconds",
        &["listener=\"test\""],
    )
    .await;
    assert!(expiry_before > secs_until(4000), "{expiry_before}");
    gw.signal(Signal::SIGHUP);
    gw.logged(&["certificate_swapped", "listener=test"], WITHIN)
        .await;

    // A new client sees the new certificate.
    assert_eq!(presented(sip, &world).await, renewed.leaf_der());
    // The running call ends on its old connection: BYE relayed, 200 back.
    caller
        .send(&in_dialog(
            "BYE",
            "sips:sbc@127.0.0.1",
            "z9hG4bKh3",
            from,
            &to,
            "hot@platform",
            2,
        ))
        .await;
    let bye = leg.recv_where(is_method(Method::Bye)).await;
    leg.send(&answer(&bye, 200, "btag")).await;
    assert_eq!(
        caller.recv_where(is_status(200)).await.status(),
        Some(200),
        "the BYE of the call set up before the swap is answered"
    );

    // Counted once, and the expiry gauge follows the new certificate.
    assert_eq!(
        metric(&gw, "sbc_tls_reload_total", &["result=\"swapped\""]).await,
        1.0
    );
    assert_eq!(
        metric(&gw, "sbc_tls_reload_total", &["result=\"refused\""]).await,
        0.0
    );
    let expiry = metric(
        &gw,
        "sbc_tls_certificate_expiry_seconds",
        &["listener=\"test\""],
    )
    .await;
    let want = secs_until(2031);
    assert!((expiry - want).abs() < 120.0, "{expiry} vs {want}");
    // The reload line names what changed and until when.
    let lines = gw.lines_with(&["certificate_swapped"]);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("certificate and key swapped") && l.contains("2031-01-01")),
        "{lines:?}"
    );
    // No key material in the logs.
    let key_body: String = renewed.key_pem.lines().nth(1).unwrap().to_string();
    assert!(!gw.logs().contains(&key_body));
}

#[tokio::test]
async fn the_poll_refuses_a_key_that_does_not_match_keeps_the_old_certificate_then_swaps_a_good_pair(
) {
    let world = World::new("hot-cert-poll");
    let callee = Callee::new(&world.callee_leaf).await;
    let file = world.dir.join("sbc-edge.toml");
    std::fs::write(&file, config(&world, callee.addr, "cert_poll_secs = 1")).unwrap();
    let gw = Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[]);
    let sip = gw.printed.sip;
    let original = leaf_der(&world.gw_cert);

    // A new certificate whose key is not in the key file: refused, the old one stays.
    let renewed = world.gw_ca.issue_until(&["localhost", "127.0.0.1"], 2031);
    std::fs::write(&world.gw_cert, &renewed.cert_pem).unwrap();
    gw.logged(&["certificate_reload_refused"], WITHIN).await;
    let line = gw.lines_with(&["certificate_reload_refused"]).join("\n");
    assert!(line.contains("gw.pem"), "names the file: {line}");
    assert!(
        line.contains("does not match the private key"),
        "says why: {line}"
    );
    assert_eq!(presented(sip, &world).await, original);
    // Counted and logged once, not at every poll.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        metric(&gw, "sbc_tls_reload_total", &["result=\"refused\""]).await,
        1.0
    );
    assert_eq!(gw.lines_with(&["certificate_reload_refused"]).len(), 1);
    assert_eq!(presented(sip, &world).await, original);

    // The matching key arrives: the next poll swaps the pair.
    std::fs::write(&world.gw_key, &renewed.key_pem).unwrap();
    let want = renewed.leaf_der();
    assert!(
        eventually(WITHIN, async || presented(sip, &world).await == want).await,
        "new clients see the new certificate; logs:\n{}",
        gw.logs()
    );
    assert_eq!(
        metric(&gw, "sbc_tls_reload_total", &["result=\"swapped\""]).await,
        1.0
    );
}

#[tokio::test]
async fn a_second_connection_resumes_and_is_counted_resumed() {
    let world = World::new("tls-resume");
    let callee = Callee::new(&world.callee_leaf).await;
    let file = world.dir.join("sbc-edge.toml");
    std::fs::write(&file, config(&world, callee.addr, "")).unwrap();
    let gw = Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[]);
    let sip = gw.printed.sip;
    // One client session store for both connections (what a platform's stack keeps).
    let cfg = client_config(&world.gw_ca.pem, None);

    let (mut first, hs) = Peer::handshake(sip, cfg.clone()).await.expect("TLS");
    assert!(!hs.resumed);
    // One round trip: the client reads the session tickets sent after the handshake.
    first.send_text(&options_text("z9hG4bKr1")).await;
    assert!(first.recv().await.status().is_some());
    drop(first);

    let (mut second, hs) = Peer::handshake(sip, cfg.clone()).await.expect("TLS");
    assert!(hs.resumed, "the second handshake resumes");
    assert_eq!(hs.leaf, leaf_der(&world.gw_cert));
    second.send_text(&options_text("z9hG4bKr2")).await;
    assert!(second.recv().await.status().is_some());

    let text = scrape(&gw).await;
    let count = |kind: &str| {
        metric_sample(
            &text,
            "sbc_tls_handshakes_total",
            &["side=\"inbound\"", &format!("kind=\"{kind}\"")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("resumed"), 1.0, "{text}");
    assert_eq!(count("full"), 1.0, "{text}");
}

#[tokio::test]
async fn handshakes_past_the_per_source_rate_are_refused_before_the_handshake() {
    let world = World::new("tls-handshake-rate");
    let callee = Callee::new(&world.callee_leaf).await;
    let file = world.dir.join("sbc-edge.toml");
    let text = config(&world, callee.addr, "").replace(
        LOOPBACK_FLOOD_GUARD,
        "[flood_guard]\nmax_handshakes_per_second = 5\nmax_connections_per_source = 1000\n",
    );
    std::fs::write(&file, text).unwrap();
    let gw = Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[]);
    let sip = gw.printed.sip;
    let cfg = client_config(&world.gw_ca.pem, None);

    // A burst of 15 connections from 127.0.0.1, as fast as they go.
    let attempts = 15;
    let mut done = 0;
    let t0 = std::time::Instant::now();
    for _ in 0..attempts {
        if Peer::handshake(sip, cfg.clone()).await.is_ok() {
            done += 1;
        }
    }
    let burst = t0.elapsed();
    let refused = metric(
        &gw,
        "sbc_flood_refused_total",
        &["reason=\"handshakes_per_source\""],
    )
    .await;
    // 5 per second: exactly 5 if the burst fit in one second, one more window otherwise.
    let windows = burst.as_secs() + 1;
    assert!(
        done >= 5 && done <= 5 * windows,
        "{done} handshakes in {burst:?}"
    );
    assert_eq!(
        done as f64 + refused,
        f64::from(attempts),
        "refused {refused}"
    );
    let inbound = metric_sample(
        &scrape(&gw).await,
        "sbc_tls_handshakes_total",
        &["side=\"inbound\"", "kind=\"full\""],
    )
    .unwrap_or(0.0)
        + metric(
            &gw,
            "sbc_tls_handshakes_total",
            &["side=\"inbound\"", "kind=\"resumed\""],
        )
        .await;
    assert_eq!(
        inbound, done as f64,
        "refused connections never reach a handshake"
    );

    // The next second, the source is served again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(Peer::handshake(sip, cfg).await.is_ok());
}

/// One call from a new connection to the tenant's route; returns the final status the
/// caller got and, if the callee was reached, its leg (to hang up or drop).
async fn call(sip: SocketAddr, world: &World, callee: &Callee, n: u32) -> (u16, Option<Peer>) {
    let mut caller = Peer::connect(sip, &world.gw_ca.pem, None).await;
    let call_id = format!("ca-{n}@platform");
    caller
        .send(&invite(
            "+15551234",
            &call_id,
            &format!("z9hG4bKca{n}"),
            "atag",
        ))
        .await;
    let mut leg = None;
    if let Some(Ok(mut l)) = callee.try_accept(Duration::from_secs(2)).await {
        let inv = l.recv_where(is_method(Method::Invite)).await;
        l.send(&answer(&inv, 486, "btag")).await;
        leg = Some(l);
    }
    let fin = caller
        .recv_where(|m| m.status().is_some_and(|s| s >= 200))
        .await;
    (fin.status().unwrap_or(0), leg)
}

#[tokio::test]
async fn the_poll_swaps_a_route_ca_bundle_for_new_connections_to_the_target() {
    let world = World::new("hot-route-ca");
    let callee = Callee::new(&world.callee_leaf).await;
    // The route trusts the wrong CA: the gateway cannot verify the callee.
    let wrong = Ca::new("not the callee's CA");
    std::fs::write(&world.callee_ca_file, &wrong.pem).unwrap();
    let file = world.dir.join("sbc-edge.toml");
    std::fs::write(&file, config(&world, callee.addr, "cert_poll_secs = 1")).unwrap();
    let gw = Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[]);
    let sip = gw.printed.sip;
    let (status, _) = call(sip, &world, &callee, 1).await;
    assert_eq!(status, 503, "the target's certificate is not trusted yet");

    // The right CA bundle lands in the file: the poll swaps it, new calls get through.
    std::fs::write(&world.callee_ca_file, &world.callee_ca.pem).unwrap();
    gw.logged(&["certificate_swapped", "CA bundle swapped"], WITHIN)
        .await;
    let (status, leg) = call(sip, &world, &callee, 2).await;
    assert_eq!(status, 486, "relayed from the callee");
    assert!(leg.is_some());
    assert_eq!(
        metric(&gw, "sbc_tls_reload_total", &["result=\"swapped\""]).await,
        1.0
    );
}

#[tokio::test]
async fn the_gateway_resumes_its_session_when_it_reconnects_to_a_trunk() {
    let world = World::new("tls-resume-out");
    let callee = Callee::new(&world.callee_leaf).await;
    let file = world.dir.join("sbc-edge.toml");
    std::fs::write(&file, config(&world, callee.addr, "")).unwrap();
    let gw = Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[]);
    let sip = gw.printed.sip;

    // The first call opens the pooled connection (a full handshake); the callee then
    // closes it, so the next call reconnects, resuming the session.
    let (status, leg) = call(sip, &world, &callee, 1).await;
    assert_eq!(status, 486);
    drop(leg);
    let outbound = |kind: &'static str| {
        let gw = &gw;
        async move {
            metric(
                gw,
                "sbc_tls_handshakes_total",
                &["side=\"outbound\"", &format!("kind=\"{kind}\"")],
            )
            .await
        }
    };
    assert_eq!(outbound("full").await, 1.0);
    // The gateway notices the close before the next call (or that call reconnects).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, leg) = call(sip, &world, &callee, 2).await;
    assert_eq!(status, 486);
    assert!(leg.is_some());
    assert_eq!(outbound("resumed").await, 1.0, "{}", scrape(&gw).await);
    assert_eq!(outbound("full").await, 1.0);
}
