//! Slow and noisy peers over real TLS on loopback: a message dribbled byte by byte is cut
//! at `sip.message_timeout_ms`, one source may hold at most
//! `sip.max_partial_connections_per_source` incomplete messages (and the cap is released
//! when they close), and the log lines a peer can trigger at will are aggregated per
//! source and interval. The metrics recorder is process-global: tests here take turns.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use sbc_testkit::logs::Capture;
use sbc_testkit::*;

/// One test at a time: they read the same process-global counters.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn metrics() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("recorder installs once");
        snapshotter
    })
}

/// `sbc_sip_connections_closed_total{reason}` now.
fn closed(reason: &str) -> u64 {
    metrics()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(ck, _, _, _)| {
            let key = ck.key();
            key.name() == "sbc_sip_connections_closed_total"
                && key
                    .labels()
                    .any(|l| l.key() == "reason" && l.value() == reason)
        })
        .map(|(_, _, _, v)| match v {
            DebugValue::Counter(c) => c,
            _ => 0,
        })
        .sum()
}

/// A gateway for one tenant recognised by loopback source, with `sip` lines in `[sip]`.
async fn gateway(tag: &str, sip: &str) -> (World, sbc_sip::server::ServerHandle) {
    let before = format!("[sip]\n{sip}\n{LOOPBACK_FLOOD_GUARD}");
    let (world, gw, _callee) = loopback_gateway(tag, "demo", "+1", &before, "").await;
    (world, gw)
}

/// Wait (bounded) until `f` holds.
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn options_answered(peer: &mut Peer, branch: &str) {
    peer.send_text(&options_text(branch)).await;
    let r = peer.recv().await;
    assert_eq!(r.status(), Some(200), "OPTIONS answered");
}

#[tokio::test]
async fn a_dribbled_message_is_cut_at_the_message_timeout_and_other_peers_are_served() {
    let _turn = SERIAL.lock().await;
    let before = closed("message_timeout");
    let (world, gw) = gateway("dribble", "message_timeout_ms = 1000").await;
    let addr = gw.sip_addrs[0];

    let mut slow = Peer::connect(addr, &world.gw_ca.pem, None).await;
    let bytes = invite("+1555", "slow-1@platform", "z9hG4bKslow1", "atag").to_bytes();
    // One byte every 100 ms: a valid INVITE that would take tens of seconds to arrive,
    // each byte well inside the idle timeout.
    let dribbler = tokio::spawn(async move {
        let start = Instant::now();
        for (sent, byte) in bytes.iter().enumerate() {
            if slow.closed_within(Duration::from_millis(100)).await || start.elapsed() > WAIT {
                return (start.elapsed(), sent);
            }
            slow.send_raw(&[*byte]).await;
        }
        panic!("the whole INVITE was dribbled in without the connection being closed");
    });

    // Meanwhile a normal peer from the same source is served.
    let mut normal = Peer::connect(addr, &world.gw_ca.pem, None).await;
    options_answered(&mut normal, "z9hG4bKn1").await;

    let (closed_after, sent) = dribbler.await.expect("dribbler");
    // The first byte goes out after 100 ms; the deadline runs from it.
    assert!(
        closed_after >= Duration::from_millis(1000) && closed_after < Duration::from_secs(3),
        "closed {closed_after:?} after the start, {sent} bytes in"
    );
    assert_eq!(
        closed("message_timeout") - before,
        1,
        "the close is counted"
    );

    // The normal peer is still served after the slow one is gone.
    options_answered(&mut normal, "z9hG4bKn2").await;
    assert_eq!(gw.partial_connections(), 0);
    gw.shutdown().await;
}

#[tokio::test]
async fn one_source_holds_at_most_its_cap_of_incomplete_messages_and_gets_it_back() {
    let _turn = SERIAL.lock().await;
    let before = closed("slow_source");
    let (world, gw) = gateway("slowcap", "max_partial_connections_per_source = 3").await;
    let addr = gw.sip_addrs[0];

    // Five connections each start a message and stop there.
    let mut peers = Vec::new();
    for i in 0..5 {
        let mut p = Peer::connect(addr, &world.gw_ca.pem, None).await;
        p.send_raw(b"OPT").await;
        if i < 3 {
            until("the slot to be taken", || gw.partial_connections() == i + 1).await;
        }
        peers.push(p);
    }
    for (i, p) in peers.iter_mut().enumerate().skip(3) {
        assert!(
            p.closed_within(Duration::from_secs(2)).await,
            "connection {i} past the cap is closed at once"
        );
    }
    for (i, p) in peers.iter_mut().enumerate().take(3) {
        assert!(
            !p.closed_within(Duration::from_millis(200)).await,
            "connection {i} within the cap stays"
        );
    }
    assert_eq!(gw.partial_connections(), 3);
    assert_eq!(closed("slow_source") - before, 2, "both closes counted");

    // Closing them releases the cap: nothing is held, and a new slow connection is let in.
    drop(peers);
    until("the slots to be released", || gw.partial_connections() == 0).await;
    let mut again = Peer::connect(addr, &world.gw_ca.pem, None).await;
    again.send_raw(b"OPT").await;
    until("the new slot", || gw.partial_connections() == 1).await;
    assert!(
        !again.closed_within(Duration::from_millis(300)).await,
        "a slow connection is accepted again once the others are gone"
    );
    // Completing the message frees the slot too.
    let whole = sip(&options_text("z9hG4bKc1")).to_bytes();
    again.send_raw(&whole[3..]).await;
    assert_eq!(again.recv().await.status(), Some(200));
    assert_eq!(gw.partial_connections(), 0);
    assert_eq!(closed("slow_source") - before, 2);
    gw.shutdown().await;
}

/// The lines of `logs` with `event="name"`, and the sum of what they report: 1 for a line
/// logged at once, `count` for a summary line.
fn lines_of<'a>(logs: &'a str, event: &str) -> (Vec<&'a str>, u64) {
    let needle = format!("event=\"{event}\"");
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains(&needle)).collect();
    let reported = lines
        .iter()
        .map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("count="))
                .map_or(1, |n| n.parse::<u64>().expect("count is a number"))
        })
        .sum();
    (lines, reported)
}

#[tokio::test]
async fn connection_and_malformed_request_logs_are_aggregated_per_source() {
    let _turn = SERIAL.lock().await;
    // This test's runtime is single-threaded: every gateway task logs on this thread.
    let capture = Capture::default();
    let subscriber = capture.subscriber(tracing::Level::INFO);
    let _logs = tracing::subscriber::set_default(subscriber);

    let (world, gw) = gateway("logagg", "").await;
    let addr = gw.sip_addrs[0];
    // No Call-ID: answered 400 by the reader, logged as malformed_request.
    let bad = options_text("z9hG4bKb1").replace("Call-ID: ping-z9hG4bKb1@platform\n", "");
    let bad = bad.replace('\n', "\r\n") + "Content-Length: 0\r\n\r\n";
    for _ in 0..100 {
        let mut p = Peer::connect(addr, &world.gw_ca.pem, None).await;
        p.send_raw(bad.as_bytes()).await;
        assert!(p.recv_raw().await.starts_with("SIP/2.0 400 "));
    }
    // Shutting down writes the summaries of the interval still open.
    gw.shutdown().await;

    let logs = capture.text();
    for event in ["peer_recognised", "malformed_request"] {
        let (lines, reported) = lines_of(&logs, event);
        assert!(
            (2..=4).contains(&lines.len()),
            "{event}: a line at once and a summary per interval, not one per occurrence: {} lines\n{}",
            lines.len(),
            lines.join("\n")
        );
        assert_eq!(
            reported,
            100,
            "{event}: every occurrence is reported\n{}",
            lines.join("\n")
        );
        let summaries: HashMap<&str, u64> = lines
            .iter()
            .filter_map(|l| {
                let total = l
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("total="))?;
                Some((*l, total.parse().ok()?))
            })
            .collect();
        assert!(
            summaries.values().any(|t| *t >= 50) && lines.iter().all(|l| l.contains("127.0.0.1")),
            "{event}: a summary line carries the count and the source\n{}",
            lines.join("\n")
        );
    }
}
