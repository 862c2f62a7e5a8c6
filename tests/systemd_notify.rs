//! sd_notify(3) from the real binary: with `NOTIFY_SOCKET` pointing at a datagram socket
//! the test binds, `sbc-edge` sends READY=1 once it serves, RELOADING=1 with MONOTONIC_USEC
//! then READY=1 around a SIGHUP, STOPPING=1 on SIGTERM, and WATCHDOG=1 at half of
//! `WATCHDOG_USEC`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use sbc_testkit::process::{Signal, Spawned};
use sbc_testkit::*;

/// Every wait for a notification is bounded by this.
const NOTIFY_WITHIN: Duration = Duration::from_secs(10);

/// The watchdog interval asked for: pings are due every 250 ms.
const WATCHDOG_USEC: &str = "500000";

/// Next notification that is not a watchdog ping, and how many pings came before it.
fn next_state(sock: &UnixDatagram) -> (String, usize) {
    let deadline = Instant::now() + NOTIFY_WITHIN;
    let mut pings = 0;
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no notification within {NOTIFY_WITHIN:?}");
        sock.set_read_timeout(Some(left)).unwrap();
        let n = sock.recv(&mut buf).expect("a notification");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if msg.trim() == "WATCHDOG=1" {
            pings += 1;
            continue;
        }
        return (msg, pings);
    }
}

#[tokio::test]
async fn ready_reloading_stopping_and_watchdog_reach_the_notify_socket() {
    let world = World::new("systemd-notify");
    let socket_path = world.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&socket_path).unwrap();
    let file = world.dir.join("sbc-edge.toml");
    std::fs::write(
        &file,
        format!(
            "[media]\nenabled = false\n[admin]\naddress = \"127.0.0.1:0\"\naudit_log = {:?}\n{}\n{}",
            world.dir.join("audit.log"),
            world.listener(""),
            world.tenant(
                "demo",
                "source_cidrs = [\"127.0.0.0/8\"]",
                "",
                "127.0.0.1:9".parse().unwrap()
            )
        ),
    )
    .unwrap();
    let mut gw = Spawned::start(
        env!("CARGO_BIN_EXE_sbc-edge"),
        &file,
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", WATCHDOG_USEC),
        ],
    );
    let (ready, _) = next_state(&sock);
    assert_eq!(ready, "READY=1\n");
    // The admin plane already answers when READY=1 has been sent.
    assert_eq!(
        http(gw.printed.admin, "GET", "/healthz", None, "").await.0,
        200
    );

    // Watchdog pings keep coming while nothing else happens.
    tokio::time::sleep(Duration::from_millis(800)).await;
    gw.signal(Signal::SIGHUP);
    let (reloading, pings) = next_state(&sock);
    assert!(
        pings >= 2,
        "{pings} watchdog pings in 800 ms at a 250 ms period"
    );
    let mut lines = reloading.lines();
    assert_eq!(lines.next(), Some("RELOADING=1"), "{reloading}");
    let usec: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(usec > 0);
    assert_eq!(next_state(&sock).0, "READY=1\n", "READY=1 after the reload");
    gw.logged(&["config_reloaded"], NOTIFY_WITHIN).await;

    gw.signal(Signal::SIGTERM);
    assert_eq!(next_state(&sock).0, "STOPPING=1\n");
    let status = gw
        .exited(NOTIFY_WITHIN)
        .await
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
}
