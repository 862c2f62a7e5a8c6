//! The two failover peers against each other on loopback (no gateway between them): the
//! call, media both ways with its counters, a re-INVITE with the next CSeq and a BYE.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sbc_media::srtp::SrtpProfile;
use tokio::sync::mpsc;

use super::callee::CalleeOptions;
use super::caller::CallerOptions;
use super::*;
use crate::demo::DemoPki;

type Lines = Arc<Mutex<Vec<serde_json::Value>>>;

fn find(lines: &Lines, event: &str) -> Vec<serde_json::Value> {
    let l = lines.lock().expect("lines");
    l.iter().filter(|v| v["event"] == event).cloned().collect()
}

async fn wait_for(lines: &Lines, event: &str) {
    for _ in 0..200 {
        if !find(lines, event).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no {event} in {:?}", lines.lock().expect("lines"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_and_callee_hold_a_call_count_media_and_report_in_dialog_requests() {
    let pki = DemoPki::new().expect("pki");
    let tls = crate::tls::server_config(
        pki.endpoint.cert_pem.as_bytes(),
        pki.endpoint.key_pem.as_bytes(),
    )
    .expect("server tls");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let ip = addr.ip();
    let (callee_lines, caller_lines): (Lines, Lines) = Default::default();
    let (_callee_cmd, callee_rx) = mpsc::channel(4);
    let sink = callee_lines.clone();
    let callee = tokio::spawn(async move {
        let mut emit = move |v| sink.lock().expect("lines").push(v);
        let opts = CalleeOptions {
            tls,
            media_ip: ip,
            ring: Duration::from_millis(100),
            max_run: Duration::from_secs(20),
            first_seq: Some(0xfff0),
        };
        callee::run(listener, opts, callee_rx, &mut emit).await
    });
    let (cmd, caller_rx) = mpsc::channel(4);
    let sink = caller_lines.clone();
    let client = crate::tls::client_config(pki.ca_pem.as_bytes(), None).expect("client tls");
    let caller = tokio::spawn(async move {
        let mut emit = move |v| sink.lock().expect("lines").push(v);
        let opts = CallerOptions {
            gateway: addr,
            server_name: "localhost".into(),
            tls: client,
            called: "1555".into(),
            suite: SrtpProfile::AeadAes128Gcm,
            media_ip: ip,
            max_run: Duration::from_secs(20),
            keepalive: KEEPALIVE,
            first_seq: Some(0xffe0),
        };
        caller::run(opts, caller_rx, &mut emit).await
    });
    wait_for(&caller_lines, "answered").await;
    assert_eq!(
        find(&caller_lines, "ringing").len(),
        1,
        "180 before the 200"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    cmd.send(Command::ReInvite).await.expect("command");
    wait_for(&caller_lines, "response").await;
    cmd.send(Command::Bye).await.expect("command");
    caller.await.expect("caller task").expect("caller");
    callee.await.expect("callee task").expect("callee");

    let responses = find(&caller_lines, "response");
    let statuses: Vec<_> = responses
        .iter()
        .map(|r| (r["method"].clone(), r["cseq"].clone(), r["status"].clone()))
        .collect();
    assert_eq!(
        statuses,
        vec![
            ("INVITE".into(), 1.into(), 200.into()),
            ("INVITE".into(), 2.into(), 200.into()),
            ("BYE".into(), 3.into(), 200.into()),
        ]
    );
    let requests = find(&callee_lines, "request");
    let reinvite = requests
        .iter()
        .find(|r| r["method"] == "INVITE")
        .expect("re-INVITE seen by the callee");
    assert_eq!(
        (
            reinvite["cseq"].as_u64(),
            reinvite["previous_cseq"].as_u64()
        ),
        (Some(2), Some(1))
    );
    for (lines, role) in [(&caller_lines, "caller"), (&callee_lines, "callee")] {
        let r = &find(lines, "report")[0];
        assert_eq!(r["role"], role);
        assert!(r["sent"].as_u64().expect("sent") >= 25, "{r}");
        assert!(r["received"].as_u64().expect("received") >= 20, "{r}");
        assert_eq!(r["refused"], 0, "{r}");
        let gap = r["max_gap_ms"].as_f64().expect("gap");
        // 20 ms packets on loopback; the bound leaves room for a loaded 2-core machine.
        assert!(gap > 5.0 && gap < 1000.0, "20 ms packets on loopback: {r}");
    }
    assert_eq!(find(&caller_lines, "report")[0]["ended"], "bye_answered");
    assert_eq!(find(&callee_lines, "report")[0]["ended"], "bye_received");
}

#[test]
fn commands_parse() {
    assert_eq!(Command::parse(" reinvite\n"), Some(Command::ReInvite));
    assert_eq!(Command::parse("bye"), Some(Command::Bye));
    assert_eq!(Command::parse("stop"), Some(Command::Stop));
    assert_eq!(Command::parse("dance"), None);
}

#[test]
fn lost_counts_numbers_never_received_and_the_gap_is_the_largest() {
    let start = tokio::time::Instant::now();
    let mut s = MediaStats::default();
    let stamp = |seq| crate::rtp::Stamp {
        stream: CALLER_STREAM,
        seq,
        echo_count: 0,
        suite: None,
    };
    s.received_at(start, start, &stamp(1));
    s.received_at(start + Duration::from_millis(20), start, &stamp(2));
    s.received_at(start + Duration::from_millis(420), start, &stamp(9));
    s.received_at(start + Duration::from_millis(440), start, &stamp(10));
    assert_eq!((s.received, s.highest, s.lost()), (4, 10, 6));
    assert_eq!(s.max_gap, Duration::from_millis(400));
    assert_eq!(s.max_gap_end, Duration::from_millis(420));
    s.close(start + Duration::from_millis(1440), start);
    assert_eq!(
        s.max_gap,
        Duration::from_millis(1000),
        "silence until the end counts"
    );
}
