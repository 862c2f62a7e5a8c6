//! SIGHUP reloads the admin plane's tokens in the real binary: after the config file is
//! rewritten and the process signalled, the new token is accepted and the old one refused;
//! an invalid `[admin]` section is refused with an error log and the running tokens stay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sbc_testkit::process::{eventually, Signal, Spawned};
use sbc_testkit::*;

const OLD: &str = "ops-old-5e4d3c2b1a09f8e7";
const NEW: &str = "ops-new-0f1e2d3c4b5a6978";

fn config(world: &World, token: &str, extra_admin: &str) -> String {
    format!(
        "[media]\nenabled = false\n\
[admin]\naddress = \"127.0.0.1:0\"\naudit_log = {:?}\n{extra_admin}\n\
[[admin.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n{}\n{}",
        world.dir.join("audit.log"),
        sbc_admin::token_sha256_hex(token),
        world.listener(""),
        world.tenant(
            "demo",
            "source_cidrs = [\"127.0.0.0/8\"]",
            "",
            "127.0.0.1:9".parse().unwrap()
        ),
    )
}

/// How long a reload may take to show.
const RELOAD_WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn sighup_swaps_admin_tokens_in_the_running_binary() {
    let world = World::new("admin-reload");
    let file = world.dir.join("sbc-edge.toml");
    std::fs::write(&file, config(&world, OLD, "")).unwrap();
    let gw = Spawned::start(env!("CARGO_BIN_EXE_sbc-edge"), &file, &[]);
    let admin = gw.printed.admin;
    let status = |token: &'static str| async move {
        http(admin, "GET", "/v1/calls", Some(token), "").await.0
    };
    assert_eq!(status(OLD).await, 200);
    assert_eq!(status(NEW).await, 401);

    // New token in the file, SIGHUP: the new one works, the old one is refused.
    std::fs::write(&file, config(&world, NEW, "redact_numbers = true")).unwrap();
    gw.signal(Signal::SIGHUP);
    let accepted = eventually(RELOAD_WITHIN, async || status(NEW).await == 200).await;
    assert!(accepted, "the new token is accepted after SIGHUP");
    assert_eq!(status(OLD).await, 401);

    // An invalid [admin] section: refused with an error log, the running tokens stay.
    std::fs::write(&file, config(&world, OLD, "bogus_key = 1")).unwrap();
    gw.signal(Signal::SIGHUP);
    gw.logged(&["reload_rejected"], RELOAD_WITHIN).await;
    assert_eq!(status(NEW).await, 200);
    assert_eq!(status(OLD).await, 401);

    let logs = gw.logs();
    assert!(logs.contains("admin tokens reloaded"), "{logs}");
    for secret in [OLD, NEW] {
        assert!(!logs.contains(secret), "a token in the logs");
    }
    drop(gw);
}
