//! SIGHUP reloads the admin plane's tokens in the real binary: after the config file is
//! rewritten and the process signalled, the new token is accepted and the old one refused;
//! an invalid `[admin]` section is refused with an error log and the running tokens stay.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sbc_testkit::*;

const OLD: &str = "ops-old-5e4d3c2b1a09f8e7";
const NEW: &str = "ops-new-0f1e2d3c4b5a6978";

/// The process, killed when the test ends however it ends.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

/// Waits (bounded) until `pred` holds.
async fn until(what: &str, mut pred: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if pred().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn sighup_swaps_admin_tokens_in_the_running_binary() {
    let world = World::new("admin-reload");
    let file = world.dir.join("sbc-edge.toml");
    std::fs::write(&file, config(&world, OLD, "")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sbc-edge"))
        .arg("--config")
        .arg(&file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs sbc-edge");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let gw = Gateway(child);
    let pid = Pid::from_raw(i32::try_from(gw.0.id()).unwrap());
    let logs = Arc::new(Mutex::new(String::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    let admin = printed_addresses(stdout, Duration::from_secs(20))
        .expect("the gateway prints its addresses")
        .admin;
    let status = |token: &'static str| async move {
        http(admin, "GET", "/v1/calls", Some(token), "").await.0
    };
    assert_eq!(status(OLD).await, 200);
    assert_eq!(status(NEW).await, 401);

    // New token in the file, SIGHUP: the new one works, the old one is refused.
    std::fs::write(&file, config(&world, NEW, "redact_numbers = true")).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    until("the new token to be accepted", async || {
        status(NEW).await == 200
    })
    .await;
    assert_eq!(status(OLD).await, 401);

    // An invalid [admin] section: refused with an error log, the running tokens stay.
    std::fs::write(&file, config(&world, OLD, "bogus_key = 1")).unwrap();
    kill(pid, Signal::SIGHUP).unwrap();
    until("the reload to be rejected", async || {
        logs.lock().unwrap().contains("reload_rejected")
    })
    .await;
    assert_eq!(status(NEW).await, 200);
    assert_eq!(status(OLD).await, 401);

    let logs = logs.lock().unwrap().clone();
    assert!(logs.contains("admin tokens reloaded"), "{logs}");
    for secret in [OLD, NEW] {
        assert!(!logs.contains(secret), "a token in the logs");
    }
    drop(gw);
}
