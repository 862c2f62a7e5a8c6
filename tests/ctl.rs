//! `sbc-edge ctl` against real admin planes: an in-process gateway with a live SRTP call
//! (calls, call, usage, taps, drain, a bad token), and the real binary (reload through
//! `POST /v1/reload`, accepted and refused). ctl runs as the built binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::{Command, Output};

use sbc_testkit::process::Spawned;
use std::time::Duration;

use sbc_testkit::tap_call::*;
use sbc_testkit::*;

const OPS: &str = "ops-ctl-3b5d7f9a1c2e4f60";
const VIEW: &str = "view-ctl-8a6c4e2f0b1d3957";

fn tokens() -> String {
    format!(
        "[[admin.tokens]]\nid = \"ops\"\nsha256 = \"{}\"\nrole = \"operator\"\n\
[[admin.tokens]]\nid = \"view\"\nsha256 = \"{}\"\nrole = \"viewer\"\ntenant = \"demo\"\n",
        sbc_admin::token_sha256_hex(OPS),
        sbc_admin::token_sha256_hex(VIEW),
    )
}

/// Runs `sbc-edge ctl --admin http://ADMIN ARGS...` with `token` in `SBC_EDGE_TOKEN`
/// (none when empty), off the runtime's threads, bounded.
async fn ctl(admin: SocketAddr, token: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sbc-edge"));
    cmd.arg("ctl")
        .arg("--admin")
        .arg(format!("http://{admin}"))
        .args(args)
        .env_remove("SBC_EDGE_TOKEN");
    if !token.is_empty() {
        cmd.env("SBC_EDGE_TOKEN", token);
    }
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || cmd.output().expect("runs sbc-edge ctl")),
    )
    .await
    .expect("ctl finishes")
    .unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_lists_shows_and_drains_a_live_gateway() {
    let rig = Rig::start(
        "ctl",
        sbc_testkit::ports::free_udp_range(100),
        &tokens(),
        "",
    )
    .await;
    let a = rig.admin_addr();
    let mut call = TapCall::place(&rig, "ctl-1@platform").await;
    call.caller_sends(1);

    // calls: a table with the call's id (the API's), and the raw JSON with --json.
    let (_, calls) = http(a, "GET", "/v1/calls", Some(OPS), "").await;
    let id = field(&calls, "id");
    let o = ctl(a, OPS, &["calls"]).await;
    assert!(o.status.success(), "{}", err(&o));
    let table = out(&o);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("TENANT"),
        "{table}"
    );
    assert!(lines[1].starts_with(&format!("{id}  demo")), "{table}");
    assert_eq!(lines.last(), Some(&"1 call"), "{table}");
    let o = ctl(a, OPS, &["--json", "calls"]).await;
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(json["calls"][0]["id"], id.as_str());
    assert_eq!(json["calls"][0]["state"], "established");

    // A token from a file works as well as one from the environment.
    let token_file = write(&rig.world.dir, "token", &format!("{VIEW}\n"));
    let o = ctl(a, "", &["--token-file", &token_file, "call", &id]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains(&format!("id:      {id}")), "{}", out(&o));
    assert!(out(&o).contains("tenant:  demo"), "{}", out(&o));

    let o = ctl(a, OPS, &["usage", "demo"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).contains("active calls:    1 of "), "{}", out(&o));
    let o = ctl(a, OPS, &["taps", &id]).await;
    assert_eq!(out(&o).trim(), "no taps", "{}", err(&o));

    // Refusals: a clear reason on stderr and a non-zero exit.
    let o = ctl(a, "not-a-token-0000", &["calls"]).await;
    assert!(!o.status.success());
    assert!(err(&o).contains("refused the token (401)"), "{}", err(&o));
    assert!(!err(&o).contains("not-a-token-0000"), "the token echoed");
    let o = ctl(a, "", &["calls"]).await;
    assert!(!o.status.success());
    assert!(err(&o).contains("SBC_EDGE_TOKEN"), "{}", err(&o));
    let o = ctl(a, VIEW, &["drain"]).await;
    assert!(!o.status.success());
    assert!(err(&o).contains("403"), "{}", err(&o));
    let o = ctl(a, OPS, &["call", "0000000000000000"]).await;
    assert!(!o.status.success());
    assert!(err(&o).contains("404: no such call"), "{}", err(&o));

    // drain: readiness goes to 503.
    let o = ctl(a, OPS, &["drain"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).starts_with("draining"), "{}", out(&o));
    assert_eq!(http(a, "GET", "/readyz", None, "").await.0, 503);
    // The in-process gateway has no reload wired: 501, said so.
    let o = ctl(a, OPS, &["reload"]).await;
    assert!(!o.status.success());
    assert!(err(&o).contains("501"), "{}", err(&o));

    call.hang_up().await;
    rig.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_reload_runs_the_binarys_reload() {
    let world = World::new("ctl-reload");
    let file = world.dir.join("sbc-edge.toml");
    let config = |admin_extra: &str| {
        format!(
            "[media]\nenabled = false\n[admin]\naddress = \"127.0.0.1:0\"\naudit_log = {:?}\n{admin_extra}\n{}\n{}\n{}",
            world.dir.join("audit.log"),
            tokens(),
            world.listener(""),
            world.tenant("demo", "source_cidrs = [\"127.0.0.0/8\"]", "", "127.0.0.1:9".parse().unwrap()),
        )
    };
    std::fs::write(&file, config("")).unwrap();
    let gw = Spawned::start(
        env!("CARGO_BIN_EXE_sbc-edge"),
        &file,
        &[("RUST_LOG", "warn")],
    );
    let admin = gw.printed.admin;

    let o = ctl(admin, OPS, &["reload"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert!(out(&o).starts_with("reloaded: "), "{}", out(&o));
    assert!(out(&o).contains("sbc-edge.toml"), "{}", out(&o));
    let o = ctl(admin, VIEW, &["reload"]).await;
    assert!(!o.status.success());
    assert!(err(&o).contains("403"), "{}", err(&o));

    // An invalid file: refused, said why, the running config kept (the token still works).
    std::fs::write(&file, config("bogus_key = 1")).unwrap();
    let o = ctl(admin, OPS, &["--json", "reload"]).await;
    assert!(!o.status.success());
    assert!(err(&o).contains("409"), "{}", err(&o));
    assert!(err(&o).contains("running config is kept"), "{}", err(&o));
    let o = ctl(admin, OPS, &["calls"]).await;
    assert!(o.status.success(), "{}", err(&o));
    assert_eq!(out(&o).trim(), "no calls");

    // The log level through the admin plane's endpoint (GET shows what PUT set).
    let o = ctl(admin, OPS, &["log-level", "debug"]).await;
    assert!(o.status.success(), "{}", err(&o));
    let (status, body) = http(admin, "GET", "/v1/log-level", Some(OPS), "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("debug"), "{body}");
    let o = ctl(admin, VIEW, &["log-level", "trace"]).await;
    assert!(!o.status.success());
    assert!(err(&o).contains("403"), "{}", err(&o));

    // Both reloads are in the audit log as operator requests.
    let audit = std::fs::read_to_string(world.dir.join("audit.log")).unwrap();
    let reloads: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &serde_json::Value| l["path"] == "/v1/reload")
        .collect();
    let statuses: Vec<u64> = reloads
        .iter()
        .map(|l| l["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 403, 409], "{audit}");
}
