//! The quick start, end to end with the real binary: the embedded default (demo answering
//! endpoint behind its route, demo CA, state file, operator token) and `sbc-edge call`
//! against it complete an SRTP call with packets both ways; `call` through a gateway whose
//! route goes nowhere fails with a clear message; `print-default-config` output passes
//! `check-config`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use sbc_testkit::process::{has_mode, run, Spawned};
use sbc_testkit::*;

const BIN: &str = env!("CARGO_BIN_EXE_sbc-edge");

/// A call of 1 s of media is 50 packets each way; the command's own bounds (connect 5 s,
/// answer 32 s) stay under this.
const CALL_WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_default_and_call_complete_an_srtp_call() {
    let dir = temp_dir("demo-call").join("demo");
    let gw = Spawned::with_args(BIN, &[&"--demo-dir", &dir, &"--demo-any-port"], &[]);
    // The demo directory: the CA (public), the state, the operator token (0600).
    assert!(has_mode(&dir, 0o700));
    assert!(has_mode(&dir.join("operator.token"), 0o600));
    let state = std::fs::read_to_string(dir.join("state")).unwrap();
    assert!(
        state.contains(&format!("sip={}", gw.printed.sip)),
        "{state}"
    );

    let (code, out, err) = run(
        BIN,
        &[&"call", &"--demo-dir", &dir, &"--duration", &"1", &"--json"],
        CALL_WAIT,
    );
    assert_eq!(code, 0, "call failed:\n{out}\n{err}\n{}", gw.logs());
    let r: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(r["ok"], true, "{r}");
    for dir in ["caller_to_callee", "callee_to_caller"] {
        let sent = r[dir]["sent"].as_u64().unwrap();
        let received = r[dir]["received"].as_u64().unwrap();
        assert_eq!(sent, 50, "{dir}: 1 s of 20 ms packets: {r}");
        assert!(
            received >= 48,
            "{dir}: {received} of {sent} on loopback: {r}"
        );
    }
    assert_eq!(r["caller_suite"], "AES_CM_128_HMAC_SHA1_80", "{r}");
    assert!(
        r["callee_suite"].as_str().is_some(),
        "the endpoint reports its suite: {r}"
    );
    assert!(r["setup_ms"].as_f64().unwrap() > 0.0);

    // The human report says the same.
    let (code, out, err) = run(
        BIN,
        &[&"call", &"--demo-dir", &dir, &"-d", &"0.2"],
        CALL_WAIT,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("answered in") && out.contains("caller -> callee: sent    10"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("call: OK"), "{out}");

    // The operator token works on the admin plane; it is never in the logs.
    let token = std::fs::read_to_string(dir.join("operator.token")).unwrap();
    let token = token.trim();
    let (status, ..) = http(gw.printed.admin, "GET", "/v1/calls", Some(token), "").await;
    assert_eq!(status, 200);
    let (status, ..) = http(
        gw.printed.admin,
        "GET",
        "/v1/calls",
        Some("not-the-token"),
        "",
    )
    .await;
    assert_eq!(status, 401);
    let logs = gw.logs();
    assert!(logs.contains("demo answering endpoint"), "{logs}");
    assert!(!logs.contains(token), "the operator token is in the logs");
    drop(gw);
}

#[tokio::test]
async fn call_through_a_route_that_goes_nowhere_fails_clearly() {
    let world = World::new("demo-call-nowhere");
    // A port nobody listens on: bound, noted, closed.
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let file = world.dir.join("sbc-edge.toml");
    std::fs::write(
        &file,
        format!(
            "[media]\nenabled = false\n[admin]\naddress = \"127.0.0.1:0\"\naudit_log = {:?}\n{}\n{}",
            world.dir.join("audit.log"),
            world.listener(""),
            world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", nowhere),
        ),
    )
    .unwrap();
    let gw = Spawned::start(BIN, &file, &[]);
    let ca = write(&world.dir, "gw-ca.pem", &world.gw_ca.pem);
    let gateway = gw.printed.sip.to_string();
    let (code, out, err) = run(
        BIN,
        &[
            &"call",
            &"--gateway",
            &gateway,
            &"--ca",
            &ca,
            &"--server-name",
            &"localhost",
            &"-d",
            &"0.2",
        ],
        CALL_WAIT,
    );
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(
        err.contains("call: FAILED: the call was refused: 5"),
        "a clear message naming the refusal:\n{err}"
    );

    // Without a running default and without --gateway: how to start one.
    let empty = temp_dir("demo-call-none");
    let (code, _, err) = run(BIN, &[&"call", &"--demo-dir", &empty], CALL_WAIT);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cargo run --release"), "{err}");
    drop(gw);
}

#[test]
fn print_default_config_passes_check_config() {
    let dir = temp_dir("print-default");
    let (code, out, err) = run(
        BIN,
        &[&"print-default-config", &"--cert-dir", &dir],
        CALL_WAIT,
    );
    assert_eq!(code, 0, "{err}");
    assert!(has_mode(&dir.join("sbc-edge.key"), 0o600));
    let file = write(&dir, "sbc-edge.toml", &out);
    let (code, check, err) = run(BIN, &[&"check-config", &file], CALL_WAIT);
    assert_eq!(code, 0, "{check}\n{err}\n{out}");
    assert!(check.contains(": OK"), "{check}");
    assert!(check.contains("tenant demo"), "{check}");
    assert!(check.contains("route * -> sips:127.0.0.1:5062"), "{check}");
}
