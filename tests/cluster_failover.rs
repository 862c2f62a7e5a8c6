//! Hot standby (#16) in network namespaces the test makes: two gateway namespaces (gwA
//! active, gwB its standby), a caller, a callee and Redis on one bridge, the VIP moved by
//! Debian's keepalived (VRRP unicast, adverts every 0.1 s). Needs root, `ip`, keepalived
//! and redis-server: plain `cargo test --workspace` skips it saying why; `.ci/run`'s
//! failover stage installs them and runs it with `--test-threads=1 --nocapture`.
//!
//! A node "dies" the way a machine does: its link goes down and every process in its
//! namespace is SIGKILLed, so nothing says goodbye (no VRRP priority-0 advert, no TCP
//! FIN) and the standby notices by silence.

use std::path::Path;
use std::time::Duration;

use sbc_testkit::netns::{self, Keepalived, Lab, VIP};

/// Issue #16: keepalived alone moved a VIP in 0.32-0.35 s here with 0.1 s adverts (3
/// adverts missed plus the skew time). Generous for a loaded CI machine.
const VIP_MOVE_BOUND: Duration = Duration::from_secs(2);

fn skip() -> bool {
    match netns::missing() {
        Some(why) => {
            println!("skipped: {why}");
            true
        }
        None => false,
    }
}

/// Writes an executable notify script that appends the time it ran to `marker`.
fn marker_script(dir: &Path, node: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let marker = dir.join(format!("master-{node}"));
    let script = dir.join(format!("notify-{node}.sh"));
    std::fs::write(
        &script,
        format!("#!/bin/sh\ndate +%s.%N >> {}\n", marker.display()),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    (script, marker)
}

/// Two keepalived nodes: gwA (priority 150) takes the VIP, then dies; gwB takes it over and
/// runs its notify_master hook. Prints the time the VIP took to move (the floor under any
/// gateway failover figure).
#[test]
fn keepalived_moves_the_vip_to_the_standby_when_the_active_node_dies() {
    if skip() {
        return;
    }
    let dir = sbc_testkit::files::temp_dir("failover-vip");
    let lab = Lab::new(&[("gwA", 1), ("gwB", 2), ("caller", 10)]);
    let (a_ip, b_ip) = (lab.node("gwA").ip, lab.node("gwB").ip);
    let (script_b, marker_b) = marker_script(&dir, "gwB");
    Keepalived {
        priority: 150,
        advert_int: 0.1,
        peer: b_ip,
        notify_master: None,
    }
    .start(&lab, "gwA", &dir);
    Keepalived {
        priority: 100,
        advert_int: 0.1,
        peer: a_ip,
        notify_master: Some(script_b),
    }
    .start(&lab, "gwB", &dir);
    assert!(
        lab.wait_vip("gwA", true, Duration::from_secs(10)).is_some(),
        "gwA never took the VIP; logs in {}",
        dir.display()
    );
    // Settle: gwB has heard gwA's adverts and stays backup.
    std::thread::sleep(Duration::from_millis(500));
    assert!(!lab.has_vip("gwB"), "both nodes hold the VIP");
    let t0 = std::time::Instant::now();
    lab.unplug("gwA");
    lab.kill_all("gwA");
    let moved = lab
        .wait_vip("gwB", true, VIP_MOVE_BOUND)
        .map(|_| t0.elapsed())
        .unwrap_or_else(|| panic!("gwB did not take {VIP} within {VIP_MOVE_BOUND:?}"));
    println!(
        "keepalived alone moved the VIP in {:.0} ms (advert_int 0.1 s)",
        moved.as_secs_f64() * 1000.0
    );
    // The hook runs right after the address is set.
    let mut ran = false;
    for _ in 0..200 {
        if std::fs::read_to_string(&marker_b).is_ok_and(|s| !s.trim().is_empty()) {
            ran = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(ran, "gwB's notify_master hook did not run");
}
